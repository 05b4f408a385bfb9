"""Tests of synth_pipeline.segmentation: extraction, rendering with each augmentation, labels by construction, datasets.

The invariant every example must keep (`check_example`): normalized text, units exactly ``text_units(text)``, one
label per unit, and labels that decode back to the gold segments.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import fields, replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from preprocess_model.document import ReadFailure, Span
from preprocess_model.readers import file_doc_id, normalize_text
from preprocess_model.units import BOUNDARY, CONTINUE, HEADING, LABELS, NOISE, text_units
from synth_pipeline.segmentation import (
    Block,
    Example,
    StructuredDoc,
    SynthConfig,
    dataset_metadata,
    from_html,
    from_markdown,
    from_paragraphs,
    label_counts,
    make_examples,
    render,
    split_by_doc,
    structured_docs,
    write_dataset,
)

# Every augmentation off: one paragraph per line, one blank line between blocks, plain headings, no noise.
PLAIN = SynthConfig(
    blank_lines_removed_prob=0, blank_lines_random_prob=0, wrap_prob=0, hyphenate_prob=0, page_break_prob=0,
    boilerplate_prob=0, boilerplate_inline_prob=0, page_chrome_prob=0, french_prob=0, heading_markdown_prob=0,
    heading_numbered_prob=0, heading_caps_prob=0, heading_colon_prob=0, list_markers=("-",), table_pipe_prob=1,
    table_rule_prob=0, code_fence_prob=0, merge_short_prob=0,
)
# Every augmentation on, small pages and narrow lines so that everything happens in a short document.
BUSY = SynthConfig(
    blank_lines_removed_prob=0, blank_lines_random_prob=1, wrap_prob=1, wrap_min_width=40, wrap_max_width=60,
    hyphenate_prob=1, hyphen_word_prob=1, page_break_prob=1, page_min_lines=4, page_max_lines=7, boilerplate_prob=1,
    boilerplate_inline_prob=1, heading_markdown_prob=1, heading_numbered_prob=1, heading_caps_prob=1,
    heading_colon_prob=1, code_fence_prob=1,
)

LONG = (
    "Segmentation of administrative documentation requires understanding paragraphs, headings and "
    "navigation elements that surround the substantive information."
)
FRENCH = (
    "Le cœur de l'été à Paris : où sont les élèves ? Ça va très bien, merci. « Déjà vu », dit-il — une façade "
    "naïve, un garçon, une fenêtre ouverte sur la rue."
)
CJK = "这是第一句话，用来测试中文的换行。这是第二句话，没有空格也要能正确地切分成多行文本。" * 2

MARKDOWN = """\
---
title: Guide
---
# Install guide

This paragraph is hard
wrapped across two lines.

Setext heading
--------------

You need:
- Python 3.10
- pip
  with a continuation line
* a third item

| Name | Value |
|------|-------|
| a \\| b | 1 |
| c | 2 |

```bash
# a comment, not a heading
pip install ragless
```

    indented = "code"

> A quoted paragraph.
1999. was a year, and this line wraps the paragraph.

Last paragraph.
"""

HTML = """<!doctype html><html><head><title>Passeport – Service</title><style>p {color: red}</style></head><body>
<header><a href="/">Accueil</a><nav><ul><li><a>Particuliers</a></li><li>Entreprises</li></ul></nav></header>
<nav aria-label="fil d'Ariane">Accueil &gt; Papiers &gt; Passeport</nav>
<main><article><header><h1>Passeport</h1></header>
<p>Le passeport est un <b>titre</b> d'identité.<br>Il est valable 10 ans.</p>
<div>Texte libre<div>dans des div</div></div>
<h2>Pièces à fournir</h2>
<ol><li>Photo <em>d'identité</em><ul><li>récente</li></ul></li><li>Justificatif</li></ol>
<table><tr><th>Âge</th><th>Prix</th></tr><tr><td>Majeur</td><td>86 €</td></tr></table>
<pre>  code line
    indented</pre>
<script>var nav = "Accueil";</script><!-- a comment -->
</article></main>
<aside>Voir aussi</aside>
<footer><p>© 2024 République française</p><ul><li>Mentions légales</li></ul></footer>
</body></html>"""


# ------------------------------------------------------------------------------------------------------------ helpers


def decode_segments(units: list[Span], labels: list[int]) -> list[Span]:
    """What a model's labels mean: a segment runs from a BOUNDARY unit over the CONTINUE units after it, skipping
    NOISE, until the next BOUNDARY or HEADING."""
    segments: list[Span] = []
    current: list[int] | None = None
    for (start, end), label in zip(units, labels):
        if label in (BOUNDARY, HEADING) and current:
            segments.append((current[0], current[1]))
            current = None
        if label == BOUNDARY:
            current = [start, end]
        elif label == CONTINUE:
            assert current is not None, "a CONTINUE unit with no segment open"
            current[1] = end
    if current:
        segments.append((current[0], current[1]))
    return segments


def check_example(ex: Example) -> None:
    assert normalize_text(ex.text) == ex.text
    assert ex.units == text_units(ex.text)
    assert len(ex.labels) == len(ex.units) and set(ex.labels) <= {BOUNDARY, CONTINUE, HEADING, NOISE}
    assert decode_segments(ex.units, ex.labels) == ex.segments
    assert all(s < e <= s2 for (s, e), (s2, _) in zip(ex.segments, ex.segments[1:] + [(len(ex.text), 0)]))
    boundaries = [s for (s, _), label in zip(ex.units, ex.labels) if label == BOUNDARY]
    assert boundaries == [s for s, _ in ex.segments]
    for (start, end), label in zip(ex.units, ex.labels):
        inside = [seg for seg in ex.segments if seg[0] <= start and end <= seg[1]]
        if label in (BOUNDARY, CONTINUE):
            assert len(inside) == 1  # the gold segments tile every content unit, once
        elif label == HEADING:
            assert not inside  # a heading always ends the segment before it


def check_row(row: dict) -> Example:
    ex = Example(
        row["text"], list(zip(row["unit_starts"], row["unit_ends"])), row["labels"],
        list(zip(row["segment_starts"], row["segment_ends"])),
    )
    check_example(ex)
    return ex


def units_with(ex: Example, label: int) -> list[str]:
    return [ex.text[s:e] for (s, e), lab in zip(ex.units, ex.labels) if lab == label]


def labelled(ex: Example) -> list[tuple[str, str]]:
    return [(LABELS[lab], ex.text[s:e]) for (s, e), lab in zip(ex.units, ex.labels)]


def rendered(doc: StructuredDoc, cfg: SynthConfig, variant: int = 0) -> Example:
    ex = render(doc, random.Random(f"test:{doc.doc_id}:{variant}"), cfg)
    check_example(ex)
    return ex


def article(doc_id: str = "art", paragraphs: int = 6) -> StructuredDoc:
    """A document with every kind of block, French and long words included."""
    blocks = [Block("heading", "Segmentation guide", level=1)]
    for i in range(paragraphs):
        if i % 3 == 0:
            blocks.append(Block("heading", f"Section {i // 3 + 1}", level=2))
        blocks.append(Block("paragraph", f"{LONG} {FRENCH} ({i})"))
    blocks += [
        Block("paragraph", "You will need:"),
        Block("list", items=("a working installation", "a corpus of documents", LONG)),
        Block("table", rows=(("Name", "Value"), ("width", "40"), ("hyphenation", "yes"))),
        Block("code", "def f(x):\n    return x\n\n\nprint(f(1))"),
    ]
    return StructuredDoc(doc_id, "Segmentation guide", blocks, source=f"/corpus/{doc_id}.md")


DOCS = [
    article(),
    from_markdown(MARKDOWN, "md"),
    from_html(HTML, "html"),
    from_paragraphs("squad", "Normandy", [LONG, "Short one.", "Another short one.", FRENCH], {2: "History"}),
    from_paragraphs("cjk", "中文文档", [CJK, "短段落。", CJK]),
]


# ---------------------------------------------------------------------------------------------------------- extraction


def test_markdown_blocks() -> None:
    doc = from_markdown(MARKDOWN, "md", source="guide.md")
    assert doc.title == "Install guide" and doc.source == "guide.md"
    assert doc.blocks == [
        Block("heading", "Install guide", level=1),
        Block("paragraph", "This paragraph is hard wrapped across two lines."),
        Block("heading", "Setext heading", level=2),
        Block("paragraph", "You need:"),
        Block("list", items=("Python 3.10", "pip with a continuation line", "a third item")),
        Block("table", rows=(("Name", "Value"), ("a | b", "1"), ("c", "2"))),
        Block("code", "# a comment, not a heading\npip install ragless"),
        Block("code", 'indented = "code"'),
        Block("paragraph", "A quoted paragraph. 1999. was a year, and this line wraps the paragraph."),
        Block("paragraph", "Last paragraph."),
    ]
    assert from_markdown("plain text\n\nno heading", "p").title == ""
    assert from_markdown("## Sub\n\n# Top", "t").title == "Top"
    assert from_markdown("# Top", "t", title="Given").title == "Given"


def test_html_blocks_and_chrome() -> None:
    doc = from_html(HTML.encode("utf-8"), "html")
    assert doc.title == "Passeport – Service"
    assert doc.blocks == [
        Block("heading", "Passeport", level=1),  # a <header> inside an <article> is content
        Block("paragraph", "Le passeport est un titre d'identité. Il est valable 10 ans."),
        Block("paragraph", "Texte libre"),
        Block("paragraph", "dans des div"),
        Block("heading", "Pièces à fournir", level=2),
        Block("list", items=("Photo d'identité", "récente", "Justificatif")),
        Block("table", rows=(("Âge", "Prix"), ("Majeur", "86 €"))),
        Block("code", "  code line\n    indented"),
    ]
    assert doc.chrome_top == ("Accueil", "Particuliers", "Entreprises", "Accueil > Papiers > Passeport")
    assert doc.chrome_bottom == ("Voir aussi", "© 2024 République française", "Mentions légales")
    block_text = json.dumps([b.plain_lines() for b in doc.blocks], ensure_ascii=False)
    assert "Entreprises" not in block_text and "var nav" not in block_text and "comment" not in block_text
    latin1 = '<html><head><meta charset="iso-8859-1"></head><body><p>Été</p></body></html>'.encode("latin-1")
    assert from_html(latin1, "l").blocks == [Block("paragraph", "Été")]


def test_paragraph_corpus_and_block_cleaning() -> None:
    doc = from_paragraphs("q", "  Normandy ", ["First  para\n graph.", "", "Second."], {2: "Later"}, source="s#q")
    assert doc.title == "Normandy"
    assert doc.blocks == [
        Block("heading", "Normandy", level=1),
        Block("paragraph", "First para graph."),
        Block("heading", "Later", level=2),
        Block("paragraph", "Second."),
    ]
    block = Block("table", rows=(("a\tb", ""), ("", " ")))
    assert block.rows == (("a b", ""),) and Block("list", items=("x", " ", "Cafe\u0301")).items == ("x", "Café")
    with pytest.raises(ValueError):
        Block("quote", "x")
    with pytest.raises(ValueError):
        Block("heading", "x", level=0)


def test_structured_docs_walks_files_and_reports_what_it_skips(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n\nText of a.", encoding="utf-8")
    (tmp_path / "b.html").write_text("<h1>B</h1><p>Text of b.</p>", encoding="utf-8")
    (tmp_path / "ignored.txt").write_text("not a structured format", encoding="utf-8")
    (tmp_path / "empty.md").write_text("\n\n", encoding="utf-8")
    (tmp_path / "binary.html").write_bytes(b"\x00\x01\x02" * 10)
    records = [
        {"id": "q1", "title": "T1", "paragraphs": ["P one.", "P two."]},
        {"title": "T2", "text": "Para one.\n\nPara two."},
        {"id": "q3", "text": 3},
    ]
    lines = [json.dumps(r) for r in records] + ["{not json", "", '"a string"']
    (tmp_path / "c.jsonl").write_text("\n".join(lines), encoding="utf-8")
    (tmp_path / "named.txt").write_text("named directly", encoding="utf-8")
    failures: list[ReadFailure] = []
    docs = list(structured_docs([tmp_path, tmp_path / "named.txt", tmp_path / "missing.md"], failures))

    by_id = {doc.doc_id: doc for doc in docs}
    assert by_id[file_doc_id(tmp_path / "a.md")].blocks == [Block("heading", "A", level=1), Block("paragraph",
                                                                                                  "Text of a.")]
    assert by_id[file_doc_id(tmp_path / "b.html")].title == "B"
    assert by_id["q1"].blocks[1:] == [Block("paragraph", "P one."), Block("paragraph", "P two.")]
    assert by_id["q1"].source.endswith("c.jsonl#q1")
    (second,) = [doc for doc in docs if doc.title == "T2"]
    assert [b.text for b in second.blocks] == ["Para one.", "Para two."]
    assert len(docs) == 4

    reasons = {(Path(f.source.split(":")[0]).name, f.reason.split(":")[0]) for f in failures}
    assert ("empty.md", "no text blocks") in reasons
    assert ("binary.html", "binary content") in reasons
    assert ("named.txt", "unsupported file type .txt for structured documents") in reasons
    assert ("missing.md", "no such file or directory") in reasons
    assert ("c.jsonl", "malformed JSON line") in reasons
    assert sum(f.source.endswith("c.jsonl:3") or f.source.endswith("c.jsonl:6") for f in failures) == 2
    assert not any("ignored.txt" in f.source for f in failures)  # a folder walk ignores other formats silently


# ------------------------------------------------------------------------------------------------ labels and spans


@pytest.mark.parametrize("cfg", [PLAIN, SynthConfig(), BUSY], ids=["plain", "default", "busy"])
def test_every_example_keeps_its_invariants(cfg: SynthConfig) -> None:
    for doc in DOCS:
        for variant in range(12):
            ex = rendered(doc, cfg, variant)
            assert ex.segments and BOUNDARY in ex.labels


# Characters that stress offsets: accents precomposed and decomposed, CJK and Hangul, a letter whose capital is two
# characters, tabs and no-break spaces, control characters, line separators, byte-order marks, markup.
ODD_CHARS = "abcdefghij éèàçœ e\u0301a\u0308 中文字한국어 ßǰ \t\u00a0-.:;!?|#*>`~ \n\u2028\x0c\x00\ufeff"


def random_doc(rng: random.Random, doc_id: str) -> StructuredDoc:
    def text(words: int) -> str:
        return " ".join("".join(rng.choices(ODD_CHARS, k=rng.randint(1, 25))) for _ in range(rng.randint(0, words)))

    makers = [
        lambda: Block("heading", text(6), level=rng.randint(1, 6)),
        lambda: Block("paragraph", text(rng.choice([3, 20, 120]))),
        lambda: Block("list", items=tuple(text(30) for _ in range(rng.randint(0, 5)))),
        lambda: Block("table", rows=tuple(tuple(text(3) for _ in range(rng.randint(1, 4))) for _ in range(4))),
        lambda: Block("code", "\n".join(" " * rng.randint(0, 6) + text(6) for _ in range(rng.randint(0, 5)))),
    ]
    blocks = [rng.choice(makers)() for _ in range(rng.randint(0, 12))]
    return StructuredDoc(doc_id, text(4), blocks, chrome_top=(text(3), text(3)), chrome_bottom=(text(2),))


def random_config(rng: random.Random) -> SynthConfig:
    probs = {f.name: rng.choice([0.0, 1.0, rng.random()]) for f in fields(SynthConfig) if f.name.endswith("_prob")}
    probs["blank_lines_random_prob"] *= 1 - probs["blank_lines_removed_prob"]
    width, lines = rng.randint(1, 60), rng.randint(1, 10)
    return SynthConfig(**probs, wrap_min_width=width, wrap_max_width=width + rng.randint(0, 60), page_min_lines=lines,
                       page_max_lines=lines + rng.randint(0, 10), short_paragraph_chars=rng.randint(0, 300),
                       merged_max_chars=rng.randint(0, 1000))


def test_random_documents_and_configs_keep_the_invariants() -> None:
    rng = random.Random(0)
    rendered_texts = 0
    for i in range(300):
        ex = render(random_doc(rng, f"r{i}"), random.Random(i), random_config(rng))
        if ex.text:
            check_example(ex)
            rendered_texts += 1
    assert rendered_texts > 250


def test_plain_rendering_labels_every_block_by_construction() -> None:
    ex = rendered(article(paragraphs=1), PLAIN)
    assert labelled(ex) == [
        ("heading", "Segmentation guide"),
        ("heading", "Section 1"),
        ("boundary", f"{LONG} {FRENCH} (0)"),
        ("boundary", "You will need:"),  # a short lead-in ending with ":" opens the list's segment
        ("continue", "- a working installation"),
        ("continue", "- a corpus of documents"),
        ("continue", f"- {LONG}"),
        ("boundary", "| Name | Value |"),
        ("continue", "| width | 40 |"),
        ("continue", "| hyphenation | yes |"),
        ("boundary", "def f(x):"),
        ("continue", "return x"),
        ("continue", "print(f(1))"),
    ]
    assert "\n\n\n" not in ex.text and ex.text.count("\n\n") == 7  # six gaps between seven blocks, and...
    assert "    return x\n\nprint" in ex.text  # ...the code's own blank lines, two made one as normalized text has


def test_labels_come_from_roles_not_from_the_words() -> None:
    doc = StructuredDoc("same", "T", [Block("paragraph", "Home"), Block("paragraph", "Contact")],
                        chrome_top=("Home", "Contact"), chrome_bottom=("Home",))
    ex = rendered(doc, replace(PLAIN, boilerplate_prob=1, page_chrome_prob=1))
    assert labelled(ex) == [("noise", "Home"), ("noise", "Contact"), ("boundary", "Home"), ("boundary", "Contact"),
                            ("noise", "Home")]


def test_long_lines_are_cut_by_text_units_and_continue_their_segment() -> None:
    paragraph = " ".join([LONG] * 4)  # one line of over 400 characters: text_units cuts it into sentences
    ex = rendered(StructuredDoc("long", "", [Block("paragraph", paragraph)]), PLAIN)
    assert ex.labels == [BOUNDARY, CONTINUE, CONTINUE, CONTINUE] and ex.segments == [(0, len(paragraph))]


def test_same_seed_same_rows_and_rows_do_not_depend_on_other_documents() -> None:
    rows = list(make_examples(DOCS, SynthConfig(), seed=7, variants=3))
    assert rows == list(make_examples(DOCS, SynthConfig(), seed=7, variants=3))
    assert [(r["doc_id"], r["variant"]) for r in rows] == [(d.doc_id, v) for d in DOCS for v in range(3)]
    alone = list(make_examples(DOCS[2:3], SynthConfig(), seed=7, variants=3))
    assert alone == [r for r in rows if r["doc_id"] == DOCS[2].doc_id]
    assert sorted(map(json.dumps, make_examples(DOCS[::-1], SynthConfig(), 7, 3))) == sorted(map(json.dumps, rows))
    other = list(make_examples(DOCS, SynthConfig(), seed=8, variants=3))
    assert [r["text"] for r in other] != [r["text"] for r in rows]
    assert len({r["text"] for r in rows if r["doc_id"] == "art"}) > 1  # variants differ
    for row in rows:
        check_row(row)
        assert set(row) == {"doc_id", "variant", "source", "title", "text", "unit_starts", "unit_ends", "labels",
                            "segment_starts", "segment_ends"}
    with pytest.raises(ValueError):
        list(make_examples(DOCS, SynthConfig(), seed=0, variants=0))


def test_documents_without_text_make_no_row() -> None:
    docs = [StructuredDoc("empty", "T", []), StructuredDoc("blank", "T", [Block("paragraph", "  ")])]
    assert list(make_examples(docs, BUSY, seed=0)) == []


# ------------------------------------------------------------------------------------------------- augmentations


def test_blank_lines_kept_removed_or_random() -> None:
    doc = article()
    blocks = len(doc.blocks)
    kept = rendered(doc, PLAIN)
    assert len(kept.text.split("\n\n")) == blocks + 1  # a gap between every two blocks, plus the code's blank line
    removed = rendered(doc, replace(PLAIN, blank_lines_removed_prob=1))
    assert removed.text.split("\n\n") == [removed.text[: removed.text.index("\n\nprint")], "print(f(1))"]
    assert removed.labels == kept.labels  # the code's own blank line is code, not a gap between blocks
    gaps = [rendered(doc, replace(PLAIN, blank_lines_random_prob=1), v).text.count("\n\n") for v in range(10)]
    assert all(1 <= g < blocks for g in gaps) and len(set(gaps)) > 1


def test_wrapping_at_a_width_keeps_segments_and_their_words() -> None:
    cfg = replace(PLAIN, wrap_prob=1, wrap_min_width=45, wrap_max_width=45)
    doc = article(paragraphs=2)
    ex = rendered(doc, cfg)
    lines = [line for line in ex.text.split("\n") if line]
    assert all(len(line) <= 45 for line in lines if " " in line.strip())
    paragraph = f"{LONG} {FRENCH} (0)"
    start = ex.text.index("Segmentation of")
    end = ex.text.index("(0)") + 3
    assert ex.text[start:end].replace("\n", " ") == paragraph  # wrapped at spaces only: no hyphenation here
    assert (start, end) in ex.segments
    para_labels = [lab for (s, _), lab in zip(ex.units, ex.labels) if start <= s < end]
    assert para_labels[0] == BOUNDARY and set(para_labels[1:]) == {CONTINUE} and len(para_labels) > 3
    item = [line for line in lines if line.startswith("- Segmentation")]
    assert item and ex.text.split(item[0] + "\n")[1].startswith("  ")  # wrapped list items get a hanging indent
    unwrapped = rendered(doc, PLAIN)
    assert paragraph in unwrapped.text.split("\n")


def test_hyphenation_at_line_ends() -> None:
    doc = StructuredDoc("hy", "", [Block("paragraph", LONG), Block("paragraph", FRENCH)])
    cfg = replace(PLAIN, wrap_prob=1, wrap_min_width=40, wrap_max_width=40, hyphenate_prob=1, hyphen_word_prob=1)
    ex = rendered(doc, cfg)
    assert re.search(r"\w-\n\w", ex.text)
    paragraphs = [p.replace("\n", " ") for p in re.sub(r"-\n", "", ex.text).split("\n\n")]
    assert paragraphs == [LONG, FRENCH]  # words were split at line ends, nothing else changed
    hyphenated = [i for i, (s, e) in enumerate(ex.units) if ex.text[e - 1] == "-"]
    assert hyphenated and all(ex.labels[i + 1] == CONTINUE for i in hyphenated)
    assert all(len(line) <= 40 for line in ex.text.split("\n"))
    not_hyphenated = rendered(doc, replace(cfg, hyphenate_prob=0))
    assert not re.search(r"-$", not_hyphenated.text, re.M)
    assert re.search(r"-$", rendered(doc, replace(cfg, hyphen_word_prob=0)).text, re.M) is None


def test_page_breaks_add_running_headers_and_page_numbers_as_noise() -> None:
    cfg = replace(PLAIN, page_break_prob=1, page_min_lines=4, page_max_lines=4, wrap_prob=1, wrap_min_width=50,
                  wrap_max_width=50)
    doc = article()
    inside_a_segment = 0
    for variant in range(8):
        ex = rendered(doc, cfg, variant)
        noise = units_with(ex, NOISE)
        for n in (1, 2, 3):
            assert any(re.search(rf"(?<![\d/]){n}(?!\d)", line) for line in noise), (n, noise)
        noise_starts = [s for (s, _), lab in zip(ex.units, ex.labels) if lab == NOISE]
        inside_a_segment += any(a < s < b for s in noise_starts for a, b in ex.segments)
    assert inside_a_segment  # a page break inside a paragraph: the paragraph goes on after the footer
    assert NOISE not in rendered(doc, replace(cfg, page_break_prob=0)).labels


@pytest.mark.parametrize(
    ("french", "marks"),
    [(1, ("Service-Public.fr", "Ministère de l'Intérieur", "Mairie de Lyon", "Préfecture du Rhône")),
     (0, ("Example Corp", "Acme Inc.", "City of Springfield", "Northwind Traders"))],
    ids=["french", "english"],
)
def test_boilerplate_lines_are_noise_in_either_language(french: float, marks: tuple[str, ...]) -> None:
    cfg = replace(PLAIN, boilerplate_prob=1, french_prob=french)
    for variant in range(5):
        ex = rendered(article(), cfg, variant)
        assert ex.labels[0] == NOISE and ex.labels[-1] == NOISE
        assert any(mark in units_with(ex, NOISE)[-1] for mark in marks)  # the copyright line closes the page
        pattern = "".join(str(label) for label in ex.labels)
        assert re.fullmatch(rf"{NOISE}+[^{NOISE}]+{NOISE}+", pattern)  # chrome above and below, none inside
    assert NOISE not in rendered(article(), PLAIN).labels


def test_page_chrome_and_back_to_top_lines() -> None:
    doc = from_html(HTML, "html")
    ex = rendered(doc, replace(PLAIN, boilerplate_prob=1, page_chrome_prob=1, boilerplate_inline_prob=1))
    noise = units_with(ex, NOISE)
    assert noise[:4] == list(doc.chrome_top) and noise[-3:] == list(doc.chrome_bottom)
    headings = [i for i, lab in enumerate(ex.labels) if lab == HEADING]
    assert all(ex.labels[i - 1] == NOISE for i in headings[1:])  # "Back to top"-like lines before later headings


def test_heading_styles() -> None:
    doc = article(paragraphs=6)
    plain = units_with(rendered(doc, PLAIN), HEADING)
    assert plain == ["Segmentation guide", "Section 1", "Section 2"]
    styled = replace(PLAIN, heading_markdown_prob=1, heading_numbered_prob=1, heading_caps_prob=1,
                     heading_colon_prob=1)
    assert units_with(rendered(doc, styled), HEADING) == ["# SEGMENTATION GUIDE:", "## 1. SECTION 1:",
                                                          "## 2. SECTION 2:"]
    nested = StructuredDoc("n", "", [Block("heading", "A", level=2), Block("paragraph", "x"),
                                     Block("heading", "B", level=3), Block("paragraph", "y"),
                                     Block("heading", "C", level=2), Block("paragraph", "z")])
    assert units_with(rendered(nested, replace(PLAIN, heading_numbered_prob=1)), HEADING) == ["1. A", "1.1 B", "2. C"]


@pytest.mark.parametrize(("marker", "expected"), [("-", "- "), ("*", "* "), ("•", "• "), ("1.", "3. "),
                                                  ("1)", "3) "), ("a)", "c) ")])
def test_list_markers_and_a_list_is_one_segment(marker: str, expected: str) -> None:
    doc = StructuredDoc("l", "", [Block("paragraph", "A paragraph first."), Block("list", items=("x", "y", "z"))])
    ex = rendered(doc, replace(PLAIN, list_markers=(marker,)))
    assert ex.text.split("\n")[-1] == f"{expected}z"
    assert ex.labels == [BOUNDARY, BOUNDARY, CONTINUE, CONTINUE]  # no lead-in: the list opens its own segment


def test_lead_in_joins_the_list_and_short_paragraphs_merge() -> None:
    doc = StructuredDoc("m", "", [
        Block("paragraph", "Short one."), Block("paragraph", "Short two."), Block("paragraph", LONG),
        Block("paragraph", "Les pièces :"), Block("table", rows=(("a", "b"),)),
    ])
    merged = rendered(doc, replace(PLAIN, merge_short_prob=1))
    assert merged.labels == [BOUNDARY, CONTINUE, BOUNDARY, BOUNDARY, CONTINUE]
    separate = rendered(doc, PLAIN)
    assert separate.labels == [BOUNDARY, BOUNDARY, BOUNDARY, BOUNDARY, CONTINUE]  # the lead-in rule always holds
    capped = rendered(doc, replace(PLAIN, merge_short_prob=1, merged_max_chars=15))
    assert capped.labels[:2] == [BOUNDARY, BOUNDARY]


def test_table_notations() -> None:
    doc = StructuredDoc("t", "", [Block("table", rows=(("Name", "Value"), ("hyphenation", "yes"), ("w", "40")))])
    pipe = rendered(doc, PLAIN).text.split("\n")
    assert pipe == ["| Name | Value |", "| hyphenation | yes |", "| w | 40 |"]
    ruled = rendered(doc, replace(PLAIN, table_rule_prob=1))
    assert ruled.text.split("\n")[1] == "|---|---|" and ruled.labels == [BOUNDARY] + [CONTINUE] * 3
    tabs = rendered(doc, replace(PLAIN, table_pipe_prob=0, table_tab_prob=1))
    assert tabs.text == "Name\tValue\nhyphenation\tyes\nw\t40" and tabs.labels == [BOUNDARY, CONTINUE, CONTINUE]
    aligned = rendered(doc, replace(PLAIN, table_pipe_prob=0, table_tab_prob=0)).text.split("\n")
    assert len({line.index(value) for line, value in zip(aligned, ("Value", "yes", "40"))}) == 1  # columns aligned


def test_code_fences_belong_to_the_code_segment() -> None:
    doc = StructuredDoc("c", "", [Block("code", "x = 1\ny = 2")])
    assert labelled(rendered(doc, replace(PLAIN, code_fence_prob=1))) == [
        ("boundary", "```"), ("continue", "x = 1"), ("continue", "y = 2"), ("continue", "```")]
    assert rendered(doc, PLAIN).text == "x = 1\ny = 2"


def test_unicode_french_and_cjk() -> None:
    cfg = replace(PLAIN, wrap_prob=1, wrap_min_width=20, wrap_max_width=20, hyphenate_prob=1, hyphen_word_prob=1)
    cjk = rendered(DOCS[4], cfg)
    lines = cjk.text.split("\n")
    assert all(len(line) <= 20 for line in lines) and len(lines) > 8
    assert "-" not in cjk.text  # wide characters wrap anywhere, without hyphens
    body = "".join(cjk.text[s:e] for s, e in cjk.segments[:1]).replace("\n", "")
    assert body == CJK
    french = rendered(StructuredDoc("fr", "Été", [Block("paragraph", "Cafe\u0301 " + FRENCH)]), cfg)
    assert "Café" in french.text and "é" in french.text and "\u0301" not in french.text
    assert re.sub(r"-\n", "", french.text).replace("\n", " ") == "Café " + FRENCH


# ------------------------------------------------------------------------------------------------------- datasets


def test_parquet_round_trip(tmp_path: Path) -> None:
    rows = list(make_examples(DOCS, BUSY, seed=1, variants=2))
    path = tmp_path / "out" / "train.parquet"
    assert write_dataset(iter(rows), path, BUSY, seed=1) == len(rows)
    assert pq.read_table(path).to_pylist() == rows
    meta = dataset_metadata(path)
    assert meta["labels"] == list(LABELS) and meta["seed"] == 1
    assert SynthConfig.from_dict(meta["config"]) == BUSY
    assert [p.name for p in path.parent.iterdir()] == ["train.parquet"]  # no temporary file left behind
    datasets = pytest.importorskip("datasets")
    loaded = datasets.Dataset.from_parquet(str(path), cache_dir=str(tmp_path / "cache"))
    assert loaded.num_rows == len(rows) and loaded[0]["labels"] == rows[0]["labels"]
    assert write_dataset([], tmp_path / "empty.parquet") == 0
    assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0


def test_split_by_doc_never_leaks_a_document() -> None:
    docs = [from_paragraphs(f"d{i}", f"T{i}", [LONG, FRENCH]) for i in range(10)]
    rows = list(make_examples(docs, SynthConfig(), seed=0, variants=3))
    train, held = split_by_doc(rows, 0.3, seed=5)
    train_ids, held_ids = {r["doc_id"] for r in train}, {r["doc_id"] for r in held}
    assert not train_ids & held_ids and len(held_ids) == 3 and len(train) + len(held) == len(rows)
    assert all(sum(r["doc_id"] == d for r in held) == 3 for d in held_ids)  # every variant goes with its document
    assert split_by_doc(rows[::-1], 0.3, seed=5)[1] == held[::-1]  # row order does not change which docs are held
    assert split_by_doc(rows, 0.0, seed=5) == (rows, [])
    assert split_by_doc(rows, 0.3, seed=5) == (train, held)
    with pytest.raises(ValueError):
        split_by_doc(rows, 1.5, seed=0)


def test_label_counts() -> None:
    rows = list(make_examples(DOCS, BUSY, seed=2))
    counts = label_counts(rows)
    assert list(counts) == list(LABELS)
    assert sum(counts.values()) == sum(len(r["labels"]) for r in rows)
    assert all(counts[name] > 0 for name in LABELS)
    assert label_counts([]) == dict.fromkeys(LABELS, 0)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="wrap_prob"):
        SynthConfig(wrap_prob=1.5)
    with pytest.raises(ValueError):
        SynthConfig(blank_lines_removed_prob=0.6, blank_lines_random_prob=0.6)
    with pytest.raises(ValueError):
        SynthConfig(wrap_min_width=80, wrap_max_width=40)
    with pytest.raises(ValueError):
        SynthConfig(list_markers=("+",))
    with pytest.raises(ValueError, match="colour"):
        SynthConfig.from_dict({"colour": 1})

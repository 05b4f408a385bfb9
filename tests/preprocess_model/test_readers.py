"""Tests of preprocess_model.readers: every format, every failure path, and exact spans into the normalized text."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path

import pytest

from preprocess_model.document import Document, ReadFailure, stable_id
from preprocess_model.readers import (
    ReaderConfig,
    file_doc_id,
    is_container,
    iter_files,
    normalize_text,
    read_file,
    read_paths,
)

FRENCH = (
    "Le cœur de l'été à Paris : où sont les élèves ? Ça va très bien, merci.\n"
    "« Déjà vu », dit-il — une façade naïve, un garçon, une fenêtre ouverte sur la rue.\n"
)


# ------------------------------------------------------------------------------------------------------------ helpers


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def check_spans(doc: Document) -> None:
    """The invariants every Document must keep: normalized text, and spans that are exact offsets into it."""
    assert normalize_text(doc.text) == doc.text
    lines = [line for line in doc.text.split("\n") if line]
    assert [doc.text[s:e] for s, e in doc.units] == lines
    for start, end, level in doc.meta.get("headings", []):
        assert 0 <= start < end <= len(doc.text) and 1 <= level <= 6
        assert "\n" not in doc.text[start:end]
    for start, end in doc.meta.get("pages", []):
        assert 0 <= start <= end <= len(doc.text)
    json.dumps(doc.meta)  # meta must be JSON-serializable


DEFAULTS = ReaderConfig()


def read_one(path: Path, config: ReaderConfig = DEFAULTS) -> Document:
    (item,) = list(read_file(path, config))
    assert isinstance(item, Document), item
    check_spans(item)
    return item


def fail_one(path: Path, config: ReaderConfig = DEFAULTS) -> ReadFailure:
    (item,) = list(read_file(path, config))
    assert isinstance(item, ReadFailure), item
    assert item.reason
    return item


def headings(doc: Document) -> list[tuple[str, int]]:
    return [(doc.text[s:e], level) for s, e, level in doc.meta["headings"]]


def make_pdf(pages: list[str], title: str = "", **encryption: str) -> bytes:
    fpdf = pytest.importorskip("fpdf")
    pdf = fpdf.FPDF()
    pdf.set_font("Helvetica", size=12)
    if title:
        pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 10, text)
    if encryption:
        pdf.set_encryption(**encryption)
    return bytes(pdf.output())


# ------------------------------------------------------------------------------------------------------ normalization


def test_normalize_text() -> None:
    raw = "\ufeff\n  \nCafe\u0301\x00 ok \r\nsecond\tline\t\rthird\x07\n\n\n\n\nfourth\x0cfifth\u2028sixth\n\n"
    assert normalize_text(raw) == "Café ok\nsecond\tline\nthird\n\nfourth\nfifth\nsixth"
    assert normalize_text(" \n\t\n") == ""
    assert normalize_text("  indented first line") == "  indented first line"
    assert normalize_text("lone \ud800surrogate") == "lone surrogate"


# ------------------------------------------------------------------------------------------------- one test per format


def test_txt(tmp_path: Path) -> None:
    raw = b"\n\n  Title line  \r\nbody one\r\n\r\n\r\n\r\nbody two   \n"
    path = write(tmp_path / "notes.txt", raw)
    doc = read_one(path)
    assert doc.text == "  Title line\nbody one\n\nbody two"
    assert doc.title == "Title line"
    assert doc.units == [(0, 12), (13, 21), (23, 31)]
    assert doc.meta == {"format": "txt"}
    assert doc.doc_id == file_doc_id(path) == stable_id(str(path.resolve()))
    assert doc.source == str(path.resolve())
    assert doc.sha256 == hashlib.sha256(raw).hexdigest()


def test_txt_title_is_truncated(tmp_path: Path) -> None:
    doc = read_one(write(tmp_path / "long.txt", "x" * 500 + "\nrest"))
    assert doc.title == "x" * 200


def test_markdown(tmp_path: Path) -> None:
    md = (
        "Intro line before any heading\n\n"
        "# Install Guide #\n\n"
        "Some text.\n\n"
        "```bash\n# not a heading\n```\n\n"
        "~~~\n## still code\n~~~\n\n"
        "## Linux\n\n"
        "Setext Heading\n==============\n\n"
        "Second Setext\n-------------\n\n"
        "paragraph line one\nparagraph line two\n---\n\n"
        "---\n\n"
        "#hashtag is not a heading\n"
        "   ### Indented three ok\n"
    )
    doc = read_one(write(tmp_path / "guide.md", md))
    assert doc.text == md.rstrip("\n")  # Markdown stays as written
    assert headings(doc) == [
        ("Install Guide", 1),
        ("Linux", 2),
        ("Setext Heading", 1),
        ("Second Setext", 2),
        ("Indented three ok", 3),
    ]
    assert doc.title == "Install Guide"
    assert doc.meta["format"] == "markdown"


def test_markdown_title_falls_back_to_first_line(tmp_path: Path) -> None:
    doc = read_one(write(tmp_path / "plain.markdown", "just prose\nmore prose\n"))
    assert doc.title == "just prose"
    assert doc.meta["headings"] == []


HTML_PAGE = """<!DOCTYPE html>
<html><head><title>  The   Page Title </title><style>p { color: red }</style>
<script>var hidden = "script text";</script></head>
<body>
<nav><a href="/">Home</a> <a href="/docs">Docs</a></nav>
<header>Site banner</header>
<main>
  <h1>Main <em>Heading</em></h1>
  <p>First   paragraph with <b>bold</b> and <a href="#">a link</a>.</p>
  <!-- a comment that must not appear -->
  <noscript>Enable JavaScript</noscript>
  <h2>Lists</h2>
  <ul><li>apple</li><li>banana<ul><li>cavendish</li></ul></li></ul>
  <ol><li>first step</li></ol>
  <h3>Table</h3>
  <table><tr><th>Name</th><th>Qty</th></tr><tr><td>pear</td><td>3</td></tr></table>
  <pre>def f():
    return 1</pre>
  <p>line one<br>line two</p>
  <form><label>Search</label><input value="typed"><button>Go</button></form>
  <svg><title>icon</title><text>svg text</text></svg>
  <dl><dt>Term</dt><dd>Definition</dd></dl>
</main>
<footer>Copyright footer</footer>
</body></html>
"""


def test_html(tmp_path: Path) -> None:
    doc = read_one(write(tmp_path / "page.html", HTML_PAGE))
    assert doc.text == (
        "Main Heading\n"
        "First paragraph with bold and a link.\n"
        "Lists\n"
        "- apple\n"
        "- banana\n"
        "  - cavendish\n"
        "- first step\n"
        "Table\n"
        "Name | Qty\n"
        "pear | 3\n"
        "def f():\n"
        "    return 1\n"
        "line one\n"
        "line two\n"
        "Search\n"
        "Term\n"
        "Definition"
    )
    assert doc.title == "The Page Title"
    assert headings(doc) == [("Main Heading", 1), ("Lists", 2), ("Table", 3)]
    assert doc.meta["format"] == "html"


def test_html_without_main_drops_page_chrome(tmp_path: Path) -> None:
    page = (
        "<html><body><header>Logo and menu</header><aside>Related links</aside>"
        "<div><h1>Body Heading</h1><section><header>Section header stays</header><p>Body text.</p></section></div>"
        "<footer>Footer text</footer></body></html>"
    )
    doc = read_one(write(tmp_path / "page.htm", page))
    assert doc.text == "Body Heading\nSection header stays\nBody text."
    assert doc.title == "Body Heading"  # no <title>: the first h1


def test_html_articles(tmp_path: Path) -> None:
    page = (
        "<html><body><div>Sidebar junk</div>"
        "<article><h2>One</h2><p>First post.</p><article><p>A nested comment.</p></article></article>"
        "<article><h2>Two</h2><p>Second post.</p></article></body></html>"
    )
    doc = read_one(write(tmp_path / "blog.html", page))
    assert doc.text == "One\nFirst post.\nA nested comment.\nTwo\nSecond post."
    assert doc.title == ""
    assert headings(doc) == [("One", 2), ("Two", 2)]


@pytest.mark.parametrize("label", ["windows-1252", "iso-8859-1"])
def test_html_declared_charset(tmp_path: Path, label: str) -> None:
    body = "<p>“Déjà vu” costs 5 €.</p>"
    page = f'<html><head><meta charset="{label}"><title>Été</title></head><body>{body}</body></html>'
    doc = read_one(write(tmp_path / "legacy.html", page.encode("cp1252")))
    assert doc.text == "“Déjà vu” costs 5 €."
    assert doc.title == "Été"


def test_pdf(tmp_path: Path) -> None:
    raw = make_pdf(["First page line one.\nFirst page line two.", "Second page text."], title="Quarterly Report")
    path = write(tmp_path / "report.pdf", raw)
    doc = read_one(path)
    assert doc.text == "First page line one.\nFirst page line two.\n\nSecond page text."
    assert doc.title == "Quarterly Report"
    assert [doc.text[s:e] for s, e in doc.meta["pages"]] == [
        "First page line one.\nFirst page line two.",
        "Second page text.",
    ]
    assert doc.meta["format"] == "pdf"
    assert doc.sha256 == hashlib.sha256(raw).hexdigest()
    assert doc.doc_id == file_doc_id(path)


def test_pdf_title_falls_back_to_first_line_and_blank_pages_get_empty_spans(tmp_path: Path) -> None:
    doc = read_one(write(tmp_path / "untitled.pdf", make_pdf(["Opening words.", "", "Closing words."])))
    assert doc.title == "Opening words."
    assert [doc.text[s:e] for s, e in doc.meta["pages"]] == ["Opening words.", "", "Closing words."]


def test_pdf_encrypted_with_user_password_fails(tmp_path: Path) -> None:
    raw = make_pdf(["Secret."], owner_password="owner", user_password="user")
    failure = fail_one(write(tmp_path / "locked.pdf", raw))
    assert failure.reason.startswith("encrypted PDF")


def test_pdf_encrypted_with_empty_user_password_is_read(tmp_path: Path) -> None:
    raw = make_pdf(["Readable anyway."], owner_password="owner")
    assert read_one(write(tmp_path / "owner-only.pdf", raw)).text == "Readable anyway."


def test_pdf_truncated_fails(tmp_path: Path) -> None:
    raw = make_pdf(["Some text.", "More text."])
    failure = fail_one(write(tmp_path / "truncated.pdf", raw[: len(raw) // 2]))
    assert "pdf" in failure.reason.lower()


def test_pdf_without_text_fails(tmp_path: Path) -> None:
    failure = fail_one(write(tmp_path / "scan.pdf", make_pdf([""])))
    assert failure.reason == "no extractable text (scanned PDF?)"


def test_jsonl(tmp_path: Path) -> None:
    lines = [
        b'{"id": "a", "text": "Alpha text.\\nSecond line.", "title": "Alpha", "lang": "en", "n": 3, "tags": ["x"]}',
        b"",
        b"{not json}",
        b'{"id": 7, "text": "Numeric id."}',
        b'{"id": "no-text", "body": "wrong field"}',
        b'["a", "list"]',
        b'{"text": "No id here."}\r',
        b'{"id": "bad-utf8", "text": "\xff\xfe"}',
        b'{"id": "", "text": "Empty id."}',
    ]
    path = write(tmp_path / "corpus.jsonl", b"\n".join(lines))
    items = list(read_file(path))
    docs = [item for item in items if isinstance(item, Document)]
    failures = [item for item in items if isinstance(item, ReadFailure)]
    source = str(path.resolve())

    assert [d.doc_id for d in docs] == ["a", "7", stable_id(source, "line7"), stable_id(source, "line9")]
    alpha = docs[0]
    check_spans(alpha)
    assert alpha.text == "Alpha text.\nSecond line."
    assert alpha.title == "Alpha"
    assert alpha.source == f"{source}#a"
    assert alpha.sha256 == hashlib.sha256(lines[0]).hexdigest()
    assert alpha.meta == {"format": "jsonl", "fields": {"lang": "en", "n": 3}}
    assert docs[1].title == ""
    assert docs[2].sha256 == hashlib.sha256(lines[6].rstrip(b"\r")).hexdigest()

    assert [f.source for f in failures] == [f"{source}:3", f"{source}:5", f"{source}:6", f"{source}:8"]
    assert failures[0].reason.startswith("malformed JSON")
    assert "'text'" in failures[1].reason and failures[1].doc_id == "no-text"
    assert "not a JSON object" in failures[2].reason


def test_jsonl_custom_fields_and_oversized_line(tmp_path: Path) -> None:
    lines = [
        json.dumps({"key": "k1", "body": "small", "heading": "H"}),
        json.dumps({"key": "k2", "body": "x" * 500}),
        json.dumps({"key": "k3", "body": "after the big one"}),
    ]
    path = write(tmp_path / "custom.jsonl", "\n".join(lines) + "\n")
    config = ReaderConfig(text_field="body", id_field="key", title_field="heading", max_bytes=200)
    items = list(read_file(path, config))
    assert [type(item).__name__ for item in items] == ["Document", "ReadFailure", "Document"]
    assert (items[0].doc_id, items[0].text, items[0].title) == ("k1", "small", "H")
    assert items[1].reason.startswith("too large")
    assert items[2].text == "after the big one"


def test_empty_containers_fail(tmp_path: Path) -> None:
    assert fail_one(write(tmp_path / "blank.jsonl", "\n\n  \n")).reason.startswith("empty")


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "records.parquet"
    table = pa.table(
        {
            "doc_key": ["p1", "p2", "p3"],
            "content": ["Parquet one.\r\nLine two.", None, "Parquet three."],
            "name": ["Title One", "Two", None],
            "ignored": [1, 2, 3],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    config = ReaderConfig(text_field="content", id_field="doc_key", title_field="name")
    items = list(read_file(path, config))
    assert [type(item).__name__ for item in items] == ["Document", "ReadFailure", "Document"]
    first, failure, third = items
    check_spans(first)
    assert (first.doc_id, first.text, first.title) == ("p1", "Parquet one.\nLine two.", "Title One")
    assert first.source == f"{path.resolve()}#p1"
    expected = hashlib.sha256(b"Parquet one.\r\nLine two.\x1fp1\x1fTitle One").hexdigest()
    assert first.sha256 == expected
    assert first.meta == {"format": "parquet"}
    assert failure.source == f"{path.resolve()}:row1" and failure.doc_id == "p2"
    assert (third.doc_id, third.title) == ("p3", "")


def test_parquet_missing_columns(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "no_id.parquet"
    pq.write_table(pa.table({"text": ["one", "two"]}), path)
    docs = list(read_file(path))
    source = str(path.resolve())
    assert [d.doc_id for d in docs] == [stable_id(source, "row0"), stable_id(source, "row1")]

    failure = fail_one(path, ReaderConfig(text_field="body"))
    assert "'body'" in failure.reason and "text" in failure.reason  # names the available columns


def test_parquet_corrupt(tmp_path: Path) -> None:
    failure = fail_one(write(tmp_path / "broken.parquet", b"PAR1 this is not parquet at all"))
    assert "Parquet" in failure.reason


# ------------------------------------------------------------------------------------------------- folders and globs


def test_iter_files_walks_sorted_with_globs_and_hidden(tmp_path: Path) -> None:
    for name in [
        "b.txt",
        "a.md",
        "notes.xyz",
        ".hidden.txt",
        ".git/config.txt",
        "docs/guide.html",
        "docs/drafts/wip.md",
        "docs/z.pdf",
        "data/rows.jsonl",
    ]:
        write(tmp_path / name, "content")

    def names(config: ReaderConfig) -> list[str]:
        found = list(iter_files([tmp_path], config))
        assert all(isinstance(p, Path) for p in found)
        return [p.relative_to(tmp_path).as_posix() for p in found]

    everything = ["a.md", "b.txt", "data/rows.jsonl", "docs/drafts/wip.md", "docs/guide.html", "docs/z.pdf"]
    assert names(ReaderConfig()) == everything
    assert names(ReaderConfig(include=("*.md",))) == ["a.md", "docs/drafts/wip.md"]
    assert names(ReaderConfig(include=("docs/*",), exclude=("*.pdf",))) == ["docs/drafts/wip.md", "docs/guide.html"]
    assert names(ReaderConfig(exclude=("drafts",))) == [p for p in everything if "drafts" not in p]


def test_iter_files_direct_paths(tmp_path: Path) -> None:
    text = write(tmp_path / "x.txt", "x")
    odd = write(tmp_path / "data.xyz", "x")
    found = list(iter_files([text, odd, tmp_path / "missing.txt", text], ReaderConfig(exclude=("*.txt",))))
    assert found[0] == text  # a file named directly ignores the globs, and is listed once
    assert isinstance(found[1], ReadFailure) and found[1].reason == "unsupported file type .xyz"
    assert isinstance(found[2], ReadFailure) and "no such file" in found[2].reason
    assert len(found) == 3


def test_read_paths_mixed_folder(tmp_path: Path) -> None:
    write(tmp_path / "good.txt", "good text")
    write(tmp_path / "good.md", "# Good\n\nmarkdown")
    write(tmp_path / "good.html", "<p>good html</p>")
    write(tmp_path / "empty.txt", b"")
    write(tmp_path / "binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    write(tmp_path / "bad.pdf", b"%PDF-1.7 garbage")
    write(tmp_path / "rows.jsonl", '{"id": "r1", "text": "row one"}\n{broken\n')
    items = list(read_paths([tmp_path]))
    docs = {Path(d.source.split("#")[0]).name for d in items if isinstance(d, Document)}
    failures = {Path(f.source.split(":")[0]).name for f in items if isinstance(f, ReadFailure)}
    assert docs == {"good.txt", "good.md", "good.html", "rows.jsonl"}
    assert failures == {"empty.txt", "binary.txt", "bad.pdf", "rows.jsonl"}
    assert len(items) == 8


# ---------------------------------------------------------------------------------------- encodings and bad content


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1"])
def test_legacy_8bit_text(tmp_path: Path, encoding: str) -> None:
    text = FRENCH.replace("œ", "oe").replace("—", "-") if encoding == "latin-1" else FRENCH  # not in latin-1
    doc = read_one(write(tmp_path / "fr.txt", text.encode(encoding)))
    assert doc.text == text.rstrip("\n")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig", "utf-32"])
def test_unicode_with_byte_order_mark(tmp_path: Path, encoding: str) -> None:
    raw = ("\ufeff" if encoding == "utf-16-be" else "").encode(encoding) + FRENCH.encode(encoding)
    doc = read_one(write(tmp_path / "fr.md", raw))
    assert doc.text == FRENCH.rstrip("\n")


@pytest.mark.parametrize(
    "raw",
    [bytes(random.Random(seed).randrange(128, 256) for _ in range(2000)) for seed in range(3)]
    + [b"\xff\xfe\x00", b"valid start \xc3\x28 invalid utf-8 \xa0\xa1", b"\x81\x8d\x8f\x90\x9d"],
)
def test_invalid_encodings_never_crash(tmp_path: Path, raw: bytes) -> None:
    (item,) = list(read_file(write(tmp_path / "odd.txt", raw)))
    if isinstance(item, Document):
        check_spans(item)
    else:
        assert item.reason


@pytest.mark.parametrize(
    "raw",
    [
        bytes(random.Random(1).randrange(256) for _ in range(4096)) + b"\x00",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10",
    ],
)
def test_binary_content_fails(tmp_path: Path, raw: bytes) -> None:
    assert fail_one(write(tmp_path / "image.txt", raw)).reason.startswith("binary content")


@pytest.mark.parametrize("name", ["empty.txt", "empty.md", "empty.html", "empty.pdf"])
def test_empty_file_fails(tmp_path: Path, name: str) -> None:
    assert fail_one(write(tmp_path / name, b"")).reason == "empty file"


@pytest.mark.parametrize(("name", "content"), [("blank.txt", " \n\t\r\n"), ("blank.html", "<script>x()</script>")])
def test_no_text_after_normalization_fails(tmp_path: Path, name: str, content: str) -> None:
    assert fail_one(write(tmp_path / name, content)).reason.startswith("empty")


def test_huge_sparse_file_is_rejected_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    with path.open("wb") as f:
        f.write(b"one very long line ")
        f.truncate(200_000_000)  # sparse: costs no disk and no time
    started = time.perf_counter()
    failure = fail_one(path)
    assert time.perf_counter() - started < 1.0
    assert failure.reason == "too large: 200000000 bytes > max_bytes 50000000"


def test_file_over_configured_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "small.md", "x" * 101)
    assert fail_one(path, ReaderConfig(max_bytes=100)).reason.startswith("too large: 101 bytes")
    assert read_one(path, ReaderConfig(max_bytes=101)).text == "x" * 101


def test_unsupported_and_missing_paths(tmp_path: Path) -> None:
    unsupported = fail_one(write(tmp_path / "table.xyz", "data"))
    assert unsupported.reason == "unsupported file type .xyz"
    (missing,) = list(read_paths([tmp_path / "nowhere.txt"]))
    assert isinstance(missing, ReadFailure) and missing.source == str((tmp_path / "nowhere.txt").resolve())
    assert "cannot read" in fail_one(tmp_path / "nowhere.md").reason


def test_unreadable_files_become_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder_named_like_a_file = tmp_path / "folder.txt"
    folder_named_like_a_file.mkdir()
    assert fail_one(folder_named_like_a_file).reason == "not a regular file"

    locked = write(tmp_path / "locked.txt", "secret")
    rows = write(tmp_path / "rows.jsonl", '{"text": "x"}')

    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)  # chmod would not stop the tests when they run as root
    assert fail_one(locked).reason == "cannot read: Permission denied"
    assert fail_one(rows).reason == "cannot read: Permission denied"


def test_is_container() -> None:
    assert is_container(Path("a.jsonl")) and is_container(Path("b.PARQUET"))
    assert not is_container(Path("c.txt")) and not is_container(Path("d.pdf"))


def test_special_files_in_a_folder(tmp_path: Path) -> None:
    write(tmp_path / "ok.txt", "fine")
    (tmp_path / "loop.md").symlink_to(tmp_path / "loop.md")
    os.mkfifo(tmp_path / "pipe.txt")  # reading a FIFO would block forever
    items = list(read_paths([tmp_path]))
    assert [type(item).__name__ for item in items] == ["ReadFailure", "Document"]
    assert items[0].reason.startswith("cannot read")
    assert fail_one(tmp_path / "pipe.txt").reason == "not a regular file"

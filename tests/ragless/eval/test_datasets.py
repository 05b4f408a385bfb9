"""Benchmark loaders on a tiny data folder in each format, and once on the real shared data (slow).

The fixture folder is laid out file for file like ../shared/data (see its README.md files) with a few made-up rows:
the real data never enters the repository.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from preprocess_model.document import sha256_hex
from ragless.eval.datasets import (
    DATASETS,
    PARAGRAPH_SEP,
    XQUAD_LANGS,
    EvalSet,
    GoldSpan,
    describe,
    load,
    sample_questions,
)

REAL_DATA = Path(__file__).parents[3] / ".." / "shared" / "data"

# SQuAD paragraphs: one with a line break inside and a trailing space (texts must survive unchanged), answers that
# occur twice (the first occurrence is the gold one), an article id with underscores and parentheses.
SQUAD_CORPUS = [
    {"doc_id": "Super_Bowl_50_1", "title": "Super Bowl 50", "text": "Denver met Carolina.\nDenver won 24–10. "},
    {"doc_id": "Super_Bowl_50_0", "title": "Super Bowl 50", "text": "Super Bowl 50 was played by Denver and Carolina."},
    {"doc_id": "Sky_(United_Kingdom)_0", "title": "Sky (United Kingdom)", "text": "Sky UK is a broadcaster."},
]
SQUAD_V11_QUESTIONS = [
    {"qid": "q1", "question": "Who won?", "answers": ["Denver", "Denver"], "gold_doc_ids": ["Super_Bowl_50_1"]},
    {"qid": "q2", "question": "Score?", "answers": ["24–10", "won 24–10"], "gold_doc_ids": ["Super_Bowl_50_1"]},
    {"qid": "q3", "question": "Which game?", "answers": ["Super Bowl 50"], "gold_doc_ids": ["Super_Bowl_50_0"]},
    {
        "qid": "q4",
        "question": "What is Sky UK?",
        "answers": ["a broadcaster"],
        "gold_doc_ids": ["Sky_(United_Kingdom)_0"],
    },
]
SQUAD_V20_QUESTIONS = [
    {
        "qid": "p1",
        "question": "Who won?",
        "answers": ["Denver"],
        "gold_doc_ids": ["Super_Bowl_50_1"],
        "is_impossible": False,
    },
    {
        "qid": "p2",
        "question": "Who lost 2017?",
        "answers": [],
        "gold_doc_ids": ["Super_Bowl_50_0"],
        "is_impossible": True,
    },
]

# XQuAD (German): answer_starts point at the second "Denver" (kept), at a wrong place (first occurrence used), and at
# an answer that is not in the paragraph (no span).
XQUAD_CORPUS = [
    {"doc_id": "a00_p00", "title": "Super_Bowl_50", "text": "Denver schlug Carolina. Denver gewann."},
    {"doc_id": "a00_p01", "title": "Super_Bowl_50", "text": "Das Spiel fand in Santa Clara statt."},
    {"doc_id": "a01_p00", "title": "Warsaw", "text": "Warschau ist die Hauptstadt Polens."},
]
XQUAD_QUESTIONS = [
    {"qid": "x1", "question": "Wer gewann?", "answers": ["Denver"], "answer_starts": [24], "gold_doc_ids": ["a00_p00"]},
    {"qid": "x2", "question": "Wo?", "answers": ["Santa Clara"], "answer_starts": [3], "gold_doc_ids": ["a00_p01"]},
    {"qid": "x3", "question": "Was?", "answers": ["Krakau"], "answer_starts": [0], "gold_doc_ids": ["a01_p00"]},
]

SCIFACT_CORPUS = [
    {"_id": "11", "title": "Abstract one", "text": "Aspirin lowers fever. It is cheap.", "metadata": {}},
    {"_id": "22", "title": "Abstract two", "text": "Vitamin C does not cure colds.", "metadata": {}},
    {"_id": "33", "title": "Abstract three", "text": "Coffee is popular.", "metadata": {}},
]
SCIFACT_QUERIES = [
    {"_id": "1", "text": "Aspirin reduces fever.", "metadata": {}},
    {"_id": "2", "text": "Vitamin C cures colds.", "metadata": {}},
    {"_id": "9", "text": "Coffee is unpopular.", "metadata": {}},  # a train claim: never loaded
]
SCIFACT_TEST_QRELS = "query-id\tcorpus-id\tscore\n1\t11\t1\n1\t33\t0\n2\t22\t1\n2\t11\t2\n"
SCIFACT_TRAIN_QRELS = "query-id\tcorpus-id\tscore\n9\t33\t1\n"

# spf-fr: a page with blank lines (passages between them) and one with single line breaks only (passages = lines).
SPF_CORPUS = [
    {"doc_id": "F1", "text": "Intro du texte.\nSuite.\n\n Tableau \n\n\nFin de page.", "url": "https://example.org/F1"},
    {"doc_id": "F2", "text": "Première ligne.\nDeuxième ligne.\n", "url": "https://example.org/F2"},
]
SPF_QUESTIONS = [
    {
        "qid": "F1-ann",
        "question": "Quelle suite ?",
        "answers": ["Suite."],
        "answer_starts": [16],
        "gold_doc_ids": ["F1"],
        "annotated_span": True,
    },
    {"qid": "F1-title", "question": "Titre un ?", "answers": [], "gold_doc_ids": ["F1"], "annotated_span": False},
    {"qid": "F2-title", "question": "Titre deux ?", "answers": [], "gold_doc_ids": ["F2"], "annotated_span": False},
]


def write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


@pytest.fixture
def benchmark_data(tmp_path: Path) -> Path:
    """A data folder holding every format: squad v1.1 and v2.0, xquad de, scifact and spf_fr."""
    root = tmp_path / "data"
    squad = root / "squad" / "normalized"
    write_jsonl_gz(squad / "v1.1" / "corpus.jsonl.gz", SQUAD_CORPUS)
    write_jsonl_gz(squad / "v1.1" / "questions.jsonl.gz", SQUAD_V11_QUESTIONS)
    write_jsonl_gz(squad / "v2.0" / "corpus.jsonl.gz", SQUAD_CORPUS[:2])
    write_jsonl_gz(squad / "v2.0" / "questions.jsonl.gz", SQUAD_V20_QUESTIONS)
    write_jsonl_gz(root / "xquad" / "normalized" / "de" / "corpus.jsonl.gz", XQUAD_CORPUS)
    write_jsonl_gz(root / "xquad" / "normalized" / "de" / "questions.jsonl.gz", XQUAD_QUESTIONS)
    scifact = root / "scifact"
    write_jsonl_gz(scifact / "corpus.jsonl.gz", SCIFACT_CORPUS)
    write_jsonl_gz(scifact / "queries.jsonl.gz", SCIFACT_QUERIES)
    (scifact / "qrels").mkdir()
    (scifact / "qrels" / "test.tsv").write_text(SCIFACT_TEST_QRELS, encoding="utf-8")
    (scifact / "qrels" / "train.tsv").write_text(SCIFACT_TRAIN_QRELS, encoding="utf-8")
    write_jsonl_gz(root / "spf_fr" / "normalized" / "corpus.jsonl.gz", SPF_CORPUS)
    write_jsonl_gz(root / "spf_fr" / "normalized" / "questions.jsonl.gz", SPF_QUESTIONS)
    return root


def span_text(evalset: EvalSet, span: GoldSpan) -> str:
    return evalset.document(span.doc_id).text[span.char_start : span.char_end]


def assert_spans_consistent(evalset: EvalSet) -> None:
    """Passages lie in their documents; every answer span is one of the answers and lies inside the evidence."""
    for doc in evalset.documents:
        assert all(0 <= s < e <= len(doc.text) for s, e in evalset.passages[doc.doc_id])
    for q in evalset.questions:
        for gold in q.evidence:
            assert 0 <= gold.char_start <= gold.char_end <= len(evalset.document(gold.doc_id).text)
        for span in q.answer_spans:
            assert span_text(evalset, span) in q.answers, q.qid
            assert any(
                e.doc_id == span.doc_id and e.char_start <= span.char_start and span.char_end <= e.char_end
                for e in q.evidence
            ), q.qid


def test_names():
    assert len(XQUAD_LANGS) == 12 and len(DATASETS) == len(set(DATASETS)) == 16
    assert {"squad-v1.1", "squad-v2.0", "scifact", "spf-fr", "xquad-en", "xquad-zh"} <= set(DATASETS)


def test_squad_paragraphs_are_joined_into_articles(benchmark_data):
    ev = load("squad-v1.1", benchmark_data)
    assert [d.doc_id for d in ev.documents] == ["Super_Bowl_50", "Sky_(United_Kingdom)"]
    bowl = ev.document("Super_Bowl_50")
    paragraphs = [SQUAD_CORPUS[1]["text"], SQUAD_CORPUS[0]["text"]]  # the file lists paragraph 1 first
    assert bowl.text == PARAGRAPH_SEP.join(paragraphs)
    assert [bowl.text[s:e] for s, e in ev.passages["Super_Bowl_50"]] == paragraphs
    assert bowl.units == ev.passages["Super_Bowl_50"]
    assert bowl.meta == {
        "format": "benchmark",
        "dataset": "squad-v1.1",
        "passage_ids": ["Super_Bowl_50_0", "Super_Bowl_50_1"],
    }
    assert bowl.title == "Super Bowl 50" and bowl.source == "squad-v1.1:Super_Bowl_50"
    assert bowl.sha256 == sha256_hex(bowl.text.encode("utf-8"))
    assert ev.document("Sky_(United_Kingdom)").title == "Sky (United Kingdom)"
    assert "CC BY-SA 4.0" in ev.source


def test_squad_evidence_and_answer_spans(benchmark_data):
    ev = load("squad-v1.1", benchmark_data)
    assert_spans_consistent(ev)
    q1, q2, _, q4 = ev.questions
    assert q1.answers == ["Denver"]  # duplicates of the crowd answers dropped
    assert [span_text(ev, g) for g in q1.evidence] == [SQUAD_CORPUS[0]["text"]]
    # "Denver" occurs twice in the gold paragraph and earlier in the article: the first occurrence in the paragraph.
    assert q1.answer_spans == [GoldSpan("Super_Bowl_50", q1.evidence[0].char_start, q1.evidence[0].char_start + 6)]
    assert [span_text(ev, s) for s in q2.answer_spans] == ["24–10", "won 24–10"]
    assert q1.relevance == {"Super_Bowl_50_1": 1}
    assert (q1.kind, q1.answerable, q1.lang) == ("span", True, "en")
    assert q4.evidence == [GoldSpan("Sky_(United_Kingdom)", 0, len(SQUAD_CORPUS[2]["text"]))]


def test_squad_v2_unanswerable_questions(benchmark_data):
    ev = load("squad-v2.0", benchmark_data)
    answerable, impossible = ev.questions
    assert (answerable.kind, answerable.answerable, answerable.answers) == ("span", True, ["Denver"])
    assert (impossible.kind, impossible.answerable, impossible.answers) == ("unanswerable", False, [])
    assert impossible.answer_spans == []
    assert [span_text(ev, g) for g in impossible.evidence] == [SQUAD_CORPUS[1]["text"]]
    assert impossible.relevance == {"Super_Bowl_50_0": 1}
    assert describe(ev)["questions_by_kind"] == {"span": 1, "unanswerable": 1}


def test_xquad_language_and_answer_starts(benchmark_data):
    ev = load("xquad-de", benchmark_data)
    assert [d.doc_id for d in ev.documents] == ["a00", "a01"]
    assert ev.document("a00").title == "Super Bowl 50"
    assert ev.document("a00").meta["passage_ids"] == ["a00_p00", "a00_p01"]
    assert all(q.lang == "de" for q in ev.questions)
    assert_spans_consistent(ev)
    kept, wrong_start, absent = ev.questions
    assert kept.answer_spans == [GoldSpan("a00", 24, 30)]  # the given start, at the second "Denver"
    second_paragraph = len(XQUAD_CORPUS[0]["text"]) + len(PARAGRAPH_SEP)
    assert wrong_start.answer_spans == [GoldSpan("a00", second_paragraph + 18, second_paragraph + 29)]
    assert absent.answer_spans == [] and absent.answers == ["Krakau"]
    assert absent.relevance == {"a01_p00": 1}


def test_scifact_loads_test_qrels_only(benchmark_data):
    ev = load("scifact", benchmark_data)
    assert [d.doc_id for d in ev.documents] == ["11", "22", "33"]
    assert ev.document("11").title == "Abstract one"
    assert ev.passages["22"] == [(0, len(ev.document("22").text))]
    assert [q.qid for q in ev.questions] == ["1", "2"]
    claim = ev.questions[0]
    assert (claim.question, claim.kind, claim.answers, claim.answerable) == (
        "Aspirin reduces fever.",
        "claim",
        [],
        True,
    )
    assert claim.relevance == {"11": 1, "33": 0}
    assert claim.evidence == [GoldSpan("11", 0, len(ev.document("11").text))]  # score 0 is not evidence
    assert ev.questions[1].relevance == {"22": 1, "11": 2}


def test_spf_fr_pages_and_questions(benchmark_data):
    ev = load("spf-fr", benchmark_data)
    page = ev.document("F1")
    assert page.title == "" and page.text == SPF_CORPUS[0]["text"] and page.meta["url"] == SPF_CORPUS[0]["url"]
    ann, title_q, _ = ev.questions
    assert (ann.kind, ann.answers, ann.lang) == ("span", ["Suite."], "fr")
    assert ann.answer_spans == [GoldSpan("F1", 16, 22)]
    assert ann.evidence == [GoldSpan("F1", 0, len(page.text))]
    assert (title_q.kind, title_q.answers, title_q.answer_spans) == ("title", [], [])
    assert title_q.evidence == ann.evidence and title_q.relevance == {"F1": 1}
    assert_spans_consistent(ev)


def test_spf_fr_passages_split_on_blank_lines_else_lines(benchmark_data):
    ev = load("spf-fr", benchmark_data)
    blank_lines, lines_only = ev.document("F1"), ev.document("F2")
    assert [blank_lines.text[s:e] for s, e in ev.passages["F1"]] == [
        "Intro du texte.\nSuite.",
        "Tableau",
        "Fin de page.",
    ]
    assert [lines_only.text[s:e] for s, e in ev.passages["F2"]] == ["Première ligne.", "Deuxième ligne."]


def test_sampling_is_deterministic_and_keeps_the_corpus(benchmark_data):
    items = list(range(100))
    first = sample_questions(items, 10, seed=3)
    assert first == sample_questions(items, 10, seed=3) == sorted(first) and len(first) == 10
    assert sample_questions(items, 10, seed=4) != first
    assert sample_questions(items, None, seed=3) == items == sample_questions(items, 500, seed=3)
    ev = load("squad-v1.1", benchmark_data, limit=2, seed=1)
    assert len(ev.questions) == 2 and len(ev.documents) == 2
    assert [q.qid for q in ev.questions] == [
        q.qid for q in load("squad-v1.1", benchmark_data, limit=2, seed=1).questions
    ]


def test_describe(benchmark_data):
    ev = load("spf-fr", benchmark_data)
    assert describe(ev) == {
        "name": "spf-fr",
        "documents": 2,
        "passages": 5,
        "questions": 3,
        "questions_by_kind": {"span": 1, "title": 2},
        "mean_document_chars": round(sum(len(row["text"]) for row in SPF_CORPUS) / 2, 1),
    }


def test_unknown_name_lists_the_valid_ones(benchmark_data):
    with pytest.raises(ValueError, match="squad-v1.1.*xquad-zh"):
        load("squad-v3", benchmark_data)


def test_missing_data_names_the_expected_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"squad/normalized/v1\.1/corpus\.jsonl\.gz.*--data"):
        load("squad-v1.1", tmp_path / "nowhere")


# The counts the data READMEs state: (documents, passages, questions, questions by kind).
REAL_COUNTS = {
    "squad-v1.1": (48, 2067, 10570, {"span": 10570}),
    "squad-v2.0": (35, 1204, 11873, {"span": 5928, "unanswerable": 5945}),
    **{f"xquad-{lang}": (48, 240, 1190, {"span": 1190}) for lang in XQUAD_LANGS},
    "scifact": (5183, 5183, 300, {"claim": 300}),
    "spf-fr": (535, None, 640, {"span": 105, "title": 535}),  # passages: our own cut, not a README count
}


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="the shared evaluation data is not here")
def test_real_data_counts_and_spans():
    assert set(REAL_COUNTS) == set(DATASETS)
    for name in DATASETS:
        start = time.perf_counter()
        ev = load(name, REAL_DATA)
        if name == "squad-v1.1":
            assert time.perf_counter() - start < 2.0
        info = describe(ev)
        documents, passages, questions, kinds = REAL_COUNTS[name]
        assert (info["documents"], info["questions"], info["questions_by_kind"]) == (documents, questions, kinds), name
        assert passages is None or info["passages"] == passages, name
        assert_spans_consistent(ev)
        # every answer of an extractive question is found in its gold passage
        assert all(len(q.answer_spans) == len(q.answers) for q in ev.questions), name

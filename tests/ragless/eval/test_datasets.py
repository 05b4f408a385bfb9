"""Benchmark loaders on a tiny data folder in each format, and once on the real shared data (slow).

The fixture folder is laid out file for file like ../shared/data (see its README.md files) with a few made-up rows:
the real data never enters the repository.
"""

from __future__ import annotations

import time

import pytest
from benchdata import REAL_DATA, SPF_CORPUS, SQUAD_CORPUS, XQUAD_CORPUS

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

"""A tiny data folder laid out file for file like ../shared/data (see its README.md files), with made-up rows.

The real data never enters the repository. `write_benchmark_data` is used by the `benchmark_data` fixture (conftest.py).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

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


def write_benchmark_data(tmp_path: Path) -> Path:
    """A data folder holding every format: squad v1.1 and v2.0, xquad de and en, scifact and spf_fr."""
    root = tmp_path / "data"
    squad = root / "squad" / "normalized"
    write_jsonl_gz(squad / "v1.1" / "corpus.jsonl.gz", SQUAD_CORPUS)
    write_jsonl_gz(squad / "v1.1" / "questions.jsonl.gz", SQUAD_V11_QUESTIONS)
    write_jsonl_gz(squad / "v2.0" / "corpus.jsonl.gz", SQUAD_CORPUS[:2])
    write_jsonl_gz(squad / "v2.0" / "questions.jsonl.gz", SQUAD_V20_QUESTIONS)
    for lang in ("de", "en"):  # the same made-up rows under two languages (the loaders do not care)
        write_jsonl_gz(root / "xquad" / "normalized" / lang / "corpus.jsonl.gz", XQUAD_CORPUS)
        write_jsonl_gz(root / "xquad" / "normalized" / lang / "questions.jsonl.gz", XQUAD_QUESTIONS)
    scifact = root / "scifact"
    write_jsonl_gz(scifact / "corpus.jsonl.gz", SCIFACT_CORPUS)
    write_jsonl_gz(scifact / "queries.jsonl.gz", SCIFACT_QUERIES)
    (scifact / "qrels").mkdir()
    (scifact / "qrels" / "test.tsv").write_text(SCIFACT_TEST_QRELS, encoding="utf-8")
    (scifact / "qrels" / "train.tsv").write_text(SCIFACT_TRAIN_QRELS, encoding="utf-8")
    write_jsonl_gz(root / "spf_fr" / "normalized" / "corpus.jsonl.gz", SPF_CORPUS)
    write_jsonl_gz(root / "spf_fr" / "normalized" / "questions.jsonl.gz", SPF_QUESTIONS)
    return root

"""Benchmark loaders: the public evaluation sets as `Document`s, gold passages and questions with gold spans.

Every set loads into one shape, `EvalSet`:

- ``documents``: the corpus the system under test indexes. Always whole articles or pages, never the benchmark's
  pre-cut paragraphs, so that segmentation is part of what is measured. SQuAD and XQuAD paragraphs are joined, in
  paragraph order, with ``PARAGRAPH_SEP`` into one document per article; paragraph texts are kept byte for byte.
- ``passages``: the benchmark's own segmentation as spans of each document's text, the oracle that corpus mode
  "gold" of the harness indexes instead of learned segments. ``Document.units`` holds the same spans.
- ``questions``: each with its gold evidence and answer occurrences as spans into the documents, and graded
  relevance for retrieval metrics.

Texts are kept exactly as the data gives them, not passed through the readers' ``normalize_text`` (some have
trailing spaces, zero-width or non-NFC characters): every gold offset points into them as they are.

The files are the ``normalized/`` copies (SQuAD, XQuAD, spf-fr) and the BEIR layout (SciFact) described in the data
folder's README.md files; the data itself never enters this repository.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from preprocess_model.document import Document, Span, sha256_hex

XQUAD_LANGS = ("en", "ar", "de", "el", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh")
DATASETS: tuple[str, ...] = (
    "squad-v1.1",
    "squad-v2.0",
    *(f"xquad-{lang}" for lang in XQUAD_LANGS),
    "scifact",
    "spf-fr",
)

PARAGRAPH_SEP = "\n\n"  # joins the paragraphs of a SQuAD/XQuAD article (no paragraph holds a blank line)

_SQUAD_LICENSE = "rebuilt from the rajpurkar/SQuAD-explorer pages; CC BY-SA 4.0 (Wikipedia text)"
_SOURCES = {
    "squad-v1.1": f"SQuAD v1.1 dev, {_SQUAD_LICENSE}",
    "squad-v2.0": f"SQuAD v2.0 dev, {_SQUAD_LICENSE}",
    **{f"xquad-{lang}": f"XQuAD {lang}, google-deepmind/xquad; CC BY-SA 4.0 (Wikipedia text)" for lang in XQUAD_LANGS},
    "scifact": "SciFact test claims, BEIR layout (castorini/anserini-tools qrels, SciFact release abstracts); "
    "CC BY-NC 2.0, non-commercial use only",
    "spf-fr": "Service-Public.fr QA, Etalab PIAF (etalab-ia/piaf-ml); MIT, page texts DILA under Licence Ouverte 2.0",
}


@dataclass(frozen=True)
class GoldSpan:
    """A gold stretch of a corpus document: ``document(doc_id).text[char_start:char_end]`` (end exclusive)."""

    doc_id: str
    char_start: int
    char_end: int


@dataclass
class EvalQuestion:
    """One benchmark question and its gold.

    answers:      unique gold answer strings as the data gives them; [] when unanswerable or the task has none.
    answerable:   False only for SQuAD v2.0 impossible questions.
    evidence:     the gold passage(s): the gold paragraph inside its article (SQuAD, XQuAD), the whole gold document
                  (SciFact, spf-fr). SQuAD v2.0 unanswerable questions keep the paragraph they were asked about.
    answer_spans: where the answers occur inside the evidence: at the data's ``answer_starts`` where the text there
                  matches, else at the answer's first occurrence in the gold paragraph; answers not found have none.
    relevance:    graded relevance keyed by the benchmark's retrieval unit: the original paragraph id for SQuAD and
                  XQuAD (found in ``Document.meta["passage_ids"]``, aligned with ``EvalSet.passages``), the document
                  id for SciFact (its qrels score) and spf-fr (1).
    kind:         "span" (extractive answer), "unanswerable" (SQuAD v2.0), "title" (spf-fr page-title question),
                  "claim" (SciFact).
    lang:         ISO 639-1 code of the question and its corpus.
    """

    qid: str
    question: str
    answers: list[str]
    answerable: bool
    evidence: list[GoldSpan]
    answer_spans: list[GoldSpan]
    relevance: dict[str, int]
    kind: str
    lang: str


@dataclass
class EvalSet:
    """A loaded benchmark: corpus, the benchmark's own passages of it, and questions (see the module docstring)."""

    name: str
    documents: list[Document]
    passages: dict[str, list[Span]]
    questions: list[EvalQuestion]
    source: str

    @cached_property
    def _by_id(self) -> dict[str, Document]:
        return {doc.doc_id: doc for doc in self.documents}

    def document(self, doc_id: str) -> Document:
        return self._by_id[doc_id]


T = TypeVar("T")


def sample_questions(questions: Sequence[T], limit: int | None, seed: int = 0) -> list[T]:
    """A deterministic sample of ``limit`` questions in their original order; all of them when limit is None or
    not smaller than their number."""
    if limit is None or limit >= len(questions):
        return list(questions)
    picked = sorted(random.Random(seed).sample(range(len(questions)), limit))
    return [questions[i] for i in picked]


def load(name: str, data_dir: str | Path = "../shared/data", limit: int | None = None, seed: int = 0) -> EvalSet:
    """Load benchmark ``name`` (one of ``DATASETS``) from ``data_dir``.

    ``limit`` and ``seed`` sample the questions (`sample_questions`); the corpus always stays whole, since the
    distractor documents are part of what makes retrieval hard.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    root = Path(data_dir)
    if name.startswith("squad-"):
        evalset = _load_paragraph_set(name, root / "squad" / "normalized" / name.removeprefix("squad-"), "en")
    elif name.startswith("xquad-"):
        lang = name.removeprefix("xquad-")
        evalset = _load_paragraph_set(name, root / "xquad" / "normalized" / lang, lang)
    elif name == "scifact":
        evalset = _load_scifact(name, root / "scifact")
    else:
        evalset = _load_spf_fr(name, root / "spf_fr" / "normalized")
    evalset.questions = sample_questions(evalset.questions, limit, seed)
    return evalset


def describe(evalset: EvalSet) -> dict[str, Any]:
    """Counts for a report: documents, passages, questions (in all and by kind), mean document length in chars."""
    docs = evalset.documents
    return {
        "name": evalset.name,
        "documents": len(docs),
        "passages": sum(len(spans) for spans in evalset.passages.values()),
        "questions": len(evalset.questions),
        "questions_by_kind": dict(Counter(q.kind for q in evalset.questions)),
        "mean_document_chars": round(sum(len(d.text) for d in docs) / len(docs), 1) if docs else 0.0,
    }


# ---------------------------------------------------------------------------------------------------------- files


def _require(*paths: Path) -> None:
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"benchmark file not found: {path}; point --data at the evaluation data folder (default ../shared/data)"
            )


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a gzipped JSON-lines file, streamed."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _benchmark_document(name: str, doc_id: str, text: str, title: str, units: list[Span], **meta: Any) -> Document:
    # sha256 of the text: there are no raw bytes per document here, and it still changes whenever the text does.
    return Document(
        doc_id=doc_id,
        source=f"{name}:{doc_id}",
        text=text,
        sha256=sha256_hex(text.encode("utf-8")),
        title=title,
        meta={"format": "benchmark", "dataset": name, **meta},
        units=list(units),
    )


def _answers(row: dict[str, Any]) -> tuple[list[str], list[int]]:
    """The unique answers of a question row in data order, each with its given start (-1 where none is given)."""
    starts = row.get("answer_starts") or []
    first: dict[str, int] = {}
    for i, answer in enumerate(row["answers"]):
        first.setdefault(answer, starts[i] if i < len(starts) else -1)
    return list(first), list(first.values())


def _locate(text: str, answers: Sequence[str], starts: Sequence[int]) -> list[Span]:
    """Where each answer occurs in ``text``: at its given start when the text there is the answer, else at its first
    occurrence; an answer that does not occur gets no span."""
    spans = []
    for answer, start in zip(answers, starts):
        if start < 0 or text[start : start + len(answer)] != answer:
            start = text.find(answer) if answer else -1
        if start >= 0:
            spans.append((start, start + len(answer)))
    return spans


# ------------------------------------------------------------------------------------------ SQuAD and XQuAD format

# Paragraph ids are "<article>_<index>" (SQuAD: "Super_Bowl_50_0") or "<article>_p<index>" (XQuAD: "a00_p00").
_PARAGRAPH_ID = re.compile(r"^(?P<article>.+)_p?(?P<index>\d+)$")


@dataclass(frozen=True)
class _Paragraph:
    index: int
    paragraph_id: str
    title: str
    text: str


def _read_articles(path: Path) -> dict[str, list[_Paragraph]]:
    """The paragraphs of a normalized corpus grouped by article (first-seen order), each article's in index order."""
    articles: dict[str, list[_Paragraph]] = {}
    for row in _jsonl(path):
        match = _PARAGRAPH_ID.match(row["doc_id"])
        if match is None:
            raise ValueError(f"{path}: paragraph id {row['doc_id']!r} is not <article>_<index>")
        paragraph = _Paragraph(int(match["index"]), row["doc_id"], row.get("title", ""), row["text"])
        articles.setdefault(match["article"], []).append(paragraph)
    for paragraphs in articles.values():
        paragraphs.sort(key=lambda p: p.index)
    return articles


def _join(texts: Sequence[str]) -> tuple[str, list[Span]]:
    spans, pos = [], 0
    for text in texts:
        spans.append((pos, pos + len(text)))
        pos += len(text) + len(PARAGRAPH_SEP)
    return PARAGRAPH_SEP.join(texts), spans


def _load_paragraph_set(name: str, folder: Path, lang: str) -> EvalSet:
    """SQuAD / XQuAD normalized layout: a paragraph corpus and questions naming their gold paragraph."""
    corpus_path, questions_path = folder / "corpus.jsonl.gz", folder / "questions.jsonl.gz"
    _require(corpus_path, questions_path)
    documents, passages = [], {}
    located: dict[str, tuple[Document, Span]] = {}  # paragraph id -> its article and its span there
    for article_id, paragraphs in _read_articles(corpus_path).items():
        text, spans = _join([p.text for p in paragraphs])
        title = paragraphs[0].title.replace("_", " ")
        passage_ids = [p.paragraph_id for p in paragraphs]
        doc = _benchmark_document(name, article_id, text, title, spans, passage_ids=passage_ids)
        documents.append(doc)
        passages[article_id] = spans
        located.update((pid, (doc, span)) for pid, span in zip(passage_ids, spans))
    questions = [_paragraph_question(row, located, lang) for row in _jsonl(questions_path)]
    return EvalSet(name, documents, passages, questions, _SOURCES[name])


def _paragraph_question(row: dict[str, Any], located: dict[str, tuple[Document, Span]], lang: str) -> EvalQuestion:
    impossible = bool(row.get("is_impossible", False))
    answers, starts = ([], []) if impossible else _answers(row)
    evidence, answer_spans = [], []
    for paragraph_id in row["gold_doc_ids"]:
        doc, (start, end) = located[paragraph_id]
        evidence.append(GoldSpan(doc.doc_id, start, end))
        # SQuAD's normalized answers have no answer_starts (README: they would be first occurrences anyway).
        for s, e in _locate(doc.text[start:end], answers, starts):
            answer_spans.append(GoldSpan(doc.doc_id, start + s, start + e))
    return EvalQuestion(
        qid=row["qid"],
        question=row["question"],
        answers=answers,
        answerable=not impossible,
        evidence=evidence,
        answer_spans=answer_spans,
        relevance={paragraph_id: 1 for paragraph_id in row["gold_doc_ids"]},
        kind="unanswerable" if impossible else "span",
        lang=lang,
    )


# ------------------------------------------------------------------------------------------------ SciFact (BEIR)


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels: a header line, then ``query-id <tab> corpus-id <tab> score``; queries in file order."""
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8") as f:
        next(f, None)
        for line in f:
            if line.strip():
                query_id, doc_id, score = line.rstrip("\n").split("\t")
                qrels.setdefault(query_id, {})[doc_id] = int(score)
    return qrels


def _load_scifact(name: str, folder: Path) -> EvalSet:
    """One document per abstract; the claims of the test qrels, with their relevant abstracts as evidence."""
    corpus_path, queries_path = folder / "corpus.jsonl.gz", folder / "queries.jsonl.gz"
    qrels_path = folder / "qrels" / "test.tsv"  # the evaluation split; train qrels stay for training
    _require(corpus_path, queries_path, qrels_path)
    documents = []
    for row in _jsonl(corpus_path):
        whole = [(0, len(row["text"]))]
        documents.append(_benchmark_document(name, row["_id"], row["text"], row["title"], whole))
    claims = {row["_id"]: row["text"] for row in _jsonl(queries_path)}
    lengths = {doc.doc_id: len(doc.text) for doc in documents}
    questions = [
        EvalQuestion(
            qid=query_id,
            question=claims[query_id],
            answers=[],
            answerable=True,
            evidence=[GoldSpan(doc_id, 0, lengths[doc_id]) for doc_id, score in relevance.items() if score > 0],
            answer_spans=[],
            relevance=relevance,
            kind="claim",
            lang="en",
        )
        for query_id, relevance in _read_qrels(qrels_path).items()
    ]
    passages = {doc.doc_id: list(doc.units) for doc in documents}
    return EvalSet(name, documents, passages, questions, _SOURCES[name])


# --------------------------------------------------------------------------------------------------------- spf-fr

_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")
_LINE_END = re.compile(r"\n")


def page_passages(text: str) -> list[Span]:
    """The gold-mode passages of an spf-fr page, which the benchmark does not cut itself.

    The pieces between blank lines, or between line ends when the page has no blank line; each trimmed of
    surrounding whitespace, empty ones dropped. No annotated answer crosses one of these cuts.
    """
    separator = _BLANK_LINE if _BLANK_LINE.search(text) else _LINE_END
    spans, start = [], 0
    for match in separator.finditer(text):
        spans.extend(_trimmed(text, start, match.start()))
        start = match.end()
    spans.extend(_trimmed(text, start, len(text)))
    return spans


def _trimmed(text: str, start: int, end: int) -> list[Span]:
    piece = text[start:end]
    start, end = start + len(piece) - len(piece.lstrip()), end - len(piece) + len(piece.rstrip())
    return [(start, end)] if start < end else []


def _load_spf_fr(name: str, folder: Path) -> EvalSet:
    """One document per service-public.fr page, untitled: a "-title" question is the page title, so indexing titles
    would make that retrieval task trivial (data README). "-ann" questions carry an annotated answer span."""
    corpus_path, questions_path = folder / "corpus.jsonl.gz", folder / "questions.jsonl.gz"
    _require(corpus_path, questions_path)
    documents, passages = [], {}
    for row in _jsonl(corpus_path):
        spans = page_passages(row["text"])
        documents.append(_benchmark_document(name, row["doc_id"], row["text"], "", spans, url=row.get("url", "")))
        passages[row["doc_id"]] = spans
    by_id = {doc.doc_id: doc for doc in documents}
    questions = [_page_question(row, by_id) for row in _jsonl(questions_path)]
    return EvalSet(name, documents, passages, questions, _SOURCES[name])


def _page_question(row: dict[str, Any], by_id: dict[str, Document]) -> EvalQuestion:
    qid = row["qid"]
    if not qid.endswith(("-ann", "-title")):
        raise ValueError(f"spf-fr question id {qid!r} ends neither in -ann nor in -title")
    annotated = qid.endswith("-ann")
    answers, starts = _answers(row) if annotated else ([], [])
    gold = [by_id[doc_id] for doc_id in row["gold_doc_ids"]]
    return EvalQuestion(
        qid=qid,
        question=row["question"],
        answers=answers,
        answerable=True,
        evidence=[GoldSpan(doc.doc_id, 0, len(doc.text)) for doc in gold],
        answer_spans=[GoldSpan(doc.doc_id, s, e) for doc in gold for s, e in _locate(doc.text, answers, starts)],
        relevance={doc.doc_id: 1 for doc in gold},
        kind="span" if annotated else "title",
        lang="fr",
    )

"""The systems the harness compares, each a small adapter over one interface: build over documents, retrieve, answer.

- ``workflow-bm25``: fixed 512-character windows (64 overlap), BM25 (bm25s, Lucene's k1=1.2, b=0.75, the defaults of
  Elasticsearch that BEIR's BM25 numbers come from), SmolLM2 prompted with the top-k windows;
- ``workflow-dense``: the same windows, base all-MiniLM-L6-v2 with title and section prepended, exact inner-product
  search (FAISS), the same prompted generator;
- ``ragless``: the project's shipped default components (``ragless.components``) through the real on-disk index and
  ingestion job: the learned segmenter, the index's encoder, and the joint model (checkpoints/joint) as answerer;
- ``ragless@PATH``: the same with the joint model checkpoint in folder PATH (or a name under checkpoints/) as answerer,
  to evaluate any trained checkpoint.

The workflow systems answer with the prompt-stuffing answerer (`ragless.prompted`, the same base generator);
``system.answerer`` names what each system answers with.

In corpus mode ``gold`` every system is given the benchmark's own passages as its segments (an oracle), so retrieval
alone is compared; in ``articles`` mode each system segments the documents itself.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from preprocess_model.document import Document, Segment, Span
from preprocess_model.segmenting import spans_to_segments
from ragless.baselines import FixedWindowSegmenter
from retrieve_generate_model.encoder import Encoder, passage_text
from retrieve_generate_model.records import Source


class PassageSegmenter:
    """The oracle segmentation of corpus mode ``gold``: the benchmark's own passages, as given."""

    name = "benchmark-passages"

    def __init__(self, passages: dict[str, list[Span]]):
        self.passages = passages

    def config(self) -> dict[str, Any]:
        return {"passages": sum(len(p) for p in self.passages.values())}

    def segment(self, docs: Sequence[Document]) -> list[list[Segment]]:
        return [spans_to_segments(doc, self.passages[doc.doc_id], kind="passage") for doc in docs]


class System(Protocol):
    name: str

    def build(self, documents: Sequence[Document], segmenter) -> dict[str, Any]:
        """Segment and index ``documents``; returns build facts (segments, seconds)."""
        ...

    def retrieve(self, questions: Sequence[str], k: int) -> list[list[Source]]:
        """Top-``k`` segments per question, best first."""
        ...


def _source(seg: Segment, doc: Document, score: float) -> Source:
    return Source(seg.seg_id, seg.doc_id, float(score), seg.text, seg.char_start, seg.char_end, doc.source, doc.title,
                  seg.section)


def build_facts(lengths: list[int], seconds: float) -> dict[str, Any]:
    """What a system's build made: how many segments, how long on average, in how many seconds."""
    return {"segments": len(lengths), "mean_segment_chars": round(float(np.mean(lengths)), 1) if lengths else 0,
            "build_s": round(seconds, 2)}


class _InMemory:
    """Segments of a corpus kept in memory, shared by the workflow systems."""

    def _segment(self, documents: Sequence[Document], segmenter) -> None:
        self.docs = {d.doc_id: d for d in documents}
        self.segments = [s for segs in segmenter.segment(list(documents)) for s in segs]

    def _facts(self, seconds: float) -> dict[str, Any]:
        return build_facts([s.char_end - s.char_start for s in self.segments], seconds)


# -- BM25 -------------------------------------------------------------------------------------------------------------

_STOPWORDS = {"en": "en", "fr": "fr", "de": "de", "es": "es", "ru": "ru", "tr": "tr", "zh": "zh"}
_NO_SPACES = {"zh", "th"}  # scripts written without spaces: character bigrams, as Lucene's CJK analyzer does


def _bigrams(text: str) -> str:
    chars = [c for c in text if not c.isspace()]
    return " ".join(a + b for a, b in zip(chars, chars[1:]))


@dataclass(frozen=True)
class BM25Config:
    k1: float = 1.2  # Lucene/Elasticsearch default
    b: float = 0.75  # Lucene/Elasticsearch default
    lang: str = "en"  # stopword list and tokenization


class WorkflowBM25(_InMemory):
    name = "workflow-bm25"

    def __init__(self, config: BM25Config | None = None):
        self.cfg = config or BM25Config()

    def _tokenize(self, texts: Sequence[str]):
        import bm25s

        if self.cfg.lang in _NO_SPACES:
            return bm25s.tokenize([_bigrams(t) for t in texts], token_pattern=r"\S+", stopwords=None,
                                  show_progress=False)
        return bm25s.tokenize(list(texts), stopwords=_STOPWORDS.get(self.cfg.lang), show_progress=False)

    def build(self, documents: Sequence[Document], segmenter) -> dict[str, Any]:
        import bm25s

        t0 = time.perf_counter()
        self._segment(documents, segmenter)
        texts = [f"{self.docs[s.doc_id].title}\n{s.text}" for s in self.segments]  # title + text, as BEIR indexes
        self.bm25 = bm25s.BM25(k1=self.cfg.k1, b=self.cfg.b, method="lucene")
        self.bm25.index(self._tokenize(texts), show_progress=False)
        return self._facts(time.perf_counter() - t0)

    def retrieve(self, questions: Sequence[str], k: int) -> list[list[Source]]:
        k = min(k, len(self.segments))
        rows, scores = self.bm25.retrieve(self._tokenize(questions), k=k, show_progress=False)  # (M, k) each
        return [
            [_source(self.segments[r], self.docs[self.segments[r].doc_id], s) for r, s in zip(q_rows, q_scores)
             if s > 0]  # a window sharing no term with the question was not retrieved, whatever its rank
            for q_rows, q_scores in zip(rows, scores)
        ]


# -- dense ------------------------------------------------------------------------------------------------------------


class SharedEmbeddings:
    """An encoder that remembers passage embeddings by text, so that systems with the same encoder (and the same
    segments) embed a corpus once instead of once each. Queries are not remembered (their latency is measured).

    Only for exploring (the notebooks): a system that finds its passages already embedded reports a build time that
    leaves the embedding out. `bench/eval.py` never shares.
    """

    def __init__(self, encoder: Encoder):
        self.encoder = encoder
        self.name, self.dim = encoder.name, encoder.dim
        self._memo: dict[str, np.ndarray] = {}

    def config(self) -> dict[str, Any]:
        return self.encoder.config()

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        self._memo.update(zip(missing, self.encoder.embed_passages(missing)))
        return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.embed_queries(texts)


class WorkflowDense(_InMemory):
    name = "workflow-dense"

    def __init__(self, encoder: Encoder):
        self.encoder = encoder

    def build(self, documents: Sequence[Document], segmenter) -> dict[str, Any]:
        import faiss

        t0 = time.perf_counter()
        self._segment(documents, segmenter)
        texts = [passage_text(s.text, self.docs[s.doc_id].title, s.section) for s in self.segments]
        self.index = faiss.IndexFlatIP(self.encoder.dim)
        self.index.add(self.encoder.embed_passages(texts))  # (N, D)
        return self._facts(time.perf_counter() - t0)

    def retrieve(self, questions: Sequence[str], k: int) -> list[list[Source]]:
        scores, rows = self.index.search(self.encoder.embed_queries(list(questions)), min(k, self.index.ntotal))
        return [
            [_source(self.segments[r], self.docs[self.segments[r].doc_id], s) for r, s in zip(q_rows, q_scores)
             if r >= 0]
            for q_rows, q_scores in zip(rows, scores)
        ]


# -- ragless ----------------------------------------------------------------------------------------------------------


class Ragless:
    """The shipped default path: `IngestJob` into an on-disk index, retrieval through `Asker`."""

    name = "ragless"

    def __init__(self, workdir: str | Path | None = None, encoder: Encoder | SharedEmbeddings | None = None,
                 answerer: str | None = None):
        """``encoder``: the one to ingest with, when the caller holds it (None: the shipped default); it must be
        the shipped default encoder, or the index would record other components than ragless ships.
        ``answerer``: a joint model checkpoint (name or folder) to answer with instead of the shipped one."""
        from ragless.components import DEFAULT_ANSWERER

        self._tmp = tempfile.TemporaryDirectory(prefix="ragless-eval-") if workdir is None else None
        self.workdir = Path(workdir or self._tmp.name)
        self.encoder = encoder
        self.answerer = answerer or DEFAULT_ANSWERER
        if answerer:
            self.name = f"ragless@{answerer}"

    def build(self, documents: Sequence[Document], segmenter) -> dict[str, Any]:
        from ragless.ask import AskConfig, Asker
        from ragless.components import lexical_channel, make_encoder
        from ragless.ingest import IngestConfig, IngestJob

        index = self.workdir / "index"
        shipped = make_encoder()
        lexical = lexical_channel(self.answerer, shipped)  # the checkpoint's lexical channel, as `ragless ingest`
        encoder = self.encoder if self.encoder is not None and self.encoder.config() == shipped.config() else shipped
        if lexical is not None:  # its word weights come from the same forward pass: the shared vectors cannot serve
            encoder = shipped
        job = IngestJob(index, segmenter, encoder, IngestConfig(batch_docs=512), lexical=lexical)
        report = job.ingest_documents(documents, progress=False)
        self.asker = Asker(index, AskConfig(answerer=self.answerer))
        lengths = [s.char_end - s.char_start for s in self.asker.reader.iter_segments()]
        return build_facts(lengths, report.elapsed_s)

    def retrieve(self, questions: Sequence[str], k: int) -> list[list[Source]]:
        return self.asker.retrieve(list(questions), k)


SYSTEMS = ("workflow-bm25", "workflow-dense", "ragless")
WorkflowBM25.answerer = WorkflowDense.answerer = "prompted"


def check_system_name(name: str) -> None:
    """Refuse a name that is neither a known system nor ``ragless@CHECKPOINT``."""
    if name in SYSTEMS:
        return
    if name.startswith("ragless@") and name.removeprefix("ragless@"):
        from ragless.components import checkpoint_path

        checkpoint_path(name.removeprefix("ragless@"))  # raises ValueError when it is not a checkpoint
        return
    raise ValueError(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}, ragless@CHECKPOINT")


def make_system(name: str, lang: str = "en", encoder: Encoder | SharedEmbeddings | None = None) -> System:
    """``encoder``: the base MiniLM to use where a system embeds with it (loaded once by the caller)."""
    if name == "workflow-bm25":
        return WorkflowBM25(BM25Config(lang=lang))
    if name == "workflow-dense":
        return WorkflowDense(encoder or Encoder())
    if name == "ragless":
        return Ragless(encoder=encoder)
    check_system_name(name)
    return Ragless(encoder=encoder, answerer=name.removeprefix("ragless@"))


def default_segmenter(system: System):
    """The segmenter a system uses on its own (corpus mode ``articles``)."""
    if isinstance(system, Ragless):
        from ragless.components import make_segmenter

        return make_segmenter()
    return FixedWindowSegmenter()


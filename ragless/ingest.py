"""The ingestion batch job: files → documents → segments → vectors → a committed index generation.

It streams: documents are read one file at a time and processed in batches bounded by a document count and a
character budget, each batch written as one shard and committed, so peak memory does not grow with the corpus and a
job killed at any point resumes where its last commit left it (unchanged documents are skipped by content hash).

    job = IngestJob("my-index", segmenter=make_segmenter(), encoder=make_encoder(), lexical=lexical_channel())
    report = job.run(["docs/"])          # an IngestReport; report.to_dict() is the JSON report

With ``lexical`` (the shipped joint model's learned lexical channel), each segment's word weights are stored beside its
dense vector, from the same forward pass, and `ragless ask` retrieves by the fused score.

Command line: ``ragless ingest docs/ --index my-index --report report.json``. The per-batch functions below
(`read_source`, `segment_batch`, `embed_batch`) are what every engine runs: ``--engine ray`` runs them as Ray Data
stages and commits once (`ragless.ray_engine`), making the same index.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from preprocess_model.document import Document, ReadFailure, Segment
from preprocess_model.readers import ReaderConfig, file_doc_id, is_container, iter_files, read_file
from preprocess_model.segmenting import Segmenter
from ragless.components import describe
from ragless.store import IndexWriter, crashpoint
from retrieve_generate_model.encoder import Encoder, passage_text


@dataclass(frozen=True)
class IngestConfig:
    batch_docs: int = 256  # documents per shard and commit: the unit of work a crash can lose
    batch_chars: int = 4_000_000  # ... or fewer, when their text reaches this many characters: bounds memory
    prune: bool = False  # remove indexed documents under the given paths that are no longer there
    compact_at_end: bool = True  # merge the small shards this job wrote (see IndexWriter.compact)
    reader: ReaderConfig = field(default_factory=ReaderConfig)


@dataclass
class IngestReport:
    index: str
    generation: int = 0
    files: int = 0
    documents_added: int = 0
    documents_replaced: int = 0
    documents_unchanged: int = 0
    documents_deleted: int = 0
    segments_added: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)  # {"source", "reason"}: reported and skipped
    elapsed_s: float = 0.0
    peak_rss_mb: float = 0.0
    components: dict[str, Any] = field(default_factory=dict)

    @property
    def documents_written(self) -> int:
        return self.documents_added + self.documents_replaced

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        rate = lambda n: round(n / self.elapsed_s, 2) if self.elapsed_s > 0 else 0.0  # noqa: E731
        out.update(documents_per_s=rate(self.documents_written), segments_per_s=rate(self.segments_added))
        return out

    def summary(self) -> str:
        d = self.to_dict()
        return (
            f"generation {self.generation}: {self.documents_added} added, {self.documents_replaced} replaced, "
            f"{self.documents_unchanged} unchanged, {self.documents_deleted} deleted, {len(self.failures)} failed; "
            f"{self.segments_added} segments in {self.elapsed_s:.1f}s "
            f"({d['documents_per_s']} docs/s, {d['segments_per_s']} segments/s), peak RSS {self.peak_rss_mb:.0f} MB"
        )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None


def release_freed_memory() -> bool:
    """Give the pages of freed heap memory back to the system (glibc's ``malloc_trim``); False where unavailable.

    The encoder's activations (a few MiB each, every batch a different size) are freed after each batch but glibc
    keeps the pages, and fragmentation makes the heap creep up batch after batch. Trimming once per committed batch
    holds the peak flat (bench/ingest.py: SQuAD x3 peaked 1.28 GB without, 0.97 GB with, at no measurable cost).
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _under(source: str, root: str) -> bool:
    """Whether a catalog source (a path, or ``path#record-id``) lies at or under ``root``."""
    return source == root or source.startswith((root.rstrip("/") + "/", root + "#"))


# -- the per-batch functions: what every engine runs (here in one process; `ragless.ray_engine` on Ray Data) -------


@dataclass(frozen=True)
class Unchanged:
    """A document the index already holds with the same bytes: counted, not read again."""

    doc_id: str
    source: str


def read_source(path: Path, reader: ReaderConfig, known_sha: Callable[[str], str | None]
                ) -> Iterator[Document | ReadFailure | Unchanged]:
    """What one file gives ingestion: `Unchanged` for a document whose bytes the index holds already (for a
    single-document file, decided by the file's hash without parsing it), else `read_file`'s documents and failures.

    ``known_sha(doc_id)``: the sha256 the index holds for a document, None when it has none.
    """
    if not is_container(path):
        doc_id = file_doc_id(path)
        known = known_sha(doc_id)
        try:
            if known is not None and known == _file_sha256(path):  # unchanged: no need to parse it
                yield Unchanged(doc_id, os.path.realpath(path))  # the source the index holds
                return
        except OSError:
            pass  # unreadable: read_file reports why
    for item in read_file(path, reader):
        if isinstance(item, Document) and known_sha(item.doc_id) == item.sha256:
            yield Unchanged(item.doc_id, item.source)
        else:
            yield item


def segment_batch(segmenter: Segmenter, docs: Sequence[Document]) -> list[list[Segment]]:
    """One list of segments per document: the segmenter's cuts of a batch."""
    return segmenter.segment(docs)


def embed_batch(encoder: Encoder, lexical, docs: Sequence[Document], segments: Sequence[Sequence[Segment]]
                ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]] | None]:
    """(vectors (segments in batch, D) float32 unit norm, lexical vectors or None): the embeddings of a batch's
    segments in order, each seen with its document's title and its section path (`passage_text`); with the learned
    lexical channel, both from one forward pass of the same token states."""
    texts = [passage_text(s.text, d.title, s.section) for d, segs in zip(docs, segments) for s in segs]
    if lexical is None:
        return encoder.embed_passages(texts), None
    from retrieve_generate_model.lexical import encode

    return encode(encoder, lexical, texts, "passage")


def batch_full(n_docs: int, n_chars: int, config: IngestConfig) -> bool:
    """Whether a batch of ``n_docs`` documents holding ``n_chars`` characters is ready to be written as a shard."""
    return n_docs >= config.batch_docs or n_chars >= config.batch_chars


class IngestJob:
    def __init__(self, index: str | Path, segmenter: Segmenter, encoder: Encoder, config: IngestConfig | None = None,
                 lexical=None):
        """``lexical``: the joint model's learned lexical channel (`ragless.components.lexical_channel`), whose
        passage vectors are stored beside the dense ones; None for an index of dense vectors alone."""
        if lexical is not None and encoder.cfg.model_dir is not None:
            raise ValueError("the lexical channel weighs the base MiniLM's token states: it cannot be used with the "
                             f"encoder of {encoder.cfg.model_dir}")
        self.index = Path(index)
        self.segmenter = segmenter
        self.encoder = encoder
        self.lexical = lexical
        self.cfg = config or IngestConfig()

    def run(self, paths: Sequence[str | Path], progress: bool = True) -> IngestReport:
        """Ingest every supported file under ``paths`` and commit; see the module docstring."""

        def feed(run: _Run) -> None:
            for item in iter_files(paths, self.cfg.reader):
                if isinstance(item, ReadFailure):
                    run.fail(item)
                else:
                    run.ingest_file(item)
            run.flush()
            if self.cfg.prune:
                run.report.documents_deleted = run.prune([str(Path(p).resolve()) for p in paths])

        return self._job(feed, progress)

    def ingest_documents(self, docs: Iterable[Document], progress: bool = True) -> IngestReport:
        """Ingest `Document` records made elsewhere (a benchmark, a database export), with the same batching,
        incremental skipping and crash safety as files."""

        def feed(run: _Run) -> None:
            for doc in docs:
                run.add(doc)
            run.flush()

        return self._job(feed, progress)

    def _job(self, feed, progress: bool) -> IngestReport:
        t0 = time.perf_counter()
        components = describe(self.segmenter, self.encoder, self.lexical)
        report = IngestReport(index=str(self.index), components=components)
        with IndexWriter(self.index, components, dim=self.encoder.dim) as writer, tqdm(
            unit="doc", desc="ingest", disable=not progress, dynamic_ncols=True
        ) as bar:
            feed(_Run(self, writer, report, bar, t0))
            if self.cfg.compact_at_end and writer.compact():
                writer.commit()
            report.generation = writer.commit()
        report.elapsed_s = round(time.perf_counter() - t0, 3)
        report.peak_rss_mb = round(peak_rss_mb(), 1)
        return report


class _Run:
    """The state of one `IngestJob.run`: the pending batch, what was seen, the report."""

    def __init__(self, job: IngestJob, writer: IndexWriter, report: IngestReport, bar: tqdm, t0: float):
        self.job, self.writer, self.report, self.bar, self.t0 = job, writer, report, bar, t0
        self.pending: list[Document] = []
        self.pending_chars = 0
        self.seen: dict[str, str] = {}  # doc_id -> source, everything this run read or found unchanged
        self.failed_files: set[str] = set()  # files with any read failure: never pruned, so nothing is lost

    def fail(self, failure: ReadFailure) -> None:
        self.report.failures.append({"source": failure.source, "reason": failure.reason})
        self.bar.write(f"skipped {failure.source}: {failure.reason}")

    def ingest_file(self, path: Path) -> None:
        self.report.files += 1
        for item in read_source(path, self.job.cfg.reader, self._known_sha):
            if isinstance(item, ReadFailure):
                self.failed_files.add(str(path.resolve()))
                self.fail(item)
            elif isinstance(item, Unchanged):
                self.unchanged(item.doc_id, item.source)
            else:
                self.add(item)

    def _known_sha(self, doc_id: str) -> str | None:
        entry = self.writer.catalog.get(doc_id)
        return None if entry is None else entry.sha256

    def admit(self, doc_id: str, source: str) -> bool:
        """Whether this run sees ``doc_id`` for the first time; a second sighting is reported and skipped."""
        if doc_id in self.seen:
            self.fail(ReadFailure(source, f"duplicate doc_id {doc_id!r}, already read from {self.seen[doc_id]}"))
            return False
        return True

    def unchanged(self, doc_id: str, source: str) -> None:
        if self.admit(doc_id, source):
            self._unchanged(doc_id, source)

    def _unchanged(self, doc_id: str, source: str) -> None:
        self.seen[doc_id] = source
        self.report.documents_unchanged += 1
        self.bar.update(1)

    def add(self, doc: Document) -> None:
        if not self.admit(doc.doc_id, doc.source):
            return
        if self._known_sha(doc.doc_id) == doc.sha256:
            self._unchanged(doc.doc_id, doc.source)
            return
        self.seen[doc.doc_id] = doc.source
        self.pending.append(doc)
        self.pending_chars += len(doc.text)
        if batch_full(len(self.pending), self.pending_chars, self.job.cfg):
            self.flush()

    def flush(self) -> None:
        """Segment, embed and write the pending batch as one shard, and commit it."""
        if not self.pending:
            return
        docs, self.pending, self.pending_chars = self.pending, [], 0
        segments = segment_batch(self.job.segmenter, docs)
        vectors, lexical = embed_batch(self.job.encoder, self.job.lexical, docs, segments)
        replaced = sum(d.doc_id in self.writer.catalog for d in docs)
        self.writer.add_shard(docs, segments, vectors, lexical)
        crashpoint("after-shard")
        self.writer.commit()
        self.counted(len(docs), replaced, len(vectors))
        del docs, segments, vectors, lexical
        release_freed_memory()

    def counted(self, documents: int, replaced: int, segments: int) -> None:
        """Count documents written (``replaced`` of them replacing indexed ones) and their segments."""
        self.report.documents_replaced += replaced
        self.report.documents_added += documents - replaced
        self.report.segments_added += segments
        self.bar.update(documents)
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(segments=self.report.segments_added,
                             seg_per_s=f"{self.report.segments_added / elapsed:.1f}")

    def prune(self, roots: Iterable[str]) -> int:
        """Delete indexed documents under ``roots`` that this run did not see (files removed since)."""
        roots = list(roots)
        gone = [
            e.doc_id
            for e in self.writer.catalog.values()
            if e.doc_id not in self.seen
            and any(_under(e.source, r) for r in roots)
            and not any(_under(e.source, f) for f in self.failed_files)
        ]
        return len(self.writer.delete(gone))


def delete_documents(
    index: str | Path, doc_ids: Iterable[str] = (), sources: Iterable[str] = ()
) -> tuple[int, list[str]]:
    """Remove documents by id, or every document at or under a source path; commits. Returns (generation, removed)."""
    roots = [str(Path(s).resolve()) for s in sources]
    with IndexWriter(index) as writer:
        ids = set(doc_ids) | {e.doc_id for e in writer.catalog.values() if any(_under(e.source, r) for r in roots)}
        removed = writer.delete(sorted(ids))
        return writer.commit(), removed


def compact_index(index: str | Path, target_segments: int = 16384) -> tuple[int, int]:
    """Rewrite shards holding dead rows, merge small ones; commits. Returns (generation, shards rewritten)."""
    with IndexWriter(index) as writer:
        rewritten = writer.compact(target_segments)
        return writer.commit(), rewritten

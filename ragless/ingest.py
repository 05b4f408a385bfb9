"""The ingestion batch job: files → documents → segments → vectors → a committed index generation.

It streams: documents are read one file at a time and processed in batches bounded by a document count and a
character budget, each batch written as one shard and committed, so peak memory does not grow with the corpus and a
job killed at any point resumes where its last commit left it (unchanged documents are skipped by content hash).

    job = IngestJob("my-index", segmenter=make_segmenter(), encoder=make_encoder(), lexical=lexical_channel())
    report = job.run(["docs/"])          # an IngestReport; report.to_dict() is the JSON report

With ``lexical`` (the shipped joint model's learned lexical channel), each segment's word weights are stored beside its
dense vector, from the same forward pass, and `ragless ask` retrieves by the fused score.

Command line: ``ragless ingest docs/ --index my-index --report report.json``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import resource
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from preprocess_model.document import Document, ReadFailure
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
        if not is_container(path):
            doc_id = file_doc_id(path)
            entry = self.writer.catalog.get(doc_id)
            try:
                if entry is not None and entry.sha256 == _file_sha256(path):  # unchanged: no need to parse it
                    self._unchanged(doc_id, entry.source)
                    return
            except OSError:
                pass  # unreadable: read_file reports why
        for item in read_file(path, self.job.cfg.reader):
            if isinstance(item, ReadFailure):
                self.failed_files.add(str(path.resolve()))
                self.fail(item)
            else:
                self.add(item)

    def _unchanged(self, doc_id: str, source: str) -> None:
        self.seen[doc_id] = source
        self.report.documents_unchanged += 1
        self.bar.update(1)

    def add(self, doc: Document) -> None:
        if doc.doc_id in self.seen:
            first = self.seen[doc.doc_id]
            self.fail(ReadFailure(doc.source, f"duplicate doc_id {doc.doc_id!r}, already read from {first}"))
            return
        entry = self.writer.catalog.get(doc.doc_id)
        if entry is not None and entry.sha256 == doc.sha256:
            self._unchanged(doc.doc_id, doc.source)
            return
        self.seen[doc.doc_id] = doc.source
        self.pending.append(doc)
        self.pending_chars += len(doc.text)
        if len(self.pending) >= self.job.cfg.batch_docs or self.pending_chars >= self.job.cfg.batch_chars:
            self.flush()

    def flush(self) -> None:
        """Segment, embed and write the pending batch as one shard, and commit it."""
        if not self.pending:
            return
        docs, self.pending, self.pending_chars = self.pending, [], 0
        segments = self.job.segmenter.segment(docs)
        texts = [passage_text(s.text, d.title, s.section) for d, segs in zip(docs, segments) for s in segs]
        lexical = None
        if self.job.lexical is None:
            vectors = self.job.encoder.embed_passages(texts)  # (segments in batch, D)
        else:  # one forward pass for both: the dense vectors and the word weights of the same token states
            from retrieve_generate_model.lexical import encode

            vectors, lexical = encode(self.job.encoder, self.job.lexical, texts, "passage")
        replaced = sum(d.doc_id in self.writer.catalog for d in docs)
        self.writer.add_shard(docs, segments, vectors, lexical)
        crashpoint("after-shard")
        self.writer.commit()
        self.report.documents_replaced += replaced
        self.report.documents_added += len(docs) - replaced
        self.report.segments_added += len(texts)
        self.bar.update(len(docs))
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        segments = self.report.segments_added
        self.bar.set_postfix(segments=segments, seg_per_s=f"{segments / elapsed:.1f}")
        del docs, texts, vectors, lexical
        release_freed_memory()

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

"""Ingestion and batch evaluation on Ray Data: the local engine's per-batch functions as `map_batches` stages.

    ragless ingest docs/ --index my-index --engine ray                        # a local Ray on this machine's cores
    ragless ingest /shared/docs --index /shared/my-index --engine ray --ray-address auto   # an existing cluster

    job = RayIngestJob("my-index", segmenter, encoder, lexical=lexical, ray_config=RayConfig(segment_actors=4))
    report = job.run(["docs/"])                    # the same IngestReport as `IngestJob.run`

The stages of one dataset, each over the functions `ragless.ingest` runs in one process:

1. the driver lists the files (`iter_files`) and opens the index's one `IndexWriter` (its lock, its catalog);
2. **read** (Ray tasks, ``read_batch_files`` files each): `read_source` — documents, read failures, and documents
   the index already holds with the same bytes (`Unchanged`, judged against the catalog the driver put in the object
   store);
3. **segment** (``segment_actors`` actors, each holding the segmenter): `segment_batch`;
4. **embed and write** (``embed_actors`` actors, each holding the encoder and the lexical channel): `embed_batch`, then
   `ragless.store.write_shard` writes each batch (``--batch-docs``/``--batch-chars``, as the local engine's) as one
   shard of the index: several writers, each writing its own shard files, none of them committing;
5. the driver gathers one small row per document (no text), replays them in the order of the files and of the
   records within them — the same duplicate, unchanged and failure rules as the local engine — adopts the shards
   (`IndexWriter.adopt_shard`), prunes, compacts, and commits **once**: one new generation.

The result is the index a local run makes from the same input (the same documents, segments and spans, vectors equal
within float tolerance: batches are padded differently; tested in tests/ragless/test_ray_engine.py), and the same
report. A job killed before the commit leaves the last generation intact; the shard files it wrote are unreferenced
and removed when the next writer opens the index. Unlike the local engine, which commits every batch, a killed Ray
job keeps none of its work: rerun it whole.

On a cluster every node needs ragless[ray] installed (the same version and checkpoints: each actor rebuilds the
components the index records and refuses others), the input files and the index folder at the same paths (a shared
filesystem), and the checkpoints named by name or absolute path. Ray itself is imported here only, when a job runs:
`ragless ingest` without ``--engine ray`` never imports it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from preprocess_model.document import Document, ReadFailure, Segment
from preprocess_model.readers import ReaderConfig, iter_files
from ragless.ingest import (
    IngestJob,
    IngestReport,
    Unchanged,
    _Run,
    batch_full,
    embed_batch,
    read_source,
    release_freed_memory,
    segment_batch,
)
from ragless.store import (
    DOCUMENTS_SCHEMA,
    SEGMENTS_SCHEMA,
    CatalogEntry,
    WrittenShard,
    _document_from_row,
    write_shard,
)

RAY_EXTRA = "pip install 'ragless[ray]'"  # the extra that brings ray[data], pinned in setup.cfg


class RayMissing(RuntimeError):
    """``--engine ray`` without Ray installed."""


def require_ray():
    """The `ray` module, or RayMissing saying which extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (the Data library is the `data` extra of ray)
    except ImportError as e:
        raise RayMissing(f"the ray engine needs Ray Data ({e}): {RAY_EXTRA}") from None
    return ray


@dataclass(frozen=True)
class RayConfig:
    ray_address: str = ""  # an existing cluster ("auto", "ray://HOST:10001"); empty: start a local Ray for the job
    ray_cpus: int = 0  # CPUs of a local Ray; 0 = this machine's
    object_store_mb: int = 200  # object store of a local Ray: only the batches in flight pass through it
    read_batch_files: int = 16  # files per read task
    read_cpus: float = 0.5  # CPUs per read task (0.5 + 0.75 + 0.75: one task or actor per stage fits 2 CPUs)
    segment_actors: int = 1  # actors holding the segmenter
    segment_cpus: float = 0.75  # CPUs per segmenter actor; its torch threads: the whole part, at least 1
    embed_actors: int = 1  # actors holding the encoder (and lexical channel); each writes its own shards
    embed_cpus: float = 0.75  # CPUs per encoder actor; its torch threads: the whole part, at least 1
    answer_actors: int = 1  # eval: actors holding a system's answerer, each answering and scoring questions
    answer_cpus: float = 1.0  # eval: CPUs per answerer actor; its torch threads: the whole part, at least 1
    answer_batch: int = 8  # eval: questions per batch sent to an answerer actor


INGEST_FIELDS = ("read_batch_files", "read_cpus", "segment_actors", "segment_cpus", "embed_actors", "embed_cpus")
EVAL_FIELDS = ("answer_actors", "answer_cpus", "answer_batch")


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[Any]:
    """Ray, connected: to ``cfg.ray_address``'s cluster, or a local Ray started for the block (and shut down after);
    an already initialized Ray (a test's, a notebook's) is used as it is and left running."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if cfg.ray_address:
        env = {k: v for k, v in os.environ.items() if k in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM",
                                                             "RAGLESS_CHECKPOINTS")}
        ray.init(address=cfg.ray_address, runtime_env={"env_vars": env}, **quiet)
    else:
        ray.init(num_cpus=cfg.ray_cpus or os.cpu_count(), object_store_memory=cfg.object_store_mb * 2**20, **quiet)
    try:
        yield ray
    finally:
        ray.shutdown()


def _quiet_data() -> None:
    """Ray Data's own progress bars and logs off: the job reports its progress."""
    import ray.data as rd

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled", each run
    context = rd.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


# -- rows between the stages: the store's own columns (DOCUMENTS_SCHEMA, SEGMENTS_SCHEMA) and where each came from ---

_ORIGIN = [("file", pa.int64()), ("item", pa.int64()), ("kind", pa.string())]  # kind: doc | unchanged | failure
READ_SCHEMA = pa.schema([*_ORIGIN, *DOCUMENTS_SCHEMA, ("reason", pa.string()), ("failed_file", pa.string())])
SEGMENTED_SCHEMA = READ_SCHEMA.append(pa.field("segments", pa.list_(pa.struct(list(SEGMENTS_SCHEMA)))))
# what the driver gathers: one row per document or failure, no text
RESULT_SCHEMA = pa.schema([*_ORIGIN, ("doc_id", pa.string()), ("source", pa.string()), ("sha256", pa.string()),
                           ("title", pa.string()), ("reason", pa.string()), ("failed_file", pa.string()),
                           ("n_segments", pa.int32()), ("n_chars", pa.int64()), ("shard", pa.string()),
                           ("shard_documents", pa.int64()), ("shard_segments", pa.int64()),
                           ("shard_lexical", pa.bool_())])


def _document_row(doc: Document) -> dict[str, Any]:
    """A `Document` as a row of the store's documents table."""
    return {"doc_id": doc.doc_id, "source": doc.source, "sha256": doc.sha256, "title": doc.title, "text": doc.text,
            "meta": json.dumps(doc.meta, ensure_ascii=False), "unit_starts": [s for s, _ in doc.units],
            "unit_ends": [e for _, e in doc.units]}


_fetched: dict[str, Any] = {}  # in a worker: the job's one large argument (catalog, evaluation set), fetched once


def _from_store(ref) -> Any:
    """The object behind ``ref``, fetched once per worker process (Ray Data passes UDF arguments unresolved)."""
    import ray

    key = ref.hex()
    if key not in _fetched:
        _fetched.clear()
        _fetched[key] = ray.get(ref)
    return _fetched[key]


def read_files(batch: pa.Table, reader: ReaderConfig, known) -> pa.Table:
    """The read stage: `read_source` over a batch of (file number, path) rows; ``known``: the object store's
    reference to {doc_id: sha256} of the documents the index holds."""
    known = _from_store(known)
    rows = []
    for file_no, path in zip(batch.column("file").to_pylist(), batch.column("path").to_pylist()):
        for item_no, item in enumerate(read_source(Path(path), reader, known.get)):
            origin = {"file": file_no, "item": item_no}
            if isinstance(item, ReadFailure):
                rows.append({**origin, "kind": "failure", "source": item.source, "reason": item.reason,
                             "failed_file": str(Path(path).resolve())})  # never pruned, as in the local engine
            elif isinstance(item, Unchanged):
                rows.append({**origin, "kind": "unchanged", "doc_id": item.doc_id, "source": item.source})
            else:
                rows.append({**origin, "kind": "doc", **_document_row(item)})
    return pa.Table.from_pylist(rows, schema=READ_SCHEMA)


def _check_same(part: str, made: dict[str, Any], recorded: dict[str, Any]) -> None:
    if made != recorded:
        raise RuntimeError(f"this worker builds {part} {json.dumps(made)}, the job was started with "
                           f"{json.dumps(recorded)}: install the same ragless and checkpoints on every node")


def _torch_threads(cpus: float) -> None:
    import torch

    torch.set_num_threads(max(1, math.floor(cpus)))


class Segmenting:
    """The segment stage's actor: holds the segmenter the index records and cuts each batch's documents
    (`segment_batch`); other rows pass through."""

    def __init__(self, components: dict[str, Any], cpus: float):
        from ragless.components import make_segmenter, stored

        _torch_threads(cpus)
        record = components["segmenter"]
        self.segmenter = make_segmenter(record["name"], record["config"])
        made = {"name": self.segmenter.name, "config": stored(self.segmenter.config())}
        _check_same("the segmenter", made, record)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        docs = [_document_from_row(row) for row in rows if row["kind"] == "doc"]
        cuts = iter(segment_batch(self.segmenter, docs))
        for row in rows:
            row["segments"] = [vars(s) for s in next(cuts)] if row["kind"] == "doc" else None
        return pa.Table.from_pylist(rows, schema=SEGMENTED_SCHEMA)


class EmbeddingWriter:
    """The embed stage's actor: holds the encoder (and lexical channel) the index records, embeds each batch's
    segments (`embed_batch`) and writes them as shards of the index (`write_shard`; one per ``batch_docs`` or
    ``batch_chars``, as the local engine's batches); returns one row per document naming its shard, without text."""

    def __init__(self, components: dict[str, Any], root: str, dim: int, batch_docs: int, batch_chars: int,
                 cpus: float):
        from ragless.components import encoder_for, lexical_for
        from ragless.ingest import IngestConfig

        _torch_threads(cpus)
        self.encoder = encoder_for({"components": components})  # refuses an encoder other than the recorded one
        self.lexical = lexical_for({"components": components}, self.encoder)  # ... and a lexical channel
        if self.encoder.dim != dim:
            raise RuntimeError(f"this worker's encoder makes {self.encoder.dim}-dim vectors, the index holds {dim}")
        self.root, self.dim = root, dim
        self.batching = IngestConfig(batch_docs=batch_docs, batch_chars=batch_chars)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: list[dict[str, Any]] = []
        pending: list[tuple[dict[str, Any], Document, list[Segment]]] = []
        chars = 0
        for row in batch.to_pylist():
            origin = {k: row[k] for k in ("file", "item", "kind", "doc_id", "source", "reason", "failed_file")}
            if row["kind"] != "doc":
                out.append(origin)
                continue
            if row["doc_id"] in {d.doc_id for _, d, _ in pending}:  # a duplicate (the driver keeps the first):
                out += self._write(pending)  # a shard holds a doc_id once
                pending, chars = [], 0
            doc = _document_from_row(row)
            pending.append((origin, doc, [Segment(**s) for s in row["segments"]]))
            chars += len(doc.text)
            if batch_full(len(pending), chars, self.batching):
                out += self._write(pending)
                pending, chars = [], 0
        out += self._write(pending)
        return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)

    def _write(self, pending: list[tuple[dict[str, Any], Document, list[Segment]]]) -> list[dict[str, Any]]:
        if not pending:
            return []
        docs, segments = [d for _, d, _ in pending], [s for _, _, s in pending]
        vectors, lexical = embed_batch(self.encoder, self.lexical, docs, segments)
        shard = write_shard(self.root, self.dim, docs, segments, vectors, lexical)
        record = shard.record
        rows = [{**origin, "sha256": e.sha256, "title": e.title, "n_segments": e.n_segments, "n_chars": e.n_chars,
                 "shard": record["id"], "shard_documents": record["documents"],
                 "shard_segments": record["segments"], "shard_lexical": bool(record.get("lexical"))}
                for (origin, _, _), e in zip(pending, shard.entries)]
        del docs, segments, vectors, lexical
        release_freed_memory()
        return rows


# -- the job ----------------------------------------------------------------------------------------------------------


class RayIngestJob(IngestJob):
    """`IngestJob` whose reading, segmentation and embedding run on Ray Data; see the module docstring.

    Same constructor (plus ``ray_config``), same report, the same index; `ingest_documents` stays local."""

    def __init__(self, index, segmenter, encoder, config=None, lexical=None, ray_config: RayConfig | None = None):
        super().__init__(index, segmenter, encoder, config, lexical)
        self.ray_cfg = ray_config or RayConfig()

    def run(self, paths: Sequence[str | Path], progress: bool = True) -> IngestReport:
        """Ingest every supported file under ``paths`` on Ray and commit once."""

        def feed(run: _Run) -> None:
            with ray_session(self.ray_cfg) as ray:
                rows = self._gather(ray, run, paths, progress)
            self._replay(run, rows)
            if self.cfg.prune:
                run.report.documents_deleted = run.prune([str(Path(p).resolve()) for p in paths])

        require_ray()  # before the writer opens the index
        return self._job(feed, progress)

    def _gather(self, ray, run: _Run, paths: Sequence[str | Path], progress: bool) -> pa.Table:
        """Run the stages; the result rows (RESULT_SCHEMA) of every file, listed failures included, in input order."""
        import ray.data as rd

        cfg, rcfg, writer = self.cfg, self.ray_cfg, run.writer
        listed: list[dict[str, Any]] = []  # failures of the listing itself
        files = []
        for n, item in enumerate(iter_files(paths, cfg.reader)):
            if isinstance(item, ReadFailure):  # a missing path or unsupported file named directly: never read
                listed.append({"file": n, "item": 0, "kind": "failure", "source": item.source, "reason": item.reason})
            else:
                files.append({"file": n, "path": str(item)})
        run.report.files = len(files)
        parts = [pa.Table.from_pylist(listed, schema=RESULT_SCHEMA)]
        if files:
            _quiet_data()
            known = ray.put({e.doc_id: e.sha256 for e in writer.catalog.values()})
            components = writer.components
            ds = rd.from_items(files, override_num_blocks=max(1, math.ceil(len(files) / rcfg.read_batch_files)))
            ds = ds.map_batches(read_files, fn_kwargs={"reader": cfg.reader, "known": known}, batch_format="pyarrow",
                                batch_size=rcfg.read_batch_files, num_cpus=rcfg.read_cpus)
            ds = ds.map_batches(Segmenting, fn_constructor_kwargs={"components": components,
                                                                   "cpus": rcfg.segment_cpus},
                                compute=rd.ActorPoolStrategy(size=rcfg.segment_actors), batch_format="pyarrow",
                                batch_size=cfg.batch_docs, num_cpus=rcfg.segment_cpus)
            ds = ds.map_batches(EmbeddingWriter, fn_constructor_kwargs={
                "components": components, "root": str(writer.root), "dim": writer.dim, "batch_docs": cfg.batch_docs,
                "batch_chars": cfg.batch_chars, "cpus": rcfg.embed_cpus},
                compute=rd.ActorPoolStrategy(size=rcfg.embed_actors), batch_format="pyarrow",
                batch_size=cfg.batch_docs, num_cpus=rcfg.embed_cpus)
            with tqdm(unit="doc", desc="ray", disable=not progress, dynamic_ncols=True) as bar:
                for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                    parts.append(batch)  # a few hundred bytes a document, kept as Arrow until the replay
                    bar.update(batch.num_rows)
        rows = pa.concat_tables([t.cast(RESULT_SCHEMA) for t in parts])
        return rows.sort_by([("file", "ascending"), ("item", "ascending")])

    def _replay(self, run: _Run, rows: pa.Table) -> None:
        """Apply the gathered rows in input order, as the local engine meets them: failures reported, duplicates and
        unchanged documents skipped, the rest adopted from the shards the workers wrote."""
        run.bar = tqdm(disable=True)  # the documents were counted as they arrived
        kept: dict[str, list[CatalogEntry]] = {}  # shard -> its documents that join the catalog
        shards: dict[str, dict[str, Any]] = {}  # shard -> its manifest record
        for chunk in rows.to_batches(max_chunksize=65536):
            for row in chunk.to_pylist():
                if row["kind"] == "failure":
                    if row["failed_file"]:
                        run.failed_files.add(row["failed_file"])
                    run.fail(ReadFailure(row["source"], row["reason"]))
                elif row["kind"] == "unchanged":
                    run.unchanged(row["doc_id"], row["source"])
                elif run.admit(row["doc_id"], row["source"]):
                    run.seen[row["doc_id"]] = row["source"]
                    sid = row["shard"]
                    kept.setdefault(sid, []).append(CatalogEntry(row["doc_id"], row["source"], row["sha256"],
                                                                 row["title"], sid, row["n_segments"], row["n_chars"]))
                    shards[sid] = {"id": sid, "documents": row["shard_documents"], "segments": row["shard_segments"],
                                   **({"lexical": True} if row["shard_lexical"] else {})}
        for sid, entries in kept.items():
            replaced = sum(e.doc_id in run.writer.catalog for e in entries)
            run.writer.adopt_shard(WrittenShard(shards[sid], entries))
            run.counted(len(entries), replaced, sum(e.n_segments for e in entries))
        # a shard whose every document was a duplicate is never adopted: its files go with the next commit


# -- batch evaluation -------------------------------------------------------------------------------------------------


class Answering:
    """The answer stage's actor: holds a system's answerer (none for retrieval only) and turns questions into report
    rows with `ragless.eval.harness.question_row`, the function of the local loop. Retrieval stays on the driver,
    so answers here are from the first round only: a model that rewrites the question for a second retrieval round
    (`ragless.ask.answer_in_rounds`) does so in the local loop, not on these actors."""

    def __init__(self, state, cfg, unit: str, ks: tuple[int, ...], answerer: str | None, cpus: float):
        _torch_threads(cpus)
        self.evalset, self.retrieved = _from_store(state)
        self.cfg, self.unit, self.ks = cfg, unit, tuple(ks)
        self.answerer = None
        if answerer is not None:
            from ragless.components import make_answerer

            self.answerer = make_answerer(answerer)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ragless.eval.harness import question_row

        rows = []
        for i in batch.column("i").to_pylist():
            sources, retrieve_s = self.retrieved[i]
            row = question_row(self.evalset.questions[i], sources, retrieve_s, self.cfg, self.unit, self.ks,
                               self.answerer, self.evalset.document)
            rows.append({"i": i, "row": json.dumps(row)})
        return pa.Table.from_pylist(rows, schema=pa.schema([("i", pa.int64()), ("row", pa.string())]))


class RayQuestions:
    """Where `ragless.eval.harness.evaluate` answers and scores questions when given as its ``engine``: Ray Data
    actors, each holding the system's answerer (``answer_actors`` of them), over batches of questions. Retrieval
    stays on the driver, with the system the harness built there (fast next to generation, and one index to build).

        with ray_session(rcfg):
            report = evaluate(EvalConfig(...), engine=RayQuestions(rcfg))

    The rows are the local loop's (the same function per question); latencies are the actors' own, and a system's
    ``peak_rss_mb`` counts the driver only, not the actors.
    """

    def __init__(self, ray_config: RayConfig | None = None):
        self.cfg = ray_config or RayConfig()

    def describe(self) -> dict[str, Any]:
        return {"name": "ray", **{f: getattr(self.cfg, f) for f in EVAL_FIELDS}}

    def question_rows(self, evalset, retrieved: list[tuple[list, float]], cfg, unit: str, ks: tuple[int, ...],
                      answerer: str | None) -> list[dict[str, Any]]:
        """The report rows of ``evalset``'s questions, in order; ``retrieved``: (sources, seconds) per question."""
        ray = require_ray()
        import ray.data as rd

        if not retrieved:
            return []
        _quiet_data()
        state = ray.put((evalset, retrieved))
        n = len(retrieved)
        ds = rd.from_items([{"i": i} for i in range(n)],
                           override_num_blocks=max(1, math.ceil(n / self.cfg.answer_batch)))
        ds = ds.map_batches(Answering, fn_constructor_kwargs={
            "state": state, "cfg": cfg, "unit": unit, "ks": ks, "answerer": answerer, "cpus": self.cfg.answer_cpus},
            compute=rd.ActorPoolStrategy(size=self.cfg.answer_actors), batch_format="pyarrow",
            batch_size=self.cfg.answer_batch, num_cpus=self.cfg.answer_cpus)
        rows: dict[int, dict[str, Any]] = {}
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            rows.update((i, json.loads(r)) for i, r in zip(batch.column("i").to_pylist(),
                                                           batch.column("row").to_pylist()))
        return [rows[i] for i in range(n)]

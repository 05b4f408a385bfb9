"""The on-disk index: Parquet tables, FAISS vectors and a manifest committed atomically.

Layout of an index directory (see ../shared/DESIGN.md, "The index on disk")::

    manifest.json                 the commit point: generation, components, live shards, the catalog to read
    catalog/g000007.parquet       the live documents of generation 7 (id, source, sha256, shard): no text
    documents/<shard>.parquet     immutable: the documents a batch wrote (text, units, meta)
    segments/<shard>.parquet      immutable: their segments, row-aligned with ...
    vectors/<shard>.faiss         ... their embeddings (FAISS flat inner-product index)
    lexical/<shard>.parquet       ... and their lexical vectors (word-piece ids and weights), when the index was made
                                  with the retriever's learned lexical channel (component "lexical")
    ann/g000007-<kind>-<id>.faiss an approximate nearest-neighbour index over the live vectors of generation 7 and
    ann/...rows.parquet           its row map (ANN id -> seg_id, sha256), when `ragless index build` made one (ann.py)

A writer never changes a file that a manifest names. It writes new shard files, then a new catalog, then replaces
`manifest.json` with `os.replace` (atomic on POSIX). A process killed at any point leaves the last committed
generation intact; the files it wrote but never committed are unreferenced and removed when the next writer opens the
index. Rows of a replaced or deleted document stay in their shard until `compact` rewrites it, but the catalog no
longer points at them, so readers ignore them. Shard files may also be written by other processes for the writer to
adopt (`write_shard`, `IndexWriter.adopt_shard`: the Ray engine's workers, `ragless.ray_engine`); only the writer
commits.

Readers open everything a manifest names when they are made (Parquet and vectors memory-mapped, read-only), so a
later commit or garbage collection never changes what an open reader sees (an unlinked file stays readable through its
mapping). The files of the previous generation are kept until the next commit, so a reader that has just read the old
manifest can still open its files. Readers write nothing: several processes (server replicas) can share one index.

Exact search copies the live vectors into one matrix on first use (`IndexReader.memory`). An index with an ANN index
(`manifest["ann"]`, committed by `ragless index build`) is searched through it instead: FAISS proposes candidates
from the memory-mapped ANN index, their exact scores are recomputed from the shards' mapped vectors, and rows the ANN
index does not cover (added after it was built) are searched exactly; see `ragless.ann`.

One writer at a time: `IndexWriter` holds an exclusive `flock` on `.writer.lock`, released by the kernel even when the
process is killed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import fcntl
import json
import os
import signal
import uuid
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from preprocess_model.document import Document, Segment

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".writer.lock"

DOCUMENTS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("sha256", pa.string()),
        ("title", pa.string()),
        ("text", pa.large_string()),
        ("meta", pa.string()),  # JSON
        ("unit_starts", pa.list_(pa.int64())),
        ("unit_ends", pa.list_(pa.int64())),
    ]
)
SEGMENTS_SCHEMA = pa.schema(
    [
        ("seg_id", pa.string()),
        ("doc_id", pa.string()),
        ("ordinal", pa.int32()),
        ("char_start", pa.int64()),
        ("char_end", pa.int64()),
        ("text", pa.string()),
        ("section", pa.string()),
        ("kind", pa.string()),
    ]
)
LEXICAL_SCHEMA = pa.schema([("ids", pa.list_(pa.int32())), ("weights", pa.list_(pa.float32()))])
SHARD_DIRS = ("catalog", "documents", "segments", "vectors", "lexical", "ann")
CATALOG_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("sha256", pa.string()),
        ("title", pa.string()),
        ("shard", pa.string()),
        ("n_segments", pa.int32()),
        ("n_chars", pa.int64()),
    ]
)


class StoreError(RuntimeError):
    """The index cannot be used as asked (missing, locked, made by other components, corrupt)."""


_crash_hits: dict[str, int] = {}


def crashpoint(name: str) -> None:
    """Kill this process with SIGKILL at a named point when RAGLESS_CRASHPOINT says so (crash-safety tests).

    ``RAGLESS_CRASHPOINT=after-shard`` kills at the first pass through that point, ``after-shard:3`` at the third.
    SIGKILL, not an exception: nothing gets to clean up, exactly like `kill -9` or a power cut.
    """
    spec = os.environ.get("RAGLESS_CRASHPOINT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target == name:
        _crash_hits[name] = _crash_hits.get(name, 0) + 1
        if _crash_hits[name] >= int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` then move into place: the file is whole or absent, never half-written."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_parquet(path: Path, table: pa.Table, row_group_size: int | None = None) -> None:
    _write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=row_group_size))


DOC_ROW_GROUP = 16  # documents per Parquet row group: fetching one document decompresses at most this many


def _write_faiss(path: Path, index: faiss.Index) -> None:
    _write_atomic(path, lambda tmp: faiss.write_index(index, str(tmp)))


# read-only mapping of the file (PROT_READ, MAP_SHARED): the codes of flat, IVF and HNSW indexes stay in the page
# cache, shared by every process that maps them, instead of being copied into each process's heap (faiss >= 1.10)
MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY


def read_faiss(path: Path, mmap: bool = True) -> faiss.Index:
    """A FAISS index from ``path``, memory-mapped by default; FileNotFoundError when it is missing (faiss itself
    raises a RuntimeError, which the readers' retry after a concurrent garbage collection would not recognize)."""
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        return faiss.read_index(str(path), MMAP_FLAGS if mmap else 0)
    except RuntimeError as e:
        if "could not open" in str(e):
            raise FileNotFoundError(path) from e
        raise


def flat_codes(index: faiss.Index) -> np.ndarray:
    """(ntotal, D) float32 read-only view of a flat index's vectors, without copying (mapped when the index is);
    valid while ``index`` lives."""
    if index.ntotal == 0:
        return np.zeros((0, index.d), np.float32)
    view = faiss.rev_swig_ptr(faiss.downcast_index(index).get_xb(), index.ntotal * index.d).reshape(-1, index.d)
    view.flags.writeable = False  # the mapping is PROT_READ: a write would be a segfault, not an exception
    return view


def read_manifest(root: Path) -> dict[str, Any] | None:
    path = Path(root) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:  # cannot happen through os.replace; means someone edited it by hand
        raise StoreError(f"{path} is not valid JSON: {e}") from e
    if manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version")
        raise StoreError(f"{path}: schema version {found}, this ragless reads {SCHEMA_VERSION}")
    return manifest


def manifest_files(manifest: dict[str, Any] | None) -> set[str]:
    """The paths (relative to the index root) a manifest refers to."""
    if not manifest:
        return set()
    files = {manifest["catalog"]} if manifest.get("catalog") else set()
    for shard in manifest["shards"]:
        files |= {f"documents/{shard['id']}.parquet", f"segments/{shard['id']}.parquet", f"vectors/{shard['id']}.faiss"}
        if shard.get("lexical"):
            files.add(f"lexical/{shard['id']}.parquet")
    if manifest.get("ann"):
        files |= {manifest["ann"]["index"], manifest["ann"]["rows"]}
    return files


@dataclass
class CatalogEntry:
    doc_id: str
    source: str
    sha256: str
    title: str
    shard: str
    n_segments: int
    n_chars: int


def _read_catalog(root: Path, manifest: dict[str, Any] | None) -> dict[str, CatalogEntry]:
    if not manifest or not manifest.get("catalog"):
        return {}
    table = pq.read_table(root / manifest["catalog"], schema=CATALOG_SCHEMA)
    return {row["doc_id"]: CatalogEntry(**row) for row in table.to_pylist()}


def _documents_table(docs: Sequence[Document]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "doc_id": [d.doc_id for d in docs],
            "source": [d.source for d in docs],
            "sha256": [d.sha256 for d in docs],
            "title": [d.title for d in docs],
            "text": [d.text for d in docs],
            "meta": [json.dumps(d.meta, ensure_ascii=False) for d in docs],
            "unit_starts": [[s for s, _ in d.units] for d in docs],
            "unit_ends": [[e for _, e in d.units] for d in docs],
        },
        schema=DOCUMENTS_SCHEMA,
    )


def _segments_table(segments: Sequence[Segment]) -> pa.Table:
    cols = {name: [getattr(s, name) for s in segments] for name in SEGMENTS_SCHEMA.names}
    return pa.Table.from_pydict(cols, schema=SEGMENTS_SCHEMA)


def _lexical_table(vectors: Sequence[tuple[np.ndarray, np.ndarray]]) -> pa.Table:
    return pa.Table.from_pydict({"ids": [np.asarray(i, np.int32) for i, _ in vectors],
                                 "weights": [np.asarray(w, np.float32) for _, w in vectors]}, schema=LEXICAL_SCHEMA)


def _document_from_row(row: dict[str, Any]) -> Document:
    return Document(
        doc_id=row["doc_id"],
        source=row["source"],
        text=row["text"],
        sha256=row["sha256"],
        title=row["title"],
        meta=json.loads(row["meta"]),
        units=list(zip(row["unit_starts"], row["unit_ends"])),
    )


@dataclass
class WrittenShard:
    """The files of one shard, written by `write_shard`, and what a writer needs to adopt them
    (`IndexWriter.adopt_shard`): its manifest record and a catalog entry per document, in row order."""

    record: dict[str, Any]  # {"id", "documents", "segments"} (+ "lexical": True): the manifest's entry for it
    entries: list[CatalogEntry]


def write_shard_tables(root: Path, dim: int, docs: pa.Table, segments: pa.Table, vectors: np.ndarray,
                       lexical: pa.Table | None = None) -> dict[str, Any]:
    """Write the immutable files of a new shard under the index folder ``root`` (documents, segments row-aligned
    with the (segments, ``dim``) vectors and the lexical vectors) and return its manifest record; each file is whole
    or absent. No manifest names it yet (see `IndexWriter.adopt_shard`)."""
    shard = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    vindex = faiss.IndexFlatIP(dim)
    if len(vectors):
        vindex.add(np.ascontiguousarray(vectors, dtype=np.float32))
    root = Path(root)
    _write_parquet(root / "documents" / f"{shard}.parquet", docs, DOC_ROW_GROUP)
    _write_parquet(root / "segments" / f"{shard}.parquet", segments)
    _write_faiss(root / "vectors" / f"{shard}.faiss", vindex)
    record: dict[str, Any] = {"id": shard, "documents": docs.num_rows, "segments": segments.num_rows}
    if lexical is not None:
        _write_parquet(root / "lexical" / f"{shard}.parquet", lexical)
        record["lexical"] = True
    return record


def write_shard(root: str | Path, dim: int, docs: Sequence[Document], segments: Sequence[Sequence[Segment]],
                vectors: np.ndarray, lexical: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> WrittenShard:
    """Write one shard of ``docs`` into the index folder ``root`` (made by an `IndexWriter`), for a writer to adopt.

    segments: one list per document; vectors: (total segments, ``dim``) float32 in the same order; lexical: one
    (word-piece ids, weights) pair per segment in the same order, or None. Any process may call it, several at once
    (shard ids are unique): `IndexWriter.add_shard` does, and so do the writers of `ragless.ray_engine`, whose shards
    the one writer adopts and commits.
    """
    flat = [s for segs in segments for s in segs]
    if len(docs) != len(segments):
        raise ValueError(f"{len(docs)} documents but {len(segments)} segment lists")
    if vectors.shape != (len(flat), dim):
        raise ValueError(f"vectors {vectors.shape} do not match {len(flat)} segments of dim {dim}")
    if len({d.doc_id for d in docs}) != len(docs):
        raise ValueError("a shard cannot hold the same doc_id twice")
    if lexical is not None and len(lexical) != len(flat):
        raise ValueError(f"{len(lexical)} lexical vectors for {len(flat)} segments")
    record = write_shard_tables(root, dim, _documents_table(docs), _segments_table(flat), vectors,
                                None if lexical is None else _lexical_table(lexical))
    entries = [CatalogEntry(d.doc_id, d.source, d.sha256, d.title, record["id"], len(segs), len(d.text))
               for d, segs in zip(docs, segments)]
    return WrittenShard(record, entries)


class IndexWriter:
    """The single writer of an index directory: stages shards and deletions, then commits a new generation.

    Use as a context manager; ``components`` is what made the vectors and cuts (``{"segmenter": {...},
    "encoder": {...}}``, and ``"lexical"`` when segments carry lexical vectors) and must match what an existing index
    recorded.

        with IndexWriter(path, components, dim=384) as w:
            w.add_shard(docs, segments_per_doc, vectors)   # vectors: (sum of segments, D) float32, unit norm
            # with a "lexical" component: w.add_shard(docs, segments_per_doc, vectors, lexical=[(ids, weights), ...])
            w.delete(["doc-id"])
            w.commit()
    """

    def __init__(self, root: str | Path, components: dict[str, Any] | None = None, dim: int | None = None):
        """Open (or create) the index at ``root``; ``components``/``dim`` None = those the index recorded."""
        self.root = Path(root)
        if (components is None or dim is None) and read_manifest(self.root) is None:
            raise StoreError(f"no index at {self.root}: a new index needs its components and dimension")
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in SHARD_DIRS:
            (self.root / sub).mkdir(exist_ok=True)
        self._lock_file = open(self.root / LOCK, "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock_file.close()
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise StoreError(f"another writer holds {self.root / LOCK}: one writer per index at a time") from e
            raise
        self.manifest = read_manifest(self.root)
        self.components = components if components is not None else self.manifest["components"]
        self.dim = dim if dim is not None else self.manifest["dim"]
        self._check_components()
        self.catalog = _read_catalog(self.root, self.manifest)
        self.shards: dict[str, dict[str, Any]] = {s["id"]: s for s in (self.manifest or {}).get("shards", [])}
        # the ANN index (ragless.ann) is carried into every later generation: it covers the rows it was built on,
        # readers search the rows added since exactly
        self.ann: dict[str, Any] | None = (self.manifest or {}).get("ann")
        self._dirty = False
        self.collect_garbage()

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock. Staged, uncommitted changes are dropped (their files are collected next time)."""
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()

    @property
    def generation(self) -> int:
        return self.manifest["generation"] if self.manifest else 0

    def _check_components(self) -> None:
        if not self.manifest:
            return
        for key in sorted(set(self.components) | set(self.manifest["components"])):
            made_by, recorded = self.components.get(key), self.manifest["components"].get(key)
            if recorded != made_by:
                raise StoreError(
                    f"{self.root} was made with {key} {json.dumps(recorded)}, not {json.dumps(made_by)}: "
                    "ingest into a new index (or delete this one) to change components"
                )
        if self.manifest["dim"] != self.dim:
            raise StoreError(f"{self.root} holds {self.manifest['dim']}-dim vectors, the encoder makes {self.dim}")

    # -- staging -----------------------------------------------------------------------------------------------------
    @property
    def lexical(self) -> bool:
        """Whether this index stores lexical vectors with its segments."""
        return "lexical" in self.components

    def add_shard(self, docs: Sequence[Document], segments: Sequence[Sequence[Segment]], vectors: np.ndarray,
                  lexical: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> str:
        """Write one immutable shard for ``docs`` and stage them in the catalog (replacing same-id documents).

        segments: one list per document; vectors: (total segments, D) float32 in the same order; lexical: one
        (word-piece ids, weights) pair per segment in the same order, required exactly when the index has a
        "lexical" component. Returns the shard id. Nothing is visible to readers before `commit`.
        """
        if (lexical is not None) != self.lexical:
            raise ValueError("lexical vectors are required for an index with a lexical component, and refused "
                             "without one" if self.lexical else f"{self.root} has no lexical component")
        return self.adopt_shard(write_shard(self.root, self.dim, docs, segments, vectors, lexical))

    def adopt_shard(self, shard: WrittenShard, doc_ids: Container[str] | None = None) -> str:
        """Stage a shard that `write_shard` wrote into this index, in this process or another (the workers of
        `ragless.ray_engine`): its documents join the catalog (replacing same-id ones), only those in ``doc_ids``
        when given (the others' rows stay dead in the shard until `compact`). Checks that its files are there and
        whole. Returns the shard id; nothing is visible to readers before `commit`.

        The files of a shard no manifest names are garbage for `collect_garbage`, which runs when a writer opens and
        after each commit: write shards for a writer while it holds the lock, and adopt them before its next commit.
        """
        record = shard.record
        sid = record["id"]
        if bool(record.get("lexical")) != self.lexical:
            raise ValueError(f"shard {sid} {'has' if record.get('lexical') else 'lacks'} lexical vectors; "
                             f"{self.root} {'has a' if self.lexical else 'has no'} lexical component")
        try:
            found = {"documents": pq.read_metadata(self.root / "documents" / f"{sid}.parquet").num_rows,
                     "segments": pq.read_metadata(self.root / "segments" / f"{sid}.parquet").num_rows}
            vectors = read_faiss(self.root / "vectors" / f"{sid}.faiss")
            if self.lexical:
                found["lexical"] = pq.read_metadata(self.root / "lexical" / f"{sid}.parquet").num_rows
        except (FileNotFoundError, OSError) as e:
            raise StoreError(f"shard {sid} is not in {self.root}: {e}") from e
        expected = {"documents": record["documents"], "segments": record["segments"]}
        if self.lexical:
            expected["lexical"] = record["segments"]
        if found != expected or (vectors.ntotal, vectors.d) != (record["segments"], self.dim):
            raise StoreError(f"shard {sid} does not hold what its record says: {found}, {vectors.ntotal} vectors of "
                             f"dim {vectors.d}; expected {expected} and dim {self.dim}")
        self.shards[sid] = dict(record)
        for entry in shard.entries:
            if doc_ids is None or entry.doc_id in doc_ids:
                self.catalog[entry.doc_id] = dataclasses.replace(entry, shard=sid)
        self._dirty = True
        return sid

    def _write_shard(self, docs: pa.Table, segments: pa.Table, vectors: np.ndarray,
                     lexical: pa.Table | None = None) -> str:
        """Write the files of a new shard (segments row-aligned with vectors and lexical vectors) and register it;
        returns its id."""
        record = write_shard_tables(self.root, self.dim, docs, segments, vectors, lexical)
        self.shards[record["id"]] = record
        return record["id"]

    def set_ann(self, entry: dict[str, Any] | None) -> None:
        """Stage the ANN index that the next commit records (its files already written under ann/), or None to
        drop it; see `ragless.ann.build_ann`."""
        self.ann = entry
        self._dirty = True

    def delete(self, doc_ids: Iterable[str]) -> list[str]:
        """Stage removal of documents; returns the ids that were present."""
        removed = [d for d in doc_ids if self.catalog.pop(d, None) is not None]
        self._dirty = self._dirty or bool(removed)
        return removed

    # -- commit ------------------------------------------------------------------------------------------------------
    def commit(self) -> int:
        """Make staged changes visible atomically; returns the new generation (the same one if nothing changed)."""
        if not self._dirty and self.manifest is not None:
            return self.generation
        gen = self.generation + 1
        live = self._live_counts()
        shards = [dict(s, live_documents=live.get(sid, (0, 0))[0], live_segments=live.get(sid, (0, 0))[1])
                  for sid, s in sorted(self.shards.items()) if sid in live]
        catalog_path = f"catalog/g{gen:06d}.parquet"
        rows = sorted(self.catalog.values(), key=lambda e: e.doc_id)
        table = pa.Table.from_pylist([vars(e) for e in rows], schema=CATALOG_SCHEMA)
        _write_parquet(self.root / catalog_path, table)
        crashpoint("before-manifest")
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "generation": gen,
            "committed_at": _now(),
            "components": self.components,
            "dim": self.dim,
            "catalog": catalog_path,
            "shards": shards,
            "counts": {
                "documents": len(self.catalog),
                "segments": sum(e.n_segments for e in self.catalog.values()),
                "stored_segments": sum(s["segments"] for s in shards),
            },
            "previous": sorted(manifest_files(self.manifest)),  # kept one more generation for readers opening now
        }
        if self.ann:
            manifest["ann"] = self.ann
        _write_atomic(self.root / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
        _fsync_dir(self.root)
        crashpoint("after-manifest")
        self.manifest = manifest
        self.shards = {s["id"]: s for s in shards}
        self._dirty = False
        self.collect_garbage()
        return gen

    def _live_counts(self) -> dict[str, tuple[int, int]]:
        counts: dict[str, tuple[int, int]] = {}
        for e in self.catalog.values():
            d, s = counts.get(e.shard, (0, 0))
            counts[e.shard] = (d + 1, s + e.n_segments)
        return counts

    def collect_garbage(self) -> list[str]:
        """Remove files that neither the committed generation nor the one before it refers to.

        Those are the shards of replaced or deleted data after a later commit, and files that a killed writer left
        behind before committing. Returns the removed paths (relative to the root).
        """
        keep = manifest_files(self.manifest) | set((self.manifest or {}).get("previous", []))
        removed = []
        for sub in SHARD_DIRS:  # all made by __init__, also in an index written before lexical vectors existed
            for path in (self.root / sub).iterdir():
                rel = f"{sub}/{path.name}"
                if rel not in keep:
                    path.unlink(missing_ok=True)
                    removed.append(rel)
        for path in self.root.glob(f".{MANIFEST}.*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed

    # -- maintenance -------------------------------------------------------------------------------------------------
    def compact(self, target_segments: int = 16384) -> int:
        """Rewrite shards that hold dead rows or are small into shards of about ``target_segments`` live segments.

        Works on Arrow tables and vector matrices, never on Python objects per row, one source shard at a time: memory
        is bounded by the target size (about 50 MB at 16384 segments of ~500 characters). Returns how many shards
        were rewritten; commit to make the result visible.
        """
        live = self._live_counts()
        has_dead = {sid for sid, s in self.shards.items() if sid in live and live[sid][1] < s["segments"]}
        small = {sid for sid, s in self.shards.items() if sid in live and s["segments"] < target_segments // 2}
        todo = sorted(has_dead | small)
        if not has_dead and len(todo) < 2:
            return 0
        live_ids: dict[str, list[str]] = {}
        for e in self.catalog.values():
            live_ids.setdefault(e.shard, []).append(e.doc_id)
        pending: list[tuple[pa.Table, pa.Table, np.ndarray, pa.Table | None]] = []

        def flush() -> None:
            if not pending:
                return
            docs = pa.concat_tables([d for d, _, _, _ in pending]).combine_chunks()
            segs = pa.concat_tables([s for _, s, _, _ in pending]).combine_chunks()
            lex = pa.concat_tables([x for _, _, _, x in pending]).combine_chunks() if self.lexical else None
            shard = self._write_shard(docs, segs, np.concatenate([v for _, _, v, _ in pending]), lex)
            for doc_id in docs.column("doc_id").to_pylist():
                self.catalog[doc_id].shard = shard
            pending.clear()
            self._dirty = True

        for sid in todo:
            pending.append(self._live_rows(sid, live_ids[sid]))
            if sum(s.num_rows for _, s, _, _ in pending) >= target_segments:
                flush()
        flush()
        return len(todo)

    def _live_rows(self, shard: str, doc_ids: list[str]) -> tuple[pa.Table, pa.Table, np.ndarray, pa.Table | None]:
        """The documents, segments, vectors and lexical vectors (None without them) of ``shard`` that belong to
        ``doc_ids`` (its live ones), in order."""
        live_ids = pa.array(doc_ids, pa.string())
        docs = pq.read_table(self.root / "documents" / f"{shard}.parquet", schema=DOCUMENTS_SCHEMA)
        segs = pq.read_table(self.root / "segments" / f"{shard}.parquet", schema=SEGMENTS_SCHEMA)
        vecs = faiss.read_index(str(self.root / "vectors" / f"{shard}.faiss"))
        seg_mask = pc.is_in(segs.column("doc_id"), value_set=live_ids)
        rows = np.flatnonzero(seg_mask.to_numpy(zero_copy_only=False))
        matrix = vecs.reconstruct_n(0, vecs.ntotal)[rows] if vecs.ntotal else np.zeros((0, self.dim), np.float32)
        lex = None
        if self.lexical:
            lex = pq.read_table(self.root / "lexical" / f"{shard}.parquet", schema=LEXICAL_SCHEMA).filter(seg_mask)
        return docs.filter(pc.is_in(docs.column("doc_id"), value_set=live_ids)), segs.filter(seg_mask), matrix, lex


@dataclass
class Hit:
    """One search result: a live segment and its inner-product score with the query."""

    score: float
    segment: Segment
    title: str
    source: str


class IndexReader:
    """A consistent view of one committed generation, unaffected by later writes; writes nothing.

        reader = IndexReader(path)
        hits = reader.search(encoder.embed_queries(["question"]), k=5)[0]
        doc = reader.document(hits[0].segment.doc_id)

    Rows: the live segments are numbered 0..N-1 shard by shard, in the manifest's shard order (`segment_at`,
    `vectors`, `memory` and `lexical_matrix` share that order). ``ann=False`` ignores the index's ANN index (exact
    search over every row); with ``ann=True`` (the default) and an ANN index committed, `ann` is its open
    `ragless.ann.AnnIndex` and `search` goes through it.
    """

    def __init__(self, root: str | Path, retries: int = 3, ann: bool = True):
        self.root = Path(root)
        for attempt in range(retries):
            try:
                self._open(ann)
                return
            except FileNotFoundError:  # two commits landed between reading the manifest and opening its files
                if attempt == retries - 1:
                    raise

    def _open(self, use_ann: bool) -> None:
        manifest = read_manifest(self.root)
        if manifest is None:
            raise StoreError(f"no index at {self.root} (no {MANIFEST}): run `ragless ingest ... --index {self.root}`")
        self.manifest = manifest
        self.catalog = _read_catalog(self.root, manifest)
        self.dim = manifest["dim"]
        self._docs: dict[str, pq.ParquetFile] = {}
        self._doc_rows: dict[str, dict[str, int]] = {}  # shard -> doc_id -> row, filled on first use
        self._segs: dict[str, pa.Table] = {}
        self._memory: np.ndarray | None = None
        self._lexical = None
        self._vector_files: list[faiss.Index] = []  # per shard, memory-mapped: they own the views below
        self._shard_vectors: list[np.ndarray] = []  # per shard (stored rows, D), a read-only view of the mapping
        self._live_rows: list[np.ndarray] = []  # per shard, its live rows (ascending), in global row order
        self._shard_ids = [s["id"] for s in manifest["shards"]]
        for sid in self._shard_ids:
            self._docs[sid] = pq.ParquetFile(pa.memory_map(str(self.root / "documents" / f"{sid}.parquet")))
            segs = pq.read_table(pa.memory_map(str(self.root / "segments" / f"{sid}.parquet")))
            self._segs[sid] = segs
            vecs = read_faiss(self.root / "vectors" / f"{sid}.faiss")
            self._vector_files.append(vecs)
            self._shard_vectors.append(flat_codes(vecs))
            live_ids = pa.array([d for d, e in self.catalog.items() if e.shard == sid], pa.string())
            mask = pc.is_in(segs.column("doc_id"), value_set=live_ids).to_numpy(zero_copy_only=False)
            self._live_rows.append(np.flatnonzero(mask).astype(np.int64))
        counts = [len(rows) for rows in self._live_rows]
        self._shard_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # global row of each's first
        self._shard_of_row = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        self._row_in_shard = np.concatenate(self._live_rows) if counts else np.zeros(0, np.int64)
        self.ann = None
        if use_ann and manifest.get("ann"):
            from ragless.ann import AnnIndex

            self.ann = AnnIndex.open(self, manifest["ann"])

    @property
    def generation(self) -> int:
        return self.manifest["generation"]

    def __len__(self) -> int:
        """Live segments."""
        return len(self._row_in_shard)

    def segment_at(self, row: int) -> Segment:
        """The live segment at global row ``row`` of the vector index."""
        sid = self._shard_ids[self._shard_of_row[row]]
        record = self._segs[sid].slice(int(self._row_in_shard[row]), 1).to_pylist()[0]
        return Segment(**record)

    def row_keys(self) -> pa.ChunkedArray:
        """(N,) strings naming each live row's content: its seg_id and its document's sha256. The same in every
        generation that holds that segment of those bytes, whichever shard it sits in (after compaction too); an
        ANN index finds its rows in a later generation by it (`ragless.ann`)."""
        doc_ids = pa.array(list(self.catalog), pa.string())
        shas = pa.array([e.sha256 for e in self.catalog.values()], pa.string())
        parts = []
        for sid, rows in zip(self._shard_ids, self._live_rows):
            segs = self._segs[sid].select(["seg_id", "doc_id"]).take(pa.array(rows))
            sha = pc.take(shas, pc.index_in(segs.column("doc_id"), value_set=doc_ids))
            parts.extend(pc.binary_join_element_wise(segs.column("seg_id"), sha, "\x00").chunks)
        return pa.chunked_array(parts, pa.string())

    def search(self, queries: np.ndarray, k: int = 5) -> list[list[Hit]]:
        """Top-``k`` live segments by inner product for each query row of ``queries`` (M, D): exact, or through the
        ANN index when the reader has one (exact over its candidates and the rows it does not cover)."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (M, {self.dim}), got {queries.shape}")
        k = min(k, len(self))
        if k == 0:
            return [[] for _ in range(len(queries))]
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ann is not None:
            import torch

            from ragless.ann import ann_attention

            rows_t, scores_t, _ = ann_attention(self, torch.from_numpy(queries), k, scale=1.0)
            scores, rows = scores_t.numpy(), rows_t.numpy()
        else:  # the same kernel as a flat inner-product index, without copying the memory into one
            scores, rows = faiss.knn(queries, self.memory(), k, metric=faiss.METRIC_INNER_PRODUCT)  # (M, k) each
        out = []
        for q_scores, q_rows in zip(scores, rows):
            hits = []
            for score, row in zip(q_scores, q_rows):
                if row < 0:
                    continue
                seg = self.segment_at(int(row))
                entry = self.catalog[seg.doc_id]
                hits.append(Hit(float(score), seg, entry.title, entry.source))
            out.append(hits)
        return out

    def memory(self) -> np.ndarray:
        """(N, D) float32: every live segment's vector, in row order (what exact retrieval attends over); one copy in
        this process's memory, made on first use and kept for this generation (never made by the ANN path)."""
        if self._memory is None:
            memory = np.empty((len(self), self.dim), np.float32)  # filled block by block: no second copy
            for start, block in self.vector_blocks():
                memory[start: start + len(block)] = block
            self._memory = memory
        return self._memory

    def vector_blocks(self, block: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(first global row, (n, D) vectors) over the live rows in order, ``block`` rows at most at a time, copied
        from the mapped shards without making `memory`."""
        for i, (view, rows) in enumerate(zip(self._shard_vectors, self._live_rows)):
            for start in range(0, len(rows), block):
                yield int(self._shard_start[i]) + start, view[rows[start: start + block]]

    @property
    def has_lexical(self) -> bool:
        return "lexical" in self.manifest["components"]

    def lexical_matrix(self, vocab: int):
        """(N, vocab) scipy CSR matrix: every live segment's lexical vector, in row order (the sparse side of the
        memory); made on first use and kept for this generation. An error for an index without lexical vectors."""
        from scipy.sparse import csr_matrix, vstack

        if not self.has_lexical:
            raise StoreError(f"{self.root} has no lexical vectors (ingested without the lexical channel)")
        if self._lexical is None:
            parts = []
            for sid, rows in zip(self._shard_ids, self._live_rows):
                table = pq.read_table(pa.memory_map(str(self.root / "lexical" / f"{sid}.parquet")))
                ids, weights = table.column("ids").combine_chunks(), table.column("weights").combine_chunks()
                offsets = ids.offsets.to_numpy(zero_copy_only=False)
                shard = csr_matrix((weights.flatten().to_numpy(zero_copy_only=False),
                                    ids.flatten().to_numpy(zero_copy_only=False), offsets - offsets[0]),
                                   shape=(len(table), vocab))
                parts.append(shard[rows])
            self._lexical = vstack(parts, format="csr") if parts else csr_matrix((0, vocab), dtype=np.float32)
        return self._lexical

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), D) float32 stored embeddings of global rows (e.g. to recompute scores exactly, or in torch
        with gradients): read from the mapped shards, or from `memory` when it is made."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._memory is not None:
            return self._memory[rows]
        out = np.empty((len(rows), self.dim), np.float32)
        shard_of = self._shard_of_row[rows]
        for i in np.unique(shard_of):
            at = shard_of == i
            out[at] = self._shard_vectors[i][self._row_in_shard[rows[at]]]
        return out

    def document(self, doc_id: str) -> Document:
        entry = self.catalog.get(doc_id)
        if entry is None:
            raise KeyError(f"no document {doc_id!r} in generation {self.generation}")
        pf = self._docs[entry.shard]
        if entry.shard not in self._doc_rows:
            ids = pf.read(columns=["doc_id"]).column("doc_id").to_pylist()
            self._doc_rows[entry.shard] = {d: i for i, d in enumerate(ids)}
        row = self._doc_rows[entry.shard][doc_id]
        group, offset = divmod(row, pf.metadata.row_group(0).num_rows)
        return _document_from_row(pf.read_row_group(group).slice(offset, 1).to_pylist()[0])

    def segments_of(self, doc_id: str) -> list[Segment]:
        """The live segments of ``doc_id`` in this generation, in order (by ordinal): read from its shard's segments,
        already open for this reader, so later commits and their garbage collection do not disturb it."""
        entry = self.catalog.get(doc_id)
        if entry is None:
            raise KeyError(f"no document {doc_id!r} in generation {self.generation}")
        segs = self._segs[entry.shard]
        rows = segs.filter(pc.equal(segs.column("doc_id"), doc_id)).to_pylist()  # a shard holds a doc_id once
        return [Segment(**row) for row in sorted(rows, key=lambda r: r["ordinal"])]

    def documents(self) -> list[CatalogEntry]:
        return sorted(self.catalog.values(), key=lambda e: e.source)

    def iter_segments(self) -> Iterator[Segment]:
        """Every live segment, shard by shard."""
        for row in range(len(self)):
            yield self.segment_at(row)

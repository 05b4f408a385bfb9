"""Approximate nearest-neighbour (ANN) indexes for large memories: built offline, searched memory-mapped, reranked
exactly.

    ragless index build --index my-index --kind ivf-flat            # or ivf-pq, hnsw (flags: AnnConfig)
    ragless index drop --index my-index                             # exact search again

Exact retrieval (`ragless.ask.Asker.retrieve`) reads every live vector for every question: one copy of the memory in
each process and O(N) work per question. Past a few million segments an ANN index proposes candidates instead:

- ``ivf-flat``: k-means into ``nlist`` lists (`faiss.IndexIVFFlat`), ``nprobe`` lists scanned per question, exact
  inner products within them;
- ``ivf-pq``: the same lists holding product-quantized codes (``m`` sub-vectors of ``nbits`` each:
  `faiss.IndexIVFPQ`), 4 * D / m times smaller than the vectors, approximate scores;
- ``hnsw``: a navigable small-world graph (`faiss.IndexHNSWFlat`, ``hnsw_m`` links per node), ``ef_search``
  candidates kept while walking it; no training, but the slowest to build and the graph is held in memory.

Building (`build_ann`) trains on a seeded sample of the committed generation's live vectors, adds them all, writes
``ann/g<generation>-<kind>-<id>.faiss`` and its row map (``.rows.parquet``: each ANN id's seg_id and document sha256,
`IndexReader.row_keys`) and then commits a new generation whose manifest names them (``manifest["ann"]``), all under
the writer lock: a reader sees either no ANN index or a whole one, never a half-built one, and a crash before the
commit leaves files that the next writer collects. Later commits carry the entry forward. The row map names each ANN
id's content, not its place, so in a later generation (compacted or not) the ids of deleted or replaced segments are
dead (never proposed: a FAISS `IDSelectorBitmap` excludes them) and the rows added since the build are "uncovered":
searched exactly, by a flat pass over their vectors, at every question. An ANN index built on an old generation thus
never hides new rows; it only gets slower as the uncovered part grows. `AnnIndex.status` says how much is covered;
the reader logs a warning when less than 90% is (rebuild then).

Searching (`ann_attention`, used by `Asker.retrieve` and `IndexReader.search` when the reader has an ANN index):
FAISS proposes ``max(candidates, 10 * k)`` rows from the memory-mapped ANN index (`AnnIndex.n_candidates`: 100 by
default, 1000 for IVF-PQ, whose approximate scores rank the true neighbours lower); their exact scores are recomputed
from the shards' memory-mapped vectors (and, with the lexical channel, over the candidates and every key that shares
a word with the question, as `retrieve_generate_model.lexical.fused_attention` does); the uncovered rows are scored
exactly; the top k are taken by the exact path's rule (score, then lower row first). Where the candidates hold the
true top k, the rows returned are those of exact search, with the same scores. The normalizer ``log_z`` is then the
log-sum-exp over what was scored (candidates and uncovered rows), not over the whole memory: a lower bound of the
exact one, so a source's weight ``exp(score - log_z)`` is an upper bound of its exact weight, and the k weights still
sum to at most 1.

Memory-mapping: FAISS >= 1.10 maps the codes of flat, IVF and HNSW indexes read-only (`ragless.store.MMAP_FLAGS`):
the IVF lists and HNSW vectors stay in the page cache, shared by every server process that maps the same files; an
HNSW graph's links are read into each process. Nothing here writes while searching.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ragless.store import (
    IndexReader,
    IndexWriter,
    StoreError,
    _write_faiss,
    _write_parquet,
    crashpoint,
    read_faiss,
    read_manifest,
)

log = logging.getLogger(__name__)

KINDS = ("ivf-flat", "ivf-pq", "hnsw")
ROWS_SCHEMA = pa.schema([("key", pa.string())])  # per ANN id: the row's seg_id and document sha256 (row_keys)


@dataclass(frozen=True)
class AnnConfig:
    """How `ragless index build` makes the ANN index."""

    kind: str = "ivf-flat"  # ivf-flat, ivf-pq or hnsw
    nlist: int = 0  # IVF lists; 0: the power of two nearest sqrt(N) (k-means stays minutes on a CPU at 10^6)
    m: int = 48  # IVF-PQ sub-quantizers, dividing the dimension (48: 8 dimensions each at 384, 48 bytes a vector)
    nbits: int = 8  # IVF-PQ bits per sub-quantizer code (8: 256 centroids, FAISS's fast path)
    hnsw_m: int = 32  # HNSW links per node (FAISS's usual 16-64; more: better recall, bigger graph)
    ef_construction: int = 40  # HNSW candidates kept while linking a node (FAISS's default)
    train_size: int = 65536  # IVF vectors sampled for training (at least 40 per list: FAISS warns below 39)
    seed: int = 0  # the training sample and k-means


@dataclass(frozen=True)
class AnnSearchConfig:
    """How a reader with an ANN index searches it (`ann_attention`)."""

    use: bool = True  # search through the index's ANN index when it has one; False: exact over every row
    candidates: int = 0  # rows FAISS proposes for the exact rerank; 0: 100, 1000 for ivf-pq's rougher scores (>= 10k)
    nprobe: int = 32  # IVF lists scanned per question (recall against time)
    ef_search: int = 128  # HNSW candidates kept while searching (at least the candidates asked for)


# -- building ---------------------------------------------------------------------------------------------------------

def auto_nlist(n: int) -> int:
    """The power of two nearest sqrt(n), at most n."""
    return max(1, min(n, 2 ** round(math.log2(max(1.0, math.sqrt(n))))))


def check_config(cfg: AnnConfig, n: int, dim: int) -> dict[str, Any]:
    """The parameters `build_ann` will use for ``n`` vectors of ``dim`` dimensions, or a ValueError saying which one
    does not fit."""
    if cfg.kind not in KINDS:
        raise ValueError(f"unknown ANN kind {cfg.kind!r}: one of {', '.join(KINDS)}")
    if n == 0:
        raise ValueError("the index has no live segments to build an ANN index over")
    if cfg.kind == "hnsw":
        if cfg.hnsw_m < 2 or cfg.ef_construction < 1:
            raise ValueError(f"HNSW needs --hnsw-m >= 2 and --ef-construction >= 1, got {cfg.hnsw_m} and "
                             f"{cfg.ef_construction}")
        return {"hnsw_m": cfg.hnsw_m, "ef_construction": cfg.ef_construction}
    nlist = cfg.nlist or auto_nlist(n)
    if not 1 <= nlist <= n:
        raise ValueError(f"--nlist {nlist} does not fit {n} vectors: k-means needs at least one vector per list "
                         f"(nlist <= N; about sqrt(N), {auto_nlist(n)}, is a good start; 0 chooses it)")
    if cfg.train_size < 1:
        raise ValueError(f"--train-size must be positive, got {cfg.train_size}")
    params = {"nlist": nlist, "train": min(n, max(cfg.train_size, 40 * nlist))}
    if cfg.kind == "ivf-pq":
        if cfg.m < 1 or dim % cfg.m:
            raise ValueError(f"--m {cfg.m} must divide the dimension {dim} (each sub-quantizer codes D/m dimensions)")
        if not 1 <= cfg.nbits <= 16:
            raise ValueError(f"--nbits must be within 1..16, got {cfg.nbits}")
        if n < 2 ** cfg.nbits:
            raise ValueError(f"IVF-PQ trains 2^{cfg.nbits} = {2 ** cfg.nbits} centroids per sub-quantizer: it needs "
                             f"at least that many vectors, the index has {n} (lower --nbits, or use ivf-flat)")
        params |= {"m": cfg.m, "nbits": cfg.nbits}
    return params


def make_index(kind: str, dim: int, params: dict[str, Any], seed: int = 0) -> faiss.Index:
    """An empty (untrained) FAISS index of ``kind`` over inner products."""
    factory = {"ivf-flat": lambda p: f"IVF{p['nlist']},Flat",
               "ivf-pq": lambda p: f"IVF{p['nlist']},PQ{p['m']}x{p['nbits']}",
               "hnsw": lambda p: f"HNSW{p['hnsw_m']},Flat"}[kind](params)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        index.hnsw.efConstruction = params["ef_construction"]
    else:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.seed = seed
        if kind == "ivf-pq":
            ivf.pq.cp.seed = seed
            # the factory turns on polysemous training (a code ordering for Hamming pre-filtering, which this search
            # does not use): it took ~100 s of a 110 s training at 65536 vectors
            ivf.do_polysemous_training = False
    return index


def build_ann(root: str | Path, cfg: AnnConfig | None = None,
              log_fn: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Build an ANN index over the live vectors of the committed generation of ``root`` and commit it (a new
    generation naming it in ``manifest["ann"]``); returns that entry. Writes ``ann/<name>.faiss`` and
    ``ann/<name>.rows.parquet`` and the new manifest; the previous ANN index's files are collected two commits later.

    Holds the writer lock throughout: refused while another writer (ingest, delete, compact) has uncommitted changes,
    and no writer commits while it builds. StoreError for a missing or busy index, ValueError for parameters that do
    not fit the data (see `check_config`).
    """
    cfg = cfg or AnnConfig()
    root = Path(root)
    if read_manifest(root) is None:
        raise StoreError(f"no index at {root} (no manifest.json): nothing committed to build an ANN index over; "
                         f"ingest first (`ragless ingest ... --index {root}`)")
    try:
        writer = IndexWriter(root)
    except StoreError as e:
        if "another writer" not in str(e):
            raise
        raise StoreError(f"{root}: another writer (ingest, delete or compact) is running and its changes are not "
                         "committed: build the ANN index when it has finished") from e
    with writer:
        reader = IndexReader(root, ann=False)
        params = check_config(cfg, len(reader), reader.dim)
        n, t0 = len(reader), time.perf_counter()
        index = make_index(cfg.kind, reader.dim, params, cfg.seed)
        if not index.is_trained:
            sample = np.sort(np.random.default_rng(cfg.seed).choice(n, size=params["train"], replace=False))
            log_fn(f"ann: training {cfg.kind} on {len(sample)} of {n} vectors")
            index.train(reader.vectors(sample))
        t_train = time.perf_counter() - t0
        for start, block in reader.vector_blocks():
            index.add(block)
            log_fn(f"ann: added {start + len(block)} / {n}")
        t_add = time.perf_counter() - t0 - t_train
        name = f"ann/g{reader.generation:06d}-{cfg.kind}-{uuid.uuid4().hex[:8]}"
        _write_faiss(root / f"{name}.faiss", index)
        _write_parquet(root / f"{name}.rows.parquet", pa.Table.from_arrays([reader.row_keys()], schema=ROWS_SCHEMA))
        crashpoint("ann-before-commit")
        entry = {
            "kind": cfg.kind,
            "index": f"{name}.faiss",
            "rows": f"{name}.rows.parquet",
            "generation": reader.generation,  # the generation whose live rows it covers
            "vectors": n,
            "params": params,
            "config": asdict(cfg),
            "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "train_s": round(t_train, 2),
            "add_s": round(t_add, 2),
            "bytes": (root / f"{name}.faiss").stat().st_size,
        }
        writer.set_ann(entry)
        committed = writer.commit()
        log_fn(f"ann: {cfg.kind} over {n} vectors committed as generation {committed} "
               f"({entry['bytes'] / 2**20:.1f} MiB, train {t_train:.1f}s, add {t_add:.1f}s)")
        return entry


def drop_ann(root: str | Path) -> int:
    """Commit a generation without the ANN index (exact search again); returns the generation."""
    with IndexWriter(root) as writer:
        if writer.ann is None:
            return writer.generation
        writer.set_ann(None)
        return writer.commit()


# -- searching --------------------------------------------------------------------------------------------------------

class AnnIndex:
    """An ANN index opened (memory-mapped) for one reader's generation: which ANN ids are live and which of the
    reader's rows it does not cover. Made by `IndexReader` when its manifest names one; read-only, thread-safe."""

    def __init__(self, entry: dict[str, Any], index: faiss.Index, to_row: np.ndarray, n_rows: int):
        self.entry, self.index, self.kind = entry, index, entry["kind"]
        self.to_row = to_row  # (ntotal,) the reader's row of each ANN id, -1 where dead in this generation
        covered = np.zeros(n_rows, bool)
        covered[to_row[to_row >= 0]] = True
        self.covered = covered  # (N,) whether the ANN index holds each of the reader's rows
        self.uncovered = np.flatnonzero(~covered)  # rows added since the build: searched exactly
        self._uncovered_vectors: np.ndarray | None = None
        live = to_row >= 0
        self._bitmap = np.packbits(live, bitorder="little")  # FAISS's IDSelectorBitmap: bit i of byte i >> 3
        self._selector = None if live.all() else faiss.IDSelectorBitmap(len(live), faiss.swig_ptr(self._bitmap))

    @classmethod
    def open(cls, reader: IndexReader, entry: dict[str, Any]) -> AnnIndex:
        index = read_faiss(reader.root / entry["index"])  # memory-mapped
        keys = pq.read_table(reader.root / entry["rows"], schema=ROWS_SCHEMA).column("key")
        at = pc.index_in(keys, value_set=reader.row_keys())  # a hash join: the reader's row of each ANN id, or null
        to_row = at.fill_null(-1).to_numpy().astype(np.int64)
        ann = cls(entry, index, to_row, len(reader))
        status = ann.status()
        if status["uncovered"] > 0.1 * max(1, len(reader)):
            log.warning("%s: the %s index of generation %d covers %d of %d live rows; the %d added since are searched "
                        "exactly (rebuild: ragless index build)", reader.root, ann.kind, entry["generation"],
                        status["covered"], len(reader), status["uncovered"])
        return ann

    def status(self) -> dict[str, Any]:
        """What the index covers in this generation: its rows still live, dead ones, and rows searched exactly."""
        return {"kind": self.kind, "built_on_generation": self.entry["generation"],
                "covered": int(self.covered.sum()), "dead": int((self.to_row < 0).sum()),
                "uncovered": len(self.uncovered)}

    def n_candidates(self, cfg: AnnSearchConfig, k: int) -> int:
        """How many rows FAISS proposes for a top-``k``: ``cfg.candidates`` (or the kind's default), at least 10 k."""
        return max(cfg.candidates or (1000 if self.kind == "ivf-pq" else 100), 10 * k)

    def _params(self, n: int, cfg: AnnSearchConfig):
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(cfg.ef_search, n)
        else:
            params = faiss.SearchParametersIVF()
            params.nprobe = cfg.nprobe
        if self._selector is not None:
            params.sel = self._selector
        return params

    def search(self, queries: np.ndarray, n: int, cfg: AnnSearchConfig | None = None) -> np.ndarray:
        """(B, n) the reader's rows FAISS proposes for queries (B, D), in its order (approximate scores for IVF-PQ),
        -1 where it has fewer; dead ANN ids are never proposed."""
        cfg = cfg or AnnSearchConfig()
        n = min(n, self.index.ntotal)
        if n == 0:
            return np.full((len(queries), 0), -1, np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        _, ids = self.index.search(queries, n, params=self._params(n, cfg))  # (B, n)
        return np.where(ids >= 0, self.to_row[np.clip(ids, 0, None)], -1)

    def uncovered_vectors(self, reader: IndexReader) -> np.ndarray:
        """(U, D) vectors of the uncovered rows, copied once."""
        if self._uncovered_vectors is None:
            self._uncovered_vectors = reader.vectors(self.uncovered)
        return self._uncovered_vectors


def ann_attention(reader: IndexReader, queries, k: int, *, scale: float, config: AnnSearchConfig | None = None,
                  query_terms=None, key_terms=None, alpha: float = 0.0):
    """Retrieval attention through the reader's ANN index: ``(indices, scores, log_z)`` as `retrieval_attention`
    returns them (and `fused_attention` with ``query_terms`` (B, V), ``key_terms`` (N, V) CSR and ``alpha``), but
    exact only over the candidates: see the module docstring. ``log_z`` is over what was scored, a lower bound.

    queries (B, D) float32 torch tensor; indices (B, min(k, N)) int64 rows of the reader, -1 past the rows found;
    scores (B, min(k, N)) float32 (scale * inner product [+ alpha * lexical]); log_z (B,) float32.
    """
    import torch

    from retrieve_generate_model.kernels import retrieval_attention
    from retrieve_generate_model.lexical import fused_attention

    ann, cfg = reader.ann, config or AnnSearchConfig()
    if ann is None:
        raise ValueError(f"{reader.root}: the reader has no ANN index")
    if (query_terms is None) != (key_terms is None):
        raise ValueError("give query_terms and key_terms together, or neither")
    B, width = len(queries), min(k, len(reader))
    q = queries.float()  # (B, D)
    proposed = ann.search(q.numpy(), ann.n_candidates(cfg, k), cfg)  # (B, C) rows, -1 pads
    lexical = (query_terms @ key_terms.T).tocsr() if query_terms is not None else None  # (B, N) sparse
    uncovered = torch.from_numpy(ann.uncovered)
    if len(uncovered):  # rows added after the build: exact over all of them, normalizer included
        U = torch.from_numpy(ann.uncovered_vectors(reader))  # (U, D)
        if lexical is not None:
            u_rows, u_scores, u_log_z = fused_attention(q, query_terms, U, key_terms[ann.uncovered], width,
                                                        scale=scale, alpha=alpha)
        else:
            u_rows, u_scores, u_log_z = retrieval_attention(q, U, width, scale=scale)
        u_rows = torch.where(u_rows >= 0, uncovered[u_rows.clamp(min=0)], u_rows)  # (B, width) the reader's rows
    out_rows = torch.full((B, width), -1, dtype=torch.int64)
    out_scores = torch.full((B, width), float("-inf"))
    out_log_z = torch.full((B,), float("-inf"))
    for b in range(B):
        cand = proposed[b][proposed[b] >= 0]
        if lexical is not None:
            start, end = lexical.indptr[b], lexical.indptr[b + 1]
            shared, lex = lexical.indices[start:end].astype(np.int64), lexical.data[start:end] * alpha
            keep = (lex > 0) & ann.covered[shared]  # uncovered keys sharing a word were scored above
            shared, lex = shared[keep], lex[keep]
            cand = np.union1d(cand, shared)  # sorted, unique
        else:
            cand = np.unique(cand)  # sorted: among equal scores the stable sort below keeps the lower row first
        V = torch.from_numpy(reader.vectors(cand))  # (C, D) from the mapped shards
        scores = (q[b: b + 1] @ V.T)[0] * scale  # (C,) as the exact path computes them
        if lexical is not None and len(shared):
            bonus = torch.zeros(len(cand))
            bonus[torch.from_numpy(np.searchsorted(cand, shared))] = torch.from_numpy(lex.astype(np.float32))
            scores = scores + bonus
        rows = torch.from_numpy(cand)
        log_z = torch.logsumexp(scores, 0) if len(cand) else torch.tensor(float("-inf"))
        if len(uncovered):
            found = u_rows[b] >= 0
            rows, scores = torch.cat([rows, u_rows[b][found]]), torch.cat([scores, u_scores[b][found]])
            order = torch.argsort(rows)  # disjoint sets: back into row order for the tie rule
            rows, scores = rows[order], scores[order]
            log_z = torch.logaddexp(log_z, u_log_z[b])
        top = torch.sort(scores, descending=True, stable=True).indices[:width]
        out_rows[b, : len(top)], out_scores[b, : len(top)], out_log_z[b] = rows[top], scores[top], log_z
    return out_rows, out_scores, out_log_z

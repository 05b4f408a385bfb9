"""Large indexes: exact (flat) search against IVF-Flat, IVF-PQ and HNSW on a synthetic memory of 10^6 vectors.

The memory is written through the real store (`IndexWriter`: shards of 65536 segments) and each ANN index is built by
`ragless.ann.build_ann`, as `ragless index build` does, then searched as `Asker.retrieve` does (`ann_attention`:
FAISS candidates, exact rerank from the mapped shard vectors). Reported per kind: build time (train, add), size on
disk, resident memory of a fresh process that opens the index and answers questions (memory-mapped, and with the ANN
index read into the heap instead; split into private memory and mapped file pages, which the page cache shares
between replicas), recall@1 and @10 against exact search of the ANN's own ranking, of its candidates and of the
final answers after the rerank, and latency p50/p95 for one question and for batches of 32.

The data: d=384 float32 unit vectors from a Gaussian mixture like sentence embeddings (one cluster per 1000 vectors,
lognormal cluster sizes, a shared direction so that unrelated vectors have cosine ~0.1, spread within a cluster
cos ~0.7-0.9 to its centre); questions are stored vectors plus noise (a paraphrase of a segment: cosine ~0.9 to it),
seeded.

    python bench/index_scale.py                     # 10^6 vectors: bench/results/index_scale.json and BENCHMARKS.md
    python bench/index_scale.py --n 100000 --no-md  # a quick look
"""

from __future__ import annotations

import os

# before numpy, torch and faiss load their thread pools: spinning OpenMP threads on a shared machine made IVF-PQ
# training ~10x slower (ragless/__init__.py sets the same, but torch is imported first here)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

# the repository root first, and not bench/ itself: bench/kernels.py would shadow the `kernels` package that
# transformers imports
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.common import markdown_table, save_results, update_benchmarks_md  # noqa: E402

COMMAND = "python bench/index_scale.py"
DIM = 384
SHARD = 65536  # segments per shard (the store's compaction target is 16384; fewer files here, same layout)
SEGS_PER_DOC = 64
SCALE = 20.0  # the retriever's inverse temperature (AskConfig.scale)


# -- data -------------------------------------------------------------------------------------------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_blocks(n: int, seed: int, block: int = SHARD):
    """(n, DIM) unit vectors in blocks: a Gaussian mixture with one cluster per 1000 vectors (see the docstring)."""
    rng = np.random.default_rng(seed)
    clusters = max(1, n // 1000)
    shared = _unit(rng.standard_normal((1, DIM)))
    centers = _unit(0.35 * shared + _unit(rng.standard_normal((clusters, DIM))))
    weights = rng.lognormal(0.0, 1.0, clusters)
    weights /= weights.sum()
    spread = rng.uniform(0.5, 1.0, clusters).astype(np.float32)  # noise norm: cos to the centre 0.7-0.9
    for start in range(0, n, block):
        m = min(block, n - start)
        which = rng.choice(clusters, size=m, p=weights)
        noise = rng.standard_normal((m, DIM)).astype(np.float32) / np.sqrt(DIM)
        yield _unit(centers[which] + spread[which, None] * noise)


def write_index(root: Path, n: int, seed: int, query_rows: np.ndarray) -> np.ndarray:
    """Write the memory through `IndexWriter` (one shard and commit per block); returns the stored vectors of
    ``query_rows`` (sorted global rows)."""
    from preprocess_model.document import Document, Segment
    from ragless.store import IndexWriter

    components = {"segmenter": {"name": "synthetic", "config": {}},
                  "encoder": {"name": "synthetic", "config": {"seed": seed}}}
    picked = []
    with IndexWriter(root, components, DIM) as w:
        for b, vectors in enumerate(synthetic_blocks(n, seed)):
            start = b * SHARD
            docs, segs = [], []
            for d0 in range(0, len(vectors), SEGS_PER_DOC):
                doc_id = f"d{start + d0}"
                m = min(SEGS_PER_DOC, len(vectors) - d0)
                text = "\n".join(f"s{start + d0 + i:07d}" for i in range(m))
                docs.append(Document(doc_id=doc_id, source=f"/synthetic/{doc_id}", text=text, sha256=doc_id,
                                     title=doc_id))
                segs.append([Segment(f"{doc_id}-{i}", doc_id, i, 9 * i, 9 * i + 8, f"s{start + d0 + i:07d}")
                             for i in range(m)])
            w.add_shard(docs, segs, vectors)
            w.commit()
            inside = query_rows[(query_rows >= start) & (query_rows < start + len(vectors))]
            picked.append(vectors[inside - start])
    return np.concatenate(picked)


def make_queries(stored: np.ndarray, seed: int) -> np.ndarray:
    """Paraphrases of stored segments: each vector plus noise (cosine ~0.9 to it)."""
    rng = np.random.default_rng(seed + 1)
    return _unit(stored + 0.5 * rng.standard_normal(stored.shape).astype(np.float32) / np.sqrt(DIM))


# -- measuring --------------------------------------------------------------------------------------------------------

def _percentiles(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": round(1000 * float(np.percentile(seconds, 50)), 2),
            "p95_ms": round(1000 * float(np.percentile(seconds, 95)), 2)}


def latency(search, queries: np.ndarray, singles: int, batches: int) -> dict[str, dict[str, float]]:
    """p50/p95 of ``search(Q)`` for ``singles`` single questions and ``batches`` batches of 32 (after one warm-up)."""
    search(queries[:1])
    one = []
    for i in range(singles):
        t0 = time.perf_counter()
        search(queries[i: i + 1])
        one.append(time.perf_counter() - t0)
    many = []
    for b in range(batches):
        q = queries[(32 * b) % len(queries):][:32]
        t0 = time.perf_counter()
        search(q)
        many.append(time.perf_counter() - t0)
    return {"B=1": _percentiles(one), "B=32": _percentiles(many)}


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over questions of |found[:, :k] ∩ truth[:, :k]| / k (found may be wider: candidates)."""
    return round(float(np.mean([len(set(f.tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)])), 4)


def rss_child(root: Path, mode: str, queries_file: Path, questions: int) -> dict:
    """A fresh process opens the index (mode: exact, ann-mmap or ann-heap) and answers ``questions`` one by one; its
    memory from /proc/self/status."""
    cmd = [sys.executable, __file__, "--child", mode, "--index", str(root), "--queries-file", str(queries_file),
           "--questions", str(questions)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _status_mb() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def child(args) -> None:
    import faiss
    import torch

    from ragless.ann import ann_attention
    from ragless.store import IndexReader
    from retrieve_generate_model.kernels import retrieval_attention

    queries = np.load(args.queries_file)[: args.questions]
    base = _status_mb()
    t0 = time.perf_counter()
    reader = IndexReader(args.index, ann=args.child != "exact")
    if args.child == "ann-heap":  # the same ANN index read into this process's heap instead of mapped
        reader.ann.index = faiss.read_index(str(reader.root / reader.manifest["ann"]["index"]))
    opened = _status_mb()
    open_s = time.perf_counter() - t0
    for q in queries:
        q = torch.from_numpy(q[None])
        if args.child == "exact":
            retrieval_attention(q, torch.from_numpy(reader.memory()), 10, scale=SCALE)
        else:
            ann_attention(reader, q, 10, scale=SCALE)
    print(json.dumps({"mode": args.child, "open_s": round(open_s, 2), "after_imports": base, "opened": opened,
                      "answered": _status_mb()}))


# -- the benchmark ----------------------------------------------------------------------------------------------------

def others_running() -> list[str]:
    """Other heavy jobs on the machine while this ran (training runs), for the record."""
    try:
        out = subprocess.run(["pgrep", "-af", "ragless (train|eval|ingest)|bench/|pytest"], capture_output=True,
                             text=True).stdout
    except OSError:
        return []
    return [line.split(" ", 1)[1][:120] for line in out.splitlines() if "index_scale" not in line]


def run(args) -> dict:
    import torch

    from ragless.ann import AnnConfig, AnnSearchConfig, ann_attention, build_ann
    from ragless.store import IndexReader
    from retrieve_generate_model.kernels import retrieval_attention

    work = Path(args.workdir or tempfile.mkdtemp(prefix="index-scale-"))
    root = work / "index"
    if root.exists():
        shutil.rmtree(root)
    report: dict = {"n": args.n, "dim": DIM, "questions": args.questions, "seed": args.seed,
                    "others_running_at_start": others_running(), "load_average_at_start": os.getloadavg()}
    rng = np.random.default_rng(args.seed + 2)
    query_rows = np.sort(rng.choice(args.n, size=args.questions, replace=False))
    t0 = time.perf_counter()
    queries = make_queries(write_index(root, args.n, args.seed, query_rows), args.seed)
    rng.shuffle(queries)
    report["write_s"] = round(time.perf_counter() - t0, 1)
    queries_file = work / "queries.npy"
    np.save(queries_file, queries)
    print(f"wrote {args.n} vectors in {report['write_s']}s", file=sys.stderr)

    flat = IndexReader(root, ann=False)
    memory = torch.from_numpy(flat.memory())
    Q = torch.from_numpy(queries)
    t0 = time.perf_counter()
    truth, _, _ = retrieval_attention(Q, memory, 10, scale=SCALE)  # exact search: what every kind is held to
    truth = truth.numpy()
    report["flat"] = {
        "bytes": sum((root / "vectors" / f"{s['id']}.faiss").stat().st_size for s in flat.manifest["shards"]),
        "exact_all_questions_s": round(time.perf_counter() - t0, 2),
        "latency": latency(lambda q: retrieval_attention(torch.from_numpy(q), memory, 10, scale=SCALE), queries,
                           args.flat_singles, args.flat_batches),
        "memory": rss_child(root, "exact", queries_file, args.rss_questions),
    }
    print(f"flat: {report['flat']['latency']}", file=sys.stderr)
    memory = flat = None  # the exact path's copy of the memory is not kept while the ANN indexes are built

    builds = {"ivf-flat": AnnConfig(kind="ivf-flat", nlist=args.nlist),
              "ivf-pq": AnnConfig(kind="ivf-pq", nlist=args.nlist, m=args.pq_m, nbits=8),
              "hnsw": AnnConfig(kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)}
    sweeps = {"ivf-flat": [AnnSearchConfig(nprobe=p) for p in (8, 32, 128)],
              "ivf-pq": [AnnSearchConfig(nprobe=p, candidates=c) for p, c in ((32, 100), (32, 1000), (128, 1000))],
              "hnsw": [AnnSearchConfig(ef_search=e) for e in (128, 256, 512)]}
    report["kinds"] = {}
    for kind in args.kinds:
        t0 = time.perf_counter()
        entry = build_ann(root, builds[kind], log_fn=lambda msg: print(msg, file=sys.stderr) if "added" not in msg
                          else None)
        build_s = time.perf_counter() - t0
        reader = IndexReader(root)
        result = {"build_s": round(build_s, 1), "train_s": entry["train_s"], "add_s": entry["add_s"],
                  "bytes": entry["bytes"], "params": entry["params"], "searches": []}
        for cfg in sweeps[kind]:
            n_cand = reader.ann.n_candidates(cfg, 10)
            proposed = np.concatenate([reader.ann.search(queries[i: i + 64], n_cand, cfg)
                                       for i in range(0, len(queries), 64)])
            rows = torch.cat([ann_attention(reader, Q[i: i + 64], 10, scale=SCALE, config=cfg)[0]
                              for i in range(0, len(queries), 64)]).numpy()
            search = {
                "config": {"candidates": n_cand, "nprobe": cfg.nprobe, "ef_search": cfg.ef_search},
                "ann_recall@1": recall(proposed[:, :1], truth, 1), "ann_recall@10": recall(proposed[:, :10], truth, 10),
                "candidates_recall@10": recall(proposed, truth, 10),
                "final_recall@1": recall(rows[:, :1], truth, 1), "final_recall@10": recall(rows, truth, 10),
                "identical_top10": round(float(np.mean([list(r) == list(t) for r, t in zip(rows, truth)])), 4),
                "latency": latency(lambda q, r=reader, c=cfg: ann_attention(r, torch.from_numpy(q), 10, scale=SCALE,
                                                                            config=c), queries, args.singles,
                                   args.batches),
                "faiss_only_latency": latency(lambda q, r=reader, c=cfg, n=n_cand: r.ann.search(q, n, c), queries,
                                              args.singles, args.batches),
            }
            result["searches"].append(search)
            print(f"{kind} {search['config']}: final recall@10 {search['final_recall@10']}, "
                  f"{search['latency']}", file=sys.stderr)
        reader = None  # unmapped before the memory is measured in fresh processes
        result["memory"] = {"mmap": rss_child(root, "ann-mmap", queries_file, args.rss_questions),
                            "heap": rss_child(root, "ann-heap", queries_file, args.rss_questions)}
        report["kinds"][kind] = result
    report["load_average_at_end"] = os.getloadavg()
    if not args.keep:
        shutil.rmtree(work)
    return report


def _mib(b: int) -> str:
    return f"{b / 2**20:,.0f} MiB"


def markdown(report: dict, saved: dict) -> str:
    m = saved["machine"]
    shared = report["others_running_at_start"]
    load = report["load_average_at_start"][0], report["load_average_at_end"][0]
    command = saved["command"]
    lines = [
        "## Large indexes: flat against IVF-Flat, IVF-PQ and HNSW (synthetic memory)",
        "",
        f"`{command}` (commit {saved['commit']}, "
        f"{saved['measured_at']}): {report['n']:,} vectors of d={report['dim']} (a Gaussian mixture, unit norm) "
        f"written through the store, {report['questions']} questions near stored vectors; machine: {m['cpu']}, "
        f"{m['cores']} cores, {m['memory_gb']} GB" + (
            f", **shared with other jobs** ({f'{len(shared)} seen at the start; ' if shared else ''}load average "
            f"{load[0]:.1f} at the start, "
            f"{load[1]:.1f} at the end, on {m['cores']} cores): times are pessimistic and noisy"
            if shared or load[0] > 0.5 * (m["cores"] or 1) else "") + ".",
        "",
        "Recall is against exact search (the default path); *ANN* is FAISS's own top-k, *candidates* whether the "
        "true top 10 are among the candidates it proposes, *final* the answer after the exact rerank (equal to exact "
        "search wherever the candidates hold the true top-k). Latency of `ann_attention` (candidates + rerank) per "
        "call, one question or a batch of 32.",
        "",
    ]
    flat = report["flat"]
    rows = [["flat (exact)", "—", _mib(flat["bytes"]), "", "1", "1", "1", "1",
             f"{flat['latency']['B=1']['p50_ms']:.1f} / {flat['latency']['B=1']['p95_ms']:.1f}",
             f"{flat['latency']['B=32']['p50_ms']:.0f} / {flat['latency']['B=32']['p95_ms']:.0f}"]]
    for kind, r in report["kinds"].items():
        build = f"{r['build_s']:.0f} s (train {r['train_s']:.0f})"
        for s in r["searches"]:
            c = s["config"]
            knob = f"ef {c['ef_search']}" if kind == "hnsw" else f"nprobe {c['nprobe']}"
            rows.append([f"{kind}, {knob}, {c['candidates']} candidates", build, _mib(r["bytes"]),
                         f"{s['ann_recall@1']:.3f} / {s['ann_recall@10']:.3f}",
                         f"{s['candidates_recall@10']:.3f}", f"{s['final_recall@1']:.3f}",
                         f"{s['final_recall@10']:.3f}", f"{s['identical_top10']:.3f}",
                         f"{s['latency']['B=1']['p50_ms']:.1f} / {s['latency']['B=1']['p95_ms']:.1f}",
                         f"{s['latency']['B=32']['p50_ms']:.0f} / {s['latency']['B=32']['p95_ms']:.0f}"])
            build = ""
    lines.append(markdown_table(
        ["index, search", "build", "on disk", "ANN recall@1 / @10", "candidates recall@10", "final recall@1",
         "final recall@10", "final top 10 identical", "latency B=1 p50 / p95 ms", "B=32 p50 / p95 ms"], rows))
    lines += ["", f"Memory of a fresh process that opens the index and answers {report.get('rss_questions', '')} "
              "questions one at a time (MiB). *Private* is its own heap: what each replica costs. *Mapped* is the file "
              "pages it has touched: the page cache's, shared by every replica that maps the same files, and "
              "overstated for the rerank (Linux maps 64 KiB around each touched 1.5 KiB vector: the vectors of the "
              "candidates of 50 questions map most of the shards).", ""]
    mem_rows = []

    def mem(label: str, x: dict) -> list:
        base, end = x["after_imports"], x["answered"]
        return [label, f"{end['RssAnon'] - base['RssAnon']:,.0f}", f"{end['RssFile'] - base['RssFile']:,.0f}",
                f"{x['answered']['VmHWM']:,.0f}", f"{x['open_s']:.1f} s"]

    mem_rows.append(mem("flat: the memory loaded (exact path)", flat["memory"]))
    for kind, r in report["kinds"].items():
        mem_rows.append(mem(f"{kind}: memory-mapped", r["memory"]["mmap"]))
        mem_rows.append(mem(f"{kind}: read into the heap", r["memory"]["heap"]))
    lines.append(markdown_table(["process", "private MiB (over imports)", "mapped MiB", "peak RSS MiB", "open"],
                                mem_rows))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10**6, help="vectors in the memory (default: 10^6)")
    ap.add_argument("--questions", type=int, default=256, help="questions for recall (default: 256)")
    ap.add_argument("--singles", type=int, default=50, help="single questions timed (default: 50)")
    ap.add_argument("--batches", type=int, default=8, help="batches of 32 timed (default: 8)")
    ap.add_argument("--flat-singles", type=int, default=10, help="single questions timed by exact search (default: 10)")
    ap.add_argument("--flat-batches", type=int, default=3, help="batches of 32 timed by exact search (default: 3)")
    ap.add_argument("--rss-questions", type=int, default=50, help="questions the memory-measuring process answers")
    ap.add_argument("--kinds", default="ivf-flat,ivf-pq,hnsw", type=lambda s: s.split(","))
    ap.add_argument("--nlist", type=int, default=0, help="IVF lists (default 0: the power of two nearest sqrt(N))")
    ap.add_argument("--pq-m", type=int, default=48, help="IVF-PQ sub-quantizers (default: 48)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="where the index is written (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the index afterwards")
    ap.add_argument("--no-md", action="store_true", help="do not write BENCHMARKS.md")
    ap.add_argument("--out", default="index_scale", help="results name under bench/results/ (default: index_scale)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--index", help=argparse.SUPPRESS)
    ap.add_argument("--queries-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    t0 = time.perf_counter()
    report = run(args)
    report["rss_questions"] = args.rss_questions
    report["total_s"] = round(time.perf_counter() - t0, 1)
    path = save_results(args.out, {"command": COMMAND + ("" if args.n == 10**6 else f" --n {args.n}"), **report})
    print(f"results: {path} ({report['total_s']}s)", file=sys.stderr)
    if not args.no_md:
        update_benchmarks_md("index_scale", markdown(report, json.loads(path.read_text())))


if __name__ == "__main__":
    main()

"""The Triton kernels of `retrieve_generate_model/kernels` against plain torch (and FAISS), with the device's bandwidth.

Retrieval attention (top-k + log-sum-exp over N keys, d = 384) is timed as:

- ``kernel``: the Triton kernel (one pass over K, no (B, N) tensor);
- ``reference``: the pure-torch streamed reference (blocks of 65,536 keys, a top-k merge per block);
- ``unfused``: plain torch, ``Q @ K.T`` in full, then ``logsumexp`` and ``topk`` over the (B, N) scores (skipped,
  and said so, where that matrix does not fit in memory);
- ``faiss``: FAISS exact flat inner-product search on the GPU (top-k only, no log-sum-exp), where a GPU build of
  faiss is importable.

Each kernel result is checked against the reference (the fraction of queries with exactly the same top-k indices,
the largest score and log-sum-exp differences). The device's copy bandwidth is measured (bytes read + written by a
large tensor copy per second) and each retrieval row prints the bytes of K read per second against it: the kernel
reads K once per tile of queries, so at small B it should approach that bandwidth.

Source-biased attention (the generator over its retrieved sources' tokens, SmolLM2-like heads: H = 9, D = 64) is
timed forward and forward + backward against plain torch attention with the bias added to materialized logits, and
its outputs and gradients checked against the float32 reference; one row times its causal form (self-attention over
a prompt that holds the sources, M == N, as `retrieve_generate_model/biased_attention.py` runs it in training).

    python bench/kernels.py              # CUDA: N = 1e5, 1e6, 1e7; B = 1, 32, 256; bf16 and fp16 (< 8 min on an H200)
    python bench/kernels.py --quick      # a smaller set (CUDA: N up to 1e6, bf16; CPU: N = 1e5)
    python bench/kernels.py --out NAME   # write bench/results/NAME.json instead of kernels-<device>.json

Without CUDA it times the pure-torch reference and the unfused torch on the CPU at small N (1e5, 1e6 with B = 1, 32;
float32) and says that the GPU figures are still to be measured. Needs torch and triton only (faiss optional).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import torch

# the repository root first, and not bench/ itself: bench/kernels.py would shadow the `kernels` package that
# transformers imports
sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.common import markdown_table, save_results, update_benchmarks_md  # noqa: E402
from retrieve_generate_model.kernels import retrieval_attention, source_biased_attention  # noqa: E402
from retrieve_generate_model.kernels.retrieval_attention import retrieval_attention_ref  # noqa: E402
from retrieve_generate_model.kernels.source_biased_attention import (  # noqa: E402
    key_bias,
    source_biased_attention_ref,
)

D_MODEL = 384  # MiniLM's embedding size: the segment memory's width
TOP_K = 10
SCALE = 20.0  # an inverse temperature of the order the retriever uses on unit vectors


def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device: torch.device, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds, the device synchronized around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(device: torch.device) -> float:
    """Bytes read + written per second by a large tensor copy: the practical ceiling for a pass over K."""
    size = 2 * 2**30 if device.type == "cuda" else 256 * 2**20
    src = torch.empty(size, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    seconds = timeit(lambda: dst.copy_(src), device, repeat=10 if device.type == "cuda" else 3)
    return 2 * size / seconds


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def unfused_retrieval(Q, K, k, scale):
    """Plain torch: the whole (B, N) score matrix, then logsumexp and topk over it."""
    s = (Q @ K.T).float() * scale  # (B, N)
    log_z = torch.logsumexp(s, dim=1)
    scores, idx = torch.topk(s, min(k, K.shape[0]), dim=1)
    return idx, scores, log_z


def faiss_search():
    """FAISS's exact GPU search on torch tensors, or None (with the reason) where no GPU build is importable."""
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401  (lets knn_gpu take torch tensors)

        res = faiss.StandardGpuResources()
    except Exception as e:  # noqa: BLE001 - optional: any failure means "not available"
        return None, f"faiss GPU not available ({type(e).__name__}: {e})"

    def search(Q, K, k):
        return faiss.knn_gpu(res, Q, K, k, metric=faiss.METRIC_INNER_PRODUCT)

    return search, None


def agreement(got, ref) -> dict:
    """How a result compares with the reference: same top-k indices per query, largest score/log_z differences."""
    idx, scores, log_z = got
    ref_idx, ref_scores, ref_log_z = ref
    same = (idx == ref_idx).all(dim=1).float().mean().item()
    same_set = (torch.sort(idx, 1).values == torch.sort(ref_idx, 1).values).all(dim=1).float().mean().item()
    out = {"same_indices": same, "same_index_sets": same_set,
           "max_score_diff": (scores.float() - ref_scores).abs().max().item()}
    if log_z is not None:
        out["max_log_z_diff"] = (log_z.float() - ref_log_z).abs().max().item()
    return out


def bench_retrieval(device, sizes, batches, dtypes, bandwidth, deadline, faiss_fn, use_kernel) -> list[dict]:
    rows = []
    g = torch.Generator(device=device).manual_seed(0)
    for dtype in dtypes:
        for N in sizes:
            name = str(dtype).removeprefix("torch.")
            key_bytes = N * D_MODEL * torch.finfo(dtype).bits // 8
            if time.monotonic() > deadline:
                rows.append({"dtype": name, "N": N, "skipped": "time budget spent"})
                continue
            if key_bytes * 1.5 > free_bytes(device):
                rows.append({"dtype": name, "N": N, "skipped": f"K ({key_bytes / 2**30:.1f} GiB) does not fit"})
                continue
            K = torch.nn.functional.normalize(torch.randn(N, D_MODEL, device=device, generator=g), dim=1).to(dtype)
            for B in batches:
                if time.monotonic() > deadline:
                    rows.append({"dtype": name, "N": N, "B": B, "skipped": "time budget spent"})
                    continue
                Q = torch.nn.functional.normalize(torch.randn(B, D_MODEL, device=device, generator=g), dim=1)
                row = retrieval_row(Q.to(dtype), K, device, bandwidth, faiss_fn, use_kernel)
                rows.append(row)
                print(retrieval_line(row), flush=True)
            K = None  # free it before the next size
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def retrieval_row(Q, K, device, bandwidth, faiss_fn, use_kernel) -> dict:
    """Time and check one (B, N, dtype): the kernel (CUDA), the reference, the unfused torch, FAISS (if there)."""
    B, N = Q.shape[0], K.shape[0]
    key_bytes = K.numel() * K.element_size()
    row = {"dtype": str(K.dtype).removeprefix("torch."), "N": N, "B": B, "d": D_MODEL, "k": TOP_K,
           "key_bytes": key_bytes}
    sync(device)
    start = time.perf_counter()
    ref = retrieval_attention_ref(Q, K, TOP_K, scale=SCALE)
    sync(device)
    row["reference_s"] = time.perf_counter() - start  # one run (it is also the check)
    if use_kernel:
        def kernel():
            return retrieval_attention(Q, K, TOP_K, scale=SCALE, backend="triton")

        row["kernel_check"] = agreement(kernel(), ref)
        row["kernel_s"] = timeit(kernel, device)
        row["kernel_key_bytes_per_s"] = key_bytes / row["kernel_s"]
        row["kernel_fraction_of_copy_bandwidth"] = row["kernel_key_bytes_per_s"] / bandwidth
    else:
        row["reference_s"] = timeit(lambda: retrieval_attention_ref(Q, K, TOP_K, scale=SCALE), device, repeat=3,
                                    warmup=0)
        row["reference_key_bytes_per_s"] = key_bytes / row["reference_s"]
        row["reference_fraction_of_copy_bandwidth"] = row["reference_key_bytes_per_s"] / bandwidth
    need = B * N * (K.element_size() + 8)  # the (B, N) scores in K's dtype, in float32, and exp's temporary
    if need * 1.3 > free_bytes(device):
        row["unfused_skipped"] = f"the (B, N) scores need {need / 2**30:.1f} GiB: do not fit"
    else:
        row["unfused_check"] = agreement(unfused_retrieval(Q, K, TOP_K, SCALE), ref)
        row["unfused_s"] = timeit(lambda: unfused_retrieval(Q, K, TOP_K, SCALE), device,
                                  repeat=5 if device.type == "cuda" else 3)
    if faiss_fn is not None:
        try:
            scores, idx = faiss_fn(Q, K, TOP_K)
            row["faiss_check"] = agreement((idx, scores * SCALE, None), ref)
            row["faiss_s"] = timeit(lambda: faiss_fn(Q, K, TOP_K), device)
        except Exception as e:  # noqa: BLE001 - optional comparison
            row["faiss_error"] = f"{type(e).__name__}: {e}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def ms(seconds) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.2f} ms"


def retrieval_line(row: dict) -> str:
    parts = [f"retrieval {row['dtype']:>8} N={row['N']:>9,} B={row['B']:>3}:"]
    if "kernel_s" in row:
        c = row["kernel_check"]
        parts.append(f"kernel {ms(row['kernel_s'])} ({row['kernel_key_bytes_per_s'] / 1e9:.0f} GB/s of K, "
                     f"{row['kernel_fraction_of_copy_bandwidth']:.0%} of copy bw; same top-k "
                     f"{c['same_indices']:.0%}, |d score| {c['max_score_diff']:.1e}, |d log_z| "
                     f"{c['max_log_z_diff']:.1e})")
    parts.append(f"reference {ms(row['reference_s'])}")
    if "reference_key_bytes_per_s" in row:
        parts.append(f"({row['reference_key_bytes_per_s'] / 1e9:.1f} GB/s of K)")
    parts.append(f"unfused {ms(row['unfused_s'])}" if "unfused_s" in row else f"unfused: {row['unfused_skipped']}")
    if "faiss_s" in row:
        parts.append(f"faiss {ms(row['faiss_s'])} (same top-k sets {row['faiss_check']['same_index_sets']:.0%})")
    return " ".join(parts)


def plain_attention(q, k, v, source_ids, source_bias, causal=False):
    """Plain torch at the inputs' dtype: the (B, H, M, N) logits materialized, the per-key bias added."""
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + key_bias(source_ids, source_bias).to(q.dtype)[
        :, None, None, :]
    if causal:
        future = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).triu(1)
        logits = logits.masked_fill(future, float("-inf"))
    return torch.softmax(logits, dim=-1) @ v


def bench_source_biased(device, shapes, dtypes, deadline, use_kernel) -> list[dict]:
    rows = []
    for dtype in dtypes:
        for shape in shapes:
            if time.monotonic() > deadline:
                rows.append({"dtype": str(dtype), "shape": list(shape), "skipped": "time budget spent"})
                continue
            row = source_biased_row(dtype, shape, device, use_kernel)
            rows.append(row)
            print(source_line(row), flush=True)
    return rows


def source_biased_row(dtype, shape, device, use_kernel) -> dict:
    """Time forward and forward + backward of the kernel (CUDA) and plain torch; errors against the float32 ref.
    ``shape``: (B, H, M, N, D, S), or (B, H, N, N, D, S, True) for the causal form."""
    B, H, M, N, D, S, *rest = shape
    causal = bool(rest and rest[0])
    g = torch.Generator(device=device).manual_seed(1)
    q, k, v = (torch.randn(B, H, n, D, device=device, generator=g).to(dtype).requires_grad_() for n in (M, N, N))
    source_ids = torch.randint(-1, S, (B, N), device=device, generator=g)
    source_bias = torch.randn(B, S, device=device, generator=g).requires_grad_()
    d_out = torch.randn(B, H, M, D, device=device, generator=g).to(dtype)
    inputs = (q, k, v, source_ids, source_bias)
    row = {"dtype": str(dtype).removeprefix("torch."), "B": B, "H": H, "M": M, "N": N, "D": D, "S": S,
           "causal": causal}

    def fwd_bwd(fn):
        out = fn(*inputs)
        return (out, *torch.autograd.grad(out, (q, k, v, source_bias), d_out))

    ref = fwd_bwd(lambda *a: source_biased_attention_ref(*a, causal=causal))  # float32 inside
    impls = {"plain": lambda *a: plain_attention(*a, causal=causal)}
    if use_kernel:
        impls["kernel"] = lambda *a: source_biased_attention(*a, causal=causal, backend="triton")
    for name, fn in impls.items():
        got = fwd_bwd(fn)
        row[f"{name}_max_error"] = {n: (a.float() - b.float()).abs().max().item()
                                    for n, a, b in zip(("out", "dq", "dk", "dv", "d_bias"), got, ref)}
        with torch.no_grad():
            row[f"{name}_forward_s"] = timeit(lambda fn=fn: fn(*inputs), device)
        row[f"{name}_forward_backward_s"] = timeit(lambda fn=fn: fwd_bwd(fn), device)
    return row


def source_line(row: dict) -> str:
    head = (f"source-biased {row['dtype']:>8} B={row['B']} H={row['H']} M={row['M']} N={row['N']} D={row['D']} "
            f"S={row['S']}{' causal' if row.get('causal') else ''}:")
    parts = [head]
    for name in ("kernel", "plain"):
        if f"{name}_forward_s" in row:
            err = max(row[f"{name}_max_error"].values())
            parts.append(f"{name} fwd {ms(row[f'{name}_forward_s'])}, fwd+bwd {ms(row[f'{name}_forward_backward_s'])}"
                         f" (max |error| vs float32 ref {err:.1e})")
    return " ".join(parts)


def markdown(report: dict) -> str:
    rows = []
    for r in report["retrieval"]:
        if "skipped" in r:
            continue
        rows.append([r["dtype"], f"{r['N']:,}", r["B"], ms(r.get("kernel_s")),
                     f"{r['kernel_fraction_of_copy_bandwidth']:.0%}" if "kernel_s" in r else "",
                     ms(r["reference_s"]), ms(r.get("unfused_s")) or "does not fit", ms(r.get("faiss_s"))])
    table = markdown_table(["keys", "N", "B", "kernel", "of copy bw", "reference", "unfused torch", "faiss"], rows)
    return (f"### Retrieval attention kernels ({report['device']})\n\nd = {D_MODEL}, k = {TOP_K}; copy bandwidth "
            f"{report['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s. `python bench/kernels.py`\n\n{table}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smaller set of sizes")
    ap.add_argument("--out", help="results name under bench/results (default: kernels-<device>)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new sizes after this many seconds")
    ap.add_argument("--update-md", action="store_true", help="also write the table into BENCHMARKS.md")
    args = ap.parse_args()

    started = time.monotonic()
    deadline = started + args.budget_s
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    use_kernel = cuda  # on CPU the kernels only run in Triton's interpreter: correctness tests, not timing
    if cuda:
        sizes = [10**5, 10**6] if args.quick else [10**5, 10**6, 10**7]
        batches = [1, 32, 256]
        dtypes = [torch.bfloat16] if args.quick else [torch.bfloat16, torch.float16]
        shapes = [(8, 9, 512, 2560, 64, 10), (8, 9, 1024, 1024, 64, 4, True)]
        shapes += [] if args.quick else [(4, 9, 1024, 10240, 64, 40)]
    else:
        sizes = [10**5] if args.quick else [10**5, 10**6]
        batches = [1, 32]
        dtypes = [torch.float32]  # CPU matmuls in 16 bits are slow and not what the CPU path runs
        shapes = [(2, 9, 128, 1024, 64, 10), (1, 9, 512, 512, 64, 4, True)]
    bandwidth = copy_bandwidth(device)
    print(f"device: {device_slug(device)}; copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + written)", flush=True)
    faiss_fn, faiss_note = faiss_search() if cuda else (None, "faiss GPU search is a CUDA-only comparison")
    if faiss_note:
        print(faiss_note)
    if not cuda:
        print("no CUDA device: timing the pure-torch reference and the unfused torch on CPU; "
              "the Triton kernels' GPU figures are still to be measured (run this script on a CUDA machine)")

    retrieval = bench_retrieval(device, sizes, batches, dtypes, bandwidth, deadline, faiss_fn, use_kernel)
    source_biased = bench_source_biased(device, shapes, dtypes, deadline, use_kernel)
    for row in retrieval + source_biased:
        if "skipped" in row:
            print("skipped:", row)

    report = {
        "command": "python bench/kernels.py" + (" --quick" if args.quick else ""),
        "device": device_slug(device),
        "kernels_timed": use_kernel,
        "note": None if use_kernel else "CPU only: reference and unfused torch timed; GPU figures still to be measured",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "copy_bandwidth_bytes_per_s": bandwidth,
        "faiss": faiss_note or "faiss GPU flat search",
        "retrieval": retrieval,
        "source_biased_attention": source_biased,
        "wall_s": round(time.monotonic() - started, 1),
    }
    path = save_results(args.out or f"kernels-{device_slug(device)}", report)
    print(f"wrote {path} in {report['wall_s']:.0f} s")
    if args.update_md:
        update_benchmarks_md(f"kernels-{device_slug(device)}", markdown(report))


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


if __name__ == "__main__":
    main()

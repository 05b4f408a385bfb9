"""Source-biased attention as Triton kernels, forward and backward (FlashAttention-2 style, with a per-source bias).

The contract is `source_biased_attention_ref`'s (`source_biased_attention.py`, the pure-torch reference beside
these kernels): ``out = softmax(sm_scale * q @ k^T + source_bias[source_ids]) @ v`` per (example, head), with
gradients for q, k, v and ``source_bias``, optionally ``causal`` (self-attention, M == N: key n visible to query m
iff n <= m); the (M, N) attention matrix is never stored.

Algorithm (Dao, "FlashAttention-2", 2023; the Triton fused-attention tutorial), with one extra term per key:

- Forward, grid ``(cdiv(M, BLOCK_M), B * H)``: a program holds BLOCK_M queries, walks the keys in tiles of BLOCK_N,
  adds each key's bias (``source_bias[b, source_ids[b, n]]``, gathered from the tiny (B, S) table; 0 for id -1) to
  the logits and keeps the online softmax (running max, sum, rescaled accumulator). It writes ``out`` and the
  per-query log-sum-exp ``lse`` (B, H, M) float32, which is all the backward needs to recompute P.
- Backward: ``delta = rowsum(dO * O)`` (B, H, M) in torch, then two kernels that recompute ``P = exp(S - lse)``
  tile by tile and ``dS = P * (dO @ V^T - delta)``:
  * grid ``(cdiv(N, BLOCK_N), B * H)``: a program holds BLOCK_N keys and walks all queries, accumulating
    ``dV = P^T dO``, ``dK = sm_scale * dS^T Q`` and the per-key bias gradient ``dS.sum(over queries)`` (B, H, N);
  * grid ``(cdiv(M, BLOCK_M), B * H)``: a program holds BLOCK_M queries and walks all keys: ``dQ = sm_scale * dS K``.
  No atomics: each output tile has one writer, so the kernels are deterministic. The source gradient is then the
  sum of the per-key gradient over heads and over each source's keys: a (B, N) -> (B, S) ``scatter_add`` in torch
  (O(B * H * N) numbers, nothing of size M x N).
- Causal (``CAUSAL`` constexpr, as in FlashAttention-2 and the Triton fused-attention tutorial): the tiles wholly
  above the diagonal are skipped, not masked — the forward and dQ programs stop at the key tile holding their last
  query, the dK/dV program starts at the query tile holding its first key — and the tiles that cross the diagonal
  mask ``n > m`` to -inf (forward) or P to 0 (backward). About half the work of the full form at M == N.

Shapes and dtypes: as the reference; q, k, v float32, float16 or bfloat16 (made contiguous), head dim D <= 256 (padded
to a power of two >= 16 inside the kernel), any M, N >= 1, S >= 0. Logits, softmax and accumulators are float32; on
CUDA, 16-bit tiles go to ``tl.dot`` as they are (P and dS cast to the input dtype for their products, as in
FlashAttention) and float32 tiles with ``input_precision="ieee"``; in the interpreter every tile is float32 (its
bfloat16 ``tl.dot`` is wrong).

Limits: causal only as self-attention without a cache (M == N, top-left aligned), no dropout; D <= MAX_HEAD_DIM; a
query whose every key has a -inf bias gives NaN (as the reference). Block sizes are fixed per head dim, not autotuned
(autotune with several configs fails in the interpreter; on a GPU they are still to be tuned).

Triton versions: written against the API that triton 3.6 (the H200 image) and 3.9 (the CPU venv) both accept.
Tested in triton 3.9's CPU interpreter only (``TRITON_INTERPRET=1``, see `kernels/_triton.py`): as of 2026-12 it has
not been compiled for, or timed on, a GPU; ``bench/kernels.py`` does both.

Notes (2026-12): the interpreter's bfloat16 ``tl.dot`` is wrong, hence ``UPCAST`` there (all tiles float32).
The causal form (2026-12) is likewise tested in the interpreter only. The forward writes ``out`` in float32 (cast
to q's dtype for the caller) and the backward's ``delta = rowsum(dO * O)`` reads that float32 copy: computed from the
bfloat16-rounded O, the source-bias gradient (a sum over every query and every key of a source) had about twice plain
torch's error (seen 2026-12 at B=2, H=2, M=N=45, D=16); with it, the float32-accumulated kernel's bias gradient
is exact to float32 in the interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from retrieve_generate_model.kernels._triton import check_launchable, is_interpreted
from retrieve_generate_model.kernels.source_biased_attention import check_inputs, source_biased_attention_ref

MAX_HEAD_DIM = 256


@triton.jit
def _key_bias(SID, BIAS, b, offs_n, n_ok, N, S):
    """(BLOCK_N,) float32 bias of each key: its source's score, 0 for id -1 and for keys past N."""
    sid = tl.load(SID + b.to(tl.int64) * N + offs_n, mask=n_ok, other=-1)
    return tl.load(BIAS + b.to(tl.int64) * S + sid, mask=n_ok & (sid >= 0), other=0.0).to(tl.float32)


@triton.jit
def _sba_fwd_kernel(
    Q, K, V, SID, BIAS, OUT, LSE,
    H, M, N, D, S, sm_scale,
    CAUSAL: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    q_base = pid_bh.to(tl.int64) * M * D
    kv_base = pid_bh.to(tl.int64) * N * D
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < M
    d_ok = offs_d < D
    q = tl.load(Q + q_base + offs_m[:, None] * D + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    hi = N
    if CAUSAL:  # the tiles wholly above the diagonal (keys after the block's last query) are never loaded
        hi = tl.minimum(N, (pid_m + 1) * BLOCK_M)
    for n0 in range(0, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(K + kv_base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)  # (BLOCK_N, D)
        v = tl.load(V + kv_base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        bias = _key_bias(SID, BIAS, b, offs_n, n_ok, N, S)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale + bias[None, :]  # (BLOCK_M, BLOCK_N)
        visible = n_ok[None, :]
        if CAUSAL:  # the diagonal tile: key n is visible to query m iff n <= m
            visible = visible & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(OUT + q_base + offs_m[:, None] * D + offs_d[None, :], out.to(OUT.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * M + offs_m, m_i + tl.log(l_i), mask=m_ok)


@triton.jit
def _sba_bwd_dkdv_kernel(
    Q, K, V, SID, BIAS, DO, LSE, DELTA, DK, DV, DB,
    H, M, N, D, S, sm_scale,
    CAUSAL: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    q_base = pid_bh.to(tl.int64) * M * D
    kv_base = pid_bh.to(tl.int64) * N * D
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < N
    d_ok = offs_d < D
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(K + kv_base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)  # (BLOCK_N, D)
    v = tl.load(V + kv_base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    bias = _key_bias(SID, BIAS, b, offs_n, n_ok, N, S)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    lo = 0
    if CAUSAL:  # queries before the block's first key see none of its keys: start at the query tile holding it
        lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M
    for m0 in range(lo, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < M
        q_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(Q + q_base + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)  # (BLOCK_M, D)
        do = tl.load(DO + q_base + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + pid_bh.to(tl.int64) * M + offs_m, mask=m_ok, other=0.0)
        delta = tl.load(DELTA + pid_bh.to(tl.int64) * M + offs_m, mask=m_ok, other=0.0)
        # transposed tiles (BLOCK_N, BLOCK_M): keys are the rows here
        s_t = tl.dot(k, tl.trans(q), input_precision="ieee") * sm_scale + bias[:, None]
        visible = n_ok[:, None] & m_ok[None, :]
        if CAUSAL:
            visible = visible & (offs_n[:, None] <= offs_m[None, :])
        p_t = tl.where(visible, tl.exp(s_t - lse[None, :]), 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision="ieee")
        dp_t = tl.dot(v, tl.trans(do), input_precision="ieee")
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision="ieee")
        db += tl.sum(ds_t, 1)
    dk = dk * sm_scale
    tl.store(DK + kv_base + offs_n[:, None] * D + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + kv_base + offs_n[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)
    tl.store(DB + pid_bh.to(tl.int64) * N + offs_n, db, mask=n_ok)


@triton.jit
def _sba_bwd_dq_kernel(
    Q, K, V, SID, BIAS, DO, LSE, DELTA, DQ,
    H, M, N, D, S, sm_scale,
    CAUSAL: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    q_base = pid_bh.to(tl.int64) * M * D
    kv_base = pid_bh.to(tl.int64) * N * D
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < M
    d_ok = offs_d < D
    q_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + q_base + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)  # (BLOCK_M, D)
    do = tl.load(DO + q_base + offs_m[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * M + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * M + offs_m, mask=m_ok, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    hi = N
    if CAUSAL:
        hi = tl.minimum(N, (pid_m + 1) * BLOCK_M)
    for n0 in range(0, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(K + kv_base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)  # (BLOCK_N, D)
        v = tl.load(V + kv_base + offs_n[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        bias = _key_bias(SID, BIAS, b, offs_n, n_ok, N, S)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale + bias[None, :]  # (BLOCK_M, BLOCK_N)
        visible = n_ok[None, :]
        if CAUSAL:
            visible = visible & (offs_n[None, :] <= offs_m[:, None])
        p = tl.where(visible, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")
    dq = dq * sm_scale
    tl.store(DQ + q_base + offs_m[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=q_mask)


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the kernels refuse these inputs (None when they take them); the contract's own checks come first."""
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"the kernels take head dims up to {MAX_HEAD_DIM}, got {q.shape[-1]}"
    if q.dtype == torch.float64:
        return "the kernels take float32, float16 and bfloat16 (float64 is for the reference's gradcheck)"
    return None


def _config(D: int, interpreted: bool, blocks: tuple[int, int] | None) -> dict:
    """Tile sizes: fixed, not autotuned (see the module docstring). tl.dot needs dims >= 16 on a GPU."""
    block_d = max(16, triton.next_power_of_2(D))
    if blocks is not None:
        fwd = bwd = blocks
    elif interpreted:
        fwd = bwd = (16, 16)
    else:
        fwd = (64, 64) if block_d <= 64 else (64, 32)
        bwd = (32, 64) if block_d <= 64 else (32, 32)
    return {"block_d": block_d, "fwd": fwd, "bwd": bwd, "num_warps": 1 if interpreted else 4}


class _SourceBiasedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, source_ids, source_bias, sm_scale, causal, blocks):
        interpreted = is_interpreted(_sba_fwd_kernel)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, H, M, D = q.shape
        N, S = k.shape[2], source_bias.shape[1]
        sid = source_ids.to(torch.int32).contiguous()  # (B, N)
        # (B, S) float32 table; a one-element stand-in when there are no sources (never read: every id is -1)
        table = source_bias.detach().float().contiguous() if S else source_bias.new_zeros((B, 1), dtype=torch.float32)
        cfg = _config(D, interpreted, blocks)
        # float32 out: the backward's delta = rowsum(dO * O) from O rounded to 16 bits doubled the bias gradient's
        # error in bfloat16 (it is summed over every query and every key of a source); returned in q's dtype
        out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.empty((B, H, M), dtype=torch.float32, device=q.device)
        block_m, block_n = cfg["fwd"]
        _sba_fwd_kernel[(triton.cdiv(M, block_m), B * H)](
            q, k, v, sid, table, out, lse, H, M, N, D, max(S, 1), float(sm_scale),
            CAUSAL=causal, UPCAST=interpreted or q.dtype == torch.float32, BLOCK_M=block_m, BLOCK_N=block_n,
            BLOCK_D=cfg["block_d"], num_warps=cfg["num_warps"],
        )
        ctx.save_for_backward(q, k, v, sid, table, out, lse)
        ctx.meta = (sm_scale, causal, cfg, interpreted, S, source_bias.dtype)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, sid, table, out, lse = ctx.saved_tensors
        sm_scale, causal, cfg, interpreted, S, bias_dtype = ctx.meta
        B, H, M, D = q.shape
        N = k.shape[2]
        d_out = d_out.contiguous()
        delta = (d_out.float() * out.float()).sum(-1)  # (B, H, M): rowsum(dO * O) = sum_n P * dP
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        d_key = torch.empty((B, H, N), dtype=torch.float32, device=q.device)  # d loss / d bias of each key
        block_m, block_n = cfg["bwd"]
        common = dict(CAUSAL=causal, UPCAST=interpreted or q.dtype == torch.float32, BLOCK_M=block_m,
                      BLOCK_N=block_n, BLOCK_D=cfg["block_d"], num_warps=cfg["num_warps"])
        _sba_bwd_dkdv_kernel[(triton.cdiv(N, block_n), B * H)](
            q, k, v, sid, table, d_out, lse, delta, dk, dv, d_key, H, M, N, D, max(S, 1), float(sm_scale), **common)
        _sba_bwd_dq_kernel[(triton.cdiv(M, block_m), B * H)](
            q, k, v, sid, table, d_out, lse, delta, dq, H, M, N, D, max(S, 1), float(sm_scale), **common)
        d_bias = None
        if ctx.needs_input_grad[4]:
            per_key = d_key.sum(1).masked_fill(sid < 0, 0.0)  # (B, N): summed over heads
            d_bias = torch.zeros((B, S), dtype=torch.float32, device=q.device)
            if S:
                d_bias.scatter_add_(1, sid.long().clamp(min=0), per_key)
            d_bias = d_bias.to(bias_dtype)
        return dq, dk, dv, None, d_bias, None, None, None


def source_biased_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, source_ids: torch.Tensor, source_bias: torch.Tensor,
    sm_scale: float | None = None, causal: bool = False, *, blocks: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The kernels behind `source_biased_attention_ref`'s contract, differentiable in q, k, v and source_bias.
    ``blocks`` = (BLOCK_M, BLOCK_N) overrides the tile sizes (tests, tuning)."""
    check_inputs(q, k, v, source_ids, source_bias, causal=causal)
    reason = unsupported(q, k, v)
    if reason is not None:
        raise ValueError(reason)
    check_launchable(_sba_fwd_kernel, q, k, v, source_ids, source_bias)
    sm_scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    return _SourceBiasedAttention.apply(q, k, v, source_ids, source_bias, sm_scale, bool(causal), blocks)


__all__ = ["MAX_HEAD_DIM", "source_biased_attention_ref", "source_biased_attention_triton", "unsupported"]

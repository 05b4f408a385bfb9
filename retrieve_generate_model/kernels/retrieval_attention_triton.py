"""Retrieval attention as one Triton kernel: a single pass over K with a running top-k and an online log-sum-exp.

The contract is `retrieval_attention_ref`'s (`retrieval_attention.py`, the pure-torch reference beside this kernel):
for queries Q (B, d) and keys K (N, d), the ``min(k, N)`` best keys per query by ``scale * Q @ K.T`` (ties: the lower
index first), their float32 scores, and ``log_z``, the log-sum-exp over every valid key; no (B, N) tensor is ever
made.

Algorithm (the split-K idea of flash-decoding, with a top-k in place of the value sum):

1. Grid ``(cdiv(B, BLOCK_B), splits)``. Program (i, j) takes queries ``[i*BLOCK_B, (i+1)*BLOCK_B)`` and the j-th
   contiguous chunk of K, walks it in tiles of ``BLOCK_N`` keys and scores each tile with ``tl.dot`` over d in steps
   of ``BLOCK_D`` (float32 accumulation). Queries are the fastest grid axis, so the programs that read one chunk of
   K run side by side and share it through L2.
2. Online log-sum-exp per query: running max ``m`` and sum ``l`` of ``exp(s - m)``, as in FlashAttention.
3. Running top-k per query in a buffer of ``KP`` (``min(k, N)`` rounded up to a power of two, at least 16) int64
   keys. A key packs a score and an index so that one integer order is the contract's order: the float32 bits made
   monotone (negative floats: all bits but the sign flipped; -0.0 first made +0.0) in the high 32 bits, ``2**32 - 1 -
   index`` in the low 32, so among equal scores the lower index is the larger key. Keys are unique, so "replace the
   buffer's smallest" is one ``tl.where``. A tile is merged only when some score beats its query's threshold (the
   buffer's smallest score; later keys have higher indices, so equal scores never replace): then, round after round,
   each query's best remaining key in the tile replaces the buffer's smallest while it is larger (at most
   ``min(BLOCK_N, KP)`` rounds, usually none once the buffer has filled: on random data a key enters the top-k of
   the n seen so far with probability k/n). Empty slots hold distinct sentinels below every real key.
4. Each program writes its buffer (B, splits, KP) and its log-sum-exp (B, splits); a small torch step merges them:
   ``torch.topk`` over the ``splits * KP`` int64 keys of a query (exact, and the tie rule holds because it is the
   integer order), decoding back to index and score, and ``logsumexp`` over the splits. That step reads
   O(B * splits * KP) numbers, nothing of size N.

Shapes and dtypes: Q (B, d) and K (N, d) in one of float32, float16, bfloat16 with unit stride along d (a copy is
made otherwise); ``valid`` (N,) bool. On CUDA, 16-bit tiles go to ``tl.dot`` as they are (products exact, float32
accumulation) and float32 tiles with ``input_precision="ieee"`` (no TF32, like torch's default matmul). In the
interpreter every tile is cast to float32 first (its bfloat16 ``tl.dot`` is wrong: errors of 1e10).

Limits: ``min(k, N) <= MAX_K`` (256; the dispatcher's "auto" uses the reference above it, "triton" raises);
N < 2**31 - BLOCK_N; NaN scores are not ordered (garbage in, garbage out). A stream of ever-increasing scores (keys
sorted by score) is the worst case of step 3: every tile then takes ``min(BLOCK_N, KP)`` rounds, correct but slow.

Triton versions: written against the API that triton 3.6 (the H200 image) and 3.9 (the CPU venv) both accept
(``tl.dot(..., input_precision=)``, int64 ``tl.max``/``tl.min``, bitcasts, a data-dependent ``while``; no ``tl.sort``
or ``tl.topk``). Tested in triton 3.9's CPU interpreter only (``TRITON_INTERPRET=1``, see `kernels/_triton.py`):
as of 2026-12 it has not been compiled for, or timed on, a GPU; ``bench/kernels.py`` does both. The tile sizes in
`_blocks` are first guesses, not tuned.

Notes (2026-12): the interpreter's bfloat16 ``tl.dot`` is wrong, hence ``UPCAST`` there. The integer constants are
written so that none is a uint32 literal (``0xFFFFFFFF`` would be typed uint32 and mix signedness with int64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from retrieve_generate_model.kernels._triton import check_launchable, is_interpreted
from retrieve_generate_model.kernels.retrieval_attention import _check, retrieval_attention_ref

MAX_K = 256  # the largest top-k buffer a program keeps (BLOCK_B x KP int64 keys live in registers)
_KEY_MIN = tl.constexpr(-(2**63))  # masked keys and the floor of the empty-slot sentinels
_REAL_MIN = tl.constexpr(-(2**63) + 2**32)  # every real key is above: sentinels are _KEY_MIN + slot, slot < 2**32
KEY_REAL_MIN = -(2**63) + 2**32


@triton.jit
def _pack(s, offs_n):
    """(score, index) -> int64 key whose integer order is (score descending, index ascending)."""
    bits = s.to(tl.int32, bitcast=True)
    mono = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip all but the sign, so int order = float order
    # high 32 bits: mono; low 32 bits: 2**32 - 1 - index (written without a uint32 constant)
    return ((mono.to(tl.int64) + 1) << 32) - 1 - offs_n.to(tl.int64)


@triton.jit
def _threshold(low):
    """The score of a buffer's smallest key, -inf while the buffer still has an empty slot."""
    mono = (low >> 32).to(tl.int32)
    bits = mono ^ ((mono >> 31) & 0x7FFFFFFF)
    return tl.where(low < _REAL_MIN, float("-inf"), bits.to(tl.float32, bitcast=True))


@triton.jit
def _retrieval_topk_lse_kernel(
    Q, K, VALID, KEYS, LSE,  # KEYS (B, splits, KP) int64 and LSE (B, splits) float32: one partial per program
    B, N, D, chunk, stride_qb, stride_kn, scale,
    HAS_VALID: tl.constexpr, UPCAST: tl.constexpr, KP: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    splits = tl.num_programs(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = offs_b < B
    slot = tl.arange(0, KP)
    buf = tl.zeros((BLOCK_B, KP), dtype=tl.int64) + (slot.to(tl.int64) + _KEY_MIN)[None, :]  # distinct sentinels
    thr = tl.full((BLOCK_B,), float("-inf"), dtype=tl.float32)
    m_i = tl.full((BLOCK_B,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_B,), dtype=tl.float32)
    start = pid_s * chunk
    end = tl.minimum(start + chunk, N)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < end
        s = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)  # (BLOCK_B, BLOCK_N) scores of this tile
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            d_ok = offs_d < D
            q = tl.load(Q + offs_b[:, None].to(tl.int64) * stride_qb + offs_d[None, :],
                        mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (BLOCK_B, BLOCK_D)
            kt = tl.load(K + offs_n[None, :].to(tl.int64) * stride_kn + offs_d[:, None],
                         mask=n_ok[None, :] & d_ok[:, None], other=0.0)  # (BLOCK_D, BLOCK_N): K^T by addressing
            if UPCAST:
                q = q.to(tl.float32)
                kt = kt.to(tl.float32)
            s += tl.dot(q, kt, input_precision="ieee")
        s = s * scale
        ok = n_ok
        if HAS_VALID:
            ok = ok & (tl.load(VALID + offs_n, mask=n_ok, other=0) != 0)
        s = tl.where(row_ok[:, None] & ok[None, :], s, float("-inf"))
        s = tl.where(s == 0.0, 0.0, s)  # -0.0 -> +0.0: equal scores must pack to equal high bits

        # online log-sum-exp
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all masked so far: avoid -inf - -inf
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), 1)
        m_i = m_new

        # running top-k: only when some score of the tile beats its query's threshold
        cand = s > thr[:, None]
        if tl.max(tl.max(cand.to(tl.int32), 1), 0) > 0:
            keys = tl.where(cand, _pack(s, offs_n), _KEY_MIN)  # (BLOCK_B, BLOCK_N)
            best = tl.max(keys, 1)
            low = tl.min(buf, 1)
            while tl.max((best > low).to(tl.int32), 0) > 0:
                take = best > low
                buf = tl.where((buf == low[:, None]) & take[:, None], best[:, None], buf)
                keys = tl.where(keys == best[:, None], _KEY_MIN, keys)
                best = tl.max(keys, 1)
                low = tl.min(buf, 1)
            thr = _threshold(low)

    lse = tl.where(l_i > 0, m_i + tl.log(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))  # no log(0) computed
    tl.store(LSE + offs_b * splits + pid_s, lse, mask=row_ok)
    base = (offs_b.to(tl.int64) * splits + pid_s) * KP
    tl.store(KEYS + base[:, None] + slot[None, :], buf, mask=row_ok[:, None])


def unsupported(Q: torch.Tensor, K: torch.Tensor, k: int) -> str | None:
    """Why the kernel refuses these inputs (None when it takes them); the contract's own checks come first."""
    width = min(k, K.shape[0])
    if width > MAX_K:
        return f"the kernel keeps at most MAX_K={MAX_K} results per query, asked for {width}"
    if K.shape[0] >= 2**31 - 4096:
        return f"the kernel indexes keys in int32, N={K.shape[0]} is too large"
    return None


def _blocks(B: int, KP: int, interpreted: bool) -> tuple[int, int, int, int]:
    """(BLOCK_B, BLOCK_N, BLOCK_D, num_warps). tl.dot needs every dim >= 16 on a GPU, so one query is padded to 16."""
    if interpreted:  # every op is a numpy call: small tiles keep the tests quick, 32-wide d steps cover padding
        return 16, 32, 32, 1
    block_b = 16 if B <= 16 or KP >= 256 else 32 if B <= 32 or KP >= 128 else 64
    return block_b, 128 if block_b <= 32 else 64, 64, 4 if block_b <= 32 else 8


def retrieval_attention_triton(
    Q: torch.Tensor, K: torch.Tensor, k: int, *, valid: torch.Tensor | None = None, scale: float = 1.0,
    splits: int | None = None, block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel behind `retrieval_attention_ref`'s contract. ``splits`` (chunks of K, default: enough programs to
    fill the GPU) and ``block_n`` (keys per tile) are for tests and tuning."""
    _check(Q, K, k, valid, 1)
    reason = unsupported(Q, K, k)
    if reason is not None:
        raise ValueError(reason)
    check_launchable(_retrieval_topk_lse_kernel, Q, K, *([] if valid is None else [valid]))
    interpreted = is_interpreted(_retrieval_topk_lse_kernel)
    Q = Q if Q.stride(1) == 1 else Q.contiguous()
    K = K if K.stride(1) == 1 else K.contiguous()
    B, D = Q.shape
    N = K.shape[0]
    width = min(k, N)
    KP = max(16, triton.next_power_of_2(width))
    block_b, default_n, block_d, num_warps = _blocks(B, KP, interpreted)
    block_n = block_n or default_n
    n_tiles = triton.cdiv(N, block_n)
    b_tiles = triton.cdiv(B, block_b)
    if splits is None:
        if Q.is_cuda:
            sms = torch.cuda.get_device_properties(Q.device).multi_processor_count
            splits = max(1, 4 * sms // b_tiles)
        else:
            splits = 4
    tiles_per_split = triton.cdiv(n_tiles, max(1, min(splits, n_tiles)))
    splits = triton.cdiv(n_tiles, tiles_per_split)  # every split non-empty
    keys = torch.empty((B, splits, KP), dtype=torch.int64, device=Q.device)
    lse = torch.empty((B, splits), dtype=torch.float32, device=Q.device)
    # the mask as bytes; without one, any tensor stands in for the pointer (HAS_VALID=False: never read)
    valid_arg = valid.contiguous().view(torch.uint8) if valid is not None else keys
    _retrieval_topk_lse_kernel[(b_tiles, splits)](
        Q, K, valid_arg, keys, lse,
        B, N, D, tiles_per_split * block_n, Q.stride(0), K.stride(0), float(scale),
        HAS_VALID=valid is not None, UPCAST=interpreted or Q.dtype == torch.float32, KP=KP,
        BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=num_warps,
    )
    return merge_partials(keys, lse, width)


def merge_partials(keys: torch.Tensor, lse: torch.Tensor, width: int):
    """Merge per-split top-k keys (B, splits, KP) and log-sum-exps (B, splits) into the contract's outputs."""
    B = keys.shape[0]
    top = torch.topk(keys.reshape(B, -1), width, dim=1).values  # (B, width) int64: integer order = contract order
    mono = top >> 32
    bits = mono ^ ((mono >> 31) & 0x7FFFFFFF)
    scores = bits.to(torch.int32).view(torch.float32)
    indices = 0xFFFFFFFF - (top & 0xFFFFFFFF)
    dead = (top < KEY_REAL_MIN) | torch.isneginf(scores)  # empty slots, masked keys
    indices = indices.masked_fill(dead, -1)
    scores = scores.masked_fill(dead, float("-inf"))
    return indices, scores, torch.logsumexp(lse, dim=1)


__all__ = ["MAX_K", "merge_partials", "retrieval_attention_ref", "retrieval_attention_triton", "unsupported"]

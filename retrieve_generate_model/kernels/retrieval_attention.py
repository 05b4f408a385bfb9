"""Retrieval as attention over a segment memory: top-k keys per query, normalized over the whole memory.

For queries Q (B, d) and keys K (N, d), the scores are ``s = scale * Q @ K.T``; a retriever that marginalizes over its
sources needs, per query, the k best keys and their weights ``exp(s - log_z)`` with ``log_z = logsumexp(s)`` over
*all* N valid keys, not only over the k returned. Materializing the (B, N) score matrix for that is what dominates at
millions of segments. `retrieval_attention_ref` makes one pass over K in blocks of ``block_n`` keys, keeping a running
top-k and an online log-sum-exp per query, so that memory is O(B * (k + block_n)) whatever N is.

Contract (the Triton kernel beside this reference, `retrieval_attention_triton.py`, implements the same one):

- ``Q`` (B, d), ``K`` (N, d): float32, float16 or bfloat16 (the same dtype); scores are accumulated in float32.
- ``valid`` (N,) bool or None: rows where it is False (deleted segments) are neither returned nor counted in log_z.
- Returns ``(indices, scores, log_z)``: ``indices`` (B, min(k, N)) int64 and ``scores`` (B, min(k, N)) float32, best
  first; among equal scores the lower index comes first (deterministic); where a query has fewer valid keys than
  columns, the rest is index -1 with score -inf. ``log_z`` (B,) float32, -inf when no key is valid.
"""

from __future__ import annotations

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def retrieval_attention_ref(
    Q: torch.Tensor, K: torch.Tensor, k: int, *, valid: torch.Tensor | None = None, scale: float = 1.0,
    block_n: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` keys per query with scores and the log-sum-exp over all valid keys; see the module docstring."""
    _check(Q, K, k, valid, block_n)
    B, N = Q.shape[0], K.shape[0]
    width = min(k, N)
    best_s = torch.full((B, 0), float("-inf"), dtype=torch.float32, device=Q.device)
    best_i = torch.full((B, 0), -1, dtype=torch.int64, device=Q.device)
    log_z = torch.full((B,), float("-inf"), dtype=torch.float32, device=Q.device)
    q = Q.float()
    for start in range(0, N, block_n):
        s = (q @ K[start : start + block_n].float().T) * scale  # (B, n): one block of scores, never all N
        if valid is not None:
            s = s.masked_fill(~valid[start : start + block_n], float("-inf"))
        log_z = torch.logaddexp(log_z, torch.logsumexp(s, dim=1))
        idx = torch.arange(start, start + s.shape[1], device=Q.device).expand(B, -1)
        best_s, best_i = _merge_top(torch.cat([best_s, s], dim=1), torch.cat([best_i, idx], dim=1), width)
    best_i = best_i.masked_fill(torch.isneginf(best_s), -1)  # masked keys are not results
    return best_i, best_s, log_z


def _merge_top(cand_s: torch.Tensor, cand_i: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``width`` best (score, index) pairs of each row, best first, the lower index first among equal scores.

    The rows hold the running top-k (sorted) followed by a new block (indices increasing), so among equal scores
    position order is index order. ``torch.topk`` finds each row's k-th score ``t``; every score above ``t`` is in,
    and the ties at ``t`` are taken in position order until the row has ``width``; only those ``width`` are sorted
    (stably). A full sort of the block costs ~3x more on a CPU.
    """
    if cand_s.shape[1] <= width:
        order = torch.sort(cand_s, dim=1, descending=True, stable=True).indices
        return torch.gather(cand_s, 1, order), torch.gather(cand_i, 1, order)
    t = torch.topk(cand_s, width, dim=1).values[:, -1:]  # (B, 1): each row's width-th score
    above = cand_s > t
    ties = cand_s == t
    need = width - above.sum(1, keepdim=True)  # how many of the ties each row takes, first ones first
    take = above | (ties & (torch.cumsum(ties, 1) <= need))
    B = cand_s.shape[0]
    sel_s, sel_i = cand_s[take].view(B, width), cand_i[take].view(B, width)  # position order kept
    order = torch.sort(sel_s, dim=1, descending=True, stable=True).indices
    return torch.gather(sel_s, 1, order), torch.gather(sel_i, 1, order)


def _check(Q: torch.Tensor, K: torch.Tensor, k: int, valid: torch.Tensor | None, block_n: int) -> None:
    if Q.dim() != 2 or K.dim() != 2 or Q.shape[1] != K.shape[1]:
        raise ValueError(f"need Q (B, d) and K (N, d) with the same d, got {tuple(Q.shape)} and {tuple(K.shape)}")
    if Q.dtype not in DTYPES or K.dtype != Q.dtype:
        raise ValueError(f"Q and K must share one dtype of {DTYPES}, got {Q.dtype} and {K.dtype}")
    if k < 1 or block_n < 1:
        raise ValueError(f"k and block_n must be positive, got {k} and {block_n}")
    if K.shape[0] == 0:
        raise ValueError("the memory K is empty")
    if valid is not None and (valid.dtype != torch.bool or valid.shape != (K.shape[0],)):
        got = f"{valid.dtype} {tuple(valid.shape)}"
        raise ValueError(f"valid must be a bool tensor of shape ({K.shape[0]},), got {got}")


__all__ = ["DTYPES", "retrieval_attention_ref"]

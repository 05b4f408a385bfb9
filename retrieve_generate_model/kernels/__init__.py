"""Retrieval attention and its relatives: pure-torch references here; the Triton kernels (issue 7) sit beside them.

The model code calls the dispatchers below, never a reference or a kernel directly, so that the kernels replace the
references without touching their callers.
"""

from __future__ import annotations

from retrieve_generate_model.kernels.retrieval_attention import retrieval_attention_ref

BACKENDS = ("auto", "torch")  # "triton" joins when the kernels land (issue 7)


def retrieval_attention(Q, K, k: int, *, valid=None, scale: float = 1.0, backend: str = "auto"):
    """Top-``k`` keys per query, their scores and the log-sum-exp over all valid keys (contract: see
    `retrieval_attention_ref`). ``backend``: "auto" (today the torch reference on every device) or "torch"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return retrieval_attention_ref(Q, K, k, valid=valid, scale=scale)


__all__ = ["BACKENDS", "retrieval_attention", "retrieval_attention_ref"]

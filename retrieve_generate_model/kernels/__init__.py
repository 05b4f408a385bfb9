"""Retrieval attention and source-biased attention: pure-torch references and the Triton kernels beside them.

The model code calls the dispatchers below, never a reference or a kernel directly, so that the kernels replace the
references without touching their callers. Each takes ``backend``:

- ``"auto"`` (default): the Triton kernel on CUDA tensors when triton is installed and the kernel takes the inputs,
  else the pure-torch reference (always the reference on CPU: the interpreter is for tests, ~35x slower than torch);
- ``"torch"``: the reference;
- ``"triton"``: the kernel, or an error saying why it cannot run (triton not installed, inputs beyond the kernel's
  limits). On CPU tensors it runs in Triton's interpreter, which needs ``TRITON_INTERPRET=1`` in the environment
  before the first kernel call of the process (Triton reads it when the kernel modules are imported).

Modules: `retrieval_attention` (reference, the contract) and `retrieval_attention_triton` (kernel);
`source_biased_attention` (reference, the contract) and `source_biased_attention_triton` (kernels, forward and
backward); `_triton` (the one place that knows whether triton and its interpreter are there). Nothing imports
triton until a kernel is asked for.
"""

from __future__ import annotations

from retrieve_generate_model.kernels._triton import BACKENDS, TritonUnavailable, load, wants_kernel
from retrieve_generate_model.kernels.retrieval_attention import retrieval_attention_ref
from retrieve_generate_model.kernels.source_biased_attention import source_biased_attention_ref


def retrieval_attention(Q, K, k: int, *, valid=None, scale: float = 1.0, backend: str = "auto"):
    """Top-``k`` keys per query, their scores and the log-sum-exp over all valid keys (contract: see
    `retrieval_attention_ref`). ``backend``: "auto", "torch" or "triton" (see the module docstring)."""
    if wants_kernel(backend, Q):
        kernel = load("retrieval_attention_triton")
        reason = kernel.unsupported(Q, K, k)
        if reason is None:
            return kernel.retrieval_attention_triton(Q, K, k, valid=valid, scale=scale)
        if backend == "triton":
            raise ValueError(f"backend='triton' cannot take these inputs: {reason}")
    return retrieval_attention_ref(Q, K, k, valid=valid, scale=scale)


def source_biased_attention(q, k, v, source_ids, source_bias, sm_scale: float | None = None, *,
                            causal: bool = False, backend: str = "auto"):
    """Attention of q (B, H, M, D) over k, v (B, H, N, D) with each key's logit shifted by its source's score
    ``source_bias[b, source_ids[b, n]]``, differentiable in q, k, v and source_bias (contract: see
    `source_biased_attention_ref`). ``causal``: self-attention (M == N), key n visible to query m iff n <= m.
    ``backend``: "auto", "torch" or "triton" (see the module docstring)."""
    if wants_kernel(backend, q):
        kernel = load("source_biased_attention_triton")
        reason = kernel.unsupported(q, k, v)
        if reason is None:
            return kernel.source_biased_attention_triton(q, k, v, source_ids, source_bias, sm_scale, causal)
        if backend == "triton":
            raise ValueError(f"backend='triton' cannot take these inputs: {reason}")
    return source_biased_attention_ref(q, k, v, source_ids, source_bias, sm_scale, causal)


__all__ = ["BACKENDS", "TritonUnavailable", "retrieval_attention", "retrieval_attention_ref",
           "source_biased_attention", "source_biased_attention_ref"]

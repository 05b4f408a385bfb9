"""Source-biased attention: the generator's positions attend over the tokens of the retrieved sources, each key's logit
shifted by its source's retrieval score, so that the answer loss reaches the retriever.

For one example b and head h, with queries q (M, D), keys k and values v (N, D) (the tokens of all the example's
retrieved sources, concatenated), ``source_ids`` (N,) giving each key's source and ``source_bias`` (S,) one score
per source (the retriever's score or log-weight of that source):

    logits[m, n] = sm_scale * q[m] . k[n] + source_bias[source_ids[n]]      (no bias where source_ids[n] == -1)
    out[m] = softmax_n(logits[m]) @ v                                        (over n <= m only, when causal)

The derivative of the loss with respect to ``source_bias[s]`` is the sum, over the heads, the queries and the keys of
source s, of the logit gradient ``dS = P * (dP - rowsum(dO * O))`` (dP = dO @ v^T): a source whose tokens the answer
attends to more than the current weights say is pushed up. That is the differentiable link between generation and
retrieval in joint training.

Shapes and dtypes (the Triton kernel, `source_biased_attention_triton.py`, implements the same contract):

- ``q`` (B, H, M, D), ``k`` and ``v`` (B, H, N, D): float32, float16 or bfloat16, one dtype; N >= 1.
- ``source_ids`` (B, N) integer, values in [-1, S): the index of each key's source in the example's source list,
  -1 for keys that belong to no source (a prompt or separator token): no bias, still attended to.
- ``source_bias`` (B, S) floating point (any float dtype, used in float32 or wider). -inf masks a source's keys
  (weight 0, gradient 0); a query whose every key is masked has no distribution (NaN, as in torch's softmax).
- ``sm_scale``: defaults to ``D ** -0.5``.
- Returns ``out`` (B, H, M, D) in q's dtype. Gradients reach q, k, v and ``source_bias`` (not the integer ids).
- ``causal`` (default False): False when the keys are retrieved text, all visible to every generator position
  (cross-attention); True for a decoder's self-attention over its own prompt, where the sources are tokens of the
  sequence: M == N is required and key n is visible to query m iff n <= m (top-left aligned, as a prompt read
  without a cache), on top of the per-source bias. Query 0 then sees key 0 alone: a -inf bias on key 0's source
  gives it no distribution (NaN), so mask padding with a large finite negative bias instead (see
  `retrieve_generate_model/biased_attention.py`).

`source_biased_attention_ref` computes in float32 (float64 for float64 inputs, for ``gradcheck``), materializing
the (B, H, M, N) logits: the definition, not a fast path.
"""

from __future__ import annotations

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def key_bias(source_ids: torch.Tensor, source_bias: torch.Tensor) -> torch.Tensor:
    """Each key's additive bias (B, N): its source's score, 0 for keys of no source (id -1). Differentiable."""
    if source_bias.shape[1] == 0:  # no sources: every id is -1
        return source_bias.new_zeros(source_ids.shape)
    gathered = source_bias.gather(1, source_ids.long().clamp(min=0))  # (B, N)
    return torch.where(source_ids >= 0, gathered, torch.zeros((), dtype=gathered.dtype, device=gathered.device))


def source_biased_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, source_ids: torch.Tensor, source_bias: torch.Tensor,
    sm_scale: float | None = None, causal: bool = False,
) -> torch.Tensor:
    """Attention of q over k/v with each key's logit shifted by its source's bias; see the module docstring."""
    check_inputs(q, k, v, source_ids, source_bias, allow_float64=True, causal=causal)
    sm_scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    work = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for gradcheck
    bias = key_bias(source_ids, source_bias).to(work)  # (B, N)
    logits = (q.to(work) @ k.to(work).transpose(-1, -2)) * sm_scale + bias[:, None, None, :]  # (B, H, M, N)
    if causal:
        M, N = q.shape[2], k.shape[2]
        future = torch.ones(M, N, dtype=torch.bool, device=q.device).triu(1)  # (M, N): key n > query m
        logits = logits.masked_fill(future, float("-inf"))
    return (torch.softmax(logits, dim=-1) @ v.to(work)).to(q.dtype)  # (B, H, M, D)


def check_inputs(q, k, v, source_ids, source_bias, *, allow_float64: bool = False, causal: bool = False) -> None:
    """Refuse inputs outside the contract, with the reason."""
    dtypes = DTYPES + ((torch.float64,) if allow_float64 else ())
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"need q (B, H, M, D) and k, v (B, H, N, D), got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    B, H, _, D = q.shape
    if k.shape[0] != B or k.shape[1] != H or k.shape[3] != D:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on B, H or D")
    if k.shape[2] == 0:
        raise ValueError("there are no keys (N == 0)")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal attention is self-attention: it needs as many queries as keys (M == N), got "
                         f"M={q.shape[2]}, N={k.shape[2]}")
    if q.dtype not in dtypes or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must share one dtype of {dtypes}, got {q.dtype}, {k.dtype}, {v.dtype}")
    if source_ids.shape != (B, k.shape[2]) or source_ids.is_floating_point() or source_ids.is_complex():
        raise ValueError(f"source_ids must be an integer tensor of shape ({B}, {k.shape[2]}), got "
                         f"{source_ids.dtype} {tuple(source_ids.shape)}")
    if source_bias.dim() != 2 or source_bias.shape[0] != B or not source_bias.is_floating_point():
        raise ValueError(f"source_bias must be a float tensor (B={B}, S), got {source_bias.dtype} "
                         f"{tuple(source_bias.shape)}")
    if source_ids.numel() and (source_ids.min() < -1 or source_ids.max() >= source_bias.shape[1]):
        raise ValueError(f"source_ids must lie in [-1, S={source_bias.shape[1]}), got "
                         f"[{int(source_ids.min())}, {int(source_ids.max())}]")


__all__ = ["DTYPES", "check_inputs", "key_bias", "source_biased_attention_ref"]

"""Source-biased self-attention in the generator: the retriever's scores of the sources shift the generator's attention
to their tokens, so that the answer loss reaches the retriever through attention (issue 7's differentiable link).

The generator reads one prompt holding the question and the k numbered sources (`joint.Layout.prompt`). With this
attention, every key token that belongs to source s gets ``source_bias[s]`` added to its logit, in every query's
softmax, in the layers chosen:

    logits[m, n] = scale * q[m] . k[n] + source_bias[source_ids[n]]      (no bias where source_ids[n] == -1)
    out[m] = softmax over n <= m (causal) of logits[m] @ v

which is `retrieve_generate_model.kernels.source_biased_attention(..., causal=True)`: the Triton kernel on CUDA, its
pure-torch reference elsewhere (both differentiable in the bias). Joint training with ``--link attention``
(`train.AttentionLink`) makes ``source_bias`` the question tower's log-weights of the row's sources relative to uniform
(`retrieval_bias`), so the gradient of the answer loss with respect to each source's bias — how much more the answer
would rather attend to that source's tokens — moves the question tower's adapters. The distillation link
(`retriever.generator_targets`) needs k extra forward passes per row, each source alone, after the generator is
trained; this one is part of the generator's own training step.

A checkpoint trained this way answers with the same bias: training records the depth in its config
(`JointConfig.source_bias_layers`), and `JointModel.load` switches the generator to this attention with the tower of
its ``retriever/``, whose `tower_bias` of the sources `JointModel.answer` passes on every forward of its decoding (the
prompt, then each step through the KV cache). A checkpoint without the field decodes with plain SDPA, as before.

How it plugs into transformers (5.x, checked on 5.25): the function is registered in transformers'
``AttentionInterface`` under `ATTENTION` (with SDPA's mask function under the same name, so the model builds exactly
the masks it builds for "sdpa"), and `use_source_bias(model)` switches a loaded model to it. Keyword arguments of a
causal LM's forward that it does not know travel down to every layer's attention function (LlamaForCausalLM ->
LlamaModel -> decoder layer -> attention; peft's wrappers pass them on), so:

    use_source_bias(model)
    out = model(input_ids=ids, labels=labels, source_ids=source_ids, source_bias=source_bias)   # biased
    out = model(input_ids=ids)                                                                  # plain SDPA

- ``source_ids`` (B, N) integer: each token's source index in its row, -1 outside the sources (`token_sources`);
  N is the whole sequence, including tokens already in a KV cache.
- ``source_bias`` (B, S) float: one number per source, differentiable.
- ``source_layers`` (optional): the layer indices that take the bias; the others run plain SDPA. None: all.

Without ``source_ids`` and ``source_bias`` the function *is* transformers' SDPA forward: the same loaded model decodes
and trains as before. Per call, with them:

- GQA (SmolLM2: 9 query heads, 3 key/value heads): the key/value heads are repeated to the query heads, since the
  kernel's contract has one H.
- Padding: transformers' 4D boolean mask (None for an unpadded prompt) is checked to be causal x key padding; a key it
  hides from every query (padding) is given an extra source, index S, whose bias is `PAD_BIAS` — finite, not -inf, so
  that a left-padded query, whose only visible keys are padding, keeps a finite softmax (its output is discarded like
  any padded position's; real queries give those keys weight exp(-1e9) = 0, and its gradient never reaches the real
  sources' bias).
- Shapes the kernel's causal contract does not cover — a KV cache (fewer queries than keys: decoding) or a mask that is
  not causal x key padding (packed sequences) — take the same logits in plain torch: SDPA with the bias folded into
  a float mask, in float32. Exact and differentiable, not fused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

ATTENTION = "ragless_source_biased"  # the name registered in transformers' AttentionInterface
PAD_BIAS = -1e9  # the bias of padding keys (a finite -inf: see the module docstring)


def token_sources(length: int, source_ranges: Sequence[tuple[int, int]]) -> list[int]:
    """Each position's source index for a sequence of ``length`` tokens whose source s occupies positions
    ``source_ranges[s]`` = [begin, end) (`joint.Example.source_ranges`); -1 elsewhere.

    >>> token_sources(7, [(1, 3), (4, 6)])
    [-1, 0, 0, -1, 1, 1, -1]
    """
    out = [-1] * length
    for s, (begin, end) in enumerate(source_ranges):
        out[begin:end] = [s] * (end - begin)
    return out


def retrieval_bias(scores: torch.Tensor) -> torch.Tensor:
    """The attention bias of each source from the retriever's scores of a row's sources (..., S):
    ``log(S * softmax(scores))``, the log of each source's retrieval weight relative to uniform.

    Why this form and not the scores themselves: (1) it is 0 for every source when the retriever is indifferent, so
    the generator starts from its own attention, unbiased; (2) only the preference among the row's sources counts (a
    shift of every score changes nothing, as in retrieval's own softmax), where raw scaled scores (20 x a cosine of
    0.5 = +10 on every source token) would drown the question and the instructions and could grow all sources together;
    (3) exp(bias) multiplies the attention each source's tokens get by S * p(source), i.e. the generator reads the
    sources in proportion to the retriever's weights. Its gradient is log-softmax's (the constant log S has none);
    with a single source it is 0, and so is the gradient: such rows do not train the retriever.

    >>> retrieval_bias(torch.tensor([[1.0, 1.0, 1.0]])).abs().max().item()
    0.0
    >>> [round(x, 3) for x in retrieval_bias(torch.tensor([0.0, 2.0])).tolist()]
    [-1.434, 0.566]
    """
    return scores.log_softmax(-1) + math.log(scores.shape[-1])


def tower_bias(tower, question: str, sources: Sequence, vectors: dict[str, torch.Tensor] | None = None
               ) -> torch.Tensor:
    """The ``source_bias`` (1, S) of ``sources`` (`records.Source`, as many as the prompt shows) for ``question``:
    `retrieval_bias` of ``scale * q . p``, with q the question tower's (`retriever.QueryEncoder`, differentiable when
    it trains) and p each source's passage vector by the tower's base encoder (the index's own vectors: frozen).
    ``vectors`` (passage text -> its vector (D,)), when given, caches the passages across calls. The one computation
    of joint training's link (`train.AttentionLink`) and of answering (`joint.JointModel.answer`)."""
    from retrieve_generate_model.encoder import passage_text

    vectors = {} if vectors is None else vectors
    texts = [passage_text(s.text, s.title, s.section) for s in sources]
    missing = [t for t in dict.fromkeys(texts) if t not in vectors]
    for text, vector in zip(missing, tower.base.embed_passages(missing)):
        vectors[text] = torch.from_numpy(vector)
    P = torch.stack([vectors[t] for t in texts])  # (S, D)
    q = tower.forward([question])  # (1, D)
    return retrieval_bias(tower.config.scale * q @ P.to(q.device).T)  # (1, S)


def last_layers(num_layers: int, depth: int) -> tuple[int, ...]:
    """The indices of a model's last ``depth`` layers (all of them when deeper): those that take the bias.

    >>> last_layers(30, 2)
    (28, 29)
    """
    return tuple(range(max(num_layers - depth, 0), num_layers))


def _is_causal_with_key_padding(mask: torch.Tensor) -> torch.Tensor | None:
    """For a (B, 1, N, N) boolean mask: the keys it lets be seen (B, N) when it is exactly causal x key padding (what
    transformers builds for a padded batch), else None. The last query sees every key that is not padding."""
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != mask.shape[3]:
        return None
    keys = mask[:, 0, -1, :]  # (B, N)
    N = mask.shape[-1]
    causal = torch.ones(N, N, dtype=torch.bool, device=mask.device).tril()  # (N, N): key n <= query m
    return keys if torch.equal(mask[:, 0], causal[None] & keys[:, None, :]) else None


def _with_padding_source(source_ids: torch.Tensor, source_bias: torch.Tensor,
                         keys: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``source_ids`` with every hidden key (``keys`` False) given source S, and ``source_bias`` with a PAD_BIAS
    column S; unchanged when no key is hidden."""
    if keys is None or bool(keys.all()):
        return source_ids, source_bias
    S = source_bias.shape[1]
    ids = source_ids.masked_fill(~keys, S)  # (B, N)
    pad = torch.full((source_bias.shape[0], 1), PAD_BIAS, dtype=source_bias.dtype, device=source_bias.device)
    return ids, torch.cat([source_bias, pad], dim=1)  # (B, S + 1)


def _masked_attention(query, key, value, attention_mask, source_ids, source_bias, scaling) -> torch.Tensor:
    """The same logits in plain torch for what the kernel's causal form does not take (a KV cache, other masks):
    SDPA in float32 with the per-key bias and the mask folded into one float mask. (B, H, M, D) in query's dtype."""
    from retrieve_generate_model.kernels.source_biased_attention import key_bias

    M, N = query.shape[2], key.shape[2]
    bias = key_bias(source_ids, source_bias).float()[:, None, None, :]  # (B, 1, 1, N)
    hidden = torch.finfo(torch.float32).min
    if attention_mask is None:  # causal, aligned to the last key: query m is token N - M + m
        seen = torch.ones(M, N, dtype=torch.bool, device=query.device).tril(N - M)  # (M, N)
        mask = bias.masked_fill(~seen, hidden)
    elif attention_mask.dtype == torch.bool:  # (B, 1, M, N): True where a key is seen
        mask = bias.masked_fill(~attention_mask, hidden)
    else:  # an additive float mask
        mask = bias + attention_mask.float()
    out = torch.nn.functional.scaled_dot_product_attention(query.float(), key.float(), value.float(),
                                                           attn_mask=mask, scale=scaling)
    return out.to(query.dtype)  # (B, H, M, D)


def source_biased_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                       source_ids: torch.Tensor | None = None, source_bias: torch.Tensor | None = None,
                       source_layers: Sequence[int] | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention function (see the module docstring): query (B, H, M, D), key and value
    (B, KV, N, D); returns (attn_output (B, M, H, D), None)."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    from retrieve_generate_model.kernels import source_biased_attention

    layer = getattr(module, "layer_idx", None)
    if (source_ids is None and source_bias is None) or (source_layers is not None and layer not in source_layers):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if source_ids is None or source_bias is None:
        raise ValueError("source-biased attention needs both source_ids (B, N) and source_bias (B, S)")
    if dropout:
        raise ValueError(f"source-biased attention has no dropout (got {dropout}); SmolLM2 trains without")
    B, H, M, _ = query.shape
    N = key.shape[2]
    if tuple(source_ids.shape) != (B, N):
        raise ValueError(f"source_ids must give the source of every key, (B={B}, N={N}) with the cached ones, got "
                         f"{tuple(source_ids.shape)}")
    groups = H // key.shape[1]  # GQA: each key/value head serves `groups` query heads
    key = repeat_kv(key, groups).to(query.dtype)  # (B, H, N, D)
    value = repeat_kv(value, groups).to(query.dtype)
    keys = None
    if M == N and attention_mask is not None:
        keys = _is_causal_with_key_padding(attention_mask)
    if M == N and (attention_mask is None or keys is not None):
        ids, bias = _with_padding_source(source_ids, source_bias, keys)
        out = source_biased_attention(query, key, value, ids, bias, scaling, causal=True)  # (B, H, M, D)
    else:
        out = _masked_attention(query, key, value, attention_mask, source_ids, source_bias, scaling)
    return out.transpose(1, 2).contiguous(), None  # (B, M, H, D)


def register() -> None:
    """Register `source_biased_sdpa` (and SDPA's masks) under `ATTENTION` in transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, source_biased_sdpa)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def use_source_bias(model) -> None:
    """Switch ``model`` (a transformers causal LM, or peft's wrapper of one) to source-biased attention, in place.
    Calls without ``source_ids``/``source_bias`` still run plain SDPA."""
    register()
    model.set_attn_implementation(ATTENTION)


__all__ = ["ATTENTION", "PAD_BIAS", "last_layers", "register", "retrieval_bias", "source_biased_sdpa",
           "token_sources", "tower_bias", "use_source_bias"]

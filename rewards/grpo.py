"""Group Relative Policy Optimization (GRPO, Shao et al. 2024, DeepSeekMath), as small named functions.

For each prompt the policy samples a group of G completions; each completion's advantage is its reward relative to
its group (no value network): ``A = (r - mean(group)) / (std(group) + eps)``. The policy is updated on the clipped
importance ratio of PPO, token by token, with a KL penalty to a reference policy (here the base model with its
adapters disabled), using the unbiased, always non-negative estimator ``k3 = exp(q - p) - (q - p) - 1`` with ``p``
the policy's and ``q`` the reference's log-probability of the sampled token (Schulman 2020)::

    loss = -mean_tokens( min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) - beta * k3 )

Each sequence's tokens are averaged first, then the sequences (GRPO's per-sequence normalization). ``old_logp`` is
the policy that sampled: on the first update of a batch the ratio is 1 and the clip is inactive; it matters when a
batch is reused for several updates (``updates_per_batch``).

All functions take tensors shaped (B, T) for B completions of T token positions and a mask of the positions that
are the policy's own decisions (prompt, padding and tokens forced by the layout are 0).
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(P, G) rewards of P groups of G completions -> their advantages, normalized within each group.

    A group whose completions all score the same teaches nothing: its advantages are 0.

    >>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]]))
    tensor([[ 0.8659, -0.8659, -0.8659,  0.8659],
            [ 0.0000,  0.0000,  0.0000,  0.0000]])
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be (groups, group size), got shape {tuple(rewards.shape)}")
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probabilities: ``exp(d) - d - 1``
    with ``d = ref_logp - logp``; zero where the two agree, positive elsewhere.

    >>> k3_kl(torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.0]))
    tensor([0.0000, 0.7183])
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_objective(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token clipped surrogate ``min(ratio * A, clip(ratio) * A)`` (to maximize) and where the clip
    bound (1.0 there). ``advantages``: (B,) per sequence or (B, T) per token.

    >>> obj, clipped = clipped_objective(torch.log(torch.tensor([[1.5, 0.5]])), torch.zeros(1, 2), torch.ones(1))
    >>> obj, clipped
    (tensor([[1.2000, 0.5000]]), tensor([[1., 0.]]))
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(logp - old_logp)
    unclipped, clipped = ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    return torch.minimum(unclipped, clipped), (clipped < unclipped).float()


def masked_sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's masked tokens, then over sequences (a sequence without tokens counts 0).

    >>> masked_sequence_mean(torch.tensor([[1.0, 3.0, 9.0], [4.0, 0.0, 0.0]]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    tensor(3.)
    """
    mask = mask.to(values.dtype)
    per_sequence = (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return per_sequence.mean()


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, clip: float = 0.2, beta: float = 0.04) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss to minimize and its parts for the log: ``kl`` (mean k3 to the reference, 0 without one),
    ``clip_fraction`` and ``ratio`` (mean importance ratio on the decision tokens).

    >>> logp = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]])).requires_grad_()
    >>> loss, stats = grpo_loss(logp, logp.detach(), logp.detach(), torch.tensor([1.0, -1.0]), torch.ones(2, 2))
    >>> stats["kl"], stats["ratio"]
    (0.0, 1.0)
    >>> loss.backward(); logp.grad   # descending it raises the better completion's tokens, lowers the worse one's
    tensor([[-0.2500, -0.2500],
            [ 0.2500,  0.2500]])
    """
    objective, clipped = clipped_objective(logp, old_logp, advantages, clip)
    kl = k3_kl(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    loss = -masked_sequence_mean(objective - beta * kl, mask)
    with torch.no_grad():
        stats = {"kl": float(masked_sequence_mean(kl, mask)),
                 "clip_fraction": float(masked_sequence_mean(clipped, mask)),
                 "ratio": float(masked_sequence_mean(torch.exp(logp - old_logp), mask))}
    return loss, stats


def decision_logprobs(logits: torch.Tensor, tokens: torch.Tensor, allowed: torch.Tensor | None = None,
                      temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities of ``tokens`` (B, T) under ``logits`` (B, T, V), each position's distribution restricted to
    its ``allowed`` tokens (B, T, V) bool when given — the policy of constrained decoding, which samples only what the
    layout allows there — and tempered like the sampler.

    >>> logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0]]])
    >>> decision_logprobs(logits, torch.tensor([[1]])).exp(), decision_logprobs(
    ...     logits, torch.tensor([[1]]), torch.tensor([[[False, True, True, False]]])).exp()
    (tensor([[0.2500]]), tensor([[0.5000]]))
    """
    scores = logits.float() / temperature
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.log_softmax(scores, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)

"""GRPO's maths on hand-built tensors, and a toy policy that a few GRPO steps teach."""

from __future__ import annotations

import doctest

import torch

import rewards.grpo
from rewards.grpo import clipped_objective, decision_logprobs, group_advantages, grpo_loss, k3_kl


def test_the_module_doctests_pass():
    assert doctest.testmod(rewards.grpo).failed == 0


def test_group_advantages_are_normalized_within_each_group():
    r = torch.tensor([[3.0, 1.0, 2.0], [0.0, 0.0, 5.0], [1.0, 1.0, 1.0]])
    a = group_advantages(r, eps=0.0)
    torch.testing.assert_close(a[:2].mean(dim=1), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(a[:2].std(dim=1), torch.ones(2), atol=1e-6, rtol=0)
    assert torch.equal(group_advantages(r)[2], torch.zeros(3))  # nothing to learn from a tie
    assert torch.argsort(a[0]).tolist() == [1, 2, 0]  # the order of the rewards is kept


def test_k3_is_an_unbiased_estimate_of_the_kl():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.2, 0.6])
    exact = float((p * (p / q).log()).sum())
    expected_k3 = float((p * k3_kl(p.log(), q.log())).sum())  # the expectation under the policy's samples
    assert abs(expected_k3 - exact) < 1e-6
    assert (k3_kl(torch.randn(50), torch.randn(50)) >= 0).all() and float(k3_kl(p.log(), p.log()).abs().max()) == 0


def test_the_clip_bounds_the_ratio_in_the_direction_of_the_advantage():
    ratios = torch.tensor([[0.5, 0.9, 1.1, 1.5]])
    logp, old = ratios.log(), torch.zeros(1, 4)
    up, clipped_up = clipped_objective(logp, old, torch.tensor([1.0]), clip=0.2)
    torch.testing.assert_close(up, torch.tensor([[0.5, 0.9, 1.1, 1.2]]))  # gains beyond 1.2 are not counted
    assert clipped_up.tolist() == [[0.0, 0.0, 0.0, 1.0]]
    down, clipped_down = clipped_objective(logp, old, torch.tensor([-1.0]), clip=0.2)
    torch.testing.assert_close(down, torch.tensor([[-0.8, -0.9, -1.1, -1.5]]))  # nor are falls below 0.8
    assert clipped_down.tolist() == [[1.0, 0.0, 0.0, 0.0]]


def test_decision_logprobs_renormalize_over_the_allowed_tokens():
    logits = torch.randn(2, 3, 7)
    tokens = torch.tensor([[1, 2, 3], [0, 4, 6]])
    allowed = torch.zeros(2, 3, 7, dtype=torch.bool)
    allowed[..., :5] = True
    allowed[1, 2, 6] = True
    got = decision_logprobs(logits, tokens, allowed, temperature=0.5)
    for b in range(2):
        for t in range(3):
            scores = logits[b, t, allowed[b, t]] / 0.5
            ids = allowed[b, t].nonzero().squeeze(1).tolist()
            expected = torch.log_softmax(scores, 0)[ids.index(int(tokens[b, t]))]
            torch.testing.assert_close(got[b, t], expected)


def test_a_few_grpo_steps_teach_a_toy_policy():
    """Three prompts, five tokens: the reward is 1 for each prompt's own token; GRPO must find them."""
    torch.manual_seed(0)
    table = torch.zeros(3, 5, requires_grad=True)  # the policy: one row of logits per prompt
    reference = torch.zeros(3, 5)
    target = torch.tensor([4, 0, 2])
    optimizer = torch.optim.Adam([table], lr=0.1)
    means = []
    for _ in range(40):
        prompts = torch.arange(3).repeat_interleave(8)  # 3 groups of 8
        with torch.no_grad():
            tokens = torch.multinomial(torch.softmax(table[prompts], -1), 1)  # (24, 1)
        rewards = (tokens.squeeze(1) == target[prompts]).float()
        means.append(float(rewards.mean()))
        advantages = group_advantages(rewards.view(3, 8)).view(-1)
        logp = decision_logprobs(table[prompts][:, None], tokens)
        ref = decision_logprobs(reference[prompts][:, None], tokens)
        loss, stats = grpo_loss(logp, logp.detach(), ref, advantages, torch.ones_like(logp), beta=0.01)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert sum(means[:5]) / 5 < 0.35 and sum(means[-5:]) / 5 > 0.9, means
    assert stats["kl"] > 0  # it moved away from the uniform reference to get there

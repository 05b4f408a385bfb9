"""The answer-span head: span search against brute force, the marginal loss, the bilinear scores."""

from __future__ import annotations

import doctest
import math
import random

import torch

import retrieve_generate_model.span_head as span_head
from retrieve_generate_model.span_head import SpanHead, best_span, span_loss


def test_doctests():
    assert doctest.testmod(span_head).failed == 0


def test_best_span_is_the_brute_force_optimum_inside_the_allowed_ranges():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 30)
        start, end = torch.randn(n), torch.randn(n)
        cuts = sorted(rng.sample(range(n + 1), k=min(n + 1, rng.randint(2, 5))))
        ranges = [(a, b) for a, b in zip(cuts, cuts[1:]) if rng.random() < 0.7]
        max_tokens = rng.randint(1, 6)
        candidates = [(i, j) for a, b in ranges for i in range(a, b) for j in range(i, min(b, i + max_tokens))]
        got = best_span(start, end, ranges, max_tokens)
        if not candidates:
            assert got is None
            continue
        best = max(float(start[i] + end[j]) for i, j in candidates)
        assert got in candidates and math.isclose(float(start[got[0]] + end[got[1]]), best, rel_tol=1e-6)


def test_span_loss_marginalizes_over_occurrences():
    start = torch.tensor([0.0, 2.0, 0.0, 2.0])
    end = torch.tensor([0.0, 0.0, 3.0, 0.0])
    one = span_loss(start, end, [1], [2])
    both = span_loss(start, end, [1, 3], [2])  # the answer also occurs at 3: more probability on the gold
    assert both < one
    exact = -(start.log_softmax(-1)[[1, 3]].logsumexp(-1) + end.log_softmax(-1)[2]) / 2
    assert torch.isclose(both, exact)


def test_head_scores_depend_on_the_query_state():
    torch.manual_seed(0)
    head = SpanHead(hidden=16, rank=4)
    tokens = torch.randn(5, 16)
    s1, e1 = head(tokens, torch.randn(16))
    s2, e2 = head(tokens, torch.randn(16))
    assert s1.shape == e1.shape == (5,) and not torch.allclose(s1, s2) and not torch.allclose(e1, e2)
    # trained on one query, the head points at the gold position
    query = torch.randn(16)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(100):
        loss = span_loss(*head(tokens, query), [3], [4])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    start, end = head(tokens, query)
    assert best_span(start, end, [(0, 5)], 3) == (3, 4)

"""The answer-span head: where in the sources the answer starts and ends, read off the generator's own states.

The generator writes the answer line token by token, but an extractive answer is a choice of two positions, and
teaching it as next-token prediction gives one signal per answer token. The head scores every source token as the
answer's start and as its end (the SQuAD-style extractive reader of Devlin et al. 2019, here on a decoder), so each
training example supervises all positions at once. Its inputs are the generator's last hidden states:

- the source tokens' states. The generator is causal: a token's state has read only what precedes it, so the
  layout puts the question before the sources too (`JointConfig.question_first`) and the states know what is asked;
- the query state: the generator's state where it is about to write the answer, after it has read everything and
  written its route and the sources it relies on.

    score_start[i] = w_s · h_i + (A_s h_i) · (B_s q) / sqrt(rank)        (and likewise for the end)

The decoder picks the best span (start <= end, at most ``max_tokens`` tokens, inside one source the model relies
on) and feeds its tokens to the generator, which then writes its quotes as before.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SpanHead(nn.Module):
    def __init__(self, hidden: int, rank: int = 64):
        super().__init__()
        self.rank = rank
        self.token = nn.Linear(hidden, 2)  # (start, end) from the token alone
        self.keys = nn.Linear(hidden, 2 * rank, bias=False)  # the token's side of the bilinear (start | end)
        self.queries = nn.Linear(hidden, 2 * rank, bias=False)  # the query state's side

    def forward(self, tokens: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` [T, H] source-token states, ``query`` [H]: (start logits [T], end logits [T])."""
        tokens, query = tokens.float(), query.float()
        keys = self.keys(tokens).view(-1, 2, self.rank)  # [T, 2, r]
        q = self.queries(query).view(2, self.rank)  # [2, r]
        scores = self.token(tokens) + (keys * q).sum(-1) / math.sqrt(self.rank)  # [T, 2]
        return scores[:, 0], scores[:, 1]


def span_loss(start: torch.Tensor, end: torch.Tensor, starts: list[int], ends: list[int]) -> torch.Tensor:
    """Negative log-likelihood of the gold starts and ends, each marginalized over the answer's occurrences."""
    s, e = start.log_softmax(-1), end.log_softmax(-1)
    return -(s[starts].logsumexp(-1) + e[ends].logsumexp(-1)) / 2


def best_span(start: torch.Tensor, end: torch.Tensor, allowed: list[tuple[int, int]], max_tokens: int
              ) -> tuple[int, int] | None:
    """The (first, last) token positions maximizing start[first] + end[last] with first <= last < first +
    max_tokens and both inside one of the ``allowed`` [begin, stop) ranges; None when no range is non-empty.

    >>> best_span(torch.tensor([0., 5., 1., 9.]), torch.tensor([0., 0., 7., 8.]), [(0, 3)], 2)
    (1, 2)
    """
    best, best_score = None, -math.inf
    for begin, stop in allowed:
        if stop <= begin:
            continue
        s, e = start[begin:stop].detach().float(), end[begin:stop].detach().float()
        n = stop - begin
        scores = s[:, None] + e[None, :]  # [first, last]
        i = torch.arange(n)
        band = (i[None, :] >= i[:, None]) & (i[None, :] < i[:, None] + max_tokens)
        scores = scores.masked_fill(~band, -math.inf)
        flat = int(scores.argmax())
        score = float(scores.view(-1)[flat])
        if score > best_score:
            best, best_score = (begin + flat // n, begin + flat % n), score
    return best

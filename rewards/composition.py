"""The composed reward: a weighted sum of the reward functions, with every component kept for the logs.

    weights = RewardWeights(answer_f1=1.0, abstention=1.0, brevity=0.0)
    reward = ComposedReward(weights)
    totals = reward(completions, **columns)      # list[float], one per completion
    reward.last                                   # {"answer_f1": [...], "abstention": [...], ...}: every component
    log_means(reward.last)                        # {"answer_f1": 0.61, ...}: each over the rows it applies to

A component that does not apply to a row (None) adds nothing to that row's total; every component is computed and
logged, weighted or not, so that a run shows what it did not optimize too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rewards.functions import REWARDS


@dataclass(frozen=True)
class RewardWeights:
    """The weight of each reward function (``rewards.functions``) in the total; 0 leaves it out of the total."""

    answer_f1: float = 1.0
    answer_exact_match: float = 0.0
    quote_validity: float = 0.5
    citation_support: float = 0.5
    citation_precision: float = 0.0
    citation_recall: float = 0.0
    format_validity: float = 0.5
    abstention: float = 1.0
    brevity: float = 0.2
    retrieval: float = 0.2


def compose(completions: Sequence[str], weights: RewardWeights | None = None, **columns: Any
            ) -> tuple[list[float], dict[str, list[float | None]]]:
    """Each completion's total ``sum_i w_i * r_i`` over the components that apply to it, and every component.

    >>> totals, parts = compose(["route: abstain", "route: answer\\nsources: [1]\\nanswer: Paris"],
    ...                         RewardWeights(brevity=0.0), answers=[[], ["Paris"]], answerable=[False, True],
    ...                         sources=[["Paris is the capital."], ["Paris is the capital."]])
    >>> totals, parts["abstention"], parts["answer_f1"], parts["citation_support"]
    ([1.5, 1.5], [1.0, 0.0], [None, 1.0], [None, 0.0])
    """
    weights = weights or RewardWeights()
    parts = {name: fn(completions, **columns) for name, fn in REWARDS.items()}
    totals = [0.0] * len(completions)
    for name, w in asdict(weights).items():
        if w:
            for i, value in enumerate(parts[name]):
                if value is not None:
                    totals[i] += w * value
    return totals, parts


def log_means(parts: dict[str, list[float | None]]) -> dict[str, float | None]:
    """Each component's mean over the rows it applies to (None where it applied to none), for a step's log.

    >>> log_means({"answer_f1": [1.0, None, 0.0], "retrieval": [None]})
    {'answer_f1': 0.5, 'retrieval': None}
    """
    out: dict[str, float | None] = {}
    for name, values in parts.items():
        defined = [v for v in values if v is not None]
        out[name] = sum(defined) / len(defined) if defined else None
    return out


class ComposedReward:
    """`compose` as one reward function (TRL's convention), keeping the last batch's components in ``last``."""

    __name__ = "composed_reward"

    def __init__(self, weights: RewardWeights | None = None):
        self.weights = weights or RewardWeights()
        self.last: dict[str, list[float | None]] = {}

    def __call__(self, completions: Sequence[str], **columns: Any) -> list[float]:
        totals, self.last = compose(completions, self.weights, **columns)
        return totals

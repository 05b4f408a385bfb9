"""Rewards: pure batch functions scoring the joint model's completions, and their weighted composition.

`rewards.functions` holds one function per concern (answer F1 and exact match, quote validity, citation support,
precision and recall, format validity, abstention, brevity, retrieval), `rewards.composition` the weighted sum that
reinforcement learning optimizes, `rewards.completion` the reading of a completion's layout.
"""

from rewards.completion import Completion, parse
from rewards.composition import ComposedReward, RewardWeights, compose, log_means
from rewards.functions import REWARDS

__all__ = ["REWARDS", "ComposedReward", "Completion", "RewardWeights", "compose", "log_means", "parse"]

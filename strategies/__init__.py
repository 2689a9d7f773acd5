"""Flower strategies of deai-flower (import path ``deai_flower.strategies``)."""

from .commit_reveal import CommitRevealStrategy, RoundReport
from .rules import AGGREGATION_RULES, RevealedUpdate, aggregate, canonical_order

__all__ = [
    "AGGREGATION_RULES",
    "CommitRevealStrategy",
    "RevealedUpdate",
    "RoundReport",
    "aggregate",
    "canonical_order",
]

"""Flower strategies of deai-flower (import path ``deai_flower.strategies``)."""

from .commit_reveal import CommitRevealStrategy, RoundReport
from .rules import RULES, RevealedUpdate, aggregate, canonical_order, minimum_updates

__all__ = [
    "RULES",
    "CommitRevealStrategy",
    "RevealedUpdate",
    "RoundReport",
    "aggregate",
    "canonical_order",
    "minimum_updates",
]

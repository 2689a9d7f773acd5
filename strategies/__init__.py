"""Flower strategies of deai-flower (import path ``deai_flower.strategies``).

The aggregation rules attesters run are protocol core: :mod:`deai_flower.protocol.rules`.
"""

from .commit_reveal import CommitRevealStrategy, RoundReport

__all__ = ["CommitRevealStrategy", "RoundReport"]

"""Flower strategies of deai-flower (import path ``deai_flower.strategies``).

:mod:`.commit_reveal` is the coordinator's round loop and phases; :mod:`.admission`,
:mod:`.relay` and :mod:`.transport` are the node admission, relaying and messaging it uses.

The aggregation rules attesters run are protocol core: :mod:`deai_flower.protocol.rules`.
"""

from .commit_reveal import CommitRevealStrategy, RoundReport

__all__ = ["CommitRevealStrategy", "RoundReport"]

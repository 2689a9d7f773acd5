"""The contribution score a run's spec names: one dispatch for attesters and ``deai verify``.

``shares`` (:mod:`.shares`, the default), ``alignment`` (:mod:`.scores`) or ``loss``
(validation losses the caller evaluates, with torch). It sits above the score modules, which share
:mod:`.piecewise`'s sums and never import each other's dispatch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from deai_flower.errors import ProtocolError
from deai_flower.protocol.rules import RevealedUpdate
from deai_flower.protocol.scores import alignment_scores, loss_improvement_scores
from deai_flower.protocol.shares import share_scores
from deai_flower.protocol.spec import RunSpec

__all__ = ["ValidationLosses", "contribution_scores"]

#: ``(updates, global_arrays) -> (the global model's validation loss, address -> each
#: update's)``: the spec's model evaluated on the spec's validation set (with torch, so
#: the caller's).
ValidationLosses = Callable[[Sequence[RevealedUpdate], Mapping[str, np.ndarray]], tuple[float, dict[str, float]]]


def contribution_scores(spec: RunSpec, updates: Sequence[RevealedUpdate], global_arrays: Mapping[str, np.ndarray], *,
                        validation_losses: ValidationLosses | None = None,
                        previous_global: Mapping[str, np.ndarray] | None = None) -> dict[str, int]:  # fmt: skip
    """Address -> score of each aggregated update, by the score the run's spec names
    (docs/protocol.md §4.3): :func:`alignment_scores` from the updates and the round's
    global model, :func:`share_scores` (``previous_global``: the model before it, for the
    public step), or :func:`loss_improvement_scores` from ``validation_losses``.

    Raises:
        ProtocolError: a loss-scored run without ``validation_losses``.
    """
    if spec.incentives.score == "alignment":
        return alignment_scores(updates, global_arrays)
    if spec.incentives.score == "shares":  # noise-calibrated equal shares; previous_global: the public step
        return share_scores(spec, updates, global_arrays, previous_global=previous_global)
    if validation_losses is None:
        raise ProtocolError("a loss-scored run needs its validation losses to score updates")
    reference, losses = validation_losses(updates, global_arrays)
    return loss_improvement_scores(reference, losses)

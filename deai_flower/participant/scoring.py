"""What an attester of a loss-scored run evaluates for the round outcome's scores
(docs/protocol.md §4.3): validation losses on the set the spec names by CID.

The scores themselves, and which score a run uses, are
:func:`~deai_flower.protocol.contribution.contribution_scores`'s; this module only evaluates
the spec's model (with torch, :mod:`deai_flower.validation_loss`) for it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import ProtocolError
from ..protocol.rules import RevealedUpdate
from ..protocol.contribution import ValidationLosses
from ..protocol.validation import validation_set
from ..storage import decode_arrays
from .run_view import RunView

__all__ = ["validation_losses_of"]

#: id(view) -> (the view, weakly; its validation set)
_VALIDATION: dict[int, tuple[weakref.ref[RunView], tuple[np.ndarray, np.ndarray]]] = {}
_LOCK = threading.Lock()


def _validation_of(view: RunView) -> tuple[np.ndarray, np.ndarray]:
    """The run's validation set, fetched by the spec's CID from the participant's store
    and checked against the data schema (once per view)."""
    with _LOCK:
        entry = _VALIDATION.get(id(view))
    if entry is not None and entry[0]() is view:
        return entry[1]
    cid = view.spec.incentives.validation_cid
    schema = view.spec.data
    arrays = decode_arrays(view.store.get(cid), max_bytes=view.spec.max_blob_bytes)
    try:
        cached = validation_set(arrays, num_features=schema.num_features, num_classes=schema.num_classes)
    except ProtocolError as exc:
        raise ProtocolError(f"run {view.run_id}: validation set {cid}: {exc}") from exc
    with _LOCK:
        for key in [k for k, (ref, _) in _VALIDATION.items() if ref() is None]:
            del _VALIDATION[key]
        _VALIDATION[id(view)] = (weakref.ref(view), cached)
    return cached


def validation_losses_of(view: RunView) -> ValidationLosses | None:
    """How this attester evaluates validation losses for the run's scores (None: the run is
    not loss-scored, and nothing needs torch)."""
    if view.spec.incentives.score != "loss":
        return None

    def losses(updates: Sequence[RevealedUpdate],
               global_arrays: Mapping[str, np.ndarray]) -> tuple[float, dict[str, float]]:  # fmt: skip
        from ..validation_loss import validation_loss, validation_losses  # torch: only loss-scored runs

        x, y = _validation_of(view)
        reference = validation_loss(view.model, global_arrays, x, y)
        return reference, validation_losses(view.model, {u.participant: u.arrays for u in updates}, x, y)

    return losses

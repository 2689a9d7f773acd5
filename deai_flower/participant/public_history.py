"""The public history a ``shares``-scored round is judged against (docs/incentives.md):
the global model before the round's one, so that the public step (the change between
them, which anyone can echo) is removed before any update is tested for agreement.

Read from the chain alone: the run's initial model (its ``RunCreated`` parameters) and
the ``RoundFinalized`` results in chain order; the model round ``r`` trains from is the
last result finalized before it, and the one before that is the previous model.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..protocol.cid import cid_from_bytes
from .run_view import RunView

__all__ = ["previous_global_cid", "previous_model_cid"]


def previous_model_cid(initial_cid: str, finalized: Iterable[tuple[int, str]], round_id: int) -> str | None:
    """The model before round ``round_id``'s global model: ``finalized`` is ``(round,
    result CID)`` in chain order; None in a run's first finalized stretch (no public step)."""
    models = [initial_cid] + [cid for r, cid in finalized if int(r) < int(round_id)]
    return models[-2] if len(models) >= 2 else None


def previous_global_cid(view: RunView, round_id: int) -> str | None:
    """:func:`previous_model_cid` for ``view``'s run, from its chain; None in round 1."""
    params = view.contract.run_params(view.run_id) or {}
    if "initialModelCid" not in params:
        return None
    finalized = [(int(e["round"]), cid_from_bytes(bytes(e["resultCid"])))
                 for e in view.contract.finalized_rounds(view.run_id)]  # fmt: skip
    return previous_model_cid(cid_from_bytes(bytes(params["initialModelCid"])), finalized, round_id)

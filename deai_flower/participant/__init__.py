"""A participant: one silo (key, data, store, chain endpoint, privacy ledger) and the
handlers of its protocol phases, built from the run spec the chain records.

The ClientApp of deployed silos is :data:`deai_flower.participant.app.client_app`;
``deai_flower.apps.client_app`` also serves the simulation's nodes. Names are
imported on first use (PEP 562): Flower starts a ClientApp process for every message,
and one that answers an identity query needs neither torch nor Opacus.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from .handlers import handle_attest, handle_commit, handle_evaluate, handle_reveal, revealed_updates
    from .identity_query import handle_identity
    from .locator import RunLocator
    from .participant import BUNDLED_MODEL_TARGETS, Behaviour, LocalData, Participant, SiloFiles
    from .run_view import RunView, forget_run_views

_WHERE = {
    "handle_attest": ".handlers", "handle_commit": ".handlers", "handle_evaluate": ".handlers",
    "handle_reveal": ".handlers", "revealed_updates": ".handlers",
    "handle_identity": ".identity_query",
    "RunLocator": ".locator",
    "BUNDLED_MODEL_TARGETS": ".participant", "Behaviour": ".participant", "LocalData": ".participant",
    "Participant": ".participant", "SiloFiles": ".participant",
    "RunView": ".run_view", "forget_run_views": ".run_view",
}  # fmt: skip
# (``run_view``, the function, is imported from its module: the name is the module's once
# anything imported it)

__all__ = sorted(_WHERE)

__getattr__ = lazy_exports(globals(), _WHERE)

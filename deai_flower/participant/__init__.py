"""A participant: one silo (key, data, store, chain endpoint, privacy ledger) and the
handlers of its protocol phases, built from the run spec the chain records.

The module-level ClientApp is :data:`deai_flower.participant.app.client_app`.
"""

from .handlers import handle_attest, handle_commit, handle_evaluate, handle_identity, handle_reveal, revealed_updates
from .locator import RunLocator
from .participant import BUNDLED_MODEL_TARGETS, Behaviour, LocalData, Participant, SiloFiles
from .run_view import RunView, forget_run_views, run_view

__all__ = [
    "BUNDLED_MODEL_TARGETS",
    "Behaviour",
    "LocalData",
    "Participant",
    "RunLocator",
    "RunView",
    "SiloFiles",
    "forget_run_views",
    "handle_attest",
    "handle_commit",
    "handle_evaluate",
    "handle_identity",
    "handle_reveal",
    "revealed_updates",
    "run_view",
]

"""A participant's differential privacy: settings, ledger, accounting and DP-SGD training.

Cut by concern, as Opacus is:

* :mod:`.settings`: :class:`PrivacySettings`, checked when built.
* :mod:`.ledger`: the :class:`PrivacyLedger` of a participant's DP-SGD history, its
  reconciliation with what the chain shows it released, and its state file.
* :mod:`.accounting`: noise calibration. ε itself is protocol, computed by
  :func:`deai_flower.protocol.epsilon.epsilon_of` (Opacus' accountants, without torch).
* :mod:`.training`: one round of Opacus DP-SGD (:func:`train_round`), the only module
  here that imports torch and Opacus.

Names are imported on first use, so ledger and accounting code (a silo's lightest
messages, a verifier) never loads torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from .accounting import calibrate_noise
    from .ledger import (
        LedgerReconciliation,
        PrivacyLedger,
        Unconfirmed,
        ledger_path,
        load_ledger,
        reconcile_with_chain,
        save_ledger,
    )
    from .settings import ACCOUNTANTS, GRAD_SAMPLE_MODES, PrivacySettings
    from .training import RoundTraining, choose_grad_sample_mode, train_round

__all__ = [
    "ACCOUNTANTS",
    "GRAD_SAMPLE_MODES",
    "LedgerReconciliation",
    "PrivacyLedger",
    "PrivacySettings",
    "RoundTraining",
    "Unconfirmed",
    "calibrate_noise",
    "choose_grad_sample_mode",
    "ledger_path",
    "load_ledger",
    "reconcile_with_chain",
    "save_ledger",
    "train_round",
]

_WHERE = {
    **dict.fromkeys(("ACCOUNTANTS", "GRAD_SAMPLE_MODES", "PrivacySettings"), ".settings"),
    **dict.fromkeys(("LedgerReconciliation", "PrivacyLedger", "Unconfirmed", "ledger_path", "load_ledger",
                     "reconcile_with_chain", "save_ledger"), ".ledger"),  # fmt: skip
    "calibrate_noise": ".accounting",
    **dict.fromkeys(("RoundTraining", "choose_grad_sample_mode", "train_round"), ".training"),
}
__getattr__ = lazy_exports(globals(), _WHERE)

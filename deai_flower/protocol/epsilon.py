"""ε of a DP-SGD history: the one computation participants, attesters and ``deai verify`` share.

A history is a participant's list of ``(noise_multiplier σ, sample_rate q, steps)``
entries, one per trained round, as its reveals record them. Its ε at ``δ`` is what
Opacus 1.6.0 (:data:`OPACUS_VERSION`) computes for it, in these steps:

1. Adjacent entries with equal ``(σ, q)`` are merged (their steps added), as Opacus'
   accountants merge steps; entries of 0 steps are then dropped. An empty history
   spends ε = 0; one with any ``σ <= 0`` (a non-private round) spends ε = ∞.
2. ``"rdp"``: Rényi DP of the Poisson-subsampled Gaussian at the orders
   ``RDPAccountant.DEFAULT_ALPHAS`` (:data:`RDP_ORDERS`: 1.1, 1.2, …, 10.9, then 12, 13,
   …, 63; 151 orders). Each entry's one-step curve (``compute_rdp(steps=1)``) is
   multiplied by its steps, the curves are summed in history order, and
   ``get_privacy_spent`` converts the sum to ε at δ (the best order's bound).
3. ``"prv"``: ``PRVAccountant.get_epsilon(delta)`` on the merged history with Opacus'
   defaults ``eps_error = 0.01`` (:data:`PRV_EPS_ERROR`) and ``delta_error = δ / 1000``;
   the upper bound of its estimate is the ε.

The maths is Opacus' own, not a rewrite: :func:`_opacus_accountants` loads
``opacus/accountants/{rdp,prv}.py`` and ``analysis/`` from the installed, pinned Opacus
under a private module name, without running ``opacus/__init__`` (which imports torch),
so a verifier needs neither torch nor a GPU stack to recompute ε. Only their shared base
class is replaced, by one that keeps the history (the real one imports Opacus' optimizer,
and with it torch, for a training hook ε never uses); tests assert the result equals
``opacus.accountants``' bit for bit.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import sys
import threading
import types
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from deai_flower.errors import ConfigError, ProtocolError

__all__ = ["ACCOUNTANTS", "OPACUS_VERSION", "PRV_EPS_ERROR", "RDP_ORDERS", "coalesce", "epsilon_of"]

#: The accountants a run may name ("prv": privacy random variables, tighter and slower;
#: "rdp": Rényi DP).
ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")

#: The Opacus release whose accountants define ε (pinned in ``pyproject.toml``): another
#: release may differ in the last bits, which would turn a verifier's verdict.
OPACUS_VERSION = "1.6.0"

#: Opacus' ``RDPAccountant.DEFAULT_ALPHAS``, the Rényi orders the RDP accountant searches.
RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))

#: Opacus' default ``eps_error`` of ``PRVAccountant.get_epsilon`` (its ``delta_error`` is δ/1000).
PRV_EPS_ERROR = 0.01

# The private name Opacus' accountants package is loaded under (see _opacus_accountants).
_LOADED_AS = f"{__name__}._opacus_accountants"

_LOADING = threading.Lock()  # participants account in threads: load the modules once

History = list[tuple[float, float, int]]


class _HistoryAccountant:
    """Stands in for ``opacus.accountants.accountant.IAccountant`` as the base of the
    loaded ``RDPAccountant`` and ``PRVAccountant``: their ε reads only ``history``."""

    def __init__(self) -> None:
        self.history: list[tuple[float, float, int]] = []


def _opacus_accountants(name: str) -> Any:
    """Opacus' ``accountants.<name>`` module (``"rdp"`` or ``"prv"``), loaded from the
    installed package's files without importing ``opacus`` itself (so without torch);
    ``prv`` only when asked for, as it imports most of scipy.

    Raises:
        ProtocolError: Opacus is missing, or is not the release ε is defined by.
    """
    with _LOADING:
        if _LOADED_AS not in sys.modules:
            _install_opacus_accountants()
        return importlib.import_module(f"{_LOADED_AS}.{name}")


def _install_opacus_accountants() -> None:
    """Register Opacus' ``accountants`` folder as the package :data:`_LOADED_AS`, with
    :class:`_HistoryAccountant` as its ``accountant`` module's ``IAccountant``."""
    try:
        installed = metadata.version("opacus")
    except metadata.PackageNotFoundError as exc:
        raise ProtocolError(f"ε is defined by Opacus' accountants: pip install opacus=={OPACUS_VERSION}") from exc
    if installed != OPACUS_VERSION:
        raise ProtocolError(f"ε is defined by Opacus {OPACUS_VERSION}'s accountants, but Opacus {installed} is "
                            f"installed (pip install opacus=={OPACUS_VERSION})")  # fmt: skip
    found = importlib.util.find_spec("opacus")  # a top-level package: found, not executed
    if found is None or not found.submodule_search_locations:
        raise ProtocolError(f"cannot locate Opacus' files (pip install opacus=={OPACUS_VERSION})")
    package = types.ModuleType(_LOADED_AS)
    package.__path__ = [str(Path(next(iter(found.submodule_search_locations))) / "accountants")]
    package.__package__ = _LOADED_AS
    base = types.ModuleType(f"{_LOADED_AS}.accountant")
    base.IAccountant = _HistoryAccountant  # type: ignore[attr-defined]
    sys.modules[base.__name__], sys.modules[_LOADED_AS] = base, package


def coalesce(history: History) -> History:
    """Merge adjacent entries with equal ``(σ, q)``, as Opacus' accountants do, and drop
    entries of no steps.

    Composition makes ``k`` rounds of ``s`` steps the same mechanism as one run of
    ``k * s`` steps, which is exactly what a participant's noise was calibrated for;
    merging keeps the numerics (notably PRV's) identical to the calibration's.
    """
    merged: History = []
    for sigma, rate, steps in history:
        if merged and merged[-1][0] == sigma and merged[-1][1] == rate:
            merged[-1] = (sigma, rate, merged[-1][2] + steps)
        else:
            merged.append((float(sigma), float(rate), int(steps)))
    return [entry for entry in merged if entry[2] > 0]


@functools.lru_cache(maxsize=1024)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    # RDP composes additively and linearly in steps, so one step's curve (which costs
    # ~0.1 s over the 151 orders) is computed once per (σ, q) and scaled.
    rdp = _opacus_accountants("rdp")
    curve = rdp.privacy_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                             orders=rdp.RDPAccountant.DEFAULT_ALPHAS)  # fmt: skip
    curve = np.asarray(curve, dtype=np.float64)
    curve.setflags(write=False)
    return curve


def epsilon_of(history: History, *, delta: float, accountant: str) -> float:
    """The cumulative ε that ``history`` spends at ``delta`` under ``accountant`` (see the
    module's description for the exact computation).

    Raises:
        ConfigError: ``accountant`` is not one of :data:`ACCOUNTANTS`.
        ProtocolError: Opacus is missing or not :data:`OPACUS_VERSION`.
    """
    if accountant not in ACCOUNTANTS:
        raise ConfigError(
            f"privacy.accountant must be one of: {', '.join(ACCOUNTANTS)} (got {accountant!r})"
        )
    merged = coalesce(history)
    if not merged:
        return 0.0
    if any(sigma <= 0.0 for sigma, _, _ in merged):
        return math.inf
    if accountant == "rdp":
        # RDPAccountant.get_privacy_spent over the history, with each (σ, q) curve memoised.
        rdp = _opacus_accountants("rdp")
        total = sum(_rdp_one_step(sigma, rate) * steps for sigma, rate, steps in merged)
        eps, _ = rdp.privacy_analysis.get_privacy_spent(orders=rdp.RDPAccountant.DEFAULT_ALPHAS, rdp=total,
                                                        delta=delta)  # fmt: skip
        return float(eps)
    accountant_prv = _opacus_accountants("prv").PRVAccountant()
    accountant_prv.history = merged
    with warnings.catch_warnings():
        # PRV bounds its discretisation domain with an RDP estimate, which notes when the
        # best order is the largest one; irrelevant for the PRV epsilon it returns.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(accountant_prv.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))

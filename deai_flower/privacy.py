"""Local DP-SGD training with a per-client privacy ledger that persists across rounds.

Each federated round a client trains the global model on its own data with Opacus'
DP-SGD (per-sample clipping, Gaussian noise, Poisson sampling) and reports how much of
its (epsilon, delta) budget it has spent so far. Three Opacus facts shape the design:

* Wrapping a module twice registers its hooks twice (an error), so every round trains
  a fresh deep copy of the caller's model and the caller's module is never wrapped.
* A new ``PrivacyEngine`` starts with an empty accountant, so the client's accounting
  history, a list of ``(noise_multiplier, sample_rate, steps)``, lives in a
  :class:`PrivacyLedger` that the ClientApp keeps in Flower's ``context.state``; it is
  restored into each round's engine and grows by one entry per round.
* Calibrating the noise every round for the whole budget (``make_private_with_epsilon``)
  would spend the budget again each round, so the noise multiplier is calibrated once
  per client for the planned number of rounds and kept in the ledger.

A client that must survive restarts also keeps its ledger in a JSON state file
(:func:`save_ledger`/:func:`load_ledger`, one file per participant and run), written
atomically after every trained round.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib.util
import json
import math
import os
import secrets
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import AbstractGradSampleModule
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deai_flower.errors import ConfigError, PrivacyBudgetExhaustedError, PrivacyError
from deai_flower.models import get_arrays

__all__ = [
    "ACCOUNTANTS",
    "GRAD_SAMPLE_MODES",
    "LedgerReconciliation",
    "PrivacyLedger",
    "PrivacySettings",
    "RoundTraining",
    "Unconfirmed",
    "choose_grad_sample_mode",
    "ledger_path",
    "load_ledger",
    "save_ledger",
    "train_round",
]

ACCOUNTANTS: tuple[str, ...] = ("prv", "rdp")

# Per-sample-gradient implementation: "hooks", "ghost" or "auto". Hooks materialise
# every example's gradient; ghost clipping computes per-example gradient *norms* without
# them for Linear layers (other layers fall back to per-sample gradients) and then
# backpropagates a second time through the clipped loss. Measured with this trainer,
# one CPU thread, batch 64 (bench/bench_dp.py, samples/s hooks vs ghost): MLP [64] on
# digits (4.8k parameters) 45.9k vs 39.8k; MLP [256, 128] (51k) 11.1k vs 24.0k; CNN on
# digits 11.5k vs 10.2k; CNN on MNIST (55k, 50k of them in its Linear head) 2.7k vs
# 2.4-2.6k over three runs. So ghost pays off only for large all-Linear models, and
# "auto" picks it for models whose every trainable layer is Linear once they hold
# _GHOST_MIN_LINEAR_PARAMETERS parameters. Both modes give the same update (tested);
# "hooks" is also the fallback for a layer ghost clipping rejects.
GRAD_SAMPLE_MODES: tuple[str, ...] = ("auto", "ghost", "hooks")
_GHOST_MIN_LINEAR_PARAMETERS = 8_000
_FALLBACK_GRAD_SAMPLE_MODE = "hooks"

# SGD momentum for local training (private and non-private alike).
MOMENTUM = 0.9

# Slack when comparing a spent epsilon with the budget: calibration targets the budget
# exactly, so float noise must not turn the last planned round into a refusal.
_EPSILON_TOLERANCE = 1e-9

_SECURE_RNG_HINT = (
    "secure_mode needs the 'torchcsprng' package, which is not installed; install a "
    "torchcsprng build matching your PyTorch version (pip install torchcsprng) or set "
    "privacy.secure_mode=false"
)


@dataclass(frozen=True)
class PrivacySettings:
    """A client's differential-privacy configuration.

    ``epsilon=math.inf`` disables DP (plain SGD). ``accountant`` is ``"rdp"`` (Rényi DP,
    fast) or ``"prv"`` (privacy random variables, tighter, slower). ``secure_mode``
    draws noise and samples from a cryptographically secure generator (``torchcsprng``)
    and then ignores seeds. ``grad_sample_mode`` is Opacus' per-sample-gradient
    implementation (``"auto"``, ``"hooks"`` or ``"ghost"``). ``state_dir``, when set, is
    where each client keeps its ledger file so its accounting survives a restart.
    """

    epsilon: float
    delta: float
    max_grad_norm: float
    accountant: str
    secure_mode: bool = False
    grad_sample_mode: str = "auto"
    state_dir: str | None = None

    def __post_init__(self) -> None:
        if not _is_number(self.epsilon) or not self.epsilon > 0:
            raise ConfigError(
                f"privacy.epsilon must be > 0 (got {self.epsilon!r}); "
                "use inf for a non-private run"
            )
        if not _is_number(self.delta) or not 0.0 < self.delta < 1.0:
            raise ConfigError(f"privacy.delta must be in (0, 1) (got {self.delta!r})")
        if (
            not _is_number(self.max_grad_norm)
            or not self.max_grad_norm > 0
            or not math.isfinite(self.max_grad_norm)
        ):
            raise ConfigError(
                f"privacy.max_grad_norm must be a finite number > 0 (got {self.max_grad_norm!r})"
            )
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"privacy.accountant must be one of: {', '.join(ACCOUNTANTS)} "
                f"(got {self.accountant!r})"
            )
        if not isinstance(self.secure_mode, bool):
            raise ConfigError(f"privacy.secure_mode must be a boolean (got {self.secure_mode!r})")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(
                f"privacy.grad_sample_mode must be one of: {', '.join(GRAD_SAMPLE_MODES)} "
                f"(got {self.grad_sample_mode!r})"
            )

    @property
    def private(self) -> bool:
        """Whether training is differentially private (finite epsilon)."""
        return math.isfinite(self.epsilon)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)


# Keys of the ledger's persisted record (a Flower ConfigRecord holds lists or scalars).
_REC_NOISE = "noise_multipliers"
_REC_RATE = "sample_rates"
_REC_STEPS = "steps"
_REC_CALIBRATED = "calibrated_noise_multiplier"
_REC_UNCONFIRMED = ("unconfirmed_entries", "unconfirmed_rounds", "unconfirmed_blocks", "unconfirmed_block_hashes")


@dataclass(frozen=True)
class Unconfirmed:
    """A ledger entry charged for an update not yet seen revealed: ``entry`` (its index in
    the history) was trained for chain round ``round``, which opened at block ``block``
    with hash ``block_hash`` (so that a ledger carried to another chain, e.g. a restarted
    development node with the same contract address, is never judged by that chain)."""

    entry: int
    round: int
    block: int
    block_hash: str


@dataclass
class PrivacyLedger:
    """One client's privacy accounting, carried from round to round.

    ``history`` holds one ``(noise_multiplier, sample_rate, steps)`` entry per trained
    round (``noise_multiplier == 0`` marks a non-private round, which spends an infinite
    epsilon). ``noise_multiplier`` is the value calibrated on first use, or ``None``.
    """

    history: list[tuple[float, float, int]] = field(default_factory=list)
    noise_multiplier: float | None = None
    #: Entries whose update was not yet seen revealed (see :meth:`reconciled`).
    unconfirmed: list[Unconfirmed] = field(default_factory=list)
    #: What the next training's entries are charged for (:meth:`charging`); not stored.
    _charge: tuple[int, Unconfirmed] | None = field(default=None, compare=False, repr=False)

    def epsilon(self, delta: float, accountant: str) -> float:
        """Cumulative epsilon spent at ``delta`` under ``accountant`` (0.0 when empty)."""
        return _epsilon_of(self.history, delta=delta, accountant=accountant)

    def to_record(self) -> dict[str, list[float] | list[int] | float]:
        """Plain lists and scalars suitable for a Flower ``ConfigRecord``."""
        record: dict[str, list[float] | list[int] | float] = {
            _REC_NOISE: [float(sigma) for sigma, _, _ in self.history],
            _REC_RATE: [float(rate) for _, rate, _ in self.history],
            _REC_STEPS: [int(steps) for _, _, steps in self.history],
        }
        # A ConfigRecord cannot hold None, so "not calibrated yet" is an absent key.
        if self.noise_multiplier is not None:
            record[_REC_CALIBRATED] = float(self.noise_multiplier)
        if self.unconfirmed:  # parallel lists: a ConfigRecord holds no mappings
            for key, values in zip(_REC_UNCONFIRMED, zip(*((u.entry, u.round, u.block, u.block_hash)
                                                           for u in self.unconfirmed), strict=True), strict=True):
                record[key] = list(values)  # type: ignore[assignment]
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PrivacyLedger:
        """Rebuild a ledger from :meth:`to_record`'s output (an empty record: new ledger).

        Raises:
            PrivacyError: the record is malformed.
        """
        try:
            sigmas = [float(v) for v in record.get(_REC_NOISE, [])]
            rates = [float(v) for v in record.get(_REC_RATE, [])]
            steps = [int(v) for v in record.get(_REC_STEPS, [])]
            calibrated = record.get(_REC_CALIBRATED)
            noise = None if calibrated is None else float(calibrated)
            columns = [list(record.get(key, [])) for key in _REC_UNCONFIRMED]
            if len({len(c) for c in columns}) != 1:
                raise ValueError("unconfirmed entry lists differ in length")
            unconfirmed = [Unconfirmed(int(e), int(r), int(b), str(h)) for e, r, b, h in zip(*columns, strict=True)]
        except (TypeError, ValueError) as exc:
            raise PrivacyError(f"malformed privacy ledger record: {exc}") from exc
        if any(not 0 <= u.entry < len(sigmas) for u in unconfirmed):
            raise PrivacyError("malformed privacy ledger record: an unconfirmed entry is not in the history")
        if not len(sigmas) == len(rates) == len(steps):
            raise PrivacyError(
                "malformed privacy ledger record: history lists differ in length "
                f"({len(sigmas)}, {len(rates)}, {len(steps)})"
            )
        if any(s < 0 for s in sigmas) or any(not 0 < r <= 1 for r in rates) or any(
            n < 0 for n in steps
        ):
            raise PrivacyError("malformed privacy ledger record: values out of range")
        return cls(history=list(zip(sigmas, rates, steps, strict=True)), noise_multiplier=noise,
                   unconfirmed=unconfirmed)  # fmt: skip

    def charging(self, *, round_id: int, block: int, block_hash: str) -> None:
        """Entries the next training appends are for round ``round_id`` (opened at
        ``block``, ``block_hash``): :meth:`mark_charged` records them as unconfirmed."""
        self._charge = (len(self.history), Unconfirmed(-1, int(round_id), int(block), str(block_hash)))

    def mark_charged(self) -> None:
        """Record the entries appended since :meth:`charging` as unconfirmed."""
        if self._charge is None:
            return
        start, tag = self._charge
        self.unconfirmed.extend(dataclasses.replace(tag, entry=i) for i in range(start, len(self.history)))
        self._charge = None

    def reconciled(self, released: Iterable[tuple[float, float, int]], *, abandoned: Iterable[int] = (),
                   confirmed: Iterable[int] = ()) -> LedgerReconciliation:  # fmt: skip
        """This ledger charged with what was released, and what may still be.

        DP covers released outputs only: an update trained but never revealed (its round
        lapsed, its commit or reveal failed for good, its coordinator was stopped) spent
        nothing, and the chain's revealed history, from which attesters and ``deai
        verify`` recompute ε, does not hold it. ``abandoned``: indices of unconfirmed
        entries whose round closed without this participant's reveal, dropped;
        ``confirmed``: indices of unconfirmed entries now known to stand (revealed, or
        charged on another chain), kept for good. Nothing else is ever dropped.

        ``released``: the participant's revealed ``(σ, q, steps)`` in the closed rounds. A
        released entry that no kept entry matches (same σ and q to 1e-9, same steps:
        revealed numbers are fixed-point) is added, as when the ledger file was lost:
        the ledger never accounts for less than was released.
        """
        unconfirmed = {u.entry: u for u in self.unconfirmed}
        drop = {int(i) for i in abandoned if int(i) in unconfirmed}
        settled = drop | {int(i) for i in confirmed if int(i) in unconfirmed}
        history, tags = [], []
        for i, entry in enumerate(self.history):
            if i in drop:
                continue
            if i in unconfirmed and i not in settled:
                tags.append(dataclasses.replace(unconfirmed[i], entry=len(history)))
            history.append(entry)
        unmatched = [(float(s), float(q), int(n)) for s, q, n in released]
        for entry in history:
            match = next((j for j, r in enumerate(unmatched) if _same_entry(entry, r)), None)
            if match is not None:
                del unmatched[match]
        # Added with this ledger's own floats where one of its entries is the same
        # mechanism (equal entries then still merge exactly in the accountant).
        history += [next((e for e in self.history if _same_entry(e, r)), r) for r in unmatched]
        noise = self.noise_multiplier
        if noise is None and history:
            noise = history[-1][0] or None
        ledger = PrivacyLedger(history=history, noise_multiplier=noise, unconfirmed=tags)
        return LedgerReconciliation(ledger=ledger, dropped=len(drop), added=len(unmatched),
                                    settled=len(settled))  # fmt: skip


def _same_entry(a: tuple[float, float, int], b: tuple[float, float, int]) -> bool:
    """Whether two ``(σ, q, steps)`` entries are the same mechanism, up to fixed-point rounding."""
    return (int(a[2]) == int(b[2]) and math.isclose(a[0], b[0], rel_tol=1e-9, abs_tol=1e-15)
            and math.isclose(a[1], b[1], rel_tol=1e-9, abs_tol=1e-15))  # fmt: skip


@dataclass(frozen=True)
class LedgerReconciliation:
    """:meth:`PrivacyLedger.reconciled`'s answer: the ledger, and how many entries it
    dropped (trained, never revealed), added (revealed, missing from the ledger) and
    settled."""

    ledger: PrivacyLedger
    dropped: int
    added: int
    settled: int = 0  # unconfirmed entries decided (dropped or kept for good)

    @property
    def changed(self) -> bool:
        return bool(self.dropped or self.added or self.settled)


@dataclass(frozen=True)
class RoundTraining:
    """The outcome of one client's local training round.

    ``epsilon`` is cumulative over all of the client's rounds so far, at ``delta``
    (``inf`` for non-private training, whose ``accountant`` is ``"none"``).
    ``train_loss`` is the mean per-example loss on the batches trained on; it is
    computed from private data and is *not* covered by the DP guarantee.
    """

    arrays: dict[str, np.ndarray]
    num_examples: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float
    accountant: str
    train_loss: float


# --- accounting ----------------------------------------------------------------------


def _coalesce(history: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Merge adjacent entries with equal (sigma, q), as Opacus' accountants do.

    Composition makes ``k`` rounds of ``s`` steps the same mechanism as one run of
    ``k * s`` steps, which is exactly what the noise was calibrated for; merging keeps
    the numerics (notably PRV's) identical to the calibration's.
    """
    merged: list[tuple[float, float, int]] = []
    for sigma, rate, steps in history:
        if merged and merged[-1][0] == sigma and merged[-1][1] == rate:
            merged[-1] = (sigma, rate, merged[-1][2] + steps)
        else:
            merged.append((float(sigma), float(rate), int(steps)))
    return [entry for entry in merged if entry[2] > 0]


@functools.lru_cache(maxsize=1024)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    # RDP composes additively and linearly in steps, so one step's curve (which costs
    # ~0.1 s over Opacus' default orders) is computed once per (sigma, q) and scaled.
    curve = rdp_analysis.compute_rdp(
        q=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=1,
        orders=RDPAccountant.DEFAULT_ALPHAS,
    )
    curve = np.asarray(curve, dtype=np.float64)
    curve.setflags(write=False)
    return curve


def _epsilon_of(history: list[tuple[float, float, int]], *, delta: float, accountant: str) -> float:
    if accountant not in ACCOUNTANTS:
        raise ConfigError(
            f"privacy.accountant must be one of: {', '.join(ACCOUNTANTS)} (got {accountant!r})"
        )
    merged = _coalesce(history)
    if not merged:
        return 0.0
    if any(sigma <= 0.0 for sigma, _, _ in merged):
        return math.inf
    if accountant == "rdp":
        # Same computation as opacus' RDPAccountant.get_privacy_spent over the history,
        # with the per-(sigma, q) curve memoised.
        total = sum(_rdp_one_step(sigma, rate) * steps for sigma, rate, steps in merged)
        eps, _ = rdp_analysis.get_privacy_spent(
            orders=RDPAccountant.DEFAULT_ALPHAS, rdp=total, delta=delta
        )
        return float(eps)
    prv = PRVAccountant()
    prv.history = merged
    with warnings.catch_warnings():
        # PRV bounds its discretisation domain with an RDP estimate, which notes when the
        # best order is the largest one; irrelevant for the PRV epsilon it returns.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(prv.get_epsilon(delta=delta))


#: Calibration spends the planned rounds' budget to within this (Opacus'
#: ``get_noise_multiplier`` default), never more than the budget.
_CALIBRATION_TOLERANCE = 0.01
#: Noise multipliers searched: beyond the largest no budget is met (Opacus' MAX_SIGMA);
#: below the smallest a budget is spent to well within the tolerance anyway.
_SIGMA_RANGE = (1e-3, 1e6)


@functools.lru_cache(maxsize=256)
def _calibrate(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """The noise multiplier whose ``steps`` steps at ``sample_rate`` spend an epsilon in
    [target - tolerance, target], by the same accountant that later checks each round.

    Brent's method (scipy) on Opacus' accountant, in a bracket found by doubling, stopped
    at the first probe inside the window: 5 to 8 accountant evaluations. Opacus'
    ``get_noise_multiplier`` bisects from [0, 20] in about 16, each ~0.06 s with RDP (150
    Rényi orders), which made calibration half of the CPU time of the whole-experiment
    tests. Memoised: clients with equal data sizes share one.
    """
    from scipy.optimize import brentq

    @functools.lru_cache(maxsize=None)
    def spent(sigma: float) -> float:
        with warnings.catch_warnings():
            # Probes far from the answer make the largest or smallest RDP order the best
            # one, which Opacus notes; irrelevant for the value returned.
            warnings.filterwarnings("ignore", message="Optimal order is the")
            return _epsilon_of([(sigma, sample_rate, steps)], delta=delta, accountant=accountant)

    smallest, largest = _SIGMA_RANGE
    high = 1.0  # spent(high) <= target < spent(high / 2)
    while spent(high) > target_epsilon:
        high *= 2
        if high > largest:
            raise PrivacyError(
                f"cannot calibrate noise for ε={target_epsilon:g}, δ={delta:g} over {steps} steps at "
                f"sample rate {sample_rate:.4g}: even σ={largest:g} spends more (the budget is too low)"
            )
    while high / 2 >= smallest and spent(high / 2) <= target_epsilon:
        high /= 2
    if target_epsilon - spent(high) <= _CALIBRATION_TOLERANCE or high / 2 < smallest:
        return high

    def above_goal(sigma: float) -> float:
        epsilon = spent(sigma)
        if target_epsilon - _CALIBRATION_TOLERANCE <= epsilon <= target_epsilon:
            raise _Calibrated(sigma)  # the first probe in the window ends the search
        return epsilon - (target_epsilon - _CALIBRATION_TOLERANCE / 2)

    try:
        brentq(above_goal, high / 2, high, xtol=1e-15, rtol=1e-15, maxiter=200)
    except _Calibrated as found:
        return found.sigma
    except RuntimeError:  # no convergence: cannot happen for a monotone epsilon, but stay within the budget
        pass
    return high


class _Calibrated(Exception):
    """Ends the calibration search: ``sigma`` spends an epsilon inside the window."""

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma


# --- the ledger's state file ----------------------------------------------------------

LEDGER_FORMAT = "deai-flower/privacy-ledger/1"


def ledger_path(state_dir: str | os.PathLike[str], *, chain_id: int, contract: str, run_id: int,
                participant: str) -> Path:  # fmt: skip
    """Where a participant keeps its ledger for one run (the on-chain budget is per run)."""
    name = f"privacy-ledger-{int(chain_id)}-{contract.lower()}-{int(run_id)}-{participant.lower()}.json"
    return Path(state_dir) / name


def save_ledger(path: str | os.PathLike[str], ledger: PrivacyLedger, *, settings: PrivacySettings,
                identity: Mapping[str, Any]) -> None:  # fmt: skip
    """Write ``ledger`` as JSON, atomically (a crash leaves the old file or the new one).

    ``identity`` (participant, chain, contract, run) is stored with it and checked by
    :func:`load_ledger`, so a file is never applied to the wrong participant or run.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "format": LEDGER_FORMAT,
        **{key: identity[key] for key in sorted(identity)},
        "delta": settings.delta,
        "accountant": settings.accountant,
        "epsilon_budget": settings.epsilon if settings.private else "inf",
        "epsilon": _json_float(ledger.epsilon(settings.delta, settings.accountant)),
        "calibrated_noise_multiplier": ledger.noise_multiplier,
        # JSON floats are written with repr(), so the history round-trips bit for bit.
        "history": [{"noise_multiplier": float(sigma), "sample_rate": float(rate), "steps": int(steps)}
                    for sigma, rate, steps in ledger.history],  # fmt: skip
        # Entries not yet seen revealed: rolled back if their round closes without the reveal.
        "unconfirmed": [dataclasses.asdict(u) for u in ledger.unconfirmed],
    }
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(document, stream, indent=2)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_ledger(path: str | os.PathLike[str], *, identity: Mapping[str, Any]) -> PrivacyLedger | None:
    """Read a ledger written by :func:`save_ledger`; ``None`` if there is no file.

    Raises:
        PrivacyError: the file is unreadable, malformed, or belongs to another
            participant or run than ``identity``.
    """
    source = Path(path)
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PrivacyError(f"cannot read the privacy ledger {source}: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != LEDGER_FORMAT:
        raise PrivacyError(f"{source} is not a privacy ledger ({LEDGER_FORMAT})")
    for key, expected in identity.items():
        if str(document.get(key)).lower() != str(expected).lower():
            raise PrivacyError(
                f"privacy ledger {source} belongs to {key}={document.get(key)!r}, not {expected!r}"
            )
    try:
        history = document["history"]
        record = {
            _REC_NOISE: [entry["noise_multiplier"] for entry in history],
            _REC_RATE: [entry["sample_rate"] for entry in history],
            _REC_STEPS: [entry["steps"] for entry in history],
        }
        unconfirmed = document.get("unconfirmed", [])
        for key, field_name in zip(_REC_UNCONFIRMED, ("entry", "round", "block", "block_hash"), strict=True):
            record[key] = [u[field_name] for u in unconfirmed]
    except (KeyError, TypeError) as exc:
        raise PrivacyError(f"malformed privacy ledger {source}: {exc!r}") from exc
    if document.get("calibrated_noise_multiplier") is not None:
        record[_REC_CALIBRATED] = document["calibrated_noise_multiplier"]
    return PrivacyLedger.from_record(record)


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


# --- training ------------------------------------------------------------------------


@contextlib.contextmanager
def _cpu_threads(count: int | None) -> Iterator[None]:
    # A client's CPU share. Small models train fastest on one thread, and on a busy
    # machine PyTorch's thread pool otherwise stalls them (measured: 18 ms vs 40-400 ms
    # for one main-job client round on a loaded 2-core machine). Ray sets the same cap
    # for its actors through OMP_NUM_THREADS.
    if count is None:
        yield
        return
    if count < 1:
        raise ConfigError(f"num_threads must be >= 1 (got {count})")
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_trainable(model: nn.Module) -> None:
    # Fixing layers here would change the parameter names and shapes of the update the
    # other parties expect, so an incompatible model is an error; the fix belongs at
    # build time (deai_flower.models.make_dp_compatible).
    base = model._module if isinstance(model, AbstractGradSampleModule) else model
    # The validator also demands training mode, which the trained copy will be in; the
    # caller's module may have been left in eval mode by an evaluation.
    was_training = base.training
    base.train()
    try:
        errors = ModuleValidator.validate(base, strict=False)
    finally:
        base.train(was_training)
    if errors:
        raise PrivacyError(
            "the model cannot be trained with DP-SGD: "
            + "; ".join(str(error) for error in errors)
            + " (build it through deai_flower.models.make_dp_compatible, which replaces such layers)"
        )



def _check_training_args(
    *,
    x: np.ndarray,
    y: np.ndarray,
    planned_rounds: int,
    local_epochs: int,
    batch_size: int,
    learning_rate: float,
) -> None:
    if len(x) != len(y):
        raise ConfigError(f"x and y differ in length ({len(x)} != {len(y)})")
    if len(x) == 0:
        raise ConfigError("cannot train on an empty partition")
    if planned_rounds < 1:
        raise ConfigError(f"planned_rounds must be >= 1 (got {planned_rounds})")
    if local_epochs < 1:
        raise ConfigError(f"local_epochs must be >= 1 (got {local_epochs})")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
    if not _is_number(learning_rate) or not learning_rate > 0:
        raise ConfigError(f"learning_rate must be > 0 (got {learning_rate!r})")


def _seeds(seed: int | None) -> tuple[int, int]:
    # Independent streams for batch sampling and for noise, both derived from one seed
    # (or, without one, from 128 bits of CSPRNG entropy nobody else sees).
    entropy = secrets.randbits(128) if seed is None else int(seed) % 2**128  # SeedSequence wants a non-negative int
    sampling, noise = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64)
    return int(sampling) & (2**63 - 1), int(noise) & (2**63 - 1)


# Attribute Opacus sets on a module it has hooked (its "hooks twice" check reads it).
_OPACUS_HOOKS_MARK = "autograd_grad_sample_hooks"


def _fresh_copy(model: nn.Module, device: torch.device) -> nn.Module:
    # Never train (or let Opacus hook) the caller's module: train a deep copy.
    base = model._module if isinstance(model, AbstractGradSampleModule) else model
    work = copy.deepcopy(base)
    if base is not model or hasattr(base, _OPACUS_HOOKS_MARK):
        # The module is (or was) inside an Opacus wrapper, and deepcopy copied that
        # wrapper's hooks; wrapping the copy would then add them twice. The copy is
        # ours, so drop every hook and Opacus' per-sample state from it.
        _strip_hooks(work)
    work.to(device)
    work.train()
    return work


def _strip_hooks(module: nn.Module) -> None:
    if hasattr(module, _OPACUS_HOOKS_MARK):
        delattr(module, _OPACUS_HOOKS_MARK)
    for sub in module.modules():
        sub._forward_hooks.clear()
        sub._forward_pre_hooks.clear()
        sub._backward_hooks.clear()
        sub._backward_pre_hooks.clear()
    for param in module.parameters():
        param.grad = None
        for attr in ("grad_sample", "summed_grad", "_forward_counter"):
            if hasattr(param, attr):
                delattr(param, attr)


def _tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(
        torch.as_tensor(np.asarray(x, dtype=np.float32)),
        torch.as_tensor(np.asarray(y, dtype=np.int64)),
    )


def _step_count(history: list[tuple[float, float, int]]) -> int:
    return sum(int(steps) for _, _, steps in history)


def train_round(
    *,
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    settings: PrivacySettings,
    ledger: PrivacyLedger,
    planned_rounds: int,
    local_epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int | None = None,
    device: torch.device,
    num_threads: int | None = None,
) -> RoundTraining:
    """Train a copy of ``model`` on ``(x, y)`` for one federated round.

    Private (finite epsilon): DP-SGD via Opacus with Poisson sampling at rate
    ``q = batch_size / len(x)`` for ``local_epochs * floor(1/q)`` steps, clipping norm
    ``settings.max_grad_norm`` and the ledger's noise multiplier, calibrated on first use
    so that ``planned_rounds`` such rounds spend exactly the budget. The round is refused
    *before* training if it would take the cumulative epsilon past the budget. On success
    the round's ``(sigma, q, steps)`` is appended to ``ledger.history``; on any error the
    ledger is left unchanged.

    Non-private (``epsilon=inf``): plain shuffled mini-batch SGD without Opacus; the
    ledger records the round with noise multiplier 0 (an infinite epsilon).

    ``seed`` fixes batch sampling and noise (ignored under ``secure_mode``); None (the
    default) draws both from fresh CSPRNG entropy, so that nobody can replay the noise.
    A seed anyone else knows makes the noise public: pass one only for reproducible
    simulations, and never reuse one across clients or rounds. ``num_threads`` caps PyTorch's CPU threads while
    training (restored afterwards); ``None`` leaves PyTorch's setting.

    Raises:
        ConfigError: invalid training arguments.
        PrivacyBudgetExhaustedError: the round would exceed the (epsilon, delta) budget.
        PrivacyError: calibration impossible, or ``secure_mode`` without ``torchcsprng``.
    """
    _check_training_args(
        x=x,
        y=y,
        planned_rounds=planned_rounds,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )
    # A batch larger than the data would give q > 1; cap it at one full pass.
    expected_batch = min(int(batch_size), len(x))
    sample_rate = expected_batch / len(x)
    sampling_seed, noise_seed = _seeds(seed)

    if not settings.private:
        with _cpu_threads(num_threads):
            return _train_non_private(
                model=model,
                x=x,
                y=y,
                settings=settings,
                ledger=ledger,
                local_epochs=local_epochs,
                batch_size=expected_batch,
                sample_rate=sample_rate,
                learning_rate=learning_rate,
                sampling_seed=sampling_seed,
                device=device,
            )

    if settings.secure_mode and importlib.util.find_spec("torchcsprng") is None:
        raise PrivacyError(_SECURE_RNG_HINT)
    _check_trainable(model)

    dataset = _tensors(x, y)
    sampler_generator = None
    if not settings.secure_mode:
        sampler_generator = torch.Generator().manual_seed(sampling_seed)
    loader = DPDataLoader(dataset, sample_rate=sample_rate, generator=sampler_generator)
    # The Poisson sampler yields floor(1/q) batches per pass; that is the step count the
    # accountant will see, so plan with it.
    steps = local_epochs * len(loader)

    sigma = ledger.noise_multiplier
    if sigma is None:
        sigma = _calibrate(
            target_epsilon=float(settings.epsilon),
            delta=float(settings.delta),
            sample_rate=sample_rate,
            steps=planned_rounds * steps,
            accountant=settings.accountant,
        )
    prior = _coalesce(ledger.history)
    epsilon_after = _epsilon_of(
        [*prior, (sigma, sample_rate, steps)], delta=settings.delta, accountant=settings.accountant
    )
    if epsilon_after > settings.epsilon + _EPSILON_TOLERANCE:
        spent = _epsilon_of(prior, delta=settings.delta, accountant=settings.accountant)
        raise PrivacyBudgetExhaustedError(
            f"privacy budget exhausted: one more round ({steps} steps, σ={sigma:.4g}, "
            f"q={sample_rate:.4g}) would spend ε={epsilon_after:.4f} > budget "
            f"ε={settings.epsilon:g} at δ={settings.delta:g} (already spent ε={spent:.4f} "
            f"over {len(ledger.history)} round(s))"
        )

    with _cpu_threads(num_threads):
        arrays, recorded_steps, train_loss = _train_private(
            model=model,
            loader=loader,
            settings=settings,
            prior=prior,
            sigma=sigma,
            sample_rate=sample_rate,
            expected_batch=expected_batch,
            local_epochs=local_epochs,
            learning_rate=learning_rate,
            noise_seed=noise_seed,
            device=device,
        )
    if recorded_steps != steps:
        # Cannot happen with Opacus' sampler (fixed batch count); if it ever does, trust
        # what the accountant recorded over the plan.
        epsilon_after = _epsilon_of(
            [*prior, (sigma, sample_rate, recorded_steps)],
            delta=settings.delta,
            accountant=settings.accountant,
        )
    ledger.noise_multiplier = sigma
    ledger.history.append((sigma, sample_rate, recorded_steps))
    return RoundTraining(
        arrays=arrays,
        num_examples=len(x),
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps=recorded_steps,
        delta=settings.delta,
        epsilon=epsilon_after,
        accountant=settings.accountant,
        train_loss=train_loss,
    )


def _make_private(
    *,
    engine: PrivacyEngine,
    module: nn.Module,
    loader: DataLoader,
    settings: PrivacySettings,
    sigma: float,
    learning_rate: float,
    expected_batch: int,
    sample_rate: float,
    noise_generator: torch.Generator | None,
    mode: str,
) -> tuple[nn.Module, Any, Any, DataLoader]:
    # Sum reduction: Opacus then adds noise to the sum of clipped per-sample gradients
    # and the learning rate divides by the *expected* batch size, which is the DP-SGD
    # estimator and, unlike mean reduction, stays finite on an empty Poisson batch.
    optimizer = torch.optim.SGD(
        module.parameters(), lr=learning_rate / expected_batch, momentum=MOMENTUM
    )
    criterion = nn.CrossEntropyLoss(reduction="sum")
    wrapped = engine.make_private(
        module=module,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=settings.max_grad_norm,
        loss_reduction="sum",
        # The loader is already a Poisson DPDataLoader at q = batch/len; letting Opacus
        # rebuild it would use q = 1/len(loader) instead.
        poisson_sampling=False,
        noise_generator=noise_generator,
        grad_sample_mode=mode,
    )
    if len(wrapped) == 4:  # ghost clipping also returns a criterion wrapper
        dp_module, dp_optimizer, dp_criterion, dp_loader = wrapped
    else:
        dp_module, dp_optimizer, dp_loader = wrapped
        dp_criterion = criterion
    # make_private attached an accounting hook with q = 1/len(loader); replace it with
    # the loader's true sampling rate so the accountant records what actually happened.
    dp_optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    dp_module.forbid_grad_accumulation()
    return dp_module, dp_optimizer, dp_criterion, dp_loader


def choose_grad_sample_mode(model: nn.Module, requested: str = "auto") -> str:
    """The per-sample-gradient mode to train ``model`` with (``requested`` unless "auto").

    "auto" picks ghost clipping for models whose trainable layers are all Linear and
    hold at least ``_GHOST_MIN_LINEAR_PARAMETERS`` parameters, hooks otherwise (see the
    measurements next to ``GRAD_SAMPLE_MODES``).
    """
    if requested not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"grad_sample_mode must be one of: {', '.join(GRAD_SAMPLE_MODES)} (got {requested!r})")
    if requested != "auto":
        return requested
    layers = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    if not layers or not all(isinstance(m, nn.Linear) for m in layers):
        return "hooks"
    trainable = sum(p.numel() for m in layers for p in m.parameters(recurse=False) if p.requires_grad)
    return "ghost" if trainable >= _GHOST_MIN_LINEAR_PARAMETERS else "hooks"


def _run_epochs(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    device: torch.device,
    loss_scale: str | None,
) -> tuple[float, int, int]:
    """Plain training epochs; returns (summed loss, examples seen, optimizer steps).

    ``loss_scale="batch"`` multiplies a mean-reduced loss by the batch size, so the sum
    is comparable with a criterion that already sums.
    """
    loss_sum, seen, steps = 0.0, 0, 0
    for _ in range(epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(module(xb), yb)
            loss.backward()
            optimizer.step()
            batch = int(xb.shape[0])
            loss_sum += float(loss.item()) * (batch if loss_scale == "batch" else 1)
            seen += batch
            steps += 1
    return loss_sum, seen, steps


def _train_private(
    *,
    model: nn.Module,
    loader: DPDataLoader,
    settings: PrivacySettings,
    prior: list[tuple[float, float, int]],
    sigma: float,
    sample_rate: float,
    expected_batch: int,
    local_epochs: int,
    learning_rate: float,
    noise_seed: int,
    device: torch.device,
) -> tuple[dict[str, np.ndarray], int, float]:
    with warnings.catch_warnings():
        # Opacus warns on every engine built without secure RNG; the setting is explicit.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        try:
            engine = PrivacyEngine(accountant=settings.accountant, secure_mode=settings.secure_mode)
        except ImportError as exc:
            raise PrivacyError(_SECURE_RNG_HINT) from exc
    # Restore the client's history so the engine's accountant continues from it.
    engine.accountant.history = list(prior)

    noise_generator = None
    if not settings.secure_mode:
        noise_generator = torch.Generator(device=device).manual_seed(noise_seed)

    last_error: Exception | None = None
    for mode in dict.fromkeys((choose_grad_sample_mode(model, settings.grad_sample_mode),
                               _FALLBACK_GRAD_SAMPLE_MODE)):  # fmt: skip
        work = _fresh_copy(model, device)
        try:
            dp_module, dp_optimizer, dp_criterion, dp_loader = _make_private(
                engine=engine,
                module=work,
                loader=loader,
                settings=settings,
                sigma=sigma,
                learning_rate=learning_rate,
                expected_batch=expected_batch,
                sample_rate=sample_rate,
                noise_generator=noise_generator,
                mode=mode,
            )
            break
        except (NotImplementedError, ValueError) as exc:  # mode unsupported for a layer
            last_error = exc
    else:
        raise PrivacyError(f"Opacus cannot make this model private: {last_error}") from last_error

    with warnings.catch_warnings():
        # Ghost clipping's backward hooks fire on a first layer whose input needs no
        # gradient; PyTorch warns about that, but it is exactly what Opacus expects.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        # The private criterion sums over the batch (see _make_private): no rescaling.
        loss_sum, seen, _ = _run_epochs(dp_module, dp_optimizer, dp_criterion, dp_loader,
                                        epochs=local_epochs, device=device, loss_scale=None)  # fmt: skip
    dp_optimizer.zero_grad(set_to_none=True)

    recorded_steps = _step_count(engine.accountant.history) - _step_count(prior)
    train_loss = loss_sum / seen if seen else 0.0
    return get_arrays(dp_module), recorded_steps, train_loss


def _train_non_private(
    *,
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    settings: PrivacySettings,
    ledger: PrivacyLedger,
    local_epochs: int,
    batch_size: int,
    sample_rate: float,
    learning_rate: float,
    sampling_seed: int,
    device: torch.device,
) -> RoundTraining:
    work = _fresh_copy(model, device)
    loader = DataLoader(
        _tensors(x, y),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(sampling_seed),
    )
    optimizer = torch.optim.SGD(work.parameters(), lr=learning_rate, momentum=MOMENTUM)
    criterion = nn.CrossEntropyLoss()
    loss_sum, seen, steps = _run_epochs(work, optimizer, criterion, loader, epochs=local_epochs, device=device,
                                        loss_scale="batch")  # fmt: skip
    # A non-private round is recorded with sigma = 0: its epsilon is infinite, and a
    # later private configuration must not pretend this data was never exposed.
    ledger.history.append((0.0, sample_rate, steps))
    return RoundTraining(
        arrays=get_arrays(work),
        num_examples=len(x),
        noise_multiplier=0.0,
        sample_rate=sample_rate,
        steps=steps,
        delta=settings.delta,
        epsilon=math.inf,
        accountant="none",  # recorded on chain as accountant 0: no accounting, ε = ∞
        train_loss=loss_sum / seen if seen else 0.0,
    )

"""A participant's privacy ledger: its DP-SGD history, reconciled with what it released.

The ledger is the participant's own account of the ε it spent: one ``(noise_multiplier,
sample_rate, steps)`` entry per trained round, the noise multiplier calibrated on first
use, and the entries not yet seen revealed. DP covers released outputs only, so an entry
whose update was never revealed is rolled back once its round has closed, and a revealed
entry missing from the ledger (a lost file) is added back: :func:`reconcile_with_chain`
decides both from what the chain records, :meth:`PrivacyLedger.reconciled` applies them.
A Flower ClientApp keeps the ledger in ``context.state`` (:meth:`PrivacyLedger.to_record`)
and, to survive restarts, in a JSON state file (:func:`save_ledger`/:func:`load_ledger`,
one file per participant and run), written atomically after every trained round.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deai_flower.errors import PrivacyError
from deai_flower.protocol.epsilon import epsilon_of

from .settings import PrivacySettings

__all__ = [
    "LEDGER_FORMAT",
    "LedgerReconciliation",
    "PrivacyLedger",
    "Unconfirmed",
    "ledger_path",
    "load_ledger",
    "reconcile_with_chain",
    "save_ledger",
]

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
        return epsilon_of(self.history, delta=delta, accountant=accountant)

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

    def confirmed_round(self, round_id: int) -> LedgerReconciliation:
        """This ledger with round ``round_id``'s unconfirmed entries kept for good (its
        update is being published, and a published update is released whether or not
        its reveal transaction then lands)."""
        return self.reconciled([], confirmed=[u.entry for u in self.unconfirmed if u.round == int(round_id)])

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




def reconcile_with_chain(
    ledger: PrivacyLedger,
    *,
    current_round: int,
    released: Iterable[tuple[float, float, int]],
    reveals_in: Callable[[int], int],
    block_hash: Callable[[int], str],
) -> LedgerReconciliation:
    """``ledger`` charged with what the chain shows its participant released, before it
    trains round ``current_round``.

    Each trained round is recorded as unconfirmed, with the round and its opening block
    (:meth:`PrivacyLedger.charging`). Once that round is closed (the contract opens a
    round only after the previous one finalized or failed, so no reveal can come) its
    entries stay if the participant's reveals are among the round's (``reveals_in(round)``
    counts them) and are rolled back if not: an update trained but never revealed (a
    pending reveal abandoned when its round lapsed, a commit or reveal that failed for
    good, a coordinator stopped mid-round) released nothing. A revealed round is never
    rolled back, even when its round failed, nor an entry charged on another chain (its
    round's opening block, by ``block_hash(number)``, is not this chain's), nor one of
    the open round. ``released``: the participant's revealed ``(σ, q, steps)`` in the
    closed rounds, added where the ledger lacks them (:meth:`PrivacyLedger.reconciled`).
    """
    abandoned: list[int] = []
    confirmed: list[int] = []
    for round_id in sorted({u.round for u in ledger.unconfirmed if u.round < current_round}):
        entries = [u for u in ledger.unconfirmed if u.round == round_id]
        if block_hash(entries[0].block) != entries[0].block_hash:
            confirmed += [u.entry for u in entries]  # charged on another chain: it stands
            continue
        revealed = reveals_in(round_id)
        confirmed += [u.entry for u in entries[:revealed]]
        abandoned += [u.entry for u in entries[revealed:]]
    return ledger.reconciled(released, abandoned=abandoned, confirmed=confirmed)

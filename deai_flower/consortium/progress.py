"""A run's progress as the chain records it: a line when a round opens, when its commit and
reveal phases end, and when it is finalized or fails (``deai consortium watch``).

It reads only the chain (the contract's views), so anybody may watch a run: the admin, a
silo, an auditor, whoever coordinates it. It needs no key and sends nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..chain import RoundsContract
from ..errors import ChainError, ContractRevertError

__all__ = ["watch_run"]


def watch_run(contract: RoundsContract, run_id: int, *, poll_s: float = 2.0, timeout_s: float | None = None,
              say: Callable[[str], None] = print) -> bool:  # fmt: skip
    """Report run ``run_id``'s rounds as they are played, until every round is finalized
    (True), the run is cancelled or ``timeout_s`` passes (False)."""
    run = contract.get_run(run_id)
    total = int(run["numRounds"])
    if total == 0:
        from .errors import ConsortiumError

        raise ConsortiumError(f"contract {contract.address} has no run {run_id}")
    started = time.monotonic()
    seen_attempt, seen_phase = 0, ""
    counts = {"sampledCount": 0, "commitCount": 0, "revealCount": 0, "openedBlock": 0}
    opened_at = started
    while True:
        run = contract.get_run(run_id)
        finalized, attempt = int(run["finalizedRounds"]), int(run["currentRound"])
        if seen_attempt and (attempt != seen_attempt or finalized >= total):
            _settle(contract, run_id, seen_attempt, finalized, counts, time.monotonic() - opened_at, say)
            seen_attempt = 0 if attempt == seen_attempt else seen_attempt
        if finalized >= total:
            say(f"run {run_id}: all {total} rounds finalized")
            return True
        if bool(run["cancelled"]):
            say(f"run {run_id}: cancelled with {finalized} of {total} rounds finalized")
            return False
        if attempt and attempt != seen_attempt:
            seen_attempt, seen_phase, opened_at = attempt, "", time.monotonic()
        if attempt:
            try:
                state = contract.get_round(run_id, attempt)
                phase = contract.phase(run_id, attempt)
            except ContractRevertError:  # moved on meanwhile: read again
                continue
            counts = {k: int(state[k]) for k in counts}
            if phase != seen_phase:
                _report_phase(finalized + 1, attempt, phase, seen_phase, counts, say)
                seen_phase = phase
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            say(f"run {run_id}: {finalized} of {total} rounds finalized after {timeout_s:.0f}s; stopped watching")
            return False
        time.sleep(poll_s)


def _label(number: int, attempt: int) -> str:
    return f"round {number}" if number == attempt else f"round {number} (attempt {attempt})"


def _report_phase(number: int, attempt: int, phase: str, before: str, counts: dict[str, int],
                  say: Callable[[str], None]) -> None:  # fmt: skip
    label = _label(number, attempt)
    if phase == "commit" and not before:
        say(f"{label}: open, {counts['sampledCount']} silos sampled; training and committing")
    elif phase == "reveal":
        say(f"{label}: {counts['commitCount']} of {counts['sampledCount']} committed; revealing")
    elif phase == "attest":
        say(f"{label}: {counts['revealCount']} revealed; attesting")
    elif phase == "failed":
        say(f"{label}: failed ({counts['commitCount']} committed, {counts['revealCount']} revealed)")


def _settle(contract: RoundsContract, run_id: int, attempt: int, finalized: int, counts: dict[str, Any],
            seconds: float, say: Callable[[str], None]) -> None:  # fmt: skip
    """Report the attempt that is no longer current (the vote that finalized it opened the
    next) or was the run's last, if it was finalized."""
    try:
        phase = contract.phase(run_id, attempt)
    except ChainError:
        phase = ""
    if phase == "finalized":  # a failed one was reported when it failed
        # its last phases may have passed between two looks: the reveals are read from its events
        revealed = len(contract.revealed(run_id, attempt, from_block=counts["openedBlock"]))
        say(f"{_label(finalized, attempt)}: finalized ({revealed} of {counts['sampledCount']} revealed) "
            f"after {seconds:.0f}s")  # fmt: skip

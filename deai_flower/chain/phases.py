"""Waiting for a round's phase to end: the one helper the coordinator and the
participants share.

A phase ends early on chain (every sampled node committed, every committer revealed, a
quorum attested) or at its deadline. The chain's clock moves only with its blocks, so
whoever waits past a deadline moves the clock there itself
(:meth:`~deai_flower.chain.node.ChainNode.advance_to`: a development chain mines a block
at the deadline, any other is waited for); the phase then closes even when no other
transaction comes.
"""

from __future__ import annotations

import time

from .contract import RoundsContract

__all__ = ["DEADLINE_OF", "await_phase_end"]

#: The ``getRound`` field holding each phase's deadline.
DEADLINE_OF = {"commit": "commitDeadline", "reveal": "revealDeadline", "attest": "attestDeadline"}
#: Phases a round never leaves.
_CLOSED = ("finalized", "failed")


def await_phase_end(
    contract: RoundsContract,
    run_id: int,
    round_id: int,
    phase: str,
    *,
    timeout: float,
    watch_s: float | None = None,
    until: str | None = None,
) -> str:
    """Wait until round ``round_id`` leaves ``phase``; return the phase it is in then.

    ``watch_s`` None: nothing more is expected from anyone (a coordinator holding every
    reply), so the clock is moved to the deadline at once. Otherwise the chain is asked
    every ``watch_s`` seconds whether others' transactions ended the phase, and the clock
    is moved only once the deadline is due by the wall clock. ``until`` names the phase
    whose deadline is waited for (default ``phase``'s own: ``attest`` lets the whole
    round's deadlines pass). ``timeout`` bounds the wait for a chain whose clock nobody
    moves.
    """
    current = contract.phase(run_id, round_id)
    if current != phase or current in _CLOSED:
        return current
    deadline = int(contract.get_round(run_id, round_id)[DEADLINE_OF[until or phase]])
    node = contract.node
    if watch_s is None:
        node.advance_to(deadline, timeout=timeout)
        return contract.phase(run_id, round_id)
    due = time.monotonic() + max(0, deadline - node.now())
    while current == phase:
        if time.monotonic() >= due:
            node.advance_to(deadline, timeout=timeout)
            due = float("inf")
        else:
            time.sleep(watch_s)
        current = contract.phase(run_id, round_id)
    return current

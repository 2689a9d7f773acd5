"""The guard's commit watch, against a relayer's batch that lands while it looks."""

from __future__ import annotations

from typing import Any

from deai_flower.participant import reveal_guard
from deai_flower.protocol.encoding import STAGES


class _Node:
    def now(self) -> int:
        return 1_000


class _BatchLandsWhileAsked:
    """A round whose relayed commitMany lands during the guard's phase question: it ends
    the commit phase (every sampled participant committed), so the phase is then
    ``reveal`` and the member committed."""

    node = _Node()

    def __init__(self) -> None:
        self.landed = False
        self.own_commits = 0

    def get_run(self, run_id: int) -> dict[str, Any]:
        return {"commitDuration": 80}

    def phase(self, run_id: int, round_id: int) -> str:
        self.landed = True
        return "reveal"

    def get_member(self, run_id: int, participant: str) -> dict[str, Any]:
        if self.landed:
            return {"round": 7, "stage": STAGES.index("committed")}
        return {"round": 6, "stage": STAGES.index("committed")}

    def commit(self, *args: Any) -> Any:
        self.own_commits += 1
        raise AssertionError("the batch landed: the guard must not commit again")


class _Pending:
    run_id, round, participant, label, commitment = 1, 7, "0xabc", "silo", b"\x01" * 32


def test_a_batch_that_lands_between_the_guards_reads_is_seen_as_landed() -> None:
    contract = _BatchLandsWhileAsked()
    clock = reveal_guard._ChainClock(contract)  # type: ignore[arg-type]
    outcome = reveal_guard._guard_commit(contract, _Pending(), clock, commit_deadline=1_050,  # type: ignore[arg-type]
                                         poll_s=0.01, note=lambda _: None)  # fmt: skip
    assert outcome is None  # go on guarding the reveal (not "never recorded")
    assert contract.own_commits == 0

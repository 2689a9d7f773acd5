"""A relayed commit checks on the EVM only when settling its previous round may slash it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from deai_flower.participant import handlers
from deai_flower.protocol.encoding import STAGES


def _view(stake: int, stage: str) -> Any:
    asked: list[str] = []

    def get_member(run_id: int, address: str) -> dict[str, Any]:
        asked.append(address)
        return {"round": 3, "stage": STAGES.index(stage)}

    return SimpleNamespace(spec=SimpleNamespace(incentives=SimpleNamespace(stake=stake)),
                           contract=SimpleNamespace(get_member=get_member), run_id=1,
                           account=SimpleNamespace(address="0xabc"), asked=asked)  # fmt: skip


@pytest.mark.parametrize(("stage", "may_slash"), [
    ("none", False), ("revealed", False), ("declined", False),  # nothing a settlement penalizes
    ("committed", True),  # committed, never revealed: a missing-reveal slash
    ("attested", True),  # voted: a minority vote is slashed
])  # fmt: skip
def test_only_a_missing_reveal_or_a_vote_can_be_slashed_at_settlement(stage: str, may_slash: bool) -> None:
    assert handlers._settling_may_slash(_view(10**17, stage)) is may_slash


def test_an_unstaked_run_never_asks_the_chain() -> None:
    view = _view(0, "committed")
    assert handlers._settling_may_slash(view) is False
    assert view.asked == []

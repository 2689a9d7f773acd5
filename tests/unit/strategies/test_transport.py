"""The coordinator's transport: replies collected by polling, and stragglers waited for
only briefly once the chain has closed the round."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from deai_flower.strategies import transport
from deai_flower.strategies.transport import exchange


class PollingGrid:
    """A SuperLink stand-in: the reply to the i-th message pushed comes on the (i+1)-th
    poll; nodes in ``silent`` never answer."""

    def __init__(self, silent: frozenset[int] = frozenset()) -> None:
        self.silent, self.polls = silent, 0

    def push_messages(self, messages: list[Any]) -> list[str]:
        return [f"m{i}" for i in range(len(messages))]

    def pull_messages(self, ids: list[str]) -> list[Any]:
        self.polls += 1
        due = [m for m in ids if int(m[1:]) < self.polls and int(m[1:]) not in self.silent]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m)) for m in due]


MESSAGES = [SimpleNamespace(metadata=SimpleNamespace(group_id="4")) for _ in range(3)]


def test_replies_are_polled_until_all_are_in() -> None:
    grid = PollingGrid()
    replies = exchange(grid, MESSAGES, timeout=5.0, poll_s=0.01)  # type: ignore[arg-type]
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"] and grid.polls == 3


def test_a_closed_round_waits_for_stragglers_only_for_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "STRAGGLER_GRACE_S", 0.2)
    asked: list[int] = []

    def round_closed(replies: list[Any]) -> bool:
        asked.append(len(replies))
        return len(replies) >= 2  # the chain closed the round once two nodes were done

    started = time.monotonic()
    replies = exchange(PollingGrid(silent=frozenset({2})), MESSAGES, timeout=30.0, poll_s=0.01,  # type: ignore[arg-type]
                       round_closed=round_closed)  # fmt: skip
    assert len(replies) == 2 and 0.2 <= time.monotonic() - started < 5.0
    assert asked == [1, 2]  # asked until the round closed, not after


def test_without_polling_flowers_send_and_receive_waits() -> None:
    calls: list[float] = []
    grid = SimpleNamespace(send_and_receive=lambda messages, timeout: calls.append(timeout) or ["r"])
    assert exchange(grid, MESSAGES, timeout=7, poll_s=None) == ["r"] and calls == [7.0]  # type: ignore[arg-type]
    assert exchange(grid, [], timeout=7) == [] and calls == [7.0]  # type: ignore[arg-type]

"""Attesters in one process compute a round's outcome once per distinct input, never
sharing one across inputs that differ in a single byte."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

from deai_flower.participant import shared_outcome as memo
from deai_flower.protocol.outcome import Refusal, RoundOutcome
from deai_flower.protocol.rules import RevealedUpdate

SPEC = b"\x01" * 32


@pytest.fixture(autouse=True)
def _empty_memo() -> None:
    memo._kept.clear()


def _updates(value: float = 1.0) -> list[RevealedUpdate]:
    return [RevealedUpdate(f"0x{i:040x}", 10 + i, {"w": np.full((3, 2), value + i, dtype=np.float32)})
            for i in range(3)]  # fmt: skip


GLOBAL = {"w": np.zeros((3, 2), dtype=np.float32)}


def _counting() -> tuple[list[int], Callable[[], RoundOutcome]]:
    calls: list[int] = []

    def compute() -> RoundOutcome:
        calls.append(1)
        return RoundOutcome(result=bytes([len(calls)]), scores={}, refused={})

    return calls, compute


def test_equal_inputs_are_computed_once_across_threads() -> None:
    calls, compute = _counting()
    started = threading.Barrier(8)
    results: list[RoundOutcome] = []

    def attester() -> None:
        started.wait()
        results.append(memo.shared_outcome(SPEC, _updates(), {}, GLOBAL, None, compute))

    threads = [threading.Thread(target=attester) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 8 and all(r is results[0] for r in results)


@pytest.mark.parametrize("change", ["array byte", "weight", "refusal reason", "spec", "global", "previous"])
def test_any_differing_input_is_computed_again(change: str) -> None:
    calls, compute = _counting()
    first = memo.shared_outcome(SPEC, _updates(), {"0xaa": Refusal("invalid", "a")}, GLOBAL, None, compute)
    updates, refused, spec, global_arrays, previous = _updates(), {"0xaa": Refusal("invalid", "a")}, SPEC, GLOBAL, None
    if change == "array byte":
        updates[1].arrays["w"][2, 1] = np.nextafter(updates[1].arrays["w"][2, 1], np.float32(9))
    elif change == "weight":
        updates[0] = RevealedUpdate(updates[0].participant, 99, updates[0].arrays)
    elif change == "refusal reason":
        refused = {"0xaa": Refusal("invalid", "b")}
    elif change == "spec":
        spec = b"\x02" * 32
    elif change == "global":
        global_arrays = {"w": np.ones((3, 2), dtype=np.float32)}
    else:
        previous = GLOBAL
    second = memo.shared_outcome(spec, updates, refused, global_arrays, previous, compute)
    assert len(calls) == 2 and second is not first


def test_a_failed_computation_is_not_kept() -> None:
    def failing() -> RoundOutcome:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        memo.shared_outcome(SPEC, _updates(), {}, GLOBAL, None, failing)
    calls, compute = _counting()
    memo.shared_outcome(SPEC, _updates(), {}, GLOBAL, None, compute)
    assert calls == [1]


def test_only_a_few_rounds_are_kept() -> None:
    calls, compute = _counting()
    for value in range(memo.MAX_KEPT + 2):
        memo.shared_outcome(SPEC, _updates(float(value)), {}, GLOBAL, None, compute)
    assert len(memo._kept) == memo.MAX_KEPT
    memo.shared_outcome(SPEC, _updates(0.0), {}, GLOBAL, None, compute)  # the oldest was let go
    assert len(calls) == memo.MAX_KEPT + 3

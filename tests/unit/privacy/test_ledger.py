"""Tests for deai_flower.privacy.ledger: the ledger, its record and state file, and its
reconciliation with what the chain shows was released."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from flwr.app import ConfigRecord
from opacus.accountants import PRVAccountant

from deai_flower.errors import PrivacyBudgetExhaustedError, PrivacyError
from deai_flower.privacy import (
    LedgerReconciliation,
    PrivacyLedger,
    PrivacySettings,
    Unconfirmed,
    ledger_path,
    load_ledger,
    reconcile_with_chain,
    save_ledger,
)
from deai_flower.protocol.encoding import from_wad, to_wad
from unit.privacy._support import DELTA, settings_with, train

SIGMA, RATE, STEPS = 0.8667, 0.2, 5


def test_empty_ledger_spends_nothing() -> None:
    assert PrivacyLedger().epsilon(DELTA, "rdp") == 0.0
    assert PrivacyLedger().epsilon(DELTA, "prv") == 0.0


def test_prv_ledger_matches_opacus_prv_accountant() -> None:
    ledger = PrivacyLedger(history=[(1.1, 0.25, 4), (1.1, 0.25, 4)])
    reference = PRVAccountant()
    reference.history = [(1.1, 0.25, 8)]
    assert ledger.epsilon(DELTA, "prv") == pytest.approx(reference.get_epsilon(delta=DELTA))
    # PRV is the tighter accountant.
    assert ledger.epsilon(DELTA, "prv") < ledger.epsilon(DELTA, "rdp")


def test_non_private_rounds_spend_infinite_epsilon() -> None:
    ledger = PrivacyLedger(history=[(1.1, 0.25, 4), (0.0, 0.25, 5)])
    assert ledger.epsilon(DELTA, "rdp") == math.inf


def test_ledger_record_roundtrip_through_config_record(data) -> None:
    ledger = PrivacyLedger()
    train(data, ledger)
    record = ConfigRecord(ledger.to_record())  # Flower accepts the value types
    restored = PrivacyLedger.from_record(dict(record))
    assert restored == ledger
    assert restored.epsilon(DELTA, "rdp") == ledger.epsilon(DELTA, "rdp")

    empty = PrivacyLedger.from_record(dict(ConfigRecord(PrivacyLedger().to_record())))
    assert empty == PrivacyLedger()
    assert empty.noise_multiplier is None


def test_malformed_ledger_record_is_a_privacy_error() -> None:
    with pytest.raises(PrivacyError, match="differ in length"):
        PrivacyLedger.from_record({"noise_multipliers": [1.0], "sample_rates": [], "steps": []})


IDENTITY = {"participant": "0xAbC0000000000000000000000000000000000001", "chain_id": 131277322940537,
            "contract": "0x00000000000000000000000000000000000000c0", "run_id": 1}  # fmt: skip


def test_ledger_state_file_survives_a_restart(data, tmp_path) -> None:
    # Round 1 in one "process", then a restart: a fresh ledger loaded from the file
    # must continue the accounting exactly as the in-memory one would.
    path = ledger_path(tmp_path / "state", **IDENTITY)
    assert path.name.endswith(f"-{IDENTITY['participant'].lower()}.json") and str(IDENTITY["run_id"]) in path.name
    assert load_ledger(path, identity=IDENTITY) is None  # nothing saved yet
    ledger = PrivacyLedger()
    train(data, ledger, seed=1)
    save_ledger(path, ledger, settings=settings_with(), identity=IDENTITY)
    restored = load_ledger(path, identity=IDENTITY)
    assert restored == ledger  # bit-for-bit: JSON floats round-trip
    document = json.loads(path.read_text())
    assert document["participant"] == IDENTITY["participant"] and document["accountant"] == "rdp"
    assert document["epsilon"] == pytest.approx(ledger.epsilon(DELTA, "rdp"))
    assert list(tmp_path.joinpath("state").iterdir()) == [path]  # no temporary file left

    continued = train(data, restored, seed=2)
    uninterrupted = train(data, ledger, seed=2)
    assert continued.epsilon == uninterrupted.epsilon
    assert restored.history == ledger.history and len(ledger.history) == 2
    # The planned budget is spent: after a second restart the client declines.
    save_ledger(path, restored, settings=settings_with(), identity=IDENTITY)
    with pytest.raises(PrivacyBudgetExhaustedError):
        train(data, load_ledger(path, identity=IDENTITY), seed=3)


def test_ledger_state_file_of_another_run_or_corrupt_is_refused(data, tmp_path) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger()
    train(data, ledger)
    save_ledger(path, ledger, settings=settings_with(), identity=IDENTITY)
    with pytest.raises(PrivacyError, match="belongs to run_id=1"):
        load_ledger(path, identity={**IDENTITY, "run_id": 2})
    # Addresses compare case-insensitively (checksummed or not).
    assert load_ledger(path, identity={**IDENTITY, "participant": IDENTITY["participant"].lower()})
    path.write_text("{not json")
    with pytest.raises(PrivacyError, match="cannot read"):
        load_ledger(path, identity=IDENTITY)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(PrivacyError, match="not a privacy ledger"):
        load_ledger(path, identity=IDENTITY)


def entry(steps: int = STEPS) -> tuple[float, float, int]:
    return (SIGMA, RATE, steps)


def chain_entry(steps: int = STEPS) -> tuple[float, float, int]:
    """As the chain gives it back: fixed-point, 18 decimals."""
    return (from_wad(to_wad(SIGMA)), from_wad(to_wad(RATE)), steps)


def unconfirmed(*entries: int, round_id: int = 3) -> list[Unconfirmed]:
    return [Unconfirmed(entry=i, round=round_id, block=7, block_hash="ab") for i in entries]


@pytest.mark.parametrize(
    "history,tags,released,abandoned,confirmed,expected,left,dropped,added",
    [
        # the abandoned round goes, the others stay
        ([entry()] * 3, unconfirmed(2), [chain_entry()] * 2, [2], [], [entry()] * 2, [], 1, 0),
        # an undecided entry (its round still open) stays, and stays unconfirmed
        ([entry()] * 3, unconfirmed(2), [chain_entry()] * 2, [], [], [entry()] * 3, unconfirmed(2), 0, 0),
        # a confirmed one stays for good
        ([entry()] * 3, unconfirmed(2), [chain_entry()] * 3, [], [2], [entry()] * 3, [], 0, 0),
        # entries never unconfirmed are never dropped (asked or not, revealed here or not)
        ([entry()] * 2, [], [], [0, 1], [], [entry()] * 2, [], 0, 0),
        # a lost round is added, with the ledger's own floats
        ([entry()], [], [chain_entry()] * 2, [], [], [entry()] * 2, [], 0, 1),
        # a lost ledger: the chain's record
        ([], [], [chain_entry()], [], [], [chain_entry()], [], 0, 1),
        # the abandoned one goes, however it differs; later tags move with their entries
        ([entry(3), entry(5), entry(5)], unconfirmed(0) + unconfirmed(2, round_id=4), [chain_entry(5)], [0], [],
         [entry(5), entry(5)], unconfirmed(1, round_id=4), 1, 0),
    ],
)
def test_reconciled_drops_only_abandoned_entries_and_adds_released_ones(
    history: list, tags: list, released: list, abandoned: list, confirmed: list, expected: list, left: list,
    dropped: int, added: int
) -> None:
    ledger = PrivacyLedger(history=list(history), noise_multiplier=SIGMA, unconfirmed=list(tags))
    result = ledger.reconciled(released, abandoned=abandoned, confirmed=confirmed)
    assert (result.ledger.history, result.ledger.unconfirmed, result.dropped, result.added) == (
        expected, left, dropped, added)
    assert result.changed == bool(dropped or added or len(tags) != len(left))
    assert result.ledger.noise_multiplier == SIGMA


def test_reconciled_takes_the_revealed_noise_multiplier_for_an_empty_ledger() -> None:
    result = PrivacyLedger().reconciled([chain_entry()])
    assert result.ledger.noise_multiplier == chain_entry()[0]
    assert PrivacyLedger().reconciled([]).ledger == PrivacyLedger()


def test_a_training_is_recorded_unconfirmed_in_the_record_and_the_file(tmp_path: Path) -> None:
    ledger = PrivacyLedger(history=[entry()], noise_multiplier=SIGMA)
    ledger.charging(round_id=4, block=17, block_hash="cd")
    ledger.history.append(entry())  # as train_round does
    ledger.mark_charged()
    assert ledger.unconfirmed == [Unconfirmed(entry=1, round=4, block=17, block_hash="cd")]
    assert PrivacyLedger.from_record(ledger.to_record()) == ledger
    identity = {"participant": "0xabc", "chain_id": 1, "contract": "0xdef", "run_id": 1}
    settings = PrivacySettings(epsilon=8.0, delta=1e-5, max_grad_norm=1.0, accountant="rdp")
    save_ledger(tmp_path / "ledger.json", ledger, settings=settings, identity=identity)
    assert load_ledger(tmp_path / "ledger.json", identity=identity) == ledger


# --- reconciliation with the chain ---------------------------------------------------

HASHES = {7: "ab", 9: "ef"}  # the blocks this chain has


def reconcile(ledger: PrivacyLedger, *, current_round: int, reveals: dict[int, int],
              released: list | None = None) -> tuple[LedgerReconciliation, list[int]]:  # fmt: skip
    """Reconciled against a chain with ``reveals[round]`` reveals of the participant per
    round and the blocks of HASHES; also the rounds whose reveals were asked for."""
    asked: list[int] = []

    def reveals_in(round_id: int) -> int:
        asked.append(round_id)
        return reveals.get(round_id, 0)

    result = reconcile_with_chain(ledger, current_round=current_round, released=released or [],
                                  reveals_in=reveals_in, block_hash=lambda n: HASHES.get(n, ""))  # fmt: skip
    return result, asked


def test_a_closed_round_without_the_reveal_is_rolled_back_and_a_revealed_one_kept() -> None:
    ledger = PrivacyLedger(history=[entry(), entry(3), entry(4)], noise_multiplier=SIGMA,
                           unconfirmed=unconfirmed(1, round_id=3) + unconfirmed(2, round_id=4))  # fmt: skip
    result, asked = reconcile(ledger, current_round=5, reveals={3: 0, 4: 1}, released=[chain_entry(), chain_entry(4)])
    assert result.ledger.history == [entry(), entry(4)]
    assert result.ledger.unconfirmed == []
    assert (result.dropped, result.added, result.settled) == (1, 0, 2)
    assert asked == [3, 4]


def test_the_open_round_is_not_asked_about_and_stays_unconfirmed() -> None:
    ledger = PrivacyLedger(history=[entry()], noise_multiplier=SIGMA, unconfirmed=unconfirmed(0, round_id=5))
    result, asked = reconcile(ledger, current_round=5, reveals={})
    assert result.ledger == ledger and not result.changed
    assert asked == []


def test_an_entry_charged_on_another_chain_stands() -> None:
    # Its round's opening block has another hash here (or none): this chain cannot judge it.
    other = [Unconfirmed(entry=0, round=2, block=7, block_hash="00"), Unconfirmed(entry=1, round=3, block=8,
                                                                                   block_hash="ab")]  # fmt: skip
    ledger = PrivacyLedger(history=[entry(), entry()], noise_multiplier=SIGMA, unconfirmed=other)
    result, asked = reconcile(ledger, current_round=4, reveals={})
    assert result.ledger.history == [entry(), entry()] and result.ledger.unconfirmed == []
    assert (result.dropped, result.settled) == (0, 2)
    assert asked == []


def test_only_as_many_entries_as_reveals_of_a_round_are_kept() -> None:
    # Two trainings charged to round 3 (a retried commit), one reveal: the later one goes.
    ledger = PrivacyLedger(history=[entry(), entry()], noise_multiplier=SIGMA, unconfirmed=unconfirmed(0, 1))
    result, asked = reconcile(ledger, current_round=4, reveals={3: 1}, released=[chain_entry()])
    assert result.ledger.history == [entry()] and (result.dropped, result.added) == (1, 0)


def test_a_released_round_missing_from_the_ledger_is_added() -> None:
    result, asked = reconcile(PrivacyLedger(), current_round=4, reveals={}, released=[chain_entry(), chain_entry()])
    assert result.ledger.history == [chain_entry(), chain_entry()] and result.added == 2


def test_a_published_round_is_confirmed_for_good() -> None:
    ledger = PrivacyLedger(history=[entry(), entry()], noise_multiplier=SIGMA,
                           unconfirmed=unconfirmed(0, round_id=3) + unconfirmed(1, round_id=4))  # fmt: skip
    result = ledger.confirmed_round(4)
    assert result.ledger.history == ledger.history
    assert result.ledger.unconfirmed == unconfirmed(0, round_id=3) and result.settled == 1
    assert ledger.confirmed_round(5).settled == 0

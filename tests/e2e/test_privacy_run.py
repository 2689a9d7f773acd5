"""Privacy end to end: the reported ε is recomputable, ledgers survive restarts, and a
client past its budget declines while the round finalizes with the others.

The recomputation uses Opacus' own accountant on the values the chain recorded (read
back from ``results.json``), not this project's accounting code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opacus.accountants import RDPAccountant
from support import SMALL_RUN, SmallRun, compose_with

from deai_flower.chain import simulation_key
from deai_flower.protocol.encoding import from_wad
from deai_flower.errors import ConfigError
from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow


@pytest.fixture
def state_dir(small_run: SmallRun) -> Path:
    """Where the session's small run (tests/e2e/conftest.py) kept each client's ledger."""
    return small_run.state_dir


@pytest.fixture
def private_run(small_run: SmallRun) -> dict[str, Any]:
    return small_run.results


def test_results_record_each_clients_dp_parameters_per_round(private_run: dict[str, Any]) -> None:
    ledger = private_run["privacy_ledger"]
    clients = {simulation_key(seed=0, role=f"client-{i}").address: i for i in range(3)}
    assert set(ledger) == set(clients)
    for address, entry in ledger.items():
        assert entry["client"] == clients[address]
        assert [r["round"] for r in entry["rounds"]] == [1, 2]
        for record in entry["rounds"]:
            assert set(record) == {"round", "noise_multiplier", "sample_rate", "steps", "delta", "accountant",
                                   "epsilon"}  # fmt: skip
            assert record["noise_multiplier"] > 0 and 0 < record["sample_rate"] <= 1 and record["steps"] > 0
            assert (record["delta"], record["accountant"]) == (1e-5, "rdp")
    # The per-round maximum in the rounds table is the ledger's maximum.
    for r in private_run["rounds"]:
        assert r["epsilon"] == pytest.approx(max(e["rounds"][r["round"] - 1]["epsilon"] for e in ledger.values()))


def test_reported_epsilon_equals_an_independent_opacus_recomputation(private_run: dict[str, Any]) -> None:
    reveals = [e["args"] for e in private_run["events"] if e["event"] == "Revealed"]
    assert len(reveals) == 6
    for address, entry in private_run["privacy_ledger"].items():
        history: list[tuple[float, float, int]] = []
        for record in entry["rounds"]:
            history.append((record["noise_multiplier"], record["sample_rate"], record["steps"]))
            accountant = RDPAccountant()
            accountant.history = list(history)
            assert accountant.get_epsilon(delta=record["delta"]) == pytest.approx(record["epsilon"], rel=1e-9)
        # The ledger section is the chain's record, decoded: compare with the raw event.
        raw = [a["dp"] for a in reveals if a["participant"] == address]
        assert [from_wad(d["epsilonWad"]) for d in raw] == [r["epsilon"] for r in entry["rounds"]]
        # Calibrated once for the planned rounds: the last round lands on the budget
        # (within the calibration's tolerance of 0.01, never above).
        assert 7.99 <= entry["rounds"][-1]["epsilon"] <= 8.0


def test_each_clients_state_file_holds_the_history_it_revealed(private_run: dict[str, Any], state_dir: Path) -> None:
    files = sorted(state_dir.glob("privacy-ledger-*.json"))
    assert len(files) == 3
    for path in files:
        document = json.loads(path.read_text())
        revealed = private_run["privacy_ledger"][document["participant"]]["rounds"]
        assert document["run_id"] == private_run["run_id"]
        assert document["contract"] == private_run["contract_address"]
        stored = [(h["noise_multiplier"], h["sample_rate"], h["steps"]) for h in document["history"]]
        # The chain holds 18-decimal fixed point; the file holds the exact floats.
        assert stored == [pytest.approx((r["noise_multiplier"], r["sample_rate"], r["steps"]), rel=1e-15)
                          for r in revealed]  # fmt: skip
        assert document["epsilon"] == pytest.approx(revealed[-1]["epsilon"], rel=1e-12)


def test_a_restarted_client_past_its_budget_declines_and_the_rounds_finalize_without_it(
    private_run: dict[str, Any], state_dir: Path, tmp_path: Path
) -> None:
    # The same deployment again (same keys, contract address and run id): client 0
    # restarts with its state file, which says it already spent its whole budget; the
    # other two start fresh. Client 0 must decline every round and never commit; the
    # commit phase then closes at its deadline and the round goes on with the others
    # (min_reveals = quorum = 2).
    restarted = tmp_path / "state"
    restarted.mkdir()
    client0 = simulation_key(seed=0, role="client-0").address
    (path,) = [p for p in state_dir.glob("*.json") if json.loads(p.read_text())["participant"] == client0]
    (restarted / path.name).write_bytes(path.read_bytes())

    out = tmp_path / "out"
    out.mkdir()
    results = run_experiment(compose_with(*SMALL_RUN, f"privacy.state_dir={restarted}"), output_dir=out)
    assert results["contract_address"] == private_run["contract_address"]
    others = {simulation_key(seed=0, role=f"client-{i}").address for i in (1, 2)}
    for r in results["rounds"]:
        assert r["status"] == "finalized", r["reason"]
        assert set(r["declined"]) == {client0}
        assert "privacy budget exhausted" in r["declined"][client0]
        assert set(r["committed"]) == set(r["revealed"]) == others
        # Client 0's commit phase waited for the deadline on the chain's clock.
        assert r["phase_seconds"]["reveal"] >= 0
    committers = {e["args"]["participant"] for e in results["events"] if e["event"] == "Committed"}
    assert client0 not in committers and set(results["privacy_ledger"]) == others
    # its decline is on chain (signed, in the relaying coordinator's commitMany): no round
    # waited out its commit deadline for it, it was never slashed, and deai verify replays it
    declines = [(e["args"]["round"], e["args"]["participant"]) for e in results["events"] if e["event"] == "Declined"]
    assert declines == [(r["round"], client0) for r in results["rounds"]]
    assert not [e for e in results["events"] if e["event"] == "PenaltyRecorded"]
    verification = verify_run(RunRecord.from_output_dir(out), LocalStore(out / "store"))
    assert verification.ok and any("declined the round" in c for v in verification for c in v.checks)
    # Client 0's file is unchanged: a declined round spends nothing.
    assert json.loads((restarted / path.name).read_text())["history"] == json.loads(path.read_text())["history"]
    assert 7.99 <= results["rounds"][-1]["epsilon"] <= 8.0


def test_a_natural_split_with_another_client_count_stops_before_deploying(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set num_clients=18"):
        run_experiment(compose_with("dataset=lung", "num_clients=5", "progress=false"), output_dir=tmp_path)
    assert not (tmp_path / "store").exists()

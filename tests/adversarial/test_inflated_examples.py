"""Attack: a participant claims a huge example count to own the FedAvg result.

Each simulated participant is registered with its partition's size as ``maxExamples``;
the contract refuses a reveal above it (``ExampleCountAboveBound``), so the inflated
update never enters an aggregate, and `deai verify` flags any reveal above a bound.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message

from support import compose_with

from deai_flower.apps import client_app
from deai_flower.chain import simulation_key
from deai_flower.participant import handlers
from deai_flower.apps import participant_for
from deai_flower.participant.run_view import run_view
from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow

INFLATED = 2**40


def test_an_inflated_example_count_is_refused_and_never_owns_the_aggregate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attacker = 1
    attacker_data: list[Any] = []
    real_train_round = handlers.train_round

    def inflating_train_round(**kwargs: Any) -> Any:
        trained = real_train_round(**kwargs)
        if any(kwargs["x"] is x for x in attacker_data):
            return dataclasses.replace(trained, num_examples=INFLATED)  # commits to 2**40
        return trained

    monkeypatch.setattr(handlers, "train_round", inflating_train_round)

    def app(message: Message, context: Context) -> Message:
        if int(context.node_config["partition-id"]) == attacker and not attacker_data:
            config = message.content["config"]
            view = run_view(participant_for(message, context), str(config["contract"]), int(config["run-id"]))
            attacker_data.append(view.data.x)
        return client_app(message, context)

    cfg = compose_with("num_clients=4", "num_rounds=2", "progress=false", "training.local_epochs=1")
    results = run_experiment(cfg, output_dir=tmp_path, client_app=app)

    address = simulation_key(seed=0, role=f"client-{attacker}").address
    bounds = {e["args"]["participant"]: int(e["args"]["maxExamples"]) for e in results["events"]
              if e["event"] == "ParticipantRegistered"}  # fmt: skip
    assert all(0 < b < INFLATED for b in bounds.values()) and len(bounds) == 4
    for r in results["rounds"]:
        assert r["status"] == "finalized", r["reason"]
        assert address in r["committed"] and address not in r["revealed"] and len(r["revealed"]) == 3
        assert "ExampleCountAboveBound" in str(r["errors"][address])
    revealed = [e["args"] for e in results["events"] if e["event"] == "Revealed"]
    assert revealed and all(int(r["numExamples"]) <= bounds[r["participant"]] for r in revealed)
    # the honest rounds verify
    verification = verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store"))
    assert verification.ok, [v.problems for v in verification] + verification.problems


def test_verify_flags_a_reveal_above_its_registered_bound(tmp_path: Path) -> None:
    """A chain that accepted a reveal above the bound (a faulty or older contract) does not
    verify: the record is edited in an honest run's export, its commitment too."""
    cfg = compose_with("num_clients=3", "num_rounds=1", "progress=false", "training.local_epochs=1")
    run_experiment(cfg, output_dir=tmp_path)
    record = RunRecord.from_output_dir(tmp_path)
    registered = next(e for e in record.events if e["event"] == "ParticipantRegistered")
    registered["args"]["maxExamples"] = 1  # every reveal of this participant is now above its bound
    verification = verify_run(record, LocalStore(tmp_path / "store"))
    problems = [p for v in verification for p in v.problems]
    assert any("above the" in p and "registered" in p for p in problems), problems


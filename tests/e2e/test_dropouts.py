"""Dropouts and deadlines: a round goes on without a failing node, or fails with a reason.

Each case wraps the real ClientApp so that one node misbehaves in one way: it vanishes
(Flower's NODE_UNAVAILABLE), never commits, commits but never reveals, reveals something
that does not open its commitment, or commits after the deadline. Everything else is
the real protocol on the embedded chain.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from support import compose_with

from deai_flower.simulation import experiment
from deai_flower.federation import client_runtime
from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow


def misbehave(kinds: dict[int, str]) -> Callable[..., Callable[[Message, Context], Message]]:
    """A build_client_app replacement whose nodes ``kinds`` misbehave as named."""
    real_build = experiment.build_client_app

    def build(settings: Any) -> Callable[[Message, Context], Message]:
        app = real_build(settings)

        def call(message: Message, context: Context) -> Message:
            partition = int(context.node_config["partition-id"])
            kind, action = kinds.get(partition), message.metadata.message_type
            if kind == "vanish" and action != "query.identity":
                return Message(Error(ErrorCode.NODE_UNAVAILABLE, "node went away"), reply_to=message)
            if (kind, action) in (("no-commit", "train.commit"), ("no-reveal", "train.reveal")):
                return Message(Error(ErrorCode.CLIENT_APP_CRASHED, "client crashed"), reply_to=message)
            if (kind, action) == ("restart", "train.reveal"):
                # the node's process restarted since it committed: its state survived, the
                # store handle that staged its update in the background did not
                runtime = client_runtime(settings, partition)
                runtime.store = LocalStore(runtime.store.describe()["location"])
            if (kind, action) == ("lost-staging", "train.reveal"):
                Path(str(context.state["pending-reveal"]["staged"])).unlink()  # its staged copy is gone
            if (kind, action) == ("bad-reveal", "train.reveal"):
                context.state["pending-reveal"]["num-examples"] = 10**6  # not what it committed to
            if (kind, action) == ("late", "train.commit"):
                contract = client_runtime(settings, partition).contract
                round_id = int(message.content["config"]["round"])
                deadline = int(contract.get_round(settings.run_id, round_id)["commitDeadline"])
                contract.node.advance_to(deadline, timeout=5)  # this node wakes up too late
            return app(message, context)

        return call

    return build


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kinds: dict[int, str], *overrides: str) -> dict[str, Any]:
    monkeypatch.setattr(experiment, "build_client_app", misbehave(kinds))
    cfg = compose_with("num_clients=4", "num_rounds=2", "progress=false",
                       "training.local_epochs=1", *overrides)  # fmt: skip
    return experiment.run_experiment(cfg, output_dir=tmp_path)


@pytest.mark.parametrize("kind", ["vanish", "no-commit", "no-reveal", "bad-reveal", "late"])
def test_round_goes_on_without_the_faulty_node(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faulty = 3  # the last node, so that "late" is late only for itself
    results = run(tmp_path, monkeypatch, {faulty: kind})
    address = experiment.simulation_key(seed=0, role=f"client-{faulty}").address
    for r in results["rounds"]:
        assert r["status"] == "finalized", r["reason"]
        assert address not in r["revealed"] and len(r["revealed"]) == 3
        assert address in r["errors"]
    committed_without_reveal = kind in ("no-reveal", "bad-reveal")
    assert (address in results["rounds"][0]["committed"]) == committed_without_reveal
    penalties = [e["args"] for e in results["events"] if e["event"] == "PenaltyRecorded"]
    if committed_without_reveal:  # settled when it commits again in round 2
        assert [(p["participant"], p["round"], p["reason"]) for p in penalties] == [(address, 1, 0)]
    else:
        assert penalties == []
    assert all(v.ok for v in verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store")))


@pytest.mark.parametrize("kind", ["restart", "lost-staging"])
def test_a_node_whose_staged_update_is_gone_still_reveals(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The update staged at commit time is lost (the process restarted, or the file was
    removed): the node stores it again from its state and reveals as usual."""
    results = run(tmp_path, monkeypatch, {2: kind})
    address = experiment.simulation_key(seed=0, role="client-2").address
    for r in results["rounds"]:
        assert r["status"] == "finalized", r["reason"]
        assert address in r["revealed"] and len(r["revealed"]) == 4 and not r["errors"]
    assert list((tmp_path / "store" / ".staging").iterdir()) == []  # its staged copy was dropped
    assert all(v.ok for v in verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store")))


def test_a_lying_attester_is_outvoted_and_penalized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_build = experiment.build_client_app
    liars: list[str] = []

    def build(settings: Any) -> Callable[[Message, Context], Message]:
        app = real_build(settings)

        def call(message: Message, context: Context) -> Message:
            if message.metadata.message_type == "train.attest" and not liars:
                # the first attester asked, whose vote surely counts, attests a forged CID
                runtime = client_runtime(settings, int(context.node_config["partition-id"]))
                round_id = int(message.content["config"]["round"])
                runtime.contract.attest(settings.run_id, round_id, bytes([1, 0x55, 0x12, 0x20]) + b"\x66" * 32)
                liars.append(runtime.account.address)
                return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "lied"), reply_to=message)
            return app(message, context)

        return call

    monkeypatch.setattr(experiment, "build_client_app", build)
    cfg = compose_with("num_clients=4", "num_rounds=2", "progress=false",
                       "training.local_epochs=1", "strategy.committee_size=4",
                       "strategy.quorum=2")  # fmt: skip
    results = experiment.run_experiment(cfg, output_dir=tmp_path)
    assert [r["status"] for r in results["rounds"]] == ["finalized", "finalized"]
    penalties = [(e["args"]["participant"], e["args"]["round"], e["args"]["reason"])
                 for e in results["events"] if e["event"] == "PenaltyRecorded"]  # fmt: skip
    assert penalties == [(liars[0], 1, 1)]  # MinorityAttestation, settled at its next commit
    assert all(v.ok for v in verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store")))


def test_too_few_reveals_fail_the_round_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = run(tmp_path, monkeypatch, {1: "vanish", 2: "vanish", 3: "no-reveal"}, "num_rounds=1")
    (r,) = results["rounds"]
    assert r["status"] == "failed"
    assert "1 valid reveals" in r["reason"]
    assert results["global_model_cids"] == results["global_model_cids"][:1]  # the model did not move


def test_a_node_that_connects_late_takes_part_from_the_next_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deai_flower.simulation.inprocess import InProcessGrid

    real_node_ids = InProcessGrid.get_node_ids
    calls = []

    def node_ids(self: InProcessGrid) -> list[int]:
        calls.append(1)
        ids = list(real_node_ids(self))
        return ids[:-1] if len(calls) == 1 else ids  # the last node is not up in round 1

    monkeypatch.setattr(InProcessGrid, "get_node_ids", node_ids)
    results = run(tmp_path, monkeypatch, {})
    first, second = results["rounds"]
    assert first["status"] == second["status"] == "finalized"
    assert len(first["sampled"]) == 3 and len(second["sampled"]) == 4
    assert set(first["sampled"]) < set(second["sampled"])
    assert second["errors"] == {}


def test_nodes_refuse_a_model_the_chain_does_not_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A coordinator that announces another model (here: a valid, stored blob) gets no
    commit: every node checks the announced CID against the chain's before training."""
    from deai_flower.strategies import CommitRevealStrategy

    real = CommitRevealStrategy.configure_train

    def lying(self: CommitRevealStrategy, *args: Any, **kwargs: Any) -> Any:
        messages = list(real(self, *args, **kwargs))
        decoy = self.store.put(b"not the global model")
        for message in messages:
            message.content["config"]["model-cid"] = decoy
        return messages

    monkeypatch.setattr(CommitRevealStrategy, "configure_train", lying)
    results = run(tmp_path, monkeypatch, {}, "num_rounds=1")
    (r,) = results["rounds"]
    assert r["status"] == "failed" and r["committed"] == []
    assert len(r["errors"]) == 4
    assert all("coordinator announced model" in reason and "but the chain records" in reason
               for reason in r["errors"].values())  # fmt: skip

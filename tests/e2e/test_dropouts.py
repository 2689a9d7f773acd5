"""Dropouts and deadlines: a round goes on without a failing node, or fails with a reason.

Each case wraps the real ClientApp so that one node misbehaves in one way: it vanishes
(Flower's NODE_UNAVAILABLE), never commits, commits but never reveals, reveals something
that does not open its commitment, or commits after the deadline. Everything else is
the real protocol on the embedded chain.
"""

from __future__ import annotations

import dataclasses

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Error, Message
from flwr.common.constant import ErrorCode

from support import compose_with

from deai_flower.apps import client_app
from deai_flower.chain import simulation_key
from deai_flower.apps import participant_for
from deai_flower.participant.run_view import forget_run_views, run_view
from deai_flower.protocol.outcome import encode_outcome
from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow


def _view(message: Message, context: Context) -> Any:
    """The node's view of the run the message is about (its contract handle, its store)."""
    config = message.content["config"]
    return run_view(participant_for(message, context), str(config["contract"]), int(config["run-id"]))


def misbehave(kinds: dict[int, str]) -> Callable[[Message, Context], Message]:
    """The real ClientApp, except that nodes ``kinds`` misbehave as named."""

    def call(message: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        kind, action = kinds.get(partition), message.metadata.message_type
        if kind == "vanish-in-round-1" and action == "train.commit" and int(message.content["config"]["round"]) == 1:
            return Message(Error(ErrorCode.NODE_UNAVAILABLE, "node went away"), reply_to=message)
        if kind == "silent-at-first" and action == "query.identity" and "silenced" not in context.state:
            context.state["silenced"] = ConfigRecord({"at": 1})  # a transient fault: only the first query fails
            return Message(Error(ErrorCode.NODE_UNAVAILABLE, "connection reset"), reply_to=message)
        if kind == "vanish" and action != "query.identity":
            return Message(Error(ErrorCode.NODE_UNAVAILABLE, "node went away"), reply_to=message)
        if (kind, action) in (("no-commit", "train.commit"), ("no-reveal", "train.reveal")):
            return Message(Error(ErrorCode.CLIENT_APP_CRASHED, "client crashed"), reply_to=message)
        if (kind, action) == ("restart", "train.reveal"):
            # the node's process restarted since it committed: its state survived, the
            # store handle that staged its update in the background did not
            forget_run_views(participant_for(message, context))
        if (kind, action) == ("lost-staging", "train.reveal"):
            Path(str(context.state["pending-reveal"]["staged"])).unlink()  # its staged copy is gone
        if (kind, action) == ("bad-reveal", "train.reveal"):
            context.state["pending-reveal"]["num-examples"] = 10**6  # not what it committed to
        if (kind, action) == ("hang", "train.commit") and int(message.content["config"]["round"]) == 1:
            time.sleep(HANG_S)  # hung past the commit phase; then the real call, which the chain refuses
        if (kind, action) == ("hang-attest", "train.attest") and int(message.content["config"]["round"]) == 1:
            time.sleep(HANG_S)  # hung past the attest phase
        if (kind, action) == ("late", "train.commit"):
            # this node is still training when the coordinator stops waiting for commits
            late.append((message, context))
            return Message(Error(ErrorCode.NODE_UNAVAILABLE, "no reply within the commit phase"), reply_to=message)
        if action == "train.reveal" and late and not call.late_outcomes:  # type: ignore[attr-defined]
            # the commit phase is over: the late node's commit arrives now, and is refused
            try:
                outcome = client_app(*late[0])
                call.late_outcomes.append(outcome.error.reason if outcome.has_error() else "accepted")  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - what the late commit ran into
                call.late_outcomes.append(f"{type(exc).__name__}: {exc}")  # type: ignore[attr-defined]
        return client_app(message, context)

    late: list[tuple[Message, Context]] = []
    call.late_outcomes = []  # type: ignore[attr-defined]
    return call


def run(tmp_path: Path, kinds: dict[int, str], *overrides: str, app: Any = None) -> dict[str, Any]:
    cfg = compose_with("num_clients=4", "num_rounds=2", "progress=false",
                       "training.local_epochs=1", *overrides)  # fmt: skip
    return run_experiment(cfg, output_dir=tmp_path, client_app=app or misbehave(kinds))


@pytest.mark.parametrize("kind", ["vanish", "no-commit", "no-reveal", "bad-reveal", "late"])
def test_round_goes_on_without_the_faulty_node(
    kind: str, tmp_path: Path
) -> None:
    faulty = 3
    app = misbehave({faulty: kind})
    results = run(tmp_path, {}, app=app)
    if kind == "late":
        assert app.late_outcomes and "UnexpectedPhase" in app.late_outcomes[0]  # type: ignore[attr-defined]
    address = simulation_key(seed=0, role=f"client-{faulty}").address
    for r in results["rounds"]:
        assert r["status"] == "finalized", r["reason"]
        assert address not in r["revealed"] and len(r["revealed"]) == 3
        assert address in r["errors"]
    committed_without_reveal = kind in ("no-reveal", "bad-reveal")
    assert (address in results["rounds"][0]["committed"]) == committed_without_reveal
    penalties = [e["args"] for e in results["events"] if e["event"] == "PenaltyRecorded"]
    if committed_without_reveal:  # slashed in each round, settled by the coordinator when the round closes
        assert [(p["participant"], p["round"], p["reason"]) for p in penalties] == [(address, 1, 0), (address, 2, 0)]
        slash = results["spec"]["incentives"]["slash_missing_reveal"]
        assert all(int(p["slashed"]) == slash for p in penalties)
        funds = results["incentives"]["participants"][address]
        # it topped its stake up before committing again, and earned nothing
        assert funds["slashed"] == 2 * slash and funds["deposited"] == funds["stake"] + 2 * slash
        assert funds["payout"] == 0 and results["incentives"]["conserved"]
    else:
        assert penalties == []
    assert all(v.ok for v in verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store")))


#: How long a hung node sleeps, and the commit phase it outlasts. The others hand their
#: signed commitments to the relaying coordinator within three quarters of the phase,
#: three of them on the one slot the hung node leaves: on a loaded machine 12 s (9 s to
#: hand over) left one of them late.
HANG_S, COMMIT_S = 35, 20


def test_the_inprocess_engine_holds_a_hung_node_to_its_deadline(tmp_path: Path) -> None:
    """A node hangs in round 1's commit for longer than the commit phase: the in-process
    engine answers the coordinator without it when the phase's time is up (as a
    SuperLink would), the other nodes, running beside it, committed in time, and the
    round finalizes without it; in round 2 it takes part again."""
    faulty = 3
    results = run(tmp_path, {faulty: "hang"}, f"strategy.commit_timeout_s={COMMIT_S}", "engine.concurrency=2")
    address = simulation_key(seed=0, role=f"client-{faulty}").address
    first, second = results["rounds"]
    assert first["status"] == second["status"] == "finalized", (first["reason"], second["reason"])
    assert address not in first["committed"] and len(first["revealed"]) == 3
    assert address in second["revealed"]
    # the coordinator stopped waiting at the commit deadline, not when the hung node woke
    assert first["phase_seconds"]["commit"] < HANG_S, first["phase_seconds"]


@pytest.mark.parametrize("kind", ["restart", "lost-staging"])
def test_a_node_whose_staged_update_is_gone_still_reveals(
    kind: str, tmp_path: Path
) -> None:
    """The update staged at commit time is lost (the process restarted, or the file was
    removed): the node stores it again from its state and reveals as usual."""
    results = run(tmp_path, {2: kind})
    address = simulation_key(seed=0, role="client-2").address
    for r in results["rounds"]:
        assert r["status"] == "finalized", r["reason"]
        assert address in r["revealed"] and len(r["revealed"]) == 4 and not r["errors"]
    assert list((tmp_path / "store" / ".staging").iterdir()) == []  # its staged copy was dropped
    assert all(v.ok for v in verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store")))


def test_a_lying_attester_is_outvoted_and_penalized(tmp_path: Path) -> None:
    liars: list[str] = []
    first = threading.Lock()  # the attesters run at once: one of them lies

    def call(message: Message, context: Context) -> Message:
        if message.metadata.message_type == "train.attest" and not liars and first.acquire(blocking=False):
            # the first attester to run, whose vote surely counts, attests a forged CID
            view = _view(message, context)
            round_id = int(message.content["config"]["round"])
            revealers = [r["participant"] for r in view.contract.revealed(view.run_id, round_id, from_block=0)]
            view.contract.attest(view.run_id, round_id, bytes([1, 0x55, 0x12, 0x20]) + b"\x66" * 32,
                                 encode_outcome(dict.fromkeys(revealers, 1), {}))  # fmt: skip
            liars.append(view.participant.address)
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "lied"), reply_to=message)
        return client_app(message, context)

    cfg = compose_with("num_clients=4", "num_rounds=2", "progress=false",
                       "training.local_epochs=1", "strategy.committee_size=4",
                       "strategy.quorum=2")  # fmt: skip
    results = run_experiment(cfg, output_dir=tmp_path, client_app=call)
    assert [r["status"] for r in results["rounds"]] == ["finalized", "finalized"]
    penalties = [(e["args"]["participant"], e["args"]["round"], e["args"]["reason"])
                 for e in results["events"] if e["event"] == "PenaltyRecorded"]  # fmt: skip
    assert penalties == [(liars[0], 1, 1)]  # MinorityAttestation, settled at its next commit
    # the slash left its stake short: it settled, topped the stake up and committed all the same
    assert liars[0] in results["rounds"][1]["committed"]
    deposits = [e for e in results["events"] if e["event"] == "StakeDeposited" and e["args"]["participant"] == liars[0]]
    assert len(deposits) == 2
    liar = results["incentives"]["participants"][liars[0]]
    assert liar["slashed"] == results["spec"]["incentives"]["slash_minority"] > 0
    assert all(v.ok for v in verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store")))


def test_a_node_that_missed_its_identity_query_is_asked_again_next_round(tmp_path: Path) -> None:
    results = run(tmp_path, {2: "silent-at-first"})
    address = simulation_key(seed=0, role="client-2").address
    first, second = results["rounds"]
    assert address not in first["committed"] and len(first["committed"]) == 3
    assert address in second["committed"] and address in second["revealed"]
    assert results["refused_nodes"] == []  # a transient fault is no refusal


def test_too_few_reveals_fail_the_round_with_a_reason(tmp_path: Path) -> None:
    results = run(tmp_path, {1: "vanish", 2: "vanish", 3: "no-reveal"}, "num_rounds=1", "strategy.max_failed_rounds=0")
    (r,) = results["rounds"]
    assert r["status"] == "failed"
    assert "1 valid reveals" in r["reason"]
    assert results["global_model_cids"] == results["global_model_cids"][:1]  # the model did not move


def test_a_failed_round_is_retried_until_the_run_is_complete(tmp_path: Path) -> None:
    """Round 1 fails (too few nodes); attempts go on until num_rounds are finalized, and
    the table numbers rounds as the chain does."""
    results = run(tmp_path, {1: "vanish-in-round-1", 2: "vanish-in-round-1", 3: "vanish-in-round-1"})
    assert [(r["round"], r["status"]) for r in results["rounds"]] == [(1, "failed"), (2, "finalized"),
                                                                       (3, "finalized")]  # fmt: skip
    assert len(results["global_model_cids"]) == 3
    finalized = [e["args"]["round"] for e in results["events"] if e["event"] == "RoundFinalized"]
    assert finalized == [2, 3]
    assert all(v.ok for v in verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store")))


def test_a_run_stops_after_max_failed_rounds(tmp_path: Path) -> None:
    results = run(tmp_path, {1: "vanish", 2: "vanish", 3: "vanish"}, "strategy.max_failed_rounds=1")
    assert [r["status"] for r in results["rounds"]] == ["failed", "failed"]


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
    results = run(tmp_path, {})
    first, second = results["rounds"]
    assert first["status"] == second["status"] == "finalized"
    assert len(first["sampled"]) == 3 and len(second["sampled"]) == 4
    assert set(first["sampled"]) < set(second["sampled"])
    assert second["errors"] == {}


def test_nodes_refuse_a_model_the_chain_does_not_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A coordinator that announces another model (here: a valid, stored blob) gets no
    commit: every node checks the announced CID against the chain's before training."""
    from deai_flower.messages import CommitRequest, RoundRequest
    from deai_flower.strategies import CommitRevealStrategy

    real = CommitRevealStrategy._exchange

    def lying(self: CommitRevealStrategy, node_ids: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(request, CommitRequest | RoundRequest):  # whichever flow asks for the commits
            request = dataclasses.replace(request, model_cid=self.store.put(b"not the global model"))
        return real(self, node_ids, request, *args, **kwargs)

    monkeypatch.setattr(CommitRevealStrategy, "_exchange", lying)
    results = run(tmp_path, {}, "num_rounds=1", "strategy.max_failed_rounds=0")
    (r,) = results["rounds"]
    assert r["status"] == "failed" and r["committed"] == []
    assert len(r["errors"]) == 4
    assert all("coordinator announced model" in reason and "but the chain records" in reason
               for reason in r["errors"].values())  # fmt: skip


def test_a_hung_attester_does_not_hold_a_relayed_round_past_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A committee member hangs in round 1's attest past the attest phase. The relaying
    coordinator stops waiting for hand-overs after three quarters of each reveal and
    attest phase (leaving the rest for its batches to land before the deadline) and
    casts the others' votes: the round finalizes without the hung node."""
    from deai_flower.strategies import CommitRevealStrategy

    waits: dict[str, list[float]] = {}
    real = CommitRevealStrategy._exchange

    def timed(self: CommitRevealStrategy, node_ids: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        waits.setdefault(request.message_type, []).append(float(kwargs["timeout"]))
        return real(self, node_ids, request, *args, **kwargs)

    monkeypatch.setattr(CommitRevealStrategy, "_exchange", timed)
    faulty = 3
    results = run(tmp_path, {faulty: "hang-attest"}, f"strategy.attest_timeout_s={COMMIT_S}",
                  f"strategy.reveal_timeout_s={COMMIT_S}", "engine.concurrency=4")  # fmt: skip
    address = simulation_key(seed=0, role=f"client-{faulty}").address
    first, second = results["rounds"]
    assert first["status"] == second["status"] == "finalized", (first["reason"], second["reason"])
    assert address in first["revealed"] and address not in first["attested"] and len(first["attested"]) == 3
    assert waits["train.attest"] == waits["train.reveal"] == [0.75 * COMMIT_S] * 2
    assert first["phase_seconds"]["attest"] < COMMIT_S

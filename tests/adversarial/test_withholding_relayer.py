"""Attack: a relaying coordinator gets an honest silo slashed by withholding its reveal.

With one message per phase the coordinator collects each node's reveal record (its
hand-over) and publishes them in one ``revealMany`` (protocol §2.4). Before the reveal
guard, a coordinator that left one node's record out of the batch, or never sent
``train.reveal`` at all, got that honest node slashed for a missing reveal every round,
its update already published, and ``deai verify`` found nothing wrong. Now each node
that committed watches the chain and reveals with its own transaction when its record
is not on chain by the fallback point; a silo whose node config says ``relay=false``
reveals and attests itself whatever the coordinator asks.

Through the apps on the embedded chain, with the real contract and store. A coordinator
on a real chain cannot move the clock: these adversaries wait for each deadline as the
wall clock brings it, as they would have to there (on a development chain anybody may
jump the clock, and then no guard can act in time).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eth_account import Account
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.metadata import Metadata
from support import compose_with

from deai_flower.apps import client_app
from deai_flower.chain import simulation_key
from deai_flower.chain.phases import DEADLINE_OF
from deai_flower.experiment import run_experiment
from deai_flower.simulation.harness import prepare_run, serve_chain
from deai_flower.storage import LocalStore, cid_from_bytes
from deai_flower.strategies import CommitRevealStrategy
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow

# Short phases: the adversaries wait them out on the wall clock. The guard's margin is an
# eighth of the reveal phase (2 s here; 75 s with the default 600 s phases).
RUN = ["num_clients=3", "num_rounds=2", "progress=false", "training.local_epochs=1", "privacy=none",
       "strategy.commit_timeout_s=15", "strategy.reveal_timeout_s=16", "strategy.attest_timeout_s=30"]  # fmt: skip
VICTIM = simulation_key(seed=0, role="client-1").address
#: After a deadline, the first block on a real chain comes within about this many seconds
#: (the embedded chain's block timestamps lag the wall clock after idle spells: the guard's
#: reading of the chain's clock can trail the adversary's by its polling interval).
BLOCK_TIME_S = 4


class WallClockCoordinator(CommitRevealStrategy):
    """The reference coordinator, except that it waits for a deadline as on a real chain."""

    def _wait_for_phase_end(self, round_id: int, phase: str, *, until: str | None = None) -> str:
        current = self.contract.phase(self.run_id, round_id)
        if current == phase and phase not in ("finalized", "failed"):
            deadline = int(self.contract.get_round(self.run_id, round_id)[DEADLINE_OF[until or phase]])
            node, started, chain_then = self.contract.node, time.monotonic(), self.contract.node.now()
            while node.now() < deadline and chain_then + (time.monotonic() - started) < deadline + BLOCK_TIME_S:
                time.sleep(0.2)
            node.advance_to(deadline, timeout=5)  # the block a real chain would have mined by now
            current = self.contract.phase(self.run_id, round_id)
        return current


class WithholdingRelayer(WallClockCoordinator):
    """Publishes every hand-over but the victim's."""

    def _relay_reveals(self, report: Any, records: dict[str, bytes]) -> list[int]:
        kept = {address: record for address, record in records.items() if address != VICTIM}
        return super()._relay_reveals(report, kept) if kept else []


class SilentRelayer(WallClockCoordinator):
    """Never sends ``train.reveal``: waits out the reveal phase and goes on to attest."""

    def reveal(self, report: Any, committed: dict[int, Message]) -> dict[int, Message]:
        self._mark(report, "reveal")
        return {}


def played_with(coordinator: type[CommitRevealStrategy], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                client: Callable[[Message, Context], Message] | None = None,
                *overrides: str) -> dict[str, Any]:  # fmt: skip
    monkeypatch.setattr("deai_flower.server_app.CommitRevealStrategy", coordinator)
    return run_experiment(compose_with(*RUN, *overrides), output_dir=tmp_path, client_app=client)


def own_reveals(results: dict[str, Any]) -> dict[int, list[str]]:
    """Per round, the participants whose Revealed event is the only one of its transaction
    (their own ``reveal``, not a batch)."""
    by_tx: dict[str, list[dict[str, Any]]] = {}
    for e in results["events"]:
        if e["event"] == "Revealed":
            by_tx.setdefault(e["tx"], []).append(e)
    alone: dict[int, list[str]] = {}
    for events in by_tx.values():
        if len(events) == 1:
            alone.setdefault(int(events[0]["args"]["round"]), []).append(events[0]["args"]["participant"])
    return alone


def penalized(results: dict[str, Any]) -> list[str]:
    return [e["args"]["participant"] for e in results["events"] if e["event"] == "PenaltyRecorded"]


def test_a_withheld_node_reveals_itself_and_is_not_slashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = played_with(WithholdingRelayer, tmp_path, monkeypatch)
    rounds = results["rounds"]
    assert [r["status"] for r in rounds] == ["finalized", "finalized"], rounds
    assert {r: sorted(a) for r, a in own_reveals(results).items()} == {r["round"]: [VICTIM] for r in rounds}
    assert VICTIM not in penalized(results)
    assert all(v.ok for v in verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store")))


def test_nodes_never_asked_to_reveal_reveal_themselves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = played_with(SilentRelayer, tmp_path, monkeypatch, None, "num_rounds=1")
    committers = {r["round"]: sorted(r["committed"]) for r in results["rounds"]}
    assert committers and all(committers.values())
    assert {r: sorted(a) for r, a in own_reveals(results).items()} == committers
    assert penalized(results) == []
    assert all(v.ok for v in verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store")))


def refusing_relay(partition: int) -> Callable[[Message, Context], Message]:
    """The real ClientApp; the node of ``partition`` has ``relay=false`` in its node config."""

    def call(message: Message, context: Context) -> Message:
        if int(context.node_config["partition-id"]) == partition:
            context = Context(run_id=context.run_id, node_id=context.node_id,
                              node_config={**context.node_config, "relay": "false"}, state=context.state,
                              run_config=context.run_config)  # fmt: skip
        return client_app(message, context)

    return call


def test_a_silo_that_wants_no_relayer_sends_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the reference coordinator, relaying; node 1 refuses to be relayed
    results = played_with(WallClockCoordinator, tmp_path, monkeypatch, refusing_relay(1))
    rounds = results["rounds"]
    assert [r["status"] for r in rounds] == ["finalized", "finalized"], rounds
    assert {r: sorted(a) for r, a in own_reveals(results).items()} == {r["round"]: [VICTIM] for r in rounds}
    own_votes = [e for e in results["events"] if e["event"] == "Attested" and e["args"]["attester"] == VICTIM]
    assert own_votes and all(r["gas_by_call"].get("reveal", 0) > 0 for r in rounds)
    assert VICTIM not in penalized(results)


# ------------------------------------------------------------------ a deployed silo's guard process


def deployed_silos(tmp_path: Path, prepared: Any, chain_url: str, n: int) -> list[dict[str, Any]]:
    """Node configs of ``n`` deployed silos: the run's registered keys in keystores, data files."""
    configs = []
    for i in range(n):
        home = tmp_path / f"silo-{i}"
        home.mkdir()
        account = simulation_key(seed=0, role=f"client-{i}")
        (home / "password").write_text("pw\n")
        (home / "keystore.json").write_text(json.dumps(Account.encrypt(account.key, "pw", kdf="pbkdf2",
                                                                       iterations=1024)))  # fmt: skip
        split = prepared.split
        np.savez(home / "train.npz", x=split.x_train[i * 60:(i + 1) * 60], y=split.y_train[i * 60:(i + 1) * 60])
        configs.append({"keystore": str(home / "keystore.json"), "password-file": str(home / "password"),
                        "data-path": str(home / "train.npz"), "chain-url": chain_url,
                        "store": prepared.store_location, "ledger-dir": str(home / "ledger"), "device": "cpu",
                        "threads": 1, "allow-no-dp": "true"})  # fmt: skip
    return configs


def ask(node: int, action: str, config: dict[str, Any], contexts: list[Context]) -> Message:
    metadata = Metadata(run_id=1, message_id=f"{action}-{node}", src_node_id=0, dst_node_id=node + 1,
                        reply_to_message_id="", group_id=str(config["round"]), created_at=time.time(), ttl=600,
                        message_type=action)  # fmt: skip
    message = Message(RecordDict({"config": ConfigRecord(config)}), metadata=metadata)
    answer = client_app(message, contexts[node])
    assert not answer.has_error(), answer.error.reason
    return answer


def test_a_deployed_silos_guard_outlives_its_clientapp_and_reveals(tmp_path: Path) -> None:
    """Deployed silos (keystores, data files, the chain over JSON-RPC): every message's
    handler returns, and the relayer (this test) publishes only node 0's hand-over and
    never tells anyone; node 1's detached guard process reveals it, node 2 has
    ``relay=false`` and revealed on its own when asked to hand over. (A longer reveal
    phase than above: the guard is a process of its own, slower to poll on a busy machine.)"""
    cfg = compose_with("num_clients=3", "num_rounds=1", "privacy=none", "training.local_epochs=1",
                       "strategy.commit_timeout_s=20", "strategy.reveal_timeout_s=32")  # fmt: skip
    prepared = prepare_run(cfg, tmp_path / "run")
    contract, run_id = prepared.contract, prepared.run_id
    with serve_chain(prepared.node, same_process=False) as chain_url:
        configs = deployed_silos(tmp_path, prepared, chain_url, 3)
        configs[2]["relay"] = "false"
        run_config = {"contract": contract.address, "run-id": run_id}
        contexts = [Context(run_id=1, node_id=i + 1, node_config=c, state=RecordDict(), run_config=run_config)
                    for i, c in enumerate(configs)]  # fmt: skip
        round_id, _ = contract.open_round(run_id)
        locator = {"contract": contract.address, "run-id": run_id, "chain-url": chain_url,
                   "store": prepared.store_location, "round": round_id}  # fmt: skip
        model = cid_from_bytes(bytes(contract.get_run(run_id)["modelCid"]))
        for i in range(3):
            assert ask(i, "train.commit", {**locator, "model-cid": model}, contexts).content["status"]["state"] == \
                "committed"  # fmt: skip
        assert contract.phase(run_id, round_id) == "reveal"
        states = [ask(i, "train.reveal", {**locator, "relay": True}, contexts).content["status"] for i in range(3)]
        assert [s["state"] for s in states] == ["handed", "handed", "revealed"]
        contract.reveal_many(run_id, round_id, {states[0]["address"]: bytes(states[0]["record"])})
        jobs = list((tmp_path / "silo-1" / "ledger" / "pending-reveals").glob("*.json"))
        assert len(jobs) == 1  # the pending reveal, in the silo's own files

        deadline = int(contract.get_round(run_id, round_id)["revealDeadline"])
        wall_clock_until(contract, deadline)
        assert contract.phase(run_id, round_id) == "attest"
        reveals = contract.final_reveals(run_id, round_id)
        assert sorted(str(r["participant"]) for r in reveals) == sorted(s["address"] for s in states)
        for address in (states[1]["address"], states[2]["address"]):
            contract.settle(run_id, address)
            assert contract.get_member(run_id, address)["penalties"] == 0
        log = (tmp_path / "silo-1" / "ledger" / "reveal-guard.log").read_text()
        assert "revealed with its own transaction" in log, log
        assert "Traceback" not in log and not any((tmp_path / "silo-1" / "ledger" / "pending-reveals").iterdir())


def wall_clock_until(contract: Any, deadline: int) -> None:
    """Wait for the chain's clock to pass ``deadline`` as on a real chain, then mine the block."""
    node, started, chain_then = contract.node, time.monotonic(), contract.node.now()
    while chain_then + (time.monotonic() - started) < deadline + BLOCK_TIME_S:
        time.sleep(0.2)
    node.advance_to(deadline, timeout=5)


# ------------------------------------------------------------------ a real deployment


@pytest.mark.deployment
def test_on_a_real_deployment_a_silo_refuses_the_relayer_and_every_node_guards(tmp_path: Path) -> None:
    """flower-superlink (TLS, node auth) and three flower-supernodes, one message per phase:
    silo-2's node config says ``relay=false`` and it reveals and attests itself while the
    coordinator relays the others'; every committer's guard process, started from a
    ClientApp process that has exited since, finds its record on chain and ends."""
    from deai_flower.consortium.demo_data import write_silo_files
    from deai_flower.consortium.localnet import LocalConsortium, tools_missing

    if tools_missing():
        pytest.skip(f"Flower's deployment executables are missing: {', '.join(tools_missing())}")
    with LocalConsortium(tmp_path) as net:
        net.start_chain()
        net.set_up_chain()
        files = write_silo_files(tmp_path / "data", num_silos=3, overrides=["dataset=breast_cancer"])
        silos = [net.add_silo(f"silo-{i}", data_path=f.train, eval_path=f.eval) for i, f in enumerate(files)]
        created = net.create_run(["num_rounds=1", "dataset=breast_cancer", "training.local_epochs=1",
                                  "training.batch_size=16"])  # fmt: skip
        net.start_superlink()
        for silo in silos:
            net.register_supernode(silo)
        for i, silo in enumerate(silos):
            extra = {"relay": "false"} if i == 2 else {}
            net.start_supernode(silo, silo.node_config(chain_url=net.rpc, store=net.store, **extra))
        net.wait_for_nodes(3)
        run_config = {**net.coordinator_run_config(created, tmp_path / "results"), "phase-messages": "true"}
        flwr_run = net.run(run_config)
        status = net.wait(flwr_run, timeout=900)
        assert status == "finished:completed", net.server_log(flwr_run)[-4000:]
        rounds = json.loads((tmp_path / "results" / "results.json").read_text())["rounds"]
        assert [r["status"] for r in rounds] == ["finalized"]
        gas = rounds[0]["gas_by_call"]
        assert gas.get("revealMany", 0) > 0 and gas.get("reveal", 0) > 0 and gas.get("attest", 0) > 0, gas
        for silo in silos:
            ledger = silo.home / "ledger"
            log = (ledger / "reveal-guard.log").read_text()
            assert "the record is on chain" in log and "own transaction" not in log, log
            assert not any((ledger / "pending-reveals").iterdir())

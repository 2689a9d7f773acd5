"""Three silos on a real Flower deployment: SuperLink with TLS and SuperNode authentication,
one SuperNode per silo (its own keystore, SuperNode key, data files and node config), the
consortium set up with the functions ``deai consortium`` calls, ``flwr run``, judged by
``flwr ls`` and results.json, then ``deai verify`` from chain + store.

Two more SuperNodes join, admitted by the SuperLink (their keys are registered with
``flwr supernode register``) but not by the protocol: a *thief* runs with silo-0's chain
keystore and password on its own SuperNode key, an *outsider* with a chain key nobody
registered. Neither may be asked to act. One run (module-scoped) serves these tests:
every message starts a fresh ``flwr-clientapp`` process, so a round takes tens of seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deai_flower.consortium.demo_data import write_silo_files
from deai_flower.consortium.localnet import LocalConsortium
from deai_flower.consortium.setup import CreatedRun

ROUNDS = 2
RUN_OVERRIDES = [f"num_rounds={ROUNDS}", "dataset=breast_cancer", "training.local_epochs=1", "training.batch_size=16"]
HONEST = ["silo-0", "silo-1", "silo-2"]


@dataclass
class FinishedRun:
    net: LocalConsortium
    created: CreatedRun
    flwr_run: int
    status: str
    results: dict[str, Any]
    node_ids: dict[str, int]
    seconds: float


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FinishedRun]:
    work = tmp_path_factory.mktemp("consortium")
    with LocalConsortium(work) as net:
        net.start_chain()
        net.set_up_chain()
        files = write_silo_files(work / "data", num_silos=3, overrides=["dataset=breast_cancer"])
        for name, f in zip(HONEST, files, strict=True):
            net.add_silo(name, data_path=f.train, eval_path=f.eval)
        thief = net.add_silo("thief", data_path=files[0].train, eval_path=files[0].eval, registered=False)
        outsider = net.add_silo("outsider", data_path=files[1].train, eval_path=files[1].eval, registered=False)
        created = net.create_run(RUN_OVERRIDES)
        net.start_superlink()
        node_ids = {name: net.register_supernode(silo) for name, silo in net.silos.items()}
        for name in HONEST:
            net.start_supernode(net.silos[name], net.silos[name].node_config(chain_url=net.rpc, store=net.store))
        victim = net.silos["silo-0"]
        net.start_supernode(thief, thief.node_config(chain_url=net.rpc, store=net.store, **{
            "keystore": str(victim.key.keystore), "password-file": str(victim.key.password_file)}))  # fmt: skip
        net.start_supernode(outsider, outsider.node_config(chain_url=net.rpc, store=net.store))
        net.wait_for_nodes(5)
        started = time.monotonic()
        flwr_run = net.run(net.coordinator_run_config(created, work / "results"))
        status = net.wait(flwr_run, timeout=1200)
        seconds = time.monotonic() - started
        results_path = work / "results" / "results.json"
        results = json.loads(results_path.read_text()) if results_path.exists() else {}
        if status != "finished:completed" or not results:
            print(net.server_log(flwr_run)[-4000:], file=sys.stderr)
        yield FinishedRun(net, created, flwr_run, status, results, node_ids, seconds)


def test_a_two_round_run_of_three_silos_finalizes_and_verifies(finished_run: FinishedRun) -> None:
    run = finished_run
    assert run.status == "finished:completed", run.net.server_log(run.flwr_run)[-3000:]
    rounds = run.results["rounds"]
    assert [r["status"] for r in rounds] == ["finalized"] * ROUNDS, rounds
    silos = {run.net.silos[n].key.address for n in HONEST}
    for r in rounds:
        assert set(r["committed"]) == set(r["revealed"]) == silos
        evaluation = r["federated_evaluation"]  # each silo scored the finalized model on its own held-out data
        assert set(evaluation["per_silo"]) == silos and evaluation["num_examples"] > 0
        assert r["accuracy"] == pytest.approx(evaluation["accuracy"])
    assert set(run.results["initial_federated_evaluation"]["per_silo"]) == silos
    # each silo staked from its own key, was paid by score, and the books balance
    incentives = run.results["incentives"]
    assert incentives["conserved"] and incentives["funded"] > 0
    for who in silos:
        funds = incentives["participants"][who]
        assert funds["deposited"] == incentives["stake_required"] and funds["slashed"] == 0
        assert set(funds["score"]) == {str(r) for r in range(1, ROUNDS + 1)}
    # each silo kept its privacy ledger in its own directory
    for name in HONEST:
        assert list((run.net.silos[name].home / "ledger").glob("privacy-ledger-*.json"))
    verify = subprocess.run([str(Path(sys.executable).parent / "deai"), "verify", "--rpc", run.net.rpc, "--contract",
                             run.created.contract, "--run-id", str(run.created.run_id), "--store-root",
                             str(run.net.work / "store")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"all {ROUNDS} rounds verified" in verify.stdout
    print(f"deployment: {ROUNDS} rounds in {run.seconds:.0f}s; phases per round:",
          [r["phase_seconds"] for r in rounds])


def test_impostor_nodes_are_refused_and_never_asked_to_act(finished_run: FinishedRun) -> None:
    run = finished_run
    refused = {r["node_id"]: r for r in run.results["refused_nodes"]}
    victim = run.net.silos["silo-0"].key.address
    thief, outsider = run.node_ids["thief"], run.node_ids["outsider"]
    assert set(refused) == {thief, outsider}
    assert refused[thief]["address"] == victim and "is not the one registered for" in refused[thief]["reason"]
    assert "not a registered participant" in refused[outsider]["reason"]
    assert sorted(int(n) for n in run.results["nodes"]) == sorted(run.node_ids[n] for n in HONEST)
    # never asked to act: no privacy ledger, and the victim took part once per round, on its own node
    for name in ("thief", "outsider"):
        assert not list((run.net.silos[name].home / "ledger").glob("privacy-ledger-*.json"))
    assert all(r["committed"].count(victim) == 1 for r in run.results["rounds"])


def test_a_supernode_whose_key_is_not_registered_is_refused(finished_run: FinishedRun) -> None:
    net = finished_run.net
    stranger = net.add_silo("stranger", data_path=net.silos["silo-0"].data_path, eval_path=None, registered=False)
    node = net.start_supernode(stranger, stranger.node_config(chain_url=net.rpc, store=net.store))
    try:
        node.process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a SuperNode with an unregistered key kept running: {node.log()[-1500:]}")
    assert node.process.returncode != 0
    listed = net.nodes()
    assert len(listed) == 5, listed  # the five whose keys were registered, and no other

"""A run's launcher cannot set a silo's terms, and a silo that cannot serve stalls nobody.

Attack A: the node checked a message only against the run config the coordinator writes;
a deployed node trained with σ = 0 (ε = ∞) and staked 50 ether for a run its creator set
up. A silo's node config now pins what it serves (:mod:`deai_flower.participant.terms`):
a non-private run, a stake above its maximum, a contract it did not pin are refused
before it stakes or trains (its stake on chain stays 0, its ledger directory empty), and
the reason reaches the coordinator's refused nodes and ``results.json``. It signs a
decline of the round instead (sending nothing), which the coordinator checks and records
at once, so on a chain whose clock nobody moves the round does not wait for it; a decline
signed by another key is not recorded.

Attack B: a registered silo whose SuperNode has a misspelt ``data-path`` fails every
message; the chain samples it, and every round waited out the whole commit phase, with
``refused_nodes`` empty. It is now reported by name (its registered address, found from
its SuperNode key, and why it cannot serve), and the round goes on once every node that
can answer has committed.

The in-process cases run the real ClientApp, contract (embedded EVM served over
JSON-RPC) and store through a grid that delivers in this process; the last test is a
real deployment (``flower-superlink`` with TLS and SuperNode authentication, one
``flower-supernode`` per silo, anvil).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from eth_account import Account
from eth_utils import to_checksum_address
from flwr.app import Array, ArrayRecord, Message
from flwr.common.constant import SUPERLINK_NODE_ID

from deai_flower.chain import RoundsContract
from deai_flower.chain.node import connect_rpc
from deai_flower.flower_compat import task_identity
from deai_flower.models import get_arrays, instantiate_model
from deai_flower.participant.app import client_app
from deai_flower.protocol.spec import IncentivesSpec, PrivacySpec, RunSpec
from deai_flower.server_app import with_nodes
from deai_flower.storage import LocalStore, array_spec, cid_to_bytes, encode_arrays
from deai_flower.strategies import CommitRevealStrategy
from deai_flower.strategies.relay import relay_commits
from e2e.test_deployed_participants import _consortium
from e2e.test_node_identity import SuperLinkGrid
from unit.participant._support import small_spec

ETHER = 10**18
VICTIM_NODE = 303


@dataclass
class Consortium:
    admin: RoundsContract
    url: str
    store_dir: Path
    #: Node id -> (node config, address); two honest silos and the victim (node 303).
    silos: dict[int, tuple[dict[str, Any], str]]

    @property
    def victim(self) -> str:
        return self.silos[VICTIM_NODE][1]


@pytest.fixture
def consortium(tmp_path: Path) -> Iterator[Consortium]:
    """Three registered silos (100 ether each) on the embedded chain served over JSON-RPC."""
    for admin, url, configs in _consortium(tmp_path, allow_dev_methods=False):
        silos = {n: (cfg, a) for n, cfg, a in zip((301, 302, VICTIM_NODE), configs, admin.members(), strict=True)}
        yield Consortium(admin, url, tmp_path / "store", silos)


def _create_run(net: Consortium, spec: RunSpec) -> int:
    """The creator's run: ``spec`` stored, its digest and its amounts on chain."""
    store = LocalStore(net.store_dir)
    store.put(spec.to_bytes())
    initial = store.put(encode_arrays(get_arrays(instantiate_model(spec.model, spec.data, seed=0))))
    run_id, _ = net.admin.create_run(spec.run_params(initial_model_cid=cid_to_bytes(initial), code_hash=b"\x02" * 32))
    return run_id


class ConcurrentGrid(SuperLinkGrid):
    """As a SuperLink: pushing returns at once, every node runs its message at the same
    time, and replies are pulled as they come (one-message rounds need this)."""

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(message.metadata.message_id)
            threading.Thread(target=self._answer, args=(message,), daemon=True).start()
        return ids

    def _answer(self, message: Message) -> None:
        reply = self._deliver(message)
        with self._lock:
            self._replies[message.metadata.message_id] = reply


def _play_one_round(net: Consortium, run_id: int, spec: RunSpec, honest_terms: dict[str, Any],
                    victim_terms: dict[str, Any], *, one_message: bool = False,
                    real_clock: bool = False) -> tuple[CommitRevealStrategy, SuperLinkGrid]:  # fmt: skip
    """One round of ``run_id`` through the real ClientApp: the honest silos with
    ``honest_terms`` in their node configs, the victim with ``victim_terms``; with
    ``one_message``, as a deployment plays it (one ``train.round`` per node, all at once);
    with ``real_clock``, the coordinator reaches the chain over JSON-RPC too, which
    refuses to move its clock (as a production chain does)."""
    nodes = {n: ({**cfg, **(victim_terms if n == VICTIM_NODE else honest_terms)}, b"")
             for n, (cfg, _) in net.silos.items()}  # fmt: skip
    grid = (ConcurrentGrid if one_message else SuperLinkGrid)(client_app, nodes, {"contract": net.admin.address,
                                                                                  "run-id": run_id})  # fmt: skip
    model = instantiate_model(spec.model, spec.data, seed=0)
    contract = RoundsContract(connect_rpc(net.url), net.admin.address, net.admin.account) if real_clock else net.admin
    strategy = CommitRevealStrategy(contract=contract, run_id=run_id, spec=spec, store=LocalStore(net.store_dir),
                                    expected_spec=array_spec(get_arrays(model)), max_failed_rounds=0,
                                    one_message_rounds=one_message, reply_poll_s=0.2 if one_message else None,
                                    locator={"contract": net.admin.address, "run-id": run_id, "chain-url": net.url,
                                             "store": f"local:{net.store_dir}"})  # fmt: skip
    with task_identity(run_id=1, node_id=SUPERLINK_NODE_ID):
        strategy.start(grid, ArrayRecord({k: Array(v) for k, v in get_arrays(model).items()}), num_rounds=1)  # type: ignore[arg-type]
    return strategy, grid


def _assert_refused_before_staking_or_training(net: Consortium, run_id: int, strategy: CommitRevealStrategy,
                                               grid: SuperLinkGrid, reason: str) -> None:  # fmt: skip
    victim = net.victim
    assert net.admin.get_account(run_id, victim)["stake"] == 0  # nothing deposited
    assert not list(Path(net.silos[VICTIM_NODE][0]["ledger-dir"]).glob("privacy-ledger-*.json"))  # nothing trained
    report = strategy.reports[0]
    assert victim not in report.committed and reason in report.declined[victim]
    assert strategy.refused[VICTIM_NODE]["address"] == victim
    assert reason in strategy.refused[VICTIM_NODE]["reason"]
    # results.json names it with its reason; it is not asked to act again
    document = with_nodes({"rounds": [{}]}, strategy)
    (entry,) = [r for r in document["refused_nodes"] if r["node_id"] == VICTIM_NODE]
    assert entry["address"] == victim and reason in entry["reason"]
    assert victim not in document["nodes"].values()
    assert grid.received[VICTIM_NODE] == ["query.identity", "train.commit"]
    # the run goes on without it: the honest silos finalized the round
    assert report.status == "finalized", report.reason
    assert sorted(report.committed) == sorted(a for n, (_, a) in net.silos.items() if n != VICTIM_NODE)


def test_a_non_private_run_is_refused_by_a_silo_that_did_not_allow_one(consortium: Consortium) -> None:
    """The creator's run trains with σ = 0 (ε = ∞) and asks a stake: the victim, started
    with the default terms, neither stakes nor trains."""
    spec = dataclasses.replace(small_spec(), privacy=PrivacySpec(epsilon=math.inf, delta=1e-5, max_grad_norm=1.0,
                                                                 accountant="rdp"),
                               incentives=IncentivesSpec(stake=ETHER // 10))  # fmt: skip
    run_id = _create_run(consortium, spec)
    strategy, grid = _play_one_round(consortium, run_id, spec, {"allow-no-dp": True}, {})
    _assert_refused_before_staking_or_training(consortium, run_id, strategy, grid, "the run is not private (ε = ∞")


def test_a_stake_above_the_silos_maximum_is_refused(consortium: Consortium) -> None:
    """50 ether at stake (the sybils' prize): above the victim's default maximum of 1 ether."""
    spec = dataclasses.replace(small_spec(), incentives=IncentivesSpec(stake=50 * ETHER))
    run_id = _create_run(consortium, spec)
    strategy, grid = _play_one_round(consortium, run_id, spec, {"max-stake": "60 ether"}, {})
    _assert_refused_before_staking_or_training(consortium, run_id, strategy, grid,
                                               f"the run's stake {50 * ETHER} exceeds this silo's maximum {ETHER}")  # fmt: skip


def test_a_run_on_a_contract_the_silo_did_not_pin_is_refused(consortium: Consortium) -> None:
    """The victim pinned its consortium's contract; a launcher names another one (here:
    a second deployment, its run config and messages all pointing there)."""
    pinned, _ = RoundsContract.deploy(consortium.admin.node, consortium.admin.account)
    spec = small_spec()
    run_id = _create_run(consortium, spec)
    strategy, grid = _play_one_round(consortium, run_id, spec, {}, {"contract": pinned.address})
    _assert_refused_before_staking_or_training(
        consortium, run_id, strategy, grid,
        f"contract {consortium.admin.address} is not the one this silo serves ({pinned.address})")  # fmt: skip


def test_a_silo_that_cannot_build_is_named_with_its_reason_and_asked_again(consortium: Consortium) -> None:
    """A misspelt data-path: every message fails; the coordinator reports the node and its
    reason (no SuperNode key here: the deployment test below names its address)."""
    spec = small_spec()
    run_id = _create_run(consortium, spec)
    broken = {"data-path": str(Path(consortium.silos[VICTIM_NODE][0]["data-path"]).with_name("trian.npz"))}
    strategy, grid = _play_one_round(consortium, run_id, spec, {}, broken)
    reason = strategy.refused[VICTIM_NODE]["reason"]
    assert reason.startswith("cannot serve: ConfigError: node_config 'data-path':") and "trian.npz" in reason
    assert strategy.reports[0].status == "finalized"
    assert grid.received[VICTIM_NODE] == ["query.identity"]


def test_one_message_rounds_do_not_wait_out_the_commit_phase_for_a_silo_that_cannot_serve(
    consortium: Consortium,
) -> None:
    """As a deployment plays a round: the chain samples the broken silo, which never
    commits; the two others commit, and the round goes on at once instead of waiting for
    the commit deadline (150 s here, 600 s by default)."""
    spec = small_spec(rounds=dataclasses.replace(small_spec().rounds, commit_s=150))
    run_id = _create_run(consortium, spec)
    broken = {"data-path": str(Path(consortium.silos[VICTIM_NODE][0]["data-path"]).with_name("trian.npz"))}
    strategy, grid = _play_one_round(consortium, run_id, spec, {}, broken, one_message=True)
    report = strategy.reports[0]
    assert report.status == "finalized", report.reason
    assert spec.rounds.sample_fraction == 1.0 and len(consortium.admin.members()) == 3  # the chain sampled it
    assert sorted(report.committed) == sorted(a for n, (_, a) in consortium.silos.items() if n != VICTIM_NODE)
    assert report.phase_seconds["round"] < 100, report.phase_seconds  # old: at least the 150 s
    assert strategy.refused[VICTIM_NODE]["reason"].startswith("cannot serve:")


# ------------------------------------------- a refusing silo's signed decline (real clock)

#: The commit phase of the real-clock cases: a round that waited for the refusing silo
#: would take at least this long.
REAL_CLOCK_COMMIT_S = 120


def _pinned_elsewhere(net: Consortium) -> dict[str, Any]:
    """Victim terms that refuse the run: they pin a second deployment of the contract."""
    pinned, _ = RoundsContract.deploy(net.admin.node, net.admin.account)
    return {"contract": pinned.address}


def _assert_declined_on_chain_at_once(net: Consortium, run_id: int, strategy: CommitRevealStrategy) -> None:
    """The victim's signed decline is on chain, the round finalized with the two others
    long before the commit deadline, and the victim staked, trained and lost nothing."""
    report = strategy.reports[0]
    assert report.status == "finalized", report.reason
    assert sorted(report.committed) == sorted(a for n, (_, a) in net.silos.items() if n != VICTIM_NODE)
    assert net.victim in report.declined and net.victim not in report.errors
    events = [e for e in net.admin.event_log() if e["args"].get("runId") == run_id]
    assert [(e["args"]["round"], e["args"]["participant"]) for e in events if e["event"] == "Declined"] == \
        [(report.round, net.victim)]  # fmt: skip
    assert not [e for e in events if e["event"] == "PenaltyRecorded" and net.victim in e["args"].values()]
    seconds = sum(report.phase_seconds.values())
    assert seconds < REAL_CLOCK_COMMIT_S / 2, report.phase_seconds  # old: at least the commit deadline
    account = net.admin.get_account(run_id, net.victim)
    assert account["stake"] == 0, account  # nothing deposited, so nothing to slash
    assert not list(Path(net.silos[VICTIM_NODE][0]["ledger-dir"]).glob("privacy-ledger-*.json"))  # nothing trained


@pytest.mark.parametrize("one_message", [False, True], ids=["step-wise", "one-message"])
def test_a_refusing_silo_signs_its_decline_so_a_real_clock_round_does_not_wait_for_it(
    consortium: Consortium, one_message: bool
) -> None:
    """The victim's terms refuse the run (it pinned another contract); the coordinator
    cannot move the chain's clock. The victim signs a decline (and sends nothing), the
    coordinator records it with commitMany, and the round goes on as soon as the others
    committed, not at the 120 s commit deadline."""
    spec = small_spec(rounds=dataclasses.replace(small_spec().rounds, commit_s=REAL_CLOCK_COMMIT_S))
    run_id = _create_run(consortium, spec)
    strategy, grid = _play_one_round(consortium, run_id, spec, {}, _pinned_elsewhere(consortium),
                                     one_message=one_message, real_clock=True)  # fmt: skip
    _assert_declined_on_chain_at_once(consortium, run_id, strategy)
    assert "is not the one this silo serves" in strategy.reports[0].declined[consortium.victim]


@pytest.mark.parametrize("one_message", [False, True], ids=["step-wise", "one-message"])
def test_a_forged_decline_handed_in_a_reply_is_not_recorded(consortium: Consortium, one_message: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The victim's reply carries a decline signed by another key (or by its own key for
    another round): the coordinator checks each signature before sending, and no decline
    lands in the victim's name (the round goes on at its deadline, as before)."""
    from deai_flower.participant import handlers

    forger = Account.create()
    monkeypatch.setattr(handlers, "_signed_decline",
                        lambda view, round_id: view.contract.as_account(forger).sign_commit(view.run_id, round_id, None))  # fmt: skip
    spec = small_spec()
    run_id = _create_run(consortium, spec)
    strategy, _ = _play_one_round(consortium, run_id, spec, {}, _pinned_elsewhere(consortium), one_message=one_message)
    report = strategy.reports[0]
    assert report.status == "finalized", report.reason
    assert consortium.victim in report.declined  # as the node said, in the report only
    assert "not its own" in report.errors[consortium.victim]
    events = consortium.admin.event_log()
    assert not [e for e in events if e["event"] == "Declined"]
    # a decline the victim signed for another round is refused alike (the digest binds the round)
    victim = RoundsContract(consortium.admin.node, consortium.admin.address, Account.from_key(_victim_key(consortium)))
    round_id = report.round + 1  # the strategy opened it when its round finalized
    assert consortium.admin.phase(run_id, round_id) == "commit"
    relayed = relay_commits(consortium.admin, run_id, round_id,
                            {consortium.victim: (bytes(32), victim.sign_commit(run_id, round_id + 1, None))})  # fmt: skip
    assert relayed.landed == [] and "not its own" in relayed.refused[consortium.victim]
    assert not [e for e in consortium.admin.event_log() if e["event"] == "Declined"]


def _victim_key(net: Consortium) -> bytes:
    """The victim's private key, from its keystore."""
    cfg = net.silos[VICTIM_NODE][0]
    password = Path(cfg["password-file"]).read_text().splitlines()[0]
    return bytes(Account.decrypt(json.loads(Path(cfg["keystore"]).read_text()), password))


# ---------------------------------------------------------------------------- a deployment


@pytest.mark.deployment
@pytest.mark.slow
def test_deployed_silos_refuse_a_non_private_run_and_a_broken_silo_does_not_stall_the_round(
    tmp_path: Path,
) -> None:
    """Real SuperLink (TLS, SuperNode authentication), four SuperNodes, anvil: the creator's
    run is non-private (privacy=none). Two silos allowed that in their node configs; the
    victim did not and refuses before staking or training; the fourth silo is registered
    but its SuperNode's data-path is misspelt. The round finalizes with the two, well
    before the 300 s commit phase would have ended; results.json names the victim and
    the broken silo (by its registered address) with their reasons."""
    from deai_flower.consortium.demo_data import write_silo_files
    from deai_flower.consortium.localnet import LocalConsortium, tools_missing

    if tools_missing():
        pytest.skip(f"Flower's deployment executables are missing: {', '.join(tools_missing())}")
    commit_s = 300
    overrides = ["num_rounds=1", "dataset=breast_cancer", "training.local_epochs=1", "training.batch_size=16",
                 f"strategy.commit_timeout_s={commit_s}", "privacy=none"]  # fmt: skip
    with LocalConsortium(tmp_path) as net:
        net.start_chain()
        net.set_up_chain()
        files = write_silo_files(tmp_path / "data", num_silos=4, overrides=["dataset=breast_cancer"])
        silos = [net.add_silo(name, data_path=f.train, eval_path=f.eval)
                 for name, f in zip(["silo-0", "silo-1", "victim", "broken"], files, strict=True)]  # fmt: skip
        created = net.create_run(overrides)
        net.start_superlink()
        node_ids = {silo.name: net.register_supernode(silo) for silo in silos}
        pin = {"contract": created.contract, "runs": str(created.run_id)}
        for silo in silos[:2]:
            net.start_supernode(silo, silo.node_config(chain_url=net.rpc, store=net.store, **pin, **{"allow-no-dp": True}))
        victim, broken = silos[2], silos[3]
        net.start_supernode(victim, victim.node_config(chain_url=net.rpc, store=net.store, **pin))
        net.start_supernode(broken, broken.node_config(chain_url=net.rpc, store=net.store, **pin,
                                                       **{"data-path": str(broken.data_path) + ".misspelt"}))  # fmt: skip
        net.wait_for_nodes(4)
        started = time.monotonic()
        flwr_run = net.run({**net.coordinator_run_config(created, tmp_path / "results"), "federated-evaluation": False})
        status = net.wait(flwr_run, timeout=900)
        seconds = time.monotonic() - started
        results_path = tmp_path / "results" / "results.json"
        results = json.loads(results_path.read_text()) if results_path.exists() else {}
        if status != "finished:completed" or not results:
            print(net.server_log(flwr_run)[-4000:], file=sys.stderr)
        assert status == "finished:completed" and results, status
        reader = RoundsContract(net.anvil.connect(), created.contract, Account.create())  # type: ignore[union-attr]
        victim_address, broken_address = to_checksum_address(victim.key.address), to_checksum_address(broken.key.address)
        # Attack A: refused before staking or training, the reason in results.json
        assert reader.get_account(created.run_id, victim_address)["stake"] == 0
        assert not list((victim.home / "ledger").glob("privacy-ledger-*.json"))
        refused = {r["node_id"]: r for r in results["refused_nodes"]}
        assert refused[node_ids["victim"]]["address"] == victim_address
        assert "the run is not private (ε = ∞" in refused[node_ids["victim"]]["reason"]
        (round_one,) = results["rounds"]
        assert "the run is not private" in round_one["declined"][victim_address]
        # Attack B: the broken silo named by its registered address, and the round not held up by it
        assert refused[node_ids["broken"]]["address"] == broken_address
        assert "cannot serve" in refused[node_ids["broken"]]["reason"]
        assert "data-path" in refused[node_ids["broken"]]["reason"]
        assert round_one["status"] == "finalized", round_one["reason"]
        assert sorted(round_one["committed"]) == sorted(to_checksum_address(s.key.address) for s in silos[:2])
        phases = round_one["phase_seconds"]  # the commit step (one message a phase) or the whole round on one
        assert phases.get("commit", phases.get("round", commit_s)) < commit_s * 0.6, phases
        print(f"deployment: run {seconds:.0f} s; round phases {round_one['phase_seconds']}", file=sys.stderr)

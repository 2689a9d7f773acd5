"""Deployed silos through the module-level ClientApp: each built from its own node config
(keystore, password file, data file, chain endpoint, store, ledger directory), one round
played by hand on the embedded chain served over JSON-RPC, as a coordinator would ask."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eth_account import Account
from flwr.app import Context, Message
from support import Deployment

from deai_flower.chain import RoundsContract, connect_embedded, simulation_key
from deai_flower.chain.bridge import JsonRpcBridge
from deai_flower.errors import ProtocolError
from deai_flower.flower_compat import task_identity
from deai_flower.participant.app import client_app
from deai_flower.storage import LocalStore, cid_from_bytes
from unit.participant._support import call, context, create_run, local_data, message, small_spec


@pytest.fixture
def consortium(tmp_path: Path) -> Iterator[tuple[RoundsContract, str, list[dict[str, Any]]]]:
    """A contract with three registered silos, the chain's JSON-RPC URL, and each silo's node config."""
    yield from _consortium(tmp_path, allow_dev_methods=False)


@pytest.fixture
def consortium_with_dev_clock(tmp_path: Path) -> Iterator[tuple[RoundsContract, list[dict[str, Any]]]]:
    """The same, on a chain whose clock the silos may move (as anvil's): a deadline
    closes a phase as soon as it is due, not after a wall-clock wait for the next block."""
    for admin, _, configs in _consortium(tmp_path, allow_dev_methods=True):
        yield admin, configs


def _consortium(tmp_path: Path, *, allow_dev_methods: bool) -> Iterator[tuple[RoundsContract, str, list[dict[str, Any]]]]:  # fmt: skip
    node = connect_embedded()
    admin_key = simulation_key(seed=9, role="coordinator")
    silos = [Account.create() for _ in range(3)]
    node.fund([admin_key.address] + [s.address for s in silos])
    admin, _ = RoundsContract.deploy(node, admin_key)
    bridge = JsonRpcBridge(node, allow_dev_methods=allow_dev_methods)
    url = bridge.start()
    configs = []
    for i, silo in enumerate(silos):
        admin.register(silo.address, bytes([i + 1]) * 32)
        home = tmp_path / f"silo-{i}"
        home.mkdir()
        (home / "key.json").write_text(json.dumps(Account.encrypt(silo.key, f"pw{i}", kdf="scrypt", iterations=2**4)))
        (home / "password").write_text(f"pw{i}\n")
        data = local_data(i)
        np.savez(home / "train.npz", x=data.x, y=data.y)
        # one store every silo reaches (an IPFS network, in a real consortium)
        configs.append({"keystore": str(home / "key.json"), "password-file": str(home / "password"),
                        "data-path": str(home / "train.npz"), "chain-url": url, "store": f"local:{tmp_path / 'store'}",
                        "ledger-dir": str(home / "ledger"), "device": "cpu", "threads": 1})  # fmt: skip
    yield admin, url, configs
    bridge.stop()


def test_deployed_silos_play_a_round_and_refuse_another_run(
    consortium: tuple[RoundsContract, str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    admin, _, configs = consortium
    store = LocalStore(tmp_path / "store")
    run_id = create_run(Deployment(node=admin.node, admin=admin, clients=[]), store, small_spec())
    round_id, _ = admin.open_round(run_id)
    run_config = {"contract": admin.address, "run-id": run_id}
    contexts = [context(cfg, run_config, node_id=20 + i) for i, cfg in enumerate(configs)]
    # the coordinator's own chain and store: a deployed silo does not go there
    locator = {"contract": admin.address, "run-id": run_id, "chain-url": "http://coordinator.invalid:1",
               "store": "ipfs:/ip4/192.0.2.1/tcp/5001", "round": round_id}  # fmt: skip

    def ask(i: int, action: str, ctx: Context | None = None, **extra: Any) -> dict[str, Any]:
        reply = call(client_app, message(action, {**locator, **extra}, node_id=20 + i), ctx or contexts[i],
                     node_id=20 + i)  # fmt: skip
        assert not reply.has_error(), reply.error
        return dict(reply.content["status"])

    addresses = [ask(i, "query.identity", challenge=bytes([i]) * 32)["address"] for i in range(3)]
    assert set(addresses) == set(admin.members())
    model_cid = cid_from_bytes(bytes(admin.get_run(run_id)["modelCid"]))
    assert [ask(i, "train.commit", **{"model-cid": model_cid})["state"] for i in range(3)] == ["committed"] * 3
    assert [ask(i, "train.reveal")["state"] for i in range(3)] == ["revealed"] * 3
    attested = [ask(i, "train.attest") for i in range(3)]
    assert [a["state"] for a in attested] == ["attested", "attested", "late"]
    assert cid_from_bytes(bytes(admin.get_run(run_id)["modelCid"])) == attested[0]["cid"] == attested[1]["cid"]
    # each silo kept its privacy ledger in its own directory
    assert all(len(list(Path(cfg["ledger-dir"]).glob("privacy-ledger-*.json"))) == 1 for cfg in configs)

    with pytest.raises(ProtocolError, match="this participant serves run"):
        call(client_app, message("train.commit", {**locator, "run-id": run_id + 1, "model-cid": model_cid}),
             contexts[0])  # fmt: skip



def _play_rounds_at_once(configs: list[dict[str, Any]], run_config: dict[str, Any], locator: dict[str, Any],
                         model_cid: str) -> list[Message]:  # fmt: skip
    """Each silo's ``train.round`` run at the same time, as each SuperNode runs its own."""
    ids = [20 + i for i in range(len(configs))]
    messages = [message("train.round", {**locator, "model-cid": model_cid}, node_id=n) for n in ids]
    contexts = [context(cfg, run_config, node_id=n) for cfg, n in zip(configs, ids, strict=True)]
    # Flower reads one process-wide task identity when a reply is built: set once for all threads
    with task_identity(run_id=1, node_id=0), ThreadPoolExecutor(len(configs)) as pool:
        return list(pool.map(client_app, messages, contexts))


def test_deployed_silos_play_a_whole_round_each_on_one_message(
    consortium: tuple[RoundsContract, str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """Commit, reveal and attest on one message per silo, paced by the chain's phases: the
    round finalizes with no other message, and each reply reports every step it took."""
    admin, _, configs = consortium
    store = LocalStore(tmp_path / "store")
    run_id = create_run(Deployment(node=admin.node, admin=admin, clients=[]), store, small_spec())
    round_id, _ = admin.open_round(run_id)
    locator = {"contract": admin.address, "run-id": run_id, "chain-url": "http://coordinator.invalid:1",
               "store": "ipfs:/ip4/192.0.2.1/tcp/5001", "round": round_id}  # fmt: skip
    model_cid = cid_from_bytes(bytes(admin.get_run(run_id)["modelCid"]))
    replies = _play_rounds_at_once(configs, {"contract": admin.address, "run-id": run_id}, locator, model_cid)
    assert not any(r.has_error() for r in replies), [r.error for r in replies if r.has_error()]
    states = [str(r.content["status"]["state"]) for r in replies]
    # a majority of the 3 committee members finalizes; the last may find the round finalized already
    assert states.count("attested") >= 2 and set(states) <= {"attested", "agreed", "late"}, states
    assert admin.phase(run_id, round_id) == "finalized"
    final = cid_from_bytes(bytes(admin.get_run(run_id)["modelCid"]))
    assert {str(r.content["status"]["cid"]) for r in replies if r.content["status"]["state"] == "attested"} == {final}
    for reply in replies:
        metrics = reply.content["metrics"]
        assert metrics["commit-gas"] > 0 and metrics["reveal-gas"] > 0 and metrics["train-loss"] >= 0
    assert len(admin.final_reveals(run_id, round_id)) == 3


def test_one_message_rounds_close_a_phase_at_its_deadline_without_the_absent_silo(
    tmp_path: Path, consortium_with_dev_clock: tuple[RoundsContract, list[dict[str, Any]]]
) -> None:
    """Two of three sampled silos play; the third never commits. The two wait on the chain
    until the commit deadline, move the clock there themselves, and finalize the round."""
    admin, configs = consortium_with_dev_clock
    store = LocalStore(tmp_path / "store")
    spec = small_spec(rounds=dataclasses.replace(small_spec().rounds, commit_s=15))  # training fits, loaded or not
    run_id = create_run(Deployment(node=admin.node, admin=admin, clients=[]), store, spec)
    round_id, _ = admin.open_round(run_id)
    locator = {"contract": admin.address, "run-id": run_id, "chain-url": "http://coordinator.invalid:1",
               "store": "ipfs:/ip4/192.0.2.1/tcp/5001", "round": round_id}  # fmt: skip
    model_cid = cid_from_bytes(bytes(admin.get_run(run_id)["modelCid"]))
    replies = _play_rounds_at_once(configs[:2], {"contract": admin.address, "run-id": run_id}, locator, model_cid)
    assert not any(r.has_error() for r in replies), [r.error for r in replies if r.has_error()]
    assert [str(r.content["status"]["state"]) for r in replies] == ["attested", "attested"]
    assert admin.phase(run_id, round_id) == "finalized"
    assert int(admin.get_run(run_id)["currentRound"]) == round_id + 1  # the finalization opened the next

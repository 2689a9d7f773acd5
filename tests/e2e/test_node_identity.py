"""Node identity and federated evaluation through the real ClientApp: the coordinator asks
only nodes that prove their chain address with a signature over a fresh challenge, whose
address is registered, and whose SuperNode key (as the SuperLink reports it) is the one
registered for it; those nodes score each finalized model on their own held-out data.

Silos are deployed participants (keystore, password file, data files, their own chain
endpoint and store); the grid delivers to them in this process and reports each node's
SuperNode public key as Flower's SuperLink does.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.node_pb2 import NodeInfo
from support import Deployment

from deai_flower.apps import client_app
from deai_flower.chain import RoundsContract, connect_embedded, simulation_key
from deai_flower.chain.bridge import JsonRpcBridge
from deai_flower.consortium.credentials import create_supernode_keys
from deai_flower.protocol.identity import sign_identity
from deai_flower.flower_compat import task_identity
from deai_flower.models import get_arrays, instantiate_model
from deai_flower.simulation.inprocess import InProcessGrid
from deai_flower.storage import LocalStore, array_spec
from deai_flower.strategies import CommitRevealStrategy
from unit.participant._support import create_run, local_data, small_spec

RUN_ID = 1


class SuperLinkGrid(InProcessGrid):
    """Deployed nodes: each its own node config and SuperNode public key; every message logged."""

    def __init__(self, app: Callable[[Message, Context], Message], nodes: dict[int, tuple[dict[str, Any], bytes]],
                 run_config: dict[str, Any]) -> None:  # fmt: skip
        super().__init__(app, num_nodes=0, run_id=RUN_ID, seed=0, run_config=run_config)  # type: ignore[arg-type]
        self._keys = {n: key for n, (_, key) in nodes.items()}
        self._contexts = {n: Context(run_id=RUN_ID, node_id=n, node_config=cfg, state=RecordDict(),
                                     run_config=dict(run_config)) for n, (cfg, _) in nodes.items()}  # fmt: skip
        self.received: dict[int, list[str]] = defaultdict(list)

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [NodeInfo(node_id=n, public_key=self._keys[n]) for n in self._contexts]

    def _deliver(self, message: Message) -> Message:
        self.received[message.metadata.dst_node_id].append(message.metadata.message_type)
        return super()._deliver(message)


def _pem(pub_path: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_public_key(pub_path.read_bytes())
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _silo(home: Path, account: LocalAccount, url: str, store: Path, seed: int) -> dict[str, Any]:
    home.mkdir(parents=True)
    (home / "key.json").write_text(json.dumps(Account.encrypt(account.key, "pw", kdf="scrypt", iterations=2**4)))
    (home / "password").write_text("pw\n")
    data = local_data(seed, n=48)
    np.savez(home / "train.npz", x=data.x[:36], y=data.y[:36])
    np.savez(home / "eval.npz", x=data.x[36:], y=data.y[36:])
    return {"keystore": str(home / "key.json"), "password-file": str(home / "password"),
            "data-path": str(home / "train.npz"), "eval-data-path": str(home / "eval.npz"), "chain-url": url,
            "store": f"local:{store}", "ledger-dir": str(home / "ledger"), "device": "cpu", "threads": 1}  # fmt: skip


@pytest.fixture
def chain() -> Iterator[tuple[RoundsContract, str]]:
    node = connect_embedded()
    admin_key = simulation_key(seed=11, role="coordinator")
    node.fund([admin_key.address])
    admin, _ = RoundsContract.deploy(node, admin_key)
    bridge = JsonRpcBridge(node)
    yield admin, bridge.start()
    bridge.stop()


def forging(victim: str) -> Callable[[Message, Context], Message]:
    """The real ClientApp, except that it claims ``victim``'s address (signing with its own key)."""

    def call(message: Message, context: Context) -> Message:
        reply = client_app(message, context)
        if message.metadata.message_type == "query.identity":
            reply.content["status"]["address"] = victim
        return reply

    return call


def test_only_nodes_that_prove_a_registered_identity_are_asked_to_act(
    chain: tuple[RoundsContract, str], tmp_path: Path
) -> None:
    admin, url = chain
    store_dir = tmp_path / "store"
    silos = [Account.create() for _ in range(3)]
    outsider = Account.create()
    admin.node.fund([a.address for a in silos + [outsider]])
    keys = [create_supernode_keys(tmp_path / "sn", f"node-{i}") for i in range(6)]
    for silo, key in zip(silos, keys, strict=False):
        admin.register(silo.address, key.identity)
    spec = small_spec(rounds=small_spec().rounds.__class__(**{**small_spec().rounds.__dict__, "num_rounds": 1}))
    store = LocalStore(store_dir)
    run_id = create_run(Deployment(node=admin.node, admin=admin, clients=[]), store, spec)
    assert run_id == RUN_ID
    configs = [_silo(tmp_path / f"silo-{i}", a, url, store_dir, i) for i, a in enumerate(silos)]
    configs.append(_silo(tmp_path / "outsider", outsider, url, store_dir, 7))  # a key nobody registered
    thief = tmp_path / "thief"  # silo 0's keystore and password, on another SuperNode
    shutil.copytree(tmp_path / "silo-0", thief)
    configs.append({**configs[0], "keystore": str(thief / "key.json"), "password-file": str(thief / "password"),
                    "ledger-dir": str(thief / "ledger")})  # fmt: skip
    configs.append(_silo(tmp_path / "forger", Account.create(), url, store_dir, 8))
    node_ids = [101, 102, 103, 104, 105, 106]
    nodes = {n: (cfg, _pem(k.public_key)) for n, cfg, k in zip(node_ids, configs, keys, strict=True)}
    forger = forging(silos[1].address)
    app = lambda m, c: (forger if c.node_id == 106 else client_app)(m, c)  # noqa: E731
    run_config = {"contract": admin.address, "run-id": run_id}
    grid = SuperLinkGrid(app, nodes, run_config)

    model = instantiate_model(spec.model, spec.data, seed=0)
    strategy = CommitRevealStrategy(contract=admin, run_id=run_id, spec=spec, store=store,
                                    expected_spec=array_spec(get_arrays(model)),
                                    locator={"contract": admin.address, "run-id": run_id, "chain-url": url,
                                             "store": f"local:{store_dir}"},
                                    federated_evaluation=True)  # fmt: skip
    with task_identity(run_id=RUN_ID, node_id=SUPERLINK_NODE_ID):
        strategy.start(grid, ArrayRecord({k: Array(v) for k, v in get_arrays(model).items()}))  # type: ignore[arg-type]

    assert [r.status for r in strategy.reports] == ["finalized"]
    # every identified silo scored the initial and the finalized model on its own held-out data
    for evaluation in (strategy.initial_federated, strategy.reports[0].federated):
        assert set(evaluation["per_silo"]) == {s.address for s in silos}
        assert evaluation["num_examples"] == 3 * 12 and 0.0 <= evaluation["accuracy"] <= 1.0
        weighted = sum(e["accuracy"] * e["num_examples"] for e in evaluation["per_silo"].values()) / 36
        assert evaluation["accuracy"] == pytest.approx(weighted)
    assert strategy.reports[0].metrics == {k: strategy.reports[0].federated[k] for k in ("loss", "accuracy")}
    assert all(grid.received[n].count("evaluate") == 2 for n in node_ids[:3])
    assert sorted(strategy.reports[0].committed) == sorted(s.address for s in silos)
    for impostor in (104, 105, 106):
        assert grid.received[impostor] == ["query.identity"], grid.received[impostor]
    reasons = {n: r["reason"] for n, r in strategy.refused.items()}
    assert set(reasons) == {104, 105, 106}
    assert "not a registered participant" in reasons[104]
    assert f"is not the one registered for {silos[0].address}" in reasons[105]
    assert f"claims {silos[1].address} but its signature over the challenge is by" in reasons[106]
    assert strategy.refused[105]["address"] == silos[0].address
    from deai_flower.server_app import with_nodes

    document = with_nodes({"rounds": [{}]}, strategy)
    assert document["rounds"][0]["federated_evaluation"]["num_examples"] == 36
    assert [r["node_id"] for r in document["refused_nodes"]] == [104, 105, 106]
    assert set(document["nodes"].values()) == {s.address for s in silos}


def test_without_supernode_keys_a_registered_address_and_a_valid_signature_suffice(
    chain: tuple[RoundsContract, str], tmp_path: Path
) -> None:
    """Flower's simulation runtimes report no SuperNode keys: identity is then the chain key alone,
    and a second node proving the same address is refused."""
    admin, url = chain
    silo = Account.create()
    admin.node.fund([silo.address])
    admin.register(silo.address, b"\x01" * 32)
    spec = small_spec()
    store = LocalStore(tmp_path / "store")
    run_id = create_run(Deployment(node=admin.node, admin=admin, clients=[]), store, spec)
    config = _silo(tmp_path / "silo", silo, url, tmp_path / "store", 0)
    grid = SuperLinkGrid(client_app, {7: (config, b""), 8: (config, b"")}, {"contract": admin.address, "run-id": run_id})
    strategy = CommitRevealStrategy(contract=admin, run_id=run_id, spec=spec, store=store, expected_spec={},
                                    locator={"contract": admin.address, "run-id": run_id, "chain-url": url,
                                             "store": f"local:{tmp_path / 'store'}"})  # fmt: skip
    with task_identity(run_id=RUN_ID, node_id=SUPERLINK_NODE_ID):
        strategy._discover(grid)
    assert strategy.addresses == {7: silo.address}
    assert strategy.refused == {8: {"address": silo.address, "reason": f"signs as {silo.address}, which node 7 has "
                                                                       "proven already"}}  # fmt: skip
    assert sign_identity  # the node's side is the real handler (see the first test)

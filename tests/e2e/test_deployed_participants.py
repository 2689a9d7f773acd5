"""Deployed silos through the module-level ClientApp: each built from its own node config
(keystore, password file, data file, chain endpoint, store, ledger directory), one round
played by hand on the embedded chain served over JSON-RPC, as a coordinator would ask."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eth_account import Account
from flwr.app import Context
from support import Deployment

from deai_flower.chain import RoundsContract, connect_embedded, simulation_key
from deai_flower.chain.bridge import JsonRpcBridge
from deai_flower.errors import ProtocolError
from deai_flower.participant.app import client_app
from deai_flower.storage import LocalStore, cid_from_bytes
from unit.participant._support import call, context, create_run, local_data, message, small_spec


@pytest.fixture
def consortium(tmp_path: Path) -> Iterator[tuple[RoundsContract, str, list[dict[str, Any]]]]:
    """A contract with three registered silos, the chain's JSON-RPC URL, and each silo's node config."""
    node = connect_embedded()
    admin_key = simulation_key(seed=9, role="coordinator")
    silos = [Account.create() for _ in range(3)]
    node.fund([admin_key.address] + [s.address for s in silos])
    admin, _ = RoundsContract.deploy(node, admin_key)
    bridge = JsonRpcBridge(node)
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


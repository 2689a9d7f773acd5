"""The module-level ClientApp: which participant a node is, and which runs it serves."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eth_account import Account
from web3 import Web3

from deai_flower.protocol.identity import recover_identity
from deai_flower.errors import ConfigError, ProtocolError
from deai_flower.participant.app import client_app, participant_for
from unit.participant._support import call, context, local_data, message

CONTRACT = "0x" + "ab" * 20
OTHER = "0x" + "cd" * 20


@pytest.fixture
def node_config(tmp_path: Path) -> dict[str, Any]:
    account = Account.create()
    (tmp_path / "key.json").write_text(json.dumps(Account.encrypt(account.key, "pw", kdf="scrypt", iterations=2**4)))
    (tmp_path / "pw").write_text("pw\n")
    data = local_data(0)
    np.savez(tmp_path / "train.npz", x=data.x, y=data.y)
    return {"keystore": str(tmp_path / "key.json"), "password-file": str(tmp_path / "pw"),
            "data-path": str(tmp_path / "train.npz"), "chain-url": "http://127.0.0.1:9",
            "store": f"local:{tmp_path / 'store'}", "ledger-dir": str(tmp_path / "ledger")}  # fmt: skip


def locator(contract: str = CONTRACT, run_id: int = 3) -> dict[str, Any]:
    return {"contract": contract, "run-id": run_id, "chain-url": "http://coordinator.invalid", "store": "local:/x",
            "round": 1, "model-cid": "whatever"}  # fmt: skip


def test_a_deployed_node_is_its_keystore_and_proves_who_it_is(node_config: dict[str, Any]) -> None:
    ctx = context(node_config, {"contract": CONTRACT.upper().replace("0X", "0x"), "run-id": 3}, node_id=11)
    challenge = secrets.token_bytes(32)
    reply = call(client_app, message("query.identity", {**locator(), "challenge": challenge}), ctx, node_id=11)
    address = reply.content["status"]["address"]
    assert address == participant_for(message("query.identity", locator()), ctx).address
    signature = reply.content["status"]["signature"]
    assert recover_identity(signature, challenge=challenge, contract=CONTRACT, run_id=3, node_id=11) == address
    assert recover_identity(signature, challenge=challenge, contract=CONTRACT, run_id=3, node_id=12) != address
    with pytest.raises(ProtocolError, match="identity query lacks 'challenge'"):
        call(client_app, message("query.identity", locator()), ctx)
    # built once per node config and process (decrypting a keystore is slow)
    commit = message("train.commit", locator())
    assert participant_for(commit, ctx) is participant_for(commit, ctx)


@pytest.mark.parametrize(("contract", "run_id"), [(OTHER, 3), (CONTRACT, 4)])
@pytest.mark.parametrize("action", ["query.identity", "train.commit", "train.reveal", "train.attest"])
def test_a_deployed_node_refuses_a_message_about_another_run(
    node_config: dict[str, Any], action: str, contract: str, run_id: int
) -> None:
    ctx = context(node_config, {"contract": CONTRACT, "run-id": 3})
    with pytest.raises(ProtocolError, match="this participant serves run 3 of contract"):
        call(client_app, message(action, locator(contract, run_id)), ctx)


def test_a_deployed_node_ignores_the_coordinators_chain_and_store(node_config: dict[str, Any]) -> None:
    ctx = context(node_config, {"contract": CONTRACT, "run-id": 3})
    participant = participant_for(message("train.commit", locator()), ctx)
    assert (participant.chain_url, participant.store_location) == (node_config["chain-url"], node_config["store"])


def test_a_deployed_node_needs_its_run_config_to_name_the_run(node_config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="run_config lacks 'contract'"):
        call(client_app, message("train.commit", locator()), context(node_config, {"run-id": 3}))
    with pytest.raises(ConfigError, match="'run-id' 'three' is not an integer"):
        call(client_app, message("train.commit", locator()), context(node_config, {"contract": CONTRACT,
                                                                                   "run-id": "three"}))  # fmt: skip


def test_a_message_that_does_not_name_its_run_is_refused(node_config: dict[str, Any]) -> None:
    ctx = context(node_config, {"contract": CONTRACT, "run-id": 3})
    with pytest.raises(ProtocolError, match="lacks contract, run-id"):
        call(client_app, message("train.commit", {"round": 1}), ctx)
    with pytest.raises(ProtocolError, match="not an address"):
        call(client_app, message("train.commit", locator(contract="0x1234")), ctx)


def test_a_node_that_is_neither_deployed_nor_simulated_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="neither a 'keystore'.*nor a 'partition-id'"):
        call(client_app, message("train.commit", locator()), context({"data-path": "/x"}))


def test_a_simulated_node_is_built_by_the_builder_the_simulation_supplies(node_config: dict[str, Any]) -> None:
    """participant/ never imports the simulation: a partition is served only by a ClientApp
    given a builder, and that builder decides who the node is."""
    simulated = {"partition-id": 2, "num-partitions": 4}
    with pytest.raises(ConfigError, match="serves deployed ones only"):
        call(client_app, message("train.commit", locator()), context(simulated))
    built: list[tuple[int, str, int | None]] = []
    deployed = participant_for(message("train.commit", locator()), context(node_config, {"contract": CONTRACT,
                                                                                         "run-id": 3}))  # fmt: skip

    def builder(run_config: Any, partition_id: int, where: Any, num_partitions: int | None) -> Any:
        built.append((partition_id, where.contract, num_partitions))
        return deployed

    node = participant_for(message("train.commit", locator()), context(simulated), simulated=builder)
    assert node.address == deployed.address and built == [(2, Web3.to_checksum_address(CONTRACT), 4)]

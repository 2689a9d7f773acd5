"""Helpers shared by the tests (importable: ``tests`` is on pytest's pythonpath)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from deai_flower.chain import RoundsContract, simulation_key, to_wad
from deai_flower.chain.node import ChainNode


def cid_of(tag: int, codec: int = 0x55) -> bytes:
    """A well-formed binary CIDv1 (sha2-256) with a recognisable digest."""
    return bytes([0x01, codec, 0x12, 0x20]) + bytes([tag % 256]) * 32


@dataclass
class Deployment:
    node: ChainNode
    admin: RoundsContract
    clients: list[LocalAccount]

    def as_client(self, i: int) -> RoundsContract:
        return self.admin.as_account(self.clients[i])

    def create_run(self, **overrides: Any) -> int:
        params = {
            "specHash": b"\x01" * 32,
            "codeHash": b"\x02" * 32,
            "initialModelCid": cid_of(0),
            "epsilonBudgetWad": to_wad(8.0),
            "deltaWad": to_wad(1e-5),
            "numRounds": 3,
            "commitDuration": 100,
            "revealDuration": 100,
            "attestDuration": 100,
            "sampleBps": 10_000,
            "quorum": 2,
            "minReveals": 2,
        }
        params.update(overrides)
        run_id, _ = self.admin.create_run(params)
        return run_id


def deploy_for_tests(node: ChainNode) -> Deployment:
    """Deploy the contract on ``node``; register clients 0-2 (client 3 stays unregistered)."""
    admin_key = simulation_key(seed=123, role="coordinator")
    clients = [simulation_key(seed=123, role=f"client-{i}") for i in range(4)]
    outsider = simulation_key(seed=123, role="outsider")
    node.fund([admin_key.address, outsider.address] + [c.address for c in clients])
    admin, _ = RoundsContract.deploy(node, admin_key)
    for i, c in enumerate(clients[:3]):
        admin.register(c.address, bytes([i]) * 32)
    return Deployment(node=node, admin=admin, clients=clients)


def with_members(d: Deployment, n: int) -> Deployment:
    """Register clients until ``n`` are (clients 0-2 are registered by the fixture)."""
    while len(d.clients) < n:
        d.clients.append(simulation_key(seed=123, role=f"client-{len(d.clients)}"))
    d.node.fund([c.address for c in d.clients[3:n]])
    for i in range(3, n):
        d.admin.register(d.clients[i].address, bytes([i]) * 32)
    return d


def compose_with(*overrides: str) -> Any:
    """The packaged Hydra config with ``overrides``, as ``deai-flower`` would compose it."""
    from hydra import compose, initialize_config_module

    from deai_flower.config import register_configs

    register_configs()
    with initialize_config_module(config_module="deai_flower.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


#: The small experiment several e2e modules check: 3 clients, 2 rounds of one epoch.
SMALL_RUN = ["num_clients=3", "num_rounds=2", "progress=false", "training.local_epochs=1"]


@dataclass(frozen=True)
class SmallRun:
    """A finished :data:`SMALL_RUN` (the session fixture ``small_run`` of tests/e2e)."""

    out: Path  # its output directory: results.json, run.json, store/
    results: dict[str, Any]
    state_dir: Path  # each client's privacy-ledger file

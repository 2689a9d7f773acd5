"""Shared fixtures: a fresh embedded chain with the compiled contract deployed."""

from __future__ import annotations

import os

import pytest
from support import Deployment

from deai_flower.chain import RoundsContract, connect_embedded, simulation_key

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def deployment() -> Deployment:
    node = connect_embedded()
    admin_key = simulation_key(seed=123, role="coordinator")
    clients = [simulation_key(seed=123, role=f"client-{i}") for i in range(4)]
    outsider = simulation_key(seed=123, role="outsider")
    node.fund([admin_key.address, outsider.address] + [c.address for c in clients])
    admin, _ = RoundsContract.deploy(node, admin_key)
    for i, c in enumerate(clients[:3]):  # client 3 stays unregistered
        admin.register(c.address, bytes([i]) * 32)
    return Deployment(node=node, admin=admin, clients=clients)

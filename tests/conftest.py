"""Shared fixtures: a fresh chain (embedded unless overridden) with the contract deployed."""

from __future__ import annotations

import os

import pytest
from support import Deployment, deploy_for_tests

from deai_flower.chain import ChainNode, connect_embedded

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def chain_node() -> ChainNode:
    """The chain the contract tests run on; tests/integration/chain overrides it with anvil."""
    return connect_embedded()


@pytest.fixture
def deployment(chain_node: ChainNode) -> Deployment:
    return deploy_for_tests(chain_node)

"""The integration tier: a real anvil JSON-RPC node, started here and stopped after.

anvil comes from npm (``@foundry-rs/anvil``, runs offline). When none is found it is
installed with npm into the user's cache directory; the tier is skipped, with the
reason, only when npm itself is missing. Every test here that uses the node is marked
``chain``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deai_flower.chain import ChainNode
from deai_flower.chain.devnode import AnvilNode, find_anvil, install_anvil
from deai_flower.errors import ChainUnavailableError

REPO = Path(__file__).resolve().parents[3]


_NODE_FIXTURES = {"anvil_binary", "anvil", "chain_node", "deployment"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``chain`` every test of this folder that runs against anvil."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and _NODE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.chain)


@pytest.fixture(scope="session")
def anvil_binary() -> Path:
    binary = find_anvil(search_from=REPO)
    if binary is not None:
        return binary
    try:
        return install_anvil()
    except ChainUnavailableError as exc:
        if "npm is not installed" in str(exc):
            pytest.skip(f"anvil not found and cannot be installed: {exc}")
        raise


@pytest.fixture(scope="session")
def anvil(anvil_binary: Path) -> Iterator[AnvilNode]:
    """One anvil for the session; tests isolate their state with snapshots."""
    with AnvilNode(anvil_binary) as node:
        yield node


@pytest.fixture
def chain_node(anvil: AnvilNode) -> Iterator[ChainNode]:
    """The shared anvil, reverted to a snapshot after each test."""
    node = anvil.connect()
    snapshot = node.w3.provider.make_request("evm_snapshot", [])["result"]
    yield node
    node.w3.provider.make_request("evm_revert", [snapshot])

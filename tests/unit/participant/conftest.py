"""Fixtures: a local store, the embedded chain by URL, and the three registered clients as participants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Deployment

from deai_flower.chain.node import register_embedded_node, unregister_embedded_node
from deai_flower.participant import Participant
from deai_flower.storage import LocalStore
from unit.participant._support import local_data


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def chain_url(deployment: Deployment) -> Iterator[str]:
    url = register_embedded_node(deployment.node)
    yield url
    unregister_embedded_node(url)


@pytest.fixture
def participants(deployment: Deployment, store: LocalStore, chain_url: str) -> list[Participant]:
    """The three registered clients as in-memory participants (reproducible noise)."""
    location = f"local:{store.describe()['location']}"
    return [Participant(account=account, data=local_data(i), store_location=location, chain_url=chain_url,
                        device="cpu", num_threads=1, noise_seed=1_000 + i, name=f"client-{i}")
            for i, account in enumerate(deployment.clients[:3])]  # fmt: skip



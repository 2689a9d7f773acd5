"""Per-process state of a client: its key, its data partition, chain and store handles.

A Flower ClientApp is a function of (message, context); rebuilding a chain connection
or re-partitioning the dataset on every message would dominate a round, so each worker
process keeps one :class:`ClientRuntime` per (run, partition). Durable per-node state
(the privacy ledger, the pending reveal) lives in Flower's ``context.state`` instead,
so it follows the node whichever worker serves it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from eth_account.signers.local import LocalAccount

from .chain import RoundsContract, simulation_key
from .chain.node import ChainNode, connect_rpc
from .data import client_partitions, load_dataset
from .errors import ChainUnavailableError, ConfigError
from .models import build_model, get_arrays, select_device
from .settings import RunSettings
from .storage import ContentStore, IpfsStore, LocalStore, array_spec

_EMBEDDED_NODES: dict[str, ChainNode] = {}
_RUNTIMES: dict[tuple[str, int], ClientRuntime] = {}
_LOCK = threading.Lock()


def register_embedded_node(node: ChainNode) -> str:
    """Make an in-process chain reachable by URL from clients in this process."""
    url = f"embedded://{id(node):x}"
    _EMBEDDED_NODES[url] = node
    return url


def unregister_embedded_node(url: str) -> None:
    _EMBEDDED_NODES.pop(url, None)


def connect_chain(url: str) -> ChainNode:
    """The chain at ``url``: a registered in-process chain or a JSON-RPC node."""
    if url.startswith("embedded://"):
        try:
            return _EMBEDDED_NODES[url]
        except KeyError:
            raise ChainUnavailableError(
                "the embedded chain lives in the process that started it; "
                "this worker cannot reach it (serve it over JSON-RPC)"
            ) from None
    return connect_rpc(url)


def open_store(
    kind: str, location: str, *, timeout_s: float = 30.0, retries: int = 2, max_bytes: int | None = None
) -> ContentStore:
    """The content store of a run: a directory (``local``) or an IPFS node's RPC API multiaddr (``ipfs``).

    ``timeout_s``, ``retries`` and ``max_bytes`` (a download cap) apply to ``ipfs`` only.
    """
    if kind == "local":
        return LocalStore(location)
    if kind == "ipfs":
        return IpfsStore(location, timeout=timeout_s, retries=retries, max_bytes=max_bytes)
    raise ConfigError(f"unknown storage kind {kind!r}; choose one of: local, ipfs")


def client_role(partition_id: int) -> str:
    """Name under which a simulated client's key is derived."""
    return f"client-{partition_id}"


@dataclass
class ClientRuntime:
    """Everything a client reuses across messages within one worker process."""

    settings: RunSettings
    partition_id: int
    account: LocalAccount
    contract: RoundsContract
    store: ContentStore
    x: np.ndarray
    y: np.ndarray
    model: torch.nn.Module
    spec: dict[str, Any]
    device: torch.device


def client_runtime(settings: RunSettings, partition_id: int) -> ClientRuntime:
    """The (cached) runtime of simulated client ``partition_id``."""
    key = (settings.session, partition_id)
    with _LOCK:
        runtime = _RUNTIMES.get(key)
        if runtime is None:
            runtime = _build_runtime(settings, partition_id)
            _RUNTIMES[key] = runtime
        return runtime


def forget_runtimes(session: str) -> None:
    """Drop the cached clients of a finished experiment."""
    with _LOCK:
        for key in [k for k in _RUNTIMES if k[0] == session]:
            del _RUNTIMES[key]


def _build_runtime(settings: RunSettings, partition_id: int) -> ClientRuntime:
    split = load_dataset(settings.dataset, seed=settings.seed, test_fraction=settings.test_fraction,
                         max_groups=settings.max_groups)  # fmt: skip
    parts = client_partitions(
        split,
        num_partitions=settings.num_clients,
        partitioner=settings.partitioner,
        seed=settings.seed,
        alpha=settings.dirichlet_alpha,
        classes_per_partition=settings.classes_per_partition,
    )
    x, y = parts[partition_id]
    model = build_model(
        settings.model,
        num_features=split.num_features,
        num_classes=split.num_classes,
        hidden=settings.hidden,
        seed=settings.seed,
        input_shape=split.input_shape,
        channels=settings.channels,
        activation=settings.activation,
        norm=settings.norm,
        pool=settings.pool,
    )
    account = simulation_key(seed=settings.seed, role=client_role(partition_id))
    node = connect_chain(settings.chain_url)
    return ClientRuntime(
        settings=settings,
        partition_id=partition_id,
        account=account,
        contract=RoundsContract(node, settings.contract_address, account),
        store=open_store(settings.store_kind, settings.store_location, timeout_s=settings.store_timeout_s,
                         retries=settings.store_retries, max_bytes=settings.max_blob_bytes),  # fmt: skip
        x=x,
        y=y,
        model=model,
        spec=array_spec(get_arrays(model)),
        device=select_device(settings.device, index=partition_id),
    )

"""A simulated consortium: what a real one does before its silos start, done in one process.

From an experiment config: connect the chain, load the dataset (to know its schema and,
for the simulation's central evaluation, its test split), build the initial model from
the model target, write the run spec and the initial model into the store, deploy the
contract, register the simulated participants (keys derived from the seed: simulation
only) and create the run, which records the spec's digest. Or, on a live chain, take
over a run a previous coordinator created with the same spec.

What it returns is where the run is (:class:`PreparedRun`), which the coordinator and
the simulated participants are then pointed at, as deployed ones would be.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import keccak
from omegaconf import DictConfig

from ..chain import ChainNode, RoundsContract, connect_embedded, connect_rpc, simulation_key
from ..chain.runs import fetch_spec
from ..config import spec_from_config
from ..consortium.runs import create_run, publish_run, publish_validation_set
from ..data import DatasetSplit, client_partitions, load_dataset
from ..errors import ConfigError
from ..protocol.spec import RunSpec
from ..storage import ContentStore, array_spec, cid_from_bytes, decode_arrays
from ..storage.location import open_store, store_location


def client_role(partition_id: int) -> str:
    """Name under which a simulated participant's key is derived."""
    return f"client-{partition_id}"


def store_validation_set(cfg: DictConfig, split: DatasetSplit, store: ContentStore) -> str:
    """Store the validation set a loss-scored run names in its spec (the first
    ``incentives.validation_size`` examples of the test split, as a canonical blob with
    tensors ``x`` float32 and ``y`` int64); return its CID, or "" for other scores."""
    if str(cfg.incentives.score) != "loss":
        return ""
    size = min(int(cfg.incentives.validation_size), len(split.y_test))
    return publish_validation_set(store, split.x_test[:size], split.y_test[:size])


@dataclass
class PreparedRun:
    """A run ready to be played: where it is, its spec, and what the coordinator needs."""

    node: ChainNode
    contract: RoundsContract
    run_id: int
    spec: RunSpec
    store: ContentStore
    store_location: str  # as participants open it (``local:DIR`` or ``ipfs:MULTIADDR``)
    split: DatasetSplit
    initial_cid: str
    setup_gas: dict[str, int] = field(default_factory=dict)
    first_block: int = 0


def connect(cfg: DictConfig) -> ChainNode:
    """The experiment's chain: the embedded EVM, or a JSON-RPC node."""
    if cfg.chain.kind == "embedded":
        return connect_embedded()
    return connect_rpc(cfg.chain.rpc_url, timeout=cfg.chain.request_timeout_s)


def load_split(cfg: DictConfig, *, num_clients: int | None = None) -> DatasetSplit:
    """The dataset, after checking it can be partitioned as configured (before anything
    is deployed: an impossible split stops the run with one line)."""
    split = load_dataset(cfg.dataset, seed=int(cfg.seed))
    n = int(cfg.num_clients if num_clients is None else num_clients)
    if n > len(split.x_train):
        raise ConfigError(f"num_clients ({n}) exceeds the {len(split.x_train)} training samples")
    client_partitions(split, num_partitions=n, partitioner=cfg.dataset.partitioner, seed=int(cfg.seed),
                      alpha=float(cfg.dataset.dirichlet_alpha),
                      classes_per_partition=int(cfg.dataset.classes_per_partition))  # fmt: skip
    return split


#: Participants registered per transaction (``registerMany``): a simulation of 1,000
#: registers them in 10 transactions instead of 1,000, each its own block.
_REGISTER_BATCH = 100


def prepare_run(cfg: DictConfig, output_dir: Path, *, node: ChainNode | None = None,
                num_clients: int | None = None) -> PreparedRun:  # fmt: skip
    """Set up (or take over) the run ``cfg`` describes; ``num_clients`` overrides the config's
    (``flwr run`` has as many participants as it has SuperNodes)."""
    node = node or connect(cfg)
    n = int(cfg.num_clients if num_clients is None else num_clients)
    # A simulation has its data: the spec takes the loaded schema, so a user's own loader
    # needs no schema declaration (dataset.schema is for creating a run without data;
    # the bundled configs' declarations are checked against their data by the tests).
    split = load_split(cfg, num_clients=n)
    location = store_location(cfg, output_dir)
    store = open_store(location, max_bytes=int(cfg.storage.max_blob_bytes), timeout_s=float(cfg.storage.timeout_s),
                       retries=int(cfg.storage.retries))  # fmt: skip
    spec = spec_from_config(cfg, split.schema(), validation_cid=store_validation_set(cfg, split, store))
    spec.check_supported()
    initial_cid, initial = publish_run(spec, store, seed=int(cfg.seed))
    admin = simulation_key(seed=int(cfg.seed), role="coordinator")
    clients = [simulation_key(seed=int(cfg.seed), role=client_role(i)) for i in range(n)]
    node.fund([admin.address] + [c.address for c in clients])
    shape = array_spec(initial)
    if cfg.resume.contract_address:
        return _resume(cfg, node, admin, store, spec=spec, location=location, split=split, shape=shape,
                       initial_cid=initial_cid)  # fmt: skip
    first_block = int(node.w3.eth.block_number) + 1
    contract, deploy_tx = RoundsContract.deploy(node, admin)
    setup_gas = {"deploy": deploy_tx.gas_used, "register": 0}
    # Each participant's reveals may weigh at most its partition's size (protocol §2.4).
    bounds = [len(y) for _, y in client_partitions(split, num_partitions=n, partitioner=cfg.dataset.partitioner,
                                                   seed=int(cfg.seed), alpha=float(cfg.dataset.dirichlet_alpha),
                                                   classes_per_partition=int(cfg.dataset.classes_per_partition))]  # fmt: skip
    for start in range(0, n, _REGISTER_BATCH):  # registry indices in client order, as one by one
        batch = range(start, min(start + _REGISTER_BATCH, n))
        setup_gas["register"] += contract.register_many([clients[i].address for i in batch],
                                                        [keccak(f"simulated-node/{i}".encode()) for i in batch],
                                                        [bounds[i] for i in batch]).gas_used  # fmt: skip
    run_id, run_tx = create_run(contract, spec, initial_cid)
    setup_gas["createRun"] = run_tx.gas_used
    return PreparedRun(node=node, contract=contract, run_id=run_id, spec=spec, store=store, store_location=location,
                       split=split, initial_cid=initial_cid, setup_gas=setup_gas, first_block=first_block)  # fmt: skip


def _resume(cfg: DictConfig, node: ChainNode, admin: Any, store: ContentStore, *, spec: RunSpec, location: str,
            split: DatasetSplit, shape: dict[str, Any], initial_cid: str) -> PreparedRun:  # fmt: skip
    """Take over a run a previous coordinator created with the same spec.

    Finalized rounds stay done; the rounds still missing are played from the model the
    chain finalized last. A round left in flight is let lapse first by the strategy.
    """
    contract = RoundsContract(node, cfg.resume.contract_address, admin)
    run_id = int(cfg.resume.run_id)
    recorded = fetch_spec(contract, run_id, store)
    if recorded.digest() != spec.digest():
        raise ConfigError(f"resume: run {run_id} was created with another run spec (chain: {recorded.digest().hex()}, "
                          f"this config: {spec.digest().hex()}); resume it with the same overrides")  # fmt: skip
    # Fail before the engine starts when this store lacks the model the chain is at.
    model_cid = cid_from_bytes(bytes(contract.get_run(run_id)["modelCid"]))
    decode_arrays(store.get(model_cid), max_bytes=spec.max_blob_bytes, expected=shape)
    return PreparedRun(node=node, contract=contract, run_id=run_id, spec=spec, store=store, store_location=location,
                       split=split, initial_cid=initial_cid)  # fmt: skip


@contextlib.contextmanager
def serve_chain(node: ChainNode, *, same_process: bool) -> Iterator[str]:
    """The URL participants reach the chain at, for the duration of the block.

    A JSON-RPC node's own URL; the embedded chain is registered for participants in this
    process, or served over loopback JSON-RPC for other processes (Ray's workers, the
    SuperNodes of ``flwr run``).
    """
    from ..chain.node import register_embedded_node, unregister_embedded_node

    if node.kind != "embedded":
        yield node.url
    elif not same_process:
        from ..chain.bridge import JsonRpcBridge

        bridge = JsonRpcBridge(node)
        try:
            yield bridge.start()
        finally:
            bridge.stop()
    else:
        url = register_embedded_node(node)
        try:
            yield url
        finally:
            unregister_embedded_node(url)


def locator(prepared: PreparedRun, chain_url: str) -> dict[str, Any]:
    """What every message tells a simulated participant about where the run is."""
    return {"contract": prepared.contract.address, "run-id": prepared.run_id, "chain-url": chain_url,
            "store": prepared.store_location}  # fmt: skip

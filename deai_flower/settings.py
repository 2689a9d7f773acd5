"""What every party of a run needs to know, as one plain, picklable record.

Built once by the experiment from the resolved Hydra config and handed to the
ServerApp and ClientApp factories; under Flower's simulation engine it travels to the
client workers, so it holds only plain values (addresses and URLs, not connections).
"""

from __future__ import annotations

from dataclasses import dataclass

from .privacy import PrivacySettings


@dataclass(frozen=True)
class TrainingSettings:
    """Local training hyper-parameters of every client."""

    local_epochs: int
    batch_size: int
    learning_rate: float
    #: PyTorch CPU threads while a client trains (its CPU share); None: PyTorch's default.
    num_threads: int | None = None


@dataclass(frozen=True)
class RunSettings:
    """A run's fixed parameters and where its chain, contract and store are."""

    seed: int
    num_clients: int
    num_rounds: int
    dataset: str
    partitioner: str
    dirichlet_alpha: float
    test_fraction: float
    model: str
    hidden: tuple[int, ...]
    privacy: PrivacySettings
    training: TrainingSettings
    device: str
    rule: str
    chain_url: str
    contract_address: str
    run_id: int
    store_kind: str
    store_location: str
    max_blob_bytes: int
    #: Unique per experiment: keys the per-process client caches, so two runs in one
    #: process (deterministic keys, same contract address) never share clients.
    session: str
    #: Data and model options beyond the basics (pathological classes per client, natural
    #: groups loaded, convolutional channels, activation, normalisation, input pooling).
    classes_per_partition: int = 2
    max_groups: int | None = None
    channels: tuple[int, ...] = (16, 32)
    activation: str = "relu"
    norm: str = "group"
    pool: int = 1
    #: Parameters of the aggregation rule (e.g. ``num_malicious_nodes`` for Krum).
    rule_params: tuple[tuple[str, float | int], ...] = ()
    #: Simulated adversaries: these partitions send ``w_global + poison_scale * delta``.
    poisoned_clients: tuple[int, ...] = ()
    poison_scale: float = 1.0
    #: IPFS store only: per-request timeout and extra attempts (``store_location`` is the API multiaddr).
    store_timeout_s: float = 30.0
    store_retries: int = 2

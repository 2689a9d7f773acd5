"""Structured Hydra configs: the schema every composed config is checked against.

The schema is registered as ``deai_schema`` and named first in ``conf/config.yaml``'s
defaults, so a misspelt key (``privacy.epsilonn=3``) fails composition with Hydra's
"Key ... is not in struct" instead of being silently ignored. Value checks that the
schema's types cannot express live in :func:`validate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from .errors import ConfigError


@dataclass
class DatasetConfig:
    name: str = MISSING
    partitioner: str = "iid"  # iid | dirichlet | pathological | natural
    dirichlet_alpha: float = 0.5
    classes_per_partition: int = 2  # pathological: classes held by each client
    test_fraction: float = 0.2
    max_groups: int | None = None  # natural groups loaded (FEMNIST writers); null: all


@dataclass
class ModelConfig:
    name: str = MISSING
    hidden: list[int] = field(default_factory=lambda: [64])
    channels: list[int] = field(default_factory=lambda: [16, 32])  # cnn, resnet
    activation: str = "relu"  # relu | tanh
    norm: str = "group"  # resnet: group | batch (converted to GroupNorm for Opacus)
    pool: int = 1  # mlp on images: average-pool pool x pool first (fewer weights, less DP noise)


@dataclass
class PrivacyConfig:
    epsilon: float = 8.0  # inf: a non-private run (labelled as such)
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    secure_mode: bool = False
    grad_sample_mode: str = "auto"  # auto | hooks | ghost
    state_dir: str | None = None  # per-client ledger files; null: in memory only


@dataclass
class TrainingConfig:
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.1


@dataclass
class StrategyConfig:
    name: str = "fedavg"  # the Flower rule attesters run: see deai_flower.protocol.rules.RULES
    num_malicious_nodes: int = 0  # krum, multikrum, bulyan
    num_nodes_to_select: int = 1  # multikrum
    beta: float = 0.2  # fedtrimmedavg: fraction cut at each end
    sample_fraction: float = 1.0  # per-participant sampling probability, from the beacon
    quorum: int = 2  # matching attestations that finalize a round
    committee_size: int = 3  # revealers asked to attest
    min_reveals: int = 2  # valid reveals needed for a round to be aggregated
    commit_timeout_s: int = 600
    reveal_timeout_s: int = 600
    attest_timeout_s: int = 600


@dataclass
class AdversaryConfig:
    """Simulated attackers for robustness experiments (none by default)."""

    poisoned_clients: list[int] = field(default_factory=list)
    scale: float = 1.0  # a poisoned client sends w_global + scale * (w_trained - w_global)


@dataclass
class ChainConfig:
    kind: str = "embedded"  # embedded | rpc
    rpc_url: str | None = None
    request_timeout_s: float = 30.0


@dataclass
class StorageConfig:
    kind: str = "local"  # local | ipfs
    root: str = "store"  # local: relative paths are inside the run's output directory
    max_blob_bytes: int = 64 * 1024 * 1024
    api_addr: str = "/ip4/127.0.0.1/tcp/5001"  # ipfs: the node's RPC API multiaddr
    timeout_s: float = 30.0  # ipfs: per request
    retries: int = 2  # ipfs: extra attempts when the node is unreachable or slow


@dataclass
class EngineConfig:
    kind: str = "inprocess"  # inprocess | ray
    num_cpus_per_client: float = 1.0
    num_gpus_per_client: float = 0.0


@dataclass
class ResumeConfig:
    """Take over a run on a live chain after a coordinator restart (same config)."""

    contract_address: str | None = None
    run_id: int = 1


@dataclass
class ExperimentConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    adversary: AdversaryConfig = field(default_factory=AdversaryConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    num_clients: int = 5
    num_rounds: int = 5
    seed: int = 0
    device: str = "auto"
    progress: bool = True


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name="deai_schema", node=ExperimentConfig)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: ExperimentConfig) -> None:
    """Range checks beyond the schema's types; the message names the key to fix."""
    _require(cfg.num_clients >= 1, f"num_clients must be >= 1 (got {cfg.num_clients})")
    _require(cfg.num_rounds >= 1, f"num_rounds must be >= 1 (got {cfg.num_rounds})")
    eps = cfg.privacy.epsilon
    _require(not math.isnan(eps) and eps > 0,
             f"privacy.epsilon must be > 0 (got {eps}); use privacy.epsilon=inf for a non-private run")  # fmt: skip
    _require(0 < cfg.privacy.delta < 1, f"privacy.delta must be in (0, 1) (got {cfg.privacy.delta})")
    p, d, m = cfg.privacy, cfg.dataset, cfg.model
    _require(p.accountant in ("rdp", "prv"), f"privacy.accountant must be 'rdp' or 'prv' (got {p.accountant!r})")
    _require(p.grad_sample_mode in ("auto", "hooks", "ghost"),
             f"privacy.grad_sample_mode must be 'auto', 'hooks' or 'ghost' (got {p.grad_sample_mode!r})")  # fmt: skip
    _require(d.partitioner in ("iid", "dirichlet", "pathological", "natural"),
             f"dataset.partitioner must be iid/dirichlet/pathological/natural (got {d.partitioner!r})")  # fmt: skip
    _require(d.classes_per_partition >= 1,
             f"dataset.classes_per_partition must be >= 1 (got {d.classes_per_partition})")  # fmt: skip
    _require(m.activation in ("relu", "tanh"),
             f"model.activation must be 'relu' or 'tanh' (got {m.activation!r})")  # fmt: skip
    _require(m.norm in ("group", "batch"), f"model.norm must be 'group' or 'batch' (got {m.norm!r})")
    _require(m.pool >= 1, f"model.pool must be >= 1 (got {m.pool})")
    _require(cfg.training.batch_size >= 1, f"training.batch_size must be >= 1 (got {cfg.training.batch_size})")
    _require(cfg.training.local_epochs >= 1, f"training.local_epochs must be >= 1 (got {cfg.training.local_epochs})")
    _require(cfg.training.learning_rate > 0, f"training.learning_rate must be > 0 (got {cfg.training.learning_rate})")
    s = cfg.strategy
    _require(0 < s.sample_fraction <= 1, f"strategy.sample_fraction must be in (0, 1] (got {s.sample_fraction})")
    _require(s.quorum >= 1, f"strategy.quorum must be >= 1 (got {s.quorum})")
    _require(s.min_reveals >= s.quorum,
             f"strategy.min_reveals ({s.min_reveals}) must be >= strategy.quorum ({s.quorum})")  # fmt: skip
    _require(s.committee_size >= s.quorum,
             f"strategy.committee_size ({s.committee_size}) must be >= strategy.quorum ({s.quorum})")  # fmt: skip
    _require(s.min_reveals <= cfg.num_clients,
             f"strategy.min_reveals ({s.min_reveals}) cannot exceed num_clients ({cfg.num_clients})")  # fmt: skip
    from .protocol.rules import RULES, minimum_updates

    _require(s.name in RULES, f"strategy.name must be one of {', '.join(RULES)} (got {s.name!r})")
    needed = minimum_updates(s.name, {"num_malicious_nodes": s.num_malicious_nodes})
    _require(s.min_reveals >= needed,
             f"strategy {s.name} with num_malicious_nodes={s.num_malicious_nodes} needs "
             f"strategy.min_reveals >= {needed} (got {s.min_reveals})")  # fmt: skip
    _require(0 <= s.beta < 0.5, f"strategy.beta must be in [0, 0.5) (got {s.beta})")
    _require(s.num_nodes_to_select >= 1, f"strategy.num_nodes_to_select must be >= 1 (got {s.num_nodes_to_select})")
    _require(all(0 <= c < cfg.num_clients for c in cfg.adversary.poisoned_clients),
             f"adversary.poisoned_clients must be client indices below num_clients ({cfg.num_clients})")  # fmt: skip
    _require(not cfg.resume.contract_address or cfg.chain.kind == "rpc",
             "resume.contract_address needs a live chain (chain=anvil or chain.kind=rpc): "
             "the embedded chain ends with its process")  # fmt: skip
    for key in ("commit_timeout_s", "reveal_timeout_s", "attest_timeout_s"):
        # the contract keeps phase durations in 24 bits
        _require(0 < getattr(s, key) < 2**24, f"strategy.{key} must be between 1 and {2**24 - 1} seconds")
    _require(cfg.chain.kind in ("embedded", "rpc"), f"chain.kind must be 'embedded' or 'rpc' (got {cfg.chain.kind!r})")
    _require(cfg.chain.kind != "rpc" or bool(cfg.chain.rpc_url), "chain.rpc_url is required when chain.kind=rpc")
    _require(cfg.storage.kind in ("local", "ipfs"), f"storage.kind must be 'local' or 'ipfs' (got {cfg.storage.kind!r})")
    _require(cfg.storage.kind != "ipfs" or cfg.storage.api_addr.startswith("/"),
             f"storage.api_addr must be a multiaddr such as /ip4/127.0.0.1/tcp/5001 (got {cfg.storage.api_addr!r})")  # fmt: skip
    _require(cfg.storage.timeout_s > 0, f"storage.timeout_s must be > 0 (got {cfg.storage.timeout_s})")
    _require(cfg.storage.retries >= 0, f"storage.retries must be >= 0 (got {cfg.storage.retries})")
    _require(cfg.storage.max_blob_bytes > 0, "storage.max_blob_bytes must be > 0")
    _require(cfg.engine.kind in ("inprocess", "ray"), f"engine.kind must be 'inprocess' or 'ray' (got {cfg.engine.kind!r})")

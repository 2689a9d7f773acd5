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
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    test_fraction: float = 0.2


@dataclass
class ModelConfig:
    name: str = MISSING
    hidden: list[int] = field(default_factory=lambda: [64])


@dataclass
class PrivacyConfig:
    epsilon: float = 8.0  # inf: a non-private run (labelled as such)
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    secure_mode: bool = False


@dataclass
class TrainingConfig:
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.1


@dataclass
class StrategyConfig:
    name: str = "fedavg"
    sample_fraction: float = 1.0  # per-participant sampling probability, from the beacon
    quorum: int = 2  # matching attestations that finalize a round
    committee_size: int = 3  # revealers asked to attest
    min_reveals: int = 2  # valid reveals needed for a round to be aggregated
    commit_timeout_s: int = 600
    reveal_timeout_s: int = 600
    attest_timeout_s: int = 600


@dataclass
class ChainConfig:
    kind: str = "embedded"  # embedded | rpc
    rpc_url: str | None = None
    request_timeout_s: float = 30.0


@dataclass
class StorageConfig:
    kind: str = "local"
    root: str = "store"  # relative paths are inside the run's output directory
    max_blob_bytes: int = 64 * 1024 * 1024


@dataclass
class EngineConfig:
    kind: str = "inprocess"  # inprocess | ray
    num_cpus_per_client: float = 1.0
    num_gpus_per_client: float = 0.0


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
    for key in ("commit_timeout_s", "reveal_timeout_s", "attest_timeout_s"):
        _require(getattr(s, key) > 0, f"strategy.{key} must be > 0")
    _require(cfg.chain.kind in ("embedded", "rpc"), f"chain.kind must be 'embedded' or 'rpc' (got {cfg.chain.kind!r})")
    _require(cfg.chain.kind != "rpc" or bool(cfg.chain.rpc_url), "chain.rpc_url is required when chain.kind=rpc")
    _require(cfg.storage.kind in ("local",), f"storage.kind must be 'local' (got {cfg.storage.kind!r})")
    _require(cfg.storage.max_blob_bytes > 0, "storage.max_blob_bytes must be > 0")
    _require(cfg.engine.kind in ("inprocess", "ray"), f"engine.kind must be 'inprocess' or 'ray' (got {cfg.engine.kind!r})")

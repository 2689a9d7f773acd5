"""Structured Hydra configs: the schema every composed config is checked against.

The schema is registered as ``deai_schema`` and named first in ``conf/config.yaml``'s
defaults, so a misspelt key (``privacy.epsilonn=3``) fails composition with Hydra's
"Key ... is not in struct" instead of being silently ignored. A ``+``-prefixed override
(``+privacy.epsilonn=3``, which Hydra's own error message suggests) adds a key in spite
of the schema; :func:`check_known_keys` refuses it. Value checks that the schema's types
cannot express live in :func:`validate`, which calls it.

Two nodes are free-form, since they are the arguments of code the user names:
``model`` (a Hydra ``_target_`` returning an ``nn.Module`` plus its arguments, see
:mod:`deai_flower.models`) and ``dataset.loader`` (a ``_target_`` returning arrays plus
its arguments, see :mod:`deai_flower.data`). :func:`validate` checks that each target
imports and takes the arguments given.

A run is private unless ``privacy.enabled`` is false (``privacy=none``) or
``privacy.epsilon`` is ``inf``: :func:`is_private`. Presets in ``conf/experiment`` never
set ``privacy.enabled``, so ``privacy=none`` stays non-private with any of them.
"""

from __future__ import annotations

import difflib
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .protocol.spec import DataSchema, IncentivesSpec, PrivacySpec, RoundsSpec, RuleSpec, RunSpec, TrainingSpec


@dataclass
class DataSchemaConfig:
    """What the model expects of every silo's rows (the run spec's data schema), declared
    so that a run is created without loading the dataset; 0: not declared."""

    num_features: int = 0
    num_classes: int = 0
    input_shape: list[int] = field(default_factory=list)  # [channels, height, width] for images; [] for flat rows


@dataclass
class DatasetConfig:
    # _target_ (a callable returning the arrays, see deai_flower.data) + its arguments
    loader: dict[str, Any] = field(default_factory=dict)
    partitioner: str = "iid"  # iid | dirichlet | pathological | natural
    dirichlet_alpha: float = 0.5
    classes_per_partition: int = 2  # pathological: classes held by each client
    test_fraction: float = 0.2
    schema: DataSchemaConfig = field(default_factory=DataSchemaConfig)


@dataclass
class PrivacyConfig:
    enabled: bool = True  # false (privacy=none): non-private whatever epsilon says
    epsilon: float = 8.0  # inf: a non-private run too (labelled as such)
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    secure_mode: bool = False
    grad_sample_mode: str = "auto"  # auto | hooks | ghost
    state_dir: str | None = None  # per-client ledger files; null: in memory only
    # Simulation only: seed noise and sampling from the experiment seed (repeatable, but
    # not private against anyone who knows the seed); false: secret CSPRNG entropy.
    reproducible_noise: bool = False


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
    committee_size: int = 25  # eligible attesters: revealers among the first N sampled positions; 0: every revealer
    min_reveals: int = 2  # valid reveals needed for a round to be aggregated
    commit_timeout_s: int = 600
    reveal_timeout_s: int = 600
    attest_timeout_s: int = 600
    max_failed_rounds: int = 3  # extra attempts beyond num_rounds when rounds fail
    relay: bool = True  # the coordinator publishes reveals and signed votes in batches (one message per phase)


@dataclass
class AdversaryConfig:
    """Simulated attackers for robustness experiments (none by default)."""

    # scaled (model poisoning) | freerider (trains nothing) | public_step | no_noise | sybil |
    # sign_flip_twins (defectors against the reward rule: deai_flower/simulation/adversaries.py)
    kind: str = "scaled"
    poisoned_clients: list[int] = field(default_factory=list)
    scale: float = 1.0  # scaled: a poisoned client sends w_global + scale * (w_trained - w_global)
    noise: float = 0.0  # freerider: std of the Gaussian noise added to the global model it sends back
    look_honest: bool = True  # public_step: add the noise an honest DP update carries


@dataclass
class IncentivesConfig:
    """Stakes, contribution scores and the reward pool (amounts in wei, or token units)."""

    # shares (equal shares for updates that carry their DP noise, are no copies and agree beyond
    # chance: docs/incentives.md) | alignment (geometry of the updates) | loss (validation-loss
    # improvement; gameable by fitting the validation set the spec names)
    score: str = "shares"
    validation_size: int = 200  # loss: examples of the validation set, held out of the test split
    stake_token: str | None = None  # an ERC-20 address; none: the native currency
    stake: int = 10**18  # each participant deposits this before its first commit
    reward_pool: int = 10**19  # paid in by the run's creator, shared over the rounds by score
    slash_missing_reveal: int = 10**17
    slash_refused: int = 5 * 10**17
    slash_minority: int = 2 * 10**17
    # basis points of each round's budget paid equally to the attesters that voted for the
    # finalized result (protocol §2.7.4); the rest is paid by score
    attester_share_bps: int = 1_000


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
    concurrency: int | None = None  # inprocess: ClientApp calls at once (None: one per CPU core)


@dataclass
class ResumeConfig:
    """Take over a run on a live chain after a coordinator restart (same config)."""

    contract_address: str | None = None
    run_id: int = 1


@dataclass
class ExperimentConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    # _target_ (a callable returning an nn.Module, see deai_flower.models) + its arguments
    model: dict[str, Any] = field(default_factory=dict)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    chain: ChainConfig = field(default_factory=ChainConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    adversary: AdversaryConfig = field(default_factory=AdversaryConfig)
    incentives: IncentivesConfig = field(default_factory=IncentivesConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    num_clients: int = 5
    num_rounds: int = 5
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    verbose: bool = False  # true: third-party INFO logs, warnings and retry lines too


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name="deai_schema", node=ExperimentConfig)


def declared_schema(cfg: Any) -> DataSchema | None:
    """The data schema ``dataset.schema`` declares, or None where it declares none."""
    node = cfg.dataset.get("schema") or {}
    features, classes = int(node.get("num_features", 0)), int(node.get("num_classes", 0))
    if not features and not classes:
        return None
    shape = tuple(int(n) for n in node.get("input_shape") or ())
    _require(features >= 1 and classes >= 2,
             f"dataset.schema needs num_features >= 1 and num_classes >= 2 (got {features} and {classes})")  # fmt: skip
    _require(not shape or math.prod(shape) == features,
             f"dataset.schema.input_shape {list(shape)} does not hold num_features={features} values")  # fmt: skip
    return DataSchema(num_features=features, num_classes=classes, input_shape=shape or (features,))


def spec_from_config(cfg: Any, schema: DataSchema, *, validation_cid: str = "") -> RunSpec:
    """The run spec an experiment config describes (the one place config becomes spec);
    ``validation_cid``: where the validation set of a loss-scored run is stored."""
    from .models import model_spec  # the ML stack, for the model's exact target
    from .protocol.rules import RULE_PARAMS

    s, inc = cfg.strategy, cfg.incentives
    params = {key: s[key] for key in RULE_PARAMS.get(str(s.name), ())}
    return RunSpec(
        model=model_spec(cfg.model),
        data=schema,
        rule=RuleSpec(name=str(s.name), params=OmegaConf.to_container(OmegaConf.create(params), resolve=True)),  # type: ignore[arg-type]
        privacy=PrivacySpec(epsilon=privacy_epsilon(cfg),
                            delta=float(cfg.privacy.delta), max_grad_norm=float(cfg.privacy.max_grad_norm),
                            accountant=str(cfg.privacy.accountant)),  # fmt: skip
        training=TrainingSpec(local_epochs=int(cfg.training.local_epochs), batch_size=int(cfg.training.batch_size),
                              learning_rate=float(cfg.training.learning_rate)),  # fmt: skip
        rounds=RoundsSpec(num_rounds=int(cfg.num_rounds), commit_s=int(s.commit_timeout_s),
                          reveal_s=int(s.reveal_timeout_s), attest_s=int(s.attest_timeout_s),
                          sample_fraction=float(s.sample_fraction), quorum=int(s.quorum), min_reveals=int(s.min_reveals),
                          committee_size=int(s.committee_size)),  # fmt: skip
        max_blob_bytes=int(cfg.storage.max_blob_bytes),
        incentives=IncentivesSpec(
            score=str(inc.score), validation_cid=validation_cid if str(inc.score) == "loss" else "",
            stake_token=str(inc.stake_token or ""), stake=int(inc.stake), reward_pool=int(inc.reward_pool),
            slash_missing_reveal=int(inc.slash_missing_reveal), slash_refused=int(inc.slash_refused),
            slash_minority=int(inc.slash_minority), attester_share_bps=int(inc.attester_share_bps)),  # fmt: skip
    )


# --- the whole config ----------------------------------------------------------------

# Nodes whose keys are the arguments of user-named code, not schema fields.
FREE_FORM: tuple[str, ...] = ("model", "dataset.loader")


def _keys(node: Any) -> list[str]:
    if isinstance(node, DictConfig | Mapping):
        return [str(key) for key in node.keys()]
    if is_dataclass(node):
        return [f.name for f in fields(node)]
    return []


def _child(node: Any, key: str) -> Any:
    if isinstance(node, DictConfig):
        return node._get_node(key)  # unresolved: a ${...} elsewhere must not fail here
    if isinstance(node, Mapping):
        return node[key]
    return getattr(node, key)


def _check_keys(node: Any, schema: type, path: str) -> None:
    hints = typing.get_type_hints(schema)
    names = [f.name for f in fields(schema)]
    for key in _keys(node):
        full = f"{path}.{key}" if path else key
        if not path and key == "hydra":
            continue
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {(path + '.' if path else '') + close[0]}? " if close else ""
            raise ConfigError(
                f"unknown config key {full!r} ({hint}a '+' override adds keys the schema does not have; "
                f"{path or 'the top level'} takes: {', '.join(names)})"
            )
        if full in FREE_FORM:
            continue
        kind = hints[key]
        if is_dataclass(kind):
            _check_keys(_child(node, key), kind, full)


def check_known_keys(cfg: Any) -> None:
    """Refuse keys the schema does not have (added with ``+key=value`` overrides).

    ``model`` and ``dataset.loader`` are free-form (their targets' arguments; checked
    by :func:`validate` against the targets' signatures).

    Raises:
        ConfigError: one line naming the unknown key and the keys its node takes.
    """
    _check_keys(cfg, ExperimentConfig, "")


def is_private(cfg: Any) -> bool:
    """Whether a config trains privately: ``privacy.enabled`` and a finite epsilon."""
    return bool(cfg.privacy.enabled) and math.isfinite(float(cfg.privacy.epsilon))


def privacy_epsilon(cfg: Any) -> float:
    """The run's per-client epsilon budget: ``inf`` for a non-private run."""
    return float(cfg.privacy.epsilon) if is_private(cfg) else math.inf


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: ExperimentConfig, *, targets: bool = True, loader: bool = True) -> None:
    """Check a composed config: no unknown keys, values in range, model and loader
    targets that import and take their arguments. The message names the key to fix.
    ``targets=False`` skips the targets, whose check imports the ML stack;
    ``loader=False`` the dataset loader only (a run's creator has no dataset: the silos
    bring their own files).

    Raises:
        ConfigError: the first problem found, in one line.
    """
    check_known_keys(cfg)
    _require(cfg.num_clients >= 1, f"num_clients must be >= 1 (got {cfg.num_clients})")
    _require(cfg.num_rounds >= 1, f"num_rounds must be >= 1 (got {cfg.num_rounds})")
    eps = cfg.privacy.epsilon
    _require(not math.isnan(eps) and eps > 0,
             f"privacy.epsilon must be > 0 (got {eps}); use privacy.epsilon=inf for a non-private run")  # fmt: skip
    _require(0 < cfg.privacy.delta < 1, f"privacy.delta must be in (0, 1) (got {cfg.privacy.delta})")
    p, d = cfg.privacy, cfg.dataset
    _require(p.accountant in ("rdp", "prv"), f"privacy.accountant must be 'rdp' or 'prv' (got {p.accountant!r})")
    _require(p.grad_sample_mode in ("auto", "hooks", "ghost"),
             f"privacy.grad_sample_mode must be 'auto', 'hooks' or 'ghost' (got {p.grad_sample_mode!r})")  # fmt: skip
    _require(d.partitioner in ("iid", "dirichlet", "pathological", "natural"),
             f"dataset.partitioner must be iid/dirichlet/pathological/natural (got {d.partitioner!r})")  # fmt: skip
    _require(d.classes_per_partition >= 1,
             f"dataset.classes_per_partition must be >= 1 (got {d.classes_per_partition})")  # fmt: skip
    _require(d.dirichlet_alpha > 0, f"dataset.dirichlet_alpha must be > 0 (got {d.dirichlet_alpha})")
    _require(0 < d.test_fraction < 1, f"dataset.test_fraction must be in (0, 1) (got {d.test_fraction})")
    _require(cfg.training.batch_size >= 1, f"training.batch_size must be >= 1 (got {cfg.training.batch_size})")
    _require(cfg.training.local_epochs >= 1, f"training.local_epochs must be >= 1 (got {cfg.training.local_epochs})")
    _require(cfg.training.learning_rate > 0, f"training.learning_rate must be > 0 (got {cfg.training.learning_rate})")
    s = cfg.strategy
    _require(0 < s.sample_fraction <= 1, f"strategy.sample_fraction must be in (0, 1] (got {s.sample_fraction})")
    _require(s.quorum >= 1, f"strategy.quorum must be >= 1 (got {s.quorum})")
    _require(s.min_reveals >= s.quorum,
             f"strategy.min_reveals ({s.min_reveals}) must be >= strategy.quorum ({s.quorum})")  # fmt: skip
    _require(s.committee_size == 0 or s.committee_size >= s.quorum,
             f"strategy.committee_size ({s.committee_size}) must be 0 (every revealer) or >= strategy.quorum "
             f"({s.quorum})")  # fmt: skip
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
    a, inc = cfg.adversary, cfg.incentives
    kinds = ("scaled", "freerider", "public_step", "no_noise", "sybil", "sign_flip_twins", "fit_validation")
    _require(a.kind in kinds, f"adversary.kind must be one of {', '.join(kinds)} (got {a.kind!r})")
    _require(a.noise >= 0, f"adversary.noise must be >= 0 (got {a.noise})")
    _require(inc.score in ("alignment", "loss", "shares"),
             f"incentives.score must be 'alignment', 'loss' or 'shares' (got {inc.score!r})")  # fmt: skip
    _require(inc.validation_size >= 1, f"incentives.validation_size must be >= 1 (got {inc.validation_size})")
    _require(0 <= int(inc.attester_share_bps) <= 10_000,
             f"incentives.attester_share_bps must be between 0 and 10000 (got {inc.attester_share_bps})")  # fmt: skip
    for key in ("stake", "reward_pool", "slash_missing_reveal", "slash_refused", "slash_minority"):
        _require(0 <= int(inc[key]) < 2**128, f"incentives.{key} must be between 0 and 2**128 - 1 wei (got {inc[key]})")
    for key in ("slash_missing_reveal", "slash_refused", "slash_minority"):
        _require(int(inc[key]) <= int(inc.stake),
                 f"incentives.{key} ({inc[key]}) cannot exceed incentives.stake ({inc.stake})")  # fmt: skip
    _require(inc.stake_token is None or (str(inc.stake_token).startswith("0x") and len(str(inc.stake_token)) == 42),
             f"incentives.stake_token must be a 0x address or null (got {inc.stake_token!r})")  # fmt: skip
    _require(not cfg.resume.contract_address or cfg.chain.kind == "rpc",
             "resume.contract_address needs a live chain (chain=anvil or chain.kind=rpc): "
             "the embedded chain ends with its process")  # fmt: skip
    _require(s.max_failed_rounds >= 0, f"strategy.max_failed_rounds must be >= 0 (got {s.max_failed_rounds})")
    for key in ("commit_timeout_s", "reveal_timeout_s", "attest_timeout_s"):
        # the contract keeps phase durations in 24 bits
        _require(0 < getattr(s, key) < 2**24, f"strategy.{key} must be between 1 and {2**24 - 1} seconds")
    _require(cfg.chain.kind in ("embedded", "rpc"), f"chain.kind must be 'embedded' or 'rpc' (got {cfg.chain.kind!r})")
    # The embedded chain mines a block a transaction and its clock moves at least a second a
    # block: a round's first stake deposits, one per sampled client (and without a relayer
    # every commit), must fit the commit phase in chain time, or it lapses on chain first.
    sampled = math.ceil(int(cfg.num_clients) * float(s.sample_fraction))
    _require(cfg.chain.kind != "embedded" or s.commit_timeout_s >= 2 * sampled,
             f"strategy.commit_timeout_s={s.commit_timeout_s} is too short for {sampled} sampled clients on the "
             f"embedded chain, whose clock moves a second for each of their blocks (a stake deposit each in "
             f"their first round): use strategy.commit_timeout_s={2 * sampled} or more, or chain=anvil")  # fmt: skip
    _require(cfg.chain.kind != "rpc" or bool(cfg.chain.rpc_url), "chain.rpc_url is required when chain.kind=rpc")
    _require(cfg.storage.kind in ("local", "ipfs"), f"storage.kind must be 'local' or 'ipfs' (got {cfg.storage.kind!r})")
    _require(cfg.storage.kind != "ipfs" or cfg.storage.api_addr.startswith("/"),
             f"storage.api_addr must be a multiaddr such as /ip4/127.0.0.1/tcp/5001 (got {cfg.storage.api_addr!r})")  # fmt: skip
    _require(cfg.storage.timeout_s > 0, f"storage.timeout_s must be > 0 (got {cfg.storage.timeout_s})")
    _require(cfg.storage.retries >= 0, f"storage.retries must be >= 0 (got {cfg.storage.retries})")
    _require(cfg.storage.max_blob_bytes > 0, "storage.max_blob_bytes must be > 0")
    _require(cfg.engine.kind in ("inprocess", "ray"), f"engine.kind must be 'inprocess' or 'ray' (got {cfg.engine.kind!r})")
    concurrency = cfg.engine.get("concurrency")
    _require(concurrency is None or (type(concurrency) is int and concurrency >= 1),
             f"engine.concurrency must be an integer >= 1, or null for one per CPU core (got {concurrency!r})")  # fmt: skip
    if not targets:
        return
    # The model and the dataset loader: importable targets taking the arguments given
    # (the bundled models' argument values too). Imported here: both pull in heavy
    # libraries that a config check alone should not need.
    from .models import check_model_args, model_spec

    model = model_spec(cfg.model)
    check_model_args(model, allowed=(model.target,))  # the config's author allows its own model
    if loader:
        from .data import check_loader

        check_loader(cfg.dataset.loader)

"""Every config in conf/ composes against the schema; unknown keys and bad values get
clear errors; privacy=none is non-private with every preset."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from support import compose_with

from deai_flower.config import check_known_keys, declared_schema, is_private, privacy_epsilon, validate
from deai_flower.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))
PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_default_config_is_the_documented_main_job() -> None:
    cfg = compose_with()
    validate(cfg)
    assert (cfg.dataset.loader._target_, cfg.num_clients, cfg.num_rounds) == ("deai_flower.data.load_digits", 5, 5)
    assert cfg.model == {"_target_": "deai_flower.models.mlp", "hidden": [64], "activation": "relu", "pool": 1}
    assert (cfg.privacy.epsilon, cfg.privacy.delta) == (8.0, 1e-5)
    assert is_private(cfg) and privacy_epsilon(cfg) == 8.0
    assert cfg.strategy.max_failed_rounds == 3
    assert (cfg.chain.kind, cfg.storage.kind, cfg.engine.kind) == ("embedded", "local", "inprocess")


@pytest.mark.parametrize(
    "group,option", [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
)
def test_every_group_option_composes_and_validates(group: str, option: str) -> None:
    # model=custom names no model until the user does (model._target_=my_pkg.MyNet)
    own = ["model._target_=deai_flower.models.mlp"] if (group, option) == ("model", "custom") else []
    cfg = compose_with(f"{group}={option}", "num_clients=10", *own)  # enough for Bulyan's n >= 4f + 3
    validate(cfg)


def test_every_yaml_in_conf_is_composed_by_a_test() -> None:
    # The parametrisation above covers every group option; conf/config.yaml is the default.
    files = {p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml")}
    covered = {"config.yaml"} | {f"{g}/{p.stem}.yaml" for g in GROUPS for p in (CONF / g).glob("*.yaml")}
    assert files == covered


@pytest.mark.parametrize("override", ["privacy.epsilonn=3", "dataset.partitoner=iid", "dataset.name=digits",
                                      "num_client=3", "model.hiden=[8]"])  # fmt: skip
def test_unknown_key_is_refused(override: str) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_with(override)
    assert isinstance(info.value.__cause__, ConfigKeyError) or override.split("=")[0] in str(info.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("+privacy.epsilonn=3", r"unknown config key 'privacy.epsilonn' \(did you mean privacy.epsilon\? "
                                r"a '\+' override adds keys the schema does not have; privacy takes: enabled, epsilon"),
        ("+num_clientz=3", r"unknown config key 'num_clientz' \(did you mean num_clients\?"),
        ("+dataset.name=imagenet", r"unknown config key 'dataset.name' .*dataset takes: loader, partitioner"),
        ("+strategy.rule=krum", "unknown config key 'strategy.rule'"),
        ("+chain.url=http://localhost:8545", "unknown config key 'chain.url'"),
        # model and dataset.loader are free-form, checked against their targets' signatures
        ("+model.hiden=[8]", r"model deai_flower.models.mlp: unknown argument 'hiden' \(it takes: "),
        ("+dataset.loader.max_groups=3", "dataset loader deai_flower.data.load_digits: unknown argument 'max_groups'"),
    ],
)
def test_plus_keys_outside_the_schema_are_refused_with_one_line(override: str, message: str) -> None:
    cfg = compose_with(override)  # Hydra itself lets a '+' key through
    with pytest.raises(ConfigError, match=message) as info:
        validate(cfg)
    assert "\n" not in str(info.value)


def test_free_form_nodes_take_their_targets_arguments() -> None:
    check_known_keys(compose_with("+model.anything=1", "+dataset.loader.anything=2"))
    validate(compose_with("model=resnet", "model.channels=[4]"))
    cfg = compose_with("model._target_=torch.nn.modules.linear.Identity", "~model.hidden", "~model.activation", "~model.pool")
    validate(cfg)
    assert cfg.model == {"_target_": "torch.nn.modules.linear.Identity"}


@pytest.mark.parametrize("preset", PRESETS)
def test_privacy_none_is_non_private_with_every_preset(preset: str) -> None:
    cfg = compose_with(f"experiment={preset}", "privacy=none")
    validate(cfg)
    assert not cfg.privacy.enabled
    assert not is_private(cfg) and privacy_epsilon(cfg) == float("inf")
    # ... and the same preset with privacy=dp (the default) is private.
    assert is_private(compose_with(f"experiment={preset}"))


def test_privacy_none_wins_over_an_explicit_epsilon() -> None:
    assert not is_private(compose_with("privacy=none", "privacy.epsilon=3"))
    assert not is_private(compose_with("privacy.epsilon=inf"))
    assert is_private(compose_with("privacy.epsilon=3"))
    assert not is_private(compose_with("privacy.enabled=false"))


def test_unknown_group_option_is_refused() -> None:
    with pytest.raises(Exception, match="dataset"):
        compose_with("dataset=imagenet")


@pytest.mark.parametrize(
    "override,message",
    [
        ("privacy.epsilon=-1", "privacy.epsilon must be > 0"),
        ("num_clients=0", "num_clients must be >= 1"),
        ("num_rounds=0", "num_rounds must be >= 1"),
        ("privacy.delta=2", "privacy.delta must be in"),
        ("strategy.quorum=4", "strategy.min_reveals (2) must be >= strategy.quorum (4)"),
        ("chain.kind=rpc", "chain.rpc_url is required"),
        ("engine.kind=spark", "engine.kind must be"),
        ("strategy.attest_timeout_s=16777216", "strategy.attest_timeout_s must be between 1 and 16777215 seconds"),
        ("strategy.max_failed_rounds=-1", "strategy.max_failed_rounds must be >= 0 (got -1)"),
        ("dataset.test_fraction=1.0", "dataset.test_fraction must be in (0, 1)"),
        ("dataset.partitioner=random", "dataset.partitioner must be"),
        ("dataset.dirichlet_alpha=0", "dataset.dirichlet_alpha must be > 0"),
        ("model.activation=gelu", "model deai_flower.models.mlp: unknown activation 'gelu'"),
        ("model.hidden=[8,0]", "model deai_flower.models.mlp: model.hidden sizes must all be >= 1"),
        ("model.pool=0", "model deai_flower.models.mlp: model.pool must be >= 1"),
        ("model._target_=no_such_package.Net", "model no_such_package.Net: cannot import it"),
        ("model._target_=''", "model._target_ is required"),
        ("dataset.loader._target_=no_such_package.load", "dataset loader no_such_package.load: cannot import it"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose_with(override))


@pytest.mark.parametrize("dataset", sorted(p.stem for p in (CONF / "dataset").glob("*.yaml")
                                           if "schema:" in p.read_text()))  # fmt: skip
def test_a_declared_data_schema_is_the_loaded_datasets(dataset: str) -> None:
    """A run is created from the schema a dataset config declares, without loading it:
    the declaration must be what loading gives."""
    from deai_flower.data import load_dataset

    cfg = compose_with(f"dataset={dataset}")
    assert declared_schema(cfg) == load_dataset(cfg.dataset, seed=0).schema()


def test_a_data_schema_is_declared_whole() -> None:
    assert declared_schema(compose_with("dataset.schema.num_features=0", "dataset.schema.num_classes=0")) is None
    with pytest.raises(ConfigError, match=r"input_shape \[1, 8, 8\] does not hold num_features=30"):
        declared_schema(compose_with("dataset.schema.num_features=30"))
    with pytest.raises(ConfigError, match="num_classes >= 2"):
        declared_schema(compose_with("dataset.schema.num_classes=1"))


def test_a_commit_phase_too_short_for_the_embedded_chains_clock_is_refused() -> None:
    """1,000 first deposits are 1,000 blocks, and the embedded chain's clock moves a second
    a block: a 600 s commit phase lapsed on chain before the relayer's batch landed."""
    with pytest.raises(ConfigError, match=r"strategy.commit_timeout_s=600 is too short for 1000 sampled clients "
                                          r".* use strategy.commit_timeout_s=2000 or more, or chain=anvil"):  # fmt: skip
        validate(compose_with("num_clients=1000"))
    validate(compose_with("num_clients=1000", "strategy.commit_timeout_s=2000"))
    validate(compose_with("num_clients=1000", "strategy.sample_fraction=0.1"))  # 100 sampled a round

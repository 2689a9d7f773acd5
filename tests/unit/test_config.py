"""Every config in conf/ composes against the schema; bad values get clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from support import compose_with

from deai_flower.config import validate
from deai_flower.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))



def test_default_config_is_the_documented_main_job() -> None:
    cfg = compose_with()
    validate(cfg)
    assert (cfg.dataset.name, cfg.num_clients, cfg.num_rounds) == ("digits", 5, 5)
    assert (cfg.privacy.epsilon, cfg.privacy.delta) == (8.0, 1e-5)
    assert (cfg.chain.kind, cfg.storage.kind, cfg.engine.kind) == ("embedded", "local", "inprocess")


@pytest.mark.parametrize(
    "group,option", [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
)
def test_every_group_option_composes_and_validates(group: str, option: str) -> None:
    cfg = compose_with(f"{group}={option}", "num_clients=10")  # enough for Bulyan's n >= 4f + 3
    validate(cfg)


def test_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_with("privacy.epsilonn=3")
    assert isinstance(info.value.__cause__, ConfigKeyError) or "epsilonn" in str(info.value)


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
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose_with(override))

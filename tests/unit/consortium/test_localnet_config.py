"""What the deployment hands Flower: node configs Flower parses back, and what the
coordinator plays for a given run config."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from flwr.common.config import parse_config_args

from deai_flower import apps, server_app
from deai_flower.simulation import coordinator
from deai_flower.consortium.localnet import LocalnetError, toml_node_config


def test_node_configs_are_toml_flower_parses_back() -> None:
    config = {"keystore": "/srv/silo a/k.json", "threads": 2, "secure-mode": False, "store": "local:/x y"}
    assert parse_config_args([toml_node_config(config)]) == config
    with pytest.raises(LocalnetError, match="double quote"):
        toml_node_config({"keystore": '/srv/"a"/k.json'})


@pytest.mark.parametrize(("mode", "played"), [("deployment", "deployment"), ("simulation", "simulation")])
def test_the_run_configs_mode_says_what_the_coordinator_plays(mode: str, played: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    seen: list[str] = []
    monkeypatch.setattr(server_app, "coordinate", lambda grid, cfg: seen.append("deployment"))
    monkeypatch.setattr(coordinator, "coordinate_simulation", lambda grid, cfg: seen.append("simulation"))
    # the other keys no longer decide: a keystore without an experiment is still a simulation if it says so
    apps.coordinate(None, {"mode": mode, "keystore": "/k.json", "experiment": "", "overrides": ""})  # type: ignore[arg-type]
    assert seen == [played]


@pytest.mark.parametrize("mode", ["", "deployed"])
def test_a_run_config_without_a_known_mode_is_refused(mode: str) -> None:
    from deai_flower.errors import ConfigError

    with pytest.raises(ConfigError, match="'mode' must be 'deployment' or 'simulation'"):
        apps.coordinate(None, {"mode": mode, "keystore": "/k.json"})  # type: ignore[arg-type]


def test_flwr_run_plays_a_simulation_unless_told_otherwise() -> None:
    """``flwr run .`` hands over ``[tool.flwr.app.config]``: its default mode is a simulation."""
    config = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())
    assert config["tool"]["flwr"]["app"]["config"]["mode"] == "simulation"


@pytest.mark.parametrize(("value", "expected"), [("", True), (True, True), ("yes", True), (False, False),
                                                 ("false", False), ("0", False)])  # fmt: skip
def test_yes_no_run_config_entries_parse_and_default(value: Any, expected: bool) -> None:
    assert server_app._flag({"federated-evaluation": value}, "federated-evaluation", default=True) is expected


def test_a_yes_no_run_config_entry_that_is_neither_is_refused_by_name() -> None:
    from deai_flower.errors import ConfigError

    with pytest.raises(ConfigError, match="'federated-evaluation' must be true or false, not 'maybe'"):
        server_app._flag({"federated-evaluation": "maybe"}, "federated-evaluation", default=True)

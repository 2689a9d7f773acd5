"""What the deployment hands Flower: node configs Flower parses back, and which run the
coordinator plays for a given run config."""

from __future__ import annotations

from typing import Any

import pytest
from flwr.common.config import parse_config_args

from deai_flower import server_app
from deai_flower.consortium.localnet import LocalnetError, toml_node_config


def test_node_configs_are_toml_flower_parses_back() -> None:
    config = {"keystore": "/srv/silo a/k.json", "threads": 2, "secure-mode": False, "store": "local:/x y"}
    assert parse_config_args([toml_node_config(config)]) == config
    with pytest.raises(LocalnetError, match="double quote"):
        toml_node_config({"keystore": '/srv/"a"/k.json'})


@pytest.mark.parametrize(("run_config", "played"), [
    ({"overrides": "", "experiment": "", "keystore": "/k.json", "contract": "0x1"}, "deployment"),
    ({"overrides": "", "experiment": "", "keystore": "", "contract": ""}, "simulation"),  # flwr run . on :local:
    ({"overrides": "num_rounds=2", "experiment": "", "keystore": "/k.json"}, "simulation"),
    ({"experiment": "{}", "contract": "0x1"}, "simulation"),  # deai-flower's own runs
])  # fmt: skip
def test_a_deployment_is_a_coordinator_key_without_an_experiment(
    run_config: dict[str, Any], played: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    monkeypatch.setattr(server_app, "_deployment", lambda grid, cfg: seen.append("deployment"))
    monkeypatch.setattr(server_app, "_simulation", lambda grid, cfg: seen.append("simulation"))
    server_app.coordinate(None, run_config)  # type: ignore[arg-type]
    assert seen == [played]


@pytest.mark.parametrize(("value", "expected"), [("", True), (True, True), ("yes", True), (False, False),
                                                 ("false", False), ("0", False)])  # fmt: skip
def test_yes_no_run_config_entries_parse_and_default(value: Any, expected: bool) -> None:
    assert server_app._flag({"federated-evaluation": value}, "federated-evaluation", default=True) is expected


def test_a_yes_no_run_config_entry_that_is_neither_is_refused_by_name() -> None:
    from deai_flower.errors import ConfigError

    with pytest.raises(ConfigError, match="'federated-evaluation' must be true or false, not 'maybe'"):
        server_app._flag({"federated-evaluation": "maybe"}, "federated-evaluation", default=True)

"""A deployment's default flow is the step-wise, relayed one, within the gas budget per
participant per round (issue 26); one ``train.round`` message per node stays available."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from deai_flower import server_app

ROOT = Path(__file__).resolve().parents[2]


class _Stop(Exception):
    pass


def _flow(monkeypatch: pytest.MonkeyPatch, run_config: dict[str, Any]) -> dict[str, Any]:
    """The flow ``coordinate`` asks the strategy for, with ``run_config`` over a deployment's entries."""
    seen: dict[str, Any] = {}

    def strategy_for(*_args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        raise _Stop

    for name in ("keystore_key", "connect_url", "open_store", "RoundsContract"):
        monkeypatch.setattr(server_app, name, lambda *a, **k: type("Stub", (), {"address": "0x" + "1" * 40})())
    monkeypatch.setattr(server_app, "strategy_for", strategy_for)
    deployment = {"chain-url": "http://127.0.0.1:1", "store": "dir:/nowhere", "contract": "0x" + "1" * 40,
                  "run-id": 1, "keystore": "k.json", "password-file": "p.txt"}  # fmt: skip
    with pytest.raises(_Stop):
        server_app.coordinate(grid=None, run_config={**deployment, **run_config})  # type: ignore[arg-type]
    return seen


def test_a_deployment_plays_one_message_per_phase_and_relays_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _flow(monkeypatch, {})["one_message_rounds"] is False
    assert _flow(monkeypatch, {})["relay"] is True
    assert _flow(monkeypatch, {"phase-messages": "false"})["one_message_rounds"] is True
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert config["phase-messages"] is True and config["relay"] is True  # what `flwr run` sends


def test_the_default_flow_is_within_the_gas_budget_per_participant() -> None:
    gas = json.loads((ROOT / "bench" / "results" / "gas.json").read_text())
    budget = gas["budget_per_participant"]
    main_job = gas["main_job"]
    assert main_job["participants"] == 5 and main_job["votes_needed"] == 3  # at 5, majority rule
    # step-wise and relayed (commitMany, revealMany, attestMany): the default
    assert main_job["relayed_commits_steady_per_participant"]["total"] <= budget
    # one train.round message per node, each sending its own transactions: over the budget
    assert main_job["steady_per_participant"]["total"] > budget

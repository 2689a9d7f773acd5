"""A poisoned client: robust rules keep accuracy near the clean run, FedAvg does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import compose_with

from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow


def final_accuracy(tmp_path: Path, *overrides: str) -> float:
    # seeded noise: the margins below compare rules, not one noise draw with another
    cfg = compose_with("num_rounds=3", "progress=false", "privacy.reproducible_noise=true", *overrides)
    out = tmp_path / "_".join(o.replace("=", "-") for o in overrides)
    out.mkdir()
    results = run_experiment(cfg, output_dir=out)
    assert all(r["status"] == "finalized" for r in results["rounds"])
    # and anyone can replay it: every round verifies from the chain's events and the store
    assert all(v.ok for v in verify_run(RunRecord.from_output_dir(out), LocalStore(out / "store")))
    return results["rounds"][-1]["accuracy"]


def test_robust_rules_resist_a_scaled_update(tmp_path: Path) -> None:
    clean = final_accuracy(tmp_path, "strategy=fedavg")
    # client 0 sends w_global - 5 * (its honest update)
    assert final_accuracy(tmp_path, "strategy=fedavg", "adversary=scaled") < clean - 0.3
    for rule in ("krum", "multikrum", "fedmedian"):
        assert final_accuracy(tmp_path, f"strategy={rule}", "adversary=scaled") > clean - 0.15, rule

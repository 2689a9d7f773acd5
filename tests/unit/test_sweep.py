"""Tests for deai_flower.sweep: the multirun summary, on fabricated and on real job outputs."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from deai_flower.sweep import FAILED_FILE, SweepSummaryCallback, summarize

# Final accuracies by (epsilon, seed) of a fabricated sweep -m privacy.epsilon=1,3,8,inf seed=0,1,2.
ACCURACY = {
    ("1", 0): 0.70, ("1", 1): 0.74, ("1", 2): 0.72,
    ("3", 0): 0.88, ("3", 1): 0.90, ("3", 2): 0.89,
    ("8", 0): 0.93, ("8", 1): 0.94,
    ("inf", 0): 0.96, ("inf", 1): 0.97, ("inf", 2): 0.96,
}  # fmt: skip


def _job(sweep: Path, number: int, overrides: list[str], results: dict | None = None, error: str = "") -> Path:
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))
    if error:
        (job / FAILED_FILE).write_text(json.dumps({"error": error, "type": "PrivacyError"}))
    return job


def _results(epsilon: str, accuracy: float) -> dict:
    rounds = [
        {"round": 1, "status": "finalized", "accuracy": accuracy - 0.2},
        {"round": 2, "status": "finalized", "accuracy": accuracy},
        {"round": 3, "status": "failed", "accuracy": None},  # the model stays round 2's
    ]
    return {"privacy": {"epsilon": epsilon if epsilon == "inf" else float(epsilon)}, "rounds": rounds,
            "initial": {"accuracy": 0.1}}  # fmt: skip


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    number = 0
    for epsilon in ("1", "3", "8", "inf"):
        for seed in range(3):
            overrides = [f"privacy.epsilon={epsilon}", f"seed={seed}", "progress=false"]
            if (epsilon, seed) in ACCURACY:
                _job(tmp_path, number, overrides, _results(epsilon, ACCURACY[(epsilon, seed)]))
            else:
                _job(tmp_path, number, overrides, error="calibration failed")
            number += 1
    return tmp_path


def test_summary_has_mean_and_std_per_epsilon(sweep: Path) -> None:
    rows = summarize(sweep)
    assert [r.epsilon for r in rows] == [1.0, 3.0, 8.0, math.inf]
    by_eps = {r.epsilon: r for r in rows}
    assert by_eps[1.0].mean == pytest.approx(0.72) and by_eps[1.0].std == pytest.approx(0.02)
    assert by_eps[8.0].accuracies == [0.93, 0.94] and by_eps[8.0].failed == 1
    assert by_eps[math.inf].mean == pytest.approx((0.96 + 0.97 + 0.96) / 3)

    with (sweep / "summary.csv").open() as stream:
        table = list(csv.DictReader(stream))
    assert [row["epsilon"] for row in table] == ["1", "3", "8", "inf"]
    assert float(table[1]["accuracy_mean"]) == pytest.approx(0.89)
    assert float(table[1]["accuracy_std"]) == pytest.approx(0.01)
    assert (table[2]["runs"], table[2]["failed"], table[2]["seeds"]) == ("2", "1", "0 1")

    markdown = (sweep / "summary.md").read_text()
    assert "| ε | final accuracy (mean ± std) | runs | failed |" in markdown
    assert "| 1 | 72.00 % ± 2.00 | 3 | 0 |" in markdown
    assert "| ∞ (non-private) | 96.33 % ± 0.58 | 3 | 0 |" in markdown

    png = (sweep / "accuracy_vs_epsilon.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_other_swept_keys_get_their_own_rows(tmp_path: Path) -> None:
    for i, (dataset, eps, acc) in enumerate([("digits", "1", 0.7), ("digits", "8", 0.9), ("mnist_5k", "1", 0.8)]):
        _job(tmp_path, i, [f"dataset={dataset}", f"privacy.epsilon={eps}", "seed=0"], _results(eps, acc))
    rows = summarize(tmp_path)
    assert [(dict(r.setting)["dataset"], r.epsilon) for r in rows] == [("digits", 1.0), ("digits", 8.0),
                                                                       ("mnist_5k", 1.0)]  # fmt: skip
    header = (tmp_path / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("epsilon,dataset,accuracy_mean")
    assert (tmp_path / "accuracy_vs_epsilon.png").exists()


def test_nothing_finished_writes_nothing(tmp_path: Path) -> None:
    assert summarize(tmp_path) == []
    assert list(tmp_path.iterdir()) == []


def _config(sweep: Path, mode: str = "MULTIRUN"):
    from hydra.types import RunMode

    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "mode": RunMode[mode]}})


def test_callback_summarizes_after_each_job_and_fails_the_sweep_at_the_end(sweep: Path) -> None:
    callback = SweepSummaryCallback()
    callback.on_job_end(_config(sweep, "RUN"), job_return=None)  # a single run: nothing to do
    assert not (sweep / "summary.csv").exists()
    callback.on_job_end(_config(sweep), job_return=None)
    assert (sweep / "summary.csv").exists()
    (sweep / "summary.csv").unlink()
    with pytest.raises(SystemExit) as info:  # one job failed
        callback.on_multirun_end(_config(sweep))
    assert info.value.code == 2
    assert (sweep / "summary.md").exists() and (sweep / "summary.csv").exists()


def test_callback_ends_quietly_when_every_job_finished(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _job(tmp_path, 0, ["privacy.epsilon=8", "seed=0"], _results("8", 0.9))
    SweepSummaryCallback().on_multirun_end(_config(tmp_path))
    assert "sweep summary:" in capsys.readouterr().out


@pytest.mark.slow
def test_a_real_multirun_ends_with_its_summary(tmp_path: Path) -> None:
    # The installed entry point, as a user runs a sweep; tiny jobs.
    sweep_dir = tmp_path / "sweep"
    entry = "from deai_flower.cli.main import main; main()"
    args = ["-m", "privacy.epsilon=8,inf", "seed=0,1", "num_clients=2", "num_rounds=1", "training.local_epochs=1",
            "progress=false", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_USAGE_STATS_ENABLED": "0"}
    result = subprocess.run([sys.executable, "-c", entry, *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    table = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [(row["epsilon"], row["runs"], row["failed"]) for row in table] == [("8", "2", "0"), ("inf", "2", "0")]
    assert all(0.0 < float(row["accuracy_mean"]) <= 1.0 for row in table)
    assert (sweep_dir / "accuracy_vs_epsilon.png").stat().st_size > 10_000
    assert "sweep summary:" in result.stdout


@pytest.mark.slow
def test_a_failing_job_does_not_stop_the_sweep(tmp_path: Path) -> None:
    # privacy.epsilon=1e-9 cannot be calibrated (a PrivacyError in that job only).
    sweep_dir = tmp_path / "sweep"
    entry = "from deai_flower.cli.main import main; main()"
    args = ["-m", "privacy.epsilon=1e-9,8", "num_clients=2", "num_rounds=1", "training.local_epochs=1",
            "progress=false", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_USAGE_STATS_ENABLED": "0"}
    result = subprocess.run([sys.executable, "-c", entry, *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 2
    assert "1 sweep job(s) failed" in result.stderr and "Traceback" not in result.stderr
    table = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [(row["epsilon"], row["runs"], row["failed"]) for row in table] == [("1e-09", "0", "1"), ("8", "1", "0")]

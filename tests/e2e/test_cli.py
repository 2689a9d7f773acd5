"""The installed commands as a user runs them: one readable line on bad input, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_USAGE_STATS_ENABLED": "0"}


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # As the console script does: Hydra finds the packaged configs through the module.
    entry = "from deai_flower.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", entry, *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.mark.parametrize(
    "override,expected",
    [
        ("dataset=imagenet", "Could not find 'dataset/imagenet'"),
        ("dataset.loader._target_=deai_flower.data.load_imagenet", "load_imagenet"),
        ("+privacy.epsilonn=3", "epsilonn"),
        ("privacy.epsilon=-1", "privacy.epsilon must be > 0"),
        ("num_clients=0", "num_clients must be >= 1"),
        ("privacy.epsilonn=3", "epsilonn"),
    ],
)
def test_bad_input_is_one_readable_error(override: str, expected: str, tmp_path: Path) -> None:
    result = run_cli(override, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_main_job_runs_and_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("num_clients=3", "num_rounds=1", "progress=false", f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "accuracy" in result.stdout and "gas used" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["rounds"][0]["status"] == "finalized"


def test_store_add_prints_the_ipfs_cid(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_bytes(b"hello world")
    cmd = [sys.executable, "-m", "deai_flower.cli.deai", "store", "--root", str(tmp_path / "s")]
    added = subprocess.run([*cmd, "add", str(tmp_path / "hello.txt")], capture_output=True, text=True, env=ENV)
    # the CID `ipfs add --cid-version=1` prints for these bytes
    assert added.stdout.strip() == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    missing = subprocess.run([*cmd, "add", str(tmp_path / "nope")], capture_output=True, text=True, env=ENV)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no such file")


@pytest.mark.skipif(os.environ.get("DEAI_SKIP_RAY") == "1", reason="DEAI_SKIP_RAY=1")
def test_ray_engine_runs_the_same_apps(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("engine=ray", "num_clients=3", "num_rounds=1", "progress=false", f"hydra.run.dir={out}",
                     cwd=tmp_path, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["rounds"][0]["status"] == "finalized"
    assert results["chain"]["kind"] == "embedded"

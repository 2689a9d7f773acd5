"""``flwr run .``: the module-level apps on Flower's own local simulation runtime.

The test runs Flower's CLI as a user would, from the repository root, with a Flower home
of its own; Flower starts a detached local SuperLink (simulation runtime, two SuperNodes
by default), which the test stops afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from doc_commands import of

from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def flwr_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "flwr-home"
    home.mkdir()
    yield home
    marker = str(home)  # the local SuperLink and its children name files under this home
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in process.info["cmdline"] or []):
                for child in process.children(recursive=True):
                    child.kill()
                process.kill()
        except psutil.Error:
            continue


def _flwr(*args: str, home: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(sys.executable).parent  # Flower spawns its helpers by name from PATH
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    return subprocess.run([str(bin_dir / "flwr"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_flwr_run_runs_the_default_experiment(flwr_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = f'overrides="num_rounds=2 training.local_epochs=1" output-dir="{out}"'
    run = _flwr("run", ".", "--stream", "--run-config", config, home=flwr_home, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    # `flwr run --stream` exits 0 even when the ServerApp failed: Flower's own record says
    listing = _flwr("ls", "--format", "json", home=flwr_home, timeout=120)
    (entry,) = json.loads(listing.stdout)["runs"]
    assert entry["status"] == "finished:completed", run.stdout + run.stderr
    results = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in results["rounds"]] == ["finalized", "finalized"]
    assert len(results["rounds"][0]["revealed"]) == 2  # one simulated participant per SuperNode
    assert results["rounds"][-1]["accuracy"] > 0.5  # digits: chance is 0.1
    verdicts = verify_run(RunRecord.from_output_dir(out), LocalStore(out / results["store"]["root"]))
    assert all(v.ok for v in verdicts), [v.problems for v in verdicts]
    # one line per round, as the CLI's table has it, each printed once (not again in a second format)
    lines = [line for line in run.stdout.splitlines() if "(attempt " in line]
    assert len(lines) == 2 and all(f"round {n} (attempt {n}): finalized · accuracy" in lines[n - 1] for n in (1, 2))
    assert all("max ε" in line and "gas" in line for line in lines)
    for noise in ("FutureWarning", "Full backward hook", "DEBUG:"):  # Ray's tip, Opacus' hooks, Opacus' root handler
        assert noise not in run.stdout + run.stderr, run.stdout[-3000:]
    for name in ("model.safetensors", "rounds.csv", "clients.csv", "curve.png"):
        assert (out / name).is_file(), name


def _status(home: Path) -> str:
    listing = _flwr("ls", "--format", "json", home=home, timeout=120)
    (entry,) = json.loads(listing.stdout)["runs"]
    return str(entry["status"])


def test_a_config_error_is_one_line_with_did_you_mean_and_the_run_fails(flwr_home: Path, tmp_path: Path) -> None:
    config = f'overrides="privacy.epsilonn=3" output-dir="{tmp_path / "out"}"'
    run = _flwr("run", ".", "--stream", "--run-config", config, home=flwr_home, timeout=600)
    output = run.stdout + run.stderr
    assert "unknown config key 'privacy.epsilonn' (did you mean privacy.epsilon?" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert _status(flwr_home) == "finished:failed"


def test_the_readmes_flwr_run_with_overrides_runs_as_written(flwr_home: Path, tmp_path: Path) -> None:
    """README's ``flwr run`` command with overrides, as written but for its output directory
    (Krum needs 5 reveals a round: its federation has 5 SuperNodes)."""
    (command,) = [c for c in of("flwr") if c.page == "README.md" and "--run-config" in c.words]
    words = list(command.words[1:])
    config = words[words.index("--run-config") + 1]
    out = tmp_path / "run"
    words[words.index("--run-config") + 1] = re.sub(r'output-dir="[^"]*"', f'output-dir="{out}"', config)
    assert words != list(command.words[1:])  # it names an output directory, which the test replaces
    run = _flwr(*words, home=flwr_home, timeout=1200)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert _status(flwr_home) == "finished:completed", (run.stdout + run.stderr)[-3000:]
    results = json.loads((out / "results.json").read_text())
    rounds = int(re.search(r"num_rounds=(\d+)", config).group(1))  # type: ignore[union-attr]
    assert [r["status"] for r in results["rounds"]] == ["finalized"] * rounds
    assert len([line for line in run.stdout.splitlines() if "(attempt " in line]) == rounds

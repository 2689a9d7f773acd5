"""The installed commands as a user runs them: one readable line on bad input, no traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_USAGE_STATS_ENABLED": "0"}


def run_cli(*args: str, cwd: Path, timeout: float = 300, warnings: bool = False) -> subprocess.CompletedProcess[str]:
    """``deai-flower`` with ``args``; ``warnings``: with Python's default warning filters,
    as a user's shell has them (else every warning is ignored)."""
    # As the console script does: Hydra finds the packaged configs through the module.
    entry = "from deai_flower.cli.main import main; main()"
    env = {k: v for k, v in ENV.items() if k != "PYTHONWARNINGS"} if warnings else ENV
    return subprocess.run([sys.executable, "-c", entry, *args], cwd=cwd, env=env,
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
        ("num_rounds=0", "num_rounds must be >= 1"),
        ("num_rounds=abc", "could not be converted to Integer"),
        ("model._target_=deai_flower.models.mlpp", "mlpp"),
        ("model._target_=no_such_package.Net", "no_such_package"),
        ("model=custom", "model._target_=my_pkg.MyNet"),
    ],
)
def test_bad_input_is_one_readable_error(override: str, expected: str, tmp_path: Path) -> None:
    result = run_cli(override, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""  # refused before the run's summary line


HEAVY = ("torch", "flwr", "opacus", "web3", "hydra", "datasets", "sklearn")


def modules_loaded_by(code: str, cwd: Path) -> set[str]:
    """The heavy top-level packages imported while running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint('loaded:', *(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(out.stdout.splitlines()[-1].removeprefix("loaded:").split())


def test_deai_help_imports_no_ml_stack(tmp_path: Path) -> None:
    code = "from deai_flower.cli.deai import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert modules_loaded_by(code, tmp_path) == set()


def test_store_commands_import_no_ml_stack(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(b"x" * 1000)
    root = str(tmp_path / "s")
    code = (f"from deai_flower.cli.deai import main\nmain(['store', '--root', {root!r}, 'add', 'f.bin'])\n"
            f"main(['store', '--root', {root!r}, 'verify', 'bafkreice7a2ujfffxib3uf4svdj6trjuyr5jdamyb7phup2ewbxpflt4p4'])")  # fmt: skip
    assert modules_loaded_by(code, tmp_path) == set()


@pytest.fixture(scope="module")
def main_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One run of the main job from the command line, and its output directory (read by two tests)."""
    cwd = tmp_path_factory.mktemp("main-job")
    out = cwd / "out"
    return run_cli("num_clients=3", "num_rounds=1", "progress=false", f"hydra.run.dir={out}", cwd=cwd,
                   warnings=True), out  # fmt: skip


@pytest.mark.slow
def test_a_run_prints_its_summary_first(main_job: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, _ = main_job
    assert result.returncode == 0, result.stderr[-2000:]
    first = result.stdout.splitlines()[0]
    assert first.startswith("deai-flower: 3 clients × 1 rounds, fedavg, mlp on digits") and first.endswith("run…")


@pytest.mark.slow
def test_main_job_runs_and_prints_the_table(main_job: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, out = main_job
    assert result.returncode == 0, result.stderr[-2000:]
    assert "accuracy" in result.stdout and "gas used" in result.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["rounds"][0]["status"] == "finalized"
    # piped (80 columns): the last line still names the results file whole, on one line
    assert f"results {out / 'results.json'} (and model.safetensors" in result.stdout.splitlines()[-1]
    assert "ε spent" in result.stdout and "payout" in result.stdout  # the per-client table
    rows = [line for line in result.stdout.splitlines() if line.startswith(("│", "┃"))]
    # piped, no cell is cut short (the addresses' … is theirs)
    assert rows and not [row for row in rows if "…" in re.sub(r"0x[0-9a-fA-F]{4}…[0-9a-fA-F]{4}", "", row)], rows


@pytest.mark.slow
def test_main_job_warns_nothing_and_logs_under_its_name(main_job: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, out = main_job
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Warning" not in result.stderr, result.stderr[-2000:]  # Opacus' full backward hook warning among them
    assert (out / "deai-flower.log").is_file() and not (out / "main.log").exists()


def test_help_begins_with_what_the_tool_is(tmp_path: Path) -> None:
    result = run_console_script("--help", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deai-flower: federated learning on Flower with no trusted aggregator")
    assert "powered by Hydra" not in result.stdout
    assert "model: cnn, custom, mlp, resnet, scatter" in result.stdout


@pytest.mark.slow
def test_cuda_without_cuda_is_refused_before_anything_is_deployed(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli("device=cuda", f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: device 'cuda' was requested but no CUDA GPU is available to PyTorch; use 'cpu' or 'auto'"]
    assert "contract" not in result.stdout  # no run line: nothing was deployed


def test_store_add_prints_the_ipfs_cid(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_bytes(b"hello world")
    cmd = [sys.executable, "-m", "deai_flower.cli.deai", "store", "--root", str(tmp_path / "s")]
    added = subprocess.run([*cmd, "add", str(tmp_path / "hello.txt")], capture_output=True, text=True, env=ENV)
    # the CID `ipfs add --cid-version=1` prints for these bytes
    assert added.stdout.strip() == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    missing = subprocess.run([*cmd, "add", str(tmp_path / "nope")], capture_output=True, text=True, env=ENV)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no such file")


OWN_MODEL = """from torch import nn


def MyNet(num_features, num_classes, width=8):
    return nn.Sequential(nn.Linear(num_features, width), nn.Tanh(), nn.Linear(width, num_classes))
"""


def run_console_script(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``deai-flower`` as installed: unlike ``python -c``, nothing puts the working directory on its path."""
    script = Path(sys.executable).parent / "deai-flower"
    env = {key: value for key, value in ENV.items() if key != "PYTHONPATH"}
    return subprocess.run([str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["inprocess", pytest.param("ray", marks=pytest.mark.skipif(
    os.environ.get("DEAI_SKIP_RAY") == "1", reason="DEAI_SKIP_RAY=1"))])  # fmt: skip
def test_a_model_in_the_working_directory_runs_on_each_engine(engine: str, tmp_path: Path) -> None:
    """``my_pkg/`` beside where the user runs ``deai-flower``: importable by the run and by
    Ray's workers without PYTHONPATH, through the ``custom`` model group (no ``~`` removals)."""
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text(OWN_MODEL)
    out = tmp_path / "out"
    result = run_console_script(f"engine={engine}", "num_clients=3", "num_rounds=1", "progress=false",
                                "model=custom", "model._target_=my_pkg.MyNet", "+model.width=6",
                                f"hydra.run.dir={out}", cwd=tmp_path, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["rounds"][0]["status"] == "finalized"
    assert results["spec"]["model"] == {"target": "my_pkg.MyNet", "args": {"width": 6}}
    assert results["chain"]["kind"] == "embedded"

"""The import layers of pyproject.toml's ``[tool.importlinter]`` hold: imports run down
(protocol <- chain/storage/privacy <- participant/coordinator <- consortium <- simulation
<- apps <- experiment <- CLI), lazy and ``TYPE_CHECKING`` imports included, and no modules
import each other in a circle.

The linter reads files, not the import system, so it is run on the package laid out as
installed: setuptools' ``package-dir`` puts the top-level ``strategies/`` at
``deai_flower.strategies``, which the source tree alone does not show.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lay_out_as_installed(destination: Path) -> None:
    """Copy each ``deai_flower*`` package of ``package-dir`` to where it is installed."""
    package_dir: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]  # fmt: skip
    for package, source in sorted(package_dir.items()):  # parents before their children
        if not any((ROOT / source).rglob("*.py")):
            continue  # configs and contract artifacts: no imports to check
        target = destination.joinpath(*package.split("."))
        shutil.copytree(ROOT / source, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the contracts of pyproject.toml, run on ``tree`` (laid out as installed)."""
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    linter = Path(sys.executable).with_name("lint-imports")
    # run where the copy comes first on the path, not the editable install's source tree
    return subprocess.run([str(linter), "--no-cache", "--no-logo"], cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tree)}, timeout=300)  # fmt: skip


def test_imports_keep_the_layers_and_make_no_circles(tmp_path: Path) -> None:
    _lay_out_as_installed(tmp_path)
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_lazy_import_up_the_layers_is_caught(tmp_path: Path) -> None:
    """The check reads imports inside functions, and sees the coordinator package the
    source tree keeps outside ``deai_flower/``."""
    _lay_out_as_installed(tmp_path)
    cid = tmp_path / "deai_flower" / "protocol" / "cid.py"
    cid.write_text(cid.read_text() + "\n\ndef _upward():\n    from deai_flower.strategies import CommitRevealStrategy\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "deai_flower.protocol.cid -> deai_flower.strategies" in result.stdout, result.stdout

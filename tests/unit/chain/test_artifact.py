"""The committed contract artifact is exactly what the pinned compiler produces."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from deai_flower.chain.artifact import load_artifact

CONTRACTS = Path(__file__).resolve().parents[3] / "contracts"


def test_artifact_records_compiler_and_settings() -> None:
    artifact = load_artifact()
    assert artifact["compiler"]["version"].startswith("0.8.37+")
    assert artifact["settings"]["evmVersion"] == "cancun"
    assert artifact["bytecode"].startswith("0x") and len(artifact["bytecode"]) > 1000
    names = {e.get("name") for e in artifact["abi"]}
    assert {"commit", "reveal", "attest", "openRound", "createRun", "CommitmentMismatch"} <= names


@pytest.mark.npm
def test_committed_artifact_matches_a_fresh_compile(tmp_path: Path) -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run the pinned solc-js compiler")
    if not (CONTRACTS / "node_modules" / "solc").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=CONTRACTS, check=True, capture_output=True,
                       timeout=300)  # fmt: skip
    fresh = tmp_path / "artifact.json"
    subprocess.run([node, "compile.mjs", "--out", str(fresh)], cwd=CONTRACTS, check=True, capture_output=True,
                   timeout=300)  # fmt: skip
    committed = json.loads((CONTRACTS / "artifacts" / "CommitRevealRounds.json").read_text())
    assert json.loads(fresh.read_text()) == committed

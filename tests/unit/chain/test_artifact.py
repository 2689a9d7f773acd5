"""The committed contract artifacts are exactly what the pinned compiler produces."""

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
    subprocess.run([node, "compile.mjs", "--out", str(tmp_path)], cwd=CONTRACTS, check=True, capture_output=True,
                   timeout=300)  # fmt: skip
    committed = sorted(p.relative_to(CONTRACTS / "artifacts") for p in (CONTRACTS / "artifacts").rglob("*.json"))
    assert committed == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    assert len(committed) == 3  # the round contract, and the token and attacker the tests deploy
    for path in committed:
        assert json.loads((tmp_path / path).read_text()) == json.loads((CONTRACTS / "artifacts" / path).read_text())

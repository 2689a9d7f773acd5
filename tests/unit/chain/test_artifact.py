"""The committed contract artifacts are exactly what the pinned compiler produces."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from deai_flower.chain.artifact import EXTENSION_NAME, load_artifact, rounds_abi

CONTRACTS = Path(__file__).resolve().parents[3] / "contracts"
#: EIP-170: the most bytes of code a contract may deploy.
EIP170_BYTES = 24_576
#: What the rounds contract may deploy: 4 KiB under EIP-170 left for the protocol to grow.
ROUNDS_MAX_BYTES = EIP170_BYTES - 4_096


def test_artifact_records_compiler_and_settings() -> None:
    artifact = load_artifact()
    assert artifact["compiler"]["version"].startswith("0.8.37+")
    assert artifact["settings"]["evmVersion"] == "cancun"
    assert artifact["bytecode"].startswith("0x") and len(artifact["bytecode"]) > 1000
    names = {e.get("name") for e in artifact["abi"]}
    assert {"commit", "reveal", "attest", "openRound", "CommitmentMismatch"} <= names
    # the rest is the extension's code, run through the fallback at the same address
    extension = {e.get("name") for e in load_artifact(EXTENSION_NAME)["abi"]}
    assert extension >= {"register", "createRun", "deposit", "getRound"} and "commit" not in extension
    assert {e["type"] for e in artifact["abi"]} >= {"fallback"}


def test_the_rounds_contract_leaves_4_kib_of_eip170_headroom() -> None:
    sizes = {name: len(bytes.fromhex(load_artifact(name)["deployedBytecode"].removeprefix("0x")))
             for name in ("CommitRevealRounds", EXTENSION_NAME)}  # fmt: skip
    assert sizes["CommitRevealRounds"] <= ROUNDS_MAX_BYTES, sizes
    assert sizes[EXTENSION_NAME] <= EIP170_BYTES, sizes


def test_the_handle_knows_each_function_once() -> None:
    functions = [(e["name"], tuple(i["type"] for i in e["inputs"])) for e in rounds_abi() if e["type"] == "function"]
    assert len(functions) == len(set(functions))
    assert {name for name, _ in functions} >= {"commit", "register", "revoke", "deposit", "getRun", "admin"}


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
    assert len(committed) == 4  # the round contract, its extension, and the token and attacker the tests deploy
    for path in committed:
        assert json.loads((tmp_path / path).read_text()) == json.loads((CONTRACTS / "artifacts" / path).read_text())

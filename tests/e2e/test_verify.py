"""`deai verify` replays a finished run and catches tampering with the log or the store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import compose_with

from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore, cid_from_bytes
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = compose_with("num_clients=3", "num_rounds=2", "progress=false",
                       "training.local_epochs=1")  # fmt: skip
    out = tmp_path_factory.mktemp("verified")
    run_experiment(cfg, output_dir=out)
    return out


def verdicts(out: Path):
    return verify_run(RunRecord.from_output_dir(out), LocalStore(out / "store"))


def deai_verify(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deai_flower.cli.deai", "verify", str(out)], capture_output=True,
                          text=True)  # fmt: skip


def test_a_finished_run_verifies(run_dir: Path) -> None:
    result = verdicts(run_dir)
    assert [v.round for v in result] == [1, 2]
    assert all(v.ok and v.status == "finalized" for v in result), [v.problems for v in result]
    cli = deai_verify(run_dir)
    assert cli.returncode == 0 and "all 2 rounds verified" in cli.stdout


def tampered_copy(run_dir: Path, tmp_path: Path) -> tuple[Path, dict]:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    results = json.loads((copy / "results.json").read_text())
    results["store"]["location"] = str(copy / "store")
    return copy, results


def patch_record(reveal: dict, start: int, end: int, change) -> None:
    """Rewrite the big-endian integer at ``record[start:end]`` of an exported ``Revealed``
    event (protocol §2.3) with ``change(old value)``."""
    record = bytearray(bytes.fromhex(reveal["args"]["record"][2:]))
    value = change(int.from_bytes(record[start:end], "big"))
    record[start:end] = value.to_bytes(end - start, "big")
    reveal["args"]["record"] = "0x" + record.hex()


def test_a_changed_reveal_fails_its_commitment(run_dir: Path, tmp_path: Path) -> None:
    copy, results = tampered_copy(run_dir, tmp_path)
    reveal = next(e for e in results["events"] if e["event"] == "Revealed" and e["args"]["round"] == 2)
    patch_record(reveal, 36, 44, lambda examples: examples + 1)
    (copy / "results.json").write_text(json.dumps(results))
    result = verdicts(copy)
    assert result[0].ok and not result[1].ok
    assert any("does not open its commitment" in p for p in result[1].problems)
    cli = deai_verify(copy)
    assert cli.returncode == 1 and "round(s) 2" in cli.stderr


def test_a_tampered_blob_changes_the_aggregate(run_dir: Path, tmp_path: Path) -> None:
    copy, results = tampered_copy(run_dir, tmp_path)
    (copy / "results.json").write_text(json.dumps(results))
    reveal = next(e for e in results["events"] if e["event"] == "Revealed" and e["args"]["round"] == 1)
    cid = cid_from_bytes(bytes.fromhex(reveal["args"]["cid"][2:]))
    (blob,) = list((copy / "store").rglob(cid))
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    result = verdicts(copy)
    assert not result[0].ok
    assert any("chain finalized" in p for p in result[0].problems)
    assert any(c.startswith("excluded") for c in result[0].checks), result[0].checks


def test_a_forged_epsilon_is_caught(run_dir: Path, tmp_path: Path) -> None:
    copy, results = tampered_copy(run_dir, tmp_path)
    reveal = next(e for e in results["events"] if e["event"] == "Revealed" and e["args"]["round"] == 1)
    patch_record(reveal, 96, 112, lambda epsilon_wad: epsilon_wad // 2)
    (copy / "results.json").write_text(json.dumps(results))
    problems = verdicts(copy)[0].problems
    assert any("its revealed parameters give" in p for p in problems)

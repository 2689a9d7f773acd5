"""`deai verify` replays a finished run and catches tampering with the log, the store or
the ε values results.json reports.

Each tampering happens in a copy of the run's output directory while the original stays
where it was: the copy must be checked against its own store and fail, the original
must still verify.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import SmallRun

from deai_flower.storage import cid_from_bytes
from deai_flower.protocol.encoding import parse_reveal_record
from deai_flower.protocol.outcome import decode_outcome, encode_outcome
from deai_flower.verify import RunRecord, Verification, verify_run

pytestmark = pytest.mark.slow


@pytest.fixture
def run_dir(small_run: SmallRun) -> Path:
    """The session's small run (tests/e2e/conftest.py); tests tamper with copies only."""
    return small_run.out


def verify(out: Path) -> Verification:
    record = RunRecord.from_output_dir(out)
    assert record.store is not None
    return verify_run(record, record.store.open())


def deai_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deai_flower.cli.deai", "verify", *args], capture_output=True,
                          text=True)  # fmt: skip


def test_a_finished_run_verifies(run_dir: Path) -> None:
    result = verify(run_dir)
    assert result.ok, (result.problems, [v.problems for v in result])
    assert [v.round for v in result] == [1, 2]
    assert all(v.status == "finalized" and "results.json's ε" in v.checks for v in result)
    results = json.loads((run_dir / "results.json").read_text())
    assert results.get("spec_cid", result.spec_cid) == result.spec_cid
    assert result.spec.rule.name == "fedavg" and result.spec.private
    cli = deai_verify(str(run_dir))
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "all 2 rounds verified" in cli.stdout and result.spec_cid in cli.stdout
    assert str(run_dir / "store") in cli.stdout  # says which store it read


def copy_of(run_dir: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the output directory (its results.json may name the original's store)."""
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    return copy, json.loads((copy / "results.json").read_text())


def revealed(results: dict, round_id: int) -> dict:
    return next(e for e in results["events"] if e["event"] == "Revealed" and e["args"]["round"] == round_id)


def patch_record(reveal: dict, start: int, end: int, change) -> None:
    """Rewrite the big-endian integer at ``record[start:end]`` of an exported ``Revealed``
    event (protocol §2.3) with ``change(old value)``."""
    record = bytearray(bytes.fromhex(reveal["args"]["record"][2:]))
    value = change(int.from_bytes(record[start:end], "big"))
    record[start:end] = value.to_bytes(end - start, "big")
    reveal["args"]["record"] = "0x" + record.hex()


def test_a_changed_reveal_fails_its_commitment(run_dir: Path, tmp_path: Path) -> None:
    copy, results = copy_of(run_dir, tmp_path)
    patch_record(revealed(results, 2), 36, 44, lambda examples: examples + 1)
    (copy / "results.json").write_text(json.dumps(results))
    result = verify(copy)
    assert result[0].ok and not result[1].ok
    assert any("does not open its commitment" in p for p in result[1].problems)
    cli = deai_verify(str(copy))
    assert cli.returncode == 1 and "round(s) 2" in cli.stderr


def test_a_tampered_blob_in_a_copy_fails_while_the_original_verifies(run_dir: Path, tmp_path: Path) -> None:
    copy, results = copy_of(run_dir, tmp_path)
    record = parse_reveal_record(bytes.fromhex(revealed(results, 1)["args"]["record"][2:]))
    (blob,) = list((copy / "store").rglob(cid_from_bytes(record.cid)))
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    result = verify(copy)
    assert not result[0].ok
    assert any("chain finalized" in p for p in result[0].problems)
    # the attesters aggregated it; here it is tampered with, which is not "unavailable"
    assert any(f"found {record_author(results, 1)}'s update aggregated, the verifier finds it invalid" in p
               for p in result[0].problems), result[0].problems  # fmt: skip
    cli = deai_verify(str(copy))
    assert cli.returncode == 1 and "round(s) 1" in cli.stderr, cli.stdout + cli.stderr
    assert str(copy / "store") in cli.stdout
    assert deai_verify(str(run_dir)).returncode == 0


def record_author(results: dict, round_id: int) -> str:  # type: ignore[type-arg]
    return revealed(results, round_id)["args"]["participant"]


def test_a_blob_missing_from_a_copy_is_reported_unavailable_not_tampered(run_dir: Path, tmp_path: Path) -> None:
    copy, results = copy_of(run_dir, tmp_path)
    record = parse_reveal_record(bytes.fromhex(revealed(results, 1)["args"]["record"][2:]))
    (blob,) = list((copy / "store").rglob(cid_from_bytes(record.cid)))
    blob.unlink()
    problems = verify(copy)[0].problems
    assert any(f"{record_author(results, 1)}'s blob, which the attesters found aggregated, is unavailable to the "
               "verifier" in p for p in problems), problems  # fmt: skip
    assert not any("finds it invalid" in p for p in problems)


def test_a_forged_revealed_epsilon_is_caught(run_dir: Path, tmp_path: Path) -> None:
    copy, results = copy_of(run_dir, tmp_path)
    patch_record(revealed(results, 1), 96, 112, lambda epsilon_wad: epsilon_wad // 2)
    (copy / "results.json").write_text(json.dumps(results))
    problems = verify(copy)[0].problems
    assert any("its revealed parameters give" in p for p in problems)


def test_an_edited_epsilon_in_results_fails(run_dir: Path, tmp_path: Path) -> None:
    copy, results = copy_of(run_dir, tmp_path)
    who, entry = sorted(results["privacy_ledger"].items())[0]
    row = next(r for r in entry["rounds"] if r["round"] == 2)
    row["epsilon"] = row["epsilon"] * 0.5
    (copy / "results.json").write_text(json.dumps(results))
    cli = deai_verify(str(copy))
    assert cli.returncode == 1 and "round(s) 2" in cli.stderr, cli.stdout + cli.stderr
    (line,) = [line for line in cli.stdout.splitlines() if line.startswith("round 2 ")]
    assert f"results.json reports ε={row['epsilon']!r} for {who} in round 2" in line
    assert "compared exactly, as WADs" in line
    assert deai_verify(str(run_dir)).returncode == 0


def test_a_flipped_byte_in_the_final_model_fails(run_dir: Path, tmp_path: Path) -> None:
    copy, results = copy_of(run_dir, tmp_path)
    final = [e for e in results["events"] if e["event"] == "RoundFinalized"][-1]
    round_id, cid = final["args"]["round"], cid_from_bytes(bytes.fromhex(final["args"]["resultCid"][2:]))
    (blob,) = list((copy / "store").rglob(cid))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    cli = deai_verify(str(copy))
    assert cli.returncode == 1 and f"round(s) {round_id}" in cli.stderr, cli.stdout + cli.stderr
    (line,) = [line for line in cli.stdout.splitlines() if line.startswith(f"round {round_id} ")]
    assert f"the stored result {cid} is invalid" in line and "tampered" in line, line


def test_an_edited_round_epsilon_in_results_fails(run_dir: Path, tmp_path: Path) -> None:
    copy, results = copy_of(run_dir, tmp_path)
    results["rounds"][0]["epsilon"] = results["rounds"][0]["epsilon"] * 0.5
    (copy / "results.json").write_text(json.dumps(results))
    problems = verify(copy)[0].problems
    assert any("results.json reports round 1's ε" in p for p in problems), problems


def rescore(outcome_hex: str, who: str, delta: int) -> str:
    entries = decode_outcome(bytes.fromhex(outcome_hex[2:]))
    scores = {e.participant: e.score + (delta if e.participant == who else 0) for e in entries
              if e.verdict == "aggregated"}  # fmt: skip
    refused = {e.participant: e.verdict for e in entries if e.verdict != "aggregated"}
    return "0x" + encode_outcome(scores, refused).hex()


def test_an_edited_score_fails_even_when_every_vote_agrees_with_it(run_dir: Path, tmp_path: Path) -> None:
    """Every attestation of round 1 is rewritten to score one participant higher: the votes
    still agree with each other, but the scores recomputed from the blobs do not."""
    copy, results = copy_of(run_dir, tmp_path)
    who = record_author(results, 1)
    for event in results["events"]:
        if event["event"] == "Attested" and event["args"]["round"] == 1:
            event["args"]["outcome"] = rescore(event["args"]["outcome"], who, +1)
    (copy / "results.json").write_text(json.dumps(results))
    problems = verify(copy)[0].problems
    assert any(p.startswith("shares scores differ") and who in p for p in problems), problems


def test_an_edited_payout_fails(run_dir: Path, tmp_path: Path) -> None:
    copy, results = copy_of(run_dir, tmp_path)
    who = record_author(results, 2)
    credit = next(e for e in results["events"] if e["event"] == "RewardCredited" and e["args"]["participant"] == who)
    credit["args"]["amount"] += 1  # one wei more in the event log
    (copy / "results.json").write_text(json.dumps(results))
    result = verify(copy)
    assert any(f"{who} was credited" in p for p in result.problems), result.problems
    copy2, results = copy_of(run_dir, tmp_path / "second")
    results["incentives"]["participants"][who]["payout"] += 1  # or one wei more in the report
    (copy2 / "results.json").write_text(json.dumps(results))
    result = verify(copy2)
    assert result.problems == [f"results.json's incentives differ from the chain's: participant {who}"]
    cli = deai_verify(str(copy2))
    assert cli.returncode == 1 and "incentives" in cli.stderr

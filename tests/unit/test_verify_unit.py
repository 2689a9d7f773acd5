"""``deai verify`` on runs played by hand on the embedded chain.

The runs here are built from the protocol alone (spec in the store, ``specHash`` on chain,
commit, reveal, attest with the spec's rule), so they exercise the verifier without the
experiment: the rule and DP settings must come from the spec the chain names, an output
directory is checked against its own store, and the ε values results.json reports are
checked against the chain's reveals.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import deploy_for_tests

from deai_flower.chain import DpParams, commitment_of, connect_embedded
from deai_flower.cli.deai import main as deai_main
from deai_flower.privacy import PrivacyLedger
from deai_flower.protocol.encoding import ACCOUNTANT_NAMES, from_wad, parse_reveal_record
from deai_flower.protocol.outcome import encode_outcome
from deai_flower.protocol.rules import RevealedUpdate, aggregate
from deai_flower.protocol.scores import alignment_scores
from deai_flower.protocol.spec import (
    DataSchema,
    ModelSpec,
    PrivacySpec,
    RoundsSpec,
    RuleSpec,
    RunSpec,
    TrainingSpec,
    spec_cid,
)
from deai_flower.storage import LocalStore, cid_from_bytes, cid_to_bytes, compute_cid, decode_arrays, encode_arrays
from deai_flower.verify import RunRecord, recorded_store, verify_run

SIGMA, RATE, STEPS, DELTA = 1.1, 0.1, 10, 1e-5
CLIENTS = 3
EXAMPLES = 80  # q = batch_size / EXAMPLES = RATE, STEPS = local_epochs * floor(1 / q)


def make_spec(rule: str = "krum", params: dict[str, Any] | None = None, num_rounds: int = 2) -> RunSpec:
    return RunSpec(
        model=ModelSpec("deai_flower.models.mlp", {"hidden": [4]}),
        data=DataSchema(num_features=4, num_classes=2, input_shape=(4,)),
        rule=RuleSpec(rule, {"num_malicious_nodes": 0} if params is None else params),
        privacy=PrivacySpec(epsilon=8.0, delta=DELTA, max_grad_norm=1.0, accountant="rdp"),
        training=TrainingSpec(local_epochs=1, batch_size=8, learning_rate=0.1),
        rounds=RoundsSpec(num_rounds=num_rounds, commit_s=100, reveal_s=100, attest_s=100, sample_fraction=1.0,
                          quorum=2, min_reveals=3, committee_size=3),  # fmt: skip
        max_blob_bytes=1 << 20,
    )


@dataclass
class PlayedRun:
    out: Path
    spec: RunSpec
    results: dict[str, Any]

    def write(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.results), encoding="utf-8")


def play_run(out: Path, *, spec: RunSpec | None = None, **param_overrides: Any) -> PlayedRun:
    """A whole run, every client honest, written as an output directory (results.json + store/)."""
    spec = spec or make_spec()
    deployment = deploy_for_tests(connect_embedded())
    node, admin = deployment.node, deployment.admin
    store = LocalStore(out / "store")
    assert store.put(spec.to_bytes()) == spec_cid(spec.digest())
    model = {"b": np.zeros(2, np.float32), "w": np.zeros((2, 4), np.float32)}
    params = spec.run_params(initial_model_cid=cid_to_bytes(store.put(encode_arrays(model))), code_hash=b"\x02" * 32)
    run_id = deployment.create_run(**{**params, **param_overrides})
    round_id, _ = admin.open_round(run_id)
    rng = np.random.default_rng(7)
    histories: list[list[tuple[float, float, int]]] = [[] for _ in range(CLIENTS)]
    for _ in range(spec.rounds.num_rounds):
        revealed = []
        for i in range(CLIENTS):
            client = deployment.as_client(i)
            update = {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in model.items()}
            blob = encode_arrays(update)
            cid = cid_to_bytes(compute_cid(blob))
            histories[i].append((SIGMA, RATE, STEPS))
            epsilon = PrivacyLedger(history=list(histories[i])).epsilon(DELTA, "rdp")
            dp = DpParams.from_floats(noise_multiplier=SIGMA, sample_rate=RATE, steps=STEPS, delta=DELTA,
                                      epsilon=epsilon, accountant="rdp")  # fmt: skip
            salt = bytes([round_id, i + 1]) * 16
            client.commit(run_id, round_id, commitment_of(
                chain_id=node.chain_id, contract=admin.address, run_id=run_id, round_id=round_id,
                participant=client.account.address, cid=cid, num_examples=EXAMPLES, dp=dp, salt=salt))  # fmt: skip
            store.put(blob)
            revealed.append((client, cid, EXAMPLES, dp, salt, update))
        for client, cid, examples, dp, salt, _ in revealed:
            client.reveal(run_id, round_id, cid=cid, num_examples=examples, dp=dp, salt=salt)
        updates = [RevealedUpdate(c.account.address, n, u) for c, _, n, _, _, u in revealed]
        result = encode_arrays(aggregate(spec.rule.name, updates, spec.rule.params))
        result_cid = cid_to_bytes(store.put(result))
        outcome = encode_outcome(alignment_scores(updates, model), {})
        for client, *_ in revealed[: spec.rounds.quorum]:
            client.attest(run_id, round_id, result_cid, outcome)
        model = decode_arrays(result, max_bytes=spec.max_blob_bytes)
        round_id += 1  # full sampling: the finalizing attestation opened the next round
    events = admin.event_log()
    played = PlayedRun(out=out, spec=spec, results={
        "contract_address": admin.address,
        "run_id": run_id,
        "chain": {"kind": "embedded", "chain_id": node.chain_id},
        "store": {"kind": "local", "root": "store"},
        "spec_cid": spec_cid(spec.digest()),
        "events": events,
        "rounds": _reported_rounds(events),
        "privacy_ledger": _reported_ledger(events),
    })  # fmt: skip
    played.write()
    return played


def _reveals(events: list[dict[str, Any]]) -> list[tuple[str, int, DpParams]]:
    return [(e["args"]["participant"], int(e["args"]["round"]), parse_reveal_record(bytes.fromhex(
        e["args"]["record"][2:])).dp) for e in events if e["event"] == "Revealed"]  # fmt: skip


def _reported_rounds(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """results.json's rounds as the coordinator reports them: each round's highest ε."""
    highest: dict[int, float] = {}
    for _, round_id, dp in _reveals(events):
        highest[round_id] = max(highest.get(round_id, 0.0), dp.epsilon)
    return [{"round": r, "chain_round": r, "status": "finalized", "epsilon": eps} for r, eps in sorted(highest.items())]


def _reported_ledger(events: list[dict[str, Any]]) -> dict[str, Any]:
    ledger: dict[str, Any] = {}
    for who, round_id, dp in _reveals(events):
        ledger.setdefault(who, {"client": None, "rounds": []})["rounds"].append({
            "round": round_id, "noise_multiplier": from_wad(dp.noise_multiplier_wad),
            "sample_rate": from_wad(dp.sample_rate_wad), "steps": dp.steps, "delta": from_wad(dp.delta_wad),
            "accountant": ACCOUNTANT_NAMES[dp.accountant], "epsilon": dp.epsilon})  # fmt: skip
    return ledger


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> PlayedRun:
    return play_run(tmp_path_factory.mktemp("played"))


def copy_of(run: PlayedRun, tmp_path: Path) -> PlayedRun:
    target = tmp_path / "copy"
    shutil.copytree(run.out, target)
    return PlayedRun(out=target, spec=run.spec, results=json.loads((target / "results.json").read_text()))


def deai_verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        deai_main(["verify", *args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def test_the_rule_comes_from_the_spec_the_chain_names(played: PlayedRun, capsys: pytest.CaptureFixture[str]) -> None:
    record = RunRecord.from_output_dir(played.out)
    result = verify_run(record, LocalStore(played.out / "store"))
    assert result.ok, (result.problems, [v.problems for v in result])
    assert result.spec == played.spec and result.spec_cid == played.results["spec_cid"]
    assert [v.round for v in result] == [1, 2]
    assert all("krum aggregate equals the finalized CID" in v.checks for v in result)
    assert all("results.json's ε" in v.checks for v in result)
    code, out, err = deai_verify(capsys, str(played.out))
    assert code == 0, out + err
    assert played.results["spec_cid"] in out and "krum" in out
    assert "all 2 rounds verified (2 finalized)" in out
    assert sum(line.startswith("round ") for line in out.splitlines()) == 2


def test_a_copy_is_checked_against_its_own_store(played: PlayedRun, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    copy = copy_of(played, tmp_path)
    # results.json as older releases wrote it: the original's absolute store path
    copy.results["store"] = {"kind": "local", "location": str(played.out / "store")}
    copy.write()
    reveal = next(e for e in copy.results["events"] if e["event"] == "Revealed" and e["args"]["round"] == 1)
    (blob,) = (copy.out / "store").rglob(_cid_of_reveal(reveal))
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    code, out, err = deai_verify(capsys, str(copy.out))
    assert code == 1, out + err
    assert str(copy.out / "store") in out and "round(s) 1" in err
    code, out, _ = deai_verify(capsys, str(played.out))
    assert code == 0 and "all 2 rounds verified" in out


def _cid_of_reveal(reveal: dict[str, Any]) -> str:
    return cid_from_bytes(parse_reveal_record(bytes.fromhex(reveal["args"]["record"][2:])).cid)


@pytest.mark.parametrize("where", ["ledger", "round"])
def test_an_edited_epsilon_in_results_fails(played: PlayedRun, tmp_path: Path, where: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    copy = copy_of(played, tmp_path)
    who, entry = next(iter(copy.results["privacy_ledger"].items()))
    if where == "ledger":
        entry["rounds"][1]["epsilon"] *= 0.9
    else:
        copy.results["rounds"][1]["epsilon"] *= 0.9
    copy.write()
    code, out, err = deai_verify(capsys, str(copy.out))
    assert code == 1 and "round(s) 2" in err
    (line,) = [line for line in out.splitlines() if line.startswith("round 2 ")]
    assert "results.json reports" in line and "differs from" in line
    if where == "ledger":
        assert who in line and "in round 2" in line


@pytest.mark.parametrize("where", ["ledger", "round"])
def test_a_reported_epsilon_one_billionth_off_fails(played: PlayedRun, tmp_path: Path, where: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """results.json restates the chain's ε (protocol §6, step 5): equal, not close."""
    copy = copy_of(played, tmp_path)
    who, entry = next(iter(copy.results["privacy_ledger"].items()))
    row = entry["rounds"][0] if where == "ledger" else copy.results["rounds"][0]
    row["epsilon"] += 1e-9
    copy.write()
    code, out, err = deai_verify(capsys, str(copy.out))
    assert code == 1 and "round(s) 1" in err, out + err
    (line,) = [line for line in out.splitlines() if line.startswith("round 1 ")]
    assert f"ε={row['epsilon']!r}" in line and "differs from" in line, line
    if where == "ledger":
        assert who in line


def test_a_flipped_byte_in_the_final_model_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No later round reads the last round's result: the verifier must re-read it itself.
    (Averaged, so that the result is no participant's own blob, which reveals would check.)"""
    copy = play_run(tmp_path, spec=make_spec("fedavg", {}))
    (final,) = [e for e in copy.results["events"] if e["event"] == "RoundFinalized" and e["args"]["round"] == 2]
    cid = cid_from_bytes(bytes.fromhex(final["args"]["resultCid"][2:]))
    (blob,) = (copy.out / "store").rglob(cid)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    code, out, err = deai_verify(capsys, str(copy.out))
    assert code == 1, out + err
    assert err.splitlines()[-1] == "verification failed for round(s) 2", err
    (line,) = [line for line in out.splitlines() if line.startswith("round 2 ")]
    assert f"the stored result {cid} is invalid" in line and "tampered" in line, line


def test_a_ledger_round_without_a_reveal_fails(played: PlayedRun, tmp_path: Path) -> None:
    copy = copy_of(played, tmp_path)
    entry = next(iter(copy.results["privacy_ledger"].values()))
    entry["rounds"].append({**entry["rounds"][-1], "round": 9})
    copy.write()
    result = verify_run(RunRecord.from_output_dir(copy.out), LocalStore(copy.out / "store"))
    assert not result.ok and any("never opened" in p for p in result.problems)


def test_the_old_field_name_config_hash_is_read(played: PlayedRun) -> None:
    events = json.loads(json.dumps(played.results["events"]))
    (created,) = [e for e in events if e["event"] == "RunCreated"]
    created["args"]["params"]["configHash"] = created["args"]["params"].pop("specHash")
    record = RunRecord(events=events, chain_id=played.results["chain"]["chain_id"],
                       contract=played.results["contract_address"], run_id=played.results["run_id"])  # fmt: skip
    assert verify_run(record, LocalStore(played.out / "store")).ok


def test_a_store_without_the_spec_is_one_error_line(played: PlayedRun, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    copy = copy_of(played, tmp_path)
    (spec_file,) = (copy.out / "store").rglob(played.results["spec_cid"])
    spec_file.unlink()
    code, out, err = deai_verify(capsys, str(copy.out))
    assert code == 2 and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("error:") and played.results["spec_cid"] in line


def test_chain_parameters_that_differ_from_the_spec_fail(tmp_path: Path) -> None:
    run = play_run(tmp_path, spec=make_spec(num_rounds=1), commitDuration=200)
    result = verify_run(RunRecord.from_output_dir(run.out), LocalStore(run.out / "store"))
    assert not result.ok
    assert any("commitDuration 200, the spec gives 100" in p and "differ from the spec" in p for p in result.problems)


def test_old_rule_flags_are_refused(played: PlayedRun, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = deai_verify(capsys, str(played.out), "--rule", "fedavg")
    assert code == 2 and "unrecognized arguments: --rule fedavg" in err


@pytest.mark.parametrize("content", [None, "{not json", '{"events": []}'])
def test_unreadable_results_are_one_error_line(tmp_path: Path, content: str | None,
                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    if content is not None:
        (tmp_path / "results.json").write_text(content)
    code, out, err = deai_verify(capsys, str(tmp_path))
    assert code == 2 and "Traceback" not in out + err
    (line,) = err.splitlines()
    assert line.startswith("error:") and "results.json" in line


def test_recorded_store_is_the_one_inside_the_output_directory(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "store").mkdir(parents=True)
    elsewhere.mkdir()
    assert recorded_store(out, {"kind": "local", "root": "store"}).location == str(out / "store")
    assert recorded_store(out, {"kind": "local", "location": str(out / "store")}).location == str(out / "store")
    moved = recorded_store(out, {"kind": "local", "location": str(elsewhere)})
    assert moved.location == str(out / "store") and str(elsewhere) in moved.reason
    (out / "store").rmdir()
    assert recorded_store(out, {"kind": "local", "location": str(elsewhere)}).location == str(elsewhere)
    ipfs = recorded_store(out, {"kind": "ipfs", "location": "/ip4/127.0.0.1/tcp/5001"})
    assert (ipfs.kind, ipfs.location) == ("ipfs", "/ip4/127.0.0.1/tcp/5001")

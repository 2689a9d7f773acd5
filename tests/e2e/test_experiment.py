"""A whole experiment on the embedded defaults, checked by an independent recomputation.

The verifier below uses only the published protocol: hashlib for the CID of a
single-chunk raw blob, eth_abi/keccak for commitments, the safetensors library for
decoding, numpy for the weighted mean; those checks call no strategy or store code.
A separate test also runs the project's own verifier (`deai verify`) on the run.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eth_abi import encode
from eth_utils import keccak, to_canonical_address
from safetensors.numpy import load as load_safetensors

from support import SMALL_RUN, SmallRun, compose_with

from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow


@pytest.fixture
def finished_run(small_run: SmallRun) -> tuple[Path, dict[str, Any]]:
    """The session's small run (tests/e2e/conftest.py): read, never changed."""
    return small_run.out, small_run.results


def record_fields(reveal: dict[str, Any]) -> tuple[str, int]:
    """The CID (hex) and example count packed in a ``Revealed`` record (protocol §2.3)."""
    record = bytes.fromhex(reveal["record"][2:])
    assert len(record) == 145
    return "0x" + record[:36].hex(), int.from_bytes(record[36:44], "big")


def cid_string(raw_hex: str) -> str:
    return "b" + base64.b32encode(bytes.fromhex(raw_hex[2:])).decode().lower().rstrip("=")


def read_blob(store: Path, cid_hex: str) -> bytes:
    raw = bytes.fromhex(cid_hex[2:])
    assert raw[:4] == bytes([0x01, 0x55, 0x12, 0x20]), "expected a single-chunk raw-leaf CID"
    (path,) = list(store.rglob(cid_string(cid_hex)))
    blob = path.read_bytes()
    assert hashlib.sha256(blob).digest() == raw[4:], f"blob {path.name} does not match its CID"
    return blob


def test_results_have_the_documented_fields(finished_run: tuple[Path, dict[str, Any]]) -> None:
    _, results = finished_run
    for key in ("rounds", "contract_address", "chain", "store", "global_model_cids", "events"):
        assert key in results
    assert results["chain"]["kind"] == "embedded" and results["store"]["kind"] == "local"
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for r in results["rounds"]:
        assert r["status"] == "finalized"
        assert r["errors"] == {}, r["errors"]  # a clean run: no node failed, late attesters included
        assert set(r) >= {"round", "accuracy", "loss", "epsilon", "gas_used", "seconds"}
        assert 0 < r["epsilon"] <= 8.0 and r["gas_used"] > 0
    assert results["rounds"][-1]["accuracy"] > 0.3  # chance is 0.1
    assert len(results["global_model_cids"]) == 3


def test_aggregate_recomputed_independently_equals_the_finalized_model(
    finished_run: tuple[Path, dict[str, Any]],
) -> None:
    out, results = finished_run
    store = Path(results["store"]["location"])
    events = results["events"]
    finalized = [e for e in events if e["event"] == "RoundFinalized"]
    assert len(finalized) == 2
    for fin in finalized:
        round_id = fin["args"]["round"]
        reveals = [e["args"] for e in events if e["event"] == "Revealed" and e["args"]["round"] == round_id]
        assert len(reveals) == 3
        reveals.sort(key=lambda a: int(a["participant"], 16))  # canonical order: by address
        arrays = [load_safetensors(read_blob(store, record_fields(a)[0])) for a in reveals]
        weights = [record_fields(a)[1] for a in reveals]
        total = sum(weights)
        expected = {
            name: sum(arr[name].astype(np.float64) * (w / total) for arr, w in zip(arrays, weights)).astype(np.float32)
            for name in arrays[0]
        }
        final = load_safetensors(read_blob(store, fin["args"]["resultCid"]))
        assert final.keys() == expected.keys()
        for name in final:
            np.testing.assert_array_equal(final[name], expected[name])


def test_every_reveal_opens_its_commitment(finished_run: tuple[Path, dict[str, Any]]) -> None:
    _, results = finished_run
    events = results["events"]
    commitments = {(e["args"]["round"], e["args"]["participant"]): e["args"]["commitment"]
                   for e in events if e["event"] == "Committed"}  # fmt: skip
    reveals = [e["args"] for e in events if e["event"] == "Revealed"]
    assert reveals and len(reveals) == len(commitments)
    for a in reveals:
        preimage = encode(
            ["uint256", "address", "uint256", "uint32", "address", "bytes"],
            [results["chain"]["chain_id"], to_canonical_address(results["contract_address"]), a["runId"], a["round"],
             to_canonical_address(a["participant"]), bytes.fromhex(a["record"][2:])],
        )  # fmt: skip
        assert "0x" + keccak(preimage).hex() == commitments[(a["round"], a["participant"])]


def test_deai_verify_accepts_the_run(finished_run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = finished_run
    assert all(v.ok for v in verify_run(RunRecord.from_output_dir(out), LocalStore(out / "store")))


def test_noise_is_secret_unless_reproducible_noise_is_asked_for(
    finished_run: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The same seed gives the same initial model and data, but not the same DP noise: a
    rerun's updates differ. Only privacy.reproducible_noise=true repeats a run exactly,
    and results.json says so."""
    _, first = finished_run
    again = run_experiment(compose_with(*SMALL_RUN), output_dir=tmp_path / "again")
    assert again["global_model_cids"][0] == first["global_model_cids"][0]
    assert again["global_model_cids"][1:] != first["global_model_cids"][1:]
    assert first["privacy"]["noise"] == "secret"
    seeded = [run_experiment(compose_with(*SMALL_RUN, "privacy.reproducible_noise=true"), output_dir=tmp_path / name)
              for name in ("a", "b")]  # fmt: skip
    assert seeded[0]["global_model_cids"] == seeded[1]["global_model_cids"]
    assert seeded[0]["privacy"]["noise"].startswith("reproducible")

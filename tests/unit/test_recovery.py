"""Rebuilding a lost finalized result: only the bytes of the finalized CID are ever used.

The chain is a stand-in holding one finalized round's events (``RoundFinalized``, the
``Attested`` votes, the ``Revealed`` records) as the contract handle returns them; the
store is a real local store.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eth_utils import to_checksum_address

from deai_flower.errors import ResultUnrecoverableError, StoreError
from deai_flower.protocol.outcome import encode_outcome, result_blob
from deai_flower.protocol.rules import RevealedUpdate
from deai_flower.protocol.spec import RuleSpec
from deai_flower.recovery import fetch_result, rebuild_result
from deai_flower.storage import LocalStore, array_spec, cid_to_bytes, compute_cid, encode_arrays
from unit.participant._support import small_spec

SPEC = small_spec()
A, B, C = (to_checksum_address(f"0x{k * 20}") for k in ("11", "22", "33"))


def _update(who: str, seed: int, examples: int) -> RevealedUpdate:
    rng = np.random.default_rng(seed)
    return RevealedUpdate(who, examples, {"b": rng.normal(size=3).astype(np.float32),
                                          "w": rng.normal(size=(3, 4)).astype(np.float32)})  # fmt: skip


UPDATES = [_update(A, 1, 40), _update(B, 2, 60), _update(C, 3, 50)]
EXPECTED = array_spec(UPDATES[0].arrays)


class FinalizedRound:
    """The chain reads :func:`rebuild_result` makes, for round 3 of run 1: A and B were
    aggregated, C's update was refused as invalid."""

    def __init__(self, store: LocalStore, result_cid: str) -> None:
        self.result_cid = result_cid
        outcome = encode_outcome({A: 10, B: 20}, {C: "invalid"})
        self.votes = [{"attester": A, "resultCid": b"\x01\x55\x12\x20" + b"\x77" * 32, "outcome": outcome},
                      {"attester": B, "resultCid": cid_to_bytes(result_cid), "outcome": outcome},
                      {"attester": C, "resultCid": cid_to_bytes(result_cid), "outcome": outcome}]  # fmt: skip
        self.reveals = [{"participant": u.participant, "cid": cid_to_bytes(store.put(encode_arrays(u.arrays))),
                         "numExamples": u.num_examples} for u in UPDATES]  # fmt: skip

    def finalized_rounds(self, run_id: int) -> list[dict[str, Any]]:
        return [{"round": 3, "resultCid": cid_to_bytes(self.result_cid)}] if run_id == 1 else []

    def attestations(self, run_id: int, round_id: int) -> list[dict[str, Any]]:
        return list(self.votes) if (run_id, round_id) == (1, 3) else []

    def final_reveals(self, run_id: int, round_id: int) -> list[dict[str, Any]]:
        return list(self.reveals) if (run_id, round_id) == (1, 3) else []


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def _blob_path(store: LocalStore, cid: str) -> Path:
    (path,) = Path(store.describe()["location"]).glob(f"*/{cid}")
    return path


def test_a_lost_result_is_rebuilt_from_the_aggregated_reveals_and_stored_again(store: LocalStore) -> None:
    blob = result_blob(SPEC, UPDATES[:2])  # C was refused: not in the result
    chain = FinalizedRound(store, compute_cid(blob))
    arrays, rebuilt = fetch_result(chain, 1, chain.result_cid, spec=SPEC, store=store, expected=EXPECTED)

    assert rebuilt is not None and rebuilt.round == 3 and rebuilt.aggregated == (A, B) and rebuilt.stored == ""
    assert "is not in the store" in rebuilt.lost and chain.result_cid in rebuilt.describe()
    assert encode_arrays(arrays) == blob and store.get(chain.result_cid) == blob
    # once stored again, it is read as usual
    assert fetch_result(chain, 1, chain.result_cid, spec=SPEC, store=store, expected=EXPECTED)[1] is None


def test_a_tampered_copy_is_never_used_and_the_result_is_rebuilt(store: LocalStore) -> None:
    blob = result_blob(SPEC, UPDATES[:2])
    chain = FinalizedRound(store, compute_cid(blob))
    store.put(blob)
    _blob_path(store, chain.result_cid).write_bytes(blob + b"\x00")  # no longer hashes to its CID

    arrays, rebuilt = fetch_result(chain, 1, chain.result_cid, spec=SPEC, store=store, expected=EXPECTED)

    assert rebuilt is not None and "tampered" in rebuilt.lost
    assert encode_arrays(arrays) == blob and store.get(chain.result_cid) == blob  # the damaged copy replaced


def test_a_rebuilt_result_whose_cid_differs_is_refused(store: LocalStore) -> None:
    finalized = compute_cid(result_blob(SPEC, UPDATES))  # what a forged outcome could not reproduce
    chain = FinalizedRound(store, finalized)
    with pytest.raises(ResultUnrecoverableError) as refused:
        rebuild_result(chain, 1, finalized, spec=SPEC, store=store, expected=EXPECTED)
    reason = str(refused.value)
    assert finalized in reason and compute_cid(result_blob(SPEC, UPDATES[:2])) in reason and "refused" in reason
    assert not store.has(finalized)  # nothing stored under the finalized CID
    # the rule is the spec's: another rule's bytes do not pass for the finalized result either
    blob = result_blob(SPEC, UPDATES[:2])
    median = dataclasses.replace(SPEC, rule=RuleSpec("fedmedian", {}))
    with pytest.raises(ResultUnrecoverableError, match="fedmedian of its 2 aggregated updates is"):
        rebuild_result(FinalizedRound(store, compute_cid(blob)), 1, compute_cid(blob), spec=median, store=store,
                       expected=EXPECTED)  # fmt: skip


def test_a_missing_aggregated_update_is_named(store: LocalStore) -> None:
    chain = FinalizedRound(store, compute_cid(result_blob(SPEC, UPDATES[:2])))
    lost = compute_cid(encode_arrays(UPDATES[1].arrays))
    _blob_path(store, lost).unlink()
    with pytest.raises(ResultUnrecoverableError) as unrecoverable:
        fetch_result(chain, 1, chain.result_cid, spec=SPEC, store=store, expected=EXPECTED)
    reason = str(unrecoverable.value)
    assert chain.result_cid in reason and "round 3's result cannot be rebuilt" in reason
    assert f"{B}'s update {lost} is unavailable" in reason and A not in reason


def test_the_initial_model_cannot_be_rebuilt(store: LocalStore) -> None:
    chain = FinalizedRound(store, compute_cid(b"x"))
    initial = compute_cid(encode_arrays(UPDATES[0].arrays) + b"initial")
    with pytest.raises(ResultUnrecoverableError, match="no round of run 1 finalized it"):
        fetch_result(chain, 1, initial, spec=SPEC, store=store, expected=EXPECTED)


def test_a_copy_over_the_size_limit_is_not_rebuilt(store: LocalStore, tmp_path: Path) -> None:
    blob = result_blob(SPEC, UPDATES[:2])
    chain = FinalizedRound(store, compute_cid(blob))
    store.put(blob)
    small = LocalStore(tmp_path / "store", max_bytes=len(blob) - 1)
    with pytest.raises(StoreError) as refused:  # present and whole: rebuilding would give the same bytes
        fetch_result(chain, 1, chain.result_cid, spec=dataclasses.replace(SPEC, max_blob_bytes=len(blob) - 1),
                     store=small, expected=EXPECTED)  # fmt: skip
    assert not isinstance(refused.value, ResultUnrecoverableError)
    assert store.get(chain.result_cid) == blob  # untouched

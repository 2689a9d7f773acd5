"""A participant that reveals a bad blob is excluded; the round finalizes without it.

Client 0 is made to misbehave in one of two ways. Either it *commits* to a bad blob
(NaN, wrong shape, truncated, oversized, pickle): the blob is written in place of its
honest update before the CID is computed, so commitment, CID and reveal all match and
the chain accepts the reveal; only the attesters' validation can refuse it. Or its
honest blob is *altered in the store* after the reveal (one flipped byte), so the bytes
no longer hash to the revealed CID. Either way every attester must exclude exactly that
participant, the round must finalize with the other two, the reason must reach
``results.json``, and the finalized model must be the FedAvg of the other two updates,
recomputed here with numpy alone.
"""

from __future__ import annotations

import threading
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as raw_safetensors

from deai_flower.apps import client_app
from deai_flower.chain import simulation_key
from deai_flower.participant import handlers
from deai_flower.config import register_configs
from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore, cid_from_bytes, compute_cid, encode_arrays

pytestmark = pytest.mark.slow

BAD_CLIENT = 0
LIMIT = 200_000  # storage.max_blob_bytes for these runs; the model's blob is about 18 kB
RUN = ["num_clients=3", "num_rounds=1", "progress=false", "training.local_epochs=1", f"storage.max_blob_bytes={LIMIT}"]


def _nan(arrays: dict[str, np.ndarray]) -> bytes:
    arrays = {k: v.copy() for k, v in arrays.items()}
    next(iter(arrays.values())).flat[0] = np.nan
    return raw_safetensors(arrays)  # encode_arrays refuses NaN: write it by hand


def _wrong_shape(arrays: dict[str, np.ndarray]) -> bytes:
    name = next(iter(arrays))
    return encode_arrays({**arrays, name: arrays[name][..., :-1].copy()})


def _truncated(arrays: dict[str, np.ndarray]) -> bytes:
    return encode_arrays(arrays)[:-7]


def _oversized(arrays: dict[str, np.ndarray]) -> bytes:
    return encode_arrays({**arrays, "padding": np.zeros(LIMIT // 8, dtype=np.float64)})


def _pickled(arrays: dict[str, np.ndarray]) -> bytes:
    return pickle.dumps({k: v.tolist() for k, v in arrays.items()})


COMMITTED_BAD = {
    "nan": (_nan, "contains NaN values"),
    "wrong-shape": (_wrong_shape, "has shape"),
    "truncated": (_truncated, "but the payload has"),
    "oversized": (_oversized, f"over the limit of {LIMIT}; not read"),  # the store refuses it unread
    "pickle": (_pickled, "not a safetensors blob"),
}


def _commit_bad_blob(monkeypatch: pytest.MonkeyPatch, make_bad: Callable[[dict[str, np.ndarray]], bytes]) -> Any:
    """The ClientApp, except that client 0's next update blob is ``make_bad(update)``,
    written before its CID is computed and committed."""
    honest_encode = handlers.encode_arrays
    committing = threading.local()  # nodes run at once, each call on its own thread

    def app(message: Any, context: Any) -> Any:
        committing.bad = (message.metadata.message_type == "train.commit"
                          and int(context.node_config["partition-id"]) == BAD_CLIENT)  # fmt: skip
        try:
            return client_app(message, context)
        finally:
            committing.bad = False

    def encode(arrays: dict[str, np.ndarray]) -> bytes:
        if getattr(committing, "bad", False):
            committing.bad = False
            return make_bad(arrays)
        return honest_encode(arrays)

    monkeypatch.setattr(handlers, "encode_arrays", encode)
    return app


def _flip_a_byte_after_reveal(out: Path) -> Any:
    """The ClientApp, except that client 0 reveals its honest blob, then one byte of the
    stored file flips."""

    def app(message: Any, context: Any) -> Any:
        pending = context.state.get("pending-reveal")
        reply = client_app(message, context)
        if message.metadata.message_type == "train.reveal" and int(context.node_config["partition-id"]) == BAD_CLIENT:
            (path,) = (out / "store").rglob(str(pending["cid"]))
            blob = bytearray(path.read_bytes())
            blob[len(blob) // 2] ^= 0x01
            path.write_bytes(bytes(blob))
        return reply

    return app


def _run(out: Path, app: Any) -> dict[str, Any]:
    register_configs()
    with initialize_config_module(config_module="deai_flower.conf", version_base=None):
        cfg = compose(config_name="config", overrides=RUN)
    return run_experiment(cfg, output_dir=out, client_app=app)


def _fedavg(blobs: list[bytes], weights: list[int]) -> dict[str, np.ndarray]:
    """docs/protocol.md §4: float64 accumulation in canonical order, then float32."""
    arrays = [load_safetensors(b) for b in blobs]
    total = sum(weights)
    return {
        name: sum(a[name].astype(np.float64) * (w / total) for a, w in zip(arrays, weights)).astype(np.float32)
        for name in arrays[0]
    }


@pytest.mark.parametrize("case", [*COMMITTED_BAD, "flipped-byte"])
def test_a_bad_reveal_excludes_only_its_participant(case: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if case == "flipped-byte":
        app = _flip_a_byte_after_reveal(tmp_path)
        reason = "is corrupted or tampered with"
    else:
        make_bad, reason = COMMITTED_BAD[case]
        app = _commit_bad_blob(monkeypatch, make_bad)
    results = _run(tmp_path, app)

    bad = simulation_key(seed=0, role=f"client-{BAD_CLIENT}").address
    (round_1,) = results["rounds"]
    assert round_1["status"] == "finalized", round_1["reason"]
    assert bad in round_1["revealed"] and len(round_1["revealed"]) == 3  # the chain accepted the reveal
    assert list(round_1["excluded"]) == [bad]
    assert reason in round_1["excluded"][bad]

    events = results["events"]
    reveals = sorted((e["args"] for e in events if e["event"] == "Revealed"), key=lambda a: int(a["participant"], 16))
    good = [a for a in reveals if a["participant"] != bad]
    assert len(good) == 2
    store = LocalStore(tmp_path / results["store"]["root"])
    blobs = [store.get(cid_from_bytes(bytes.fromhex(a["cid"][2:]))) for a in good]
    expected = _fedavg(blobs, [a["numExamples"] for a in good])

    (finalized,) = [e["args"] for e in events if e["event"] == "RoundFinalized"]
    final_cid = cid_from_bytes(bytes.fromhex(finalized["resultCid"][2:]))
    assert final_cid == round_1["result_cid"]
    final = load_safetensors(store.get(final_cid))
    assert final.keys() == expected.keys()
    for name in final:
        np.testing.assert_array_equal(final[name], expected[name])
    assert compute_cid(encode_arrays(expected)) == final_cid

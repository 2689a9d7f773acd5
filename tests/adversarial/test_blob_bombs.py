"""Attack: reveal a blob built to make every attester's check expensive.

A revealed blob may be as large as the spec's ``max_blob_bytes`` (64 MiB by default),
and all of it may be header: a few million tensor names, or one expected tensor with a
shape of millions of dims. Before the header was bounded, each attester parsed all of
it (16.6 s instead of 0.6 s for the attest phase with 16 MiB, 18-40 s and about 1 GiB
with 64 MiB) and then quoted it in its refusal, which went to the log and to
``results.json``. Now the attester path (``LocalStore.get`` then ``decode_arrays`` against
the run's array spec) refuses such a blob from its length prefix, with a short reason.
The time and memory this takes are measured by ``bench/bench_blob_bombs.py``; here only
the refusal and its length are asserted.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deai_flower.errors import BlobFormatError, BlobNotFoundError, StoreError
from deai_flower.protocol.blob import ArraySpec, array_spec, decode_arrays, encode_arrays
from deai_flower.storage import LocalStore

MAX_BLOB_BYTES = 64 * 1024 * 1024  # the default storage.max_blob_bytes
MiB = 1024 * 1024


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "net.0.weight": rng.standard_normal((64, 784)).astype(np.float32),
        "net.0.bias": rng.standard_normal(64).astype(np.float32),
        "net.2.weight": rng.standard_normal((10, 64)).astype(np.float32),
        "net.2.bias": rng.standard_normal(10).astype(np.float32),
    }


SPEC = array_spec(_model())


def _framed(header: bytes, payload: bytes, total: int) -> bytes:
    """A safetensors blob of exactly ``total`` bytes: ``header`` padded with JSON spaces."""
    header_len = total - 8 - len(payload)
    assert header_len >= len(header), "the bomb does not fit"
    return struct.pack("<Q", header_len) + header + b" " * (header_len - len(header)) + payload


def names_bomb(total: int) -> bytes:
    """As many zero-size tensors, none of them expected, as ``total`` bytes hold."""
    entry = b'":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},'
    count = (total - 16) // (len(entry) + 9)
    body = b"".join(b'"t%07d' % i + entry for i in range(count))
    return _framed(b"{" + body[:-1] + b"}", b"", total)


def shape_bomb(total: int, spec: ArraySpec = SPEC) -> bytes:
    """The expected tensors, the first with a shape of as many 1s as ``total`` bytes hold."""
    victim = next(iter(spec))
    entries, payload_len = [], 0
    for name, (dtype, shape) in spec.items():
        size = np.dtype(dtype).itemsize * (1 if name == victim else int(np.prod(shape)))
        code = {"float32": "F32", "float64": "F64", "int64": "I64"}[dtype]
        dims = b"@" if name == victim else json.dumps(list(shape)).encode()
        entries.append(b'%s:{"dtype":"%s","shape":%s,"data_offsets":[%d,%d]}'
                       % (json.dumps(name).encode(), code.encode(), dims, payload_len, payload_len + size))  # fmt: skip
        payload_len += size
    skeleton = b"{" + b",".join(entries) + b"}"
    room = total - 8 - payload_len - len(skeleton) - 2
    ones = b"[" + b"1," * (room // 2 - 1) + b"1]"
    return _framed(skeleton.replace(b"@", ones, 1), b"\0" * payload_len, total)


def payload_bomb(total: int, spec: ArraySpec = SPEC) -> bytes:
    """A well-formed blob of the expected names whose first tensor's shape is wrong and
    holds nearly all of ``total`` bytes."""
    arrays = {name: np.zeros(shape, dtype=dtype) for name, (dtype, shape) in spec.items()}
    victim = next(iter(spec))
    rest = len(encode_arrays(arrays)) - arrays[victim].nbytes
    arrays[victim] = np.zeros((total - rest - 256) // 4, dtype=np.float32)
    return encode_arrays(arrays)


BOMBS = {
    "names-16MiB": lambda: names_bomb(16 * MiB),
    "shape-16MiB": lambda: shape_bomb(16 * MiB),
    "names-64MiB": lambda: names_bomb(MAX_BLOB_BYTES),
    "shape-64MiB": lambda: shape_bomb(MAX_BLOB_BYTES),
    "payload-64MiB-wrong-shape": lambda: payload_bomb(MAX_BLOB_BYTES),
}


def _as_an_attester(store: LocalStore, cid: str, expected: ArraySpec | None = SPEC) -> dict[str, np.ndarray]:
    """What ``participant.handlers.revealed_updates`` does with a revealed CID."""
    return decode_arrays(store.get(cid), max_bytes=MAX_BLOB_BYTES, expected=expected)


def test_the_bombs_are_what_they_claim() -> None:
    """Guards the cases below: each bomb fills the size it claims, within the limit, and
    is a header an unbounded decoder would parse in full (checked on the 16 MiB ones,
    which the 64 MiB ones only scale up: parsing those takes seconds)."""
    for name, make in BOMBS.items():
        blob = make()
        (header_len,) = struct.unpack_from("<Q", blob)
        size = 16 * MiB if "16MiB" in name else MAX_BLOB_BYTES
        assert len(blob) == size if not name.startswith("payload") else size - 512 < len(blob) <= size
        if name.startswith("payload"):
            assert header_len < 1024
        elif "16MiB" in name:
            header = json.loads(blob[8 : 8 + header_len])
            if name.startswith("names"):
                assert len(header) > 200_000 and not set(header) & set(SPEC)
            else:
                assert set(header) == set(SPEC) and len(header[next(iter(SPEC))]["shape"]) > 8_000_000


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_bomb_is_refused_with_a_short_reason(bomb: str, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", max_bytes=MAX_BLOB_BYTES)
    cid = store.put(BOMBS[bomb]())
    with pytest.raises(BlobFormatError) as caught:
        _as_an_attester(store, cid)
    reason = str(caught.value)
    assert len(reason) < 500, reason[:1000]
    if bomb.startswith("payload"):
        assert "tensor 'net.0.weight' has shape" in reason
    else:
        assert "header of" in reason and "exceeds the limit for the expected 4 tensors" in reason
    if not bomb.startswith("payload"):  # without a spec too (the initial model, the validation set)
        with pytest.raises(BlobFormatError, match="exceeds the limit") as caught:
            _as_an_attester(store, cid, expected=None)
        assert len(str(caught.value)) < 500


def test_a_blob_over_the_limit_is_refused_by_the_store_unread(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", max_bytes=MAX_BLOB_BYTES)
    cid = LocalStore(tmp_path / "store").put(names_bomb(MAX_BLOB_BYTES + 8))
    with pytest.raises(StoreError, match=f"over the limit of {MAX_BLOB_BYTES}") as caught:
        _as_an_attester(store, cid)
    assert not isinstance(caught.value, BlobNotFoundError)  # the verdict is "invalid", not "unavailable"


def test_the_honest_update_still_decodes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", max_bytes=MAX_BLOB_BYTES)
    arrays = _as_an_attester(store, store.put(encode_arrays(_model())))
    for name, array in _model().items():
        np.testing.assert_array_equal(arrays[name], array)


@pytest.mark.slow
def test_a_header_bomb_in_a_real_run_is_refused_as_invalid_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2-round experiment in which one participant reveals a 16 MiB shape bomb of the
    run's own tensors each round: every round finalizes with the others' updates, the
    bomb's author gets the verdict "invalid" and results.json stays small."""
    from flwr.app import Context, Message

    from deai_flower.apps import client_app
    from deai_flower.chain import simulation_key
    from deai_flower.participant import handlers
    from deai_flower.apps import participant_for
    from deai_flower.participant.run_view import run_view
    from deai_flower.experiment import run_experiment
    from support import compose_with

    attacker = 1
    attacker_data: list[Any] = []
    attacker_updates: list[Any] = []
    real_train_round, real_encode = handlers.train_round, handlers.encode_arrays

    def train_round(**kwargs: Any) -> Any:
        trained = real_train_round(**kwargs)
        if any(kwargs["x"] is x for x in attacker_data):
            attacker_updates.append(trained.arrays)
        return trained

    def encode_arrays_or_bomb(arrays: Any) -> bytes:
        if any(arrays is update for update in attacker_updates):
            return shape_bomb(16 * MiB, array_spec(arrays))
        return real_encode(arrays)

    monkeypatch.setattr(handlers, "train_round", train_round)
    monkeypatch.setattr(handlers, "encode_arrays", encode_arrays_or_bomb)

    def app(message: Message, context: Context) -> Message:
        if int(context.node_config["partition-id"]) == attacker and not attacker_data:
            config = message.content["config"]
            view = run_view(participant_for(message, context), str(config["contract"]), int(config["run-id"]))
            attacker_data.append(view.data.x)
        return client_app(message, context)

    cfg = compose_with("num_clients=4", "num_rounds=2", "progress=false", "training.local_epochs=1")
    results = run_experiment(cfg, output_dir=tmp_path, client_app=app)

    address = simulation_key(seed=0, role=f"client-{attacker}").address
    assert len(attacker_updates) == 2
    for r in results["rounds"]:
        assert r["status"] == "finalized", r.get("reason")
        assert address in r["revealed"] and len(r["revealed"]) == 4
    assert results["incentives"]["participants"][address]["refused"] == {"1": "invalid", "2": "invalid"}
    others = [p for a, p in results["incentives"]["participants"].items() if a != address]
    assert len(others) == 3 and all(not p["refused"] for p in others)
    assert (tmp_path / "results.json").stat().st_size < 2 * MiB

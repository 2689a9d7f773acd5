"""Every kind of bad update an attester can meet is refused, each with its own error.

An attester's path for a revealed CID is ``decode_arrays(store.get(cid), ...)``: the
store proves the bytes are the ones the CID names, the decoder proves they are a
canonical model blob of the run's shape. Bad bytes under their own, honest CID pass the
first check and must fail the second; good bytes altered after the CID was fixed fail
the first. Both stores are held to the same table.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save as raw_safetensors

from deai_flower.errors import BlobFormatError, TamperedBlobError
from deai_flower.storage import IpfsStore, LocalStore, array_spec, decode_arrays, encode_arrays

pytestmark = pytest.mark.filterwarnings("ignore:The 'strict' parameter:FutureWarning")

LIMIT = 64 * 1024


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "net.0.weight": rng.standard_normal((16, 8)).astype(np.float32),
        "net.0.bias": rng.standard_normal(16).astype(np.float32),
        "net.2.weight": rng.standard_normal((4, 16)).astype(np.float32),
    }


SPEC = array_spec(_model())


def _with_nan() -> bytes:
    arrays = _model()
    arrays["net.2.weight"][1, 3] = np.nan
    return raw_safetensors(arrays)  # encode_arrays refuses NaN, so write it by hand


def _wrong_shape() -> bytes:
    arrays = _model()
    arrays["net.0.weight"] = arrays["net.0.weight"][:, :7].copy()
    return encode_arrays(arrays)


def _oversized() -> bytes:
    return encode_arrays({**_model(), "padding": np.zeros(LIMIT // 8, dtype=np.float64)})


def _truncated() -> bytes:
    return encode_arrays(_model())[:-5]


def _pickled() -> bytes:
    return pickle.dumps({name: array.tolist() for name, array in _model().items()}, protocol=4)


def _header_flipped() -> bytes:
    blob = bytearray(encode_arrays(_model()))
    blob[8] ^= 0x01  # '{' becomes 'z': the header is no longer JSON
    return bytes(blob)


# bad bytes stored under their own CID: the store returns them, the decoder refuses them
FORMAT_CASES: list[tuple[str, Callable[[], bytes], str]] = [
    ("nan", _with_nan, "tensor 'net.2.weight' contains NaN values"),
    ("wrong-shape", _wrong_shape, r"tensor 'net.0.weight' has shape \(16, 7\), expected \(16, 8\)"),
    ("oversized", _oversized, f"exceeds the limit of {LIMIT}"),
    ("truncated", _truncated, "tensors cover .* bytes but the payload has"),
    ("pickle", _pickled, "not a safetensors blob"),
    ("header-byte-flipped", _header_flipped, "header is not valid JSON"),
]


def _stores(tmp_path: Path, fake_ipfs: Any) -> dict[str, Any]:
    return {"local": LocalStore(tmp_path / "blobs"), "ipfs": IpfsStore(fake_ipfs.api_addr, timeout=5, retries=0)}


def _fetch_update(store: Any, cid: str) -> dict[str, np.ndarray]:
    """What an attester does with a revealed CID."""
    return decode_arrays(store.get(cid), max_bytes=LIMIT, expected=SPEC)


@pytest.mark.parametrize("kind", ["local", "ipfs"])
@pytest.mark.parametrize(("make", "message"), [c[1:] for c in FORMAT_CASES], ids=[c[0] for c in FORMAT_CASES])
def test_bad_blob_under_its_own_cid_is_refused_by_the_decoder(
    kind: str, make: Callable[[], bytes], message: str, tmp_path: Path, fake_ipfs: Any
) -> None:
    store = _stores(tmp_path, fake_ipfs)[kind]
    cid = store.put(make())
    with pytest.raises(BlobFormatError, match=message):
        _fetch_update(store, cid)


@pytest.mark.parametrize("kind", ["local", "ipfs"])
def test_good_blob_round_trips(kind: str, tmp_path: Path, fake_ipfs: Any) -> None:
    store = _stores(tmp_path, fake_ipfs)[kind]
    arrays = _fetch_update(store, store.put(encode_arrays(_model())))
    for name, array in _model().items():
        np.testing.assert_array_equal(arrays[name], array)


def _local_file(store: LocalStore, cid: str) -> Path:
    (path,) = [p for p in Path(store.describe()["location"]).rglob(cid) if p.is_file()]
    return path


@pytest.mark.parametrize(
    "damage",
    [
        lambda blob: blob[:100] + bytes([blob[100] ^ 0x01]) + blob[101:],  # one bit in the payload
        lambda blob: blob[:-4],  # truncated after storing
        lambda blob: blob + struct.pack("<f", 1.0),  # grown after storing
    ],
    ids=["flipped-byte", "truncated", "appended"],
)
def test_blob_altered_in_the_local_store_is_refused(damage: Callable[[bytes], bytes], tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "blobs")
    cid = store.put(encode_arrays(_model()))
    path = _local_file(store, cid)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(TamperedBlobError, match=f"blob {cid} is corrupted or tampered with"):
        _fetch_update(store, cid)


def test_blob_altered_by_the_ipfs_node_is_refused(fake_ipfs: Any) -> None:
    store = IpfsStore(fake_ipfs.api_addr, timeout=5, retries=0)
    cid = store.put(encode_arrays(_model()))
    fake_ipfs.corrupt_cat = True  # a flipped payload byte still decodes: only the CID catches it
    with pytest.raises(TamperedBlobError, match=f"blob {cid} is corrupted or tampered with"):
        _fetch_update(store, cid)


"""Model blobs: canonical bytes out, and nothing off-format accepted in."""

from __future__ import annotations

import json
import pickle
import random
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import save as raw_safetensors

from deai_flower.errors import BlobFormatError
from deai_flower.protocol.blob import array_spec, decode_arrays, encode_arrays

LIMIT = 1 << 20


def _model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "fc1.weight": rng.standard_normal((32, 64)).astype(np.float32),
        "fc1.bias": np.zeros(32, dtype=np.float32),
        "scale": np.array(0.5),
        "steps": np.arange(3, dtype=np.int64),
    }


def _handmade(header: object, payload: bytes = b"") -> bytes:
    """A safetensors-style blob with an arbitrary header (object, JSON text or raw bytes)."""
    if isinstance(header, bytes):
        encoded = header
    else:
        encoded = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(encoded)) + encoded + payload


_names = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)
_arrays = st.sampled_from(["float32", "float64", "int64"]).flatmap(
    lambda dtype: hnp.arrays(
        dtype=dtype,
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        elements=hnp.from_dtype(np.dtype(dtype), allow_nan=False, allow_infinity=False)
        if dtype != "int64"
        else st.integers(-(2**63), 2**63 - 1),
    )
)


@settings(max_examples=60, deadline=None)
@given(
    arrays=st.dictionaries(_names.filter(lambda n: n != "__metadata__"), _arrays, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_encoding_is_canonical(arrays: dict[str, np.ndarray], seed: int) -> None:
    items = list(arrays.items())
    random.Random(seed).shuffle(items)
    blob = encode_arrays(arrays)
    assert encode_arrays(dict(items)) == blob
    decoded = decode_arrays(blob, max_bytes=LIMIT, expected=array_spec(arrays))
    assert encode_arrays(decoded) == blob
    for name, array in arrays.items():
        np.testing.assert_array_equal(decoded[name], array)


def test_round_trip_returns_writable_copies() -> None:
    model = _model()
    decoded = decode_arrays(encode_arrays(model), max_bytes=LIMIT, expected=array_spec(model))
    assert set(decoded) == set(model)
    for name, array in decoded.items():
        assert array.dtype == model[name].dtype and array.shape == model[name].shape
        np.testing.assert_array_equal(array, model[name])
        assert array.flags.writeable
    decoded["fc1.bias"][0] = 1.0  # must not raise


def test_byte_order_and_layout_do_not_change_the_bytes() -> None:
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    reference = encode_arrays({"w": base})
    assert encode_arrays({"w": base.astype(">f8")}) == reference
    assert encode_arrays({"w": np.asfortranarray(base)}) == reference
    assert encode_arrays({"w": base.T.copy().T}) == reference
    assert encode_arrays({"w": base.T}) == encode_arrays({"w": base.T.copy()})


def test_no_metadata_and_no_pickle_in_output() -> None:
    blob = encode_arrays(_model())
    (header_len,) = struct.unpack_from("<Q", blob)
    header = json.loads(blob[8 : 8 + header_len])
    assert "__metadata__" not in header
    assert not blob.startswith(b"\x80")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"w": np.array([1.0, np.nan])}, "tensor 'w' contains NaN"),
        ({"w": np.array([np.inf], dtype=np.float32)}, "tensor 'w' contains Inf"),
        ({"w": np.zeros(2, dtype=np.int32)}, "tensor 'w' has dtype int32"),
        ({"w": np.zeros(2, dtype=np.float16)}, "dtype float16"),
        ({"w": np.array(["a"], dtype=object)}, "dtype object"),
        ({"": np.zeros(1)}, "non-empty"),
        ({"a b": np.zeros(1)}, "whitespace"),
        ({"poids\u00e9": np.zeros(1)}, "ASCII"),
        ({"__metadata__": np.zeros(1)}, "reserved"),
    ],
)
def test_encode_refuses(arrays: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(BlobFormatError, match=message):
        encode_arrays(arrays)


@pytest.mark.parametrize(
    ("tweak", "message"),
    [
        (
            {"fc1.weight": ("float32", (10, 64))},
            r"tensor 'fc1.weight' has shape \(32, 64\), expected \(10, 64\)",
        ),
        ({"steps": ("float64", (3,))}, "tensor 'steps' has dtype int64, expected float64"),
        ({"extra.weight": ("float32", (1,))}, r"missing tensors \['extra.weight'\]"),
        ({"fc1.bias": None}, r"unexpected tensors \['fc1.bias'\]"),
    ],
)
def test_decode_checks_expected_spec(
    tweak: dict[str, tuple[str, tuple[int, ...]] | None], message: str
) -> None:
    model = _model()
    expected = array_spec(model)
    for name, spec in tweak.items():
        if spec is None:
            del expected[name]
        else:
            expected[name] = spec
    with pytest.raises(BlobFormatError, match=message):
        decode_arrays(encode_arrays(model), max_bytes=LIMIT, expected=expected)


@pytest.mark.parametrize(("value", "kind"), [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_decode_rejects_non_finite_values(value: float, kind: str) -> None:
    weights = np.ones((2, 2), dtype=np.float32)
    weights[1, 0] = value
    blob = raw_safetensors({"ok": np.ones(2), "fc2.weight": weights})
    with pytest.raises(BlobFormatError, match=f"tensor 'fc2.weight' contains {kind}"):
        decode_arrays(blob, max_bytes=LIMIT)


def test_decode_rejects_oversize() -> None:
    blob = encode_arrays(_model())
    with pytest.raises(BlobFormatError, match="exceeds the limit"):
        decode_arrays(blob, max_bytes=len(blob) - 1)
    assert decode_arrays(blob, max_bytes=len(blob))


@pytest.mark.parametrize("cut", [1, 4, 100])
def test_decode_rejects_truncated(cut: int) -> None:
    blob = encode_arrays(_model())
    with pytest.raises(BlobFormatError, match="blob rejected"):
        decode_arrays(blob[:-cut], max_bytes=LIMIT)


def test_decode_rejects_appended_bytes() -> None:
    with pytest.raises(BlobFormatError, match="payload has"):
        decode_arrays(encode_arrays(_model()) + b"\x00" * 8, max_bytes=LIMIT)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_decode_rejects_pickle(protocol: int) -> None:
    payload = pickle.dumps({"fc1.weight": [[0.0] * 4] * 4}, protocol=protocol)
    with pytest.raises(BlobFormatError, match="not a safetensors blob"):
        decode_arrays(payload, max_bytes=LIMIT)


_F32_ONE = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
_F32_TEXT = json.dumps(_F32_ONE)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "not a safetensors blob"),
        (b"\x05\x00\x00\x00\x00\x00\x00\x00{}", "not a safetensors blob"),
        (_handmade("not json at all"), "not valid JSON"),
        # refused either as too deep to parse or as not an object, depending on the stack
        (_handmade("[" * 50_000 + "]" * 50_000), "not a safetensors blob"),
        (_handmade(b'{"\xff": 1}'), "not valid JSON"),
        (_handmade("[1, 2]"), "not a JSON object"),
        (_handmade({"__metadata__": {}, "w": _F32_ONE}, b"\0" * 4), "__metadata__"),
        (_handmade(f'{{"w": {_F32_TEXT}, "w": {_F32_TEXT}}}', b"\0" * 4), "repeats"),
        (_handmade({"w": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "exactly the keys"),
        (_handmade({"w": [1, 2, 3]}), "exactly the keys"),
        (
            _handmade({"w": {**_F32_ONE, "dtype": "F16", "data_offsets": [0, 2]}}, b"\0" * 2),
            "dtype 'F16'",
        ),
        (_handmade({"w": {**_F32_ONE, "shape": [-1]}}, b"\0" * 4), "invalid shape"),
        (_handmade({"w": {**_F32_ONE, "shape": [True]}}, b"\0" * 4), "invalid shape"),
        (
            _handmade({"w": {**_F32_ONE, "data_offsets": [4, 0]}}, b"\0" * 4),
            "invalid data_offsets",
        ),
        (_handmade({"w": {**_F32_ONE, "data_offsets": [0, 8]}}, b"\0" * 8), "spans 8 bytes"),
        (_handmade({"w": {**_F32_ONE, "data_offsets": [4, 8]}}, b"\0" * 8), "contiguous"),
        (_handmade({"a": _F32_ONE, "b": _F32_ONE}, b"\0" * 4), "contiguous"),  # overlap
        (_handmade({"a b": _F32_ONE}, b"\0" * 4), "whitespace"),
    ],
)
def test_decode_rejects_malformed_header(blob: bytes, message: str) -> None:
    with pytest.raises(BlobFormatError, match=message):
        decode_arrays(blob, max_bytes=LIMIT)


def test_handmade_blob_in_canonical_shape_is_accepted() -> None:
    """Guards the malformed-header cases above: the same framing, done right, decodes."""
    blob = _handmade({"w": _F32_ONE}, struct.pack("<f", 2.0))
    assert decode_arrays(blob, max_bytes=LIMIT)["w"].tolist() == [2.0]


def test_array_spec() -> None:
    assert array_spec({"w": np.zeros((2, 3), dtype=np.float32), "n": np.array(1)}) == {
        "w": ("float32", (2, 3)),
        "n": ("int64", ()),
    }

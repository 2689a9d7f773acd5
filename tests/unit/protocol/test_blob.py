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


# --- bounds: a hostile header costs at most what the bounds allow -------------------

from deai_flower.protocol import blob as blob_module  # noqa: E402
from deai_flower.protocol.blob import MAX_HEADER_BYTES, MAX_RANK, MAX_TENSORS, header_limit  # noqa: E402

_EMPTY_F32 = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}


def _padded(blob: bytes, header_len: int) -> bytes:
    """``blob`` with its header padded by JSON whitespace to ``header_len`` bytes."""
    (old_len,) = struct.unpack_from("<Q", blob)
    assert header_len >= old_len
    header = blob[8 : 8 + old_len] + b" " * (header_len - old_len)
    return struct.pack("<Q", header_len) + header + blob[8 + old_len :]


def test_header_over_the_fixed_limit_is_refused_before_parsing() -> None:
    blob = _padded(_handmade({}), MAX_HEADER_BYTES + 1)  # valid JSON: the old decoder accepted it
    with pytest.raises(BlobFormatError, match=f"header of {MAX_HEADER_BYTES + 1} bytes exceeds the limit"):
        decode_arrays(blob, max_bytes=4 * MAX_HEADER_BYTES)
    assert decode_arrays(_padded(_handmade({}), MAX_HEADER_BYTES), max_bytes=4 * MAX_HEADER_BYTES) == {}


def test_header_over_the_expected_limit_is_refused_and_at_it_accepted() -> None:
    model = _model()
    expected = array_spec(model)
    blob = encode_arrays(model)
    limit = header_limit(expected)
    (canonical,) = struct.unpack_from("<Q", blob)
    assert canonical < limit < MAX_HEADER_BYTES
    assert decode_arrays(_padded(blob, limit), max_bytes=LIMIT, expected=expected)
    with pytest.raises(BlobFormatError, match=f"exceeds the limit for the expected 4 tensors of {limit} bytes"):
        decode_arrays(_padded(blob, limit + 1), max_bytes=LIMIT, expected=expected)
    decode_arrays(_padded(blob, limit + 1), max_bytes=LIMIT)  # within the fixed limit without a spec


@pytest.mark.parametrize(
    "spec",
    [
        {"w": ("float64", ())},
        {"x" * 300: ("float32", (0, 10**12, 3)), 'q"uote\\': ("int64", (0,) * 12)},
        {f"layer.{i}.weight": ("float32", (0, 7, 1 + i)) for i in range(50)},
    ],
    ids=["scalar", "long-names-large-dims", "many"],
)
def test_canonical_headers_fit_the_expected_limit(spec: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Long names, escaped characters, large dims and high ranks all fit their own limit."""
    arrays = {name: np.zeros(shape, dtype=dtype) for name, (dtype, shape) in spec.items()}
    blob = encode_arrays(arrays)
    (header_len,) = struct.unpack_from("<Q", blob)
    assert header_len <= header_limit(spec)
    assert set(decode_arrays(blob, max_bytes=LIMIT, expected=spec)) == set(spec)


def test_tensor_count_is_bounded_without_a_spec() -> None:
    names = [f"t{i:05d}" for i in range(MAX_TENSORS + 1)]
    assert len(decode_arrays(_handmade(dict.fromkeys(names[:-1], _EMPTY_F32)), max_bytes=LIMIT)) == MAX_TENSORS
    with pytest.raises(BlobFormatError, match=f"lists {MAX_TENSORS + 1} tensors, the limit is {MAX_TENSORS}"):
        decode_arrays(_handmade(dict.fromkeys(names, _EMPTY_F32)), max_bytes=LIMIT)


def test_rank_is_bounded() -> None:
    def blob(rank: int) -> bytes:
        return _handmade({"w": {**_F32_ONE, "shape": [1] * rank}}, b"\0" * 4)

    assert decode_arrays(blob(MAX_RANK), max_bytes=LIMIT)["w"].shape == (1,) * MAX_RANK
    with pytest.raises(BlobFormatError, match=f"tensor 'w' has rank {MAX_RANK + 1}, the limit is {MAX_RANK}"):
        decode_arrays(blob(MAX_RANK + 1), max_bytes=LIMIT)
    # a spec with a higher rank raises the bound for its own tensors
    high = {"w": ("float32", (1,) * (MAX_RANK + 2))}
    assert decode_arrays(blob(MAX_RANK + 2), max_bytes=LIMIT, expected=high)["w"].ndim == MAX_RANK + 2


@pytest.mark.parametrize(
    ("header", "payload", "message"),
    [
        # the payload is two bytes short: the names are wrong first
        ({"v": _F32_ONE}, b"\0" * 2, r"missing tensors \['w'\]; unexpected tensors \['v'\]"),
        # the offsets do not match the dtype and shape: the shape is wrong first
        ({"w": {**_F32_ONE, "shape": [2]}}, b"\0" * 4, r"tensor 'w' has shape \(2,\), expected \(1,\)"),
        ({"w": {**_F32_ONE, "dtype": "F64"}}, b"\0" * 4, "tensor 'w' has dtype float64, expected float32"),
    ],
    ids=["names", "shape", "dtype"],
)
def test_expected_spec_is_checked_on_the_header_before_the_payload(
    header: dict[str, object], payload: bytes, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_: object) -> None:
        raise AssertionError("safetensors must not see a blob the header already refuses")

    monkeypatch.setattr(blob_module, "_st_load", never)
    with pytest.raises(BlobFormatError, match=message):
        decode_arrays(_handmade(header, payload), max_bytes=LIMIT, expected={"w": ("float32", (1,))})


LONG = "n" * 500_000


@pytest.mark.parametrize(
    ("blob", "expected"),
    [
        # 100k tensor names, against a spec and without one
        (_handmade({f"tensor.{i:06d}": _EMPTY_F32 for i in range(100_000)}), {"w": ("float32", (1,))}),
        (_handmade({f"tensor.{i:06d}": _EMPTY_F32 for i in range(100_000)}), None),
        # 600 wrong names within a 600-name spec's header limit
        (
            _handmade({f"b{i:04d}": _EMPTY_F32 for i in range(600)}),
            {f"a{i:04d}": ("float32", (0,)) for i in range(600)},
        ),
        # one long name, one long dtype, shape or offsets, a repeated long key
        (_handmade({LONG + " ": _F32_ONE}, b"\0" * 4), None),
        (_handmade({"w": {**_F32_ONE, "dtype": LONG}}, b"\0" * 4), None),
        (_handmade({"w": {**_F32_ONE, "shape": LONG}}, b"\0" * 4), None),
        (_handmade({"w": {**_F32_ONE, "shape": [1] * 200_000}}, b"\0" * 4), None),
        (_handmade({"w": {**_F32_ONE, "data_offsets": [0, 4, *[0] * 100_000]}}, b"\0" * 4), None),
        (_handmade({"w": {**_F32_ONE, "data_offsets": [0, int("9" * 4000)]}}, b"\0" * 4), None),
        (_handmade(f'{{"{LONG}": {_F32_TEXT}, "{LONG}": {_F32_TEXT}}}', b"\0" * 4), None),
        (_handmade({LONG: {**_F32_ONE, "shape": [2]}}, b"\0" * 4), None),
        # the expected tensor with a shape of 4000-digit dims
        (_handmade({"w": {**_F32_ONE, "shape": [int("9" * 4000)] * 2}}, b"\0" * 4), {"w": ("float32", (1,))}),
        (_handmade({"w": {**_F32_ONE, "shape": [int("9" * 4000)] * 2}}, b"\0" * 4), None),
    ],
    ids=["100k-names-spec", "100k-names", "600-wrong-names", "long-name", "long-dtype", "long-shape-string",
         "high-rank", "long-offsets", "huge-offset", "repeated-long-key", "long-name-bad-span",
         "huge-dims-spec", "huge-dims"],  # fmt: skip
)
def test_error_texts_stay_short_whatever_the_blob_holds(blob: bytes, expected: dict[str, object] | None) -> None:
    with pytest.raises(BlobFormatError) as caught:
        decode_arrays(blob, max_bytes=64 << 20, expected=expected)  # type: ignore[arg-type]
    assert len(str(caught.value)) < 500, str(caught.value)[:1000]

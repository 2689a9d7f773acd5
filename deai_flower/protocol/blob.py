"""The canonical model blob: named arrays in safetensors, with no pickle anywhere.

Model updates travel between mutually distrusting participants and are addressed by the
CID of their bytes, so the format has two jobs:

* **Safe to open.** A blob is parsed, never executed: safetensors is a JSON header plus
  raw little-endian array bytes. Before the library sees the bytes, this module checks
  the size, the header length prefix, the header's entries and that the data offsets
  tile the payload exactly; afterwards it checks names, dtypes and shapes against what
  the caller expects and that every value is finite. Every refusal is a
  :class:`~deai_flower.errors.BlobFormatError` whose message names the offending tensor.
* **Canonical.** The same arrays always give the same bytes, hence the same CID,
  whatever order the mapping was built in: safetensors orders tensors by dtype then
  name in both the header and the payload, the header carries no ``__metadata__``,
  and arrays are written C-contiguous and little-endian.

Allowed dtypes are ``float32``, ``float64`` and ``int64``: enough for weights,
optimizer state and counters, while a short list keeps every consumer's checks simple.
Tensor names are non-empty printable ASCII without whitespace, so they print
unambiguously in error messages and logs.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from deai_flower.errors import BlobFormatError

__all__ = ["ALLOWED_DTYPES", "ArraySpec", "array_spec", "decode_arrays", "encode_arrays"]

ArraySpec = Mapping[str, tuple[str, tuple[int, ...]]]
"""Expected tensors: name -> (numpy dtype name, shape)."""

_SAFETENSORS_DTYPES = {"F32": "float32", "F64": "float64", "I64": "int64"}
ALLOWED_DTYPES = frozenset(_SAFETENSORS_DTYPES.values())
"""Numpy dtype names a blob may hold."""

_LENGTH_PREFIX = 8
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_METADATA_KEY = "__metadata__"


def _name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a tensor name, or ``None`` if it can."""
    if not isinstance(name, str) or not name:
        return f"tensor name {name!r} must be a non-empty string"
    if not all("!" <= char <= "~" for char in name):
        return f"tensor name {name!r} must be printable ASCII without whitespace"
    if name == _METADATA_KEY:
        return f"tensor name {name!r} is reserved by safetensors"
    return None


def encode_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """Serialize named arrays to canonical safetensors bytes.

    Raises :class:`BlobFormatError` for a bad name, a dtype outside
    :data:`ALLOWED_DTYPES` or a non-finite value, so an unusable blob is refused where it
    is made rather than by every participant that downloads it.
    """
    prepared: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        problem = _name_problem(name)
        if problem is not None:
            raise BlobFormatError(f"cannot encode: {problem}")
        array = np.asarray(value)
        if array.dtype.name not in ALLOWED_DTYPES:
            raise BlobFormatError(
                f"cannot encode: tensor {name!r} has dtype {array.dtype}, "
                f"allowed: {', '.join(sorted(ALLOWED_DTYPES))}"
            )
        _check_finite(name, array, "cannot encode")
        prepared[name] = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)
    return _st_save(prepared)


def array_spec(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The ``expected`` argument of :func:`decode_arrays` that matches ``arrays``."""
    return {
        name: (np.asarray(value).dtype.name, tuple(np.shape(value)))
        for name, value in arrays.items()
    }


def decode_arrays(
    data: bytes, *, max_bytes: int, expected: ArraySpec | None = None
) -> dict[str, np.ndarray]:
    """Parse an untrusted blob into writable arrays, refusing anything off-format.

    ``max_bytes`` bounds the work a hostile blob can cause. With ``expected`` the
    names must match exactly and each tensor's dtype and shape must match its entry.
    """
    if len(data) > max_bytes:
        raise BlobFormatError(
            f"blob rejected: {len(data)} bytes exceeds the limit of {max_bytes}"
        )
    data = bytes(data)  # no copy for bytes; safetensors needs an immutable buffer
    header = _parse_header(data)
    if expected is not None:
        _check_expected(header, expected)
    try:
        loaded = _st_load(data)
    except SafetensorError as exc:
        raise BlobFormatError(f"blob rejected: safetensors refused it: {exc}") from exc
    arrays: dict[str, np.ndarray] = {}
    for name, (dtype, _) in header.items():
        array = loaded[name]
        if array.dtype != np.dtype(dtype) or not (array.flags.writeable and array.flags.aligned):
            # safetensors returns fresh, writable, aligned arrays; anything else is copied
            array = np.array(array, dtype=np.dtype(dtype), copy=True)
        _check_finite(name, array, "blob rejected")
        arrays[name] = array
    return arrays


def _parse_header(data: bytes) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Validate the safetensors framing and header; return name -> (dtype, shape)."""
    if len(data) < _LENGTH_PREFIX + 2:
        raise BlobFormatError(
            f"blob rejected: not a safetensors blob (only {len(data)} bytes)"
        )
    (header_len,) = struct.unpack_from("<Q", data)
    if header_len < 2 or header_len > len(data) - _LENGTH_PREFIX:
        raise BlobFormatError(
            f"blob rejected: not a safetensors blob (header length prefix {header_len} "
            f"does not fit in {len(data)} bytes)"
        )
    header_bytes = data[_LENGTH_PREFIX : _LENGTH_PREFIX + header_len]
    try:
        header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BlobFormatError(
            f"blob rejected: not a safetensors blob (header is not valid JSON: {exc})"
        ) from exc
    if not isinstance(header, dict):
        raise BlobFormatError(
            "blob rejected: not a safetensors blob (header is not a JSON object)"
        )
    if _METADATA_KEY in header:
        raise BlobFormatError(
            f"blob rejected: header carries {_METADATA_KEY}, canonical blobs do not"
        )

    spans: list[tuple[int, int, str]] = []
    entries: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, entry in header.items():
        problem = _name_problem(name)
        if problem is not None:
            raise BlobFormatError(f"blob rejected: {problem}")
        dtype, shape, start, end = _parse_entry(name, entry)
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if end - start != nbytes:
            raise BlobFormatError(
                f"blob rejected: tensor {name!r} spans {end - start} bytes, "
                f"its dtype and shape need {nbytes}"
            )
        spans.append((start, end, name))
        entries[name] = (dtype, shape)

    payload_len = len(data) - _LENGTH_PREFIX - header_len
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            raise BlobFormatError(
                f"blob rejected: tensor {name!r} starts at byte {start}, expected {position} "
                "(data offsets must be contiguous)"
            )
        position = end
    if position != payload_len:
        raise BlobFormatError(
            f"blob rejected: tensors cover {position} bytes but the payload has {payload_len}"
        )
    return entries


def _parse_entry(name: str, entry: object) -> tuple[str, tuple[int, ...], int, int]:
    """Check one header entry's keys and types; return dtype name, shape and offsets."""
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        raise BlobFormatError(
            f"blob rejected: header entry {name!r} must have exactly the keys "
            "dtype, shape and data_offsets"
        )
    dtype = _SAFETENSORS_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise BlobFormatError(
            f"blob rejected: tensor {name!r} has dtype {entry['dtype']!r}, "
            f"allowed: {', '.join(sorted(_SAFETENSORS_DTYPES))}"
        )
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
        raise BlobFormatError(f"blob rejected: tensor {name!r} has invalid shape {shape!r}")
    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(offset) for offset in offsets)
        or offsets[0] > offsets[1]
    ):
        raise BlobFormatError(
            f"blob rejected: tensor {name!r} has invalid data_offsets {offsets!r}"
        )
    return dtype, tuple(shape), offsets[0], offsets[1]


def _check_expected(
    header: Mapping[str, tuple[str, tuple[int, ...]]], expected: ArraySpec
) -> None:
    """Compare the blob's names, dtypes and shapes with what the caller expects."""
    missing = sorted(set(expected) - set(header))
    extra = sorted(set(header) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing}")
        if extra:
            parts.append(f"unexpected tensors {extra}")
        raise BlobFormatError(f"blob rejected: {'; '.join(parts)}")
    for name, (want_dtype, want_shape) in expected.items():
        dtype, shape = header[name]
        if dtype != np.dtype(want_dtype).name:
            raise BlobFormatError(
                f"blob rejected: tensor {name!r} has dtype {dtype}, expected {want_dtype}"
            )
        if shape != tuple(want_shape):
            raise BlobFormatError(
                f"blob rejected: tensor {name!r} has shape {shape}, expected {tuple(want_shape)}"
            )


def _check_finite(name: str, array: np.ndarray, context: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        kind = "NaN" if np.isnan(array).any() else "Inf"
        raise BlobFormatError(f"{context}: tensor {name!r} contains {kind} values")


def _is_count(value: object) -> bool:
    """A non-negative JSON integer (``bool`` is an ``int`` subclass in Python; exclude it)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """JSON object hook: a repeated key could make two readers see different tensors."""
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise BlobFormatError(f"blob rejected: header repeats the key {key!r}")
        result[key] = value
    return result

"""The canonical model blob: named arrays in safetensors, with no pickle anywhere.

Model updates travel between mutually distrusting participants and are addressed by the
CID of their bytes, so the format has two jobs:

* **Safe to open.** A blob is parsed, never executed: safetensors is a JSON header plus
  raw little-endian array bytes. Before the library sees the bytes, this module checks
  the size and the header length prefix, which must fit the header bound (below), then
  parses the header and checks its entries (tensor count, ranks), the names, dtypes and
  shapes against what the caller expects and that the data offsets tile the payload
  exactly; afterwards that every value is finite. Every refusal is a
  :class:`~deai_flower.errors.BlobFormatError` whose message names the offending tensor.
* **Cheap to refuse.** The bytes come from whoever revealed them, so no check may cost
  more than the blob is allowed to: the header is at most :data:`MAX_HEADER_BYTES`
  (with ``expected``: about what a canonical header of the expected tensors takes) and
  holds at most :data:`MAX_TENSORS` tensors (with ``expected``: exactly those) of rank
  at most :data:`MAX_RANK`, each checked before the header is parsed any further, and
  no error message quotes more than a few hundred characters of the blob, so a refusal
  recorded in logs and results stays small whatever was sent.
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
import reprlib
import struct
from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from deai_flower.errors import BlobFormatError

__all__ = [
    "ALLOWED_DTYPES",
    "MAX_HEADER_BYTES",
    "MAX_RANK",
    "MAX_TENSORS",
    "ArraySpec",
    "array_spec",
    "decode_arrays",
    "encode_arrays",
    "header_limit",
]

ArraySpec = Mapping[str, tuple[str, tuple[int, ...]]]
"""Expected tensors: name -> (numpy dtype name, shape)."""

_SAFETENSORS_DTYPES = {"F32": "float32", "F64": "float64", "I64": "int64"}
ALLOWED_DTYPES = frozenset(_SAFETENSORS_DTYPES.values())
"""Numpy dtype names a blob may hold."""

MAX_HEADER_BYTES = 1 << 20
"""Largest header :func:`decode_arrays` parses without an ``expected`` spec (a canonical
header takes about 70 bytes plus the name per tensor: 4096 tensors with 150-character
names fit)."""
MAX_TENSORS = 4096
"""Most tensors a blob may hold without an ``expected`` spec (with one: exactly the expected ones)."""
MAX_RANK = 8
"""Most dimensions a tensor may have (or the highest rank in ``expected``, if higher)."""

_LENGTH_PREFIX = 8
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_METADATA_KEY = "__metadata__"
# A canonical entry without its name, shape dims and offsets: "":{"dtype":"F32","shape":[],"data_offsets":[,]},
_ENTRY_OVERHEAD = len('"":{"dtype":"F32","shape":[],"data_offsets":[,]},')
# Room above the canonical size for another writer's spacing (JSON with ", " and ": ").
_HEADER_SLACK_FACTOR = 2
_HEADER_SLACK_BYTES = 1024
_COUNT_LIMIT = 1 << 64
_MAX_MESSAGE = 400  # characters of a refusal message; the rest is cut
_MAX_LISTED = 120  # characters of a quoted list of names

_quoter = reprlib.Repr()
_quoter.maxstring = 80
_quoter.maxother = 80
_quoter.maxlist = _quoter.maxtuple = _quoter.maxdict = 8
_quoter.maxlevel = 2


def _q(value: object) -> str:
    """``repr(value)``, shortened: names and shapes in messages come from the blob."""
    return _quoter.repr(value)


def _clip(text: str, limit: int = _MAX_MESSAGE) -> str:
    if len(text) <= limit:
        return text
    tail = f"... [{len(text)} characters in all]"
    return text[: limit - len(tail)] + tail


def _names(names: set[str]) -> str:
    """Sorted names for a message: as many as fit, then how many there are in all."""
    shown = sorted(names)[:16]
    listed = _clip("[" + ", ".join(_q(name) for name in shown) + "]", _MAX_LISTED)
    return listed if len(names) == 1 else f"{listed} ({len(names)} in all)"


def _name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a tensor name, or ``None`` if it can."""
    if not isinstance(name, str) or not name:
        return f"tensor name {_q(name)} must be a non-empty string"
    if not all("!" <= char <= "~" for char in name):
        return f"tensor name {_q(name)} must be printable ASCII without whitespace"
    if name == _METADATA_KEY:
        return f"tensor name {_q(name)} is reserved by safetensors"
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
                f"cannot encode: tensor {_q(name)} has dtype {array.dtype}, "
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


def header_limit(expected: ArraySpec | None) -> int:
    """The largest header :func:`decode_arrays` reads for ``expected``.

    Without a spec: :data:`MAX_HEADER_BYTES`. With one: what a canonical header of those
    tensors takes (each entry with its name, dims and offsets as long as the spec's
    total size makes them), doubled plus a kilobyte for another writer's spacing. The
    spec is trusted, so a model whose canonical header exceeds
    :data:`MAX_HEADER_BYTES` still decodes against it.
    """
    if expected is None:
        return MAX_HEADER_BYTES
    total = sum(math.prod(shape) * np.dtype(dtype).itemsize for dtype, shape in expected.values())
    offset_digits = len(str(total))
    canonical = 2 + 7  # the braces, and the spaces that pad the header to 8 bytes
    for name, (_, shape) in expected.items():
        dims = sum(len(str(int(dim))) + 1 for dim in shape)
        canonical += _ENTRY_OVERHEAD + len(json.dumps(name)) + dims + 2 * offset_digits
    return _HEADER_SLACK_FACTOR * canonical + _HEADER_SLACK_BYTES


def decode_arrays(
    data: bytes, *, max_bytes: int, expected: ArraySpec | None = None
) -> dict[str, np.ndarray]:
    """Parse an untrusted blob into writable arrays, refusing anything off-format.

    ``max_bytes`` bounds the work a hostile blob can cause. With ``expected`` the
    names must match exactly and each tensor's dtype and shape must match its entry;
    this is checked on the header alone, before the payload is looked at. A refusal's
    message is at most a few hundred characters, whatever the blob holds.
    """
    try:
        return _decode(data, max_bytes=max_bytes, expected=expected)
    except BlobFormatError as exc:
        message = str(exc)
        if len(message) <= _MAX_MESSAGE:
            raise
        raise BlobFormatError(_clip(message)) from None  # backstop: every message is cut at the source too


def _decode(data: bytes, *, max_bytes: int, expected: ArraySpec | None) -> dict[str, np.ndarray]:
    if len(data) > max_bytes:
        raise BlobFormatError(
            f"blob rejected: {len(data)} bytes exceeds the limit of {max_bytes}"
        )
    data = bytes(data)  # no copy for bytes; safetensors needs an immutable buffer
    header = _parse_header(data, expected)
    try:
        loaded = _st_load(data)
    except SafetensorError as exc:
        raise BlobFormatError(_clip(f"blob rejected: safetensors refused it: {exc}")) from exc
    arrays: dict[str, np.ndarray] = {}
    for name, (dtype, _) in header.items():
        array = loaded[name]
        if array.dtype != np.dtype(dtype) or not (array.flags.writeable and array.flags.aligned):
            # safetensors returns fresh, writable, aligned arrays; anything else is copied
            array = np.array(array, dtype=np.dtype(dtype), copy=True)
        _check_finite(name, array, "blob rejected")
        arrays[name] = array
    return arrays


def _parse_header(
    data: bytes, expected: ArraySpec | None
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Validate the safetensors framing and header; return name -> (dtype, shape).

    Cheapest checks first: the length prefix against :func:`header_limit` before any
    parsing, the tensor names against ``expected`` before any entry, each entry's rank
    before its dims and its dtype and shape against ``expected`` before its offsets.
    """
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
    limit = header_limit(expected)
    if header_len > limit:
        bound = "the limit" if expected is None else f"the limit for the expected {len(expected)} tensors"
        raise BlobFormatError(
            f"blob rejected: its header of {header_len} bytes exceeds {bound} of {limit} bytes"
        )
    header_bytes = data[_LENGTH_PREFIX : _LENGTH_PREFIX + header_len]
    try:
        header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BlobFormatError(
            _clip(f"blob rejected: not a safetensors blob (header is not valid JSON: {exc})")
        ) from exc
    if not isinstance(header, dict):
        raise BlobFormatError(
            "blob rejected: not a safetensors blob (header is not a JSON object)"
        )
    if _METADATA_KEY in header:
        raise BlobFormatError(
            f"blob rejected: header carries {_METADATA_KEY}, canonical blobs do not"
        )
    max_rank = MAX_RANK
    if expected is None:
        if len(header) > MAX_TENSORS:
            raise BlobFormatError(
                f"blob rejected: header lists {len(header)} tensors, the limit is {MAX_TENSORS}"
            )
    else:
        _check_expected_names(header, expected)
        max_rank = max([MAX_RANK, *(len(shape) for _, shape in expected.values())])

    spans: list[tuple[int, int, str]] = []
    entries: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, entry in header.items():
        problem = _name_problem(name)
        if problem is not None:
            raise BlobFormatError(f"blob rejected: {problem}")
        dtype, shape, start, end = _parse_entry(name, entry, max_rank)
        if expected is not None:
            _check_expected_entry(name, dtype, shape, expected[name])
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if end - start != nbytes:
            raise BlobFormatError(
                _clip(f"blob rejected: tensor {_q(name)} spans {end - start} bytes, "
                      f"its dtype and shape need {nbytes}")
            )
        spans.append((start, end, name))
        entries[name] = (dtype, shape)

    payload_len = len(data) - _LENGTH_PREFIX - header_len
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            raise BlobFormatError(
                _clip(f"blob rejected: tensor {_q(name)} starts at byte {start}, expected {position} "
                      "(data offsets must be contiguous)")
            )
        position = end
    if position != payload_len:
        raise BlobFormatError(
            _clip(f"blob rejected: tensors cover {position} bytes but the payload has {payload_len}")
        )
    return entries


def _parse_entry(name: str, entry: object, max_rank: int) -> tuple[str, tuple[int, ...], int, int]:
    """Check one header entry's keys and types; return dtype name, shape and offsets."""
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        raise BlobFormatError(
            f"blob rejected: header entry {_q(name)} must have exactly the keys "
            "dtype, shape and data_offsets"
        )
    dtype = _SAFETENSORS_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise BlobFormatError(
            f"blob rejected: tensor {_q(name)} has dtype {_q(entry['dtype'])}, "
            f"allowed: {', '.join(sorted(_SAFETENSORS_DTYPES))}"
        )
    shape = entry["shape"]
    if isinstance(shape, list) and len(shape) > max_rank:
        raise BlobFormatError(
            f"blob rejected: tensor {_q(name)} has rank {len(shape)}, the limit is {max_rank}"
        )
    if not isinstance(shape, list) or not all(_is_count(dim) for dim in shape):
        raise BlobFormatError(_clip(f"blob rejected: tensor {_q(name)} has invalid shape {_q(shape)}"))
    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(offset) for offset in offsets)
        or offsets[0] > offsets[1]
    ):
        raise BlobFormatError(
            _clip(f"blob rejected: tensor {_q(name)} has invalid data_offsets {_q(offsets)}")
        )
    return dtype, tuple(shape), offsets[0], offsets[1]


def _check_expected_names(header: Mapping[str, object], expected: ArraySpec) -> None:
    """The blob names exactly the expected tensors (so there are exactly as many)."""
    if len(header) == len(expected) and all(name in header for name in expected):
        return
    missing = set(expected).difference(header)
    extra = set(header).difference(expected)
    parts = []
    if missing:
        parts.append(f"missing tensors {_names(missing)}")
    if extra:
        parts.append(f"unexpected tensors {_names(extra)}")
    raise BlobFormatError(f"blob rejected: {'; '.join(parts)}")


def _check_expected_entry(
    name: str, dtype: str, shape: tuple[int, ...], want: tuple[str, tuple[int, ...]]
) -> None:
    """One tensor's dtype and shape, as the header gives them, against the expected ones."""
    want_dtype, want_shape = want
    if dtype != np.dtype(want_dtype).name:
        raise BlobFormatError(
            f"blob rejected: tensor {_q(name)} has dtype {dtype}, expected {want_dtype}"
        )
    if shape != tuple(want_shape):
        raise BlobFormatError(
            _clip(f"blob rejected: tensor {_q(name)} has shape {_q(shape)}, expected {tuple(want_shape)}")
        )


def _check_finite(name: str, array: np.ndarray, context: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        kind = "NaN" if np.isnan(array).any() else "Inf"
        raise BlobFormatError(f"{context}: tensor {_q(name)} contains {kind} values")


def _is_count(value: object) -> bool:
    """A JSON integer in ``[0, 2**64)``, safetensors' range for dims and offsets (``bool`` is
    an ``int`` subclass in Python; exclude it). The bound keeps products of dims printable."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _COUNT_LIMIT


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """JSON object hook: a repeated key could make two readers see different tensors."""
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise BlobFormatError(f"blob rejected: header repeats the key {_q(key)}")
        result[key] = value
    return result

"""IPFS content identifiers computed locally, byte-for-byte as ``ipfs add`` prints them.

Model updates are addressed by the CID an IPFS node would assign to the same bytes, so a
blob written to the embedded :class:`~deai_flower.storage.local.LocalStore` and the same
blob added to a real IPFS node (``ipfs add --cid-version=1 --raw-leaves``) carry the same
identifier, and either side can check the other without trusting it.

That command's defaults fix the DAG shape, and so the CID:

* the content is cut into fixed-size chunks of 262144 bytes (the last may be shorter;
  empty content is one empty chunk);
* each chunk is a *raw* block (codec ``0x55``) hashed with sha2-256;
* content of one chunk is addressed by that raw block alone;
* otherwise a *balanced* tree is built level by level: consecutive runs of up to 174
  children become one dag-pb node (codec ``0x70``) holding a UnixFS ``File`` entry,
  until a single root remains.

A dag-pb node is a ``PBNode`` protobuf. Its ``Links`` (field 2) are serialized before its
``Data`` (field 1), as the dag-pb specification requires. Each ``PBLink`` carries
``Hash`` (1, the child's binary CID), ``Name`` (2, present and empty) and ``Tsize``
(3, the bytes of every block under the child, its own included). ``Data`` is a UnixFS
message ``{Type(1)=File(2), filesize(3), blocksizes(4)...}``: inner file nodes carry
no ``Data`` bytes of their own, and each block size is its own tag/varint pair (not
packed), the way the Go and JavaScript importers write it.

The CID is printed as CIDv1 in multibase base32 lower case (prefix ``b``). Only the two
kinds of CID this scheme produces are accepted on input (sha2-256 raw or dag-pb, CIDv1
base32); anything else, CIDv0 ``Qm…`` included, raises :class:`InvalidCidError`, so a
CID that reached us by another route cannot alias one we computed.

The hashing works on memoryview slices and keeps only the pending links of each tree
level, so a file of any size streams through :class:`CidHasher` in constant memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass

from deai_flower.errors import InvalidCidError

__all__ = [
    "CHUNK_SIZE",
    "MAX_LINKS",
    "CidHasher",
    "cid_from_bytes",
    "cid_to_bytes",
    "compute_cid",
    "compute_cid_of_file",
    "validate_cid",
]

CHUNK_SIZE = 262_144
"""Bytes per leaf block: the fixed-size chunker default of ``ipfs add``."""

MAX_LINKS = 174
"""Children per dag-pb node: the balanced-layout default of ``ipfs add``."""

_RAW = 0x55
_DAG_PB = 0x70
_SHA2_256 = 0x12
_DIGEST_LEN = 32
_CID_LEN = 4 + _DIGEST_LEN  # version, codec, hash code, digest length: one byte each
_CODEC_NAMES = {_RAW: "raw", _DAG_PB: "dag-pb"}

_MULTIBASE_BASE32 = "b"
_BASE32_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_READ_SIZE = 16 * CHUNK_SIZE


def _varint(value: int) -> bytes:
    """Encode a non-negative integer as an unsigned LEB128 varint (protobuf, multiformats)."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    """Decode the varint at ``raw[pos:]``; return its value and the position after it."""
    value = 0
    shift = 0
    while pos < len(raw) and shift <= 63:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise InvalidCidError("invalid CID: truncated or overlong varint")


def _binary_cid(codec: int, digest: bytes) -> bytes:
    """Binary CIDv1 of a sha2-256 digest; every field fits one varint byte."""
    return bytes((1, codec, _SHA2_256, _DIGEST_LEN)) + digest


@dataclass(frozen=True, slots=True)
class _Link:
    """What a parent needs to know about one child: its CID and two sizes."""

    cid: bytes
    tsize: int  # serialized bytes of every block in the child's subtree
    content_size: int  # file bytes under the child


def _file_node(children: list[_Link]) -> _Link:
    """Serialize one dag-pb/UnixFS ``File`` node over ``children`` and link to it."""
    links = bytearray()
    for child in children:
        pb_link = (
            b"\x0a" + _varint(len(child.cid)) + child.cid  # Hash
            + b"\x12\x00"  # Name: present, empty
            + b"\x18" + _varint(child.tsize)  # Tsize
        )
        links += b"\x12" + _varint(len(pb_link)) + pb_link
    filesize = sum(child.content_size for child in children)
    unixfs = bytearray(b"\x08\x02\x18" + _varint(filesize))  # Type=File, filesize
    for child in children:
        unixfs += b"\x20" + _varint(child.content_size)  # blocksizes, not packed
    block = bytes(links + b"\x0a" + _varint(len(unixfs)) + unixfs)  # Links before Data
    digest = hashlib.sha256(block).digest()
    tsize = len(block) + sum(child.tsize for child in children)
    return _Link(_binary_cid(_DAG_PB, digest), tsize, filesize)


class CidHasher:
    """Incremental CID computation: feed bytes with :meth:`update`, read :meth:`finalize`.

    The defaults reproduce ``ipfs add --cid-version=1 --raw-leaves``. ``chunk_size`` and
    ``max_links`` can be lowered so tests reach deep trees with little data; any other
    value gives a CID that IPFS would assign only under the matching importer options.
    """

    def __init__(self, *, chunk_size: int = CHUNK_SIZE, max_links: int = MAX_LINKS) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if max_links < 2:
            raise ValueError(f"max_links must be at least 2, got {max_links}")
        self._chunk_size = chunk_size
        self._max_links = max_links
        self._partial = bytearray()
        self._levels: list[list[_Link]] = [[]]
        self._leaf_count = 0
        self._result: str | None = None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add the next bytes of the content; chunk boundaries do not depend on framing."""
        if self._result is not None:
            raise RuntimeError("CidHasher.update() called after finalize()")
        view = memoryview(data).cast("B")
        size = self._chunk_size
        if self._partial:
            take = size - len(self._partial)
            self._partial += view[:take]
            view = view[take:]
            if len(self._partial) < size:
                return
            self._add_leaf(memoryview(self._partial))
            self._partial = bytearray()
        whole = len(view) - len(view) % size
        for start in range(0, whole, size):
            self._add_leaf(view[start : start + size])
        self._partial += view[whole:]

    def finalize(self) -> str:
        """Close the tree and return the root CID; later calls return the same string."""
        if self._result is None:
            if self._partial or self._leaf_count == 0:
                self._add_leaf(memoryview(self._partial))
                self._partial = bytearray()
            level = 0
            while True:
                pending = self._levels[level]
                if level == len(self._levels) - 1 and len(pending) == 1:
                    self._result = cid_from_bytes(pending[0].cid)
                    break
                if pending:
                    self._levels[level] = []
                    self._push(level + 1, _file_node(pending))
                level += 1
        return self._result

    def _add_leaf(self, chunk: memoryview) -> None:
        digest = hashlib.sha256(chunk).digest()
        self._leaf_count += 1
        self._push(0, _Link(_binary_cid(_RAW, digest), len(chunk), len(chunk)))

    def _push(self, level: int, link: _Link) -> None:
        """Append ``link`` to ``level``; a full run becomes one node on the level above."""
        if level == len(self._levels):
            self._levels.append([])
        pending = self._levels[level]
        pending.append(link)
        if len(pending) == self._max_links:
            self._levels[level] = []
            self._push(level + 1, _file_node(pending))


def compute_cid(data: bytes | bytearray | memoryview) -> str:
    """The CID ``ipfs add --cid-version=1 --raw-leaves`` prints for ``data``."""
    hasher = CidHasher()
    hasher.update(data)
    return hasher.finalize()


def compute_cid_of_file(path: str | os.PathLike[str]) -> str:
    """:func:`compute_cid` of a file's bytes, read in chunks so memory stays constant."""
    hasher = CidHasher()
    buffer = bytearray(_READ_SIZE)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            hasher.update(view[:count])
    return hasher.finalize()


def _base32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def _check_binary(raw: bytes) -> None:
    """Raise :class:`InvalidCidError` unless ``raw`` is a sha2-256 raw/dag-pb CIDv1."""
    if raw[:2] == bytes((_SHA2_256, _DIGEST_LEN)) and len(raw) == 2 + _DIGEST_LEN:
        raise InvalidCidError("CIDv0 is not accepted; expected a CIDv1")
    version, pos = _read_varint(raw, 0)
    if version != 1:
        raise InvalidCidError(f"CID version {version} is not accepted; expected 1")
    codec, pos = _read_varint(raw, pos)
    if codec not in _CODEC_NAMES:
        raise InvalidCidError(f"CID codec 0x{codec:x} is not accepted; expected raw or dag-pb")
    hash_code, pos = _read_varint(raw, pos)
    if hash_code != _SHA2_256:
        raise InvalidCidError(f"CID hash 0x{hash_code:x} is not accepted; expected sha2-256")
    digest_len, pos = _read_varint(raw, pos)
    if pos != 4:
        raise InvalidCidError("CID header uses non-minimal varints")
    if digest_len != _DIGEST_LEN or len(raw) != _CID_LEN:
        raise InvalidCidError(
            f"CID digest must be {_DIGEST_LEN} bytes in a {_CID_LEN}-byte CID, "
            f"got digest length {digest_len} in {len(raw)} bytes"
        )


def cid_from_bytes(raw: bytes) -> str:
    """Print a binary CIDv1 in the base32 text form; rejects what :func:`validate_cid` would."""
    raw = bytes(raw)
    _check_binary(raw)
    return _MULTIBASE_BASE32 + _base32(raw)


def cid_to_bytes(cid: str) -> bytes:
    """Binary CIDv1 of a validated CID string (what dag-pb links and contracts carry)."""
    if not isinstance(cid, str):
        raise InvalidCidError(f"CID must be a string, got {type(cid).__name__}")
    if cid.startswith("Qm"):
        raise InvalidCidError(
            f"CIDv0 {cid!r} is not accepted; expected a CIDv1 in base32 ('bafk…' or 'bafy…')"
        )
    if not cid or cid[0] != _MULTIBASE_BASE32:
        raise InvalidCidError(
            f"CID {cid!r} does not use multibase 'b' (base32 lower case); "
            "expected a CIDv1 such as 'bafk…' or 'bafy…'"
        )
    body = cid[1:]
    if not body or not set(body) <= _BASE32_ALPHABET:
        raise InvalidCidError(f"CID {cid!r} contains characters outside lower-case base32")
    try:
        raw = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
    except binascii.Error as exc:
        raise InvalidCidError(f"CID {cid!r} has an impossible base32 length") from exc
    _check_binary(raw)
    if _base32(raw) != body:
        raise InvalidCidError(f"CID {cid!r} is not in canonical base32 form")
    return raw


def validate_cid(cid: str) -> str:
    """Return ``cid`` unchanged if this project accepts it, else raise :class:`InvalidCidError`.

    Accepted: CIDv1, multibase base32 lower case, sha2-256, codec raw or dag-pb.
    """
    cid_to_bytes(cid)
    return cid

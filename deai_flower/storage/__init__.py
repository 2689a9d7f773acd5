"""Content-addressed storage of model blobs.

Every blob is named by the IPFS CID of its bytes (:mod:`.cid`), so a CID recorded on
chain identifies exactly one blob whichever store holds it. Stores implement
:class:`ContentStore`: :class:`LocalStore` is the embedded, daemon-free one,
:class:`IpfsStore` an IPFS node reached through its RPC API. Both re-verify every blob
they return against its CID. The blobs themselves are canonical safetensors files built
and checked by :mod:`.blob`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from deai_flower.protocol.cid import (
    cid_from_bytes,
    cid_to_bytes,
    compute_cid,
    compute_cid_of_file,
    validate_cid,
)
from deai_flower.storage.local import LocalStore

if TYPE_CHECKING:
    from deai_flower.protocol.blob import ALLOWED_DTYPES, array_spec, decode_arrays, encode_arrays
    from deai_flower.storage.ipfs import DEFAULT_API_ADDR, IpfsStore

# Re-exported on first use: the blob codec pulls in numpy and the IPFS client requests,
# which `deai store add` on the embedded store does not need.
_LAZY = {
    "ALLOWED_DTYPES": "deai_flower.protocol.blob",
    "array_spec": "deai_flower.protocol.blob",
    "decode_arrays": "deai_flower.protocol.blob",
    "encode_arrays": "deai_flower.protocol.blob",
    "DEFAULT_API_ADDR": "deai_flower.storage.ipfs",
    "IpfsStore": "deai_flower.storage.ipfs",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALLOWED_DTYPES",
    "ContentStore",
    "DEFAULT_API_ADDR",
    "IpfsStore",
    "LocalStore",
    "array_spec",
    "cid_from_bytes",
    "cid_to_bytes",
    "compute_cid",
    "compute_cid_of_file",
    "decode_arrays",
    "encode_arrays",
    "validate_cid",
]


@runtime_checkable
class ContentStore(Protocol):
    """What the engine needs from a blob store, whatever backs it.

    Implementations must return from :meth:`put` the CID :func:`compute_cid` gives for
    the same bytes, and must verify in :meth:`get` that the bytes they return hash to
    the requested CID, raising :class:`~deai_flower.errors.TamperedBlobError` if not.
    """

    def put(self, data: bytes, *, cid: str | None = None) -> str:
        """Store ``data``; return its CID. Idempotent. ``cid``, when given, is the CID
        the caller computed for ``data`` (it spares hashing the bytes again)."""
        ...

    def stage(self, data: bytes, *, cid: str) -> str:
        """Prepare to store a blob that must stay secret for now (a committed update);
        return a token for :meth:`publish` or :meth:`discard` (may be empty)."""
        ...

    def publish(self, token: str, *, cid: str) -> bool:
        """Store the blob staged under ``token``; False if there is none to publish, in
        which case the caller must :meth:`put` the bytes itself."""
        ...

    def discard(self, token: str) -> None:
        """Drop a staged blob that will not be published."""
        ...

    def get(self, cid: str) -> bytes:
        """Return the verified bytes of ``cid``; :class:`BlobNotFoundError` if absent."""
        ...

    def has(self, cid: str) -> bool:
        """Whether ``cid`` is available from this store."""
        ...

    def describe(self) -> dict[str, str]:
        """``{"kind": ..., "location": ...}`` for logs and run manifests."""
        ...

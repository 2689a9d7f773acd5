"""A content store backed by an IPFS node's HTTP RPC API, trusting the node for nothing.

Blobs are added the way ``ipfs add --cid-version=1 --raw-leaves`` adds them (CIDv1, raw
leaves, fixed-size 262144-byte chunks, balanced layout), so the node assigns the CID
:func:`~deai_flower.protocol.cid.compute_cid` computes locally, and pinned so the node's
garbage collector keeps them. Two checks make a lying or misconfigured node harmless:

* on :meth:`IpfsStore.put` the CID the node reports must equal the locally computed
  one; a node whose importer settings differ (another chunker, another link limit) is
  refused with both CIDs in the message;
* on :meth:`IpfsStore.get` the bytes the node returns are hashed locally and must
  give the requested CID, else :class:`~deai_flower.errors.TamperedBlobError`.

Every call has a timeout, and a node that cannot be reached or does not answer is
retried a bounded number of times with exponential back-off before
:class:`~deai_flower.errors.StoreUnavailableError`, naming the node's address, is
raised. A node that answers with an error is not retried.

The client is built with ``ipfshttpclient.Client(addr)`` rather than
``ipfshttpclient.connect()``: the latter refuses every daemon version from 0.8 on,
which rules out all current Kubo releases, and the calls used here (``add``, ``cat``,
``pin/add``, ``block/stat``, ``id``) have kept their meaning across those versions.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import ipfshttpclient
import requests
from ipfshttpclient import exceptions as ipfs_errors

from deai_flower.errors import (
    BlobNotFoundError,
    ConfigError,
    StoreError,
    StoreUnavailableError,
    TamperedBlobError,
)
from deai_flower.protocol.cid import (
    CHUNK_SIZE,
    CidHasher,
    compute_cid,
    compute_cid_of_file,
    validate_cid,
)

__all__ = ["ADD_OPTIONS", "DEFAULT_API_ADDR", "IpfsStore"]

# ipfshttpclient 0.7 passes urllib3 an argument urllib3 2 deprecates, on every request.
warnings.filterwarnings("ignore", message="The 'strict' parameter is no longer needed", category=FutureWarning)

DEFAULT_API_ADDR = "/ip4/127.0.0.1/tcp/5001"
"""Where Kubo's ``ipfs daemon`` serves its RPC API by default."""

ADD_OPTIONS = {
    "cid-version": "1",
    "raw-leaves": "true",
    "chunker": f"size-{CHUNK_SIZE}",
    "pin": "true",
    "cid-base": "base32",  # js-ipfs would print CIDv1 in base58btc
}
"""``/api/v0/add`` options that reproduce ``ipfs add --cid-version=1 --raw-leaves``.

The chunker is explicit because it is what the locally computed CID assumes, whatever
the node's own default; the balanced layout and the 174-link limit are every
importer's defaults and have no portable option, so a node configured otherwise is
caught by the CID comparison in :meth:`IpfsStore.put`.
"""

_UPLOAD_PART = 1 << 20  # multipart body pieces: fewer, larger writes than the default 4 KiB
_T = TypeVar("_T")
_HAS_TIMEOUT = 1.0
_SERVER_TIMEOUT_MARGIN = 5.0
# How nodes say "I do not have it" (Kubo offline, js-ipfs, or a server-side timeout expiring)
_NOT_FOUND_HINTS = ("not found", "could not find", "no link named", "does not exist", "timed out",
                    "deadline exceeded")


class IpfsStore:
    """Blobs on an IPFS node, addressed by the CIDs :func:`compute_cid` gives.

    Parameters
    ----------
    api_addr:
        Multiaddr of the node's RPC API, e.g. ``/ip4/127.0.0.1/tcp/5001`` (``/dns/host/tcp/
        port/https`` for TLS).
    timeout:
        Seconds to wait for the node to connect and, then, between bytes of a reply.
    retries:
        Extra attempts after a connection failure or timeout (0: a single attempt).
    retry_delay:
        Seconds before the first retry; doubled for each further one.
    max_bytes:
        If set, a download is abandoned once the node has sent more than this many
        bytes, so a hostile node cannot exhaust memory before the CID check.
    """

    kind = "ipfs"

    def __init__(
        self,
        api_addr: str = DEFAULT_API_ADDR,
        *,
        timeout: float = 30.0,
        retries: int = 2,
        retry_delay: float = 0.5,
        max_bytes: int | None = None,
    ) -> None:
        if timeout <= 0:
            raise ConfigError(f"IPFS timeout must be > 0 seconds (got {timeout})")
        if retries < 0:
            raise ConfigError(f"IPFS retries must be >= 0 (got {retries})")
        if retry_delay < 0:
            raise ConfigError(f"IPFS retry delay must be >= 0 (got {retry_delay})")
        if max_bytes is not None and max_bytes < 0:
            raise ConfigError(f"max_bytes must be >= 0 (got {max_bytes})")
        self.api_addr = api_addr
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.retry_delay = float(retry_delay)
        self.max_bytes = max_bytes
        try:
            self._client = ipfshttpclient.Client(api_addr, timeout=self.timeout, chunk_size=_UPLOAD_PART)
        except ipfs_errors.AddressError as exc:
            raise ConfigError(
                f"invalid IPFS API address {api_addr!r}: expected a multiaddr such as {DEFAULT_API_ADDR}"
            ) from exc

    def describe(self) -> dict[str, str]:
        """Which node holds the blobs, for logs and run manifests."""
        return {"kind": self.kind, "location": self.api_addr}

    # ------------------------------------------------------------------ writing

    def put(self, data: bytes, *, cid: str | None = None) -> str:
        """Add and pin ``data``; return its CID once the node has confirmed the same CID.

        ``cid``: the CID the caller already computed for these bytes (spares hashing them
        again; the node's CID must still equal it).
        """
        expected = cid or compute_cid(data)
        reply = self._call("add", lambda client: client.add_bytes(bytes(data), opts=ADD_OPTIONS))
        self._check_added(reply, expected)
        return expected

    def stage(self, data: bytes, *, cid: str) -> str:
        """Nothing to prepare: adding to IPFS announces the blob, so a secret update is
        only added by :meth:`put` at its reveal. Returns an empty token."""
        return ""

    def publish(self, token: str, *, cid: str) -> bool:
        """Never staged anything (see :meth:`stage`): the caller puts the blob."""
        return False

    def discard(self, token: str) -> None:
        return None

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Add and pin a file's bytes, streamed from disk; return their CID."""
        try:
            expected = compute_cid_of_file(path)
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        # Sent as anonymous bytes, like put(): a named file part may carry metadata
        # (name, mode) that some nodes fold into the DAG, which would change the CID.
        reply = self._call("add", lambda client: client.add_bytes(_read_chunks(path), opts=ADD_OPTIONS))
        self._check_added(reply, expected)
        return expected

    def pin(self, cid: str) -> None:
        """Pin ``cid`` (recursively) so the node's garbage collector keeps it."""
        validate_cid(cid)
        self._call(f"pin {cid}", lambda client: client.pin.add(cid, recursive=True), cid=cid)

    def is_pinned(self, cid: str) -> bool:
        """Whether the node holds a recursive pin on ``cid``."""
        validate_cid(cid)
        try:
            self._call(f"pin/ls {cid}", lambda client: client.pin.ls(cid, type="recursive"))
        except StoreError as exc:
            if "not pinned" in str(exc):
                return False
            raise
        return True

    def _check_added(self, reported: object, expected: str) -> None:
        if reported != expected:
            raise StoreError(
                f"IPFS node at {self.api_addr} stored the blob as {reported!r}, but its bytes hash to "
                f"{expected}; the node must add with CIDv1, raw leaves, {CHUNK_SIZE}-byte chunks and "
                "the balanced layout of at most 174 links (the defaults of "
                "`ipfs add --cid-version=1 --raw-leaves`)"
            )

    # ------------------------------------------------------------------ reading

    def get(self, cid: str) -> bytes:
        """The bytes of ``cid`` from the node, verified against ``cid`` locally.

        Raises :class:`BlobNotFoundError` if the node does not have them and
        :class:`TamperedBlobError` if what it sent does not hash to ``cid``.
        """
        validate_cid(cid)
        pieces: list[bytes] = []

        def start() -> Callable[[bytes], object]:
            pieces.clear()  # a retry starts the download over
            return pieces.append

        hasher = self._download(cid, start)
        data = b"".join(pieces)
        self._check_fetched(cid, hasher.finalize())
        return data

    def get_to_file(self, cid: str, path: str | os.PathLike[str]) -> None:
        """Write the verified bytes of ``cid`` to ``path`` without holding them in memory.

        ``path`` is replaced only once the whole blob has been checked.
        """
        validate_cid(cid)
        destination = Path(path)
        try:
            fd, name = tempfile.mkstemp(prefix=".incoming-", dir=destination.parent)
        except OSError as exc:
            raise StoreError(f"cannot create a temporary file next to {destination}: {exc}") from exc
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:

                def start() -> Callable[[bytes], object]:
                    handle.seek(0)  # a retry starts the download over
                    handle.truncate()
                    return handle.write

                hasher = self._download(cid, start)
                self._check_fetched(cid, hasher.finalize())
            os.replace(temp, destination)
        except OSError as exc:
            raise StoreError(f"cannot write {destination}: {exc}") from exc
        finally:
            temp.unlink(missing_ok=True)

    def has(self, cid: str) -> bool:
        """Whether the node holds the root block of ``cid`` locally (not verified; :meth:`get` verifies).

        Asked with ``offline`` so the node answers from its own repository rather than
        searching the network; a node that ignores the flag is cut short by a one-second
        server-side timeout.
        """
        validate_cid(cid)
        try:
            self._stat_root(cid, offline=True, within=min(self.timeout, _HAS_TIMEOUT))
        except BlobNotFoundError:
            return False
        return True

    def _stat_root(self, cid: str, *, offline: bool, within: float) -> None:
        """``block/stat`` of the root, answered by the node within ``within`` seconds or not found.

        The node enforces ``within`` itself and answers "timed out"; this side waits a
        margin longer so that answer arrives instead of a client-side timeout.
        """
        opts = {"timeout": f"{max(1, round(within * 1000))}ms"}
        wait = within + _SERVER_TIMEOUT_MARGIN
        self._call(f"block/stat {cid}", lambda client: client.block.stat(cid, offline=offline, opts=opts, timeout=wait),
                   cid=cid)  # fmt: skip

    def node_id(self) -> dict[str, Any]:
        """The node's ``id`` reply (peer id, agent version): a cheap liveness check."""
        return dict(self._call("id", lambda client: client.id()))

    def _download(self, cid: str, start: Callable[[], Callable[[bytes], object]]) -> CidHasher:
        """Stream ``cat cid`` into the sink ``start()`` gives (once per attempt), hashing as it goes."""

        # A node asked for content it cannot find may search the network for ever; the
        # root's metadata, with a server-side timeout, turns that into "not found".
        self._stat_root(cid, offline=False, within=self.timeout)

        def attempt(client: ipfshttpclient.Client) -> CidHasher:
            sink = start()
            hasher = CidHasher()
            received = 0
            with contextlib.closing(client.cat(cid, stream=True)) as stream:
                for piece in stream:
                    received += len(piece)
                    if self.max_bytes is not None and received > self.max_bytes:
                        raise StoreError(
                            f"blob {cid} from the IPFS node at {self.api_addr} exceeds the limit of "
                            f"{self.max_bytes} bytes; download abandoned"
                        )
                    hasher.update(piece)
                    sink(piece)
            return hasher

        return self._call(f"cat {cid}", attempt, cid=cid)

    def _check_fetched(self, cid: str, actual: str) -> None:
        if actual != cid:
            raise TamperedBlobError(
                f"blob {cid} is corrupted or tampered with: the bytes the IPFS node at "
                f"{self.api_addr} returned hash to {actual}"
            )

    # ------------------------------------------------------------------ transport

    def _call(self, what: str, action: Callable[[ipfshttpclient.Client], _T], *, cid: str | None = None) -> _T:
        """Run ``action`` with bounded retries; map the client's errors to the store's."""
        attempts = self.retries + 1
        delay = self.retry_delay
        for attempt in range(1, attempts + 1):
            try:
                return action(self._client)
            except ipfs_errors.TimeoutError as exc:
                failure: Exception = exc
                reason = f"did not answer {what} within {self.timeout:g} s"
            except (ipfs_errors.ConnectionError, ipfs_errors.ProtocolError) as exc:
                failure = exc
                reason = f"cannot be reached ({_root_cause(exc)})"
            except ipfs_errors.ErrorResponse as exc:
                message = str(exc.args[0] if exc.args else exc)
                if cid is not None and any(hint in message.lower() for hint in _NOT_FOUND_HINTS):
                    raise BlobNotFoundError(
                        f"blob {cid} is not available from the IPFS node at {self.api_addr}: {message}"
                    ) from exc
                raise StoreError(f"IPFS node at {self.api_addr} refused {what}: {message}") from exc
            except ipfs_errors.Error as exc:
                raise StoreError(f"IPFS node at {self.api_addr} failed {what}: {exc}") from exc
            except requests.RequestException as exc:  # raised unwrapped while a reply streams in
                failure = exc
                reason = f"broke off {what} ({_root_cause(exc)})"
            if attempt < attempts:
                time.sleep(delay)
                delay *= 2
        raise StoreUnavailableError(
            f"IPFS node at {self.api_addr} {reason} after {attempts} attempt{'s' if attempts > 1 else ''}; "
            "is an IPFS daemon running there (Kubo: `ipfs daemon`) and is that its RPC API address?"
        ) from failure


def _root_cause(exc: BaseException) -> str:
    """The innermost cause's message (the OS error), not the wrappers around it."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(exc) or type(exc).__name__


def _read_chunks(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """A file's bytes in upload-sized pieces, so a large file is never held in memory."""
    try:
        with open(path, "rb") as source:
            while piece := source.read(_UPLOAD_PART):
                yield piece
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc

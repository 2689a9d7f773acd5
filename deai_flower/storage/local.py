"""The embedded content store: blobs in a local directory, named by their IPFS CID.

It needs no daemon, so simulations and tests run anywhere, yet every blob carries the
CID a real IPFS node would give it (see :mod:`deai_flower.protocol.cid`), so switching a
deployment to IPFS changes no identifier recorded on chain.

Layout: ``<root>/<shard>/<cid>``, where ``<shard>`` is the two characters after the
constant seven-character prefix (``bafkrei`` for raw blocks, ``bafybei`` for dag-pb
roots). Those characters come from the digest, so the shard directories stay small and
evenly filled. Writes go to a temporary file in the same file system, are flushed to
disk and then renamed into place, so a reader never sees a half-written blob and a
crash leaves at most a stray ``.incoming-*`` file.

Nothing read from disk is trusted: :meth:`LocalStore.get` and
:meth:`LocalStore.get_to_file` recompute the CID and refuse bytes that do not match it.
Nor is the directory itself, which others may write to: an entry is opened without
following a symbolic link and without waiting for a writer (a FIFO), and anything but a
regular file (a link, a FIFO, a device, a directory) is refused as a tampered store
before a byte is read. A store given ``max_bytes`` refuses a larger file from its size
alone, and every read stops one byte past the size the file had when opened, so neither
an endless source nor a file that grows while read can exhaust memory.

A committed update must stay secret until its reveal, yet writing 4 MB durably is the
costliest step of a reveal. :meth:`LocalStore.stage` therefore writes it at commit time,
in a background thread, under ``<root>/.staging/`` with owner-only permissions and a
name that is not its CID; :meth:`LocalStore.publish` then makes it public with a rename.
A copy whose owner stopped for good before revealing stays there and may be deleted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from deai_flower.errors import (
    BlobNotFoundError,
    ConfigError,
    StoreError,
    StoreUnavailableError,
    TamperedBlobError,
)
from deai_flower.protocol.cid import CHUNK_SIZE, CidHasher, compute_cid, validate_cid

__all__ = ["LocalStore"]

_PREFIX_LEN = len("bafkrei")
_SHARD_LEN = 2
_TEMP_PREFIX = ".incoming-"
_STAGING_DIR = ".staging"
_COPY_SIZE = 16 * CHUNK_SIZE
_FILE_MODE = 0o644
# Never follow the entry's own name if it is a link; never block opening a FIFO.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
#: Writes staged blobs while their owner goes on (in a simulation: while the next
#: client trains). One thread: staged writes are few and disk-bound.
_STAGING_WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deai-store-staging")


class LocalStore:
    """Content-addressed blob store in a directory; see the module docstring for layout."""

    kind = "local"
    #: Concurrent reads are safe (each opens its own file) and hash on separate cores.
    read_concurrency = os.cpu_count() or 1

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int | None = None) -> None:
        """``max_bytes``: if set, :meth:`get` and :meth:`get_to_file` refuse a stored file
        larger than this from its size, without reading it (as an IPFS store abandons
        such a download)."""
        if max_bytes is not None and max_bytes < 0:
            raise ConfigError(f"max_bytes must be >= 0 (got {max_bytes})")
        self.max_bytes = max_bytes
        self._root = Path(root)
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot create store directory {self._root}: {exc}"
            ) from exc
        self._staged: dict[str, Future[None]] = {}

    def describe(self) -> dict[str, str]:
        """Where blobs live, for logs and run manifests."""
        return {"kind": self.kind, "location": str(self._root)}

    def put(self, data: bytes, *, cid: str | None = None) -> str:
        """Store ``data`` and return its CID; storing the same bytes again is a no-op.

        ``cid``: the CID the caller already computed for exactly these bytes, which spares
        hashing them again. A wrong one names the file wrongly, and every read of it then
        fails verification; nothing wrong is ever returned.
        """
        cid = cid or compute_cid(data)
        target = self._path(cid)
        if _has_size(target, len(data)):
            return cid
        with self._incoming(target.parent) as (handle, temp):
            handle.write(data)
            self._commit(handle, temp, target)
        return cid

    def stage(self, data: bytes, *, cid: str) -> str:
        """Start writing ``data`` (whose CID is ``cid``) durably, hidden; return a token.

        The copy is readable by its owner only and named so that nobody can find it by
        its CID; :meth:`publish` with the token makes it a stored blob, :meth:`discard`
        drops it. The write happens in a background thread, so the caller goes on.
        """
        directory = self._root / _STAGING_DIR
        try:
            directory.mkdir(exist_ok=True)
            fd, token = tempfile.mkstemp(prefix=".staged-", dir=directory)  # owner-only, created atomically
        except OSError as exc:
            raise StoreError(f"cannot create a staging file in {directory}: {exc}") from exc
        self._staged[token] = _STAGING_WRITER.submit(_write_durably, fd, Path(token), bytes(data))
        return token

    def publish(self, token: str, *, cid: str) -> bool:
        """Make the copy staged under ``token`` the blob ``cid``; False if this store
        staged no such copy (another process did, or it was discarded): put it instead.

        Raises :class:`StoreError` if the staged write failed.
        """
        future = self._staged.pop(token, None)
        if future is None:
            return False
        future.result()
        target = self._path(validate_cid(cid))
        try:
            target.parent.mkdir(exist_ok=True)
            os.chmod(token, _FILE_MODE)
            os.replace(token, target)
        except OSError as exc:
            raise StoreError(f"cannot publish staged blob {cid}: {exc}") from exc
        return True

    def discard(self, token: str) -> None:
        """Drop a staged copy that will never be published (its round was abandoned)."""
        future = self._staged.pop(token, None)
        if future is not None:
            with contextlib.suppress(StoreError):
                future.result()
        path = Path(token)
        if path.parent == self._root / _STAGING_DIR:  # never anything outside it
            path.unlink(missing_ok=True)

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Store a file's bytes and return their CID, streaming so size is not bounded by RAM."""
        hasher = CidHasher()
        buffer = bytearray(_COPY_SIZE)
        view = memoryview(buffer)
        try:
            source = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        with source, self._incoming(self._root) as (handle, temp):
            while count := source.readinto(buffer):
                hasher.update(view[:count])
                handle.write(view[:count])
            cid = hasher.finalize()
            target = self._path(cid)
            target.parent.mkdir(exist_ok=True)
            self._commit(handle, temp, target)
        return cid

    def get(self, cid: str) -> bytes:
        """The bytes stored under ``cid``, verified against it.

        Raises :class:`BlobNotFoundError` if absent, :class:`TamperedBlobError` if the
        stored bytes no longer hash to ``cid`` (disk corruption or tampering) or the entry
        is not a regular file, and :class:`StoreError` if it is larger than ``max_bytes``.
        """
        source, size = self._open_blob(cid)
        with source:
            try:
                data = _read_at_most(source, size + 1)  # one byte more: a file that grew fails the CID check
            except OSError as exc:
                raise StoreError(f"cannot read blob {cid}: {exc}") from exc
        actual = compute_cid(data)
        if actual != cid:
            raise TamperedBlobError(_tampered(cid, actual))
        return data

    def get_to_file(self, cid: str, path: str | os.PathLike[str]) -> None:
        """Write the verified bytes of ``cid`` to ``path`` without holding them in memory.

        The destination is replaced only once the whole blob has been checked, so on
        :class:`TamperedBlobError` an existing file at ``path`` is left untouched.
        """
        source, size = self._open_blob(cid)
        remaining = size + 1  # as in get: a file that grows while read is cut off, then fails the check
        destination = Path(path)
        hasher = CidHasher()
        buffer = bytearray(_COPY_SIZE)
        view = memoryview(buffer)
        with source, self._incoming(destination.parent) as (handle, temp):
            while remaining > 0 and (count := source.readinto(view[: min(remaining, len(buffer))])):
                remaining -= count
                hasher.update(view[:count])
                handle.write(view[:count])
            actual = hasher.finalize()
            if actual != cid:
                raise TamperedBlobError(_tampered(cid, actual))
            self._commit(handle, temp, destination)

    def has(self, cid: str) -> bool:
        """Whether a blob is stored under ``cid`` as a regular file (not verified;
        :meth:`get` verifies)."""
        return _is_regular(self._path(validate_cid(cid)))

    def _open_blob(self, cid: str) -> tuple[BinaryIO, int]:
        """Open the stored file of a validated ``cid`` for unbuffered reading; return it
        and its size, once it is known to be a regular file within ``max_bytes``.

        The entry is checked with ``lstat`` before it is opened (so a device is never
        opened) and with ``fstat`` after (so it cannot be swapped in between); opening
        never follows a link and never waits for a FIFO's writer.
        """
        path = self._path(validate_cid(cid))
        try:
            before = path.lstat()
            if not stat.S_ISREG(before.st_mode):
                raise TamperedBlobError(_not_regular(cid, before.st_mode))
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError as exc:
            raise BlobNotFoundError(f"blob {cid} is not in the store at {self._root}") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link put there since the lstat
                raise TamperedBlobError(_not_regular(cid, stat.S_IFLNK)) from exc
            raise StoreError(f"cannot open blob {cid}: {exc}") from exc
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise TamperedBlobError(_not_regular(cid, status.st_mode))
            if self.max_bytes is not None and status.st_size > self.max_bytes:
                raise StoreError(
                    f"blob {cid} in the store is {status.st_size} bytes, over the limit of {self.max_bytes}; not read"
                )
            return open(fd, "rb", buffering=0, closefd=True), status.st_size
        except BaseException:
            os.close(fd)
            raise

    def _path(self, cid: str) -> Path:
        return self._root / cid[_PREFIX_LEN : _PREFIX_LEN + _SHARD_LEN] / cid

    @contextlib.contextmanager
    def _incoming(self, directory: Path) -> Iterator[tuple[BinaryIO, Path]]:
        """A temporary file in ``directory``, removed unless :meth:`_commit` renamed it."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=directory)
        except OSError as exc:
            raise StoreError(f"cannot create a temporary file in {directory}: {exc}") from exc
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle, temp
        except OSError as exc:
            raise StoreError(f"store I/O failed while writing {temp}: {exc}") from exc
        finally:
            temp.unlink(missing_ok=True)

    @staticmethod
    def _commit(handle: BinaryIO, temp: Path, target: Path) -> None:
        """Make the temporary file durable, then atomically give it its final name.

        Blobs are public content (they are meant for IPFS), so the file is made
        world-readable rather than keeping the owner-only mode of a temporary file.
        """
        handle.flush()
        os.fchmod(handle.fileno(), _FILE_MODE)
        os.fsync(handle.fileno())
        os.replace(temp, target)


def _write_durably(fd: int, path: Path, data: bytes) -> None:
    """Write ``data`` to the open file ``fd`` (at ``path``), flush it to disk, close it."""
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise StoreError(f"cannot write staged blob {path.name}: {exc}") from exc


def _read_at_most(source: BinaryIO, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``source``, stopping at end of file."""
    pieces: list[bytes] = []
    while limit > 0:
        piece = source.read(limit)
        if not piece:
            break
        pieces.append(piece)
        limit -= len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _not_regular(cid: str, mode: int) -> str:
    kinds = [
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    kind = next((name for test, name in kinds if test(mode)), f"of file type {stat.S_IFMT(mode):o}")
    return f"blob {cid} in the store is {kind}, not a regular file: the store has been tampered with; not read"


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _tampered(cid: str, actual: str) -> str:
    return f"blob {cid} is corrupted or tampered with: its stored bytes hash to {actual}"


def _has_size(path: Path, size: int) -> bool:
    """Whether ``path`` is a regular file of ``size`` bytes (anything else is replaced)."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISREG(status.st_mode) and status.st_size == size

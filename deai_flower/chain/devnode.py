"""A local anvil development node for integration tests and benchmarks.

anvil (npm ``@foundry-rs/anvil``) runs offline once installed. :func:`find_anvil`
looks for it (``DEAI_ANVIL``, ``PATH``, a ``node_modules`` folder, the user cache) and
:func:`install_anvil` installs the pinned release with npm into the user cache, outside
any source tree. :class:`AnvilNode` starts it on a free loopback port and stops it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO

from ..errors import ChainUnavailableError
from ..processes import stop_process_group
from .node import ChainNode, connect_rpc

#: The npm release installed when no anvil is found.
ANVIL_NPM_SPEC = "@foundry-rs/anvil@1.7.1"
#: Environment variable naming an anvil binary to use instead of searching.
ANVIL_ENV = "DEAI_ANVIL"


def npm_cache_dir() -> Path:
    """Where :func:`install_anvil` installs npm packages (the user's cache directory)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deai-flower" / "npm"


@contextmanager
def npm_prefix_lock(prefix: Path) -> Iterator[None]:
    """Hold ``prefix`` for one ``npm install`` at a time, across processes.

    Test workers running in parallel may all find a package missing; the first installs
    it while the others wait, then find it installed. anvil and js-ipfs share the prefix,
    and npm rewrites its whole ``node_modules`` on each install.
    """
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".install.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def _node_modules_binary(node_modules: Path) -> Path | None:
    """The platform binary inside ``node_modules`` (started directly, so stopping it is
    stopping anvil), else the npm wrapper script."""
    for candidate in sorted(node_modules.glob("@foundry-rs/anvil-*/bin/anvil")):
        if os.access(candidate, os.X_OK):
            return candidate
    wrapper = node_modules / ".bin" / "anvil"
    return wrapper if wrapper.exists() else None


def find_anvil(*, search_from: Path | None = None) -> Path | None:
    """An anvil executable, or ``None``.

    Looks at ``$DEAI_ANVIL``, then ``anvil`` on ``PATH``, then ``node_modules`` in
    ``search_from`` and its parents, then the npm cache of :func:`install_anvil`.
    """
    explicit = os.environ.get(ANVIL_ENV)
    if explicit:
        return Path(explicit)
    on_path = shutil.which("anvil")
    if on_path:
        return Path(on_path)
    start = (search_from or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "node_modules").is_dir():
            found = _node_modules_binary(folder / "node_modules")
            if found is not None:
                return found
    cache = npm_cache_dir() / "node_modules"
    return _node_modules_binary(cache) if cache.is_dir() else None


def install_anvil(*, timeout: float = 600.0) -> Path:
    """Install the pinned anvil with npm into :func:`npm_cache_dir`; return the binary.

    Raises :class:`ChainUnavailableError` when npm is missing or the install fails.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise ChainUnavailableError("npm is not installed, so anvil cannot be installed (install Node.js and npm)")
    prefix = npm_cache_dir()
    # Saved in the prefix's package.json: npm removes what it does not list when it
    # installs something else there (js-ipfs).
    cmd = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--save-exact", ANVIL_NPM_SPEC]
    with npm_prefix_lock(prefix):
        binary = _node_modules_binary(prefix / "node_modules")
        if binary is not None:  # installed meanwhile by another process
            return binary
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ChainUnavailableError(f"npm install {ANVIL_NPM_SPEC} did not finish within {timeout:.0f}s") from exc
        binary = _node_modules_binary(prefix / "node_modules")
    if done.returncode != 0 or binary is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ChainUnavailableError(f"npm install {ANVIL_NPM_SPEC} failed: {tail[0]}")
    return binary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AnvilNode:
    """An anvil process on a free loopback port: ``with AnvilNode(binary) as anvil: ...``.

    ``url`` is its JSON-RPC endpoint; :meth:`connect` gives a :class:`ChainNode`.
    """

    def __init__(self, binary: Path, *, port: int | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, *, timeout: float = 60.0) -> AnvilNode:
        """Start anvil and wait until it answers JSON-RPC."""
        cmd = [str(self.binary), "--host", "127.0.0.1", "--port", str(self.port), "--silent", *self._extra_args]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        # A session of its own: stopping it signals anvil and nothing else.
        self._process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace").strip()[-500:]
                status = self._process.returncode
                self.stop()
                raise ChainUnavailableError(f"anvil exited with status {status}: {err}")
            try:
                connect_rpc(self.url, timeout=2.0)
                return self
            except ChainUnavailableError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ChainUnavailableError(f"anvil did not answer at {self.url} within {timeout:.0f}s") from None
                time.sleep(0.1)

    def connect(self) -> ChainNode:
        """A :class:`ChainNode` on this anvil."""
        return connect_rpc(self.url)

    def stop(self) -> None:
        """Stop anvil (its process group, in case a wrapper started it)."""
        process, self._process = self._process, None
        log, self._log = self._log, None
        try:
            if process is not None:
                stop_process_group(process, timeout=10)
        finally:
            if log is not None:
                log.close()

    def __enter__(self) -> AnvilNode:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

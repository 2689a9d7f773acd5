"""A throwaway, offline IPFS node on loopback, for tests, benchmarks and local trials.

:class:`IpfsDaemon` initialises a fresh repository in a temporary directory, configures
it to reach nobody (no swarm addresses, no bootstrap peers, no local discovery, API and
gateway on loopback ports the node picks itself), starts the daemon with
``--offline``, reads the API address it prints and removes everything on :meth:`stop`.

Two implementations are supported, in this order of preference:

* **Kubo** (the ``ipfs`` binary of the Go implementation), when it is on ``PATH``;
* **js-ipfs** from npm (package ``ipfs`` 0.66), which runs fully offline. It is looked
  for in an npm prefix under the user's cache directory and, when ``install=True`` and
  ``npm`` is available, installed there (a few minutes, once). js-ipfs predates
  Node 20's ``Promise.withResolvers``; the daemon is started with a small preload
  script that provides it.

Nothing here is needed to *use* an IPFS node: :class:`~deai_flower.storage.ipfs.IpfsStore`
talks to any node's RPC API.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from deai_flower.errors import StoreUnavailableError

__all__ = ["JS_IPFS_VERSION", "DaemonCommand", "IpfsDaemon", "find_daemon", "js_ipfs_prefix"]

JS_IPFS_VERSION = "0.66.1"
"""The npm ``ipfs`` release installed when js-ipfs is needed."""

_POLYFILL = """\
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
"""
# "RPC API server listening on …" (Kubo), "API server listening on …" (older Kubo),
# "HTTP API listening on …/http" (js-ipfs)
_API_LINE = re.compile(r"API (?:server )?listening on (/\S+?)(?:/http)?\s*$")
_READY_LINE = "Daemon is ready"


@dataclass(frozen=True)
class DaemonCommand:
    """How to run one IPFS implementation: ``argv`` is followed by the subcommand."""

    kind: str  # "kubo" | "js-ipfs"
    argv: tuple[str, ...]
    needs_polyfill: bool = False


def js_ipfs_prefix() -> Path:
    """The npm prefix js-ipfs is installed into: ``$XDG_CACHE_HOME/deai-flower/npm``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "deai-flower" / "npm"


def _js_ipfs_cli(prefix: Path) -> Path:
    return prefix / "node_modules" / "ipfs" / "src" / "cli.js"


def find_daemon(*, install: bool = False, prefer: str | None = None) -> DaemonCommand:
    """The IPFS implementation to run: Kubo if on ``PATH``, else js-ipfs from npm.

    ``prefer`` (``"kubo"`` or ``"js-ipfs"``) restricts the choice. With ``install``,
    a missing js-ipfs is installed with ``npm install --prefix`` (see
    :func:`js_ipfs_prefix`). Raises :class:`StoreUnavailableError` saying what is
    missing when no implementation can be run.
    """
    if prefer not in (None, "kubo", "js-ipfs"):
        raise ValueError(f"prefer must be 'kubo', 'js-ipfs' or None (got {prefer!r})")
    kubo = shutil.which("ipfs")
    if kubo and prefer in (None, "kubo"):
        return DaemonCommand("kubo", (kubo,))
    if prefer == "kubo":
        raise StoreUnavailableError("Kubo is not installed: no `ipfs` on PATH")
    node = shutil.which("node")
    if node is None:
        raise StoreUnavailableError("no IPFS implementation: neither Kubo (`ipfs`) nor Node.js (`node`) is on PATH")
    cli = _js_ipfs_cli(js_ipfs_prefix())
    if not cli.is_file():
        if not install:
            raise StoreUnavailableError(f"js-ipfs is not installed under {js_ipfs_prefix()}")
        _install_js_ipfs(js_ipfs_prefix())
    return DaemonCommand("js-ipfs", (node, str(cli)), needs_polyfill=True)


def _install_js_ipfs(prefix: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise StoreUnavailableError("js-ipfs is not installed and `npm` is not on PATH to install it")
    prefix.mkdir(parents=True, exist_ok=True)
    # One npm install into the prefix at a time (parallel test workers; anvil installs
    # there too): the lock of deai_flower.chain.devnode.npm_prefix_lock, not imported
    # here to keep the chain stack out of the store's imports.
    with open(prefix / ".install.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if _js_ipfs_cli(prefix).is_file():  # installed meanwhile by another process
            return
        result = subprocess.run(
            [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", f"ipfs@{JS_IPFS_VERSION}"],
            capture_output=True, text=True, timeout=1800, check=False,
        )  # fmt: skip
    if result.returncode != 0 or not _js_ipfs_cli(prefix).is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise StoreUnavailableError(f"npm could not install ipfs@{JS_IPFS_VERSION}: {' | '.join(tail)}")


class IpfsDaemon:
    """An offline IPFS daemon with its own temporary repository; use as a context manager.

    >>> with IpfsDaemon(find_daemon(install=True)) as daemon:  # doctest: +SKIP
    ...     store = IpfsStore(daemon.api_addr)
    """

    def __init__(self, command: DaemonCommand, *, startup_timeout: float = 120.0) -> None:
        self.command = command
        self.startup_timeout = startup_timeout
        self.api_addr = ""
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[str] | None = None
        self._log: deque[str] = deque(maxlen=40)

    @property
    def kind(self) -> str:
        return self.command.kind

    def __enter__(self) -> IpfsDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Initialise a repository, start the daemon; return its RPC API multiaddr."""
        self._scratch = tempfile.TemporaryDirectory(prefix="deai-ipfs-")
        scratch = Path(self._scratch.name)
        env = {**os.environ, "IPFS_PATH": str(scratch / "repo")}
        argv = list(self.command.argv)
        if self.command.needs_polyfill:
            polyfill = scratch / "promise-with-resolvers.cjs"
            polyfill.write_text(_POLYFILL, encoding="utf-8")
            argv[1:1] = ["--require", str(polyfill)]
        try:
            init = ["init", "--profile=test"] if self.kind == "kubo" else ["init", "--empty-repo"]
            result = subprocess.run(argv + init, env=env, capture_output=True, text=True,
                                    timeout=self.startup_timeout, check=False)  # fmt: skip
            if result.returncode != 0:
                raise StoreUnavailableError(f"{self.kind} init failed: {(result.stderr or result.stdout).strip()}")
            _isolate(scratch / "repo" / "config")
            self._process = subprocess.Popen(
                argv + ["daemon", "--offline"], env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            )  # fmt: skip
            self.api_addr = self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self.api_addr

    def _wait_until_ready(self) -> str:
        assert self._process is not None and self._process.stdout is not None
        found: dict[str, str] = {}
        ready = threading.Event()

        def read(stream) -> None:  # type: ignore[no-untyped-def]
            for line in stream:
                self._log.append(line.rstrip())
                match = _API_LINE.search(line)
                if match and "api" not in found:
                    found["api"] = match.group(1)
                if _READY_LINE in line:
                    ready.set()
            ready.set()  # the process closed its output: it has exited

        threading.Thread(target=read, args=(self._process.stdout,), daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while not ready.wait(0.1):
            if time.monotonic() > deadline:
                raise StoreUnavailableError(
                    f"{self.kind} daemon not ready within {self.startup_timeout:g} s: {self.log_tail()}"
                )
        if self._process.poll() is not None or "api" not in found:
            raise StoreUnavailableError(f"{self.kind} daemon did not start: {self.log_tail()}")
        return found["api"]

    def log_tail(self) -> str:
        """The daemon's last output lines, joined, for error messages."""
        return " | ".join(self._log) or "(no output)"

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL) and delete its repository."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def _isolate(config_path: Path) -> None:
    """Rewrite a fresh repository's config so the node reaches no one and listens on loopback only."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    addresses = config.setdefault("Addresses", {})
    addresses["Swarm"] = []
    addresses["API"] = "/ip4/127.0.0.1/tcp/0"
    addresses["Gateway"] = "/ip4/127.0.0.1/tcp/0"
    if "RPC" in addresses:  # js-ipfs's gRPC-over-websocket endpoint
        addresses["RPC"] = "/ip4/127.0.0.1/tcp/0"
    if "Delegates" in addresses:
        addresses["Delegates"] = []
    config["Bootstrap"] = []
    discovery = config.setdefault("Discovery", {})
    discovery["MDNS"] = {**discovery.get("MDNS", {}), "Enabled": False}
    if "webRTCStar" in discovery:
        discovery["webRTCStar"] = {"Enabled": False}
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")

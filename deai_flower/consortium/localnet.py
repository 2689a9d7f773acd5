"""A whole consortium on one machine, as real processes: for tests, demos and benchmarks.

:class:`LocalConsortium` starts anvil, a SuperLink with TLS and SuperNode authentication
(``flower-superlink``), and SuperNodes (``flower-superexec``/``flwr-clientapp`` are spawned
by Flower itself, so the environment's ``bin`` must be on ``PATH``); it sets the
consortium up with the same functions ``deai consortium`` calls, submits runs with
``flwr run`` through a connection in its own ``FLWR_HOME``, judges them with ``flwr ls``
and stops every process it started (each in its own session, so Flower's children stop
with it). The shell version for users is ``examples/hospital-silos/run_demo.sh``.

Silos run pinned, as the runbook says: the consortium approves one release (the FAB this
checkout builds, snapshotted under ``work/release`` so later edits to the checkout do not
change what runs), and every SuperNode is started with ``--isolation process`` next to a
``deai release gate`` that runs its ClientApps only for that FAB's SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from eth_account.signers.local import LocalAccount

from ..chain.devnode import AnvilNode, find_anvil, free_port, install_anvil
from ..chain.keys import keystore_key
from ..errors import DeaiError
from ..processes import stop_process_group
from .credentials import SiloKey, SupernodeKeys, TlsFiles, create_keystore, create_supernode_keys, create_tls
from .release import build_fab, unpack_fab
from .setup import CreatedRun, create_run, deploy, fund, register

__all__ = ["LocalConsortium", "Silo", "SuperNodeProcess"]

#: The project root (``flwr run`` builds the app from it).
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONNECTION = "consortium"


class LocalnetError(DeaiError):
    """A process of the local consortium failed to start or the run did not end well."""


@dataclass
class Silo:
    """One silo's files: its chain key, SuperNode key pair, data, ledger directory."""

    name: str
    home: Path
    key: SiloKey
    supernode: SupernodeKeys
    data_path: Path
    eval_path: Path | None

    def node_config(self, *, chain_url: str, store: str, **extra: Any) -> dict[str, Any]:
        config: dict[str, Any] = {"keystore": str(self.key.keystore), "password-file": str(self.key.password_file),
                                  "data-path": str(self.data_path), "chain-url": chain_url, "store": store,
                                  "ledger-dir": str(self.home / "ledger"), "device": "cpu", "threads": 1}  # fmt: skip
        if self.eval_path is not None:
            config["eval-data-path"] = str(self.eval_path)
        config.update(extra)
        return config


def toml_node_config(config: dict[str, Any]) -> str:
    """``--node-config``'s value: ``key="value" key=1 ...`` (TOML-quoted strings; Flower's
    parser takes no escaped quote, so a value holding ``"`` is refused)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        if '"' in str(v):
            raise LocalnetError(f"a node config value cannot hold a double quote: {v!r}")
        return json.dumps(str(v))  # a TOML basic string for the characters paths use

    return " ".join(f"{k}={value(v)}" for k, v in config.items())


@dataclass
class SuperNodeProcess:
    """A SuperNode and its code gate, in one process group: stopping the node (even with
    SIGKILL) stops the gate and the ClientApp it is running, as it stops a ``flwr-clientapp``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int
    gate_log_path: Path
    node_id: int | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def gate_log(self) -> str:
        """What the gate and the ClientApps it ran wrote (a refused FAB is logged here)."""
        return self.gate_log_path.read_text(errors="replace") if self.gate_log_path.exists() else ""


#: Seconds between two ``flwr`` queries while waiting: each starts a ``flwr`` process, about
#: a CPU-second, and polling every 2 s (0.5 s in a test's own loop) took half a core to a
#: whole one per deployment for the whole run.
POLL_S = 5.0


@dataclass
class LocalConsortium:
    """Anvil, a store directory, a TLS + auth SuperLink and SuperNodes under ``work``."""

    work: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    supernodes: dict[str, SuperNodeProcess] = field(default_factory=dict)
    silos: dict[str, Silo] = field(default_factory=dict)
    anvil: AnvilNode | None = None
    tls: TlsFiles | None = None
    link_port: int = 0
    contract: str = ""
    admin: SiloKey | None = None
    #: The approved release: an app directory that builds exactly the FAB whose hash the silos pin.
    release: Path | None = None
    release_sha256: str = ""
    _logs: list[IO[bytes]] = field(default_factory=list)

    # ------------------------------------------------------------------ set-up

    @property
    def rpc(self) -> str:
        assert self.anvil is not None
        return self.anvil.url

    @property
    def store(self) -> str:
        return f"local:{self.work / 'store'}"

    @property
    def env(self) -> dict[str, str]:
        """The environment of Flower's processes: its own FLWR_HOME; this Python's bin on PATH."""
        bin_dir = str(Path(sys.executable).parent)
        return {**os.environ, "FLWR_HOME": str(self.work / "flwr-home"),
                "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}  # fmt: skip

    def start_chain(self) -> None:
        binary = find_anvil(search_from=PROJECT_ROOT) or install_anvil()
        self.anvil = AnvilNode(binary).start()

    def admin_account(self) -> LocalAccount:
        assert self.admin is not None
        return keystore_key(self.admin.keystore, password_file=self.admin.password_file)

    def set_up_chain(self) -> str:
        """The admin key, funded; the contract, deployed. Returns its address."""
        self.admin = create_keystore(self.work / "consortium", "coordinator", kdf="pbkdf2", iterations=2**10)
        fund(self.rpc, [self.admin.address])
        self.contract, _ = deploy(self.rpc, self.admin_account())
        return self.contract

    def add_silo(self, name: str, *, data_path: Path, eval_path: Path | None, registered: bool = True) -> Silo:
        """A silo's own keys (chain keystore + SuperNode pair); registered on chain unless told not to."""
        home = self.work / name
        key = create_keystore(home / "keys", "chain", kdf="pbkdf2", iterations=2**10)
        supernode = create_supernode_keys(home / "keys", "supernode")
        fund(self.rpc, [key.address])
        if registered:
            register(self.rpc, self.contract, self.admin_account(), silo=key.address,
                     supernode_key=supernode.public_key.read_bytes())  # fmt: skip
        silo = self.silos[name] = Silo(name, home, key, supernode, data_path, eval_path)
        return silo

    def approve_release(self, app: Path = PROJECT_ROOT) -> str:
        """Build the FAB of ``app`` (Flower's build) and snapshot it as the release every silo
        started afterwards pins; its SHA-256."""
        fab = build_fab(app)
        release = self.work / "release" / "app"
        if release.exists():
            shutil.rmtree(release)
        self.release = unpack_fab(fab, release)
        self.release_sha256 = hashlib.sha256(fab).hexdigest()
        return self.release_sha256

    def create_run(self, overrides: list[str]) -> CreatedRun:
        return create_run(self.rpc, self.contract, self.admin_account(), store_location=self.store,
                          overrides=overrides)  # fmt: skip

    # ------------------------------------------------------------------ Flower processes

    def _log_path(self, name: str) -> Path:
        logs = self.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return logs / f"{name}.log"

    def _spawn(self, name: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        path = self._log_path(name)
        log = path.open("ab")
        self._logs.append(log)
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.work,
                                   start_new_session=True)  # fmt: skip
        self.processes.append(process)
        return process, path

    def start_superlink(self, *, timeout: float = 60.0) -> None:
        self.tls = self.tls or create_tls(self.work / "tls")
        self.link_port = self.link_port or free_port()
        process, log = self._spawn("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(self.tls.ca_cert), "--ssl-certfile",
            str(self.tls.server_cert), "--ssl-keyfile", str(self.tls.server_key), "--enable-supernode-auth",
            "--host", "127.0.0.1", "--port", str(self.link_port), "--database", str(self.work / "superlink.db"),
            "--disable-runtime-dependency-installation",
        ])  # fmt: skip
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise LocalnetError(f"flower-superlink exited with {process.returncode}: {_tail(log)}")
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.link_port}/health", context=context,
                                            timeout=2) as answer:  # fmt: skip
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise LocalnetError(f"the SuperLink did not answer /health within {timeout:.0f}s: {_tail(log)}")
            time.sleep(0.3)
        home = self.work / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.link_port}"\nroot-certificates = "{self.tls.ca_cert}"\n', encoding="utf-8")

    def flwr(self, *args: str, timeout: float = 120.0, check: bool = True) -> str:
        """Run ``flwr ARGS`` against this SuperLink; its standard output."""
        done = subprocess.run(["flwr", *args], capture_output=True, text=True, env=self.env, timeout=timeout,
                              cwd=PROJECT_ROOT, check=False)  # fmt: skip
        if check and done.returncode != 0:
            raise LocalnetError(f"flwr {' '.join(args)} exited {done.returncode}: {(done.stdout + done.stderr)[-800:]}")
        return done.stdout

    def register_supernode(self, silo: Silo) -> int:
        """``flwr supernode register``: the SuperLink admits this silo's SuperNode key; its node id."""
        out = self.flwr("supernode", "register", str(silo.supernode.public_key), CONNECTION)
        found = re.search(r"SuperNode (\d+) registered", out)
        if found is None:
            raise LocalnetError(f"flwr supernode register said: {out.strip()[-300:]}")
        return int(found.group(1))

    def start_supernode(self, silo: Silo, node_config: dict[str, Any], *, name: str | None = None,
                        approved_fabs: list[str] | None = None, pinned: bool = True) -> SuperNodeProcess:  # fmt: skip
        """A silo's SuperNode (``--isolation process``) and its code gate, which runs the
        ClientApps only for ``approved_fabs`` (default: the release, approved on first use).
        ``pinned=False``: Flower's own ``flwr-clientapp``, which runs whatever FAB a run
        brings (only for measuring plain Flower apps next to this one; never for a silo).
        The silo's terms pin the consortium's contract unless ``node_config`` names one."""
        assert self.tls is not None
        name = name or silo.name
        if self.contract:
            node_config = {"contract": self.contract, **node_config}
        port = free_port()
        supernode = [
            "flower-supernode", "--root-certificates", str(self.tls.ca_cert), "--superlink",
            f"127.0.0.1:{self.link_port}", "--auth-supernode-private-key", str(silo.supernode.private_key),
            "--port", str(port), "--node-config", toml_node_config(node_config),
        ]  # fmt: skip
        gate_log = self._log_path(f"{name}-gate")
        if not pinned:
            process, log = self._spawn(name, supernode)
            node = self.supernodes[name] = SuperNodeProcess(name, process, log, port, gate_log)
            return node
        if approved_fabs is None:
            approved_fabs = [self.release_sha256 or self.approve_release()]
        supernode += ["--isolation", "process"]
        gate = ["deai", "release", "gate", "--runtime-api-address", f"127.0.0.1:{port}", "--insecure",
                *[arg for digest in approved_fabs for arg in ("--approved-fab", digest)]]  # fmt: skip
        # One session for both (a process cannot join a group of another session): the
        # shell starts the gate in the background, then becomes the SuperNode.
        script = f"{shlex.join(gate)} >>{shlex.quote(str(gate_log))} 2>&1 & exec {shlex.join(supernode)}"
        process, log = self._spawn(name, ["bash", "-c", script])
        node = self.supernodes[name] = SuperNodeProcess(name, process, log, port, gate_log)
        return node

    def gate_ids(self, name: str) -> list[int]:
        """The process ids of the code gate of the SuperNode ``name`` (the SuperNode's children
        running ``deai release gate``; the ClientApps it runs are children of its forkserver, and a
        paused gate starts none)."""
        node = self.supernodes[name]
        return [pid for pid in _children(node.process.pid) if b"gate" in _cmdline(pid)]

    @contextlib.contextmanager
    def holding(self, *names: str) -> Iterator[None]:
        """Hold the silos ``names``: their code gates are paused (SIGSTOP), so their SuperNodes
        stay online (heartbeats go on) and keep the messages they get, but no new ClientApp
        starts until the block ends; the ClientApps already running go on. A test holds the
        live silos this way while it restarts another, so that no round is played without it."""
        pids = [pid for name in names for pid in self.gate_ids(name)]
        if len(pids) < len(names):
            raise LocalnetError(f"not every one of {', '.join(names)} has a running code gate")
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode list``: every SuperNode the SuperLink has registered, with its status."""
        return list(json.loads(self.flwr("supernode", "list", CONNECTION, "--format", "json")).get("nodes", []))

    def wait_for_nodes(self, count: int, *, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until ``count`` SuperNodes are online; their ``flwr supernode list`` entries."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.nodes()
            online = [n for n in nodes if str(n.get("status", "")).startswith("online")]
            if len(online) >= count:
                return online
            if time.monotonic() > deadline:
                raise LocalnetError(f"{len(online)} of {count} SuperNodes online after {timeout:.0f}s: {nodes}")
            time.sleep(2.0)  # at start-up: nodes connect within seconds

    def wait_until_offline(self, node_id: int, *, timeout: float = 120.0) -> None:
        """Wait until the SuperLink reports SuperNode ``node_id`` offline: a node killed without
        saying goodbye stays online there for two missed heartbeats (60 s by default), and a
        SuperNode started with its key before then is refused activation (exit code 305)."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.nodes()
            status = next((str(n.get("status", "")) for n in nodes if int(n.get("node-id", -1)) == node_id), "")
            if status and not status.startswith("online"):
                return
            if time.monotonic() > deadline:
                raise LocalnetError(f"SuperNode {node_id} still {status or 'unlisted'} after {timeout:.0f}s")
            time.sleep(POLL_S)

    def run(self, run_config: dict[str, Any], *, app: Path | None = None) -> int:
        """``flwr run`` the app (default: the approved release) with ``run_config``; Flower's run id."""
        if app is None:
            if self.release is None:
                self.approve_release()
            app = self.release
        assert app is not None
        out = self.flwr("run", str(app), CONNECTION, "--format", "json", "--run-config",
                        toml_node_config(run_config), timeout=300)  # fmt: skip
        return int(json.loads(out)["run-id"])

    def status(self, flwr_run: int) -> str:
        runs = json.loads(self.flwr("ls", CONNECTION, "--run-id", str(flwr_run), "--format", "json"))["runs"]
        return str(runs[0]["status"]) if runs else ""

    def wait(self, flwr_run: int, *, timeout: float) -> str:
        """Wait for the run to finish; its final status (``finished:completed`` when it went well)."""
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.status(flwr_run)
            if status.startswith("finished"):
                return status
            time.sleep(POLL_S)
        return f"{status} (still, after {timeout:.0f}s)"

    def server_log(self, flwr_run: int) -> str:
        return self.flwr("log", str(flwr_run), CONNECTION, "--show", check=False, timeout=60)

    def coordinator_run_config(self, created: CreatedRun, output_dir: Path) -> dict[str, Any]:
        assert self.admin is not None
        return {"mode": "deployment", "contract": created.contract, "run-id": created.run_id, "chain-url": self.rpc,
                "store": self.store,
                "keystore": str(self.admin.keystore), "password-file": str(self.admin.password_file),
                "output-dir": str(output_dir)}  # fmt: skip

    # ------------------------------------------------------------------ tear-down

    def stop_process(self, process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM) -> None:
        """Stop a process this consortium started, with everything it spawned."""
        stop_process_group(process, sig=sig)

    def stop(self) -> None:
        for process in reversed(self.processes):
            self.stop_process(process)
        self.processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self.anvil is not None:
            self.anvil.stop()
            self.anvil = None

    def __enter__(self) -> LocalConsortium:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _children(pid: int) -> list[int]:
    """The ids of the processes whose parent is ``pid`` (from ``/proc``)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _tail(path: Path, lines: int = 12) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.strip().splitlines()[-lines:])


def tools_missing() -> list[str]:
    """Flower's deployment executables not found next to this Python or on PATH."""
    bin_dir = Path(sys.executable).parent
    return [t for t in ("flwr", "flower-superlink", "flower-supernode", "flower-superexec", "flwr-clientapp")
            if not (bin_dir / t).exists() and shutil.which(t) is None]


def serve_ipfs(api_file: Path) -> None:
    """Run a throwaway offline IPFS node (Kubo when on PATH, else js-ipfs from npm,
    installed on first use) until SIGTERM/SIGINT; its RPC API multiaddr goes to ``api_file``."""
    from ..storage.ipfs_daemon import IpfsDaemon, find_daemon

    stop = {"now": False}

    def _stop(_signum: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with IpfsDaemon(find_daemon(install=True)) as daemon:
        api_file.write_text(daemon.api_addr + "\n", encoding="utf-8")
        print(f"{daemon.kind} RPC API at {daemon.api_addr}", flush=True)
        while not stop["now"]:
            time.sleep(0.5)


if __name__ == "__main__":  # python -m deai_flower.consortium.localnet ipfs API_FILE
    if len(sys.argv) != 3 or sys.argv[1] != "ipfs":
        sys.exit("usage: python -m deai_flower.consortium.localnet ipfs API_FILE")
    serve_ipfs(Path(sys.argv[2]))

"""``deai local``: a trial's background parts are stopped exactly, and so is the SuperLink
``flwr run .`` starts on Flower's ``local`` connection, never another process.

The local SuperLink is started by Flower's own code (the function ``flwr run .`` calls
for a ``:local:`` connection) on ports of the test's own, next to a second
``flower-superlink`` that somebody else runs: ``stop-superlink`` stops Flower's one with
what it spawned, and the other one keeps running.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deai_flower.chain.devnode import free_port
from deai_flower.consortium.background import find_local_superlink

BIN = Path(sys.executable).parent
DEAI = str(BIN / "deai")


def _deai(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DEAI, *args], capture_output=True, text=True, timeout=120, env=env, check=False)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(what: str, predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(0.2)


def test_start_list_and_stop_exactly_the_recorded_processes(tmp_path: Path) -> None:
    started = _deai("local", "start", "--dir", str(tmp_path), "worker", "--", "bash", "-c", "sleep 300 & sleep 301")
    assert started.returncode == 0, started.stderr
    _deai("local", "start", "--dir", str(tmp_path), "other", "--", "sleep", "302")
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "run").glob("*.json")}
    assert set(records) == {"worker", "other"}
    worker, other = records["worker"]["pid"], records["other"]["pid"]
    # its child (the first sleep) is in the worker's process group
    children = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
                if p.read_text().rsplit(")", 1)[1].split()[2] == str(worker)]  # fmt: skip
    assert children and all(os.getpgid(c) == worker for c in children)
    listed = _deai("local", "list", "--dir", str(tmp_path))
    assert "worker" in listed.stdout and "running" in listed.stdout
    again = _deai("local", "start", "--dir", str(tmp_path), "worker", "--", "sleep", "1")
    assert again.returncode == 2 and again.stderr.startswith("error: worker is running already")

    # a record whose process id now belongs to another program is not acted on
    stranger = subprocess.Popen(["sleep", "303"], start_new_session=True)
    try:
        fake = {**records["other"], "name": "stale", "pid": stranger.pid}
        (tmp_path / "run" / "stale.json").write_text(json.dumps(fake))
        stopped = _deai("local", "stop", "--dir", str(tmp_path), "worker", "stale")
        assert stopped.returncode == 0, stopped.stderr
        assert "worker: stopped" in stopped.stdout and "stale: had exited already" in stopped.stdout
        _wait("the worker and its child to go", lambda: not any(_alive(p) for p in [worker, *children]), 20)
        assert stranger.poll() is None and _alive(other)  # untouched
        assert {p.stem for p in (tmp_path / "run").glob("*.json")} == {"other"}
    finally:
        stranger.kill()
        stranger.wait()
    assert _deai("local", "stop", "--dir", str(tmp_path)).stdout.strip() == "other: stopped (process %d)" % other
    _wait("the other to go", lambda: not _alive(other), 20)
    unknown = _deai("local", "stop", "--dir", str(tmp_path), "nobody")
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "no process named nobody" in unknown.stderr
    failing = _deai("local", "start", "--dir", str(tmp_path), "failing", "--", "bash", "-c", "echo no such key; exit 3")
    assert failing.returncode == 2 and "exited at once with status 3: no such key" in failing.stderr
    assert not (tmp_path / "run" / "failing.json").exists()


@pytest.fixture
def other_superlink(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Somebody else's SuperLink on this machine."""
    ports = [free_port() for _ in range(3)]
    process = subprocess.Popen(
        [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(ports[0]),
         "--fleet-api-address", f"127.0.0.1:{ports[1]}", "--control-api-address", f"127.0.0.1:{ports[2]}",
         "--database", str(tmp_path / "other.db")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})  # fmt: skip
    _wait("the other SuperLink", lambda: _listening(ports[0]))
    yield process
    os.killpg(process.pid, 9)
    process.wait()


def test_stop_superlink_stops_the_local_superlink_flwr_started_and_no_other(
    tmp_path: Path, other_superlink: subprocess.Popen[bytes]
) -> None:
    port, control = free_port(), free_port()
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port),
           "FLWR_LOCAL_CONTROL_API_PORT": str(control), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    assert _deai("local", "stop-superlink", env=env).stdout.startswith("no local SuperLink is listening")
    # what `flwr run .` does on the `local` connection: Flower starts its SuperLink detached
    subprocess.run([sys.executable, "-c", "from flwr.cli.local_superlink import _start_local_superlink as s; s()"],
                   env=env, check=True, timeout=120, capture_output=True)  # fmt: skip
    flower_started = find_local_superlink(port)
    assert flower_started is not None
    try:
        _stop_superlink_and_check(env, port, control, other_superlink)
    finally:
        if _alive(flower_started):
            os.killpg(flower_started, 9)


def _stop_superlink_and_check(env: dict[str, str], port: int, control: int,
                              other_superlink: subprocess.Popen[bytes]) -> None:  # fmt: skip
    # the SuperLink starts a flower-superexec of its own (in another session): it goes too
    superexec = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline")
                 if b"flower-superexec" in p.read_bytes() and f"127.0.0.1:{port}\0".encode() in p.read_bytes()]  # fmt: skip
    assert superexec
    stopped = _deai("local", "stop-superlink", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped the local SuperLink on 127.0.0.1:{port}" in stopped.stdout
    _wait("the local SuperLink's ports to close", lambda: not _listening(port) and not _listening(control), 30)
    _wait("its flower-superexec to go", lambda: not any(_alive(p) for p in superexec), 30)
    assert other_superlink.poll() is None  # somebody else's SuperLink runs on

    # a port held by something else is refused, and nothing is stopped
    with socket.socket() as holder:
        # the stopped SuperLink's connections may linger in TIME_WAIT on its port
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen()
        refused = _deai("local", "stop-superlink", "--port", str(port), env=env)
    assert refused.returncode == 2 and "not by the local SuperLink flwr starts" in refused.stderr
    assert refused.stderr.count("\n") == 1

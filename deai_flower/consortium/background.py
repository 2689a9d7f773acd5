"""Processes left running in the background, and stopping exactly those.

Two kinds:

* the parts of a trial consortium on one machine (a chain node, a store, a SuperLink,
  SuperNodes and their code gates), started with :func:`start` (``deai local start``):
  each runs in its own session, logs to ``DIR/logs/NAME.log``, and is recorded in
  ``DIR/run/NAME.json`` with its process id and start time; :func:`stop` (``deai local
  stop``) stops the recorded ones, each with everything it spawned, and nothing else (a
  process id reused since by another program does not match its recorded start time);
* the SuperLink ``flwr run .`` starts on Flower's default ``local`` connection: Flower
  starts it detached, in its own session, and records neither its process id nor a way to
  stop it. :func:`find_local_superlink` finds it by the port it listens on (Flower's
  ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``, 39091 by default) and :func:`stop_local_superlink`
  (``deai local stop-superlink``) stops it with its children, never another SuperLink.

Linux only (``/proc``), as Flower's deployment executables are used here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ConsortiumError

__all__ = ["Recorded", "find_local_superlink", "recorded", "start", "stop", "stop_local_superlink"]

#: Flower's default port of the local SuperLink's HTTP API (``flwr.cli.constant``).
LOCAL_SUPERLINK_PORT_DEFAULT = 39091


@dataclass(frozen=True)
class Recorded:
    """A process started in the background: what ``DIR/run/NAME.json`` holds."""

    name: str
    pid: int
    start_ticks: int  # its start time (``/proc/PID/stat``), so a reused id never matches
    argv: list[str]
    log: str

    def alive(self) -> bool:
        return _start_ticks(self.pid) == self.start_ticks


def _start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks after boot, or None when there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ConsortiumError(f"a process name is letters, digits, '-', '_' and '.' (got {name!r})")


def recorded(directory: Path) -> list[Recorded]:
    """The processes recorded under ``directory`` (alive or not), by name."""
    found = []
    for path in sorted((Path(directory) / "run").glob("*.json")):
        try:
            found.append(Recorded(**json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError) as exc:
            raise ConsortiumError(f"{path} is not a process record: {exc}") from None
    return found


def start(directory: Path, name: str, argv: Sequence[str], *, settle_s: float = 1.0) -> Recorded:
    """Start ``argv`` in its own session in the background, logging to
    ``DIR/logs/NAME.log``; record it as ``DIR/run/NAME.json``.

    Raises:
        ConsortiumError: a process of that name is running already, the program is not
            found, or it exited within ``settle_s`` seconds (the end of its log is named).
    """
    _check_name(name)
    if not argv:
        raise ConsortiumError("no command to start (give it after --)")
    directory = Path(directory).resolve()
    record_path = directory / "run" / f"{name}.json"
    for earlier in recorded(directory):
        if earlier.name == name and earlier.alive():
            raise ConsortiumError(f"{name} is running already (process {earlier.pid}); stop it first: "
                                  f"deai local stop --dir {directory} {name}")  # fmt: skip
    log_path = directory / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        try:
            process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
        except OSError as exc:
            raise ConsortiumError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    ticks = _start_ticks(process.pid)
    record = Recorded(name, process.pid, ticks or 0, list(argv), str(log_path))
    record_path.write_text(json.dumps(asdict(record)) + "\n", encoding="utf-8")
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            record_path.unlink(missing_ok=True)
            tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
            raise ConsortiumError(f"{name} exited at once with status {process.returncode}: {tail or 'no output'}")
        time.sleep(0.1)
    return record


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(pid: int, *, timeout_s: float) -> None:
    """SIGTERM the process group ``pid`` leads, SIGKILL what is left after ``timeout_s``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop(directory: Path, names: Sequence[str] = (), *, timeout_s: float = 15.0) -> list[tuple[str, str]]:
    """Stop the processes recorded under ``directory`` (all, or those ``names``), each with
    the process group it leads, latest started first; remove their records. Returns
    (name, what happened) for each.

    Raises:
        ConsortiumError: a name that was never recorded there.
    """
    records = recorded(directory)
    known = {r.name for r in records}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConsortiumError(f"no process named {', '.join(unknown)} was started with --dir {directory} "
                              f"(recorded: {', '.join(sorted(known)) or 'none'})")  # fmt: skip
    chosen = [r for r in records if not names or r.name in names]
    chosen.sort(key=lambda r: r.start_ticks, reverse=True)  # the SuperNodes before the SuperLink, the chain last
    done, groups = [], []
    for record in chosen:  # all asked at once, then waited for together: a loaded machine is slow to stop
        try:
            if not record.alive():
                raise ProcessLookupError
            if os.getpgid(record.pid) == record.pid:
                os.killpg(record.pid, signal.SIGTERM)
                groups.append(record.pid)
            else:  # not started by start(): only the process itself
                os.kill(record.pid, signal.SIGTERM)
            done.append((record.name, f"stopped (process {record.pid})"))
        except ProcessLookupError:
            done.append((record.name, "had exited already"))
        (Path(directory) / "run" / f"{record.name}.json").unlink(missing_ok=True)
    deadline = time.monotonic() + timeout_s
    while any(_group_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    for group in groups:  # what did not stop in time
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return done


# ---------------------------------------------------------------- Flower's local SuperLink


def local_superlink_port() -> int:
    """The port Flower's local SuperLink listens on: ``$FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``
    (what ``flwr`` reads), else 39091."""
    text = os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", str(LOCAL_SUPERLINK_PORT_DEFAULT))
    if not text.isdigit():
        raise ConsortiumError(f"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT must be a port number (got {text!r})")
    return int(text)


def _listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on TCP ``port`` (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(inode)
    return inodes


def _owner_of(inodes: set[str]) -> int | None:
    """The id of a process (of this user) holding one of the sockets ``inodes``."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.readlink(fd) in wanted:
                    return int(fd_dir.parent.name)
        except OSError:  # another user's, or gone meanwhile
            continue
    return None


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def find_local_superlink(port: int | None = None) -> int | None:
    """The process id of the SuperLink ``flwr`` started for its ``local`` connection: the
    ``flower-superlink --simulation`` process listening on ``port``; None when none is.

    Raises:
        ConsortiumError: something else listens on that port (it is not stopped).
    """
    port = local_superlink_port() if port is None else port
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    pid = _owner_of(inodes)
    if pid is None:
        raise ConsortiumError(f"port {port} is held by a process of another user; it is not Flower's local SuperLink "
                              "that flwr started for you")  # fmt: skip
    argv = _argv(pid)
    is_superlink = any(Path(a).name == "flower-superlink" for a in argv[:2])
    if not is_superlink or "--simulation" not in argv:
        raise ConsortiumError(f"port {port} is held by process {pid} ({' '.join(argv)[:120] or '?'}), not by the "
                              "local SuperLink flwr starts; nothing was stopped")  # fmt: skip
    return pid


def stop_local_superlink(port: int | None = None, *, timeout_s: float = 15.0) -> int | None:
    """Stop the SuperLink ``flwr run .`` started on the ``local`` connection, with what it
    spawned (Flower starts it in a session of its own); its process id, None when none ran."""
    pid = find_local_superlink(port)
    if pid is None:
        return None
    # its flower-superexec runs in a session of its own, watching its parent's process id
    superexecs = [p for p in _processes() if _watches(p, pid)]
    for leader in [pid, *superexecs]:  # the SuperLink stops its superexec itself, if it can
        try:
            if os.getpgid(leader) == leader:
                _stop_group(leader, timeout_s=timeout_s)
            else:
                os.kill(leader, signal.SIGTERM)
        except ProcessLookupError:
            continue
    return pid


def _processes() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _watches(pid: int, parent: int) -> bool:
    """Whether process ``pid`` is a Flower process started for ``parent`` (``--parent-pid``)."""
    argv = _argv(pid)
    return any(a == "--parent-pid" and b == str(parent) for a, b in zip(argv, argv[1:], strict=False))

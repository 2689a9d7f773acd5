"""A stand-in for the code gate's task (``deai_flower.silo_gate._warm_task``): what a task
forked by :class:`~deai_flower.silo_gate.TaskStarter` finds when it starts. Its module must be
importable by name in the forked process, which a test module (imported by path) is not."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        inodes.update(row.split()[9] for row in rows)
    return inodes


def report(out_dir: str, token: str, approved: list[str], root_certificates_path: str | None) -> None:
    """Write what this task sees to ``out_dir/<pid>.json``, as the task's first act."""
    # before this task imports anything: the release and what its handlers train with
    warm = all(m in sys.modules for m in ("deai_flower.apps", "deai_flower.participant.handlers", "torch", "opacus"))
    from deai_flower.apps import client_app

    parent = os.getppid()
    sockets = []
    for fd in os.listdir(f"/proc/{parent}/fd"):
        try:
            target = os.readlink(f"/proc/{parent}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            sockets.append(target[len("socket:["):-1])
    document = {
        "pid": os.getpid(),
        "parent": parent,
        "warm": warm,
        "client_app_module": sys.modules[type(client_app).__module__].__name__,
        "apps_file": sys.modules["deai_flower.apps"].__file__,
        "token_in_cmdline": token.encode() in Path(f"/proc/{os.getpid()}/cmdline").read_bytes(),
        "token_seen": token,
        "approved": approved,
        "parent_threads": len(os.listdir(f"/proc/{parent}/task")),
        "parent_tcp_sockets": sorted(set(sockets) & _tcp_inodes()),
    }
    Path(out_dir, f"{os.getpid()}.json").write_text(json.dumps(document), encoding="utf-8")

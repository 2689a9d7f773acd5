"""The code gate's warm starts: every task is still a fresh process, forked from a
forkserver that holds the installed release and nothing else (no thread, no connection),
and the token reaches it without a command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import gate_probe
import pytest

from deai_flower import silo_gate
from deai_flower.silo_gate import TaskStarter

APPROVED = frozenset({"ab" * 32})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the forkserver is POSIX-only")
def test_each_warm_task_is_a_fresh_process_forked_from_the_installed_release(tmp_path: Path) -> None:
    starter = TaskStarter(str(tmp_path), APPROVED, target=gate_probe.report)
    assert starter.warm
    pids = [starter.start(f"token-{i}") for i in range(3)]
    starter.wait(timeout=120)
    assert not starter.running
    reports = {int(p.stem): json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert sorted(reports) == sorted(pids) and len(set(pids)) == 3  # one new process per task
    assert os.getpid() not in pids
    import deai_flower.apps

    for pid, report in reports.items():
        assert report["token_seen"] == f"token-{pids.index(pid)}"
        assert not report["token_in_cmdline"], "the task's token must not be readable in ps"
        assert report["approved"] == sorted(APPROVED)
        # Started warm, and what it answers with is the release installed here, not a run's code.
        assert report["warm"], "the task imported the release itself: the forkserver did not preload it"
        assert report["apps_file"] == deai_flower.apps.__file__
        assert report["client_app_module"] == "flwr.clientapp.client_app"
        # The forkserver the task was forked from runs no other thread and holds no TCP connection.
        assert report["parent"] != os.getpid()
        assert report["parent_threads"] == 1, "a thread in the forkserver: forking it is unsafe"
        assert report["parent_tcp_sockets"] == []
    assert len({r["parent"] for r in reports.values()}) == 1


def test_without_a_forkserver_tasks_start_cold(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_forkserver(method: str | None = None) -> None:
        raise ValueError(f"cannot find context for {method!r}")

    monkeypatch.setattr(silo_gate.multiprocessing, "get_context", no_forkserver)
    assert not TaskStarter("127.0.0.1:1", APPROVED).warm
    assert not TaskStarter("127.0.0.1:1", APPROVED, warm=False).warm


def test_the_forkserver_preloads_the_release_the_gate_answers_with() -> None:
    # run_task answers an approved FAB with `from .apps import client_app`: that module, and
    # what a task does before and around it, are what a warm start must already hold.
    assert "deai_flower.apps" in silo_gate.WARM_PRELOAD
    assert {"torch", "opacus", "flwr.supernode.runtime.run_clientapp"} <= set(silo_gate.WARM_PRELOAD)

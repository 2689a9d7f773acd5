"""The silo's code gate: a SuperNode's messages run only for a release the silo approved,
and then with the silo's own installed code, never with code a run brought.

``flwr run`` ships a FAB, and Flower's default ``flwr-clientapp`` unpacks it and imports
its ``deai_flower``: anyone able to submit a run (every holder of the SuperLink's CA
certificate) ran code on every silo. Flower's ``--trusted-entities`` accepts only FABs
signed by its platform, so a consortium of its own needs this gate instead.

A SuperNode started with ``--isolation process`` leaves each message's ClientApp to a
separate process that asks its Runtime API for tasks. :func:`serve` is that process: for
each task it starts a fresh one (:func:`run_task`, as Flower starts a fresh
``flwr-clientapp``), which pulls the task's input, hashes the FAB's bytes and compares the
SHA-256 with the hashes the silo pinned, *before* anything else. An unapproved FAB gets an
error reply naming its hash (the coordinator sees it as the node's answer and logs it);
none of its bytes is unpacked or imported. An approved one is answered by the ClientApp of
the release installed on the silo (the same code, since the silo approved the FAB that
release builds). Flower's own Runtime API client, task heartbeat and message transfer do
the rest.

Each task still starts as a fresh process, but not from a cold interpreter: importing the
release (torch, Opacus, Flower, ``deai_flower.apps``) takes seconds, and a deployment sends
a node several messages a round. The gate keeps a forkserver that imported the installed
release once and forks every task from it (:data:`WARM_PRELOAD`); where there is no
forkserver, or it fails, a task starts cold as ``python -m deai_flower.silo_gate``. Nothing
of a run is in the forkserver: it holds the silo's own installed code, and the FAB check is
still the first thing each task does.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from logging import ERROR, INFO, WARNING
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.supercore.runtime import RuntimeHttpClient

__all__ = ["WARM_PRELOAD", "TaskStarter", "fab_refusal", "parse_approved", "run_task", "serve"]

_SHA256 = re.compile(r"[0-9a-f]{64}")

#: What the forkserver imports once, before it forks any task: the installed release's
#: ClientApp and what its handlers import (``deai_flower.apps`` loads them lazily, at a
#: task's first message). A name that no longer imports is skipped (the task imports what
#: it needs, cold). Checked (see ``tests/unit/test_silo_gate_warm.py``):
#: these imports open no socket or channel and start no Python thread; the only native
#: threads they start are OpenBLAS's idle workers (numpy's and scipy's), which OpenBLAS's own
#: ``pthread_atfork`` handler stops before each fork. Torch's OpenMP pool starts only at the
#: first parallel op, which the forkserver never runs. ``__main__`` (the ``deai`` entry
#: point) is imported there too, so that a task does not import it again. ``torch._dynamo``:
#: torch imports it at the first optimizer a process makes (DP-SGD's, in every training
#: task), 3 s of a quiet core.
WARM_PRELOAD = ("__main__", "torch", "torch._dynamo", "opacus", "flwr.app", "flwr.supercore.heartbeat",
                "flwr.supernode.runtime.run_clientapp", "deai_flower.silo_gate", "deai_flower.apps",
                "deai_flower.participant.app", "deai_flower.participant.handlers")  # fmt: skip


def parse_approved(hashes: Iterable[str]) -> frozenset[str]:
    """The pinned FAB hashes, checked: each the 64 hex digits ``deai release hash`` prints."""
    approved = set()
    for text in hashes:
        digest = text.strip().lower()
        if not _SHA256.fullmatch(digest):
            raise ConfigError(f"an approved FAB hash must be 64 hex digits (a SHA-256), not {text!r}")
        approved.add(digest)
    if not approved:
        raise ConfigError("no approved FAB hash: pin at least one release (deai release hash APP)")
    return frozenset(approved)


def fab_refusal(fab_content: bytes, approved: frozenset[str]) -> str:
    """Why this silo refuses a run's FAB, or '' when the FAB is one it approved. The hash is
    computed here from the bytes, never taken from what the SuperLink says it is."""
    digest = hashlib.sha256(fab_content).hexdigest()
    if digest in approved:
        return ""
    return (f"this silo runs only releases it approved: the run's FAB has SHA-256 {digest}, "
            f"which is not among the {len(approved)} it pinned")  # fmt: skip


def _certificates(path: str | None) -> bytes | None:
    """The CA certificate of the Runtime API's TLS; None for a loopback without TLS."""
    if path is None:
        return None
    with open(path, "rb") as file:
        return file.read()


def _runtime_client(address: str, root_certificates: bytes | None, component: str,
                    token: str | None = None) -> RuntimeHttpClient:  # fmt: skip
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=root_certificates is None,
                                                 root_certificates=root_certificates, interceptors=interceptors,
                                                 retry_invoker=make_simple_http_retry_invoker())  # fmt: skip


def run_task(runtime_api_address: str, token: str, approved: frozenset[str], *,
             root_certificates: bytes | None = None) -> int:  # fmt: skip
    """Play one task of the SuperNode: refuse it if its FAB is not approved, else answer its
    message with the installed release's ClientApp. Returns the process's exit status."""
    from flwr.app import Error, Message
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore import log
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    client = _runtime_client(runtime_api_address, root_certificates, "flwr-clientapp", token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message: Message | None = None
    reply: Message | None = None
    context = None
    sub_status, details = SubStatus.FAILED, "the ClientApp task failed for an unknown reason"
    try:
        message, context, _run, fab = pull_task_input(client)
        refusal = fab_refusal(fab.content, approved)
        if refusal:
            log(ERROR, "refused run %s: %s", context.run_id, refusal)
            reply, details = Message(Error(code=ErrorCode.INVALID_FAB, reason=refusal), reply_to=message), refusal
        else:
            try:
                from .apps import client_app  # the silo's own installed release
            except Exception as exc:  # the release is broken on this silo: say so, as flwr-clientapp does
                raise LoadClientAppError(f"the installed release's ClientApp does not load: {exc}") from exc
            reply = client_app(message=message, context=context)
            sub_status, details = SubStatus.COMPLETED, ""
    except Exception as exc:  # noqa: BLE001 - like flwr-clientapp: any failure becomes the node's error reply
        code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(exc, LoadClientAppError) else \
            ErrorCode.CLIENT_APP_RAISED_EXCEPTION  # fmt: skip
        details = f"{type(exc).__name__}: {exc}"
        log(ERROR, "ClientApp raised an exception", exc_info=exc)
        if message is not None:
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        status = 0 if sub_status == SubStatus.COMPLETED else 1
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception as exc:  # noqa: BLE001 - the SuperNode went away; the task output says so if it can
            log(ERROR, "failed to push the reply: %s", exc)
            status = 1
        push_task_output(client=client, context=context, sub_status=sub_status, details=details)
        heartbeat.stop()
        client.close()
    return status


class TaskStarter:
    """Starts each of the gate's tasks in a fresh process: forked from a forkserver that has
    the installed release imported (``warm``), else as a new interpreter. The task's token
    never appears on a command line (``ps``): it is pickled to the forked task over the
    forkserver's socket, or written to a cold task's standard input."""

    def __init__(self, runtime_api_address: str, approved: frozenset[str], *,
                 root_certificates_path: str | None = None, warm: bool = True,
                 preload: Iterable[str] = WARM_PRELOAD, target: Any = None) -> None:  # fmt: skip
        self.address, self.approved, self.root_certificates_path = runtime_api_address, approved, root_certificates_path
        #: What a warm task runs (``run_task`` by way of :func:`_warm_task`; a test passes its own).
        self.target = target or _warm_task
        self.context: Any = _forkserver(tuple(preload)) if warm else None
        self.running: list[multiprocessing.process.BaseProcess | subprocess.Popen[bytes]] = []

    @property
    def warm(self) -> bool:
        return self.context is not None

    def start(self, token: str) -> int:
        """Start one task with ``token``; its process id."""
        self.reap()
        if self.context is not None:
            try:
                process = self.context.Process(target=self.target, name="deai-gate-task",
                                               args=(self.address, token, sorted(self.approved),
                                                     self.root_certificates_path))  # fmt: skip
                process.start()
            except (OSError, EOFError) as exc:  # the forkserver died (a broken release): start cold from now on
                from flwr.supercore import log

                log(WARNING, "code gate: the warm start failed (%s); tasks start cold from now on", exc)
                self.context = None
            else:
                self.running.append(process)
                assert process.pid is not None
                return process.pid
        argv = [sys.executable, "-m", __name__, "--runtime-api-address", self.address]
        argv += [arg for digest in sorted(self.approved) for arg in ("--approved-fab", digest)]
        if self.root_certificates_path is not None:
            argv += ["--root-certificates", self.root_certificates_path]
        task = subprocess.Popen(argv, stdin=subprocess.PIPE)
        assert task.stdin is not None
        task.stdin.write(token.encode())
        task.stdin.close()
        self.running.append(task)
        return task.pid

    def reap(self) -> None:
        """Forget the tasks that have ended (and collect their exit status)."""
        alive: list[multiprocessing.process.BaseProcess | subprocess.Popen[bytes]] = []
        for task in self.running:
            if isinstance(task, subprocess.Popen):
                if task.poll() is None:
                    alive.append(task)
            elif task.is_alive():
                alive.append(task)
            else:
                task.close()
        self.running = alive

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the running tasks to end (tests and benchmarks; :func:`serve` never does)."""
        for task in self.running:
            if isinstance(task, subprocess.Popen):
                task.wait(timeout)
            else:
                task.join(timeout)
        self.reap()


def _forkserver(preload: tuple[str, ...]) -> Any:
    """A forkserver context that has imported ``preload``, started now (the imports take
    seconds, better spent before the first task than in it); None where there is none."""
    try:
        context = multiprocessing.get_context("forkserver")
    except ValueError:  # no forkserver on this platform (Windows): cold starts
        return None
    from multiprocessing import forkserver

    context.set_forkserver_preload(list(preload))
    try:
        forkserver.ensure_running()
    except OSError:
        return None
    return context


def _warm_task(runtime_api_address: str, token: str, approved: list[str],
               root_certificates_path: str | None) -> None:  # fmt: skip
    """A task forked from the warm forkserver: :func:`run_task`, as the cold ``_main`` does."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # a fork shares numpy's global random state: draw as a fresh process would
        numpy.random.seed()
    sys.exit(run_task(runtime_api_address, token, frozenset(approved),
                      root_certificates=_certificates(root_certificates_path)))  # fmt: skip


def serve(runtime_api_address: str, approved: frozenset[str], *, root_certificates_path: str | None = None,
          poll_s: float = 1.0, warm: bool = True) -> None:  # fmt: skip
    """Take the SuperNode's ClientApp tasks for ever, one gated process each (what
    ``flower-superexec`` does with ``flwr-clientapp``), forked from a warm forkserver unless
    ``warm`` is false; a SuperNode that is away (restarting) is waited for."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore import log
    from flwr.supercore.constant import TaskType

    client = _runtime_client(runtime_api_address, _certificates(root_certificates_path), "SuperExec")
    tasks = TaskStarter(runtime_api_address, approved, root_certificates_path=root_certificates_path, warm=warm)
    log(INFO, "code gate: ClientApp tasks of the SuperNode at %s run only for FABs with SHA-256 %s; each task %s",
        runtime_api_address, ", ".join(sorted(approved)),
        "is forked from a forkserver holding the installed release" if tasks.warm else "starts a new interpreter")  # fmt: skip
    while True:
        tasks.reap()
        try:
            answer = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        except Exception as exc:  # noqa: BLE001 - the SuperNode is restarting: wait for it
            log(WARNING, "code gate: the SuperNode's Runtime API did not answer (%s); trying again", exc)
            time.sleep(5 * poll_s)
            continue
        if answer.HasField("task") and answer.token:
            tasks.start(answer.token)
            continue  # another message may be waiting: ask again at once
        time.sleep(poll_s)


def _main() -> None:
    """One task (started by :func:`serve`): ``python -m deai_flower.silo_gate --runtime-api-address A
    --approved-fab H ... [--root-certificates P]``, the token on standard input."""
    parser = argparse.ArgumentParser(prog="python -m deai_flower.silo_gate")
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--approved-fab", action="append", default=[])
    parser.add_argument("--root-certificates", default=None)
    args = parser.parse_args()
    token = sys.stdin.read().strip()
    sys.exit(run_task(args.runtime_api_address, token, parse_approved(args.approved_fab),
                      root_certificates=_certificates(args.root_certificates)))  # fmt: skip


if __name__ == "__main__":
    _main()

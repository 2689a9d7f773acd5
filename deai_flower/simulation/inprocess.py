"""The in-process engine: Flower's ServerApp and ClientApp objects driven in one process.

Flower has no non-Ray simulation backend and its Ray start costs many seconds, so short
runs and tests use this thin driver: a :class:`~flwr.serverapp.Grid` that delivers each
message by calling the ClientApp directly, with one persistent ``Context`` per node. It
adds no protocol of its own: the same ServerApp and ClientApp run unchanged under
Flower's simulation engine or a real deployment.

Like a SuperLink, it holds every batch of messages to its deadline: the messages of one
``send_and_receive`` run at once, each on its own thread (at most ``concurrency`` at a
time), and a reply that is not back when the batch's ``timeout`` runs out is missing, as
a deployed node's would be. A node that hangs keeps only its own thread: Python cannot
stop it, so the thread is left to finish in the background (a daemon, which never holds
up the process's exit) and whatever it answers then is dropped. Flower allows this: a
reply's metadata comes from the message it answers, not from the process-wide task
identity that only new instructions read.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterable
from typing import Any
from logging import WARNING
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

from ..errors import ConfigError
from ..flower_compat import task_identity

#: The longest the main thread blocks in one wait for replies. The OS may deliver Ctrl-C
#: to any thread; Python handles it in the main thread only once that thread runs again,
#: so one wait to the batch's deadline would hold a stop back for the whole phase.
_WAIT_SLICE_S = 0.25


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process, answered synchronously."""

    def __init__(self, client_app: ClientApp, *, num_nodes: int, run_id: int, seed: int,
                 run_config: dict[str, Any] | None = None, concurrency: int | None = None) -> None:  # fmt: skip
        if concurrency is not None and concurrency < 1:
            raise ConfigError(f"engine.concurrency must be >= 1 (got {concurrency})")
        #: How many ClientApp calls run at once (default: one per CPU core).
        self.concurrency = concurrency or os.cpu_count() or 1
        self._lock = threading.Lock()
        rng = random.Random(seed)
        self._client_app = client_app
        self._run = Run.create_empty(run_id)
        self._contexts: dict[int, Context] = {}
        for partition_id in range(num_nodes):
            node_id = rng.getrandbits(63) or 1  # Flower node ids are unsigned 64-bit
            self._contexts[node_id] = Context(
                run_id=run_id,
                node_id=node_id,
                node_config={"partition-id": partition_id, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver ``messages`` and wait for every reply (no deadline)."""
        return self._deliver_all(list(messages), timeout=None)

    def _deliver_all(self, messages: list[Message], *, timeout: float | None) -> list[str]:
        """Run every message's ClientApp call at once (at most :attr:`concurrency` at a
        time); keep the replies back within ``timeout`` seconds, drop the others."""
        deadline = None if timeout is None else time.monotonic() + timeout
        slots = threading.BoundedSemaphore(self.concurrency)
        gave_up = threading.Event()
        ids, done = [], []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(message.metadata.message_id)
            finished = threading.Event()
            done.append(finished)
            threading.Thread(target=self._deliver_one, args=(message, slots, gave_up, finished), daemon=True,
                             name=f"node-{message.metadata.dst_node_id}").start()  # fmt: skip
        for finished in done:
            if not _wait(finished, deadline):
                break
        gave_up.set()  # a reply that comes after this is dropped; a message not started is not started
        late = [i for i, finished in zip(ids, done, strict=True) if not finished.is_set()]
        if late:
            log(WARNING, "%s of %s node(s) did not answer within %.0fs", len(late), len(ids), timeout)
        return ids

    def _deliver_one(self, message: Message, slots: threading.BoundedSemaphore, gave_up: threading.Event,
                     finished: threading.Event) -> None:  # fmt: skip
        with slots:
            if gave_up.is_set():
                return
            reply = self._deliver(message)
            if reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION and not gave_up.is_set():
                log(WARNING, "ClientApp on node %s raised: %s", message.metadata.dst_node_id, reply.error.reason)
            with self._lock:
                if not gave_up.is_set():
                    self._replies[message.metadata.message_id] = reply
                    finished.set()

    def _deliver(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        context = self._contexts.get(node_id)
        if context is None:
            return Message(Error(ErrorCode.NODE_UNAVAILABLE, f"node {node_id} is unknown"), reply_to=message)
        try:
            return self._client_app(message, context)
        except Exception as exc:  # noqa: BLE001 - a client failure becomes an error reply (logged if awaited)
            return Message(
                Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{exc.__class__.__name__}: {exc}"), reply_to=message
            )

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        with self._lock:
            return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self._deliver_all(list(messages), timeout=timeout))


def _wait(finished: threading.Event, deadline: float | None) -> bool:
    """Whether ``finished`` was set by ``deadline`` (None: no deadline), waiting in slices
    of :data:`_WAIT_SLICE_S` so that a pending signal is handled within one."""
    while True:
        remaining = _WAIT_SLICE_S if deadline is None else min(_WAIT_SLICE_S, deadline - time.monotonic())
        if remaining <= 0:
            return finished.is_set()
        if finished.wait(remaining):
            return True


def run_inprocess(*, server_app: ServerApp, client_app: ClientApp, num_nodes: int, seed: int,
                  run_config: dict[str, Any] | None = None, concurrency: int | None = None) -> None:  # fmt: skip
    """Run ``server_app`` against ``num_nodes`` copies of ``client_app`` in this process,
    every party seeing ``run_config`` as Flower's ``context.run_config``, at most
    ``concurrency`` ClientApp calls at a time (default: one per CPU core)."""
    run_id = random.Random(seed ^ 0x5EED).getrandbits(63) or 1
    grid = InProcessGrid(client_app, num_nodes=num_nodes, run_id=run_id, seed=seed, run_config=run_config,
                         concurrency=concurrency)  # fmt: skip
    context = Context(run_id=run_id, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(),
                      run_config=dict(run_config or {}))  # fmt: skip
    with task_identity(run_id=run_id, node_id=SUPERLINK_NODE_ID):
        server_app(grid, context)

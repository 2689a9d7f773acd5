"""The in-process engine: Flower's ServerApp and ClientApp objects driven in one process.

Flower has no non-Ray simulation backend and its Ray start costs many seconds, so short
runs and tests use this thin driver: a :class:`~flwr.serverapp.Grid` that delivers each
message by calling the ClientApp directly, in order, with one persistent ``Context``
per node. It adds no protocol of its own: the same ServerApp and ClientApp run
unchanged under Flower's simulation engine or a real deployment.
"""

from __future__ import annotations

import random
import traceback
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

from ..flower_compat import task_identity


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process, answered synchronously."""

    def __init__(self, client_app: ClientApp, *, num_nodes: int, run_id: int, seed: int,
                 run_config: dict[str, Any] | None = None) -> None:  # fmt: skip
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
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            self._replies[message.metadata.message_id] = self._deliver(message)
            ids.append(message.metadata.message_id)
        return ids

    def _deliver(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        context = self._contexts.get(node_id)
        with task_identity(run_id=self._run.run_id, node_id=node_id):
            if context is None:
                return Message(Error(ErrorCode.NODE_UNAVAILABLE, f"node {node_id} is unknown"), reply_to=message)
            try:
                return self._client_app(message, context)
            except Exception as exc:  # noqa: BLE001 - a client failure becomes an error reply
                log(WARNING, "ClientApp on node %s raised: %s", node_id, "".join(traceback.format_exception_only(exc)))
                return Message(
                    Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{exc.__class__.__name__}: {exc}"), reply_to=message
                )

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        # Delivery is synchronous, so every reply is there when push returns.
        return self.pull_messages(self.push_messages(messages))


def run_inprocess(*, server_app: ServerApp, client_app: ClientApp, num_nodes: int, seed: int,
                  run_config: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Run ``server_app`` against ``num_nodes`` copies of ``client_app`` in this process,
    every party seeing ``run_config`` as Flower's ``context.run_config``."""
    run_id = random.Random(seed ^ 0x5EED).getrandbits(63) or 1
    grid = InProcessGrid(client_app, num_nodes=num_nodes, run_id=run_id, seed=seed, run_config=run_config)
    context = Context(run_id=run_id, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(),
                      run_config=dict(run_config or {}))  # fmt: skip
    with task_identity(run_id=run_id, node_id=SUPERLINK_NODE_ID):
        server_app(grid, context)

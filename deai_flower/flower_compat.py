"""Small bridges to Flower internals, kept in one place.

Flower's ``Message`` constructor reads the process-wide ``TaskIdentity`` (run id, node
id) that Flower's runtimes set before running an app. The in-process engine *is* such a
runtime, so it sets the identity itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from flwr.supercore.task_identity import TaskIdentity


@contextlib.contextmanager
def task_identity(*, run_id: int, node_id: int) -> Iterator[None]:
    """Act as node ``node_id`` of run ``run_id`` for the duration of the block."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved

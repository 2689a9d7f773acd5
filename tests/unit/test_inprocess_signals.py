"""A stop reaches the in-process engine while it waits for replies, whichever thread the
OS hands the signal to (Ctrl-C in a run whose node hangs used to wait out the phase)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID

from deai_flower.flower_compat import task_identity
from deai_flower.simulation.inprocess import InProcessGrid


class Stopped(Exception):
    """Raised by the test's signal handler, in the main thread."""


@pytest.fixture
def stop_on_sigusr1() -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        raise Stopped

    previous = signal.signal(signal.SIGUSR1, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_signal_delivered_to_a_node_thread_stops_the_wait_at_once(stop_on_sigusr1: None) -> None:
    release = threading.Event()
    app = ClientApp()

    @app.train()
    def hang(message: Message, context: Context) -> Message:
        time.sleep(1.0)  # the main thread is waiting for the reply by now
        # the signal goes to this thread, as the OS may send a process's Ctrl-C to any
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        release.wait(60)
        return Message(RecordDict(), reply_to=message)

    grid = InProcessGrid(app, num_nodes=1, run_id=1, seed=0)
    started = time.monotonic()
    with task_identity(run_id=1, node_id=SUPERLINK_NODE_ID):  # as run_inprocess acts, as the ServerApp
        message = grid.create_message(RecordDict(), "train", next(iter(grid.get_node_ids())), "1")
        try:
            with pytest.raises(Stopped):
                grid.send_and_receive([message], timeout=60)
        finally:
            release.set()
    assert time.monotonic() - started < 10  # not the 60 s deadline

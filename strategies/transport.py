"""Sending a phase's messages to the nodes and collecting their replies in time."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from logging import WARNING

from flwr.app import Message
from flwr.common import log
from flwr.serverapp import Grid

__all__ = ["STRAGGLER_GRACE_S", "exchange"]

#: How long a round's exchange waits for replies once the chain has closed the round.
STRAGGLER_GRACE_S = 5.0


def exchange(grid: Grid, messages: Sequence[Message], *, timeout: float, poll_s: float | None = None,
             round_closed: Callable[[list[Message]], bool] | None = None) -> list[Message]:  # fmt: skip
    """Send ``messages``; the replies back within ``timeout`` seconds.

    ``poll_s`` None: Flower's ``send_and_receive``, which asks the SuperLink every 3 s (the
    in-process engine needs it, as it holds a batch to its deadline there). Otherwise the
    SuperLink is asked that often, and ``round_closed`` (given the replies so far) is asked
    too: once it says the chain has closed the round (finalized or failed), stragglers are
    waited for at most :data:`STRAGGLER_GRACE_S` seconds, so a node that died mid-round
    does not hold the round up for the whole timeout.
    """
    if not messages:
        return []
    if poll_s is None:
        return list(grid.send_and_receive(messages, timeout=float(timeout)))
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    end, closed_at = time.monotonic() + timeout, None
    while pending and time.monotonic() < end:
        for reply in grid.pull_messages(list(pending)):
            pending.discard(reply.metadata.reply_to_message_id)
            replies.append(reply)
        if not pending:
            break
        if round_closed is not None and closed_at is None and round_closed(replies):
            closed_at = time.monotonic()
        if closed_at is not None and time.monotonic() - closed_at > STRAGGLER_GRACE_S:
            log(WARNING, "round %s closed on chain; %s node(s) did not answer", messages[0].metadata.group_id,
                len(pending))  # fmt: skip
            break
        time.sleep(poll_s)
    return replies

"""Names of the records exchanged between the coordinator and the participants.

Message types: ``query.identity`` (which chain address a node signs with),
``train.commit``, ``train.reveal`` and ``train.attest`` (the three phases of a round),
``evaluate`` (score a finalized model on the silo's held-out data).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

#: ConfigRecord sent by the coordinator: ``round`` (chain round id), ``model-cid``.
CONFIG = "config"
#: ConfigRecord replied by a node: ``state``, ``address`` and phase-specific fields.
STATUS = "status"
#: MetricRecord replied by a node: gas used, training metrics.
METRICS = "metrics"


def reply(message: Message, *, status: dict[str, Any], metrics: dict[str, Any] | None = None) -> Message:
    """A node's reply to ``message``: its ``status`` and, when given, its ``metrics``."""
    content = RecordDict({STATUS: ConfigRecord(status)})
    if metrics is not None:
        content[METRICS] = MetricRecord(metrics)
    return Message(content, reply_to=message)

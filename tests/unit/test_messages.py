"""Typed messages: each request and reply survives its records unchanged, keeps the wire
keys both sides read, and a malformed one is one ProtocolError naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from deai_flower.errors import ProtocolError
from deai_flower.flower_compat import task_identity
from deai_flower.messages import (
    CONFIG,
    METRICS,
    STATUS,
    AttestReply,
    AttestRequest,
    CommitReply,
    CommitRequest,
    EvaluateReply,
    EvaluateRequest,
    Exclusion,
    IdentityReply,
    IdentityRequest,
    ReplyState,
    RevealReply,
    RevealRequest,
    RoundReply,
    RoundRequest,
    TrainingMetrics,
    read_reply,
    reply_message,
    request_message,
)
from deai_flower.protocol.encoding import REVEAL_RECORD_BYTES

ADDRESS = "0x" + "ab" * 20
CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
TRAINING = TrainingMetrics(num_examples=40, epsilon=1.5, noise_multiplier=1.1, sample_rate=0.25, steps=8,
                           train_loss=0.7, train_seconds=2.0)  # fmt: skip
EXCLUDED = (Exclusion("0x" + "cd" * 20, "invalid", "NaN in 'w'"),)
ATTESTED = AttestReply(ReplyState.ATTESTED, ADDRESS, cid=CID, excluded=EXCLUDED, gas=90_000)

REQUESTS = [
    IdentityRequest(challenge=b"\x01" * 32),
    CommitRequest(round=3, model_cid=CID),
    CommitRequest(round=3, model_cid=CID, relay=True),
    RevealRequest(round=3, relay=True),
    AttestRequest(round=3),
    RoundRequest(round=1, model_cid=CID),
    EvaluateRequest(round=0, model_cid=CID),  # round 0: the initial model
]
REPLIES = [
    IdentityReply(address=ADDRESS, signature=b"\x02" * 65),
    CommitReply(ReplyState.COMMITTED, ADDRESS, cid=CID, training=TRAINING, gas=120_000),
    CommitReply(ReplyState.DECLINED, ADDRESS, reason="budget spent", terms=True),
    RevealReply(ReplyState.HANDED, ADDRESS, record=b"\x03" * REVEAL_RECORD_BYTES),
    RevealReply(ReplyState.REVEALED, ADDRESS, gas=60_000),
    ATTESTED,
    AttestReply(ReplyState.SIGNED, ADDRESS, cid=CID, outcome=b"\x04" * 25, signature=b"\x05" * 65),
    AttestReply(ReplyState.ABSTAINED, ADDRESS, excluded=EXCLUDED),
    AttestReply(ReplyState.LATE, ADDRESS),
    RoundReply(commit=CommitReply(ReplyState.COMMITTED, ADDRESS, cid=CID, training=TRAINING, gas=5),
               reveal=RevealReply(ReplyState.REVEALED, ADDRESS, gas=6), attest=ATTESTED, phase="finalized"),
    RoundReply(commit=CommitReply(ReplyState.COMMITTED, ADDRESS, cid=CID, training=TRAINING, gas=5), phase="failed"),
    RoundReply(commit=CommitReply(ReplyState.DECLINED, ADDRESS, reason="terms", terms=True)),
    EvaluateReply(ReplyState.EVALUATED, ADDRESS, model_cid=CID, loss=0.3, accuracy=0.9, num_examples=20),
    EvaluateReply(ReplyState.NO_EVAL_DATA, ADDRESS),
    CommitReply(ReplyState.HANDED, ADDRESS, cid=CID, training=TRAINING, gas=0, commitment=b"\x04" * 32,
                signature=b"\x05" * 65),
    CommitReply(ReplyState.DECLINED, ADDRESS, reason="budget spent", signature=b"\x06" * 65),
]


@pytest.fixture(autouse=True)
def _flower_task() -> Iterator[None]:
    """Flower builds messages only inside a run's task."""
    with task_identity(run_id=1, node_id=0):
        yield


def _sent(request: Any) -> Message:
    return request_message(request, {"contract": ADDRESS, "run-id": 1}, node_id=7, group_id="1")


def _answer(status: dict[str, Any], metrics: dict[str, Any] | None = None) -> Message:
    content = RecordDict({STATUS: ConfigRecord(status)})
    if metrics is not None:
        content[METRICS] = MetricRecord(metrics)
    return Message(content, reply_to=_sent(CommitRequest(round=1, model_cid=CID)))


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: type(r).__name__)
def test_a_request_survives_its_message(request_: Any) -> None:
    message = _sent(request_)
    assert message.metadata.message_type == request_.message_type
    config = message.content[CONFIG]
    assert config["contract"] == ADDRESS and config["run-id"] == 1  # the locator rides along
    assert type(request_).from_record(config) == request_


@pytest.mark.parametrize("reply", REPLIES, ids=lambda r: f"{type(r).__name__}-{getattr(r, 'state', '')}")
def test_a_reply_survives_its_message(reply: Any) -> None:
    message = reply_message(_sent(CommitRequest(round=1, model_cid=CID)), reply)
    assert read_reply(type(reply), message) == reply


def test_the_wire_keys_are_the_ones_both_sides_read() -> None:
    status, metrics = REPLIES[1].to_record()
    assert status == {"state": "committed", "address": ADDRESS, "cid": CID}
    assert metrics is not None and metrics["gas"] == 120_000 and metrics["num-examples"] == 40
    assert AttestReply(ReplyState.LATE, ADDRESS).to_record() == ({"state": "late", "address": ADDRESS}, None)
    status, metrics = REPLIES[9].to_record()
    assert status["state"] == "attested" and status["update-cid"] == CID and status["excluded"] == [EXCLUDED[0].participant]
    assert metrics is not None and (metrics["commit-gas"], metrics["reveal-gas"], metrics["attest-gas"]) == (5, 6, 90_000)
    assert RoundReply(commit=REPLIES[1]).state is ReplyState.COMMITTED


@pytest.mark.parametrize(
    ("reply_type", "status", "metrics", "problem"),
    [
        (RevealReply, {"state": "handed", "address": ADDRESS, "record": b"\x00" * 3}, {"gas": 0},
         "reveal reply: 'record' is not 145 bytes"),
        (AttestReply, {"state": "signed", "address": ADDRESS, "cid": CID, "outcome": b"", "signature": 10**12},
         None, "attest reply: 'signature' is not 65 bytes"),
        (AttestReply, {"state": "attested", "address": ADDRESS, "cid": CID, "excluded": [ADDRESS],
                       "excluded-reasons": []}, {"gas": 1}, "differ in length"),
        (CommitReply, {"state": "committed", "address": ADDRESS, "cid": CID}, {"gas": 1},
         "commit reply's metrics lacks 'num-examples'"),
        (CommitReply, {"state": "won", "address": ADDRESS}, None, "'state' is 'won', not one of committed, handed, declined"),
        (CommitReply, {"address": ADDRESS}, None, "commit reply lacks 'state'"),
        (RevealReply, {"state": "revealed", "address": ADDRESS}, {"gas": -1}, "'gas' is not an integer of at least 0"),
        (EvaluateReply, {"state": "evaluated", "address": ADDRESS}, {"loss": [0.1], "accuracy": 1.0, "num-examples": 1},
         "evaluate reply's metrics: 'loss' is not a number"),
        (IdentityReply, {"address": ADDRESS}, None, "identity reply lacks 'signature'"),
    ],
)  # fmt: skip
def test_a_malformed_reply_is_one_protocol_error_naming_the_field(
    reply_type: type, status: dict[str, Any], metrics: dict[str, Any] | None, problem: str
) -> None:
    with pytest.raises(ProtocolError, match=problem.replace("(", r"\(")):
        read_reply(reply_type, _answer(status, metrics))


def test_a_reply_without_its_status_record_is_a_protocol_error() -> None:
    bare = Message(RecordDict({METRICS: MetricRecord({"gas": 1})}), reply_to=_sent(RevealRequest(round=1)))
    with pytest.raises(ProtocolError, match="lacks its 'status' record"):
        read_reply(RevealReply, bare)


def test_a_request_naming_no_round_is_refused() -> None:
    with pytest.raises(ProtocolError, match="train.commit request lacks 'round'"):
        CommitRequest.from_record({"model-cid": CID})
    with pytest.raises(ProtocolError, match="'round' is not an integer of at least 1"):
        RevealRequest.from_record({"round": 0})

"""The messages exchanged between the coordinator and the participants, typed.

Message types: ``query.identity`` (which chain address a node signs with),
``train.commit``, ``train.reveal`` and ``train.attest`` (the three phases of a round),
``train.round`` (the three on one message), ``evaluate`` (score a finalized model on the
silo's held-out data).

A request travels as one ConfigRecord (:data:`CONFIG`): the run's locator (which run the
message is about, :class:`~deai_flower.participant.locator.RunLocator`) and the request's
own fields. A reply travels as a ConfigRecord (:data:`STATUS`: its ``state``, the node's
``address`` and the step's fields) and, for the steps that have them, a MetricRecord
(:data:`METRICS`: gas used, training metrics). Each request and reply is one frozen
dataclass here with ``to_record``/``from_record``; ``from_record`` checks every field's
type and size, so a malformed message is one :class:`~deai_flower.errors.ProtocolError`
naming the field, never a ``KeyError`` deep in a phase. A reply is untrusted input to the
coordinator: it drops a malformed one as that node's error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from .errors import ProtocolError
from .protocol.encoding import MAX_SAMPLED, REVEAL_RECORD_BYTES
from .protocol.identity import CHALLENGE_BYTES
from .protocol.outcome import OUTCOME_ENTRY_BYTES

__all__ = [
    "CONFIG",
    "METRICS",
    "STATUS",
    "AttestReply",
    "AttestRequest",
    "CommitReply",
    "CommitRequest",
    "EvaluateReply",
    "EvaluateRequest",
    "Exclusion",
    "IdentityReply",
    "IdentityRequest",
    "ReplyState",
    "Request",
    "RevealReply",
    "RevealRequest",
    "RoundReply",
    "RoundRequest",
    "TrainingMetrics",
    "read_reply",
    "reply_message",
    "request_message",
]

#: ConfigRecord sent by the coordinator: the run's locator and the request's fields.
CONFIG = "config"
#: ConfigRecord replied by a node: ``state``, ``address`` and the step's fields.
STATUS = "status"
#: MetricRecord replied by a node: gas used, training metrics.
METRICS = "metrics"

#: Bytes of an EIP-191 signature (r, s, v).
SIGNATURE_BYTES = 65
#: The longest text field accepted (a reason, a CID, an address).
_MAX_TEXT = 64 * 1024
#: The longest outcome: one entry per sampled participant.
_MAX_OUTCOME_BYTES = MAX_SAMPLED * OUTCOME_ENTRY_BYTES


class ReplyState(StrEnum):
    """What a node's step came to (the ``state`` of its reply)."""

    COMMITTED = "committed"  # trained and committed to its update
    DECLINED = "declined"  # refused to take part (its terms, its budget, its example bound)
    REVEALED = "revealed"  # revealed on chain with its own transaction
    HANDED = "handed"  # handed its signed commitment, or its reveal record, to the relaying coordinator
    ATTESTED = "attested"  # attested the result with its own transaction
    SIGNED = "signed"  # signed its vote for the relaying coordinator to cast
    AGREED = "agreed"  # found the round finalized with the result it computed
    DISAGREED = "disagreed"  # found the round finalized with another result
    ABSTAINED = "abstained"  # could not fetch every revealed blob: cast no vote
    LATE = "late"  # asked after the quorum finalized the round
    EVALUATED = "evaluated"  # scored the model on its held-out data
    NO_EVAL_DATA = "no-eval-data"  # has no held-out data to score on


_COMMIT_STATES = (ReplyState.COMMITTED, ReplyState.HANDED, ReplyState.DECLINED)
_REVEAL_STATES = (ReplyState.REVEALED, ReplyState.HANDED)
_ATTEST_STATES = (ReplyState.ATTESTED, ReplyState.SIGNED, ReplyState.AGREED, ReplyState.DISAGREED,
                  ReplyState.ABSTAINED, ReplyState.LATE)  # fmt: skip
_EVALUATE_STATES = (ReplyState.EVALUATED, ReplyState.NO_EVAL_DATA)


class _Fields:
    """Typed, size-checked access to one record of a message: every problem is a
    ProtocolError naming the message and the field."""

    _MISSING: ClassVar[object] = object()

    def __init__(self, what: str, record: Mapping[str, Any] | None) -> None:
        self.what, self.record = what, {} if record is None else record

    def _get(self, key: str, default: Any) -> Any:
        if key in self.record:
            return self.record[key]
        if default is self._MISSING:
            raise ProtocolError(f"{self.what} lacks '{key}'")
        return default

    def _wrong(self, key: str, expected: str) -> ProtocolError:
        return ProtocolError(f"{self.what}: '{key}' is not {expected}")

    def text(self, key: str, default: Any = _MISSING, *, max_chars: int = _MAX_TEXT) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or len(value) > max_chars:
            raise self._wrong(key, f"text of at most {max_chars} characters")
        return value

    def integer(self, key: str, default: Any = _MISSING, *, minimum: int = 0) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._wrong(key, f"an integer of at least {minimum}")
        return value

    def number(self, key: str, default: Any = _MISSING) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(key, "a number")
        return float(value)

    def flag(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false")
        return value

    def blob(self, key: str, default: Any = _MISSING, *, size: int | None = None, max_size: int = _MAX_TEXT) -> bytes:
        value = self._get(key, default)
        if not isinstance(value, bytes) or (size is not None and len(value) != size) or len(value) > max_size:
            raise self._wrong(key, f"{size} bytes" if size is not None else f"at most {max_size} bytes")
        return value

    def texts(self, key: str, *, max_items: int = MAX_SAMPLED) -> list[str]:
        value = self._get(key, [])
        if (not isinstance(value, list) or len(value) > max_items
                or not all(isinstance(v, str) and len(v) <= _MAX_TEXT for v in value)):  # fmt: skip
            raise self._wrong(key, f"a list of at most {max_items} texts")
        return value

    def state(self, allowed: Sequence[ReplyState]) -> ReplyState:
        value = self._get("state", self._MISSING)
        if value not in {s.value for s in allowed}:
            raise ProtocolError(f"{self.what}: 'state' is {value!r}, not one of {', '.join(allowed)}")
        return ReplyState(value)


# ------------------------------------------------------------------ requests


@dataclass(frozen=True)
class IdentityRequest:
    """``query.identity``: sign this fresh challenge with your chain key."""

    message_type: ClassVar[str] = "query.identity"
    challenge: bytes

    def to_record(self) -> dict[str, Any]:
        return {"challenge": self.challenge}

    @classmethod
    def from_record(cls, config: Mapping[str, Any]) -> IdentityRequest:
        return cls(challenge=_Fields("identity query", config).blob("challenge", size=CHALLENGE_BYTES))


@dataclass(frozen=True)
class _ModelRequest:
    """A request about round ``round`` (the chain's round id) and its global model."""

    message_type: ClassVar[str]
    #: The lowest round the request may name (rounds are numbered from 1 on chain).
    first_round: ClassVar[int] = 1
    round: int
    model_cid: str

    def to_record(self) -> dict[str, Any]:
        return {"round": self.round, "model-cid": self.model_cid}

    @classmethod
    def from_record(cls, config: Mapping[str, Any]) -> Any:
        fields = _Fields(f"{cls.message_type} request", config)
        return cls(round=fields.integer("round", minimum=cls.first_round), model_cid=fields.text("model-cid", ""))


@dataclass(frozen=True)
class CommitRequest(_ModelRequest):
    """``train.commit``: train on the announced model and commit to the update (``relay``:
    sign the commitment, or a decline, for the coordinator's ``commitMany`` instead)."""

    message_type: ClassVar[str] = "train.commit"
    relay: bool = False

    def to_record(self) -> dict[str, Any]:
        return {**super().to_record(), "relay": self.relay}

    @classmethod
    def from_record(cls, config: Mapping[str, Any]) -> Any:
        request = super().from_record(config)
        return cls(round=request.round, model_cid=request.model_cid,
                   relay=_Fields(f"{cls.message_type} request", config).flag("relay", False))  # fmt: skip


@dataclass(frozen=True)
class RoundRequest(_ModelRequest):
    """``train.round``: commit, reveal and attest as the chain's phases pass."""

    message_type: ClassVar[str] = "train.round"


@dataclass(frozen=True)
class EvaluateRequest(_ModelRequest):
    """``evaluate``: score the announced finalized model on held-out data."""

    message_type: ClassVar[str] = "evaluate"
    #: Round 0 names the initial model, scored before any round is played.
    first_round: ClassVar[int] = 0


@dataclass(frozen=True)
class _RelayableRequest:
    """A request about round ``round`` that the coordinator may offer to relay."""

    message_type: ClassVar[str]
    round: int
    relay: bool = False

    def to_record(self) -> dict[str, Any]:
        return {"round": self.round, "relay": self.relay}

    @classmethod
    def from_record(cls, config: Mapping[str, Any]) -> Any:
        fields = _Fields(f"{cls.message_type} request", config)
        return cls(round=fields.integer("round", minimum=1), relay=fields.flag("relay", False))


@dataclass(frozen=True)
class RevealRequest(_RelayableRequest):
    """``train.reveal``: reveal what you committed (or, relayed, hand the record over)."""

    message_type: ClassVar[str] = "train.reveal"


@dataclass(frozen=True)
class AttestRequest(_RelayableRequest):
    """``train.attest``: aggregate the revealed set and attest (or, relayed, sign) its CID."""

    message_type: ClassVar[str] = "train.attest"


Request = IdentityRequest | CommitRequest | RevealRequest | AttestRequest | RoundRequest | EvaluateRequest


def request_message(request: Request, locator: Mapping[str, Any], *, node_id: int, group_id: str) -> Message:
    """The message carrying ``request`` about the run ``locator`` names to node ``node_id``."""
    return Message(RecordDict({CONFIG: ConfigRecord({**locator, **request.to_record()})}), dst_node_id=node_id,
                   message_type=request.message_type, group_id=group_id)  # fmt: skip


# ------------------------------------------------------------------ replies


@dataclass(frozen=True)
class TrainingMetrics:
    """What a committer's DP-SGD training spent and achieved."""

    num_examples: int
    epsilon: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    train_loss: float
    train_seconds: float

    def to_record(self) -> dict[str, Any]:
        return {"num-examples": self.num_examples, "epsilon": self.epsilon, "noise-multiplier": self.noise_multiplier,
                "sample-rate": self.sample_rate, "steps": self.steps, "train-loss": self.train_loss,
                "train-seconds": self.train_seconds}  # fmt: skip

    @classmethod
    def from_fields(cls, fields: _Fields) -> TrainingMetrics:
        return cls(num_examples=fields.integer("num-examples"), epsilon=fields.number("epsilon"),
                   noise_multiplier=fields.number("noise-multiplier"), sample_rate=fields.number("sample-rate"),
                   steps=fields.integer("steps"), train_loss=fields.number("train-loss"),
                   train_seconds=fields.number("train-seconds"))  # fmt: skip


@dataclass(frozen=True)
class IdentityReply:
    """The chain address a node claims and its signature over the challenge."""

    address: str
    signature: bytes

    def to_record(self) -> tuple[dict[str, Any], None]:
        return {"address": self.address, "signature": self.signature}, None

    @classmethod
    def from_record(cls, status: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> IdentityReply:
        fields = _Fields("identity reply", status)
        return cls(address=fields.text("address", max_chars=100),
                   signature=fields.blob("signature", size=SIGNATURE_BYTES))  # fmt: skip


@dataclass(frozen=True)
class CommitReply:
    """``committed`` (with the update's CID, its training and the gas it cost), ``handed``
    (the same, with its ``commitment`` and its ``signature`` of it for the relaying
    coordinator's ``commitMany``, protocol §2.3) or ``declined`` (with the reason;
    ``terms``: the silo's own terms refuse the run; ``signature``: its signed decline,
    where the coordinator relays)."""

    state: ReplyState
    address: str
    cid: str = ""
    training: TrainingMetrics | None = None
    gas: int = 0
    reason: str = ""
    terms: bool = False
    commitment: bytes = b""
    signature: bytes = b""

    def __post_init__(self) -> None:
        if self.state not in _COMMIT_STATES:
            raise ProtocolError(f"a commit reply cannot be '{self.state}'")
        if self.state is not ReplyState.DECLINED and (not self.cid or self.training is None):
            raise ProtocolError(f"a commit reply '{self.state}' names its update's CID and training")
        if self.state is ReplyState.HANDED and (len(self.commitment) != 32 or len(self.signature) != SIGNATURE_BYTES):
            raise ProtocolError("a commit reply 'handed' carries its 32-byte commitment and its signature")

    def to_record(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        if self.state is ReplyState.DECLINED:
            status: dict[str, Any] = {"state": self.state.value, "reason": self.reason, "address": self.address}
            if self.signature:
                status["signature"] = self.signature
            return ({**status, "terms": True} if self.terms else status), None
        assert self.training is not None
        status = {"state": self.state.value, "address": self.address, "cid": self.cid}
        if self.state is ReplyState.HANDED:
            status.update(commitment=self.commitment, signature=self.signature)
        return status, {**self.training.to_record(), "gas": self.gas}

    @classmethod
    def from_record(cls, status: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> CommitReply:
        fields = _Fields("commit reply", status)
        state, address = fields.state(_COMMIT_STATES), fields.text("address", max_chars=100)
        if state is ReplyState.DECLINED:
            signature = fields.blob("signature", b"", max_size=SIGNATURE_BYTES)
            if signature and len(signature) != SIGNATURE_BYTES:
                raise ProtocolError(f"commit reply: a signed decline's signature is {SIGNATURE_BYTES} bytes")
            return cls(state=state, address=address, reason=fields.text("reason", ""), terms=fields.flag("terms", False),
                       signature=signature)  # fmt: skip
        numbers = _Fields("commit reply's metrics", metrics)
        handed = state is ReplyState.HANDED
        return cls(state=state, address=address, cid=fields.text("cid"), training=TrainingMetrics.from_fields(numbers),
                   gas=numbers.integer("gas"), commitment=fields.blob("commitment", size=32) if handed else b"",
                   signature=fields.blob("signature", size=SIGNATURE_BYTES) if handed else b"")  # fmt: skip


@dataclass(frozen=True)
class RevealReply:
    """``revealed`` (with the gas its own transaction cost) or ``handed`` (with the reveal
    record for the relaying coordinator to publish)."""

    state: ReplyState
    address: str
    record: bytes = b""
    gas: int = 0

    def __post_init__(self) -> None:
        if self.state not in _REVEAL_STATES:
            raise ProtocolError(f"a reveal reply cannot be '{self.state}'")

    def to_record(self) -> tuple[dict[str, Any], dict[str, Any]]:
        status = {"state": self.state.value, "address": self.address}
        if self.state is ReplyState.HANDED:
            status["record"] = self.record
        return status, {"gas": self.gas}

    @classmethod
    def from_record(cls, status: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> RevealReply:
        fields = _Fields("reveal reply", status)
        state, address = fields.state(_REVEAL_STATES), fields.text("address", max_chars=100)
        record = fields.blob("record", size=REVEAL_RECORD_BYTES) if state is ReplyState.HANDED else b""
        return cls(state=state, address=address, record=record, gas=_Fields("reveal reply's metrics", metrics).integer("gas", 0))


@dataclass(frozen=True)
class Exclusion:
    """A revealed update an attester refused: whose, its verdict and why."""

    participant: str
    verdict: str
    reason: str


@dataclass(frozen=True)
class AttestReply:
    """An attester's step: ``attested`` or ``signed`` (with the result CID; signed: the
    outcome and the vote's signature), ``agreed``/``disagreed`` (the round was finalized
    meanwhile), ``abstained`` or ``late``; the reveals it refused (``excluded``)."""

    state: ReplyState
    address: str
    cid: str = ""
    outcome: bytes = b""
    signature: bytes = b""
    excluded: tuple[Exclusion, ...] = ()
    gas: int = 0

    _VOTED: ClassVar[tuple[ReplyState, ...]] = (ReplyState.ATTESTED, ReplyState.SIGNED)
    _WITH_CID: ClassVar[tuple[ReplyState, ...]] = (*_VOTED, ReplyState.AGREED, ReplyState.DISAGREED)

    def __post_init__(self) -> None:
        if self.state not in _ATTEST_STATES:
            raise ProtocolError(f"an attest reply cannot be '{self.state}'")

    @property
    def voted(self) -> bool:
        """Whether it attested or signed a vote (its reply then carries gas metrics)."""
        return self.state in self._VOTED

    def status(self) -> dict[str, Any]:
        """The reply's status entries (a round's reply carries them too)."""
        status: dict[str, Any] = {"state": self.state.value, "address": self.address}
        if self.state in self._WITH_CID:
            status["cid"] = self.cid
        if self.state is ReplyState.SIGNED:
            status.update(outcome=self.outcome, signature=self.signature)
        if self.state is not ReplyState.LATE:
            status.update({"excluded": [e.participant for e in self.excluded],
                           "excluded-reasons": [e.reason for e in self.excluded],
                           "excluded-verdicts": [e.verdict for e in self.excluded]})  # fmt: skip
        return status

    def to_record(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        return self.status(), ({"gas": self.gas, "excluded": len(self.excluded)} if self.voted else None)

    @classmethod
    def from_fields(cls, fields: _Fields, gas: int) -> AttestReply:
        state, address = fields.state(_ATTEST_STATES), fields.text("address", max_chars=100)
        participants, reasons = fields.texts("excluded"), fields.texts("excluded-reasons")
        verdicts = fields.texts("excluded-verdicts") or [""] * len(participants)
        if not len(participants) == len(reasons) == len(verdicts):
            raise ProtocolError(f"{fields.what}: 'excluded', 'excluded-reasons' and 'excluded-verdicts' differ in length")
        signed = state is ReplyState.SIGNED
        return cls(state=state, address=address, cid=fields.text("cid") if state in cls._WITH_CID else "",
                   outcome=fields.blob("outcome", max_size=_MAX_OUTCOME_BYTES) if signed else b"",
                   signature=fields.blob("signature", size=SIGNATURE_BYTES) if signed else b"",
                   excluded=tuple(Exclusion(p, v, r) for p, v, r in zip(participants, verdicts, reasons, strict=True)),
                   gas=gas)  # fmt: skip

    @classmethod
    def from_record(cls, status: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> AttestReply:
        return cls.from_fields(_Fields("attest reply", status), _Fields("attest reply's metrics", metrics).integer("gas", 0))


@dataclass(frozen=True)
class RoundReply:
    """A whole round on one message: the commit step's reply and, as far as the round got,
    the reveal and attest steps' (``phase``: the round's phase when the node stopped).
    Its ``state`` is the last step's."""

    commit: CommitReply
    reveal: RevealReply | None = None
    attest: AttestReply | None = None
    phase: str = ""

    @property
    def state(self) -> ReplyState:
        last = self.attest or self.reveal or self.commit
        return last.state

    def to_record(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        if self.commit.state is ReplyState.DECLINED:
            return self.commit.to_record()
        assert self.commit.training is not None
        status: dict[str, Any] = {"state": self.state.value, "address": self.commit.address,
                                  "update-cid": self.commit.cid}  # fmt: skip
        metrics: dict[str, Any] = {**self.commit.training.to_record(), "commit-gas": self.commit.gas}
        if self.reveal is not None:
            metrics["reveal-gas"] = self.reveal.gas
        if self.attest is not None:
            status.update(self.attest.status())
            if self.attest.voted:
                metrics.update({"attest-gas": self.attest.gas, "excluded": len(self.attest.excluded)})
        return {**status, "phase": self.phase}, metrics

    @classmethod
    def from_record(cls, status: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> RoundReply:
        fields = _Fields("round reply", status)
        state = fields.state((*_COMMIT_STATES, *_REVEAL_STATES, *_ATTEST_STATES))
        if state is ReplyState.DECLINED:
            return cls(commit=CommitReply.from_record(status, metrics))
        numbers = _Fields("round reply's metrics", metrics)
        address = fields.text("address", max_chars=100)
        commit = CommitReply(state=ReplyState.COMMITTED, address=address, cid=fields.text("update-cid"),
                             training=TrainingMetrics.from_fields(numbers), gas=numbers.integer("commit-gas"))  # fmt: skip
        reveal = None
        if "reveal-gas" in numbers.record:
            reveal = RevealReply(state=ReplyState.REVEALED, address=address, gas=numbers.integer("reveal-gas"))
        attest = AttestReply.from_fields(fields, numbers.integer("attest-gas", 0)) if state in _ATTEST_STATES else None
        return cls(commit=commit, reveal=reveal, attest=attest, phase=fields.text("phase", ""))


@dataclass(frozen=True)
class EvaluateReply:
    """``evaluated`` (the model's loss and accuracy on ``num_examples`` held-out examples)
    or ``no-eval-data``."""

    state: ReplyState
    address: str
    model_cid: str = ""
    loss: float = 0.0
    accuracy: float = 0.0
    num_examples: int = 0

    def __post_init__(self) -> None:
        if self.state not in _EVALUATE_STATES:
            raise ProtocolError(f"an evaluate reply cannot be '{self.state}'")

    def to_record(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.state is ReplyState.NO_EVAL_DATA:
            return {"state": self.state.value, "address": self.address}, {"num-examples": 0}
        return ({"state": self.state.value, "address": self.address, "model-cid": self.model_cid},
                {"loss": self.loss, "accuracy": self.accuracy, "num-examples": self.num_examples})  # fmt: skip

    @classmethod
    def from_record(cls, status: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> EvaluateReply:
        fields, numbers = _Fields("evaluate reply", status), _Fields("evaluate reply's metrics", metrics)
        state, address = fields.state(_EVALUATE_STATES), fields.text("address", max_chars=100)
        if state is ReplyState.NO_EVAL_DATA:
            return cls(state=state, address=address)
        return cls(state=state, address=address, model_cid=fields.text("model-cid", ""), loss=numbers.number("loss"),
                   accuracy=numbers.number("accuracy"), num_examples=numbers.integer("num-examples"))  # fmt: skip


Reply = IdentityReply | CommitReply | RevealReply | AttestReply | RoundReply | EvaluateReply


def reply_message(message: Message, reply: Reply) -> Message:
    """A node's ``reply`` to ``message``."""
    status, metrics = reply.to_record()
    content = RecordDict({STATUS: ConfigRecord(status)})
    if metrics is not None:
        content[METRICS] = MetricRecord(metrics)
    return Message(content, reply_to=message)


def read_reply(reply_type: type[Any], message: Message) -> Any:
    """The typed reply a node's (non-error) ``message`` carries.

    Raises:
        ProtocolError: the reply lacks a field, or one has the wrong type or size.
    """
    content = message.content
    status = content[STATUS] if STATUS in content else None
    if not isinstance(status, ConfigRecord):
        raise ProtocolError(f"a reply to {message.metadata.message_type} lacks its '{STATUS}' record")
    metrics = content[METRICS] if METRICS in content else None
    if metrics is not None and not isinstance(metrics, MetricRecord):
        raise ProtocolError(f"a reply to {message.metadata.message_type} has a '{METRICS}' record of the wrong kind")
    return reply_type.from_record(status, metrics)

"""CommitRevealStrategy: a Flower strategy whose aggregate is fixed on chain, not by it.

The coordinator tells participants *when* to act and reads what the chain decided. One
round is six visible steps, each a method below with its own deadline:

1. :meth:`open_round` — take the round the chain has open (the attestation that
   finalized the previous round opened it) or open one; the chain fixes its global
   model's CID and its sampling beacon;
2. :meth:`commit` — ``train.commit`` to the sampled nodes: they fetch the global model by
   the CID the chain records, train with DP-SGD and commit to their update's hash
   (waited for at most the spec's commit duration);
3. :meth:`reveal` — after the commit deadline, ``train.reveal`` to the nodes that
   committed: they publish the blob and reveal on chain (reveal duration);
4. :meth:`attest` — after the reveal deadline, ``train.attest`` to a committee of
   revealers ranked by the beacon: each aggregates the revealed set on its own and
   attests the result's CID; a quorum finalizes it (attest duration);
5. :meth:`finalize` — read the finalized CID from the chain, fetch that blob and check
   it against the CID and the model's array spec (rebuilt from the round's reveals when
   the store has lost it);
6. :meth:`evaluate` — score the finalized model: ``evaluate`` to every node that proved
   its identity, each scoring the chain's model on its own held-out data (federated
   evaluation: a deployment has no central test set), and/or a simulation's central test
   split when the harness gives one.

With ``one_message_rounds`` (a deployment, where every node runs its message at once)
steps 2–4 are one ``train.round`` message per sampled node (:meth:`play_round`): the node
commits, reveals and attests as the chain's phases pass, with one ClientApp start per
round instead of three.

The rounds loop (:meth:`start`) replaces Flower's own, because Flower's loop folds
reveal and attest into ``aggregate_train`` under one timeout, and counts attempts, not
finalized rounds: here a failed round is followed by a new attempt until the spec's
``num_rounds`` rounds are finalized or ``max_failed_rounds`` attempts have failed. The
rule, the phase durations and the committee size come from the run spec the chain
records; sampling from the chain's beacon. The coordinator chooses neither who takes part
nor what the result is.

This module is the loop and its phases; what they lean on has a module of its own, as
Flower's strategies keep their helpers apart: node admission (:mod:`.admission`),
relaying (:mod:`.relay`), sending and polling (:mod:`.transport`), the typed messages
(:mod:`deai_flower.messages`), and the sampling rule, which is protocol
(:mod:`deai_flower.protocol.sampling`). Both flows record a step's replies with the same
helpers, as the participant's handlers play both with the same step functions.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, TypeVar

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from deai_flower.chain import RoundsContract, TxResult
from deai_flower.chain.phases import await_phase_end
from deai_flower.errors import (
    BlobFormatError,
    ChainError,
    ConfigError,
    ProtocolError,
    ResultUnrecoverableError,
    StoreError,
)
from deai_flower.messages import (
    AttestReply,
    AttestRequest,
    CommitReply,
    CommitRequest,
    EvaluateReply,
    EvaluateRequest,
    ReplyState,
    Request,
    RevealReply,
    RevealRequest,
    RoundReply,
    RoundRequest,
    read_reply,
    request_message,
)
from deai_flower.protocol.encoding import STAGES
from deai_flower.protocol.sampling import RoundSample, round_sample
from deai_flower.protocol.spec import RunSpec
from deai_flower.recovery import fetch_result
from deai_flower.storage import ContentStore, cid_from_bytes, compute_cid, encode_arrays

from .admission import NodeAdmission
from .metrics import federated_summary, training_summary
from .relay import Relayed, cast_votes, relay_commits, relay_reveals
from .transport import exchange

#: The share of a reveal or attest phase a relaying coordinator waits for the nodes'
#: hand-overs; the rest is left for its batches to land before the phase's deadline.
_RELAY_WAIT_SHARE = 0.75

#: Evaluation of a finalized model: (round, arrays) -> metrics such as loss and accuracy.
EvaluateFn = Callable[[int, dict[str, Any]], dict[str, float]]

_Reply = TypeVar("_Reply", CommitReply, RevealReply, AttestReply, RoundReply)


@dataclass
class RoundReport:
    """What happened in one on-chain round attempt (``round`` is the chain's round id)."""

    round: int
    attempt: int
    status: str = "open"  # finalized | failed
    model_cid: str = ""
    result_cid: str = ""
    sampled: list[str] = field(default_factory=list)
    committed: list[str] = field(default_factory=list)
    declined: dict[str, str] = field(default_factory=dict)
    revealed: list[str] = field(default_factory=list)
    attested: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)  # revealer -> why attesters refused its blob
    gas_used: int = 0
    gas_by_call: dict[str, int] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    epsilon_max: float = 0.0
    train_loss: float = float("nan")
    metrics: dict[str, float] = field(default_factory=dict)  # evaluation of the finalized model
    #: Federated evaluation of the finalized model: per silo and example-weighted.
    federated: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    #: How the finalized result was rebuilt when the store had lost it ('' when it had it).
    recovered: str = ""

    def add_gas(self, call: str, gas: int) -> None:
        self.gas_used += gas
        self.gas_by_call[call] = self.gas_by_call.get(call, 0) + gas


class CommitRevealStrategy(Strategy):
    """Commit–reveal–attest rounds of one run on a ``CommitRevealRounds`` contract.

    Parameters
    ----------
    contract:
        The contract, signing with the coordinator's key (it opens rounds; opening is
        permissionless and gives no say over sampling or results).
    run_id:
        The on-chain run this federation executes.
    spec:
        The run's spec, as the chain records it (phase durations, committee size,
        number of rounds, blob size limit).
    store:
        Content store holding the blobs named by the chain's CIDs.
    expected_spec:
        Names, dtypes and shapes of the model's arrays; every fetched blob is checked.
    locator:
        Where the run is, sent with every message: ``contract``, ``run-id``, and for
        simulated nodes ``chain-url`` and ``store`` (deployed nodes use their own).
    max_failed_rounds:
        Failed attempts tolerated before the run stops short of ``num_rounds``.
    evaluate_fn:
        Scores each finalized model (and the initial one, as round 0) centrally; None: no
        central scoring.
    federated_evaluation:
        Ask every identified node to score each finalized model (and the initial one) on
        its own held-out data; the example-weighted result is the round's metrics when
        there is no ``evaluate_fn``.
    evaluate_timeout_s:
        How long to wait for the nodes' scores (default: the spec's commit duration).
    one_message_rounds:
        Send each sampled node one ``train.round`` message per round, on which it commits,
        reveals and attests as the chain's phases pass (:meth:`play_round`), instead of one
        message per phase. For deployments, where every node runs its message at once;
        an engine that may run nodes one after the other (the in-process simulation) needs
        one message per phase.
    relay:
        With one message per phase, publish the reveals the nodes hand over in one
        ``revealMany`` and cast their signed votes in one ``attestMany`` per result
        (protocol §2.4, §2.5): a round then costs each participant one transaction of its
        own (its commit) instead of three, and about a quarter less gas. The coordinator
        pays for the batches; it can publish only what the nodes committed to and signed.
        False: every node sends its own reveal and attestation.
    reply_poll_s:
        Ask the SuperLink for replies every ``reply_poll_s`` seconds (None: Flower's
        ``send_and_receive``, which asks every 3 s; the in-process engine needs it, as
        it holds a batch to its deadline there).
    on_phase, on_round:
        Progress callbacks (round id and phase name; a finished :class:`RoundReport`).
    """

    def __init__(
        self,
        *,
        contract: RoundsContract,
        run_id: int,
        spec: RunSpec,
        store: ContentStore,
        expected_spec: dict[str, Any],
        locator: dict[str, Any],
        max_failed_rounds: int = 3,
        evaluate_fn: EvaluateFn | None = None,
        federated_evaluation: bool = False,
        evaluate_timeout_s: float | None = None,
        bind_supernode_keys: bool = True,
        one_message_rounds: bool = False,
        relay: bool = True,
        reply_poll_s: float | None = None,
        on_phase: Callable[[int, str], None] | None = None,
        on_round: Callable[[RoundReport], None] | None = None,
    ) -> None:
        if max_failed_rounds < 0:
            raise ConfigError(f"max_failed_rounds must be >= 0 (got {max_failed_rounds})")
        self.contract = contract
        self.run_id = run_id
        self.spec = spec
        self.store = store
        self.expected_spec = expected_spec
        self.locator = dict(locator)
        self.max_failed_rounds = max_failed_rounds
        self.evaluate_fn = evaluate_fn
        self.federated_evaluation = federated_evaluation
        self.one_message_rounds = one_message_rounds
        self.relay = relay
        self._signed_declines: dict[str, bytes] = {}  # address -> its signed decline, in the round asked
        self.reply_poll_s = reply_poll_s
        self.evaluate_timeout_s = float(spec.rounds.commit_s if evaluate_timeout_s is None else evaluate_timeout_s)
        self.admission = NodeAdmission(contract=contract, run_id=run_id, locator=self.locator,
                                       bind_supernode_keys=bind_supernode_keys,
                                       timeout_s=float(spec.rounds.commit_s))  # fmt: skip
        self.initial_federated: dict[str, Any] = {}
        self._held: tuple[str, bytes] | None = None  # the chain's current model, as stored: (CID, blob)
        self._on_phase = on_phase or (lambda _r, _p: None)
        self._on_round = on_round or (lambda _report: None)
        self.reports: list[RoundReport] = []
        self.initial_metrics: dict[str, float] = {}
        self._grid: Grid | None = None
        self._commit_closed: set[int] = set()  # rounds whose commit phase was ended early
        self._declines_relayed: set[int] = set()  # one-message rounds: nodes whose reply was looked at
        self._round_state: dict[str, Any] = {}  # the current round's getRound, read when it opened
        self._sample: RoundSample | None = None  # the current round's sample
        self._positions: dict[str, int] = {}  # sampled address -> its position in the round's shuffle
        self._phase_start = 0.0

    @property
    def addresses(self) -> dict[int, str]:
        """The nodes that proved their chain address, by node id."""
        return dict(self.admission.addresses)

    @property
    def refused(self) -> dict[int, dict[str, str]]:
        """Nodes refused, by node id: the address they claimed (or are bound to) and why."""
        return self.admission.refused

    # ------------------------------------------------------------------ the rounds loop

    def start(  # type: ignore[override]
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int | None = None,
        timeout: float | None = None,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Play rounds until the spec's rounds are finalized (or too many attempts failed).

        ``initial_arrays`` is the chain's current global model (the initial one, or the
        last finalized after a resume); ``num_rounds`` defaults to the spec's. The other
        arguments of Flower's signature are not used: phases have the spec's durations.
        """
        target = self.spec.rounds.num_rounds if num_rounds is None else num_rounds
        result = Result(arrays=initial_arrays)
        run = self.contract.get_run(self.run_id)
        finalized = int(run["finalizedRounds"])
        self._hold(cid_from_bytes(bytes(run["modelCid"])), _plain(initial_arrays))
        if self.evaluate_fn is not None:
            self.initial_metrics = self.evaluate_fn(finalized, _plain(initial_arrays))
            result.evaluate_metrics_serverapp[finalized] = MetricRecord(self.initial_metrics)
        if self.federated_evaluation:
            self._discover(grid)
            model_cid = cid_from_bytes(bytes(run["modelCid"]))
            self.initial_federated = self._evaluate_on_nodes(finalized, model_cid)
            if self.evaluate_fn is None and self.initial_federated.get("num_examples"):
                self.initial_metrics = {k: self.initial_federated[k] for k in ("loss", "accuracy")}
        failures, attempt = 0, 0
        while finalized < target and failures <= self.max_failed_rounds:
            attempt += 1
            report = self.open_round(grid, attempt)
            try:
                arrays = self._play(report)
            finally:
                self._mark(report, "done")
                self.reports.append(report)
            if arrays is None:
                failures += 1
            else:
                finalized += 1
                result.arrays = arrays
                result.train_metrics_clientapp[report.round] = MetricRecord(
                    {"train-loss": report.train_loss, "epsilon-max": report.epsilon_max})  # fmt: skip
                if report.metrics:
                    result.evaluate_metrics_serverapp[report.round] = MetricRecord(report.metrics)
            self._on_round(report)
        if finalized < target:
            log(WARNING, "run %s stopped with %s of %s rounds finalized after %s failed attempts", self.run_id,
                finalized, target, failures)  # fmt: skip
        return result

    def _play(self, report: RoundReport) -> ArrayRecord | None:
        """Commit, reveal, attest (one message per phase, or :meth:`play_round`), finalize
        and evaluate one opened round."""
        if self.one_message_rounds:
            finalized = self.play_round(report)
        else:
            committed = self.commit(report)
            self.reveal(report, committed)
            finalized = self.attest(report)
        self._settle_missing_reveals(report)
        if not finalized:
            return None
        arrays = self.finalize(report)
        if arrays is not None:
            self.evaluate(report, arrays)
        return arrays

    # ------------------------------------------------------------------ phases

    def open_round(self, grid: Grid, attempt: int) -> RoundReport:
        """Take the open on-chain round, or open one, and learn the nodes' addresses."""
        self._discover(grid)
        opening = time.perf_counter()
        run, state, tx = self._round_to_play()
        report = RoundReport(round=int(state["round"]), attempt=attempt, model_cid=cid_from_bytes(bytes(run["modelCid"])))
        self._put_back(report)
        report.phase_seconds["open"] = time.perf_counter() - opening
        if tx is not None:
            report.add_gas("openRound", tx.gas_used)
        self._phase_start = 0.0
        self._round_state = {**state, "sampleBps": int(run["sampleBps"])}
        return report

    def commit(self, report: RoundReport) -> dict[int, CommitReply]:
        """Ask the sampled nodes to train and commit; wait at most the commit duration
        (relaying: to sign their commitments or declines, which
        :func:`.relay.relay_commits` records in one ``commitMany``, within the first
        :data:`_RELAY_WAIT_SHARE` of it)."""
        self._mark(report, "commit")
        self._signed_declines = {}
        replies = self._exchange(self._sampled_nodes(report), CommitRequest(report.round, report.model_cid,
                                                                            relay=self.relay),
                                 report, timeout=self._reply_window(self.spec.rounds.commit_s))  # fmt: skip
        answered = self._read(report, replies, CommitReply)
        committed = {n: r for n, r in answered.items() if r.state is ReplyState.COMMITTED}
        signed = {self.admission.name(n): (r.commitment, r.signature) for n, r in answered.items()
                  if r.state is ReplyState.HANDED}  # fmt: skip
        signed.update((a, (bytes(32), sig)) for a, sig in self._signed_declines.items())
        if signed:
            landed = set(self._record_relayed(report, "commitMany", relay_commits(self.contract, self.run_id,
                                                                                   report.round, signed)))  # fmt: skip
            committed.update({n: r for n, r in answered.items() if r.state is ReplyState.HANDED and n in landed})
        self._record_commits(report, committed)
        return committed

    def reveal(self, report: RoundReport, committed: Mapping[int, Any]) -> dict[int, RevealReply]:
        """After the commit deadline, ask the committers to publish and reveal (relaying:
        to hand their records over, which :func:`.relay.relay_reveals` publishes)."""
        self._mark(report, "reveal")
        self._wait_for_phase_end(report.round, "commit")
        replies = self._exchange(committed, RevealRequest(report.round, relay=self.relay), report,
                                 timeout=self._reply_window(self.spec.rounds.reveal_s))  # fmt: skip
        answered = self._read(report, replies, RevealReply)
        revealed = {n: answered[n] for n in self._record_own_reveals(report, answered)}
        handed = {self.admission.name(n): r.record for n, r in answered.items() if r.state is ReplyState.HANDED}
        if handed:
            revealed.update({n: answered[n] for n in self._relay_reveals(report, handed)})
        report.revealed = [self.admission.name(n) for n in revealed]
        return revealed

    def attest(self, report: RoundReport) -> bool:
        """After the reveal deadline, ask a committee of revealers to aggregate and
        attest (relaying: to sign their votes, which :func:`.relay.cast_votes` casts);
        True when the chain finalized the round."""
        self._mark(report, "attest")
        phase = self._wait_for_phase_end(report.round, "reveal")
        # The revealers are final now; the chain names them all, also a node whose hand-over
        # was lost and that revealed on its own (its reveal guard, protocol §2.4).
        self._read_revealers(report)
        if phase != "attest":
            return self._fail(report, f"reveal phase ended in phase '{phase}' with {len(report.revealed)} valid "
                                      "reveals")  # fmt: skip
        replies = self._exchange(self._committee(report.revealed), AttestRequest(report.round, relay=self.relay),
                                 report, timeout=self._reply_window(self.spec.rounds.attest_s))  # fmt: skip
        answered = self._read(report, replies, AttestReply)
        attested = self._record_attests(report, answered)
        signed = {self.admission.name(n): r for n, r in answered.items() if r.state is ReplyState.SIGNED}
        if signed:
            attested += self._cast_votes(report, signed)
        report.attested = [self.admission.name(n) for n in attested]
        phase = self.contract.phase(self.run_id, report.round)
        if phase != "finalized":
            return self._fail(report, f"no attestation quorum ({len(attested)} attestations; phase '{phase}')")
        return True

    def play_round(self, report: RoundReport) -> bool:
        """One message per round (a deployment): ``train.round`` to the sampled nodes,
        which commit, reveal and attest on their own as the chain's phases pass (see
        :func:`~deai_flower.participant.handlers.handle_round`), waited for at most the
        round's three durations; True when the chain finalized the round.

        The revealers are read from the chain; the committers, attesters, declines,
        errors and exclusions from the replies, recorded as :meth:`commit`,
        :meth:`reveal` and :meth:`attest` record theirs.
        """
        self._mark(report, "round")
        self._declines_relayed = set()
        replies = self._exchange(self._sampled_nodes(report), RoundRequest(report.round, report.model_cid), report,
                                 timeout=self._longest_phase(), until_closed=True)  # fmt: skip
        played = {n: r for n, r in self._read(report, replies, RoundReply).items()
                  if r.commit.state is ReplyState.COMMITTED}  # fmt: skip
        self._record_commits(report, {n: r.commit for n, r in played.items()})
        self._record_own_reveals(report, {n: r.reveal for n, r in played.items() if r.reveal is not None})
        attested = self._record_attests(report, {n: r.attest for n, r in played.items() if r.attest is not None})
        report.attested = [self.admission.name(n) for n in attested]
        phase = self.contract.phase(self.run_id, report.round)
        if phase != "finalized":
            self._fail(report, f"round not finalized: {len(report.attested)} attestations, phase '{phase}'")
        self._read_revealers(report)  # the reveal phase is over either way: the chain's list is final
        return phase == "finalized"

    def finalize(self, report: RoundReport) -> ArrayRecord | None:
        """The model the chain finalized, fetched by its CID and checked.

        When the store has no usable copy, the result is rebuilt from the round's
        aggregated reveals and used only if it hashes to the finalized CID
        (:func:`~deai_flower.recovery.fetch_result`); ``report.recovered`` says so.
        """
        self._mark(report, "finalize")
        report.result_cid = cid_from_bytes(bytes(self.contract.get_run(self.run_id)["modelCid"]))
        try:
            arrays, rebuilt = fetch_result(self.contract, self.run_id, report.result_cid, spec=self.spec,
                                           store=self.store, expected=self.expected_spec)  # fmt: skip
        except (StoreError, BlobFormatError) as exc:
            named = isinstance(exc, ResultUnrecoverableError)  # its reason names the CID and what is missing
            report.status = "failed"
            report.reason = str(exc) if named else f"finalized model {report.result_cid} unusable: {exc}"
            log(WARNING, "round %s: %s", report.round, report.reason)
            return None
        if rebuilt is not None:
            report.recovered = rebuilt.describe()
            log(WARNING, "round %s: %s", report.round, report.recovered)
        report.status = "finalized"
        self._hold(report.result_cid, arrays)
        return ArrayRecord({k: Array(v) for k, v in arrays.items()})

    def evaluate(self, report: RoundReport, arrays: ArrayRecord) -> None:
        """Score the finalized model: on the nodes' held-out data, and/or centrally."""
        if self.evaluate_fn is None and not self.federated_evaluation:
            return
        self._mark(report, "evaluate")
        if self.federated_evaluation:
            report.federated = self._evaluate_on_nodes(report.round, report.result_cid)
            if self.evaluate_fn is None and report.federated.get("num_examples"):
                report.metrics = {k: report.federated[k] for k in ("loss", "accuracy")}
        if self.evaluate_fn is not None:
            report.metrics = self.evaluate_fn(report.round, _plain(arrays))

    def _evaluate_on_nodes(self, round_id: int, model_cid: str) -> dict[str, Any]:
        """``evaluate`` to every identified node; their scores per silo and weighted by
        held-out examples (``loss``, ``accuracy``, ``num_examples``; no entry without any)."""
        replies = self._exchange(list(self.admission.addresses), EvaluateRequest(round_id, model_cid), None,
                                 timeout=self.evaluate_timeout_s)  # fmt: skip
        scores: dict[str, EvaluateReply] = {}
        errors: dict[str, str] = {}
        for reply in replies:
            address = self.admission.name(reply.metadata.src_node_id)
            try:
                if reply.has_error():
                    raise ProtocolError(reply.error.reason)
                scored: EvaluateReply = read_reply(EvaluateReply, reply)
            except ProtocolError as exc:
                errors[address] = str(exc)
                log(WARNING, "round %s: node %s did not evaluate: %s", round_id, address, exc)
                continue
            if scored.state is ReplyState.EVALUATED:
                scores[address] = scored
        summary = federated_summary(scores, errors)
        if summary["num_examples"]:
            log(INFO, "round %s: federated accuracy %.4f on %s held-out examples of %s silos", round_id,
                summary["accuracy"], summary["num_examples"], len(scores))  # fmt: skip
        return summary

    # ------------------------------------------------------------------ steps both flows record with

    def _sampled_nodes(self, report: RoundReport) -> list[int]:
        """The identified nodes in the round's sampled set, in shuffle order
        (:func:`~deai_flower.protocol.sampling.round_sample`, with the registry as it is
        now: an index whose holder joined after the round opened sits the round out).
        Recorded in ``report.sampled``."""
        state = self._round_state
        self._sample = round_sample(beacon=bytes(state["beacon"]), registry_size=int(state["registrySize"]),
                                    registry_epoch=int(state["registryEpoch"]), sample_bps=int(state["sampleBps"]),
                                    committee_size=int(state["committeeSize"]))  # fmt: skip
        changed = self.contract.registry()[1] != self._sample.registry_epoch  # a registration or revocation since
        self._positions = self._sample.members(self.contract.members(), entry_epoch=(
            (lambda address: int(self.contract.registry_entry(address)["epoch"])) if changed else None))  # fmt: skip
        by_address = {a: n for n, a in self.admission.addresses.items()}
        sampled = [by_address[a] for a in self._positions if a in by_address]
        report.sampled = [self.admission.addresses[n] for n in sampled]
        log(INFO, "round %s: %s of %s nodes sampled", report.round, len(sampled), len(self.admission.addresses))
        return sampled

    def _committee(self, revealers: list[str]) -> list[int]:
        """The identified eligible attesters: revealers at the round's committee positions,
        in shuffle order. All are asked: a strict majority of them must agree to finalize."""
        assert self._sample is not None, "the round's sample is drawn when its nodes are asked to commit"
        by_address = {a: n for n, a in self.admission.addresses.items()}
        return [by_address[a] for a in self._sample.committee(self._positions, revealers) if a in by_address]

    def _read(self, report: RoundReport, replies: list[Message], reply_type: type[_Reply]) -> dict[int, _Reply]:
        """The replies as ``reply_type``, by node id. An error reply, or one that is malformed
        (replies are untrusted), is recorded as that node's error; a decline is recorded
        (:meth:`_declined`) and left out."""
        typed: dict[int, _Reply] = {}
        for reply in replies:
            node_id = reply.metadata.src_node_id
            address = self.admission.name(node_id)
            if reply.has_error():
                report.errors[address] = reply.error.reason
                log(WARNING, "round %s: node %s failed: %s", report.round, address, reply.error.reason)
                continue
            try:
                answer = read_reply(reply_type, reply)
            except ProtocolError as exc:
                report.errors[address] = f"reply refused: {exc}"
                log(WARNING, "round %s: reply of %s refused: %s", report.round, address, exc)
                continue
            commit = answer.commit if isinstance(answer, RoundReply) else answer
            if isinstance(commit, CommitReply) and commit.state is ReplyState.DECLINED:
                self._declined(report, node_id, commit)
                continue
            typed[node_id] = answer
        return typed

    def _declined(self, report: RoundReport, node_id: int, declined: CommitReply) -> None:
        """Record a node's decline; one whose own terms refuse the run (protocol §1.2)
        is refused for the rest of it, since its terms do not change within the run."""
        address = self.admission.name(node_id)
        report.declined[address] = declined.reason
        if declined.signature:  # a signed decline, for the relayed commitMany
            self._signed_declines[address] = declined.signature
        if declined.terms:
            self.admission.refuse(node_id, address, f"its terms refuse this run: {declined.reason}")

    def _record_commits(self, report: RoundReport, committed: Mapping[int, CommitReply]) -> None:
        """The committers, their gas, the round's largest ε and example-weighted training loss."""
        report.committed = [self.admission.name(n) for n in committed]
        for reply in committed.values():
            report.add_gas("commit", reply.gas)
        epsilon_max, train_loss = training_summary(r.training for r in committed.values() if r.training is not None)
        report.epsilon_max = max(report.epsilon_max, epsilon_max)
        if train_loss is not None:
            report.train_loss = train_loss

    @staticmethod
    def _record_own_reveals(report: RoundReport, reveals: Mapping[int, RevealReply]) -> list[int]:
        """The gas of the reveals nodes sent themselves; return those nodes."""
        revealed = [n for n, reply in reveals.items() if reply.state is ReplyState.REVEALED]
        for n in revealed:
            report.add_gas("reveal", reveals[n].gas)
        return revealed

    @staticmethod
    def _record_attests(report: RoundReport, attests: Mapping[int, AttestReply]) -> list[int]:
        """The reveals attesters refused (bad blobs, with the first reason given) and the gas
        of the attestations nodes sent themselves; return those nodes."""
        for attest in attests.values():
            for exclusion in attest.excluded:
                report.excluded.setdefault(exclusion.participant, exclusion.reason)
        attested = [n for n, reply in attests.items() if reply.state is ReplyState.ATTESTED]
        for n in attested:
            report.add_gas("attest", attests[n].gas)
        return attested

    def _relay_reveals(self, report: RoundReport, records: dict[str, bytes]) -> list[int]:
        """Publish the reveal records handed over, by address (:func:`.relay.relay_reveals`);
        return the nodes whose reveals landed."""
        return self._record_relayed(report, "revealMany", relay_reveals(self.contract, self.run_id, report.round,
                                                                        records))  # fmt: skip

    def _cast_votes(self, report: RoundReport, signed: dict[str, AttestReply]) -> list[int]:
        """Cast the signed votes, by address (:func:`.relay.cast_votes`); return the nodes
        whose votes landed."""
        return self._record_relayed(report, "attestMany", cast_votes(self.contract, self.run_id, report.round, signed))

    def _record_relayed(self, report: RoundReport, call: str, relayed: Relayed) -> list[int]:
        """Record a relayed batch's gas and refusals; return the nodes whose reveals or votes landed."""
        for gas in relayed.gas:
            report.add_gas(call, gas)
        for address, reason in relayed.refused.items():
            report.errors[address] = reason
            log(WARNING, "round %s: %s of %s: %s", report.round, call, address, reason)
        by_address = {a: n for n, a in self.admission.addresses.items()}
        return [by_address[a] for a in relayed.landed if a in by_address]

    def _read_revealers(self, report: RoundReport) -> None:
        """The round's revealers as the chain records them (asked once its reveal phase is over)."""
        opened = int(self._round_state.get("openedBlock", 0))
        reveals = self.contract.final_reveals(self.run_id, report.round, from_block=opened)
        report.revealed = [str(r["participant"]) for r in reveals]

    def _settle_missing_reveals(self, report: RoundReport) -> None:
        """Have the chain slash committers that did not reveal now, rather than at their
        next commit: results then show it, and one that never commits again pays too."""
        for address in sorted(set(report.committed) - set(report.revealed)):
            try:
                report.add_gas("settle", self.contract.settle(self.run_id, address).gas_used)
            except ChainError as exc:
                log(WARNING, "round %s: settling %s failed: %s", report.round, address, exc)

    def _fail(self, report: RoundReport, reason: str) -> bool:
        """Record the failure and let the round's deadlines pass, so a new round can open."""
        self._wait_for_phase_end(report.round, self.contract.phase(self.run_id, report.round), until="attest")
        report.status = "failed"
        report.reason = reason
        log(WARNING, "round %s failed: %s", report.round, reason)
        return False

    # ------------------------------------------------------------------ helpers

    def _discover(self, grid: Grid) -> None:
        """Learn the chain address of the nodes not asked before (:class:`.admission.NodeAdmission`)."""
        self._grid = grid
        self.admission.discover(grid)

    def _exchange(self, node_ids: Iterable[int], request: Request, report: RoundReport | None, *, timeout: float,
                  until_closed: bool = False) -> list[Message]:  # fmt: skip
        """Send ``request`` to ``node_ids``; the replies back within ``timeout``
        (:func:`.transport.exchange`). With ``until_closed``, stragglers are waited for only
        briefly once the chain has closed the report's round, and the commit phase is ended
        once no more commits can come (:meth:`_close_commit_phase_if_done`)."""
        assert self._grid is not None
        group = str(report.round if report is not None else request.round)
        messages = [request_message(request, self.locator, node_id=n, group_id=group) for n in node_ids]

        def round_closed(replies: list[Message]) -> bool:
            assert report is not None
            self._relay_declines(report, replies)
            self._close_commit_phase_if_done(report, asked=len(messages), replies=replies)
            return self.contract.phase(self.run_id, report.round) in ("finalized", "failed")

        watch = round_closed if until_closed and report is not None else None
        return exchange(self._grid, messages, timeout=timeout, poll_s=self.reply_poll_s, round_closed=watch)

    def _relay_declines(self, report: RoundReport, replies: list[Message]) -> None:
        """On one-message rounds, record the signed declines among the replies so far in
        one ``commitMany``, each once, as they arrive (:func:`.relay.relay_commits`, which
        checks each signature first: replies are untrusted): the chain then stops waiting
        for those silos, and the commit phase ends once the others committed, also on a
        chain whose clock nobody moves. Whether or not one lands, the decline is recorded
        in the report when the replies are read (:meth:`_read`)."""
        signed: dict[str, tuple[bytes, bytes]] = {}
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if node_id in self._declines_relayed or reply.has_error():
                continue
            self._declines_relayed.add(node_id)
            try:
                commit = read_reply(RoundReply, reply).commit
            except ProtocolError:
                continue  # recorded as the node's error when the replies are read
            if commit.state is ReplyState.DECLINED and commit.signature:
                signed[self.admission.name(node_id)] = (bytes(32), commit.signature)
        if signed and self.contract.phase(self.run_id, report.round) == "commit":
            self._record_relayed(report, "commitMany", relay_commits(self.contract, self.run_id, report.round, signed))

    def _close_commit_phase_if_done(self, report: RoundReport, *, asked: int, replies: list[Message]) -> None:
        """On one-message rounds, end the commit phase once no more commits can come.

        Only the nodes asked commit, and a node that commits answers only after the commit
        phase: when the commits on chain and the answers (declines, errors) account for
        every node asked, the phase waits only for sampled silos known not to answer (a
        node that cannot serve, an absent one). The chain's clock is then moved to the
        commit deadline where the chain allows it (a development chain; the nodes, which
        watch the phase, go on at once); a chain whose clock nobody moves keeps its
        deadline (docs/protocol.md §2.2).
        """
        if report.round in self._commit_closed or self.contract.phase(self.run_id, report.round) != "commit":
            return
        state = self.contract.get_round(self.run_id, report.round)  # the current round: its commit phase
        if int(state["commitCount"]) + len(replies) < asked:
            return
        # a node that committed and then failed has answered too: count it once
        answered = sum(1 for reply in replies if not self._committed(report.round, reply.metadata.src_node_id))
        if int(state["commitCount"]) + answered < asked:
            return
        self._commit_closed.add(report.round)
        missing = int(state["sampledCount"]) - int(state["declineCount"]) - int(state["commitCount"])
        try:
            self.contract.node.advance_to(int(state["commitDeadline"]), timeout=0.0)
        except ChainError:
            log(INFO, "round %s: %s sampled silo(s) will not commit; the chain keeps its commit deadline",
                report.round, missing)  # fmt: skip
            return
        log(INFO, "round %s: every asked node committed or answered; commit phase closed without %s sampled "
            "silo(s) that cannot answer", report.round, missing)  # fmt: skip

    def _committed(self, round_id: int, node_id: int) -> bool:
        """Whether the node's participant has committed in round ``round_id``."""
        address = self.admission.addresses.get(node_id)
        if address is None:
            return False
        member = self.contract.get_member(self.run_id, address)
        return int(member["round"]) == round_id and STAGES[int(member["stage"])] in ("committed", "revealed", "attested")

    def _round_to_play(self) -> tuple[dict[str, Any], dict[str, Any], TxResult | None]:
        """The run (``getRun``) and the chain round to play next (``getRound``) as the
        chain now has them, and the ``openRound`` transaction if one was needed.

        The attestation that finalizes a round opens the next, so normally that round is
        in its commit phase with no commit yet, and it is played as it is. Otherwise a new
        attempt is opened: for the first round, after a failed one, or after a coordinator
        restart, when a round the previous coordinator left in flight is waited out first:
        on one-message rounds its nodes may still finalize it (the next round is then
        played as it is); otherwise it fails at its deadlines, since its participants'
        pending reveals lived in that coordinator's run, and the new attempt has the same
        model.
        """
        while True:
            run = self.contract.get_run(self.run_id)
            round_id = int(run["currentRound"])
            if not round_id:
                break
            phase = self.contract.phase(self.run_id, round_id)
            if phase in ("failed", "finalized"):  # finalized: the run is complete
                break
            state = self.contract.get_round(self.run_id, round_id)
            if phase == "commit" and int(state["commitCount"]) == 0:
                return run, state, None
            # Nodes may still play it (on one-message rounds, without a coordinator) and
            # finalize it meanwhile, which opens the next round: read the chain again.
            log(WARNING, "round attempt %s is still in phase '%s'; letting its deadlines pass", round_id, phase)
            self.contract.node.advance_to(int(state["attestDeadline"]), timeout=self._longest_phase())
        round_id, tx = self.contract.open_round(self.run_id)
        return self.contract.get_run(self.run_id), self.contract.get_round(self.run_id, round_id), tx

    def _hold(self, cid: str, arrays: dict[str, Any]) -> None:
        """Keep the blob of the chain's model ``cid`` (``arrays``, canonically encoded), to
        put it back should the store lose it; a copy that does not hash to ``cid`` is not kept."""
        blob = encode_arrays(arrays)
        self._held = (cid, blob) if compute_cid(blob) == cid else None

    def _put_back(self, report: RoundReport) -> None:
        """Put the round's global model back into the store when the store has lost it and
        this coordinator holds it (it fetched or rebuilt it): otherwise no node could train
        on it, and every attempt would fail."""
        if self._held is None or self._held[0] != report.model_cid or self.store.has(report.model_cid):
            return
        self.store.put(self._held[1], cid=report.model_cid)
        log(WARNING, "round %s: the store had lost the global model %s; put back the copy this coordinator holds",
            report.round, report.model_cid)  # fmt: skip

    def _longest_phase(self) -> float:
        r = self.spec.rounds
        return float(r.commit_s + r.reveal_s + r.attest_s)

    def _mark(self, report: RoundReport, phase: str) -> None:
        """Close the timing of the current phase and announce the next."""
        now = time.perf_counter()
        if self._phase_start:
            previous = list(report.phase_seconds)[-1]
            report.phase_seconds[previous] = now - self._phase_start
        if phase != "done":
            report.phase_seconds[phase] = 0.0
            self._on_phase(report.round, phase)
        self._phase_start = now if phase != "done" else 0.0

    def _reply_window(self, phase_s: float) -> float:
        """How long to wait for the nodes' replies in a reveal or attest phase of
        ``phase_s`` seconds: all of it when nodes send their own transactions; when
        relaying, the first :data:`_RELAY_WAIT_SHARE` of it, so that the batches land
        before the phase's deadline even when a node hangs (on a chain whose clock runs
        with the wall's, a batch sent at the end of the phase would be refused)."""
        return phase_s * _RELAY_WAIT_SHARE if self.relay else phase_s

    def _wait_for_phase_end(self, round_id: int, phase: str, *, until: str | None = None) -> str:
        """Wait (bounded) until the round leaves ``phase``; return the phase it is in. The
        coordinator holds every reply it waits for, so the clock is moved at once."""
        return await_phase_end(self.contract, self.run_id, round_id, phase, timeout=self._longest_phase(), until=until)

    # ------------------------------------------------------------------ Flower's hooks, unused

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:  # fmt: skip
        """Not used: :meth:`commit` sends the round's messages (see :meth:`start`)."""
        return []

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Not used: attesters aggregate; :meth:`finalize` reads their result from the chain."""
        return None, None

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:  # fmt: skip
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        log(INFO, "\t├── CommitRevealStrategy: contract %s, run %s", self.contract.address, self.run_id)
        log(INFO, "\t└── committee size %s, rule %s", self.spec.rounds.committee_size, self.spec.rule.name)


def _plain(arrays: ArrayRecord) -> dict[str, Any]:
    return {k: v.numpy() for k, v in arrays.items()}

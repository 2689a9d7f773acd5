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
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

from eth_utils import is_address, to_checksum_address
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from deai_flower.chain import RoundsContract, TxResult
from deai_flower.protocol.encoding import REVEAL_RECORD_BYTES, committee_size_of, sampled_count, sampled_indices
from deai_flower.protocol.identity import CHALLENGE_BYTES, recover_identity, supernode_identity
from deai_flower.errors import (
    BlobFormatError,
    ChainError,
    ConfigError,
    ContractRevertError,
    InvalidCidError,
    ResultUnrecoverableError,
    StoreError,
)
from deai_flower.messages import CONFIG, METRICS, STATUS
from deai_flower.protocol.spec import RunSpec
from deai_flower.recovery import fetch_result
from deai_flower.storage import ContentStore, cid_from_bytes, cid_to_bytes, compute_cid, encode_arrays

#: How long a one-message round waits for replies once the chain has closed the round.
_STRAGGLER_GRACE_S = 5.0
#: The share of a reveal or attest phase a relaying coordinator waits for the nodes'
#: hand-overs; the rest is left for its batches to land before the phase's deadline.
_RELAY_WAIT_SHARE = 0.75

#: Evaluation of a finalized model: (round, arrays) -> metrics such as loss and accuracy.
EvaluateFn = Callable[[int, dict[str, Any]], dict[str, float]]


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
        # Only a SuperLink with node authentication reports real SuperNode keys; Flower's
        # simulation runtime makes up random ones, which no registry entry can match.
        self.bind_supernode_keys = bind_supernode_keys
        self.one_message_rounds = one_message_rounds
        self.relay = relay
        self.reply_poll_s = reply_poll_s
        self.evaluate_timeout_s = float(spec.rounds.commit_s if evaluate_timeout_s is None else evaluate_timeout_s)
        self.initial_federated: dict[str, Any] = {}
        self._held: tuple[str, bytes] | None = None  # the chain's current model, as stored: (CID, blob)
        self._on_phase = on_phase or (lambda _r, _p: None)
        self._on_round = on_round or (lambda _report: None)
        self.reports: list[RoundReport] = []
        self.initial_metrics: dict[str, float] = {}
        self._grid: Grid | None = None
        self._addresses: dict[int, str] = {}
        self._asked: set[int] = set()  # nodes asked for their address already
        self._silent: set[int] = set()  # asked, but no answer (error or none): asked again
        self._commit_closed: set[int] = set()  # rounds whose commit phase was ended early
        #: Nodes whose identity proof failed, by node id: the address they claimed and why.
        self.refused: dict[int, dict[str, str]] = {}
        self._round_state: dict[str, Any] = {}  # the current round's getRound, read when it opened
        self._positions: dict[str, int] = {}  # sampled address -> its position in the round's shuffle
        self._phase_start = 0.0

    @property
    def addresses(self) -> dict[int, str]:
        """The nodes that proved their chain address, by node id."""
        return dict(self._addresses)

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

    def commit(self, report: RoundReport) -> dict[int, Message]:
        """Ask the sampled nodes to train and commit; wait at most the commit duration."""
        self._mark(report, "commit")
        sampled = self._sampled_nodes()
        report.sampled = [self._addresses[n] for n in sampled]
        log(INFO, "round %s: %s of %s nodes sampled", report.round, len(sampled), len(self._addresses))
        replies = self._exchange(sampled, "train.commit", {"round": report.round, "model-cid": report.model_cid},
                                 report, timeout=self.spec.rounds.commit_s)  # fmt: skip
        committed = self._split(report, replies, "committed")
        report.committed = [self._addresses[n] for n in committed]
        for reply in committed.values():
            report.add_gas("commit", int(reply.content[METRICS]["gas"]))
        _record_training(report, [reply.content[METRICS] for reply in committed.values()])
        return committed

    def reveal(self, report: RoundReport, committed: dict[int, Message]) -> dict[int, Message]:
        """After the commit deadline, ask the committers to publish and reveal."""
        self._mark(report, "reveal")
        self._wait_for_phase_end(report.round, "commit", "commitDeadline")
        replies = self._exchange(committed, "train.reveal", {"round": report.round, "relay": self.relay}, report,
                                 timeout=self._reply_window(self.spec.rounds.reveal_s))  # fmt: skip
        answered = self._split(report, replies, "revealed", "handed")
        revealed = {n: r for n, r in answered.items() if r.content[STATUS]["state"] == "revealed"}
        for reply in revealed.values():
            report.add_gas("reveal", int(reply.content[METRICS]["gas"]))
        handed = {n: r for n, r in answered.items() if n not in revealed}
        records = {}
        for n, reply in handed.items():  # replies are untrusted: a malformed one is that node's error
            try:
                records[n] = _reply_bytes(reply.content[STATUS], "record", size=REVEAL_RECORD_BYTES)
            except ValueError as exc:
                report.errors[self._addresses[n]] = f"record not published: {exc}"
                log(WARNING, "round %s: record of %s not published: %s", report.round, self._addresses[n], exc)
        if records:
            revealed.update({n: handed[n] for n in self._relay_reveals(report, records)})
        report.revealed = [self._addresses[n] for n in revealed]
        return revealed

    def _relay_reveals(self, report: RoundReport, records: dict[int, bytes]) -> list[int]:
        """Publish the records nodes handed over in one ``revealMany``; return the nodes
        whose reveal it recorded. A record the chain would refuse (it does not reproduce
        its node's commitment, or breaks the run's rules) would revert the whole batch:
        it is found by calling the batch for each record alone, left out and reported as
        that node's error."""
        by_address = {self._addresses[n]: n for n in records}
        batch = {self._addresses[n]: record for n, record in records.items()}
        try:
            tx = self.contract.reveal_many(self.run_id, report.round, batch)
        except ContractRevertError:
            for address, record in list(batch.items()):
                refusal = self.contract.reveal_refusal(self.run_id, report.round, address, record)
                if refusal is not None:
                    report.errors[address] = f"reveal refused by the chain: {refusal}"
                    log(WARNING, "round %s: reveal of %s refused: %s", report.round, address, refusal)
                    del batch[address]
            if not batch:
                return []
            tx = self.contract.reveal_many(self.run_id, report.round, batch)
        report.add_gas("revealMany", tx.gas_used)
        return [by_address[str(e["args"]["participant"])] for e in tx.events if e["event"] == "Revealed"]

    def attest(self, report: RoundReport) -> bool:
        """After the reveal deadline, ask a committee of revealers to aggregate and
        attest; True when the chain finalized the round."""
        self._mark(report, "attest")
        phase = self._wait_for_phase_end(report.round, "reveal", "revealDeadline")
        # The revealers are final now; the chain names them all, also a node whose hand-over
        # was lost and that revealed on its own (its reveal guard, protocol §2.4).
        opened = int(self._round_state.get("openedBlock", 0))
        reveals = self.contract.final_reveals(self.run_id, report.round, from_block=opened)
        report.revealed = [str(r["participant"]) for r in reveals]
        if phase != "attest":
            return self._fail(report, f"reveal phase ended in phase '{phase}' with {len(reveals)} valid reveals")
        committee = self._committee({n: a for n, a in self._addresses.items() if a in report.revealed})
        replies = self._exchange(committee, "train.attest", {"round": report.round, "relay": self.relay}, report,
                                 timeout=self._reply_window(self.spec.rounds.attest_s))  # fmt: skip
        answered = self._split(report, replies, "attested", "signed")
        self._record_exclusions(report, replies)
        attested = {n: r for n, r in answered.items() if r.content[STATUS]["state"] == "attested"}
        for reply in attested.values():
            report.add_gas("attest", int(reply.content[METRICS]["gas"]))
        signed = {n: r for n, r in answered.items() if n not in attested}
        if signed:
            attested.update({n: signed[n] for n in self._cast_votes(report, signed)})
        report.attested = [self._addresses[n] for n in attested]
        phase = self.contract.phase(self.run_id, report.round)
        if phase != "finalized":
            return self._fail(report, f"no attestation quorum ({len(attested)} attestations; phase '{phase}')")
        return True

    def _reply_window(self, phase_s: float) -> float:
        """How long to wait for the nodes' replies in a reveal or attest phase of
        ``phase_s`` seconds: all of it when nodes send their own transactions; when
        relaying, the first :data:`_RELAY_WAIT_SHARE` of it, so that the batches land
        before the phase's deadline even when a node hangs (on a chain whose clock runs
        with the wall's, a batch sent at the end of the phase would be refused)."""
        return phase_s * _RELAY_WAIT_SHARE if self.relay else phase_s

    def _cast_votes(self, report: RoundReport, signed: dict[int, Message]) -> list[int]:
        """Cast the signed votes nodes sent, one ``attestMany`` per (result CID, outcome)
        pair, the pairs with fewer votes first: dissent is cast as its signers gave it.
        Once a pair finalizes the round no vote lands, so of the pair with the most votes
        only the round's ``votesNeeded`` are cast (the rest if those do not finalize), as
        attesters sending their own stop at the finalizing vote. A signature that is not
        its node's, or that the chain would refuse, is left out and reported as that
        node's error. Returns the nodes whose votes landed."""
        groups: dict[tuple[bytes, bytes], dict[int, bytes]] = {}
        for n, reply in signed.items():  # replies are untrusted: a malformed one is that node's error
            status, address = reply.content[STATUS], self._addresses[n]
            try:
                if "cid" not in status:
                    raise ValueError("its reply names no result CID")
                result = cid_to_bytes(status["cid"])
                outcome, signature = _reply_bytes(status, "outcome"), _reply_bytes(status, "signature", size=65)
                if self.contract.vote_signer(self.run_id, report.round, result, outcome, signature) != address:
                    raise ValueError("its vote's signature is not its own")
            except (ValueError, InvalidCidError) as exc:
                report.errors[address] = f"vote not cast: {exc}"
                log(WARNING, "round %s: vote of %s not cast: %s", report.round, address, exc)
                continue
            groups.setdefault((result, outcome), {})[n] = signature
        ordered = sorted(groups.items(), key=lambda g: len(g[1]))
        try:
            needed = int(self.contract.get_round(self.run_id, report.round)["votesNeeded"])
        except ContractRevertError:  # finalized meanwhile (by attesters sending their own): nothing to cast
            return []
        batches = list(ordered[:-1])
        if ordered:
            pair, votes = ordered[-1]
            batches += [(pair, dict(list(votes.items())[:needed])), (pair, dict(list(votes.items())[needed:]))]
        cast: list[int] = []
        for (result, outcome), votes in batches:
            if not votes or self.contract.phase(self.run_id, report.round) != "attest":
                continue
            try:
                tx = self.contract.attest_many(self.run_id, report.round, result, outcome, list(votes.values()))
            except ContractRevertError:
                for n, signature in list(votes.items()):
                    refusal = self.contract.vote_refusal(self.run_id, report.round, result, outcome, signature)
                    if refusal is not None:
                        report.errors[self._addresses[n]] = f"vote refused by the chain: {refusal}"
                        log(WARNING, "round %s: vote of %s refused: %s", report.round, self._addresses[n], refusal)
                        del votes[n]
                if not votes:
                    continue
                tx = self.contract.attest_many(self.run_id, report.round, result, outcome, list(votes.values()))
            report.add_gas("attestMany", tx.gas_used)
            cast.extend(votes)
        return cast

    def play_round(self, report: RoundReport) -> bool:
        """One message per round (a deployment): ``train.round`` to the sampled nodes,
        which commit, reveal and attest on their own as the chain's phases pass (see
        :func:`~deai_flower.participant.handlers.handle_round`), waited for at most the
        round's three durations; True when the chain finalized the round.

        The revealers are read from the chain; the committers, attesters, declines,
        errors and exclusions from the replies.
        """
        self._mark(report, "round")
        sampled = self._sampled_nodes()
        report.sampled = [self._addresses[n] for n in sampled]
        log(INFO, "round %s: %s of %s nodes sampled", report.round, len(sampled), len(self._addresses))
        replies = self._exchange(sampled, "train.round", {"round": report.round, "model-cid": report.model_cid},
                                 report, timeout=self._longest_phase(), until_closed=True)  # fmt: skip
        trained = []
        for reply in replies:
            address = self._addresses.get(reply.metadata.src_node_id, str(reply.metadata.src_node_id))
            if reply.has_error():
                report.errors[address] = reply.error.reason
                log(WARNING, "round %s: node %s failed: %s", report.round, address, reply.error.reason)
                continue
            status, metrics = reply.content[STATUS], reply.content[METRICS] if METRICS in reply.content else {}
            if status.get("state") == "declined":
                self._declined(report, reply.metadata.src_node_id, status)
                continue
            report.committed.append(address)
            trained.append(metrics)
            for step in ("commit", "reveal", "attest"):
                if f"{step}-gas" in metrics:
                    report.add_gas(step, int(metrics[f"{step}-gas"]))
            if "attest-gas" in metrics:
                report.attested.append(address)
        _record_training(report, trained)
        self._record_exclusions(report, replies)
        phase = self.contract.phase(self.run_id, report.round)
        if phase != "finalized":
            self._fail(report, f"round not finalized: {len(report.attested)} attestations, phase '{phase}'")
        # the reveal phase is over either way: the chain's list of revealers is final
        opened = int(self._round_state.get("openedBlock", 0))
        report.revealed = [str(r["participant"]) for r in self.contract.final_reveals(self.run_id, report.round,
                                                                                      from_block=opened)]  # fmt: skip
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
        replies = self._exchange(list(self._addresses), "evaluate", {"round": round_id, "model-cid": model_cid},
                                 None, timeout=self.evaluate_timeout_s)  # fmt: skip
        per_silo: dict[str, dict[str, float]] = {}
        errors: dict[str, str] = {}
        for reply in replies:
            address = self._addresses.get(reply.metadata.src_node_id, str(reply.metadata.src_node_id))
            if reply.has_error():
                errors[address] = reply.error.reason
                log(WARNING, "round %s: node %s did not evaluate: %s", round_id, address, reply.error.reason)
                continue
            if reply.content[STATUS].get("state") != "evaluated":
                continue
            m = reply.content[METRICS]
            per_silo[address] = {"loss": float(m["loss"]), "accuracy": float(m["accuracy"]),
                                 "num_examples": int(m["num-examples"])}  # fmt: skip
        total = sum(s["num_examples"] for s in per_silo.values())
        summary: dict[str, Any] = {"per_silo": dict(sorted(per_silo.items())), "num_examples": total}
        if total:
            for key in ("loss", "accuracy"):
                summary[key] = sum(s[key] * s["num_examples"] for s in per_silo.values()) / total
            log(INFO, "round %s: federated accuracy %.4f on %s held-out examples of %s silos", round_id,
                summary["accuracy"], total, len(per_silo))  # fmt: skip
        if errors:
            summary["errors"] = errors
        return summary

    # ------------------------------------------------------------------ helpers

    def _exchange(self, node_ids: Iterable[int], message_type: str, config: dict[str, Any],
                  report: RoundReport | None, *, timeout: float, until_closed: bool = False) -> list[Message]:  # fmt: skip
        """Send ``message_type`` to ``node_ids``; the replies back within ``timeout``.

        With :attr:`reply_poll_s`, the SuperLink is asked for replies that often (rather
        than every 3 s, as Flower's ``send_and_receive`` does), and with ``until_closed``
        stragglers are waited for at most :data:`_STRAGGLER_GRACE_S` seconds once the
        chain has closed the report's round (finalized or failed): a node that died
        mid-round does not hold the round up for the whole timeout.
        """
        assert self._grid is not None
        group = str(report.round if report is not None else config.get("round", 0))
        messages = [
            Message(RecordDict({CONFIG: ConfigRecord({**self.locator, **config})}), dst_node_id=n,
                    message_type=message_type, group_id=group)  # fmt: skip
            for n in node_ids
        ]
        if not messages:
            return []
        if self.reply_poll_s is None:
            return list(self._grid.send_and_receive(messages, timeout=float(timeout)))
        pending = set(self._grid.push_messages(messages))
        replies: list[Message] = []
        end, closed_at = time.monotonic() + timeout, None
        while pending and time.monotonic() < end:
            for reply in self._grid.pull_messages(list(pending)):
                pending.discard(reply.metadata.reply_to_message_id)
                replies.append(reply)
            if not pending:
                break
            if until_closed and report is not None:
                self._close_commit_phase_if_done(report, asked=len(messages), replies=replies)
            if until_closed and report is not None and closed_at is None \
                    and self.contract.phase(self.run_id, report.round) in ("finalized", "failed"):  # fmt: skip
                closed_at = time.monotonic()
            if closed_at is not None and time.monotonic() - closed_at > _STRAGGLER_GRACE_S:
                log(WARNING, "round %s closed on chain; %s node(s) did not answer", report.round, len(pending))  # type: ignore[union-attr]
                break
            time.sleep(self.reply_poll_s)
        return replies

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
        missing = int(state["sampledCount"]) - int(state["commitCount"])
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
        address = self._addresses.get(node_id)
        if address is None:
            return False
        member = self.contract.get_member(self.run_id, address)
        return int(member["round"]) == round_id and member["stage"] != "none"

    def _discover(self, grid: Grid) -> None:
        """Learn the chain address of every node not asked before, keeping only nodes
        that prove it: a node that connects after the first round takes part from the next.

        Each new node gets a fresh random challenge and must return an EIP-191 signature
        over (challenge, contract, run id, its node id) that recovers to the address it
        claims; that address must be registered and, where the SuperLink reports the
        node's SuperNode public key (a deployment with node authentication), registered
        with that key's identity hash; and no other node may have proven it already. A
        node whose proof fails is refused with its reason (:attr:`refused`) and never
        asked again. A node that did not answer (an error reply, or none in time) is not
        refused for good: it is asked again at the next round's discovery, since a
        transient fault must not exclude a silo for the rest of the run.
        """
        self._grid = grid
        keys = {int(info.node_id): bytes(info.public_key) for info in grid.get_nodes()}
        new = [n for n in keys if n not in self._asked or n in self._silent]
        self._asked.update(new)
        self._silent.difference_update(new)
        if not new:
            return
        challenges = {n: secrets.token_bytes(CHALLENGE_BYTES) for n in new}
        messages = [Message(RecordDict({CONFIG: ConfigRecord({**self.locator, "challenge": challenges[n]})}),
                            dst_node_id=n, message_type="query.identity", group_id="identity")
                    for n in new]  # fmt: skip
        replies = list(grid.send_and_receive(messages, timeout=float(self.spec.rounds.commit_s)))
        answered = set()
        for reply in replies:
            node_id = int(reply.metadata.src_node_id)
            answered.add(node_id)
            if reply.has_error():
                self._silent.add(node_id)
                self._unavailable(node_id, keys.get(node_id, b""), _error_line(reply.error.reason))
                log(WARNING, "node %s did not prove its chain address (%s); it is asked again next round",
                    node_id, reply.error.reason)  # fmt: skip
                continue
            status = reply.content[STATUS]
            address = str(status.get("address", ""))
            reason = self._identity_problem(node_id, address, status.get("signature"), challenges[node_id],
                                            keys.get(node_id, b""))  # fmt: skip
            if reason:
                self._refuse(node_id, address, reason)
            else:
                self._addresses[node_id] = to_checksum_address(address)
                self.refused.pop(node_id, None)  # it could not serve before; it can now
        for node_id in set(new) - answered:
            self._silent.add(node_id)
            self._unavailable(node_id, keys.get(node_id, b""), "did not answer the identity challenge in time")
            log(WARNING, "node %s did not answer the identity challenge in time; it is asked again next round",
                node_id)  # fmt: skip

    def _identity_problem(self, node_id: int, address: str, signature: Any, challenge: bytes,
                          public_key: bytes) -> str:  # fmt: skip
        """Why a node's identity proof fails, or '' when it holds."""
        if not is_address(address):
            return f"claims {address!r}, which is not an address"
        address = to_checksum_address(address)
        if not isinstance(signature, bytes):
            return f"claims {address} without a signature"
        signer = recover_identity(signature, challenge=challenge, contract=self.contract.address,
                                  run_id=self.run_id, node_id=node_id)  # fmt: skip
        if signer != address:
            return f"claims {address} but its signature over the challenge is by {signer or 'nobody (malformed)'}"
        active, identity = self.contract.participant_info(address)
        if not active:
            return f"signs as {address}, which is not a registered participant"
        if public_key and self.bind_supernode_keys:
            try:
                node_identity = supernode_identity(public_key)
            except ConfigError as exc:
                return f"the SuperLink reports an unreadable SuperNode key for it ({exc})"
            if node_identity != identity:
                return (f"signs as {address}, but its SuperNode key (identity 0x{node_identity.hex()}) is not the "
                        f"one registered for {address} (0x{identity.hex()})")
        holder = next((n for n, a in self._addresses.items() if a == address), None)
        if holder is not None:
            return f"signs as {address}, which node {holder} has proven already"
        return ""

    def _unavailable(self, node_id: int, public_key: bytes, reason: str) -> None:
        """Report a node that cannot serve (its ClientApp fails, e.g. on its node config)
        by name: the registered address its SuperNode key is bound to, where the
        SuperLink reports keys. It is not asked to act until it proves its address."""
        self.refused[node_id] = {"address": self._registered_holder(public_key), "reason": f"cannot serve: {reason}"}

    def _registered_holder(self, public_key: bytes) -> str:
        """The registered address bound to this SuperNode key ('' when none or unknown)."""
        if not public_key or not self.bind_supernode_keys:
            return ""
        try:
            identity = supernode_identity(public_key)
        except ConfigError:
            return ""
        return next((a for a in self.contract.members() if self.contract.participant_info(a)[1] == identity), "")

    def _refuse(self, node_id: int, address: str, reason: str) -> None:
        self.refused[node_id] = {"address": address, "reason": reason}
        log(WARNING, "node %s refused, it will not be asked to act: %s", node_id, reason)

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

    def _split(self, report: RoundReport, replies: list[Message], *ok_states: str) -> dict[int, Message]:
        """Replies in one of ``ok_states`` by node id; errors recorded in the report."""
        good = {}
        for reply in replies:
            node_id = reply.metadata.src_node_id
            address = self._addresses.get(node_id, str(node_id))
            if reply.has_error():
                report.errors[address] = reply.error.reason
                log(WARNING, "round %s: node %s failed: %s", report.round, address, reply.error.reason)
                continue
            status = reply.content[STATUS]
            if status.get("state") in ok_states:
                good[node_id] = reply
            elif status.get("state") == "declined":
                self._declined(report, node_id, status)
        return good

    def _declined(self, report: RoundReport, node_id: int, status: Any) -> None:
        """Record a node's decline; one whose own terms refuse the run (protocol §1.2)
        is refused for the rest of it, since its terms do not change within the run."""
        address = self._addresses.get(node_id, str(node_id))
        reason = str(status.get("reason", ""))
        report.declined[address] = reason
        if status.get("terms") is True:
            self._addresses.pop(node_id, None)
            self._refuse(node_id, address, f"its terms refuse this run: {reason}")

    def _settle_missing_reveals(self, report: RoundReport) -> None:
        """Have the chain slash committers that did not reveal now, rather than at their
        next commit: results then show it, and one that never commits again pays too."""
        for address in sorted(set(report.committed) - set(report.revealed)):
            try:
                report.add_gas("settle", self.contract.settle(self.run_id, address).gas_used)
            except ChainError as exc:
                log(WARNING, "round %s: settling %s failed: %s", report.round, address, exc)

    @staticmethod
    def _record_exclusions(report: RoundReport, replies: list[Message]) -> None:
        """Collect the reveals attesters refused (bad blobs), with the first reason given."""
        for reply in replies:
            if reply.has_error():
                continue
            status = reply.content[STATUS]
            if "excluded" not in status:
                continue
            for participant, reason in zip(status["excluded"], status["excluded-reasons"], strict=True):
                report.excluded.setdefault(str(participant), str(reason))

    def _wait_for_phase_end(self, round_id: int, phase: str, deadline_key: str) -> str:
        """Wait (bounded) until the round leaves ``phase``; return the phase it is in."""
        current = self.contract.phase(self.run_id, round_id)
        if current == phase and phase not in ("finalized", "failed"):
            deadline = int(self.contract.get_round(self.run_id, round_id)[deadline_key])
            self.contract.node.advance_to(deadline, timeout=self._longest_phase())
            current = self.contract.phase(self.run_id, round_id)
        return current

    def _sampled_nodes(self) -> list[int]:
        """Nodes in the round's sampled set, in shuffle order (docs/protocol.md §2.2).

        The contract's rule evaluated locally: the registry indices at the first k positions
        of the beacon-keyed shuffle of the registry as it was when the round opened (k
        inverse evaluations, one read of the registry), less anyone whose index was assigned
        after the round opened. The protocol tests keep this equal to the chain's
        ``isSampled``.
        """
        state = self._round_state
        size, epoch = int(state["registrySize"]), int(state["registryEpoch"])
        members = self.contract.members()
        changed = self.contract.registry()[1] != epoch  # a registration or revocation since it opened
        by_address = {a: n for n, a in self._addresses.items()}
        self._positions = {}
        for position, index in enumerate(sampled_indices(beacon=bytes(state["beacon"]), registry_size=size,
                                                         sample_bps=int(state["sampleBps"]))):  # fmt: skip
            if index >= len(members):
                continue  # revoked since, its index not refilled
            address = members[index]
            if changed and self.contract.registry_entry(address)["epoch"] > epoch:
                continue  # moved into this index after the round opened: sits the round out
            self._positions[address] = position
        return [by_address[a] for a in sorted(self._positions, key=self._positions.__getitem__) if a in by_address]

    def _committee(self, revealers: dict[int, str]) -> list[int]:
        """The eligible attesters: revealers among the round's committee positions (the
        first ``committeeSize`` sampled positions; every revealer when it is 0), in shuffle
        order. All are asked: a strict majority of them must agree to finalize."""
        state = self._round_state
        k = sampled_count(registry_size=int(state["registrySize"]), sample_bps=int(state["sampleBps"]))
        seats = committee_size_of(sampled=k, committee_size=int(state["committeeSize"]))
        eligible = [n for n, a in revealers.items() if self._positions.get(a, seats) < seats]
        return sorted(eligible, key=lambda n: self._positions[revealers[n]])

    def _fail(self, report: RoundReport, reason: str) -> bool:
        """Record the failure and let the round's deadlines pass, so a new round can open."""
        self._wait_for_phase_end(report.round, self.contract.phase(self.run_id, report.round), "attestDeadline")
        report.status = "failed"
        report.reason = reason
        log(WARNING, "round %s failed: %s", report.round, reason)
        return False

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


def _reply_bytes(status: Any, key: str, *, size: int | None = None) -> bytes:
    """Field ``key`` of a node's reply status, which must be bytes (of ``size`` bytes)."""
    value = status[key] if key in status else None
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise ValueError(f"its reply's '{key}' is not {size or 'some'} bytes")
    return value


def _record_training(report: RoundReport, metrics: list[Any]) -> None:
    """The round's largest ε and example-weighted training loss, from the committers' metrics."""
    for m in metrics:
        report.epsilon_max = max(report.epsilon_max, float(m["epsilon"]))
    weights = [int(m["num-examples"]) for m in metrics]
    if sum(weights):
        report.train_loss = sum(float(m["train-loss"]) * w for m, w in zip(metrics, weights, strict=True)) / sum(weights)


def _error_line(reason: str) -> str:
    """A node's error reply as one line: Flower writes ``<class 'module.Error'>:<'text'>``."""
    match = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>:<'(.*)'>", reason.strip(), flags=re.DOTALL)
    line = f"{match.group(1)}: {match.group(2)}" if match else reason.strip()
    return line.splitlines()[0] if line else "no reason given"


def _plain(arrays: ArrayRecord) -> dict[str, Any]:
    return {k: v.numpy() for k, v in arrays.items()}

"""CommitRevealStrategy: a Flower strategy whose aggregate is fixed on chain, not by it.

Each Flower round drives one on-chain round in three message exchanges:

1. ``train.commit`` to the sampled nodes: they fetch the global model by the CID the
   chain records, train with DP-SGD and commit to the hash of their update;
2. ``train.reveal`` to the nodes that committed: they upload the blob and reveal;
3. ``train.attest`` to a committee of revealers: each aggregates the revealed set on its
   own and attests the result's CID; a quorum finalizes it on chain, and the finalizing
   attestation opens the next on-chain round.

The coordinator only reads the finalized CID, fetches that blob, checks it against the
CID and hands it to Flower's loop as the next global model. Sampling comes from the
chain's beacon; the coordinator cannot choose who takes part nor what the result is.
It overrides Flower's strategy hooks and leaves Flower's round loop as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

from eth_abi import encode
from eth_utils import keccak, to_canonical_address
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from deai_flower.chain import RoundsContract, TxResult, is_sampled
from deai_flower.messages import CONFIG, METRICS, STATUS
from deai_flower.errors import ConfigError
from deai_flower.storage import ContentStore, cid_from_bytes, decode_arrays


@dataclass
class RoundReport:
    """What happened in one Flower round (one on-chain round attempt)."""

    server_round: int
    chain_round: int
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
    reason: str = ""

    def add_gas(self, call: str, gas: int) -> None:
        self.gas_used += gas
        self.gas_by_call[call] = self.gas_by_call.get(call, 0) + gas


class CommitRevealStrategy(Strategy):
    """Commit–reveal–attest rounds on a ``CommitRevealRounds`` contract.

    Parameters
    ----------
    contract:
        The contract, signing with the coordinator's key (it opens rounds; opening is
        permissionless and gives no say over sampling or results).
    run_id:
        The on-chain run this federation executes.
    store:
        Content store holding the blobs named by the chain's CIDs.
    expected_spec:
        Names, dtypes and shapes of the model's arrays; every fetched blob is checked.
    max_blob_bytes:
        Upper bound on a blob's size.
    committee_size:
        Revealers asked to attest; at least the run's quorum.
    phase_timeout_s:
        Upper bound on each exchange with the nodes and on waiting for a deadline.
    on_phase, on_round:
        Progress callbacks (phase name per round; a finished :class:`RoundReport`).
    """

    def __init__(
        self,
        *,
        contract: RoundsContract,
        run_id: int,
        store: ContentStore,
        expected_spec: dict[str, Any],
        max_blob_bytes: int,
        committee_size: int,
        phase_timeout_s: float = 600.0,
        on_phase: Callable[[int, str], None] | None = None,
        on_round: Callable[[RoundReport], None] | None = None,
        first_round: int = 1,
    ) -> None:
        if committee_size < 1:
            raise ConfigError(f"committee_size must be >= 1 (got {committee_size})")
        if phase_timeout_s <= 0:
            raise ConfigError(f"phase_timeout_s must be > 0 (got {phase_timeout_s})")
        self.contract = contract
        self.run_id = run_id
        self.store = store
        self.expected_spec = expected_spec
        self.max_blob_bytes = max_blob_bytes
        self.committee_size = committee_size
        self.phase_timeout_s = phase_timeout_s
        self._on_phase = on_phase or (lambda _r, _p: None)
        self._on_round = on_round or (lambda _report: None)
        self.first_round = first_round
        self.reports: list[RoundReport] = []
        self._grid: Grid | None = None
        self._addresses: dict[int, str] | None = None
        self._asked: set[int] = set()  # nodes asked for their address already
        self._report: RoundReport | None = None
        self._beacon = b""  # the current round's sampling beacon
        self._phase_start = 0.0

    # ------------------------------------------------------------------ helpers

    def _exchange(self, node_ids: Iterable[int], message_type: str, config: dict[str, Any], group: int) -> list[Message]:
        assert self._grid is not None
        messages = [
            Message(RecordDict({CONFIG: ConfigRecord(config)}), dst_node_id=n, message_type=message_type,
                    group_id=str(group))  # fmt: skip
            for n in node_ids
        ]
        if not messages:
            return []
        return list(self._grid.send_and_receive(messages, timeout=self.phase_timeout_s))

    def _discover(self, grid: Grid) -> None:
        """Learn the chain address of every node not asked before, keeping registered
        participants: a node that connects after the first round takes part from the next.

        Each node is asked once, whatever its answer: a node that does not answer is not
        waited for again every round.
        """
        self._grid = grid
        addresses = self._addresses if self._addresses is not None else {}
        new = [n for n in grid.get_node_ids() if n not in self._asked]
        self._asked.update(new)
        for reply in self._exchange(new, "query.identity", {}, 0):
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                log(WARNING, "node %s did not tell its chain address: %s", node_id, reply.error.reason)
                continue
            address = str(reply.content[STATUS]["address"])
            active, _ = self.contract.participant_info(address)
            if not active:
                log(WARNING, "node %s signs as %s, which is not a registered participant", node_id, address)
                continue
            addresses[node_id] = address
        self._addresses = addresses

    def _round_to_play(self) -> tuple[dict[str, Any], dict[str, Any], TxResult | None]:
        """The run (``getRun``) and the chain round to play next (``getRound``) as the
        chain now has them, and the ``openRound`` transaction if one was needed.

        The attestation that finalizes a round opens the next, so normally that round is
        in its commit phase with no commit yet, and it is played as it is. Otherwise a new
        attempt is opened: for the first round, after a failed one, or after a coordinator
        restart, when a round the previous coordinator left in flight is waited out first
        (its participants' pending reveals lived in that coordinator's run; it fails at
        its deadlines and the new attempt has the same model).
        """
        run = self.contract.get_run(self.run_id)
        round_id = int(run["currentRound"])
        if round_id:
            phase = self.contract.phase(self.run_id, round_id)
            state = self.contract.get_round(self.run_id, round_id) if phase != "failed" else {}
            if phase == "commit" and int(state["commitCount"]) == 0:
                return run, state, None
            if phase in ("commit", "reveal", "attest"):
                log(WARNING, "round attempt %s is still in phase '%s'; letting its deadlines pass", round_id, phase)
                self.contract.node.advance_to(int(state["attestDeadline"]), timeout=self.phase_timeout_s)
        round_id, tx = self.contract.open_round(self.run_id)
        return self.contract.get_run(self.run_id), self.contract.get_round(self.run_id, round_id), tx

    def _mark(self, phase: str) -> None:
        """Close the timing of the current phase and announce the next."""
        assert self._report is not None
        now = time.perf_counter()
        if self._phase_start:
            previous = list(self._report.phase_seconds)[-1]
            self._report.phase_seconds[previous] = now - self._phase_start
        if phase != "done":
            self._report.phase_seconds[phase] = 0.0
            self._on_phase(self._report.server_round, phase)
        self._phase_start = now if phase != "done" else 0.0

    def _split(self, replies: list[Message], ok_state: str) -> dict[int, Message]:
        """Replies in ``ok_state`` by node id; errors recorded in the report."""
        assert self._report is not None and self._addresses is not None
        good = {}
        for reply in replies:
            node_id = reply.metadata.src_node_id
            address = self._addresses.get(node_id, str(node_id))
            if reply.has_error():
                self._report.errors[address] = reply.error.reason
                log(WARNING, "round %s: node %s failed: %s", self._report.server_round, address, reply.error.reason)
                continue
            status = reply.content[STATUS]
            if status.get("state") == ok_state:
                good[node_id] = reply
            elif status.get("state") == "declined":
                self._report.declined[address] = str(status.get("reason", ""))
        return good

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
            self.contract.node.advance_to(deadline, timeout=self.phase_timeout_s)
            current = self.contract.phase(self.run_id, round_id)
        return current

    def _sampled_nodes(self, run: dict[str, Any], state: dict[str, Any]) -> list[int]:
        """Nodes in the round's sampled set: registered, and drawn by the round's beacon.

        The contract's rule (``isSampled``) evaluated locally from the run's sampling rate
        and the round's beacon, which the protocol tests keep equal to the chain's: one
        read of the registry per round instead of one call per node.
        """
        assert self._addresses is not None
        beacon, sample_bps = bytes(state["beacon"]), int(run["sampleBps"])
        registered = set(self.contract.members())
        return [n for n, a in self._addresses.items()
                if a in registered and is_sampled(beacon=beacon, sample_bps=sample_bps, participant=a)]  # fmt: skip

    def _committee(self, revealers: dict[int, str]) -> list[int]:
        """Revealers ordered by keccak(round beacon, address): a fixed, unbiased order."""
        beacon = self._beacon  # fixed when the round opened, read in configure_train
        ranked = sorted(
            revealers, key=lambda n: keccak(encode(["bytes32", "address"], [beacon, to_canonical_address(revealers[n])]))
        )
        return ranked[: self.committee_size]

    # ------------------------------------------------------------------ Flower hooks

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Take the open on-chain round (or open one) and ask the sampled nodes to train and commit."""
        self._discover(grid)
        server_round += self.first_round - 1  # the run's round number (after a resume)
        opening = time.perf_counter()
        run, state, tx = self._round_to_play()
        round_id, model_cid = int(state["round"]), cid_from_bytes(bytes(run["modelCid"]))
        report = RoundReport(server_round=server_round, chain_round=round_id, model_cid=model_cid)
        report.phase_seconds["open"] = time.perf_counter() - opening  # reading the chain, opening if needed
        if tx is not None:
            report.add_gas("openRound", tx.gas_used)
        self._report = report
        self._phase_start = 0.0
        self._mark("commit")
        self._beacon = bytes(state["beacon"])
        sampled = self._sampled_nodes(run, state)
        report.sampled = [self._addresses[n] for n in sampled]
        log(INFO, "round %s (chain round %s): %s of %s nodes sampled", server_round, round_id, len(sampled),
            len(self._addresses))  # fmt: skip
        return [
            Message(
                RecordDict({CONFIG: ConfigRecord({"round": round_id, "model-cid": model_cid})}),
                dst_node_id=n,
                message_type="train.commit",
                group_id=str(server_round),
            )
            for n in sampled
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Run reveal and attest; return the model the chain finalized."""
        report = self._report
        assert report is not None and self._addresses is not None
        round_id = report.chain_round
        try:
            return self._finish_round(report, round_id, list(replies))
        finally:
            self._mark("done")
            self.reports.append(report)
            self._on_round(report)

    def _finish_round(
        self, report: RoundReport, round_id: int, replies: list[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        assert self._addresses is not None
        committed = self._split(replies, "committed")
        report.committed = [self._addresses[n] for n in committed]
        losses, weights = [], []
        for reply in committed.values():
            metrics = reply.content[METRICS]
            report.add_gas("commit", int(metrics["gas"]))
            report.epsilon_max = max(report.epsilon_max, float(metrics["epsilon"]))
            losses.append(float(metrics["train-loss"]))
            weights.append(int(metrics["num-examples"]))

        self._mark("reveal")
        self._wait_for_phase_end(round_id, "commit", "commitDeadline")
        revealed = self._split(self._exchange(committed, "train.reveal", {"round": round_id}, report.server_round),
                               "revealed")  # fmt: skip
        for reply in revealed.values():
            report.add_gas("reveal", int(reply.content[METRICS]["gas"]))
        report.revealed = [self._addresses[n] for n in revealed]

        self._mark("attest")
        phase = self._wait_for_phase_end(round_id, "reveal", "revealDeadline")
        if phase != "attest":
            return self._fail(report, f"reveal phase ended in phase '{phase}' with {len(revealed)} valid reveals")
        committee = self._committee({n: self._addresses[n] for n in revealed})
        attest_replies = self._exchange(committee, "train.attest", {"round": round_id}, report.server_round)
        attested = self._split(attest_replies, "attested")
        self._record_exclusions(report, attest_replies)
        for reply in attested.values():
            report.add_gas("attest", int(reply.content[METRICS]["gas"]))
        report.attested = [self._addresses[n] for n in attested]
        phase = self.contract.phase(self.run_id, round_id)
        if phase != "finalized":
            return self._fail(report, f"no attestation quorum ({len(attested)} attestations; phase '{phase}')")

        report.result_cid = cid_from_bytes(bytes(self.contract.get_run(self.run_id)["modelCid"]))
        arrays = decode_arrays(self.store.get(report.result_cid), max_bytes=self.max_blob_bytes,
                               expected=self.expected_spec)  # fmt: skip
        report.status = "finalized"
        if weights:
            report.train_loss = sum(l * w for l, w in zip(losses, weights, strict=True)) / sum(weights)
        metrics = MetricRecord({"train-loss": report.train_loss, "epsilon-max": report.epsilon_max})
        return ArrayRecord({k: Array(v) for k, v in arrays.items()}), metrics

    def _fail(self, report: RoundReport, reason: str) -> tuple[None, None]:
        """Record the failure and let the round's deadlines pass, so a new round can open."""
        self._wait_for_phase_end(report.chain_round, self.contract.phase(self.run_id, report.chain_round),
                                 "attestDeadline")  # fmt: skip
        report.status = "failed"
        report.reason = reason
        log(WARNING, "round %s failed: %s", report.server_round, reason)
        return None, None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the coordinator evaluates the finalized model."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        log(INFO, "\t├── CommitRevealStrategy: contract %s, run %s", self.contract.address, self.run_id)
        log(INFO, "\t└── committee size %s, phase timeout %.0fs", self.committee_size, self.phase_timeout_s)

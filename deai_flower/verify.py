"""Replay a run from the chain's events and the content store alone, round by round.

Everything that fixes how a run is checked comes from the chain and the store: the
``RunCreated`` event names the run spec by its sha-256 digest (``specHash``), the spec is
fetched from the store under the CID that digest gives and parsed; its rule, rule
parameters, blob size limit and DP settings are the ones used below. For every round the
verifier checks the beacon and the sampled set, the model the round started from, every
reveal against its commitment, every revealed blob against its CID and the blob format,
the aggregate against the finalized CID (recomputed with the spec's rule), and each
participant's cumulative ε against its revealed DP-SGD parameters. For a run read from an
output directory it also checks the ε values ``results.json`` reports against the chain.
Nothing the coordinator reported is trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import is_address, to_checksum_address

from .errors import BlobFormatError, DeaiError, StoreError
from .incentives import IncentiveReplay, replay_incentives
from .protocol.encoding import (
    ACCOUNTANT_NAMES,
    DpParams,
    NO_EXAMPLE_BOUND,
    ZERO_ADDRESS,
    beacon_of,
    commitment_of,
    committee_size_of,
    from_wad,
    parse_reveal_record,
    sampled_count,
    to_wad,
    votes_needed,
)
from .protocol.epsilon import epsilon_of
from .protocol.judgment import EPSILON_RTOL, RevealClaims, judge_reveal
from .protocol.judgment import TOLERANCE_NOTE as _TOLERANCE
from .protocol.judgment import epsilon_close as _close
from .protocol.outcome import OutcomeEntry, Refusal, round_outcome
from .protocol.sampling import RoundSample, round_sample
from .protocol.rules import RULES, RevealedUpdate, minimum_updates
from .protocol.spec import BUNDLED_MODEL_TARGETS, Release, RunSpec, SpecError, check_model, spec_cid
from .recovery import fetch_update
from .storage import ContentStore, IpfsStore, LocalStore, array_spec, cid_from_bytes, compute_cid, decode_arrays

#: Failed attempts in a row after which the contract lets anyone cancel a run (protocol §2.1).
CANCEL_AFTER_FAILED_ATTEMPTS = 3
_EXACTLY = "compared exactly, as WADs"


@dataclass
class RoundVerdict:
    """The checks of one round; ``problems`` empty means verified."""

    round: int
    status: str
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Verification:
    """The verdict on a run: run-wide checks and problems, and one verdict per round.

    Iterating it (or indexing it) goes over the round verdicts; :attr:`ok` also needs the
    run-wide checks to have passed.
    """

    run_id: int
    contract: str
    spec: RunSpec
    spec_cid: str
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    rounds: list[RoundVerdict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(v.ok for v in self.rounds)

    def __iter__(self) -> Iterator[RoundVerdict]:
        return iter(self.rounds)

    def __len__(self) -> int:
        return len(self.rounds)

    def __getitem__(self, index: int) -> RoundVerdict:
        return self.rounds[index]


@dataclass(frozen=True)
class StoreLocation:
    """Where a run's blobs are read from, and why that store (for the verifier's output)."""

    kind: str  # "local" (a directory) or "ipfs" (a node's RPC API multiaddr)
    location: str
    reason: str = "given on the command line"

    def open(self, *, max_bytes: int | None = None) -> ContentStore:
        """The store; ``max_bytes`` caps an IPFS download before its CID is checked."""
        if self.kind == "local":
            if not Path(self.location).is_dir():
                raise StoreError(f"store directory {self.location} does not exist")
            return LocalStore(self.location, max_bytes=max_bytes)
        if self.kind == "ipfs":
            return IpfsStore(self.location, max_bytes=max_bytes)
        raise DeaiError(f"unknown store kind {self.kind!r} (expected local or ipfs)")

    def describe(self) -> str:
        where = "directory" if self.kind == "local" else "IPFS node"
        return f"{self.kind} {where} {self.location} ({self.reason})"


def _bytes(value: str) -> bytes:
    return bytes.fromhex(value[2:] if value.startswith("0x") else value)


@dataclass
class RunRecord:
    """What a verifier reads: the event log, where the run lived, and (for a run read
    from an output directory) what ``results.json`` reported and the store it names."""

    events: list[dict[str, Any]]
    chain_id: int
    contract: str
    run_id: int
    source: str = "the event log"
    reported: dict[str, Any] | None = None
    store: StoreLocation | None = None

    @classmethod
    def from_output_dir(cls, output_dir: Path | str) -> RunRecord:
        """The events ``results.json`` exported, and the store inside ``output_dir``."""
        output_dir = Path(output_dir)
        path = output_dir / "results.json"
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DeaiError(f"{path} does not exist: is {output_dir} a deai-flower run directory?") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DeaiError(f"{path} cannot be read: {exc}") from exc
        try:
            return cls(
                events=list(results["events"]),
                chain_id=int(results["chain"]["chain_id"]),
                contract=to_checksum_address(results["contract_address"]),
                run_id=int(results["run_id"]),
                source=f"results.json in {output_dir}",
                reported=results,
                store=recorded_store(output_dir, results.get("store")),
            )
        except KeyError as exc:
            raise DeaiError(f"{path} is not a run's results (no {exc} entry)") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise DeaiError(f"{path} is not a run's results ({exc})") from exc

    @classmethod
    def from_chain(cls, *, rpc_url: str, contract: str, run_id: int) -> RunRecord:
        """Read the events of ``run_id`` from a live node (only view calls; nothing is signed)."""
        from eth_account import Account

        from .chain import RoundsContract, connect_rpc

        if not is_address(contract):
            raise DeaiError(f"--contract {contract!r} is not a 20-byte hex address")
        node = connect_rpc(rpc_url)
        handle = RoundsContract(node, contract, Account.create())
        return cls(events=handle.event_log(), chain_id=node.chain_id, contract=handle.address, run_id=run_id,
                   source=f"contract {handle.address} at {rpc_url}")  # fmt: skip

    def created_params(self) -> dict[str, Any]:
        """The ``RunParams`` of the run's ``RunCreated`` event (what the chain recorded; what
        the spec gives is :meth:`~deai_flower.protocol.spec.RunSpec.run_params`)."""
        try:
            created = [e for e in self.events
                       if e["event"] == "RunCreated" and int(e["args"]["runId"]) == self.run_id]  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DeaiError(f"{self.source}: malformed event log ({type(exc).__name__}: {exc})") from exc
        if len(created) != 1:
            raise DeaiError(f"{self.source}: expected one RunCreated event for run {self.run_id}, "
                            f"found {len(created)}")  # fmt: skip
        return dict(created[0]["args"]["params"])

    def spec_digest(self) -> bytes:
        """The spec's sha-256 digest the chain recorded at ``createRun``."""
        params = self.created_params()
        # ``configHash`` is the field's name in contracts deployed before the rename.
        digest = params.get("specHash", params.get("configHash"))
        if digest is None:
            raise DeaiError(f"{self.source}: run {self.run_id}'s RunCreated event has no specHash")
        return _bytes(digest)


def recorded_store(output_dir: Path, entry: Any) -> StoreLocation:
    """The store of a run's output directory, from ``results.json``'s ``store`` entry.

    A local store's root relative to the output directory is resolved against it; an
    absolute one is used when it lies inside the directory. Otherwise (the directory was
    copied or moved) its own ``store/`` is used when it exists, so that a copy is checked
    against its own blobs and never against the original's.
    """
    entry = entry or {}
    kind = str(entry.get("kind", "local"))
    location = entry.get("root", entry.get("location"))
    if kind != "local":
        if not location:
            raise DeaiError(f"results.json in {output_dir} names a {kind} store without its address")
        return StoreLocation(kind, str(location), "recorded in results.json")
    own = output_dir / "store"
    if location is None:
        return StoreLocation("local", str(own), "the output directory's store/")
    root = Path(location)
    if not root.is_absolute():
        return StoreLocation("local", str(output_dir / root), "results.json's, inside the output directory")
    if root.resolve().is_relative_to(output_dir.resolve()):
        return StoreLocation("local", str(root), "results.json's, inside the output directory")
    if own.is_dir():
        return StoreLocation("local", str(own), f"the output directory's store/, not {root} that results.json names")
    return StoreLocation("local", str(root), "results.json's, outside the output directory")


@dataclass
class _Entry:
    index: int
    epoch: int
    max_examples: int


@dataclass
class _Registry:
    """The participant registry replayed from ``ParticipantRegistered`` / ``ParticipantRevoked``
    (protocol §2.2): each member's index, the epoch it was assigned in, and its example bound."""

    members: dict[str, _Entry] = field(default_factory=dict)
    epoch: int = 0

    @property
    def size(self) -> int:
        return len(self.members)

    def apply(self, event: dict[str, Any]) -> None:
        args = event["args"]
        if event["event"] == "ParticipantRegistered":
            who = to_checksum_address(args["participant"])
            self.epoch = int(args.get("epoch", self.epoch + 1))
            self.members[who] = _Entry(index=int(args.get("index", self.size)), epoch=self.epoch,
                                       max_examples=int(args.get("maxExamples", NO_EXAMPLE_BOUND)))  # fmt: skip
        elif event["event"] == "ParticipantRevoked":
            who = to_checksum_address(args["participant"])
            self.epoch = int(args.get("epoch", self.epoch + 1))
            gone = self.members.pop(who, None)
            moved = args.get("moved")
            if gone is not None and moved and int(moved, 16) != 0 and to_checksum_address(moved) in self.members:
                self.members[to_checksum_address(moved)] = dataclasses.replace(
                    self.members[to_checksum_address(moved)], index=gone.index, epoch=self.epoch)


def _registry_at(events: Iterable[dict[str, Any]], position: tuple[int, int]) -> _Registry:
    """The registry after every registry event before ``position`` (block, log index)."""
    registry = _Registry()
    for e in events:
        if (e["block"], e["log_index"]) >= position:
            break
        registry.apply(e)
    return registry


def load_spec(record: RunRecord, store: ContentStore) -> tuple[RunSpec, str]:
    """The run spec the chain names, fetched from ``store`` and parsed; and its CID.

    Raises :class:`SpecError` with one reason when the store lacks it, its bytes do not
    hash to the chain's digest, it does not parse, or it names a rule this release lacks.
    """
    digest = record.spec_digest()
    cid = spec_cid(digest)
    try:
        data = store.get(cid)  # the store refuses bytes that do not hash to the CID
    except StoreError as exc:
        raise SpecError(f"run {record.run_id}'s spec {cid} (the chain's specHash) cannot be read: {exc}") from exc
    if hashlib.sha256(data).digest() != digest:
        raise SpecError(f"the store's spec {cid} does not hash to the chain's specHash 0x{digest.hex()}")
    try:
        spec = RunSpec.from_bytes(data)
    except SpecError as exc:
        raise SpecError(f"{cid}: {exc}") from exc
    if spec.rule.name not in RULES:
        raise SpecError(f"run spec {cid} names aggregation rule {spec.rule.name!r}, which this release does not "
                        f"implement ({', '.join(RULES)})")  # fmt: skip
    return spec, cid


def _check_params(verification: Verification, params: dict[str, Any]) -> None:
    """The run's parameters on chain must be the ones its spec fixes."""
    spec = verification.spec
    # Not compared here: the spec was fetched by its digest, the initial model is read by
    # its CID, and codeHash names the creator's release, which the spec does not fix.
    enforced = spec.run_params(initial_model_cid=b"", code_hash=b"")
    expected = {name: value for name, value in enforced.items() if isinstance(value, int)}
    token = str(params.get("stakeToken", ZERO_ADDRESS))
    if int(token, 16) != int(enforced["stakeToken"], 16):
        verification.problems.append(f"the chain's stake token {token} differs from the spec's "
                                     f"{spec.incentives.stake_token or 'native currency'}")  # fmt: skip
    wrong = [f"{name} {int(params[name])}, the spec gives {value}" for name, value in expected.items()
             if name in params and int(params[name]) != value]  # fmt: skip
    if wrong:
        verification.problems.append("the chain's run parameters differ from the spec: " + "; ".join(wrong))
    else:
        verification.checks.append("run parameters on chain match the spec")


def verify_run(record: RunRecord, store: ContentStore, *, spec: tuple[RunSpec, str] | None = None,
               models: Collection[str] = BUNDLED_MODEL_TARGETS) -> Verification:  # fmt: skip
    """Check every round of ``record`` against the chain's spec and ``store``.

    ``spec``: the spec and its CID when the caller already loaded them (:func:`load_spec`).
    ``models``: the exact model targets this verifier builds, for a loss-scored run (§4.3.2).
    Raises :class:`DeaiError` when the run cannot be checked at all (no spec, no initial
    model, a model it does not build, a malformed event log); mismatches are reported in
    the result.
    """
    run_spec, cid = spec if spec is not None else load_spec(record, store)
    if run_spec.incentives.score == "loss":  # its scores are recomputed with the spec's model
        try:
            check_model(run_spec.model, allowed=models)
        except SpecError as exc:
            raise SpecError(f"{exc}; deai verify --allow-model NAME builds more") from exc
    verification = Verification(run_id=record.run_id, contract=record.contract, spec=run_spec, spec_cid=cid)
    verification.checks.append(f"spec {cid} hashes to the chain's specHash")
    ours = Release.current()
    if run_spec.release.deai_flower != ours.deai_flower:
        verification.checks.append(f"spec is for deai-flower {run_spec.release.deai_flower}, checked with "
                                   f"{ours.deai_flower}")  # fmt: skip
    try:
        _verify_rounds(record, store, verification, models)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DeaiError(f"{record.source}: malformed event log ({type(exc).__name__}: {exc})") from exc
    return verification


def _verify_rounds(record: RunRecord, store: ContentStore, verification: Verification,
                   models: Collection[str]) -> None:  # fmt: skip
    spec = verification.spec
    rule, rule_params, max_bytes = spec.rule.name, spec.rule.params, spec.max_blob_bytes
    events = sorted(record.events, key=lambda e: (e["block"], e["log_index"]))
    run_events = [e for e in events if int(e["args"].get("runId", record.run_id)) == record.run_id]
    params = record.created_params()
    _check_params(verification, params)
    model_cid = params["initialModelCid"]
    previous_model_cid = None
    try:
        arrays_spec = array_spec(decode_arrays(store.get(cid_from_bytes(_bytes(model_cid))), max_bytes=max_bytes))
    except (StoreError, BlobFormatError) as exc:
        raise DeaiError(f"the initial model {cid_from_bytes(_bytes(model_cid))} cannot be read: {exc}") from exc
    by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in run_events:
        if "round" in e["args"]:
            by_round[int(e["args"]["round"])].append(e)
    reported = _ReportedEpsilon.of(record.reported)
    funds = replay_incentives(run_events, record.run_id)
    scorer = _Scorer(spec, store, models)
    histories: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for round_id in sorted(by_round):
        round_events = by_round[round_id]
        verdict = RoundVerdict(round=round_id, status="open")
        verification.rounds.append(verdict)
        opened = [e for e in round_events if e["event"] == "RoundOpened"]
        if len(opened) != 1:
            verdict.problems.append(f"expected one RoundOpened event, found {len(opened)}")
            continue
        o = opened[0]["args"]
        beacon = _bytes(o["beacon"])
        if beacon != beacon_of(chain_id=record.chain_id, contract=record.contract, run_id=record.run_id,
                               round_id=round_id, model_cid=_bytes(model_cid)):  # fmt: skip
            verdict.problems.append("beacon differs from the one derived from the round's model")
        sample_bps = int(params["sampleBps"])
        opened_at = _registry_at(events, (opened[0]["block"], opened[0]["log_index"]))
        registry_size = int(o.get("registrySize", opened_at.size))
        registry_epoch = int(o.get("registryEpoch", opened_at.epoch))
        if registry_size != opened_at.size:
            verdict.problems.append(f"RoundOpened.registrySize {registry_size}, the registry events give "
                                    f"{opened_at.size}")  # fmt: skip
        k = sampled_count(registry_size=registry_size, sample_bps=sample_bps)
        if k != int(o["sampledCount"]):
            verdict.problems.append(f"sampledCount {o['sampledCount']}, the sampling rule gives {k} of "
                                    f"{registry_size}")  # fmt: skip
        committee = committee_size_of(sampled=k, committee_size=int(params.get("committeeSize", 0)))
        if "committeeSize" in o and int(o["committeeSize"]) != committee:
            verdict.problems.append(f"RoundOpened.committeeSize {o['committeeSize']}, the run's parameters "
                                    f"give {committee}")  # fmt: skip
        sample = round_sample(beacon=beacon, registry_size=registry_size, registry_epoch=registry_epoch,
                              sample_bps=sample_bps, committee_size=int(params.get("committeeSize", 0)))  # fmt: skip
        verdict.checks.append("beacon, model and sample")

        commitments = {to_checksum_address(e["args"]["participant"]): _bytes(e["args"]["commitment"])
                       for e in round_events if e["event"] == "Committed"}  # fmt: skip
        # each committer's registry entry when it committed (a later revocation keeps its rights);
        # a sampled participant that declined (protocol §2.3) answered once, and did not commit
        entries: dict[str, _Entry] = {}
        declined: set[str] = set()
        for e in round_events:
            if e["event"] not in ("Committed", "Declined"):
                continue
            who, did = to_checksum_address(e["args"]["participant"]), e["event"].lower()
            entry = _registry_at(events, (e["block"], e["log_index"])).members.get(who)
            if entry is None:
                verdict.problems.append(f"{who} {did} without being registered")
            elif sample.position(index=entry.index, epoch=entry.epoch) is None:
                verdict.problems.append(f"{who} {did} without being sampled (index {entry.index}, "
                                        f"epoch {entry.epoch})")  # fmt: skip
            elif who in entries or who in declined:
                verdict.problems.append(f"{who} {did} after it had committed or declined in the round")
            elif did == "declined":
                declined.add(who)
            else:
                entries[who] = entry
        if declined:
            verdict.checks.append(f"{len(declined)} sampled participant(s) declined the round")
        reveals = [e["args"] for e in round_events if e["event"] == "Revealed"]
        updates: dict[str, RevealedUpdate] = {}
        judged: dict[str, Refusal] = {}  # the verifier's own refusals
        revealed_epsilon: dict[str, int] = {}  # each reveal's ε as the chain records it (WAD)
        for r in reveals:
            who = to_checksum_address(r["participant"])
            try:  # the record as logged; decoded fields next to it in an export are not trusted
                revealed = parse_reveal_record(_bytes(r["record"]))
            except ValueError as exc:
                verdict.problems.append(f"reveal of {who}: {exc}")
                continue
            dp = revealed.dp
            expected = commitment_of(chain_id=record.chain_id, contract=record.contract, run_id=record.run_id,
                                     round_id=round_id, participant=who, cid=revealed.cid,
                                     num_examples=revealed.num_examples, dp=dp, salt=revealed.salt)  # fmt: skip
            if commitments.get(who) != expected:
                verdict.problems.append(f"reveal of {who} does not open its commitment")
            if spec.private and ACCOUNTANT_NAMES.get(dp.accountant) != spec.privacy.accountant:
                verdict.problems.append(f"{who} accounts with {ACCOUNTANT_NAMES.get(dp.accountant, dp.accountant)}, "
                                        f"the spec names {spec.privacy.accountant}")  # fmt: skip
            judgment = judge_reveal(spec, RevealClaims(who, cid_from_bytes(revealed.cid), revealed.num_examples, dp),
                                    history=list(histories[who]), read=store.get, expected=arrays_spec)  # fmt: skip
            _check_epsilon(verdict, who, dp, histories[who])
            revealed_epsilon[who] = dp.epsilon_wad
            bound = entries[who].max_examples if who in entries else NO_EXAMPLE_BOUND
            if revealed.num_examples > bound:
                verdict.problems.append(f"{who} reveals {revealed.num_examples} examples, above the {bound} it is "
                                        "registered with")  # fmt: skip
            if isinstance(judgment, RevealedUpdate):
                updates[who] = judgment
                continue
            judged[who] = judgment
            if judgment.verdict == "dp-claims":  # attesters exclude it too (protocol §2.5)
                verdict.problems.append(f"{who}'s reveal is excluded: {judgment.reason}")
        verdict.checks.append(f"{len(reveals)} reveals vs commitments, CIDs, ε")
        if reported is not None:
            reported.check_round(verdict, revealed_epsilon, committed=set(commitments))

        finalized = [e["args"] for e in round_events if e["event"] == "RoundFinalized"]
        if finalized:
            verdict.status = "finalized"
            result_cid = finalized[0]["resultCid"]
            outcome = funds.outcomes.get(round_id, [])
            _check_votes(verdict, round_events, result_cid, entries=entries, reveals=reveals, sample=sample,
                         quorum=int(params["quorum"]))  # fmt: skip
            aggregated = _check_outcome(verdict, outcome, updates, judged,
                                        revealers=[to_checksum_address(r["participant"]) for r in reveals])  # fmt: skip
            # scores only for a round whose outcome agrees with the verifier's verdicts
            global_arrays = scorer.global_model(verdict, model_cid) if aggregated and not verdict.problems else None
            if len(aggregated) < minimum_updates(rule, rule_params):
                verdict.problems.append(f"finalized with {len(aggregated)} valid updates, fewer than {rule} needs")
            else:
                # the outcome's refusals, as the verifier judged them (a blob published late it could not)
                refused = {e.participant: judged.get(e.participant, Refusal(e.verdict, "unavailable to the attesters"))
                           for e in outcome if e.verdict != "aggregated"}  # fmt: skip
                previous = None  # shares: the model before the round's, whose public step it removes
                if global_arrays is not None and spec.incentives.score == "shares" and previous_model_cid is not None:
                    previous = scorer.global_model(verdict, previous_model_cid)
                ours = round_outcome(spec, aggregated, refused, global_arrays=global_arrays,
                                     validation_losses=scorer.validation_losses, previous_global=previous)  # fmt: skip
                if ours.scores is not None:
                    scorer.check(verdict, outcome, ours.scores)
                recomputed = compute_cid(ours.result)
                if recomputed != cid_from_bytes(_bytes(result_cid)):
                    verdict.problems.append(
                        f"{rule} of the valid reveals is {recomputed}, chain finalized "
                        f"{cid_from_bytes(_bytes(result_cid))}"
                    )
                else:
                    verdict.checks.append(f"{rule} aggregate equals the finalized CID")
            _check_stored_result(verdict, store, cid_from_bytes(_bytes(result_cid)), max_bytes=max_bytes,
                                 expected=arrays_spec)  # fmt: skip
            previous_model_cid, model_cid = model_cid, result_cid
        else:
            verdict.status = "not finalized"
    if reported is not None:
        reported.check_leftovers(verification)
    _check_cancellation(verification, run_events)
    _check_funds(verification, funds, record.reported)


def _check_cancellation(verification: Verification, run_events: list[dict[str, Any]]) -> None:
    """A ``RunCancelled`` follows three failed attempts in a row (protocol §2.1): its round
    and the two before it opened and none finalized; and no round opens after it."""
    cancelled = [int(e["args"]["round"]) for e in run_events if e["event"] == "RunCancelled"]
    if not cancelled:
        return
    opened = {int(e["args"]["round"]) for e in run_events if e["event"] == "RoundOpened"}
    finalized = {int(e["args"]["round"]) for e in run_events if e["event"] == "RoundFinalized"}
    last = cancelled[0]
    streak = range(last - CANCEL_AFTER_FAILED_ATTEMPTS + 1, last + 1)
    if len(cancelled) > 1:
        verification.problems.append(f"the run was cancelled {len(cancelled)} times")
    elif any(r < 1 or r not in opened or r in finalized for r in streak) or max(opened) > last:
        verification.problems.append(f"the run was cancelled after round {last}, but rounds {list(streak)} did not "
                                     f"all open and fail, or a round opened after it")  # fmt: skip
    else:
        verification.checks.append(f"cancelled after {CANCEL_AFTER_FAILED_ATTEMPTS} failed attempts "
                                   f"(rounds {streak[0]}-{last})")  # fmt: skip


def _check_outcome(verdict: RoundVerdict, outcome: list[OutcomeEntry], updates: dict[str, RevealedUpdate],
                   judged: dict[str, Refusal], *, revealers: list[str]) -> list[RevealedUpdate]:  # fmt: skip
    """Compare the finalized outcome's verdicts with the verifier's own; return the updates
    the outcome aggregated (what the aggregate and the scores are recomputed from).

    A blob the attesters found unavailable but the verifier can read was published late:
    noted, not a problem (availability at attestation time is what counted). One the
    attesters aggregated but the verifier cannot read is reported as unavailable, apart
    from a tampered or malformed one.
    """
    by_address = {e.participant: e for e in outcome}
    if sorted(by_address) != sorted(set(revealers)):
        verdict.problems.append(f"the finalized outcome lists {sorted(by_address)}, the round's revealers are "
                                f"{sorted(set(revealers))}")  # fmt: skip
        return []
    aggregated = []
    for who in sorted(by_address, key=lambda a: int(a, 16)):
        theirs = by_address[who].verdict
        ours = judged[who].verdict if who in judged else "aggregated"
        if theirs == ours:
            if who in updates:
                aggregated.append(updates[who])
            elif ours != "aggregated":
                verdict.checks.append(f"{who} refused ({ours}): {judged[who]}")
        elif theirs == "unavailable" and ours == "aggregated":
            verdict.checks.append(f"{who}'s blob was unavailable to the attesters and is readable now (published "
                                  "late): refused as they found it")  # fmt: skip
        elif ours == "unavailable":
            verdict.problems.append(f"{who}'s blob, which the attesters found {theirs}, is unavailable to the "
                                    f"verifier: {judged[who]}")  # fmt: skip
        else:
            reason = f": {judged[who]}" if who in judged else ""
            verdict.problems.append(f"the attesters found {who}'s update {theirs}, the verifier finds it "
                                    f"{ours}{reason}")  # fmt: skip
    return aggregated


class _Scorer:
    """Recomputes a round's contribution scores by the spec's score (protocol §4.3)."""

    def __init__(self, spec: RunSpec, store: ContentStore, models: Collection[str]) -> None:
        self.spec, self.store, self.models = spec, store, models
        self._loss_context: tuple[Any, Any, Any] | None = None

    def global_model(self, verdict: RoundVerdict, model_cid: Any) -> dict[str, Any] | None:
        """The round's global model, which scores are measured from (None, with the
        problem noted, when the store cannot produce it)."""
        try:
            return decode_arrays(self.store.get(cid_from_bytes(_bytes(model_cid))), max_bytes=self.spec.max_blob_bytes)
        except (StoreError, BlobFormatError) as exc:
            verdict.problems.append(f"the round's global model cannot be read to recompute scores: {exc}")
            return None

    def check(self, verdict: RoundVerdict, outcome: list[OutcomeEntry], scores: Mapping[str, int]) -> None:
        """The finalized outcome's scores must be the recomputed ``scores``."""
        claimed = {e.participant: e.score for e in outcome if e.verdict == "aggregated"}
        wrong = [f"{who} {claimed.get(who)} (recomputed {score})" for who, score in sorted(scores.items())
                 if claimed.get(who) != score]  # fmt: skip
        if wrong:
            verdict.problems.append(f"{self.spec.incentives.score} scores differ: " + ", ".join(wrong))
        else:
            verdict.checks.append(f"{len(scores)} {self.spec.incentives.score} scores recomputed")

    def validation_losses(self, aggregated: Sequence[RevealedUpdate],
                          global_arrays: Mapping[str, Any]) -> tuple[float, dict[str, float]]:  # fmt: skip
        """The validation losses of a loss-scored run, with the spec's model (built once)."""
        from .models import instantiate_model
        from .protocol.validation import validation_set
        from .validation_loss import validation_loss, validation_losses

        if self._loss_context is None:
            data = self.spec.data
            arrays = decode_arrays(self.store.get(self.spec.incentives.validation_cid),
                                   max_bytes=self.spec.max_blob_bytes)  # fmt: skip
            x, y = validation_set(arrays, num_features=data.num_features, num_classes=data.num_classes)
            self._loss_context = (instantiate_model(self.spec.model, data, allowed=self.models), x, y)
        model, x, y = self._loss_context
        reference = validation_loss(model, global_arrays, x, y)
        return reference, validation_losses(model, {u.participant: u.arrays for u in aggregated}, x, y)


def _check_funds(verification: Verification, funds: IncentiveReplay, reported: dict[str, Any] | None) -> None:
    """The run's stakes, slashes and payouts follow the contract's rules, conserve the
    funds to the wei, and are what ``results.json`` reports."""
    verification.problems.extend(f"incentives: {p}" for p in funds.problems)
    if not funds.problems:
        verification.checks.append(f"incentives: funded {funds.funded}, slashed {funds.slashed}, paid {funds.paid} by "
                                   f"score and {funds.attester_paid} to attesters, pool left {funds.pool}, withdrawn "
                                   f"by its creator {funds.pool_withdrawn} (conserved to the wei)")  # fmt: skip
    section = (reported or {}).get("incentives")
    if section is None:
        return
    ours = funds.to_json()
    theirs = {key: section.get(key) for key in ours}
    theirs["participants"] = {who: {k: v for k, v in entry.items() if k != "client"}
                              for who, entry in (section.get("participants") or {}).items()}  # fmt: skip
    if theirs != ours:
        differing = sorted(key for key in ours if theirs.get(key) != ours[key])
        if "participants" in differing:
            differing.remove("participants")
            differing += [f"participant {who}" for who in sorted(set(ours["participants"]) | set(theirs["participants"]))
                          if ours["participants"].get(who) != theirs["participants"].get(who)]  # fmt: skip
        verification.problems.append("results.json's incentives differ from the chain's: " + ", ".join(differing))
    else:
        verification.checks.append("results.json's incentives")


def _check_votes(verdict: RoundVerdict, round_events: list[dict[str, Any]], result_cid: str, *,
                 entries: dict[str, _Entry], reveals: list[dict[str, Any]], sample: RoundSample,
                 quorum: int) -> None:  # fmt: skip
    """A finalized round had ``votesNeeded`` attestations of its CID from eligible attesters
    (revealers in the committee, protocol §2.5), and nobody else attested. The majority is
    of the committee members that committed (``entries``: the round's sampled committers),
    so reveals a relayer withheld cannot lower it."""
    committed = {who for who, entry in entries.items() if sample.in_committee(index=entry.index, epoch=entry.epoch)}
    eligible = committed & {to_checksum_address(r["participant"]) for r in reveals}
    needed = votes_needed(eligible=len(committed), quorum=quorum)
    # a vote is for the result CID and the outcome together; the finalizing one is the last
    attested = [(to_checksum_address(e["args"]["attester"]),
                 (_bytes(e["args"]["resultCid"]), _bytes(e["args"].get("outcome", "0x"))))
                for e in round_events if e["event"] == "Attested"]  # fmt: skip
    finalizing = next((pair for _, pair in reversed(attested) if pair[0] == _bytes(result_cid)), None)
    strangers = sorted({who for who, _ in attested if who not in eligible})
    if strangers:
        verdict.problems.append(f"attested without being eligible (a revealer in the committee): "
                                f"{', '.join(strangers)}")  # fmt: skip
    votes = sum(1 for who, pair in attested if pair == finalizing and who in eligible)
    if votes < needed:
        verdict.problems.append(f"finalized with {votes} matching attestations of eligible attesters, "
                                f"{needed} needed (a majority of the {len(committed)} committee members that "
                                f"committed, at least quorum {quorum})")  # fmt: skip
    else:
        verdict.checks.append(f"{votes} of {len(eligible)} eligible attesters finalized it ({needed} needed: a "
                              f"majority of the {len(committed)} committee members that committed)")  # fmt: skip


def _check_stored_result(verdict: RoundVerdict, store: ContentStore, cid: str, *, max_bytes: int,
                         expected: dict[str, Any]) -> None:  # fmt: skip
    """Re-read a finalized result from the store: its bytes must hash to its CID and decode as
    a blob of the model's layout. The next round's scores read it too, but nothing reads
    the last round's (the run's final model) but this."""
    stored = fetch_update(store, cid, max_bytes=max_bytes, expected=expected)
    if isinstance(stored, Refusal):
        verdict.problems.append(f"the stored result {cid} is {stored.verdict}: {stored.reason}")
    else:
        verdict.checks.append(f"stored result {cid} re-read")


def _check_epsilon(verdict: RoundVerdict, who: str, dp: DpParams, history: list[tuple[float, float, int]]) -> None:
    """Recompute the participant's cumulative ε from its revealed (σ, q, steps) history
    (appended to ``history``) and compare it with the revealed ε."""
    history.append((from_wad(dp.noise_multiplier_wad), from_wad(dp.sample_rate_wad), dp.steps))
    accountant = ACCOUNTANT_NAMES.get(dp.accountant)
    claimed = dp.epsilon
    if accountant == "none" or any(sigma == 0 for sigma, _, _ in history):
        if not math.isinf(claimed):
            verdict.problems.append(f"{who} trained without noise but claims ε={claimed}")
        return
    if accountant is None:
        verdict.problems.append(f"{who} names unknown accountant id {dp.accountant}")
        return
    recomputed = epsilon_of(history, delta=from_wad(dp.delta_wad), accountant=accountant)
    if not _close(recomputed, claimed):
        verdict.problems.append(f"{who} claims ε={claimed:.6f}, its revealed parameters give ε={recomputed:.6f} "
                                f"({_TOLERANCE})")  # fmt: skip


def _as_epsilon(value: Any) -> tuple[float, int]:
    """A reported ε (a number, or a string such as ``"inf"`` for a non-private run) and the
    WAD it encodes to."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not an ε: {value!r}")
    number = float(value)
    if not number >= 0:
        raise ValueError(f"not an ε: {value!r}")
    return number, to_wad(number)


class _ReportedEpsilon:
    """The ε values ``results.json`` reports: per participant per round (``privacy_ledger``)
    and each round's maximum (``rounds[].epsilon``). They restate what the reveals record,
    so they must encode to the very WADs the chain holds (protocol §6, step 5)."""

    def __init__(self, ledger: dict[tuple[str, int], Any], maxima: dict[int, list[Any]]) -> None:
        self.ledger, self.maxima = ledger, maxima
        self.seen: set[tuple[str, int]] = set()

    @classmethod
    def of(cls, results: dict[str, Any] | None) -> _ReportedEpsilon | None:
        if results is None:
            return None
        ledger: dict[tuple[str, int], Any] = {}
        maxima: dict[int, list[Any]] = defaultdict(list)
        try:
            for address, entry in (results.get("privacy_ledger") or {}).items():
                who = to_checksum_address(address)
                for row in entry["rounds"]:
                    ledger[(who, int(row["round"]))] = row
            for row in results.get("rounds") or []:
                if "epsilon" in row:
                    maxima[int(row.get("chain_round", row["round"]))].append(row["epsilon"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DeaiError(f"results.json: malformed privacy_ledger or rounds ({type(exc).__name__}: {exc})") from exc
        return cls(ledger, maxima)

    def check_round(self, verdict: RoundVerdict, chain: dict[str, int], *, committed: set[str]) -> None:
        round_id = verdict.round
        before = len(verdict.problems)
        for who, epsilon in chain.items():
            self.seen.add((who, round_id))
            row = self.ledger.get((who, round_id))
            if row is None:
                verdict.problems.append(f"results.json's privacy_ledger has no round {round_id} for {who}, "
                                        "which revealed in it")  # fmt: skip
                continue
            try:
                claimed, wad = _as_epsilon(row.get("epsilon"))
            except ValueError as exc:
                verdict.problems.append(f"results.json's privacy_ledger, {who} round {round_id}: {exc}")
                continue
            if wad != epsilon:
                verdict.problems.append(f"results.json reports ε={claimed!r} for {who} in round {round_id}, which "
                                        f"differs from the ε={from_wad(epsilon)!r} its reveal records "
                                        f"({_EXACTLY})")  # fmt: skip
        for who, r in sorted(self.ledger):
            if r == round_id and who not in chain:
                self.seen.add((who, r))
                verdict.problems.append(f"results.json's privacy_ledger reports round {round_id} for {who}, "
                                        "which revealed nothing in it")  # fmt: skip
        if chain:
            highest = max(chain.values())
            # A committer that did not reveal may have reported a higher ε the chain never saw.
            silent = bool(committed - set(chain))
            for value in self.maxima.get(round_id, []):
                try:
                    claimed, wad = _as_epsilon(value)
                except ValueError as exc:
                    verdict.problems.append(f"results.json's round {round_id} ε: {exc}")
                    continue
                if not (wad == highest or (silent and wad > highest)):
                    verdict.problems.append(f"results.json reports round {round_id}'s ε={claimed!r}, which differs "
                                            f"from the highest its reveals record, ε={from_wad(highest)!r} "
                                            f"({_EXACTLY})")  # fmt: skip
        if len(verdict.problems) == before:
            verdict.checks.append("results.json's ε")

    def check_leftovers(self, verification: Verification) -> None:
        extra = sorted(set(self.ledger) - self.seen, key=lambda k: (k[1], k[0]))
        if extra:
            listed = ", ".join(f"{who} round {r}" for who, r in extra)
            verification.problems.append(f"results.json's privacy_ledger reports rounds the chain never opened: "
                                         f"{listed}")  # fmt: skip


__all__ = [
    "EPSILON_RTOL",
    "RoundVerdict",
    "RunRecord",
    "StoreLocation",
    "Verification",
    "load_spec",
    "recorded_store",
    "verify_run",
]

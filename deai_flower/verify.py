"""Replay a run from the chain's events and the content store alone, round by round.

``deai verify OUTPUT_DIR`` reads the event log a run exported (or, for a run on a live
node, the contract's events) and checks, for every round: the beacon and the sampled
set, the model the round started from, every reveal against its commitment, every
revealed blob against its CID and the blob format, the aggregate against the finalized
CID (recomputed with the run's rule), and each participant's cumulative ε against its
revealed DP-SGD parameters. Nothing the coordinator reported is trusted.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address

from .protocol.encoding import (
    ACCOUNTANT_NAMES,
    DpParams,
    beacon_of,
    commitment_of,
    from_wad,
    is_sampled,
    parse_reveal_record,
)
from .errors import BlobFormatError, DeaiError, StoreError
from .privacy import PrivacyLedger
from .storage import ContentStore, array_spec, cid_from_bytes, compute_cid, decode_arrays, encode_arrays
from .protocol.rules import RevealedUpdate, aggregate, minimum_updates

#: Relative tolerance on a recomputed ε (fixed-point rounding of σ, q and δ).
EPSILON_RTOL = 1e-6


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


def _bytes(value: str) -> bytes:
    return bytes.fromhex(value[2:] if value.startswith("0x") else value)


@dataclass
class RunRecord:
    """What a verifier needs: the event log plus where the run lived."""

    events: list[dict[str, Any]]
    chain_id: int
    contract: str
    run_id: int
    rule: str
    rule_params: dict[str, Any]
    max_blob_bytes: int

    @classmethod
    def from_output_dir(cls, output_dir: Path) -> RunRecord:
        path = output_dir / "results.json"
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DeaiError(f"{path} does not exist: is {output_dir} a deai-flower run directory?") from None
        except json.JSONDecodeError as exc:
            raise DeaiError(f"{path} is not valid JSON: {exc}") from exc
        strategy = results["config"]["strategy"]
        return cls(
            events=results["events"],
            chain_id=int(results["chain"]["chain_id"]),
            contract=results["contract_address"],
            run_id=int(results["run_id"]),
            rule=strategy["name"],
            rule_params={k: strategy[k] for k in ("num_malicious_nodes", "num_nodes_to_select", "beta") if k in strategy},
            max_blob_bytes=int(results["config"]["storage"]["max_blob_bytes"]),
        )


    @classmethod
    def from_chain(
        cls, *, rpc_url: str, contract: str, run_id: int, rule: str, rule_params: dict[str, Any], max_blob_bytes: int
    ) -> RunRecord:
        """Read the events of ``run_id`` from a live node (only view calls; nothing is signed)."""
        from eth_account import Account

        from .chain import RoundsContract, connect_rpc

        node = connect_rpc(rpc_url)
        handle = RoundsContract(node, contract, Account.create())
        return cls(events=handle.event_log(), chain_id=node.chain_id, contract=handle.address, run_id=run_id,
                   rule=rule, rule_params=rule_params, max_blob_bytes=max_blob_bytes)  # fmt: skip


def _participants_at(events: Iterable[dict[str, Any]], block: int) -> set[str]:
    """Registered addresses after all registry events up to and including ``block``."""
    members: set[str] = set()
    for e in events:
        if e["block"] > block:
            break
        if e["event"] == "ParticipantRegistered":
            members.add(to_checksum_address(e["args"]["participant"]))
        elif e["event"] == "ParticipantRevoked":
            members.discard(to_checksum_address(e["args"]["participant"]))
    return members


def verify_run(record: RunRecord, store: ContentStore) -> list[RoundVerdict]:
    """Check every round of ``record``; return one verdict per opened round."""
    events = sorted(record.events, key=lambda e: (e["block"], e["log_index"]))
    run_events = [e for e in events if e["args"].get("runId", record.run_id) == record.run_id]
    created = [e for e in run_events if e["event"] == "RunCreated"]
    if len(created) != 1:
        raise DeaiError(f"run {record.run_id}: expected one RunCreated event, found {len(created)}")
    params = created[0]["args"]["params"]
    model_cid = params["initialModelCid"]
    try:
        spec = array_spec(decode_arrays(store.get(cid_from_bytes(_bytes(model_cid))), max_bytes=record.max_blob_bytes))
    except (StoreError, BlobFormatError) as exc:
        raise DeaiError(f"the initial model {cid_from_bytes(_bytes(model_cid))} cannot be read: {exc}") from exc
    by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in run_events:
        if "round" in e["args"]:
            by_round[int(e["args"]["round"])].append(e)
    histories: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    verdicts = []
    for round_id in sorted(by_round):
        round_events = by_round[round_id]
        verdict = RoundVerdict(round=round_id, status="open")
        opened = [e for e in round_events if e["event"] == "RoundOpened"]
        if len(opened) != 1:
            verdict.problems.append(f"expected one RoundOpened event, found {len(opened)}")
            verdicts.append(verdict)
            continue
        o = opened[0]["args"]
        beacon = _bytes(o["beacon"])
        if beacon != beacon_of(chain_id=record.chain_id, contract=record.contract, run_id=record.run_id,
                               round_id=round_id, model_cid=_bytes(model_cid)):  # fmt: skip
            verdict.problems.append("beacon differs from the one derived from the round's model")
        members = _participants_at(events, opened[0]["block"])
        sample_bps = int(params["sampleBps"])
        sampled = {a for a in members if is_sampled(beacon=beacon, sample_bps=sample_bps, participant=a)}
        if len(sampled) != int(o["sampledCount"]):
            verdict.problems.append(f"sampledCount {o['sampledCount']} but {len(sampled)} registered are sampled")
        verdict.checks.append("beacon, model and sample")

        commitments = {to_checksum_address(e["args"]["participant"]): _bytes(e["args"]["commitment"])
                       for e in round_events if e["event"] == "Committed"}  # fmt: skip
        for committer in commitments:
            if committer not in sampled:
                verdict.problems.append(f"{committer} committed without being sampled")
        reveals = [e["args"] for e in round_events if e["event"] == "Revealed"]
        updates = []
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
            _check_epsilon(verdict, who, dp, histories[who])
            try:
                cid = cid_from_bytes(revealed.cid)
                arrays = decode_arrays(store.get(cid), max_bytes=record.max_blob_bytes, expected=spec)
            except (StoreError, BlobFormatError) as exc:
                verdict.checks.append(f"excluded {who}: {exc}")
                continue
            updates.append(RevealedUpdate(who, revealed.num_examples, arrays))
        verdict.checks.append(f"{len(reveals)} reveals vs commitments, CIDs, ε")

        finalized = [e["args"] for e in round_events if e["event"] == "RoundFinalized"]
        if finalized:
            verdict.status = "finalized"
            result_cid = finalized[0]["resultCid"]
            if len(updates) < minimum_updates(record.rule, record.rule_params):
                verdict.problems.append(f"finalized with {len(updates)} valid updates, fewer than {record.rule} needs")
            else:
                recomputed = compute_cid(encode_arrays(aggregate(record.rule, updates, record.rule_params)))
                if recomputed != cid_from_bytes(_bytes(result_cid)):
                    verdict.problems.append(
                        f"{record.rule} of the valid reveals is {recomputed}, chain finalized "
                        f"{cid_from_bytes(_bytes(result_cid))}"
                    )
                else:
                    verdict.checks.append(f"{record.rule} aggregate equals the finalized CID")
            model_cid = result_cid
        else:
            verdict.status = "not finalized"
        verdicts.append(verdict)
    return verdicts


def _check_epsilon(verdict: RoundVerdict, who: str, dp: DpParams, history: list[tuple[float, float, int]]) -> None:
    """Recompute the participant's cumulative ε from its revealed (σ, q, steps) history."""
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
    recomputed = PrivacyLedger(history=list(history)).epsilon(from_wad(dp.delta_wad), accountant)
    if not math.isclose(recomputed, claimed, rel_tol=EPSILON_RTOL, abs_tol=1e-9):
        verdict.problems.append(f"{who} claims ε={claimed:.6f}, its revealed parameters give ε={recomputed:.6f}")


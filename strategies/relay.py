"""Relaying: recording the commitments (and declines) nodes sign in one ``commitMany``,
publishing the reveals they hand over in one ``revealMany`` and casting the votes they
sign in one ``attestMany`` per result (protocol §2.3, §2.4, §2.5).

A round then costs three transactions, whatever the number of participants, instead of
three per participant. The relayer pays for the batches, and can publish only what the nodes committed
to and signed: a record or vote the chain would refuse is found, left out and named as
its node's error, and the rest of the batch lands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from deai_flower.chain import RoundsContract
from deai_flower.errors import ContractRevertError, InvalidCidError
from deai_flower.messages import AttestReply
from deai_flower.storage import cid_to_bytes

__all__ = ["Relayed", "cast_votes", "relay_commits", "relay_reveals"]


@dataclass
class Relayed:
    """What a relayed batch came to: whose reveals or votes landed, what the chain (or the
    relayer's own check) refused and why, and the gas of each transaction sent."""

    landed: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    gas: list[int] = field(default_factory=list)


def relay_commits(contract: RoundsContract, run_id: int, round_id: int,
                  signed: Mapping[str, tuple[bytes, bytes]]) -> Relayed:  # fmt: skip
    """Record the signed commitments (by participant address: commitment, zero for a
    decline, and signature) in one ``commitMany``. One the chain would refuse (a
    signature that is not its participant's, a stake short of the run's) is found by
    calling the batch with it alone, and left out: its node's guard commits on its own."""
    relayed, batch = Relayed(), dict(signed)
    for address, (commitment, signature) in list(batch.items()):  # replies are untrusted
        if contract.commit_signer(run_id, round_id, commitment, signature) != address:
            relayed.refused[address] = "commitment not recorded: its signature is not its own"
            del batch[address]
    if not batch:
        return relayed
    try:
        tx = contract.commit_many(run_id, round_id, batch)
    except ContractRevertError:
        for address, (commitment, signature) in list(batch.items()):
            refusal = contract.commit_refusal(run_id, round_id, address, commitment, signature)
            if refusal is not None:
                relayed.refused[address] = f"commitment refused by the chain: {refusal}"
                del batch[address]
        if not batch:
            return relayed
        tx = contract.commit_many(run_id, round_id, batch)
    relayed.gas.append(tx.gas_used)
    relayed.landed = [str(e["args"]["participant"]) for e in tx.events if e["event"] in ("Committed", "Declined")]
    return relayed


def relay_reveals(contract: RoundsContract, run_id: int, round_id: int, records: Mapping[str, bytes]) -> Relayed:
    """Publish the reveal records (by participant address) in one ``revealMany``.

    A record the chain would refuse (it does not reproduce its node's commitment, or
    breaks the run's rules) would revert the whole batch: it is found by calling the
    batch for each record alone, and left out.
    """
    relayed, batch = Relayed(), dict(records)
    try:
        tx = contract.reveal_many(run_id, round_id, batch)
    except ContractRevertError:
        for address, record in list(batch.items()):
            refusal = contract.reveal_refusal(run_id, round_id, address, record)
            if refusal is not None:
                relayed.refused[address] = f"reveal refused by the chain: {refusal}"
                del batch[address]
        if not batch:
            return relayed
        tx = contract.reveal_many(run_id, round_id, batch)
    relayed.gas.append(tx.gas_used)
    relayed.landed = [str(e["args"]["participant"]) for e in tx.events if e["event"] == "Revealed"]
    return relayed


def cast_votes(contract: RoundsContract, run_id: int, round_id: int, signed: Mapping[str, AttestReply]) -> Relayed:
    """Cast the signed votes (by attester address), one ``attestMany`` per (result CID,
    outcome) pair, the pairs with fewer votes first: dissent is cast as its signers gave it.

    Every vote of the pair with the most votes goes in one batch: once a pair finalizes the
    round no vote lands, and the votes recorded for the finalized pair are the ones paid
    the run's attester share (protocol §2.7.4), at once when they come in the finalizing
    batch. A signature that is not its attester's, or that the chain would refuse, is left out.
    """
    relayed = Relayed()
    groups: dict[tuple[bytes, bytes], dict[str, bytes]] = {}
    for address, vote in signed.items():  # replies are untrusted: a bad vote is its attester's error
        try:
            result = cid_to_bytes(vote.cid)
            if contract.vote_signer(run_id, round_id, result, vote.outcome, vote.signature) != address:
                raise ValueError("its vote's signature is not its own")
        except (ValueError, InvalidCidError) as exc:
            relayed.refused[address] = f"vote not cast: {exc}"
            continue
        groups.setdefault((result, vote.outcome), {})[address] = vote.signature
    for (result, outcome), votes in sorted(groups.items(), key=lambda g: len(g[1])):
        if not votes or contract.phase(run_id, round_id) != "attest":
            continue
        try:
            tx = contract.attest_many(run_id, round_id, result, outcome, list(votes.values()))
        except ContractRevertError:
            for address, signature in list(votes.items()):
                refusal = contract.vote_refusal(run_id, round_id, result, outcome, signature)
                if refusal is not None:
                    relayed.refused[address] = f"vote refused by the chain: {refusal}"
                    del votes[address]
            if not votes:
                continue
            tx = contract.attest_many(run_id, round_id, result, outcome, list(votes.values()))
        relayed.gas.append(tx.gas_used)
        relayed.landed.extend(votes)
    return relayed

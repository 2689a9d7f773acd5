"""Relaying: recording the commitments (and declines) nodes sign in one ``commitMany``,
publishing the reveals they hand over in one ``revealMany`` and casting the votes they
sign in one ``attestMany`` per result (protocol §2.3, §2.4, §2.5).

A round then costs three transactions (a commit or reveal batch takes one per
``BATCH_ITEMS`` participants, so that it fits in a block), instead of three per participant. The relayer pays for the batches, and can publish only what the nodes committed
to and signed: a record or vote the chain would refuse is found, left out and named as
its node's error, and the rest of the batch lands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from deai_flower.chain import RoundsContract, TxResult
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
    return _send_batch(relayed, batch, lambda items: contract.commit_many(run_id, round_id, items),
                       lambda address, item: contract.commit_refusal(run_id, round_id, address, *item),
                       what="commitment", landed=("Committed", "Declined"))  # fmt: skip


def relay_reveals(contract: RoundsContract, run_id: int, round_id: int, records: Mapping[str, bytes]) -> Relayed:
    """Publish the reveal records (by participant address) in one ``revealMany``.

    A record the chain would refuse (it does not reproduce its node's commitment, or
    breaks the run's rules) would revert the whole batch: it is found by calling the
    batch for each record alone, and left out.
    """
    return _send_batch(Relayed(), dict(records), lambda items: contract.reveal_many(run_id, round_id, items),
                       lambda address, record: contract.reveal_refusal(run_id, round_id, address, record),
                       what="reveal", landed=("Revealed",))  # fmt: skip


#: The most items one batch transaction carries. A block holds 30M gas and one signed
#: commitment costs up to about 110k (a committee check included; 434 of them asked for
#: 47.9M and were refused), so a round of any size is sent in chunks that fit.
BATCH_ITEMS = 128


def _send_batch(relayed: Relayed, batch: dict[str, Any], send: Callable[[dict[str, Any]], TxResult],
                refusal: Callable[[str, Any], ContractRevertError | None], *, what: str,
                landed: tuple[str, ...]) -> Relayed:  # fmt: skip
    """Send ``batch`` (by participant address) in transactions of at most ``BATCH_ITEMS``
    items; if the chain refuses one, find the items it refuses alone (``refusal``), leave
    them out and send the rest of that chunk."""
    items = list(batch.items())
    for start in range(0, len(items), BATCH_ITEMS):
        chunk = dict(items[start:start + BATCH_ITEMS])
        try:
            tx = send(chunk)
        except ContractRevertError:
            for address, item in list(chunk.items()):
                refused = refusal(address, item)
                if refused is not None:
                    relayed.refused[address] = f"{what} refused by the chain: {refused}"
                    del chunk[address]
            if not chunk:
                continue
            tx = send(chunk)
        relayed.gas.append(tx.gas_used)
        relayed.landed.extend(str(e["args"]["participant"]) for e in tx.events if e["event"] in landed)
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

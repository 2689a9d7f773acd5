"""Stakes, slashes and payouts of a run, replayed from the chain's events alone.

The contract's ledger of funds lives in its storage; its events say every change:
``RunCreated`` (the pool funded, the slashing amounts), ``StakeDeposited``,
``StakeWithdrawn``, ``PenaltyRecorded`` (what was slashed into the pool), ``RewardCredited``
(a revealer's score and payout in a finalized round), ``RoundSettled`` (the round's
budget, the pay owed to each vote for the finalized pair and the pool after it),
``AttesterRewardCredited`` (that pay, credited), ``RewardsWithdrawn`` and
``PoolWithdrawn``. Replaying them re-derives every amount by the contract's rules
(docs/protocol.md §2.7) and checks the events against the rules as it goes: a slash is
min(amount, stake), a round's budget is the pool over the rounds left, each vote for the
finalized pair (its ``Attested`` events) earns budget * attesterShareBps // 10000 // votes,
a payout is the rest of the budget * score // total score, and in the end payouts +
attester pay + what the pool holds + what the creator took back = funding + slashes, to
the wei.

:class:`IncentiveReplay` is what ``results.json``'s ``incentives`` section reports and
what ``deai verify`` compares it with.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from eth_utils import to_checksum_address

from .protocol.encoding import PENALTY_REASONS, ZERO_ADDRESS
from .protocol.outcome import OutcomeEntry, decode_outcome

__all__ = ["IncentiveReplay", "ParticipantFunds", "replay_incentives"]

_SLASH_KEYS = {"missing-reveal": "slashMissingReveal", "minority-attestation": "slashMinority",
               "refused-update": "slashRefused"}  # fmt: skip


@dataclass
class ParticipantFunds:
    """One participant's money in a run (wei, or token units)."""

    stake: int = 0  # held now: deposited - slashed - withdrawn
    deposited: int = 0
    slashed: int = 0
    payout: int = 0  # credited rewards by score, withdrawn or not
    attester_pay: int = 0  # earned by votes for finalized pairs (credited, or owed until its vote is settled)
    attester_credited: int = 0  # of attester_pay, what the contract has credited so far
    withdrawn_rewards: int = 0
    scores: dict[int, int] = field(default_factory=dict)  # round -> score in the finalized outcome
    refused: dict[int, str] = field(default_factory=dict)  # round -> verdict, where its update was refused

    def to_json(self) -> dict[str, Any]:
        return {"stake": self.stake, "deposited": self.deposited, "slashed": self.slashed, "payout": self.payout,
                "attester_pay": self.attester_pay, "withdrawn_rewards": self.withdrawn_rewards,
                "score": {str(r): s for r, s in sorted(self.scores.items())},
                "refused": {str(r): v for r, v in sorted(self.refused.items())}}  # fmt: skip


@dataclass
class IncentiveReplay:
    """A run's funds after its events, and whatever in them broke the contract's rules."""

    token: str = "native"
    stake_required: int = 0
    funded: int = 0
    pool: int = 0  # what the pool holds now
    pool_withdrawn: int = 0
    participants: dict[str, ParticipantFunds] = field(default_factory=lambda: defaultdict(ParticipantFunds))
    #: round -> the finalized outcome (the finalizing attestation's), every revealer's entry
    outcomes: dict[int, list[OutcomeEntry]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def slashed(self) -> int:
        return sum(p.slashed for p in self.participants.values())

    @property
    def paid(self) -> int:
        return sum(p.payout for p in self.participants.values())

    @property
    def attester_paid(self) -> int:
        return sum(p.attester_pay for p in self.participants.values())

    @property
    def conserved(self) -> bool:
        """Payouts + attester pay + pool + what the creator took back = funding + slashes."""
        return self.paid + self.attester_paid + self.pool + self.pool_withdrawn == self.funded + self.slashed

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "stake_required": self.stake_required, "funded": self.funded,
                "slashed": self.slashed, "paid": self.paid, "attester_paid": self.attester_paid, "pool_left": self.pool,
                "pool_withdrawn": self.pool_withdrawn,
                "participants": {who: p.to_json() for who, p in sorted(self.participants.items())}}  # fmt: skip


def replay_incentives(events: Iterable[Mapping[str, Any]], run_id: int) -> IncentiveReplay:
    """Replay the funds of run ``run_id`` from the contract's events (in chain order,
    as ``RoundsContract.event_log`` or ``results.json`` gives them)."""
    replay = IncentiveReplay()
    slashes: dict[str, int] = {}
    num_rounds = finalized = share_bps = 0
    round_credits: list[tuple[str, int, int]] = []  # (who, score, amount) credited in the round being settled
    votes: dict[int, list[tuple[str, tuple[bytes, bytes]]]] = defaultdict(list)  # round -> (attester, pair), in order
    owed: dict[tuple[int, str], int] = {}  # (round, attester) -> pay for its vote, not yet credited
    for event in events:
        args = event["args"]
        if int(args.get("runId", -1)) != run_id:
            continue
        name = event["event"]
        who = to_checksum_address(args["participant"]) if "participant" in args else None
        if name == "RunCreated":
            params = args["params"]
            token = str(params.get("stakeToken", ZERO_ADDRESS))
            replay.token = "native" if int(token, 16) == 0 else to_checksum_address(token)
            replay.stake_required = int(params.get("stake", 0))
            replay.funded = replay.pool = int(params.get("rewardPool", 0))
            slashes = {reason: int(params.get(key, 0)) for reason, key in _SLASH_KEYS.items()}
            num_rounds = int(params["numRounds"])
            share_bps = int(params.get("attesterShareBps", 0))
        elif name == "StakeDeposited":
            funds = replay.participants[who]
            funds.stake += int(args["amount"])
            funds.deposited += int(args["amount"])
            if int(args["stake"]) != funds.stake:
                replay.problems.append(f"StakeDeposited says {who} holds {args['stake']}, its deposits and "
                                       f"slashes give {funds.stake}")  # fmt: skip
        elif name == "StakeWithdrawn":
            funds = replay.participants[who]
            if int(args["amount"]) != funds.stake:
                replay.problems.append(f"{who} withdrew a stake of {args['amount']}, it held {funds.stake}")
            funds.stake = 0  # the contract pays out the whole stake
        elif name == "PenaltyRecorded":
            funds = replay.participants[who]
            reason = PENALTY_REASONS[int(args["reason"])]
            expected = min(slashes.get(reason, 0), funds.stake)
            slashed = int(args.get("slashed", 0))
            if slashed != expected:
                replay.problems.append(f"round {args['round']}: {who} was slashed {slashed} for {reason}, the run's "
                                       f"rule gives min({slashes.get(reason, 0)}, stake {funds.stake}) = {expected}")  # fmt: skip
            funds.stake -= expected
            funds.slashed += expected
            replay.pool += expected
        elif name == "Attested":
            pair = (_raw(args.get("resultCid", b"")), _raw(args.get("outcome", b"")))
            votes[int(args["round"])].append((to_checksum_address(args["attester"]), pair))
        elif name == "AttesterRewardCredited":
            attester, round_id, amount = to_checksum_address(args["attester"]), int(args["round"]), int(args["amount"])
            if owed.get((round_id, attester)) != amount:
                replay.problems.append(f"round {round_id}: {attester} was credited {amount} for its vote, it was owed "
                                       f"{owed.get((round_id, attester), 0)}")  # fmt: skip
            else:
                del owed[(round_id, attester)]
                replay.participants[attester].attester_credited += amount
        elif name == "RewardCredited":
            round_credits.append((who, int(args["score"]), int(args["amount"])))
        elif name == "RoundSettled":
            round_id = int(args["round"])
            # the attestation that finalized the round, just before, carries its pair
            pair = votes[round_id][-1][1] if votes[round_id] else (b"", b"")
            try:
                outcome = decode_outcome(pair[1])
            except ValueError as exc:
                replay.problems.append(f"round {round_id}: the finalized outcome does not parse ({exc})")
                outcome = []
            replay.outcomes[round_id] = outcome
            voters = [who for who, voted in votes[round_id] if voted == pair]
            pay = _settle_round(replay, round_id, args, round_credits, outcome, voters,
                                rounds_left=num_rounds - finalized, share_bps=share_bps)  # fmt: skip
            for who in voters if pay else ():
                replay.participants[who].attester_pay += pay
                owed[(round_id, who)] = pay
            round_credits = []
        elif name == "RoundFinalized":
            finalized += 1
        elif name == "RewardsWithdrawn":
            funds = replay.participants[who]
            credited = funds.payout + funds.attester_credited
            if int(args["amount"]) != credited - funds.withdrawn_rewards:
                replay.problems.append(f"{who} withdrew rewards of {args['amount']}, it was owed "
                                       f"{credited - funds.withdrawn_rewards}")  # fmt: skip
            funds.withdrawn_rewards = credited  # the contract pays out all it credited
        elif name == "PoolWithdrawn":
            if int(args["amount"]) != replay.pool:
                replay.problems.append(f"the creator took {args['amount']} from a pool holding {replay.pool}")
            replay.pool_withdrawn += int(args["amount"])
            replay.pool -= int(args["amount"])
    if not replay.conserved:
        replay.problems.append(f"payouts {replay.paid} + attester pay {replay.attester_paid} + pool {replay.pool} + "
                               f"withdrawn by the creator {replay.pool_withdrawn} != funding {replay.funded} + "
                               f"slashes {replay.slashed}")  # fmt: skip
    return replay


def _raw(value: Any) -> bytes:
    """Bytes from an event argument as decoded (bytes) or as JSON (``0x`` hex)."""
    return bytes.fromhex(value[2:]) if isinstance(value, str) else bytes(value)


def _settle_round(replay: IncentiveReplay, round_id: int, args: Mapping[str, Any], credits: list[tuple[str, int, int]],
                  outcome: list[OutcomeEntry], voters: list[str], *, rounds_left: int, share_bps: int) -> int:  # fmt: skip
    """Check one finalized round's payouts against its outcome (its refused updates were
    slashed just before) and the votes for its finalized pair; return what each of those
    votes earns. Amounts follow from the outcome and the rules; each event that says
    otherwise is one problem, and the replay goes on with the rule's amounts."""
    for entry in outcome:
        funds = replay.participants[entry.participant]
        funds.scores[round_id] = entry.score
        if entry.verdict != "aggregated":
            funds.refused[round_id] = entry.verdict
    budget = replay.pool // rounds_left if rounds_left > 0 else 0
    if int(args["budget"]) != budget:
        replay.problems.append(f"round {round_id}: budget {args['budget']}, the pool {replay.pool} over "
                               f"{rounds_left} rounds left gives {budget}")  # fmt: skip
    pay = budget * share_bps // 10_000 // len(voters) if voters else 0
    said = (int(args.get("attesterPay", 0)), int(args.get("attesters", len(voters))))  # 0.6 logged neither
    if said != (pay, len(voters)):
        replay.problems.append(f"round {round_id}: RoundSettled owes {said[0]} to each of {said[1]} votes, the "
                               f"{len(voters)} votes for the finalized pair with {share_bps} bps of budget {budget} "
                               f"give {pay}")  # fmt: skip
    replay.pool -= pay * len(voters)
    budget -= pay * len(voters)  # what the scores share
    paid = {e.participant: e.score for e in outcome if e.verdict == "aggregated" and e.score > 0}
    total = sum(paid.values())
    expected = {who: budget * score // total for who, score in paid.items()} if budget else {}
    credited = {who: (score, amount) for who, score, amount in credits}
    times = Counter(who for who, _, _ in credits)
    wrong = [f"{who} was credited {n} times" for who, n in sorted(times.items()) if n > 1]
    for who in sorted(set(expected) | set(credited), key=lambda a: int(a, 16)):
        if who not in credited:
            wrong.append(f"nothing credited to {who}, whose outcome score {paid[who]} earns {expected[who]}")
        elif who not in expected:
            wrong.append(f"{who} was credited {credited[who][1]}, the finalized outcome pays it nothing")
        elif credited[who] != (paid[who], expected[who]):
            score, amount = credited[who]
            wrong.append(f"{who} was credited {amount} for score {score}, but its outcome score {paid[who]} x "
                         f"budget {budget} / total {total} gives {expected[who]}")  # fmt: skip
    if wrong:  # one problem for the round's credits, however many of them disagree
        replay.problems.append(f"round {round_id}: " + "; ".join(wrong))
    for who, amount in expected.items():
        replay.participants[who].payout += amount
        replay.pool -= amount
    if int(args["pool"]) != replay.pool:
        replay.problems.append(f"round {round_id}: RoundSettled says the pool holds {args['pool']}, the replay "
                               f"gives {replay.pool}")  # fmt: skip
    return pay

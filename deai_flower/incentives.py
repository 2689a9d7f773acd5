"""Stakes, slashes and payouts of a run, replayed from the chain's events alone.

The contract's ledger of funds lives in its storage; its events say every change:
``RunCreated`` (the pool funded, the slashing amounts), ``StakeDeposited``,
``StakeWithdrawn``, ``PenaltyRecorded`` (what was slashed into the pool), ``RewardCredited``
(a revealer's score and payout in a finalized round), ``RoundSettled`` (the round's
budget and the pool after it), ``RewardsWithdrawn`` and ``PoolWithdrawn``. Replaying them
re-derives every amount by the contract's rules (docs/protocol.md §2.7) and checks the
events against the rules as it goes: a slash is min(amount, stake), a round's budget is
the pool over the rounds left, a payout is budget * score // total score, and in the end
payouts + what the pool holds + what the creator took back = funding + slashes, to the wei.

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
    payout: int = 0  # credited rewards, withdrawn or not
    withdrawn_rewards: int = 0
    scores: dict[int, int] = field(default_factory=dict)  # round -> score in the finalized outcome
    refused: dict[int, str] = field(default_factory=dict)  # round -> verdict, where its update was refused

    def to_json(self) -> dict[str, Any]:
        return {"stake": self.stake, "deposited": self.deposited, "slashed": self.slashed, "payout": self.payout,
                "withdrawn_rewards": self.withdrawn_rewards,
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
    def conserved(self) -> bool:
        """Payouts + pool + what the creator took back = funding + slashes."""
        return self.paid + self.pool + self.pool_withdrawn == self.funded + self.slashed

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "stake_required": self.stake_required, "funded": self.funded,
                "slashed": self.slashed, "paid": self.paid, "pool_left": self.pool,
                "pool_withdrawn": self.pool_withdrawn,
                "participants": {who: p.to_json() for who, p in sorted(self.participants.items())}}  # fmt: skip


def replay_incentives(events: Iterable[Mapping[str, Any]], run_id: int) -> IncentiveReplay:
    """Replay the funds of run ``run_id`` from the contract's events (in chain order,
    as ``RoundsContract.event_log`` or ``results.json`` gives them)."""
    replay = IncentiveReplay()
    slashes: dict[str, int] = {}
    num_rounds = finalized = 0
    round_credits: list[tuple[str, int, int]] = []  # (who, score, amount) credited in the round being settled
    last_outcome: dict[int, bytes] = {}  # round -> outcome of its latest attestation
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
            outcome = args.get("outcome", b"")
            last_outcome[int(args["round"])] = bytes.fromhex(outcome[2:]) if isinstance(outcome, str) else bytes(outcome)
        elif name == "RewardCredited":
            round_credits.append((who, int(args["score"]), int(args["amount"])))
        elif name == "RoundSettled":
            round_id = int(args["round"])
            try:  # the attestation that finalized the round carries its outcome, just before
                outcome = decode_outcome(last_outcome.get(round_id, b""))
            except ValueError as exc:
                replay.problems.append(f"round {round_id}: the finalized outcome does not parse ({exc})")
                outcome = []
            replay.outcomes[round_id] = outcome
            _settle_round(replay, round_id, args, round_credits, outcome, rounds_left=num_rounds - finalized)
            round_credits = []
        elif name == "RoundFinalized":
            finalized += 1
        elif name == "RewardsWithdrawn":
            funds = replay.participants[who]
            owed = funds.payout - funds.withdrawn_rewards
            if int(args["amount"]) != owed:
                replay.problems.append(f"{who} withdrew rewards of {args['amount']}, it was owed {owed}")
            funds.withdrawn_rewards = funds.payout  # the contract pays out all it owes
        elif name == "PoolWithdrawn":
            if int(args["amount"]) != replay.pool:
                replay.problems.append(f"the creator took {args['amount']} from a pool holding {replay.pool}")
            replay.pool_withdrawn += int(args["amount"])
            replay.pool -= int(args["amount"])
    if not replay.conserved:
        replay.problems.append(f"payouts {replay.paid} + pool {replay.pool} + withdrawn by the creator "
                               f"{replay.pool_withdrawn} != funding {replay.funded} + slashes {replay.slashed}")  # fmt: skip
    return replay


def _settle_round(replay: IncentiveReplay, round_id: int, args: Mapping[str, Any], credits: list[tuple[str, int, int]],
                  outcome: list[OutcomeEntry], *, rounds_left: int) -> None:  # fmt: skip
    """Check one finalized round's payouts against its outcome (its refused updates were
    slashed just before). Amounts follow from the outcome and the rules; each event that
    says otherwise is one problem, and the replay goes on with the rule's amounts."""
    for entry in outcome:
        funds = replay.participants[entry.participant]
        funds.scores[round_id] = entry.score
        if entry.verdict != "aggregated":
            funds.refused[round_id] = entry.verdict
    budget = replay.pool // rounds_left if rounds_left > 0 else 0
    if int(args["budget"]) != budget:
        replay.problems.append(f"round {round_id}: budget {args['budget']}, the pool {replay.pool} over "
                               f"{rounds_left} rounds left gives {budget}")  # fmt: skip
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

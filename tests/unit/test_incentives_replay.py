"""Stakes, slashes and payouts replayed from synthetic contract events.

The events have the shape ``RoundsContract.event_log`` gives (and ``results.json``
stores): checksummed addresses, bytes as 0x-hex strings, enums as integers. The amounts
below are worked out by hand from the contract's rules (docs/protocol.md §2.7), not by
the code under test.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from eth_utils import to_checksum_address

from deai_flower.incentives import IncentiveReplay, replay_incentives
from deai_flower.protocol.encoding import PENALTY_REASONS
from deai_flower.protocol.outcome import OutcomeEntry, encode_outcome

RUN = 7
OTHER = 8
A, B, C, D = (to_checksum_address("0x" + digit * 40) for digit in "13ac")  # ascending as integers
CREATOR = to_checksum_address("0x" + "ee" * 20)
ZERO = "0x" + "00" * 20
Event = dict[str, Any]


class Chain:
    """Events in chain order, one block per transaction."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.block = 10

    def tx(self, *events: tuple[str, dict[str, Any]]) -> None:
        self.block += 1
        for index, (name, args) in enumerate(events):
            self.events.append({"event": name, "block": self.block, "log_index": index, "args": args})


def _run_created(run_id: int, *, rounds: int, stake: int, pool: int, missing: int, refused: int, minority: int,
                 token: str = ZERO) -> tuple[str, dict[str, Any]]:  # fmt: skip
    params = {"specHash": "0x" + "ab" * 32, "numRounds": rounds, "quorum": 2, "minReveals": 2, "committeeSize": 0,
              "stakeToken": token, "stake": stake, "rewardPool": pool, "slashMissingReveal": missing,
              "slashRefused": refused, "slashMinority": minority}  # fmt: skip
    return "RunCreated", {"runId": run_id, "creator": CREATOR, "params": params, "beacon": "0x" + "cd" * 32}


def _deposit(run_id: int, who: str, amount: int, stake: int) -> tuple[str, dict[str, Any]]:
    return "StakeDeposited", {"runId": run_id, "participant": who, "amount": amount, "stake": stake}


def _penalty(run_id: int, round_id: int, who: str, reason: str, slashed: int) -> tuple[str, dict[str, Any]]:
    args = {"runId": run_id, "round": round_id, "participant": who, "reason": PENALTY_REASONS.index(reason),
            "slashed": slashed}  # fmt: skip
    return "PenaltyRecorded", args


def _attested(run_id: int, round_id: int, who: str, scores: dict[str, int], refused: dict[str, str] | None = None
              ) -> tuple[str, dict[str, Any]]:  # fmt: skip
    outcome = "0x" + encode_outcome(scores, refused or {}).hex()
    return "Attested", {"runId": run_id, "round": round_id, "attester": who, "resultCid": "0x0155" + "12" * 34,
                        "outcome": outcome}  # fmt: skip


def _credit(run_id: int, round_id: int, who: str, score: int, amount: int) -> tuple[str, dict[str, Any]]:
    return "RewardCredited", {"runId": run_id, "round": round_id, "participant": who, "score": score, "amount": amount}


def _settled(run_id: int, round_id: int, budget: int, paid: int, pool: int, *, attesters: int | None = None,
             pay: int = 0) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """``attesters``: the votes for the finalized pair, ``pay``: what each is owed (left out:
    the event as protocol 0.6 logged it, which the replay reads too)."""
    args = {"runId": run_id, "round": round_id, "budget": budget, "paid": paid, "pool": pool}
    if attesters is not None:
        args.update(attesterPay=pay, attesters=attesters)
    return "RoundSettled", args


def _finalized(run_id: int, round_id: int) -> tuple[str, dict[str, Any]]:
    return "RoundFinalized", {"runId": run_id, "round": round_id, "resultCid": "0x0155" + "12" * 34}


def _opened(run_id: int, round_id: int) -> tuple[str, dict[str, Any]]:
    return "RoundOpened", {"runId": run_id, "round": round_id, "beacon": "0x" + "01" * 32, "sampledCount": 4}


def _committed(run_id: int, round_id: int, who: str) -> tuple[str, dict[str, Any]]:
    return "Committed", {"runId": run_id, "round": round_id, "participant": who, "commitment": "0x" + "02" * 32}


def clean_run(*, withdrawals: bool = True, other_run: bool = False) -> list[Event]:
    """Run 7: pool 1000 over 2 rounds, stake 1000; slashes 100 missing reveal, 300 refused, 200 minority.

    Round 1: A 3, B 1, C 0, D 2 -> budget 1000 // 2 = 500; A 250, B 83, D 166 (C scored 0: no
      credit); paid 499, pool 501. B attested a minority outcome first.
    Round 2: B slashed 200 (minority in round 1) at its commit: pool 701. Outcome A 1, B 1, D
      refused (invalid): D slashed 300, pool 1001 -> budget 1001 // 1; A 500, B 500; pool 1.
      C committed and did not reveal: slashed 100 when settled after the round, pool 101.
    Then everyone withdraws: stakes A 1000, B 800, C 900, D 700; rewards A 750, B 583,
    D 166; the creator takes the pool's 101. 1000 funded + 600 slashed = 1499 paid + 101.
    """
    chain = Chain()
    chain.tx(("ParticipantRegistered", {"participant": A, "identity": "0x" + "03" * 32, "index": 0, "epoch": 1}))
    chain.tx(_run_created(RUN, rounds=2, stake=1000, pool=1000, missing=100, refused=300, minority=200))
    if other_run:
        chain.tx(_run_created(OTHER, rounds=1, stake=5, pool=77, missing=1, refused=2, minority=3))
    chain.tx(_opened(RUN, 1))
    chain.tx(_deposit(RUN, A, 600, 600))
    chain.tx(_deposit(RUN, A, 400, 1000), _committed(RUN, 1, A))
    if other_run:
        chain.tx(_deposit(OTHER, A, 5, 5), _committed(OTHER, 1, A))
    for who in (B, C, D):
        chain.tx(_deposit(RUN, who, 1000, 1000), _committed(RUN, 1, who))
    round1 = {A: 3, B: 1, C: 0, D: 2}
    chain.tx(_attested(RUN, 1, B, {A: 9, B: 9, C: 9, D: 9}))  # the minority's outcome
    chain.tx(_attested(RUN, 1, A, round1))
    if other_run:
        chain.tx(_attested(OTHER, 1, A, {}, {A: "invalid"}), _penalty(OTHER, 1, A, "refused-update", 2),
                 _settled(OTHER, 1, 79, 0, 79, attesters=1), _finalized(OTHER, 1))  # fmt: skip
    chain.tx(_attested(RUN, 1, D, round1), _credit(RUN, 1, A, 3, 250), _credit(RUN, 1, B, 1, 83),
             _credit(RUN, 1, D, 2, 166), _settled(RUN, 1, 500, 499, 501), _finalized(RUN, 1),
             _opened(RUN, 2))  # fmt: skip
    chain.tx(_committed(RUN, 2, A))
    chain.tx(_penalty(RUN, 1, B, "minority-attestation", 200), _committed(RUN, 2, B))
    chain.tx(_committed(RUN, 2, C))
    chain.tx(_committed(RUN, 2, D))
    round2_scores, round2_refused = {A: 1, B: 1}, {D: "invalid"}
    chain.tx(_attested(RUN, 2, A, round2_scores, round2_refused))
    chain.tx(_attested(RUN, 2, B, round2_scores, round2_refused), _penalty(RUN, 2, D, "refused-update", 300),
             _credit(RUN, 2, A, 1, 500), _credit(RUN, 2, B, 1, 500), _settled(RUN, 2, 1001, 1000, 1),
             _finalized(RUN, 2))  # fmt: skip
    chain.tx(_penalty(RUN, 2, C, "missing-reveal", 100))
    if withdrawals:
        for who, stake in ((A, 1000), (B, 800), (C, 900), (D, 700)):
            chain.tx(("StakeWithdrawn", {"runId": RUN, "participant": who, "amount": stake}))
        for who, rewards in ((A, 750), (B, 583), (D, 166)):
            chain.tx(("RewardsWithdrawn", {"runId": RUN, "participant": who, "amount": rewards}))
        chain.tx(("PoolWithdrawn", {"runId": RUN, "creator": CREATOR, "amount": 101}))
    if other_run:
        chain.tx(("StakeWithdrawn", {"runId": OTHER, "participant": A, "amount": 3}),
                 ("PoolWithdrawn", {"runId": OTHER, "creator": CREATOR, "amount": 79}))  # fmt: skip
    return chain.events


def _funds(replay: IncentiveReplay) -> dict[str, dict[str, Any]]:
    return {who: p.to_json() for who, p in replay.participants.items()}


def test_a_clean_run_conserves_to_the_wei() -> None:
    replay = replay_incentives(clean_run(), RUN)

    assert replay.problems == []
    assert replay.conserved
    assert (replay.token, replay.stake_required, replay.funded) == ("native", 1000, 1000)
    assert (replay.slashed, replay.paid, replay.pool, replay.pool_withdrawn) == (600, 1499, 0, 101)
    assert _funds(replay) == {
        A: {"stake": 0, "deposited": 1000, "slashed": 0, "payout": 750, "attester_pay": 0, "withdrawn_rewards": 750,
            "score": {"1": 3, "2": 1}, "refused": {}},
        B: {"stake": 0, "deposited": 1000, "slashed": 200, "payout": 583, "attester_pay": 0, "withdrawn_rewards": 583,
            "score": {"1": 1, "2": 1}, "refused": {}},
        # scored 0 in round 1: recorded, not credited; no line in round 2 (it did not reveal)
        C: {"stake": 0, "deposited": 1000, "slashed": 100, "payout": 0, "attester_pay": 0, "withdrawn_rewards": 0,
            "score": {"1": 0}, "refused": {}},
        D: {"stake": 0, "deposited": 1000, "slashed": 300, "payout": 166, "attester_pay": 0, "withdrawn_rewards": 166,
            "score": {"1": 2, "2": 0}, "refused": {"2": "invalid"}},
    }  # fmt: skip
    assert replay.outcomes[1] == [OutcomeEntry(A, 3, "aggregated"), OutcomeEntry(B, 1, "aggregated"),
                                  OutcomeEntry(C, 0, "aggregated"), OutcomeEntry(D, 2, "aggregated")]  # fmt: skip
    assert replay.outcomes[2] == [OutcomeEntry(A, 1, "aggregated"), OutcomeEntry(B, 1, "aggregated"),
                                  OutcomeEntry(D, 0, "invalid")]  # fmt: skip


def test_before_the_withdrawals_the_stakes_and_the_pool_are_held() -> None:
    replay = replay_incentives(clean_run(withdrawals=False), RUN)
    assert replay.problems == [] and replay.conserved
    assert {who: p.stake for who, p in replay.participants.items()} == {A: 1000, B: 800, C: 900, D: 700}
    assert {who: p.payout - p.withdrawn_rewards for who, p in replay.participants.items()} == {
        A: 750, B: 583, C: 0, D: 166}  # fmt: skip
    assert (replay.pool, replay.pool_withdrawn, replay.paid) == (101, 0, 1499)


def test_events_of_other_runs_are_ignored() -> None:
    mixed = clean_run(other_run=True)
    assert {e["args"].get("runId") for e in mixed} == {None, RUN, OTHER}
    assert replay_incentives(mixed, RUN).to_json() == replay_incentives(clean_run(), RUN).to_json()
    assert replay_incentives(mixed, RUN).problems == []
    other = replay_incentives(mixed, OTHER)
    assert (other.funded, other.slashed, other.pool_withdrawn, other.pool) == (77, 2, 79, 0)
    assert set(other.participants) == {A} and other.problems == []
    empty = replay_incentives(mixed, 99)
    assert empty.problems == [] and empty.participants == {} and empty.funded == 0


def test_a_bytes_outcome_reads_like_its_hex() -> None:
    events = clean_run()
    for event in events:
        if event["event"] == "Attested":
            event["args"]["outcome"] = bytes.fromhex(event["args"]["outcome"][2:])
    assert replay_incentives(events, RUN).to_json() == replay_incentives(clean_run(), RUN).to_json()


def test_a_token_run_names_its_token_checksummed() -> None:
    events = clean_run()
    events[1]["args"]["params"]["stakeToken"] = "0x" + "ab" * 20
    replay = replay_incentives(events, RUN)
    assert replay.token == to_checksum_address("0x" + "ab" * 20) and replay.problems == []


def test_to_json_shape() -> None:
    document = replay_incentives(clean_run(), RUN).to_json()
    assert list(document) == ["token", "stake_required", "funded", "slashed", "paid", "attester_paid", "pool_left",
                              "pool_withdrawn", "participants"]  # fmt: skip
    assert {k: v for k, v in document.items() if k != "participants"} == {
        "token": "native", "stake_required": 1000, "funded": 1000, "slashed": 600, "paid": 1499, "attester_paid": 0,
        "pool_left": 0, "pool_withdrawn": 101}  # fmt: skip
    assert list(document["participants"]) == sorted([A, B, C, D])
    for funds in document["participants"].values():
        assert list(funds) == ["stake", "deposited", "slashed", "payout", "attester_pay", "withdrawn_rewards", "score",
                               "refused"]  # fmt: skip
        assert all(isinstance(k, str) for k in (*funds["score"], *funds["refused"]))  # JSON keys
    assert document["participants"][D]["refused"] == {"2": "invalid"}


# ---------------------------------------------------------------- one broken rule, one problem


def _find(events: list[Event], name: str, **args: Any) -> Event:
    (found,) = [e for e in events if e["event"] == name and all(e["args"].get(k) == v for k, v in args.items())]
    return found


def _edit(name: str, changes: dict[str, Any], **match: Any) -> Callable[[list[Event]], None]:
    def edit(events: list[Event]) -> None:
        _find(events, name, runId=RUN, **match)["args"].update(changes)

    return edit


def _outcome_edit(events: list[Event]) -> None:
    # the finalizing attestation of round 1 scores D 3, the credits (and their amounts) say 2
    _find(events, "Attested", runId=RUN, round=1, attester=D)["args"]["outcome"] = (
        "0x" + encode_outcome({A: 3, B: 1, C: 0, D: 3}, {}).hex())


def _deposit_edit(events: list[Event]) -> None:
    _find(events, "StakeDeposited", runId=RUN, participant=C)["args"]["stake"] = 999


VIOLATIONS = {
    "edited credit amount": (_edit("RewardCredited", {"amount": 251}, round=1, participant=A),
                             f"round 1: {A} was credited 251 for score 3, but its outcome score 3 x budget 500 / "
                             "total 6 gives 250"),
    "edited budget": (_edit("RoundSettled", {"budget": 499}, round=1),
                      "round 1: budget 499, the pool 1000 over 2 rounds left gives 500"),
    "edited pool after a round": (_edit("RoundSettled", {"pool": 502}, round=1),
                                  "round 1: RoundSettled says the pool holds 502, the replay gives 501"),
    "wrong slash amount": (_edit("PenaltyRecorded", {"slashed": 150}, participant=B),
                           f"round 1: {B} was slashed 150 for minority-attestation, the run's rule gives "
                           "min(200, stake 1000) = 200"),
    "zero slash": (_edit("PenaltyRecorded", {"slashed": 0}, participant=D),
                   f"round 2: {D} was slashed 0 for refused-update"),
    "slash above the stake": (_edit("PenaltyRecorded", {"slashed": 1100}, participant=C),
                              f"round 2: {C} was slashed 1100 for missing-reveal, the run's rule gives "
                              "min(100, stake 1000) = 100"),
    "stake withdrawal of the wrong amount": (_edit("StakeWithdrawn", {"amount": 1000}, participant=B),
                                             f"{B} withdrew a stake of 1000, it held 800"),
    "rewards withdrawal of the wrong amount": (_edit("RewardsWithdrawn", {"amount": 584}, participant=B),
                                               f"{B} withdrew rewards of 584, it was owed 583"),
    "pool withdrawal of the wrong amount": (_edit("PoolWithdrawn", {"amount": 100}),
                                            "the creator took 100 from a pool holding 101"),
    "deposit with a wrong stake": (_deposit_edit,
                                   f"StakeDeposited says {C} holds 999, its deposits and slashes give 1000"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_each_violation_is_exactly_one_problem(case: str) -> None:
    edit, problem = VIOLATIONS[case]
    events = clean_run()
    edit(events)
    replay = replay_incentives(events, RUN)
    assert len(replay.problems) == 1, replay.problems
    assert replay.problems[0].startswith(problem), replay.problems
    # what the replay reports follows the rules, not the broken event
    clean = replay_incentives(clean_run(), RUN)
    assert replay.paid == clean.paid and replay.slashed == clean.slashed and replay.conserved


def test_an_outcome_that_disagrees_with_its_credits_is_named() -> None:
    """Payouts follow the finalized outcome (what the majority attested); credits that
    disagree are named, and withdrawals made from them then disagree too."""
    events = clean_run()
    _outcome_edit(events)
    problems = replay_incentives(events, RUN).problems
    assert problems[0].startswith("round 1: ") and f"{D} was credited" in problems[0], problems
    assert "its outcome score 3" in problems[0]
    assert all(p.startswith("round 1:") or "withdrew rewards" in p for p in problems), problems


def test_a_broken_identity_is_reported() -> None:
    # every amount is re-derived, so only a second RunCreated (re-funding the pool) can break it
    events = clean_run(withdrawals=False)
    events.append({"event": "RunCreated", "block": 999, "log_index": 0, "args": copy.deepcopy(events[1]["args"])})
    replay = replay_incentives(events, RUN)
    assert not replay.conserved
    assert replay.problems == ["payouts 1499 + attester pay 0 + pool 1000 + withdrawn by the creator 0 != funding 1000 + "
                               "slashes 600"]


def test_an_unparseable_outcome_is_one_problem_for_a_round_without_credits() -> None:
    chain = Chain()
    chain.tx(_run_created(RUN, rounds=1, stake=0, pool=0, missing=0, refused=0, minority=0))
    chain.tx(("Attested", {"runId": RUN, "round": 1, "attester": A, "resultCid": "0x00", "outcome": "0x" + "00" * 24}),
             _settled(RUN, 1, 0, 0, 0), _finalized(RUN, 1))  # fmt: skip
    replay = replay_incentives(chain.events, RUN)
    assert len(replay.problems) == 1 and "round 1: the finalized outcome does not parse" in replay.problems[0]
    assert replay.outcomes[1] == []


# ---------------------------------------------------------------- slashes capped by the stake


def _capped_run(second_slash: int) -> list[Event]:
    """Stake 1000, slashRefused 1000 = the stake, slashMinority 300: B is slashed 300 (minority)
    in round 1, so its refused update in round 2 can take only the 700 left."""
    chain = Chain()
    chain.tx(_run_created(RUN, rounds=2, stake=1000, pool=100, missing=0, refused=1000, minority=300))
    chain.tx(_deposit(RUN, A, 1000, 1000), _deposit(RUN, B, 1000, 1000))
    chain.tx(_attested(RUN, 1, A, {A: 1, B: 1}), _credit(RUN, 1, A, 1, 25), _credit(RUN, 1, B, 1, 25),
             _settled(RUN, 1, 50, 50, 50), _finalized(RUN, 1))  # fmt: skip
    chain.tx(_penalty(RUN, 1, B, "minority-attestation", 300))
    chain.tx(_attested(RUN, 2, A, {A: 4}, {B: "unavailable"}), _penalty(RUN, 2, B, "refused-update", second_slash),
             _credit(RUN, 2, A, 4, 1050), _settled(RUN, 2, 1050, 1050, 0), _finalized(RUN, 2))  # fmt: skip
    return chain.events


def test_a_slash_is_capped_by_what_the_stake_holds() -> None:
    replay = replay_incentives(_capped_run(700), RUN)
    assert replay.problems == [] and replay.conserved
    assert replay.participants[B].slashed == 1000 and replay.participants[B].stake == 0
    assert replay.participants[B].refused == {2: "unavailable"} and replay.participants[B].scores == {1: 1, 2: 0}
    assert replay.participants[A].payout == 25 + 1050 and replay.pool == 0


def test_a_slash_above_what_the_stake_holds_is_one_problem() -> None:
    events = _capped_run(1000)
    replay = replay_incentives(events, RUN)
    assert replay.problems == [f"round 2: {B} was slashed 1000 for refused-update, the run's rule gives "
                               "min(1000, stake 700) = 700"]  # fmt: skip
    assert replay.participants[B].slashed == 1000 and replay.participants[B].stake == 0 and replay.conserved


# ---------------------------------------------------------------- one wrong event, one problem


def _swap_credit(events: list[Event]) -> None:
    _find(events, "RewardCredited", runId=RUN, round=1, participant=A)["args"]["participant"] = C


def _rescore_credit(events: list[Event]) -> None:
    _find(events, "RewardCredited", runId=RUN, round=1, participant=A)["args"]["score"] = 4


def _drop_credit(events: list[Event]) -> None:
    events.remove(_find(events, "RewardCredited", runId=RUN, round=1, participant=B))


def _rewithdraw(events: list[Event]) -> None:
    """B withdraws a wrong stake amount, then deposits again."""
    _find(events, "StakeWithdrawn", runId=RUN, participant=B)["args"]["amount"] = 1000
    events.append({"event": "StakeDeposited", "block": 999, "log_index": 0,
                   "args": {"runId": RUN, "participant": B, "amount": 50, "stake": 50}})  # fmt: skip


def _rewithdraw_rewards(events: list[Event]) -> None:
    """B's first rewards withdrawal (after round 1) is logged wrong; its second is right."""
    first = {"event": "RewardsWithdrawn", "block": 0, "log_index": 0, "args": {"runId": RUN, "participant": B,
                                                                              "amount": 80}}  # fmt: skip
    settled = events.index(_find(events, "RoundFinalized", runId=RUN, round=1))
    events.insert(settled + 1, first)  # it was owed 83
    _find(events, "RewardsWithdrawn", runId=RUN, participant=B, amount=583)["args"]["amount"] = 500


#: Edits whose effect could spread to later events; what the replay must not do with them.
CASCADES = {
    "credit to the wrong participant": (_swap_credit, "report A's later withdrawal too"),
    "credit with an edited score": (_rescore_credit, "report the round's other credits, pool and next budget"),
    "a dropped credit": (_drop_credit, "report the other credits, the pool and the later rounds"),
    "a wrong stake withdrawal, then a new deposit": (_rewithdraw, "report the next deposit's stake"),
    "a wrong rewards withdrawal, then another": (_rewithdraw_rewards, "report the next withdrawal"),
}


@pytest.mark.parametrize("case", list(CASCADES))
def test_one_wrong_event_is_not_a_cascade(case: str) -> None:
    edit, _ = CASCADES[case]
    events = clean_run()
    edit(events)
    problems = replay_incentives(events, RUN).problems
    assert len(problems) == 1, problems


def test_a_participant_credited_twice_is_named_alone() -> None:
    events = clean_run()
    credit = _find(events, "RewardCredited", runId=RUN, round=1, participant=A)
    events.insert(events.index(credit) + 1, copy.deepcopy(credit))
    problems = replay_incentives(events, RUN).problems
    assert len(problems) == 1 and f"{A} was credited 2 times" in problems[0], problems
    assert problems[0].count("credited 2 times") == 1


def test_attester_pay_is_owed_to_the_finalized_pairs_votes_and_checked_when_credited() -> None:
    """Pool 1000 over 1 round, 10 % to the attesters: A and D voted for the finalized pair,
    B for another, C not at all. Budget 1000: 100 // 2 = 50 owed to A and D; the scores
    (A 1, D 1) share 900: 450 each. D's pay is credited at once, A's when settled."""
    chain = Chain()
    created = _run_created(RUN, rounds=1, stake=0, pool=1000, missing=0, refused=0, minority=0)
    created[1]["params"]["attesterShareBps"] = 1_000
    chain.tx(created)
    scores = {A: 1, D: 1}
    chain.tx(_attested(RUN, 1, B, {A: 9, D: 9}))
    chain.tx(_attested(RUN, 1, A, scores))
    chain.tx(_attested(RUN, 1, D, scores), _credit(RUN, 1, A, 1, 450), _credit(RUN, 1, D, 1, 450),
             _settled(RUN, 1, 1000, 900, 0, attesters=2, pay=50), _finalized(RUN, 1))  # fmt: skip
    replay = replay_incentives(chain.events, RUN)
    assert replay.problems == [] and replay.conserved
    assert {who: p.attester_pay for who, p in replay.participants.items()} == {A: 50, D: 50}  # B: a minority vote
    assert replay.attester_paid == 100 and replay.paid == 900 and replay.pool == 0
    chain.tx(("AttesterRewardCredited", {"runId": RUN, "round": 1, "attester": A, "amount": 50}),
             ("RewardsWithdrawn", {"runId": RUN, "participant": A, "amount": 500}))  # fmt: skip
    assert replay_incentives(chain.events, RUN).problems == []
    chain.tx(("AttesterRewardCredited", {"runId": RUN, "round": 1, "attester": B, "amount": 50}))
    assert replay_incentives(chain.events, RUN).problems == [f"round 1: {B} was credited 50 for its vote, it was "
                                                             "owed 0"]  # fmt: skip
    next(e for e in chain.events if e["event"] == "RoundSettled")["args"]["attesterPay"] = 51  # edited
    assert "round 1: RoundSettled owes 51 to each of 2 votes" in replay_incentives(chain.events, RUN).problems[0]

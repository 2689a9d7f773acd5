"""Protocol 0.7's contract rules on the real bytecode: attesters paid for votes that match
the finalized pair, batched signed commits (``commitMany``) and ``decline``.

Embedded EVM here; ``tests/integration/chain/test_contract_anvil.py`` runs every test of
this module on a real anvil too. Amounts are checked to the wei, and the contract's
balance always equals the stakes, the rewards (owed vote pay included) and the pool.
"""

from __future__ import annotations

from typing import Any

import pytest
from support import Deployment, cid_of, with_members

from deai_flower.chain import RoundsContract, commitment_of, simulation_key
from deai_flower.incentives import replay_incentives
from deai_flower.protocol.encoding import PENALTY_REASONS, STAGES, reveal_record
from deai_flower.protocol.outcome import encode_outcome
from unit.chain.test_contract import Reveal, commit, dp, expect_revert

STAKE = 10**18
POOL = 3 * 10**18 + 7
SHARE_BPS = 1_000
SLASH_MINORITY = 2 * 10**17
RESULT, OTHER = cid_of(77, 0x70), cid_of(66, 0x70)


@pytest.fixture
def five(deployment: Deployment) -> Deployment:
    return with_members(deployment, 5)


def paid_run(d: Deployment, n: int, **overrides: Any) -> int:
    """A 3-round run with a stake, a pool and a 10 % attester share; clients 0..n-1 deposit."""
    params = {"stake": STAKE, "rewardPool": POOL, "slashMinority": SLASH_MINORITY, "slashMissingReveal": 10**17,
              "attesterShareBps": SHARE_BPS, **overrides}  # fmt: skip
    run_id = d.create_run(**params)
    for i in range(n):
        d.as_client(i).deposit(run_id, STAKE)
    return run_id


def record_of(i: int, round_id: int) -> bytes:
    return reveal_record(cid=cid_of(10 + i), num_examples=100 + i, dp=dp(), salt=bytes([i + 1, round_id]) * 16)


def commitment(d: Deployment, i: int, run_id: int, round_id: int) -> bytes:
    record = record_of(i, round_id)
    return commitment_of(chain_id=d.node.chain_id, contract=d.admin.address, run_id=run_id, round_id=round_id,
                         participant=d.clients[i].address, cid=record[:36], num_examples=100 + i, dp=dp(),
                         salt=record[113:])  # fmt: skip


def to_attest(d: Deployment, run_id: int, n: int) -> tuple[int, bytes]:
    """Open (or take) the round, commit and reveal clients 0..n-1; return it and the outcome."""
    current = int(d.admin.get_run(run_id)["currentRound"])
    round_id = current if current and d.admin.phase(run_id, current) == "commit" else d.admin.open_round(run_id)[0]
    for i in range(n):
        d.as_client(i).commit(run_id, round_id, commitment(d, i, run_id, round_id))
    d.admin.reveal_many(run_id, round_id, {d.clients[i].address: record_of(i, round_id) for i in range(n)})
    scores = {d.clients[i].address: 1_000 + i for i in range(n)}
    return round_id, encode_outcome(scores, {})


def balance_identity(d: Deployment, run_id: int, n: int) -> tuple[int, int]:
    """(the contract's balance, stakes + rewards (owed vote pay included) + pool)."""
    owed = int(d.admin.get_incentives(run_id)["pool"])
    for i in range(n):
        account = d.admin.get_account(run_id, d.clients[i].address)
        owed += int(account["stake"]) + int(account["rewards"])
    return d.admin.balance(d.admin.address), owed


def named(tx: Any, name: str) -> list[dict[str, Any]]:
    return [e["args"] for e in tx.events if e["event"] == name]


# ---------------------------------------------------------------------- attester pay


def test_a_relayed_majority_is_paid_at_finalization_and_a_silent_member_is_not(five: Deployment) -> None:
    d = five
    run_id = paid_run(d, 5)
    round_id, outcome = to_attest(d, run_id, 5)
    voters = [0, 1, 2, 3]  # client 4 is an eligible committee member that never votes
    tx = d.admin.attest_many(run_id, round_id, RESULT, outcome,
                             [d.as_client(i).sign_vote(run_id, round_id, RESULT, outcome) for i in voters])  # fmt: skip
    budget = POOL // 3
    pay = budget * SHARE_BPS // 10_000 // len(voters)
    (settled,) = named(tx, "RoundSettled")
    assert (settled["budget"], settled["attesterPay"], settled["attesters"]) == (budget, pay, 4)
    credited = named(tx, "AttesterRewardCredited")
    assert [(c["attester"], c["amount"]) for c in credited] == [(d.clients[i].address, pay) for i in voters]  # signing order
    # the scores share the rest of the budget
    total = sum(1_000 + i for i in range(5))
    score_budget = budget - pay * 4
    assert {c["participant"]: c["amount"] for c in named(tx, "RewardCredited")} == {
        d.clients[i].address: score_budget * (1_000 + i) // total for i in range(5)}  # fmt: skip
    events = [e["event"] for e in tx.events]
    assert events.index("RoundSettled") < events.index("AttesterRewardCredited") < events.index("RoundFinalized")
    rewards = {i: int(d.admin.get_account(run_id, d.clients[i].address)["rewards"]) for i in range(5)}
    assert rewards[4] == score_budget * 1_004 // total < rewards[3]  # the silent member: its update's pay only
    assert all(rewards[i] == score_budget * (1_000 + i) // total + pay for i in voters)
    assert settled["pool"] == POOL - pay * 4 - sum(c["amount"] for c in named(tx, "RewardCredited"))
    held, owed = balance_identity(d, run_id, 5)
    assert held == owed
    replay = replay_incentives(d.admin.event_log(), run_id)
    assert replay.problems == [] and replay.conserved
    assert [replay.participants[d.clients[i].address].attester_pay for i in range(5)] == [pay] * 4 + [0]


def test_own_votes_are_paid_when_settled_and_a_minority_vote_is_slashed_not_paid(five: Deployment) -> None:
    d = five
    run_id = paid_run(d, 5)
    round_id, outcome = to_attest(d, run_id, 5)
    d.as_client(3).attest(run_id, round_id, OTHER, outcome)  # the minority, first: the round is disputed
    for i in (0, 1):
        d.as_client(i).attest(run_id, round_id, RESULT, outcome)
    tx = d.as_client(2).attest(run_id, round_id, RESULT, outcome)  # finalizes; client 4 never votes
    budget = POOL // 3
    pay = budget * SHARE_BPS // 10_000 // 3
    (settled,) = named(tx, "RoundSettled")
    assert (settled["attesterPay"], settled["attesters"]) == (pay, 3)
    assert named(tx, "AttesterRewardCredited") == []  # the other votes came earlier: paid when settled
    # owed already: the view counts it, and the books balance with it
    before = {i: int(d.admin.get_account(run_id, d.clients[i].address)["rewards"]) for i in range(5)}
    held, owed = balance_identity(d, run_id, 5)
    assert held == owed
    next_id = int(d.admin.get_run(run_id)["currentRound"])
    # the minority's slash leaves it short of the stake: it is settled by anyone, the others by their commits
    settles = {i: d.as_client(i).commit(run_id, next_id, commitment(d, i, run_id, next_id)) for i in (0, 1, 2, 4)}
    settles[3] = d.admin.settle(run_id, d.clients[3].address)
    for i in (0, 1, 2):
        assert [(c["round"], c["amount"]) for c in named(settles[i], "AttesterRewardCredited")] == [(round_id, pay)]
    assert named(settles[3], "AttesterRewardCredited") == []
    assert [(p["reason"], p["slashed"]) for p in named(settles[3], "PenaltyRecorded")] == [
        (PENALTY_REASONS.index("minority-attestation"), SLASH_MINORITY)]
    assert named(settles[4], "AttesterRewardCredited") == named(settles[4], "PenaltyRecorded") == []
    after = {i: int(d.admin.get_account(run_id, d.clients[i].address)["rewards"]) for i in range(5)}
    assert after == before  # crediting moved nothing the view had not counted
    assert before[4] < before[0] and before[3] < before[0]
    held, owed = balance_identity(d, run_id, 5)
    assert held == owed
    replay = replay_incentives(d.admin.event_log(), run_id)
    assert replay.problems == [] and replay.conserved
    assert [replay.participants[d.clients[i].address].attester_pay for i in range(5)] == [pay] * 3 + [0, 0]


def test_withdrawing_rewards_credits_the_last_rounds_vote_pay_first(deployment: Deployment) -> None:
    d = deployment
    run_id = paid_run(d, 3, numRounds=1)
    round_id, outcome = to_attest(d, run_id, 3)
    for i in (0, 1):  # own votes: the last round's pay stays owed until settled
        d.as_client(i).attest(run_id, round_id, RESULT, outcome)
    pay = POOL * SHARE_BPS // 10_000 // 2
    owed = int(d.admin.get_account(run_id, d.clients[0].address)["rewards"])
    tx = d.as_client(0).withdraw_rewards(run_id)
    assert [c["amount"] for c in named(tx, "AttesterRewardCredited")] == [pay]
    assert [w["amount"] for w in named(tx, "RewardsWithdrawn")] == [owed]
    assert int(d.admin.get_account(run_id, d.clients[0].address)["rewards"]) == 0
    d.admin.withdraw_pool(run_id)
    held, owed_now = balance_identity(d, run_id, 3)
    assert held == owed_now  # client 1's pay is still owed, and still held
    replay = replay_incentives(d.admin.event_log(), run_id)
    assert replay.problems == [] and replay.conserved


def test_an_attester_share_above_the_whole_budget_is_refused(deployment: Deployment) -> None:
    with expect_revert("InvalidAttesterShare"):
        deployment.create_run(attesterShareBps=10_001)
    run_id = deployment.create_run(attesterShareBps=10_000)
    assert int(deployment.admin.get_run(run_id)["attesterShareBps"]) == 10_000


# ---------------------------------------------------------------------- commitMany


def test_a_relayer_records_signed_commitments_in_one_transaction(five: Deployment) -> None:
    d = five
    run_id = paid_run(d, 5)
    round_id, _ = d.admin.open_round(run_id)
    relayer = d.admin.as_account(simulation_key(seed=123, role="outsider"))
    d.as_client(0).commit(run_id, round_id, commitment(d, 0, run_id, round_id))  # on its own first: skipped
    signed = {d.clients[i].address: (commitment(d, i, run_id, round_id),
                                     d.as_client(i).sign_commit(run_id, round_id, commitment(d, i, run_id, round_id)))
              for i in range(4)}  # fmt: skip
    signed[d.clients[4].address] = (bytes(32), d.as_client(4).sign_commit(run_id, round_id, None))  # a decline
    tx = relayer.commit_many(run_id, round_id, signed)
    assert [e["participant"] for e in named(tx, "Committed")] == [d.clients[i].address for i in (1, 2, 3)]
    assert [e["participant"] for e in named(tx, "Declined")] == [d.clients[4].address]
    state = d.admin.get_round(run_id, round_id)
    assert (state["commitCount"], state["declineCount"], state["sampledCount"]) == (4, 1, 5)
    assert d.admin.phase(run_id, round_id) == "reveal"  # every sampled participant answered: no deadline waited
    relayer.reveal_many(run_id, round_id, {d.clients[i].address: record_of(i, round_id) for i in range(4)})
    assert d.admin.phase(run_id, round_id) == "attest"
    assert d.admin.get_member(run_id, d.clients[4].address)["stage"] == STAGES.index("declined")


def test_a_relayer_cannot_commit_for_anyone_that_did_not_sign(five: Deployment) -> None:
    d = five
    run_id = paid_run(d, 5)
    round_id, _ = d.admin.open_round(run_id)
    relayer = d.admin.as_account(simulation_key(seed=123, role="outsider"))
    mine = commitment(d, 1, run_id, round_id)
    by_other = d.as_client(2).sign_commit(run_id, round_id, mine)
    with expect_revert("CommitSignerMismatch"):
        relayer.commit_many(run_id, round_id, {d.clients[1].address: (mine, by_other)})
    # a signature moved to another commitment (or turned into a decline) recovers another signer
    signature = d.as_client(1).sign_commit(run_id, round_id, mine)
    for moved in (commitment(d, 2, run_id, round_id), bytes(32)):
        assert d.admin.commit_refusal(run_id, round_id, d.clients[1].address, moved, signature) is not None
    assert d.admin.commit_signer(run_id, round_id, mine, signature) == d.clients[1].address
    # a signature for another round does not commit in this one
    stale = d.as_client(1).sign_commit(run_id, round_id + 1, mine)
    with expect_revert("CommitSignerMismatch"):
        relayer.commit_many(run_id, round_id, {d.clients[1].address: (mine, stale)})
    assert int(d.admin.get_round(run_id, round_id)["commitCount"]) == 0


# ---------------------------------------------------------------------- decline


def test_a_declining_silo_ends_the_commit_phase_early_and_is_never_slashed(deployment: Deployment) -> None:
    d = deployment
    run_id = paid_run(d, 3)
    round_id, _ = d.admin.open_round(run_id)
    reveals: dict[int, Reveal] = {0: commit(d, 0, run_id, round_id)}
    tx = d.as_client(2).decline(run_id, round_id)
    assert named(tx, "Declined") == [{"runId": run_id, "round": round_id, "participant": d.clients[2].address}]
    with expect_revert("AlreadyCommitted"):
        commit(d, 2, run_id, round_id)
    with expect_revert("AlreadyCommitted"):
        d.as_client(2).decline(run_id, round_id)
    assert d.admin.phase(run_id, round_id) == "commit"  # client 1 is awaited
    reveals[1] = commit(d, 1, run_id, round_id)
    assert d.admin.phase(run_id, round_id) == "reveal"  # every sampled answered: no deadline waited out
    with expect_revert("NotCommitted"):
        d.admin.reveal_many(run_id, round_id, {d.clients[2].address: record_of(2, round_id)})
    for i, r in reveals.items():
        d.as_client(i).reveal(run_id, round_id, cid=r.cid, num_examples=r.num_examples, dp=r.dp, salt=r.salt)
    outcome = encode_outcome({d.clients[i].address: 1 for i in (0, 1)}, {})
    for i in (0, 1):
        d.as_client(i).attest(run_id, round_id, RESULT, outcome)
    assert d.admin.phase(run_id, round_id) == "finalized"
    settled = d.admin.settle(run_id, d.clients[2].address)
    assert named(settled, "PenaltyRecorded") == []
    assert int(d.admin.get_account(run_id, d.clients[2].address)["stake"]) == STAKE
    # in the next round it may take part again
    commit(d, 2, run_id, int(d.admin.get_run(run_id)["currentRound"]))


def test_only_a_sampled_participant_can_decline(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run(sampleBps=5_000)  # 2 of 3 sampled
    round_id, _ = d.admin.open_round(run_id)
    outside = [i for i in range(3) if not d.admin.is_sampled(run_id, round_id, d.clients[i].address)]
    assert len(outside) == 1
    with expect_revert("NotSampled"):
        d.as_client(outside[0]).decline(run_id, round_id)
    with expect_revert("NotRegistered"):
        d.as_client(3).decline(run_id, round_id)
    inside = [i for i in range(3) if i not in outside]
    d.as_client(inside[0]).decline(run_id, round_id)
    d.as_client(inside[1]).decline(run_id, round_id)
    # every sampled participant declined: the round fails at once, nothing to wait for
    assert d.admin.phase(run_id, round_id) == "failed"
    assert int(d.admin.get_round(run_id, round_id)["declineCount"]) == 2


def test_declines_before_a_signed_batch_are_kept(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    d.as_client(0).decline(run_id, round_id)
    c: RoundsContract = d.as_client(0)
    signed = {d.clients[0].address: (commitment(d, 0, run_id, round_id),
                                     c.sign_commit(run_id, round_id, commitment(d, 0, run_id, round_id)))}  # fmt: skip
    tx = d.admin.commit_many(run_id, round_id, signed)  # skipped: it answered already
    assert named(tx, "Committed") == []
    assert d.admin.get_member(run_id, d.clients[0].address)["stage"] == STAGES.index("declined")

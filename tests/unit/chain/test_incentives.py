"""Stakes, the reward pool, payouts and slashing, on the real bytecode (embedded chain).

Every amount is checked to the wei: what a finalized outcome credits, what each penalty
moves from a stake into the pool, what each withdrawal takes out of the contract, and
that the contract's native (or token) balance always equals the stakes, the unwithdrawn
rewards and the pool it holds.
"""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi import decode, encode
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from support import Deployment, cid_of, with_members

from deai_flower.chain import RoundsContract, TxResult, commitment_of, to_wad
from deai_flower.chain.artifact import load_artifact, rounds_abi
from deai_flower.chain.contract import ATTEST_GAS_PER_REVEALER, DEPOSIT_GAS, ROUND_CALL_GAS, ZERO_ADDRESS
from deai_flower.errors import ContractRevertError
from deai_flower.protocol.encoding import PENALTY_REASONS, reveal_record
from deai_flower.protocol.outcome import VERDICTS, encode_outcome
from unit.chain.test_contract import commit, deadline, do_reveal, dp, expect_revert, next_round

STAKE = 10**18
POOL = 3 * 10**18 + 7  # not a multiple of the rounds or the scores: payouts round down
SLASH_MISSING = 3 * 10**17
SLASH_REFUSED = 5 * 10**17
SLASH_MINORITY = 2 * 10**17

MISSING_REVEAL, MINORITY, REFUSED = (PENALTY_REASONS.index(r) for r in
                                     ("missing-reveal", "minority-attestation", "refused-update"))  # fmt: skip


# ---------------------------------------------------------------------- helpers


def incentive_run(d: Deployment, **overrides: Any) -> int:
    """A 3-round native-currency run with a stake, a pool and all three slashes."""
    params = {"stake": STAKE, "rewardPool": POOL, "slashMissingReveal": SLASH_MISSING,
              "slashRefused": SLASH_REFUSED, "slashMinority": SLASH_MINORITY}  # fmt: skip
    return d.create_run(**{**params, **overrides})


def run_params(**overrides: Any) -> tuple[Any, ...]:
    """``RunParams`` as the ABI tuple (for calls ``create_run`` would not send: a wrong value)."""
    (entry,) = [e for e in rounds_abi() if e.get("name") == "createRun"]
    values = {"specHash": b"\x01" * 32, "codeHash": b"\x02" * 32, "initialModelCid": cid_of(0),
              "epsilonBudgetWad": to_wad(8.0), "deltaWad": to_wad(1e-5), "numRounds": 3, "commitDuration": 100,
              "revealDuration": 100, "attestDuration": 100, "sampleBps": 10_000, "quorum": 2, "minReveals": 2,
              "committeeSize": 0, "stakeToken": ZERO_ADDRESS, "stake": STAKE, "rewardPool": POOL,
              "slashMissingReveal": 0, "slashRefused": 0, "slashMinority": 0, "attesterShareBps": 0,
              **overrides}  # fmt: skip
    return tuple(values[c["name"]] for c in entry["inputs"][0]["components"])


def addr(d: Deployment, i: int) -> str:
    return d.clients[i].address


def outcome(d: Deployment, scores: dict[int, int], refused: dict[int, str] | None = None) -> bytes:
    """The outcome bytes for clients' scores and refusals (by client index)."""
    return encode_outcome({addr(d, i): s for i, s in scores.items()},
                          {addr(d, i): v for i, v in (refused or {}).items()})  # fmt: skip


def events(tx: TxResult, name: str) -> list[dict[str, Any]]:
    return [e["args"] for e in tx.events if e["event"] == name]


def names(tx: TxResult) -> list[str]:
    return [e["event"] for e in tx.events]


def gas_cost(d: Deployment, tx: TxResult) -> int:
    """What the sender paid for ``tx``, in wei."""
    receipt = d.node.request("eth_getTransactionReceipt", ["0x" + tx.tx_hash])
    return int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)


def pool(d: Deployment, run_id: int) -> int:
    return int(d.admin.get_incentives(run_id)["pool"])


def stake(d: Deployment, run_id: int, i: int) -> int:
    return int(d.admin.get_account(run_id, addr(d, i))["stake"])


def rewards(d: Deployment, run_id: int, i: int) -> int:
    return int(d.admin.get_account(run_id, addr(d, i))["rewards"])


def held(d: Deployment) -> int:
    """The rounds contract's native balance."""
    return d.admin.balance(d.admin.address)


def owed(d: Deployment, run_id: int, accounts: list[str]) -> int:
    """What the contract owes in ``run_id``: the accounts' stakes and rewards, and the pool."""
    total = pool(d, run_id)
    for a in accounts:
        account = d.admin.get_account(run_id, a)
        total += int(account["stake"]) + int(account["rewards"])
    return total


def deposit(d: Deployment, run_id: int, amounts: dict[int, int]) -> None:
    for i, amount in amounts.items():
        d.as_client(i).deposit(run_id, amount)


def commit_reveal(d: Deployment, run_id: int, round_id: int, committers: tuple[int, ...] = (0, 1, 2),
                  revealers: tuple[int, ...] | None = None) -> None:  # fmt: skip
    """Commit for ``committers`` and reveal for ``revealers`` (default: all of them), then
    move the clock to the attest phase if the reveal phase did not close early."""
    reveals = {i: commit(d, i, run_id, round_id) for i in committers}
    if d.admin.phase(run_id, round_id) == "commit":
        d.node.advance_to(deadline(d, run_id, round_id, "commitDeadline"), timeout=5)
    for i in committers if revealers is None else revealers:
        do_reveal(d, i, run_id, round_id, reveals[i])
    if d.admin.phase(run_id, round_id) == "reveal":
        d.node.advance_to(deadline(d, run_id, round_id, "revealDeadline"), timeout=5)
    assert d.admin.phase(run_id, round_id) == "attest"


def attest_all(d: Deployment, run_id: int, round_id: int, attesters: tuple[int, ...], result: bytes,
               cid: bytes = cid_of(8, 0x70)) -> TxResult:  # fmt: skip
    """``attesters`` attest (cid, result) in order; the last attestation finalizes."""
    tx = None
    for i in attesters:
        tx = d.as_client(i).attest(run_id, round_id, cid, result)
    assert tx is not None and "RoundFinalized" in names(tx)
    return tx


def credits(budget: int, scores: dict[int, int]) -> dict[int, int]:
    """What each scored revealer gets: budget * score // total score."""
    total = sum(scores.values())
    return {i: budget * s // total for i, s in scores.items() if s}


def in_address_order(d: Deployment, by_client: dict[int, int]) -> list[tuple[str, int]]:
    return sorted(((addr(d, i), v) for i, v in by_client.items()), key=lambda p: int(p[0], 16))


# ---------------------------------------------------------------------- stake and funding


def test_commit_needs_the_runs_stake_and_the_pool_is_paid_exactly(deployment: Deployment) -> None:
    d = deployment
    run_id = incentive_run(d)
    assert d.admin.get_incentives(run_id) == {
        "stakeToken": ZERO_ADDRESS, "stake": STAKE, "pool": POOL, "slashMissingReveal": SLASH_MISSING,
        "slashRefused": SLASH_REFUSED, "slashMinority": SLASH_MINORITY}  # fmt: skip
    assert held(d) == POOL  # createRun took the pool as its value
    round_id, _ = d.admin.open_round(run_id)
    with pytest.raises(ContractRevertError) as refused:
        commit(d, 0, run_id, round_id)
    assert refused.value.error_name == "InsufficientStake"
    assert refused.value.error_args == (run_id, addr(d, 0).lower(), 0, STAKE)
    tx = d.as_client(0).deposit(run_id, STAKE)
    assert events(tx, "StakeDeposited") == [{"runId": run_id, "participant": addr(d, 0), "amount": STAKE,
                                              "stake": STAKE}]  # fmt: skip
    commit(d, 0, run_id, round_id)
    d.as_client(1).deposit(run_id, STAKE - 1)
    with pytest.raises(ContractRevertError) as short:  # one wei short
        commit(d, 1, run_id, round_id)
    assert short.value.error_args == (run_id, addr(d, 1).lower(), STAKE - 1, STAKE)
    assert events(d.as_client(1).deposit(run_id, 1), "StakeDeposited")[0]["stake"] == STAKE  # deposits add up
    commit(d, 1, run_id, round_id)
    assert d.admin.get_account(run_id, addr(d, 1)) == {"stake": STAKE, "rewards": 0}
    assert held(d) == POOL + 2 * STAKE
    with pytest.raises(ContractRevertError, match=rf"WrongPayment\(expectedWei={STAKE}, sentWei={STAKE - 1}\)"):
        d.as_client(2)._transact("deposit", run_id, STAKE, value=STAKE - 1)
    with expect_revert("UnknownRun"):
        d.as_client(2).deposit(run_id + 1, STAKE)
    assert held(d) == POOL + 2 * STAKE


def test_create_run_checks_its_payment_and_slash_amounts(deployment: Deployment) -> None:
    d = deployment
    with pytest.raises(ContractRevertError, match=rf"WrongPayment\(expectedWei={POOL}, sentWei={POOL - 1}\)"):
        d.admin._transact("createRun", run_params(), value=POOL - 1)
    with pytest.raises(ContractRevertError, match=rf"WrongPayment\(expectedWei={POOL}, sentWei={POOL + 1}\)"):
        d.admin._transact("createRun", run_params(), value=POOL + 1)
    with pytest.raises(ContractRevertError, match=r"WrongPayment\(expectedWei=0, sentWei=1\)"):
        d.admin._transact("createRun", run_params(rewardPool=0), value=1)
    for slash in ("slashMissingReveal", "slashRefused", "slashMinority"):
        with expect_revert("InvalidSlashAmount"):
            incentive_run(d, **{slash: STAKE + 1})
    assert held(d) == 0 and d.admin._call("runCount") == 0
    run_id = incentive_run(d, slashMissingReveal=STAKE, slashRefused=STAKE, slashMinority=STAKE)  # the whole stake
    assert held(d) == POOL and pool(d, run_id) == POOL


# ---------------------------------------------------------------------- payouts


def test_a_finalized_round_credits_its_budget_by_score_and_rewards_withdraw_exactly(deployment: Deployment) -> None:
    d = deployment
    run_id = incentive_run(d)
    deposit(d, run_id, {0: STAKE, 1: STAKE, 2: STAKE})
    round_id, _ = d.admin.open_round(run_id)
    commit_reveal(d, run_id, round_id)
    scores = {0: 1, 1: 3, 2: 0}  # client 2 aggregated, scored 0: nothing
    d.as_client(0).attest(run_id, round_id, cid_of(8, 0x70), outcome(d, scores))
    tx = d.as_client(1).attest(run_id, round_id, cid_of(8, 0x70), outcome(d, scores))
    assert names(tx) == ["Attested", "RewardCredited", "RewardCredited", "RoundSettled", "RoundFinalized",
                         "RoundOpened"]  # fmt: skip
    budget = POOL // 3  # three rounds left
    expected = credits(budget, scores)
    assert expected == {0: budget // 4, 1: budget * 3 // 4}
    assert [(e["participant"], e["amount"]) for e in events(tx, "RewardCredited")] == in_address_order(d, expected)
    assert {e["participant"]: e["score"] for e in events(tx, "RewardCredited")} == {addr(d, 0): 1, addr(d, 1): 3}
    paid = sum(expected.values())
    assert paid < budget  # rounded down
    (settled,) = events(tx, "RoundSettled")
    assert (settled["round"], settled["budget"], settled["paid"], settled["pool"]) == (round_id, budget, paid,
                                                                                       POOL - paid)  # fmt: skip
    assert pool(d, run_id) == POOL - paid
    assert [rewards(d, run_id, i) for i in range(3)] == [expected[0], expected[1], 0]
    assert [stake(d, run_id, i) for i in range(3)] == [STAKE] * 3  # nobody slashed
    assert held(d) == POOL + 3 * STAKE  # credits move nothing out

    before, mine = held(d), d.admin.balance(addr(d, 1))
    tx = d.as_client(1).withdraw_rewards(run_id)
    assert events(tx, "RewardsWithdrawn") == [{"runId": run_id, "participant": addr(d, 1), "amount": expected[1]}]
    assert held(d) == before - expected[1]
    assert d.admin.balance(addr(d, 1)) == mine + expected[1] - gas_cost(d, tx)
    assert d.admin.get_account(run_id, addr(d, 1)) == {"stake": STAKE, "rewards": 0}
    for i in (1, 2):  # withdrawn already; never credited
        with expect_revert("NothingToWithdraw"):
            d.as_client(i).withdraw_rewards(run_id)
    assert held(d) == owed(d, run_id, [addr(d, i) for i in range(3)])


# ---------------------------------------------------------------------- slashing


def _round_where_client_2_does_not_reveal(d: Deployment, run_id: int) -> tuple[int, int]:
    """Clients 0-2 commit, 2 does not reveal, 0 and 1 finalize; returns the round and the
    pool after it."""
    round_id = next_round(d, run_id)
    commit_reveal(d, run_id, round_id, committers=(0, 1, 2), revealers=(0, 1))
    attest_all(d, run_id, round_id, (0, 1), outcome(d, {0: 1, 1: 1}))
    assert stake(d, run_id, 2) >= STAKE  # nothing taken yet: slashed when settled
    return round_id, pool(d, run_id)


def test_a_missing_reveal_is_slashed_by_the_next_commit(deployment: Deployment) -> None:
    d = deployment
    run_id = incentive_run(d)
    deposit(d, run_id, {0: STAKE, 1: STAKE, 2: STAKE})
    round1, left = _round_where_client_2_does_not_reveal(d, run_id)
    round2 = next_round(d, run_id)
    # the slash would leave less than the run's stake: the commit is refused, and nothing is taken
    with pytest.raises(ContractRevertError) as short:
        d.as_client(2).commit(run_id, round2, b"\x05" * 32)
    assert short.value.error_name == "InsufficientStake"
    assert short.value.error_args == (run_id, addr(d, 2).lower(), STAKE - SLASH_MISSING, STAKE)
    assert (stake(d, run_id, 2), pool(d, run_id)) == (STAKE, left)
    d.as_client(2).deposit(run_id, SLASH_MISSING)
    tx = d.as_client(2).commit(run_id, round2, b"\x05" * 32)
    assert names(tx) == ["PenaltyRecorded", "Committed"]
    assert events(tx, "PenaltyRecorded") == [{"runId": run_id, "round": round1, "participant": addr(d, 2),
                                              "reason": MISSING_REVEAL, "slashed": SLASH_MISSING}]  # fmt: skip
    assert stake(d, run_id, 2) == STAKE
    assert pool(d, run_id) == left + SLASH_MISSING
    assert d.admin.get_member(run_id, addr(d, 2))["penalties"] == 1
    for i in (0, 1):  # the honest revealers and attesters keep their stake
        assert d.admin.settle(run_id, addr(d, i)).events == []
        assert stake(d, run_id, i) == STAKE
    assert held(d) == owed(d, run_id, [addr(d, i) for i in range(3)])


def test_a_missing_reveal_is_slashed_by_anyone_settling_it(deployment: Deployment) -> None:
    d = deployment
    run_id = incentive_run(d)
    deposit(d, run_id, {0: STAKE, 1: STAKE, 2: STAKE})
    round1, left = _round_where_client_2_does_not_reveal(d, run_id)
    tx = d.as_client(0).settle(run_id, addr(d, 2))  # another participant settles it
    assert events(tx, "PenaltyRecorded") == [{"runId": run_id, "round": round1, "participant": addr(d, 2),
                                              "reason": MISSING_REVEAL, "slashed": SLASH_MISSING}]  # fmt: skip
    assert d.admin.settle(run_id, addr(d, 2)).events == []  # once
    assert (stake(d, run_id, 2), pool(d, run_id)) == (STAKE - SLASH_MISSING, left + SLASH_MISSING)
    assert held(d) == owed(d, run_id, [addr(d, i) for i in range(3)])


def test_a_missing_reveal_is_slashed_before_the_stake_is_withdrawn(deployment: Deployment) -> None:
    d = deployment
    run_id = incentive_run(d)
    deposit(d, run_id, {0: STAKE, 1: STAKE, 2: STAKE})
    round_id = next_round(d, run_id)
    reveals = {i: commit(d, i, run_id, round_id) for i in range(3)}
    for i in (0, 1):
        do_reveal(d, i, run_id, round_id, reveals[i])
    with expect_revert("StakeLocked"):  # client 2 might still reveal
        d.as_client(2).withdraw_stake(run_id)
    d.node.advance_to(deadline(d, run_id, round_id, "revealDeadline"), timeout=5)
    with expect_revert("StakeLocked"):  # the round is open (attest phase)
        d.as_client(2).withdraw_stake(run_id)
    attest_all(d, run_id, round_id, (0, 1), outcome(d, {0: 1, 1: 1}))
    left, before, mine = pool(d, run_id), held(d), d.admin.balance(addr(d, 2))
    tx = d.as_client(2).withdraw_stake(run_id)
    assert names(tx) == ["PenaltyRecorded", "StakeWithdrawn"]
    (penalty,) = events(tx, "PenaltyRecorded")
    assert (penalty["round"], penalty["reason"], penalty["slashed"]) == (round_id, MISSING_REVEAL, SLASH_MISSING)
    assert events(tx, "StakeWithdrawn")[0]["amount"] == STAKE - SLASH_MISSING
    assert held(d) == before - (STAKE - SLASH_MISSING)
    assert d.admin.balance(addr(d, 2)) == mine + STAKE - SLASH_MISSING - gas_cost(d, tx)
    assert (stake(d, run_id, 2), pool(d, run_id)) == (0, left + SLASH_MISSING)
    assert d.admin.settle(run_id, addr(d, 2)).events == []  # settled by the withdrawal
    assert held(d) == owed(d, run_id, [addr(d, i) for i in range(3)])


@pytest.mark.parametrize("verdict", VERDICTS[1:])
def test_a_refused_update_is_slashed_when_the_round_finalizes(deployment: Deployment, verdict: str) -> None:
    d = deployment
    run_id = incentive_run(d)
    deposit(d, run_id, {0: STAKE, 1: STAKE, 2: STAKE})
    round_id, _ = d.admin.open_round(run_id)
    commit_reveal(d, run_id, round_id)
    scores = {0: 2, 1: 1}
    result = outcome(d, scores, {2: verdict})
    tx = attest_all(d, run_id, round_id, (0, 1), result)
    assert names(tx) == ["Attested", "PenaltyRecorded", "RewardCredited", "RewardCredited", "RoundSettled",
                         "RoundFinalized", "RoundOpened"]  # fmt: skip
    assert events(tx, "PenaltyRecorded") == [{"runId": run_id, "round": round_id, "participant": addr(d, 2),
                                              "reason": REFUSED, "slashed": SLASH_REFUSED}]  # fmt: skip
    budget = (POOL + SLASH_REFUSED) // 3  # the slash joins the pool before the round's share is taken
    expected = credits(budget, scores)
    assert [(e["participant"], e["amount"]) for e in events(tx, "RewardCredited")] == in_address_order(d, expected)
    (settled,) = events(tx, "RoundSettled")
    paid = sum(expected.values())
    assert (settled["budget"], settled["paid"], settled["pool"]) == (budget, paid, POOL + SLASH_REFUSED - paid)
    assert [stake(d, run_id, i) for i in range(3)] == [STAKE, STAKE, STAKE - SLASH_REFUSED]
    assert [rewards(d, run_id, i) for i in range(3)] == [expected[0], expected[1], 0]
    assert [d.admin.get_member(run_id, addr(d, i))["penalties"] for i in range(3)] == [0, 0, 1]
    for i in range(3):  # nothing else is owed: the refusal was settled with the round
        assert d.admin.settle(run_id, addr(d, i)).events == []
    assert held(d) == POOL + 3 * STAKE == owed(d, run_id, [addr(d, i) for i in range(3)])


@pytest.mark.parametrize("dissent", ["cid", "outcome"])
def test_a_minority_attestation_is_slashed_and_the_majority_is_not(deployment: Deployment, dissent: str) -> None:
    """The vote is for (result CID, outcome): disagreeing on either is a minority vote."""
    d = deployment
    run_id = incentive_run(d)
    deposit(d, run_id, {0: STAKE, 1: STAKE, 2: STAKE})
    round_id, _ = d.admin.open_round(run_id)
    commit_reveal(d, run_id, round_id)
    scores = {0: 1, 1: 1, 2: 1}
    if dissent == "cid":
        d.as_client(2).attest(run_id, round_id, cid_of(7, 0x70), outcome(d, scores))
    else:
        d.as_client(2).attest(run_id, round_id, cid_of(8, 0x70), outcome(d, {0: 1, 1: 1, 2: 5}))
    tx = attest_all(d, run_id, round_id, (0, 1), outcome(d, scores))
    assert events(tx, "PenaltyRecorded") == []  # minority votes are settled lazily
    assert d.admin.get_round(run_id, round_id + 1)["round"] == round_id + 1
    left = pool(d, run_id)
    assert left == POOL - sum(credits(POOL // 3, scores).values())  # the majority's outcome paid
    tx = d.admin.settle(run_id, addr(d, 2))
    assert events(tx, "PenaltyRecorded") == [{"runId": run_id, "round": round_id, "participant": addr(d, 2),
                                              "reason": MINORITY, "slashed": SLASH_MINORITY}]  # fmt: skip
    for i in (0, 1):
        assert d.admin.settle(run_id, addr(d, i)).events == []
    assert [stake(d, run_id, i) for i in range(3)] == [STAKE, STAKE, STAKE - SLASH_MINORITY]
    assert pool(d, run_id) == left + SLASH_MINORITY
    assert held(d) == owed(d, run_id, [addr(d, i) for i in range(3)])


def test_slashes_are_capped_at_what_the_stake_holds(deployment: Deployment) -> None:
    """A refused update that also attested the minority: the refusal takes 0.8 of the
    stake at finalization, the minority penalty (0.5) only the 0.2 left."""
    d = deployment
    refused_slash, minority_slash = 8 * 10**17, 5 * 10**17
    run_id = incentive_run(d, slashRefused=refused_slash, slashMinority=minority_slash)
    deposit(d, run_id, {0: STAKE, 1: STAKE, 2: STAKE})
    round_id, _ = d.admin.open_round(run_id)
    commit_reveal(d, run_id, round_id)
    d.as_client(2).attest(run_id, round_id, cid_of(7, 0x70), outcome(d, {0: 1, 1: 1, 2: 1}))
    result = outcome(d, {0: 1, 1: 1}, {2: "invalid"})
    tx = attest_all(d, run_id, round_id, (0, 1), result)
    assert events(tx, "PenaltyRecorded")[0]["slashed"] == refused_slash
    left = pool(d, run_id)
    tx = d.admin.settle(run_id, addr(d, 2))
    (penalty,) = events(tx, "PenaltyRecorded")
    assert (penalty["reason"], penalty["slashed"]) == (MINORITY, STAKE - refused_slash)
    assert (stake(d, run_id, 2), pool(d, run_id)) == (0, left + STAKE - refused_slash)
    assert d.admin.get_member(run_id, addr(d, 2))["penalties"] == 2
    with expect_revert("NothingToWithdraw"):
        d.as_client(2).withdraw_stake(run_id)
    assert held(d) == owed(d, run_id, [addr(d, i) for i in range(3)])


# ---------------------------------------------------------------------- conservation


def test_payouts_and_slashes_conserve_every_wei_and_the_creator_gets_the_rest(deployment: Deployment) -> None:
    """Three rounds with a refusal, a minority vote and a missing reveal: what was credited
    plus what the pool holds is the funding plus what was slashed, to the wei, and the
    contract's balance is always its stakes, unwithdrawn rewards and pool."""
    d = deployment
    accounts = [addr(d, i) for i in range(3)]

    def books_balance() -> None:
        assert held(d) == owed(d, run_id, accounts)

    run_id = incentive_run(d)
    books_balance()
    deposit(d, run_id, {0: STAKE, 1: STAKE, 2: 3 * STAKE})  # client 2 can afford its slashes
    books_balance()
    model = POOL  # the pool as the rules say it must be

    # round 1: client 2's update refused
    round1, _ = d.admin.open_round(run_id)
    commit_reveal(d, run_id, round1)
    scores1 = {0: 3, 1: 1}
    attest_all(d, run_id, round1, (0, 1), outcome(d, scores1, {2: "invalid"}))
    model += SLASH_REFUSED
    model -= sum(credits(model // 3, scores1).values())
    assert pool(d, run_id) == model
    books_balance()
    with pytest.raises(ContractRevertError, match=r"RunNotComplete\(runId=1, finalizedRounds=1, numRounds=3\)"):
        d.admin.withdraw_pool(run_id)
    with expect_revert("NotRunCreator"):
        d.as_client(0).withdraw_pool(run_id)

    # round 2: client 2 votes with the minority
    round2 = next_round(d, run_id)
    commit_reveal(d, run_id, round2)
    scores2 = {0: 1, 1: 1, 2: 1}
    d.as_client(2).attest(run_id, round2, cid_of(7, 0x70), outcome(d, scores2))
    attest_all(d, run_id, round2, (0, 1), outcome(d, scores2))
    model -= sum(credits(model // 2, scores2).values())
    assert pool(d, run_id) == model
    books_balance()
    d.as_client(0).withdraw_rewards(run_id)  # withdrawals along the way leave the books balanced
    books_balance()

    # round 3: client 2's commit settles its minority vote; it does not reveal
    round3 = next_round(d, run_id)
    commit_reveal(d, run_id, round3, committers=(0, 1, 2), revealers=(0, 1))
    model += SLASH_MINORITY
    scores3 = {0: 5, 1: 2}
    tx = attest_all(d, run_id, round3, (0, 1), outcome(d, scores3))
    model -= sum(credits(model, scores3).values())  # the last round's budget is the whole pool
    assert events(tx, "RoundSettled")[0]["pool"] == pool(d, run_id) == model  # rounding remainders
    assert d.admin.get_run(run_id)["finalizedRounds"] == 3
    books_balance()

    log = d.admin.event_log()
    credited = sum(e["args"]["amount"] for e in log if e["event"] == "RewardCredited")
    slashed = sum(e["args"]["slashed"] for e in log if e["event"] == "PenaltyRecorded")
    assert slashed == SLASH_REFUSED + SLASH_MINORITY
    assert credited + pool(d, run_id) == POOL + slashed

    with expect_revert("NotRunCreator"):
        d.as_client(1).withdraw_pool(run_id)
    before, mine = held(d), d.admin.balance()
    tx = d.admin.withdraw_pool(run_id)
    assert events(tx, "PoolWithdrawn") == [{"runId": run_id, "creator": d.admin.account.address, "amount": model}]
    assert held(d) == before - model and d.admin.balance() == mine + model - gas_cost(d, tx)
    assert pool(d, run_id) == 0
    books_balance()
    with expect_revert("NothingToWithdraw"):
        d.admin.withdraw_pool(run_id)

    # the missing reveal of the last round, settled after completion, refills the pool
    d.admin.settle(run_id, addr(d, 2))
    assert pool(d, run_id) == SLASH_MISSING
    books_balance()
    assert events(d.admin.withdraw_pool(run_id), "PoolWithdrawn")[0]["amount"] == SLASH_MISSING
    log = d.admin.event_log()
    total = {name: sum(e["args"][key] for e in log if e["event"] == name)
             for name, key in (("RewardCredited", "amount"), ("PenaltyRecorded", "slashed"),
                               ("PoolWithdrawn", "amount"))}  # fmt: skip
    assert total["PenaltyRecorded"] == SLASH_REFUSED + SLASH_MINORITY + SLASH_MISSING
    assert total["RewardCredited"] + total["PoolWithdrawn"] == POOL + total["PenaltyRecorded"]

    withdrawn = {}
    for i in range(3):  # everyone takes everything out: the contract is empty
        if rewards(d, run_id, i):
            d.as_client(i).withdraw_rewards(run_id)
        withdrawn[i] = events(d.as_client(i).withdraw_stake(run_id), "StakeWithdrawn")[0]["amount"]
        books_balance()
    assert withdrawn == {0: STAKE, 1: STAKE, 2: 3 * STAKE - SLASH_REFUSED - SLASH_MINORITY - SLASH_MISSING}
    assert held(d) == 0


# ---------------------------------------------------------------------- stake lock


def test_stake_is_locked_while_its_round_is_open(deployment: Deployment) -> None:
    d = deployment
    run_id = incentive_run(d)
    before = held(d)
    d.as_client(0).deposit(run_id, STAKE)
    assert held(d) == before + STAKE
    assert events(d.as_client(0).withdraw_stake(run_id), "StakeWithdrawn")[0]["amount"] == STAKE  # no round: free
    assert held(d) == before
    deposit(d, run_id, {0: STAKE, 1: STAKE, 2: STAKE})
    round_id, _ = d.admin.open_round(run_id)
    reveals = {i: commit(d, i, run_id, round_id) for i in range(3)}
    assert d.admin.phase(run_id, round_id) == "reveal"
    with pytest.raises(ContractRevertError) as locked:
        d.as_client(0).withdraw_stake(run_id)
    assert locked.value.error_name == "StakeLocked"
    assert locked.value.error_args == (run_id, addr(d, 0).lower(), round_id)
    for i, r in reveals.items():
        do_reveal(d, i, run_id, round_id, r)
    assert d.admin.phase(run_id, round_id) == "attest"
    with expect_revert("StakeLocked"):  # revealed: a refusal could still slash it
        d.as_client(0).withdraw_stake(run_id)
    d.as_client(0).attest(run_id, round_id, cid_of(8, 0x70), outcome(d, {0: 1, 1: 1, 2: 1}))
    with expect_revert("StakeLocked"):  # attested: a minority vote could still be slashed
        d.as_client(0).withdraw_stake(run_id)
    d.as_client(1).attest(run_id, round_id, cid_of(8, 0x70), outcome(d, {0: 1, 1: 1, 2: 1}))  # finalizes
    for i in (0, 2):  # an attester of the majority, and a revealer that did not attest
        before, mine = held(d), d.admin.balance(addr(d, i))
        tx = d.as_client(i).withdraw_stake(run_id)
        assert names(tx) == ["StakeWithdrawn"] and events(tx, "StakeWithdrawn")[0]["amount"] == STAKE
        assert held(d) == before - STAKE
        assert d.admin.balance(addr(d, i)) == mine + STAKE - gas_cost(d, tx)
        with expect_revert("NothingToWithdraw"):
            d.as_client(i).withdraw_stake(run_id)
    # a failed round unlocks the stake too
    round2 = next_round(d, run_id)
    r1 = commit(d, 1, run_id, round2)
    d.node.advance_to(deadline(d, run_id, round2, "commitDeadline"), timeout=5)
    with expect_revert("StakeLocked"):
        d.as_client(1).withdraw_stake(run_id)
    do_reveal(d, 1, run_id, round2, r1)  # the only reveal of the two needed: the round fails
    assert d.admin.phase(run_id, round2) == "failed"
    tx = d.as_client(1).withdraw_stake(run_id)
    assert names(tx) == ["StakeWithdrawn"] and events(tx, "StakeWithdrawn")[0]["amount"] == STAKE
    assert held(d) == owed(d, run_id, [addr(d, i) for i in range(3)])


# ---------------------------------------------------------------------- outcome validation


def test_the_finalizing_attestation_validates_the_outcome(deployment: Deployment) -> None:
    """A committee of one (every attestation it sends finalizes) tries each malformed
    outcome; only a well-formed one finalizes. The length is checked on every vote."""
    d = deployment
    run_id = incentive_run(d, committeeSize=1, quorum=1, minReveals=1)
    deposit(d, run_id, {0: STAKE, 1: STAKE, 2: STAKE})
    round_id, _ = d.admin.open_round(run_id)
    (member,) = [i for i in range(3) if d.admin.in_committee(run_id, round_id, addr(d, i))]
    commit_reveal(d, run_id, round_id)
    c = d.as_client(member)
    good = outcome(d, {0: 1, 1: 1, 2: 1})
    entries = [good[k : k + 25] for k in range(0, 75, 25)]

    def refused_by(result: bytes, error: str, args: tuple[Any, ...]) -> None:
        with pytest.raises(ContractRevertError) as refused:
            c.attest(run_id, round_id, cid_of(8, 0x70), result)
        assert (refused.value.error_name, refused.value.error_args) == (error, args)

    refused_by(b"".join(entries[:2]), "InvalidOutcome", (run_id, round_id, 50, 3))
    refused_by(good + entries[0], "InvalidOutcome", (run_id, round_id, 100, 3))
    refused_by(good[:-1], "InvalidOutcome", (run_id, round_id, 74, 3))
    refused_by(b"", "InvalidOutcome", (run_id, round_id, 0, 3))
    refused_by(b"".join(reversed(entries)), "OutcomeNotSorted", (run_id, round_id, 1))
    refused_by(entries[0] + entries[0] + entries[2], "OutcomeNotSorted", (run_id, round_id, 1))  # twice
    outsider = d.clients[3].address  # registered nowhere, revealed nothing
    others = {addr(d, i): 1 for i in range(3) if i != member}
    refused_by(encode_outcome({**others, outsider: 1}, {}), "OutcomeNotRevealer", (run_id, round_id, outsider.lower()))
    scored_refusal = bytes.fromhex(addr(d, member)[2:]) + (5).to_bytes(4, "big") + bytes([VERDICTS.index("invalid")])
    forged = b"".join(scored_refusal if e[:20] == scored_refusal[:20] else e for e in entries)
    refused_by(forged, "OutcomeRefusedWithScore", (run_id, round_id, addr(d, member).lower()))
    assert (pool(d, run_id), d.admin.get_run(run_id)["finalizedRounds"]) == (POOL, 0)  # nothing applied
    tx = c.attest(run_id, round_id, cid_of(8, 0x70), good)
    assert "RoundFinalized" in names(tx) and len(events(tx, "RewardCredited")) == 3


def test_a_malformed_outcome_is_only_refused_when_it_would_finalize(deployment: Deployment) -> None:
    """A vote that does not finalize is not validated (only its length): an unsorted
    outcome is a minority vote once the well-formed one wins, and slashed as one."""
    d = deployment
    run_id = incentive_run(d)
    deposit(d, run_id, {0: STAKE, 1: STAKE, 2: STAKE})
    round_id, _ = d.admin.open_round(run_id)
    commit_reveal(d, run_id, round_id)
    good = outcome(d, {0: 1, 1: 1, 2: 1})
    unsorted = good[25:50] + good[:25] + good[50:]
    d.as_client(2).attest(run_id, round_id, cid_of(8, 0x70), unsorted)
    with expect_revert("OutcomeNotSorted"):  # it would be the second vote: a majority
        d.as_client(0).attest(run_id, round_id, cid_of(8, 0x70), unsorted)
    attest_all(d, run_id, round_id, (0, 1), good)
    assert events(d.admin.settle(run_id, addr(d, 2)), "PenaltyRecorded")[0]["slashed"] == SLASH_MINORITY


# ---------------------------------------------------------------------- reentrancy


def deploy(sender: RoundsContract, name: str, types: list[str], args: list[Any]) -> str:
    """Deploy the test contract ``name`` (an artifact under artifacts/) with ``sender``."""
    bytecode = bytes.fromhex(load_artifact(name)["bytecode"].removeprefix("0x"))
    receipt = sender._send(bytecode + encode(types, args), to=None, label=f"deploy {name}")
    return to_checksum_address(receipt["contractAddress"])


def send(sender: RoundsContract, to: str, signature: str, types: list[str], args: list[Any], *,
         value: int = 0) -> TxResult:  # fmt: skip
    data = function_signature_to_4byte_selector(signature) + encode(types, args)
    return sender._tx_result(sender._send(data, to=to, label=signature, value=value))


def view(d: Deployment, to: str, signature: str, types: list[str], args: list[Any], out: str) -> Any:
    data = function_signature_to_4byte_selector(signature) + encode(types, args)
    answer = d.node.request("eth_call", [{"to": to, "data": "0x" + data.hex()}, "latest"])
    return decode([out], bytes.fromhex(answer.removeprefix("0x")))[0]


class Attacker:
    """A ``ReentrantWithdrawer`` driven by client 0: ``call`` makes it call the rounds
    contract as itself."""

    def __init__(self, d: Deployment) -> None:
        self.d, self.driver = d, d.as_client(0)
        self.address = deploy(d.admin, "test/ReentrantWithdrawer", ["address"], [d.admin.address])

    def call(self, fn_name: str, *args: Any, value: int = 0) -> TxResult:
        inner = self.d.admin._functions[fn_name].calldata(args)
        return send(self.driver, self.address, "act(bytes)", ["bytes"], [inner], value=value)

    def arm(self, which: int) -> None:
        send(self.driver, self.address, "arm(uint8)", ["uint8"], [which])

    def counts(self) -> tuple[int, int]:
        return tuple(view(self.d, self.address, f"{n}()", [], [], "uint256") for n in ("attempts", "accepted"))

    def balance(self) -> int:
        return self.d.admin.balance(self.address)


def test_a_stake_withdrawal_cannot_be_reentered(deployment: Deployment) -> None:
    d = deployment
    run_id = incentive_run(d)
    assert run_id == 1  # the attacker re-enters run 1
    attacker = Attacker(d)
    attacker.call("deposit", run_id, STAKE, value=STAKE)
    deposit(d, run_id, {1: STAKE})
    assert d.admin.get_account(run_id, attacker.address) == {"stake": STAKE, "rewards": 0}
    before = held(d)
    assert before == POOL + 2 * STAKE
    attacker.arm(1)  # its receive() calls withdrawStake(1) again
    tx = attacker.call("withdrawStake", run_id)
    assert attacker.counts() == (1, 0)  # tried once, refused
    assert events(tx, "StakeWithdrawn") == [{"runId": run_id, "participant": attacker.address, "amount": STAKE}]
    assert held(d) == before - STAKE and attacker.balance() == STAKE  # exactly one stake left
    assert d.admin.get_account(run_id, attacker.address) == {"stake": 0, "rewards": 0}
    assert held(d) == owed(d, run_id, [addr(d, 1), attacker.address])


def test_a_withdrawal_cannot_reenter_into_the_other_withdrawal(deployment: Deployment) -> None:
    """The attacker is a registered participant with both a stake and rewards: while its
    stake is paid it calls withdrawRewards, which checks-effects-interactions alone would
    allow; the reentrancy guard refuses it, and the rewards stay until asked for."""
    d = deployment
    attacker = Attacker(d)
    d.admin.register(attacker.address, b"\x0a" * 32)
    run_id = incentive_run(d, numRounds=1, quorum=3, minReveals=3)
    assert run_id == 1
    attacker.call("deposit", run_id, STAKE, value=STAKE)
    deposit(d, run_id, {0: STAKE, 1: STAKE, 2: STAKE})
    round_id, _ = d.admin.open_round(run_id)
    cid, salt = cid_of(42), b"\x0a" * 32
    commitment = commitment_of(chain_id=d.node.chain_id, contract=d.admin.address, run_id=run_id,
                               round_id=round_id, participant=attacker.address, cid=cid, num_examples=50, dp=dp(),
                               salt=salt)  # fmt: skip
    attacker.call("commit", run_id, round_id, commitment)
    reveals = {i: commit(d, i, run_id, round_id) for i in range(3)}
    attacker.call("reveal", run_id, round_id, reveal_record(cid=cid, num_examples=50, dp=dp(), salt=salt))
    for i, r in reveals.items():
        do_reveal(d, i, run_id, round_id, r)
    scores = {addr(d, 0): 1, addr(d, 1): 1, addr(d, 2): 1, attacker.address: 2}
    tx = attest_all(d, run_id, round_id, (0, 1, 2), encode_outcome(scores, {}))  # 3 of 4
    (credit,) = [e for e in events(tx, "RewardCredited") if e["participant"] == attacker.address]
    reward = POOL * 2 // 5
    assert credit["amount"] == reward
    assert d.admin.get_account(run_id, attacker.address) == {"stake": STAKE, "rewards": reward}

    attacker.arm(2)  # its receive() calls withdrawRewards(1)
    before = held(d)
    tx = attacker.call("withdrawStake", run_id)
    assert attacker.counts() == (1, 0)
    assert names(tx) == ["StakeWithdrawn"]
    assert held(d) == before - STAKE and attacker.balance() == STAKE
    assert d.admin.get_account(run_id, attacker.address) == {"stake": 0, "rewards": reward}
    tx = attacker.call("withdrawRewards", run_id)  # re-entering itself: refused as well
    assert attacker.counts() == (2, 0)
    assert events(tx, "RewardsWithdrawn") == [{"runId": run_id, "participant": attacker.address, "amount": reward}]
    assert held(d) == before - STAKE - reward and attacker.balance() == STAKE + reward
    assert held(d) == owed(d, run_id, [addr(d, i) for i in range(3)] + [attacker.address])


# ---------------------------------------------------------------------- ERC-20


class Token:
    def __init__(self, d: Deployment) -> None:
        self.d = d
        self.address = deploy(d.admin, "test/TestToken", [], [])

    def mint(self, to: str, amount: int) -> None:
        send(self.d.admin, self.address, "mint(address,uint256)", ["address", "uint256"], [to, amount])

    def balance(self, of: str) -> int:
        return view(self.d, self.address, "balanceOf(address)", ["address"], [of], "uint256")


def test_a_token_run_stakes_pays_and_slashes_in_the_token(deployment: Deployment) -> None:
    d = deployment
    token = Token(d)
    rounds = d.admin.address
    with pytest.raises(ContractRevertError):  # nothing approved: the pool cannot be pulled
        incentive_run(d, stakeToken=token.address)
    token.mint(d.admin.account.address, POOL)
    d.admin.approve_token(token.address, POOL)
    with pytest.raises(ContractRevertError, match=r"WrongPayment\(expectedWei=0, sentWei=1\)"):
        d.admin._transact("createRun", run_params(stakeToken=token.address), value=1)  # no native value
    run_id = incentive_run(d, stakeToken=token.address, numRounds=1)
    assert d.admin.get_incentives(run_id)["stakeToken"] == token.address
    assert (token.balance(rounds), token.balance(d.admin.account.address), held(d)) == (POOL, 0, 0)
    for i in range(3):
        token.mint(addr(d, i), STAKE)
        d.as_client(i).approve_token(token.address, STAKE)
    with pytest.raises(ContractRevertError, match=rf"WrongPayment\(expectedWei=0, sentWei={STAKE}\)"):
        d.as_client(0).deposit(run_id, STAKE)  # native=True sends a value
    for i in range(3):
        d.as_client(i).deposit(run_id, STAKE, native=False)
    assert (token.balance(rounds), token.balance(addr(d, 0)), held(d)) == (POOL + 3 * STAKE, 0, 0)

    round_id, _ = d.admin.open_round(run_id)
    commit_reveal(d, run_id, round_id)
    scores = {0: 1, 1: 3}
    tx = attest_all(d, run_id, round_id, (0, 1), outcome(d, scores, {2: "unavailable"}))
    expected = credits(POOL + SLASH_REFUSED, scores)  # one round: its budget is the whole pool
    assert [(e["participant"], e["amount"]) for e in events(tx, "RewardCredited")] == in_address_order(d, expected)
    left = POOL + SLASH_REFUSED - sum(expected.values())
    assert pool(d, run_id) == left and token.balance(rounds) == POOL + 3 * STAKE  # slashing moves no tokens

    native = d.admin.balance(addr(d, 1))
    tx = d.as_client(1).withdraw_rewards(run_id)
    assert token.balance(addr(d, 1)) == expected[1]
    assert d.admin.balance(addr(d, 1)) == native - gas_cost(d, tx)  # paid in the token only
    d.as_client(2).withdraw_stake(run_id)
    assert token.balance(addr(d, 2)) == STAKE - SLASH_REFUSED
    d.admin.withdraw_pool(run_id)
    assert token.balance(d.admin.account.address) == left
    assert token.balance(rounds) == 2 * STAKE + expected[0] == owed(d, run_id, [addr(d, i) for i in range(3)])
    assert held(d) == 0


# ---------------------------------------------------------------------- gas


def test_native_deposits_stay_well_within_their_fixed_gas_limit(deployment: Deployment) -> None:
    """A native deposit is sent with a fixed limit (no estimate): a first and a topping-up
    deposit use at most 2/3 of it, and the stake counts both."""
    d = with_members(deployment, 1)
    run_id = incentive_run(d)
    first = d.as_client(0).deposit(run_id, STAKE)
    again = d.as_client(0).deposit(run_id, STAKE)
    assert all(3 * tx.gas_used <= 2 * DEPOSIT_GAS for tx in (first, again)), (first.gas_used, again.gas_used)
    assert int(d.admin.get_account(run_id, addr(d, 0))["stake"]) == 2 * STAKE


def test_incentive_paths_stay_well_within_the_fixed_round_gas_limits(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dearest paths with incentives use at most 2/3 of the limits they are sent with:
    a disputed finalization that slashes a refused update, credits every other revealer
    (fresh reward slots) and opens the next round; commits that check the stake and settle
    a slash (minority vote, missing reveal)."""
    used: dict[str, list[tuple[int, int]]] = {}
    real = RoundsContract._transact

    def spy(self: RoundsContract, fn_name: str, *args: object, **kwargs: object) -> object:
        tx = real(self, fn_name, *args, **kwargs)
        used.setdefault(fn_name, []).append((tx.gas_used, kwargs.get("gas") or ROUND_CALL_GAS.get(fn_name)))
        return tx

    d = with_members(deployment, 5)
    run_id = incentive_run(d)
    deposit(d, run_id, {0: 2 * STAKE, 1: STAKE, 2: STAKE, 3: 2 * STAKE, 4: 2 * STAKE})
    monkeypatch.setattr(RoundsContract, "_transact", spy)
    round1, _ = d.admin.open_round(run_id)
    commit_reveal(d, run_id, round1, committers=(0, 1, 2, 3, 4))
    result = outcome(d, {0: 1, 1: 2, 2: 3, 4: 4}, {3: "invalid"})
    d.as_client(4).attest(run_id, round1, cid_of(7, 0x70), result)  # the minority, first
    tx = attest_all(d, run_id, round1, (0, 1, 2), result)  # 3 of 5: finalizes a disputed round
    assert len(events(tx, "RewardCredited")) == 4 and len(events(tx, "PenaltyRecorded")) == 1
    round2 = next_round(d, run_id)
    commit_reveal(d, run_id, round2, committers=(0, 1, 2, 3, 4), revealers=(1, 2, 3, 4))  # 4 settles a minority vote
    attest_all(d, run_id, round2, (1, 2, 3), outcome(d, {1: 1, 2: 1, 3: 1, 4: 1}))
    d.as_client(0).commit(run_id, next_round(d, run_id), b"\x07" * 32)  # settles the missing reveal
    assert [d.admin.get_member(run_id, addr(d, i))["penalties"] for i in range(5)] == [1, 0, 0, 1, 1]
    assert used["attest"][-1][1] == ROUND_CALL_GAS["attest"] + 4 * ATTEST_GAS_PER_REVEALER
    for fn_name in ROUND_CALL_GAS:
        assert used[fn_name] and all(3 * gas <= 2 * limit for gas, limit in used[fn_name]), (fn_name, used[fn_name])

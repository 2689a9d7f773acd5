"""The round contract's rules, every revert path, on the embedded EVM (real bytecode)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from support import Deployment, cid_of

from deai_flower.chain import DpParams, commitment_of, is_sampled, to_wad
from deai_flower.chain.protocol import UINT128_MAX
from deai_flower.errors import ContractRevertError


@dataclass
class Reveal:
    cid: bytes
    num_examples: int
    dp: DpParams
    salt: bytes


def dp(epsilon: float = 1.0, delta: float = 1e-5) -> DpParams:
    return DpParams.from_floats(noise_multiplier=1.1, sample_rate=0.1, steps=10, delta=delta, epsilon=epsilon,
                                accountant="rdp")  # fmt: skip


def commit(d: Deployment, i: int, run_id: int, round_id: int, *, epsilon: float = 1.0, tag: int | None = None,
           delta: float = 1e-5) -> Reveal:  # fmt: skip
    reveal = Reveal(cid_of(10 + i if tag is None else tag), 100 + i, dp(epsilon, delta), bytes([i + 1]) * 32)
    c = d.as_client(i)
    commitment = commitment_of(chain_id=d.node.chain_id, contract=c.address, run_id=run_id, round_id=round_id,
                               participant=c.account.address, cid=reveal.cid, num_examples=reveal.num_examples,
                               dp=reveal.dp, salt=reveal.salt)  # fmt: skip
    c.commit(run_id, round_id, commitment)
    return reveal


def do_reveal(d: Deployment, i: int, run_id: int, round_id: int, r: Reveal) -> None:
    d.as_client(i).reveal(run_id, round_id, cid=r.cid, num_examples=r.num_examples, dp=r.dp, salt=r.salt)


def expect_revert(name: str):
    return pytest.raises(ContractRevertError, match=rf"\b{name}\(")


def full_round(d: Deployment, run_id: int, *, attest_tag: int = 99) -> int:
    round_id, _ = d.admin.open_round(run_id)
    reveals = [commit(d, i, run_id, round_id) for i in range(3)]
    for i, r in enumerate(reveals):
        do_reveal(d, i, run_id, round_id, r)
    d.as_client(0).attest(run_id, round_id, cid_of(attest_tag, 0x70))
    d.as_client(1).attest(run_id, round_id, cid_of(attest_tag, 0x70))
    return round_id


def test_happy_round_finalizes_and_moves_the_model(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id = full_round(d, run_id)
    assert d.admin.phase(run_id, round_id) == "finalized"
    run = d.admin.get_run(run_id)
    assert bytes(run["modelCid"]) == cid_of(99, 0x70)
    assert run["finalizedRounds"] == 1
    member = d.admin.get_member(run_id, d.clients[1].address)
    assert member["rewardPoints"] == 101
    assert member["epsilonWad"] == to_wad(1.0)
    # the next round starts from the finalized model, with a beacon fed by the salts
    nxt, tx = d.admin.open_round(run_id)
    (opened,) = [e for e in tx.events if e["event"] == "RoundOpened"]
    assert bytes(opened["args"]["modelCid"]) == cid_of(99, 0x70)
    assert opened["args"]["beacon"] != d.admin.get_round(run_id, round_id)["beacon"]


def test_admin_only_registry_and_runs(deployment: Deployment) -> None:
    d = deployment
    with expect_revert("NotAdmin"):
        d.as_client(0).register(d.clients[3].address, b"\x00" * 32)
    with expect_revert("AlreadyRegistered"):
        d.admin.register(d.clients[0].address, b"\x00" * 32)
    with expect_revert("NotAdmin"):
        d.as_client(0).create_run({"configHash": b"\x00" * 32, "codeHash": b"\x00" * 32,
                                   "initialModelCid": cid_of(0), "epsilonBudgetWad": 1, "deltaWad": 1,
                                   "numRounds": 1, "commitDuration": 1, "revealDuration": 1, "attestDuration": 1,
                                   "sampleBps": 1, "quorum": 1, "minReveals": 1})  # fmt: skip
    with expect_revert("InvalidQuorum"):
        d.create_run(quorum=3, minReveals=2)
    with expect_revert("InvalidSampleRate"):
        d.create_run(sampleBps=10_001)
    with expect_revert("ZeroRounds"):
        d.create_run(numRounds=0)
    with expect_revert("InvalidPhaseDurations"):
        d.create_run(revealDuration=0)
    with expect_revert("InvalidCid"):
        d.create_run(initialModelCid=b"\x01\x55")


def test_revoked_participant_cannot_commit(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    d.admin.revoke(d.clients[2].address)
    assert d.admin.participant_info(d.clients[2].address) == (False, b"\x00" * 32)
    round_id, _ = d.admin.open_round(run_id)
    with expect_revert("NotRegistered"):
        commit(d, 2, run_id, round_id)
    with expect_revert("NotRegistered"):
        d.admin.revoke(d.clients[2].address)


def test_commit_rules(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    with expect_revert("UnknownRun"):
        d.admin.open_round(run_id + 1)
    round_id, _ = d.admin.open_round(run_id)
    with expect_revert("NotRegistered"):
        commit(d, 3, run_id, round_id)  # client 3 is not registered
    commit(d, 0, run_id, round_id)
    with expect_revert("AlreadyCommitted"):
        commit(d, 0, run_id, round_id)
    with expect_revert("UnexpectedPhase"):
        commit(d, 1, run_id, round_id + 1)  # a round that is not open
    with expect_revert("PreviousRoundOpen"):
        d.admin.open_round(run_id)


def test_sampling_follows_the_beacon_and_excludes_the_unsampled(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run(sampleBps=5_000, quorum=1, minReveals=1)
    round_id, tx = d.admin.open_round(run_id)
    (opened,) = [e for e in tx.events if e["event"] == "RoundOpened"]
    beacon = bytes(opened["args"]["beacon"])
    sampled = [d.admin.is_sampled(run_id, round_id, c.address) for c in d.clients[:3]]
    # the Python rule verifiers use reproduces the contract's
    assert sampled == [is_sampled(beacon=beacon, sample_bps=5_000, participant=c.address) for c in d.clients[:3]]
    assert opened["args"]["sampledCount"] == sum(sampled)
    assert True in sampled and False in sampled  # fixed keys and beacon: a known mix
    with expect_revert("NotSampled"):
        commit(d, sampled.index(False), run_id, round_id)
    commit(d, sampled.index(True), run_id, round_id)


def test_reveal_rules(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    r0 = commit(d, 0, run_id, round_id)
    with expect_revert("UnexpectedPhase"):  # commit phase still open
        do_reveal(d, 0, run_id, round_id, r0)
    r1 = commit(d, 1, run_id, round_id)
    r2 = commit(d, 2, run_id, round_id, epsilon=9.0)  # over the 8.0 budget
    assert d.admin.phase(run_id, round_id) == "reveal"  # everyone committed: early close
    wrong = Reveal(r0.cid, r0.num_examples + 1, r0.dp, r0.salt)
    with expect_revert("CommitmentMismatch"):
        do_reveal(d, 0, run_id, round_id, wrong)
    with expect_revert("NotRegistered"):
        do_reveal(d, 3, run_id, round_id, r0)
    with expect_revert("PrivacyBudgetExceeded"):
        do_reveal(d, 2, run_id, round_id, r2)
    do_reveal(d, 0, run_id, round_id, r0)
    with expect_revert("NotCommitted"):  # double reveal
        do_reveal(d, 0, run_id, round_id, r0)
    do_reveal(d, 1, run_id, round_id, r1)
    # client 2 cannot reveal within budget: after the deadline the reveal is late
    d.node.advance_to(int(d.admin.get_round(run_id, round_id)["revealDeadline"]), timeout=5)
    assert d.admin.phase(run_id, round_id) == "attest"
    with expect_revert("UnexpectedPhase"):
        do_reveal(d, 2, run_id, round_id, r2)


def test_reveal_checks_delta_and_monotone_epsilon(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run(quorum=1, minReveals=1)
    round_id, _ = d.admin.open_round(run_id)
    r0 = commit(d, 0, run_id, round_id, epsilon=3.0)
    r1 = commit(d, 1, run_id, round_id, delta=1e-3)
    commit(d, 2, run_id, round_id)
    with expect_revert("DeltaMismatch"):
        do_reveal(d, 1, run_id, round_id, r1)
    do_reveal(d, 0, run_id, round_id, r0)
    d.node.advance_to(int(d.admin.get_round(run_id, round_id)["revealDeadline"]), timeout=5)
    d.as_client(0).attest(run_id, round_id, cid_of(1, 0x70))
    round2, _ = d.admin.open_round(run_id)
    lower = commit(d, 0, run_id, round2, epsilon=2.0)
    for i in (1, 2):
        commit(d, i, run_id, round2)
    with expect_revert("EpsilonDecreased"):
        do_reveal(d, 0, run_id, round2, lower)


def test_non_private_reveal_needs_an_infinite_budget(deployment: Deployment) -> None:
    d = deployment
    finite = d.create_run()
    infinite = d.create_run(epsilonBudgetWad=UINT128_MAX)
    for run_id, ok in ((finite, False), (infinite, True)):
        round_id, _ = d.admin.open_round(run_id)
        reveals = [commit(d, i, run_id, round_id, epsilon=float("inf")) for i in range(3)]
        if ok:
            do_reveal(d, 0, run_id, round_id, reveals[0])
        else:
            with expect_revert("PrivacyBudgetExceeded"):
                do_reveal(d, 0, run_id, round_id, reveals[0])


def test_attest_rules_and_quorum(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    reveals = [commit(d, i, run_id, round_id) for i in range(3)]
    with expect_revert("UnexpectedPhase"):  # before the reveal phase ends
        d.as_client(0).attest(run_id, round_id, cid_of(5, 0x70))
    for i in (0, 1):
        do_reveal(d, i, run_id, round_id, reveals[i])
    with expect_revert("UnexpectedPhase"):  # client 2 may still reveal
        d.as_client(0).attest(run_id, round_id, cid_of(5, 0x70))
    d.node.advance_to(int(d.admin.get_round(run_id, round_id)["revealDeadline"]), timeout=5)
    with expect_revert("NotEligibleAttester"):  # committed but never revealed
        d.as_client(2).attest(run_id, round_id, cid_of(5, 0x70))
    with expect_revert("InvalidCid"):
        d.as_client(0).attest(run_id, round_id, b"\x00" * 36)
    d.as_client(0).attest(run_id, round_id, cid_of(5, 0x70))
    with expect_revert("NotEligibleAttester"):  # attests once
        d.as_client(0).attest(run_id, round_id, cid_of(5, 0x70))
    assert d.admin.phase(run_id, round_id) == "attest"  # one vote, quorum 2
    tx = d.as_client(1).attest(run_id, round_id, cid_of(5, 0x70))
    assert [e["event"] for e in tx.events] == ["Attested", "RoundFinalized"]
    assert d.admin.phase(run_id, round_id) == "finalized"


def test_failed_round_lets_the_next_open_with_the_same_model(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    r0 = commit(d, 0, run_id, round_id)
    d.node.advance_to(int(d.admin.get_round(run_id, round_id)["commitDeadline"]), timeout=5)
    do_reveal(d, 0, run_id, round_id, r0)  # only one reveal, minReveals is 2
    d.node.advance_to(int(d.admin.get_round(run_id, round_id)["revealDeadline"]), timeout=5)
    assert d.admin.phase(run_id, round_id) == "failed"
    nxt, tx = d.admin.open_round(run_id)
    (opened,) = [e for e in tx.events if e["event"] == "RoundOpened"]
    assert nxt == round_id + 1 and bytes(opened["args"]["modelCid"]) == cid_of(0)


def test_run_completes_after_its_rounds(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run(numRounds=1)
    full_round(d, run_id)
    with expect_revert("RunComplete"):
        d.admin.open_round(run_id)


def test_penalties_for_missing_reveal_and_minority_attestation(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    reveals = [commit(d, i, run_id, round_id) for i in range(3)]
    for i in (0, 1, 2):
        do_reveal(d, i, run_id, round_id, reveals[i])
    d.as_client(2).attest(run_id, round_id, cid_of(7, 0x70))  # the minority CID
    d.as_client(0).attest(run_id, round_id, cid_of(8, 0x70))
    d.as_client(1).attest(run_id, round_id, cid_of(8, 0x70))
    round2, _ = d.admin.open_round(run_id)
    commit(d, 0, run_id, round2)  # client 0 will not reveal
    tx = d.admin.settle(run_id, d.clients[2].address)
    assert [(e["event"], e["args"]["reason"]) for e in tx.events] == [("PenaltyRecorded", 1)]
    assert d.admin.get_member(run_id, d.clients[2].address)["penalties"] == 1
    assert d.admin.get_member(run_id, d.clients[1].address)["penalties"] == 0
    d.node.advance_to(int(d.admin.get_round(run_id, round2)["attestDeadline"]), timeout=5)
    tx = d.admin.settle(run_id, d.clients[0].address)
    assert [(e["event"], e["args"]["reason"]) for e in tx.events] == [("PenaltyRecorded", 0)]
    assert d.admin.get_member(run_id, d.clients[0].address)["penalties"] == 1

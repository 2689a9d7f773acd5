"""The round contract's rules and every revert path, on the real bytecode.

These tests run on the embedded EVM here and, unchanged, on a real anvil node in
``tests/integration/chain/test_contract_anvil.py`` (whose conftest overrides the ``chain_node`` fixture).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from support import Deployment, cid_of, with_members

from deai_flower.chain import (
    DpParams,
    RoundsContract,
    beacon_of,
    commitment_of,
    is_sampled,
    simulation_key,
    to_wad,
)
from deai_flower.chain import contract as contract_module
from deai_flower.chain.contract import ATTEST_GAS_PER_REVEALER, ROUND_CALL_GAS, TxResult
from deai_flower.protocol.encoding import (
    NO_EXAMPLE_BOUND,
    PENALTY_REASONS,
    STORED_COMMITMENT_BYTES,
    UINT128_MAX,
    in_committee,
    index_at_position,
    permuted_position,
    reveal_record,
    sampled_count,
    sampled_indices,
)
from deai_flower.errors import ContractRevertError
from deai_flower.protocol.outcome import encode_outcome
from deai_flower.verify import Verification, _check_cancellation


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
           delta: float = 1e-5, cid: bytes | None = None, num_examples: int | None = None) -> Reveal:  # fmt: skip
    reveal = Reveal(cid if cid is not None else cid_of(10 + i if tag is None else tag),
                    100 + i if num_examples is None else num_examples, dp(epsilon, delta),
                    bytes([i + 1, round_id % 256]) * 16)  # fmt: skip
    c = d.as_client(i)
    commitment = commitment_of(chain_id=d.node.chain_id, contract=c.address, run_id=run_id, round_id=round_id,
                               participant=c.account.address, cid=reveal.cid, num_examples=reveal.num_examples,
                               dp=reveal.dp, salt=reveal.salt)  # fmt: skip
    c.commit(run_id, round_id, commitment)
    return reveal


def do_reveal(d: Deployment, i: int, run_id: int, round_id: int, r: Reveal) -> None:
    d.as_client(i).reveal(run_id, round_id, cid=r.cid, num_examples=r.num_examples, dp=r.dp, salt=r.salt)


def revealers(c: RoundsContract, run_id: int, round_id: int) -> list[str]:
    """The addresses that revealed in the round so far (its ``Revealed`` events)."""
    return [e["participant"] for e in c.revealed(run_id, round_id, from_block=0)]


def outcome_of(c: RoundsContract, run_id: int, round_id: int) -> bytes:
    """The round's outcome as honest attesters agree on it here: every revealer aggregated,
    all with the same score (these tests are about the model vote, not the rewards)."""
    return encode_outcome(dict.fromkeys(revealers(c, run_id, round_id), 1), {})


def attest(c: RoundsContract, run_id: int, round_id: int, result_cid: bytes, outcome: bytes | None = None) -> TxResult:
    """``c`` attests ``result_cid`` with ``outcome`` (by default :func:`outcome_of` the round)."""
    return c.attest(run_id, round_id, result_cid, outcome_of(c, run_id, round_id) if outcome is None else outcome)


def expect_revert(name: str):
    return pytest.raises(ContractRevertError, match=rf"\b{name}\(")


def deadline(d: Deployment, run_id: int, round_id: int, key: str) -> int:
    return int(d.admin.get_round(run_id, round_id)[key])


def next_round(d: Deployment, run_id: int) -> int:
    """The round to play: the one the last finalization opened, else a newly opened one."""
    current = int(d.admin.get_run(run_id)["currentRound"])
    if current and d.admin.phase(run_id, current) == "commit":
        return current
    return d.admin.open_round(run_id)[0]


def full_round(d: Deployment, run_id: int, *, attest_tag: int = 99) -> tuple[int, list[Reveal]]:
    round_id = next_round(d, run_id)
    reveals = [commit(d, i, run_id, round_id) for i in range(3)]
    for i, r in enumerate(reveals):
        do_reveal(d, i, run_id, round_id, r)
    attest(d.as_client(0), run_id, round_id, cid_of(attest_tag, 0x70))
    attest(d.as_client(1), run_id, round_id, cid_of(attest_tag, 0x70))
    return round_id, reveals


# ---------------------------------------------------------------------- happy path


def test_happy_round_finalizes_moves_the_model_and_opens_the_next(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    reveals = [commit(d, i, run_id, round_id) for i in range(3)]
    for i, r in enumerate(reveals):
        do_reveal(d, i, run_id, round_id, r)
    attest(d.as_client(0), run_id, round_id, cid_of(99, 0x70))
    state = d.admin.get_round(run_id, round_id)
    assert not state["finalized"] and state["revealCount"] == 3 and state["commitCount"] == 3
    assert state["leadingVotes"] == 1 and not state["disputed"]
    tx = attest(d.as_client(1), run_id, round_id, cid_of(99, 0x70))
    assert [e["event"] for e in tx.events] == ["Attested", "RoundSettled", "RoundFinalized", "RoundOpened"]
    assert d.admin.phase(run_id, round_id) == "finalized"
    run = d.admin.get_run(run_id)
    assert bytes(run["modelCid"]) == cid_of(99, 0x70)
    assert run["finalizedRounds"] == 1 and run["currentRound"] == 2
    member = d.admin.get_member(run_id, d.clients[1].address)
    assert member["rewardPoints"] == 101
    assert member["epsilonWad"] == to_wad(1.0)
    assert (member["round"], member["stage"]) == (1, 3)  # attested
    # the finalizing attestation opened round 2 on the finalized model, its beacon from that model
    opened = tx.events[3]["args"]
    assert opened["round"] == 2 and opened["sampledCount"] == 3
    expected = beacon_of(chain_id=d.node.chain_id, contract=d.admin.address, run_id=run_id, round_id=2,
                         model_cid=cid_of(99, 0x70))  # fmt: skip
    assert bytes(opened["beacon"]) == expected == bytes(run["beacon"])
    nxt = d.admin.get_round(run_id, 2)
    assert d.admin.phase(run_id, 2) == "commit" and nxt["commitCount"] == 0 and nxt["revealCount"] == 0
    assert nxt["openedBlock"] == tx.block_number and bytes(nxt["beacon"]) == expected
    with expect_revert("PreviousRoundOpen"):  # nothing to open by hand
        d.admin.open_round(run_id)
    with expect_revert("RoundNotCurrent"):  # past rounds are read from the events
        d.admin.get_round(run_id, round_id)


def test_first_beacon_binds_chain_contract_run_and_initial_model(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    expected = beacon_of(chain_id=d.node.chain_id, contract=d.admin.address, run_id=run_id, round_id=1,
                         model_cid=cid_of(0))  # fmt: skip
    assert bytes(d.admin.get_run(run_id)["beacon"]) == expected
    round_id, tx = d.admin.open_round(run_id)
    (opened,) = [e for e in tx.events if e["event"] == "RoundOpened"]
    assert bytes(opened["args"]["beacon"]) == expected
    assert opened["args"]["sampledCount"] == 3
    state = d.admin.get_round(run_id, round_id)
    assert opened["args"]["commitDeadline"] == state["commitDeadline"]
    assert state["revealDeadline"] == state["commitDeadline"] + 100
    assert state["attestDeadline"] == state["revealDeadline"] + 100
    assert state["openedBlock"] == tx.block_number


# ---------------------------------------------------------------------- registry and runs


def test_admin_only_registry_and_runs(deployment: Deployment) -> None:
    d = deployment
    with expect_revert("NotAdmin"):
        d.as_client(0).register(d.clients[3].address, b"\x00" * 32)
    with expect_revert("NotAdmin"):
        d.as_client(0).revoke(d.clients[1].address)
    with expect_revert("AlreadyRegistered"):
        d.admin.register(d.clients[0].address, b"\x00" * 32)
    with expect_revert("NotAdmin"):
        d.as_client(0).create_run({"specHash": b"\x00" * 32, "codeHash": b"\x00" * 32,
                                   "initialModelCid": cid_of(0), "epsilonBudgetWad": 1, "deltaWad": 1,
                                   "numRounds": 1, "commitDuration": 1, "revealDuration": 1, "attestDuration": 1,
                                   "sampleBps": 1, "quorum": 1, "minReveals": 1})  # fmt: skip
    with expect_revert("InvalidQuorum"):
        d.create_run(quorum=3, minReveals=2)
    with expect_revert("InvalidQuorum"):
        d.create_run(quorum=0, minReveals=2)
    with expect_revert("InvalidSampleRate"):
        d.create_run(sampleBps=10_001)
    with expect_revert("InvalidSampleRate"):
        d.create_run(sampleBps=0)
    with expect_revert("ZeroRounds"):
        d.create_run(numRounds=0)
    with expect_revert("InvalidPhaseDurations"):
        d.create_run(revealDuration=0)
    with expect_revert("InvalidPhaseDurations"):  # the clock keeps durations in 24 bits
        d.create_run(attestDuration=2**24)
    with expect_revert("InvalidCid"):
        d.create_run(initialModelCid=b"\x01\x55")
    with expect_revert("InvalidCid"):  # sha2-256 multihash, but codec dag-cbor
        d.create_run(initialModelCid=bytes([0x01, 0x71, 0x12, 0x20]) + b"\x00" * 32)


def test_revoked_participant_cannot_commit(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    d.admin.revoke(d.clients[2].address)
    assert d.admin.participant_info(d.clients[2].address) == (False, b"\x00" * 32)
    assert d.admin.participant_info(d.clients[0].address) == (True, b"\x00" * 32)
    round_id, tx = d.admin.open_round(run_id)
    (opened,) = [e for e in tx.events if e["event"] == "RoundOpened"]
    assert opened["args"]["sampledCount"] == 2
    assert not d.admin.is_sampled(run_id, round_id, d.clients[2].address)
    with expect_revert("NotRegistered"):
        commit(d, 2, run_id, round_id)
    with expect_revert("NotRegistered"):
        d.admin.revoke(d.clients[2].address)


def test_revocation_after_commit_lets_the_committed_update_be_revealed(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    reveals = [commit(d, i, run_id, round_id) for i in range(3)]
    d.admin.revoke(d.clients[2].address)
    do_reveal(d, 2, run_id, round_id, reveals[2])  # committed while registered
    assert d.admin.get_member(run_id, d.clients[2].address)["stage"] == 2


def test_unknown_run(deployment: Deployment) -> None:
    d = deployment
    with expect_revert("UnknownRun"):
        d.admin.open_round(7)
    with expect_revert("UnknownRun"):
        d.admin.settle(7, d.clients[0].address)
    assert d.admin.phase(7, 1) == "none"
    with expect_revert("UnexpectedPhase"):
        d.as_client(0).commit(7, 1, b"\x01" * 32)
    assert d.admin.get_run(7)["numRounds"] == 0


# ---------------------------------------------------------------------- commit


def test_commit_rules(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    with expect_revert("UnexpectedPhase"):  # no round open yet
        commit(d, 0, run_id, 1)
    round_id, _ = d.admin.open_round(run_id)
    assert d.admin.phase(run_id, round_id) == "commit"
    with expect_revert("NotRegistered"):
        commit(d, 3, run_id, round_id)  # client 3 is not registered
    commit(d, 0, run_id, round_id)
    with expect_revert("AlreadyCommitted"):
        commit(d, 0, run_id, round_id)
    with expect_revert("UnexpectedPhase"):
        commit(d, 1, run_id, round_id + 1)  # a round that is not open
    with expect_revert("PreviousRoundOpen"):
        d.admin.open_round(run_id)
    d.node.advance_to(deadline(d, run_id, round_id, "commitDeadline"), timeout=5)
    with pytest.raises(ContractRevertError, match=r"current=reveal, expected=commit"):  # late commit
        commit(d, 1, run_id, round_id)


def test_sampling_follows_the_beacon_and_excludes_the_unsampled(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run(sampleBps=5_000, quorum=1, minReveals=1)
    round_id, tx = d.admin.open_round(run_id)
    (opened,) = [e for e in tx.events if e["event"] == "RoundOpened"]
    args = opened["args"]
    beacon = bytes(args["beacon"])
    assert (args["registrySize"], args["sampledCount"]) == (3, 2)  # ceil(3 * 50 %): known without a walk
    members = d.admin.members()
    sampled = [d.admin.is_sampled(run_id, round_id, c.address) for c in d.clients[:3]]
    # the Python rule verifiers use reproduces the contract's, from index and registry size
    assert sampled == [is_sampled(beacon=beacon, sample_bps=5_000, index=members.index(c.address), registry_size=3)
                       for c in d.clients[:3]]  # fmt: skip
    assert sum(sampled) == 2
    assert sorted(members[i] for i in sampled_indices(beacon=beacon, registry_size=3, sample_bps=5_000)) == sorted(
        c.address for c, s in zip(d.clients, sampled) if s)  # fmt: skip
    with expect_revert("NotSampled"):
        commit(d, sampled.index(False), run_id, round_id)
    for i in (i for i, s in enumerate(sampled) if s):
        commit(d, i, run_id, round_id)
    assert d.admin.phase(run_id, round_id) == "reveal"  # every sampled participant committed: early close
    with expect_revert("RoundNotCurrent"):
        d.admin.is_sampled(run_id, round_id + 1, d.clients[0].address)


def test_the_permutation_matches_its_python_mirror_and_inverse(deployment: Deployment) -> None:
    d = deployment
    for size in (1, 2, 3, 10, 97, 10_000):
        beacon = bytes([size % 256]) * 32
        for index in sorted({0, 1 % size, size // 2, size - 1}):
            position = d.admin.permuted_position(beacon, index, size)
            assert position == permuted_position(beacon=beacon, index=index, registry_size=size) < size
            assert index_at_position(beacon=beacon, position=position, registry_size=size) == index
    beacon = b"\x07" * 32  # a permutation: every position taken once
    assert sorted(permuted_position(beacon=beacon, index=i, registry_size=50) for i in range(50)) == list(range(50))
    assert [sampled_count(registry_size=n, sample_bps=bps) for n, bps in ((10, 100), (100, 100), (1000, 1000),
                                                                           (10_000, 10_000), (101, 100))] == [
        1, 1, 100, 10_000, 2]  # fmt: skip


def test_registry_changes_during_a_round_take_effect_in_the_next(deployment: Deployment) -> None:
    """The round keeps the registry's size and epoch of its opening: a participant registered
    or moved (by another's revocation) afterwards sits the round out, a revoked one cannot
    commit, and the next round samples the registry as it is then."""
    d = deployment
    d.admin.register(d.clients[3].address, b"\x03" * 32)
    run_id = d.create_run(quorum=1, minReveals=1, numRounds=2)
    round_id, _ = d.admin.open_round(run_id)
    late = simulation_key(seed=123, role="late")
    d.node.fund([late.address])
    d.admin.register(late.address, b"\x04" * 32)
    assert d.admin.members()[3] == d.clients[3].address
    d.admin.revoke(d.clients[0].address)  # the last member (late) takes index 0
    assert d.admin.registry_entry(late.address)["index"] == 0
    with expect_revert("NotRegistered"):
        commit(d, 0, run_id, round_id)
    with expect_revert("NotSampled"):  # registered, then moved, after the round opened
        d.admin.as_account(late).commit(run_id, round_id, b"\x01" * 32)
    assert not d.admin.is_sampled(run_id, round_id, late.address)
    state = d.admin.get_round(run_id, round_id)
    assert (state["registrySize"], state["sampledCount"]) == (4, 4)
    for i in (1, 2, 3):  # the others keep their index and are sampled as the round opened
        assert d.admin.is_sampled(run_id, round_id, d.clients[i].address)
    reveals = {i: commit(d, i, run_id, round_id) for i in (1, 2, 3)}
    assert d.admin.phase(run_id, round_id) == "commit"  # client 0's slot stays open until the deadline
    d.node.advance_to(deadline(d, run_id, round_id, "commitDeadline"), timeout=5)
    for i, r in reveals.items():
        do_reveal(d, i, run_id, round_id, r)
    for i in (1, 2):
        attest(d.as_client(i), run_id, round_id, cid_of(5, 0x70))  # 3 eligible: 2 votes finalize
    round2 = int(d.admin.get_run(run_id)["currentRound"])
    assert round2 == round_id + 1 and d.admin.is_sampled(run_id, round2, late.address)
    assert d.admin.get_round(run_id, round2)["registrySize"] == 4


def test_register_many_and_example_bounds(deployment: Deployment) -> None:
    d = deployment
    keys = [simulation_key(seed=7, role=f"batch-{i}") for i in range(3)]
    with expect_revert("BatchLengthMismatch"):
        d.admin.register_many([k.address for k in keys], [b"\x01" * 32] * 2, [10] * 3)
    with expect_revert("ZeroExampleBound"):
        d.admin.register_many([k.address for k in keys], [b"\x01" * 32] * 3, [10, 0, 10])
    tx = d.admin.register_many([k.address for k in keys], [bytes([i]) * 32 for i in range(3)], [10, 20, None])
    registered = [e["args"] for e in tx.events]
    assert [(a["participant"], a["maxExamples"], a["index"]) for a in registered] == [
        (keys[0].address, 10, 3), (keys[1].address, 20, 4), (keys[2].address, NO_EXAMPLE_BOUND, 5)]  # fmt: skip
    assert d.admin.registry() == (6, 6)
    assert d.admin.registry_entry(keys[1].address) == {"active": True, "index": 4, "epoch": 5, "maxExamples": 20}
    assert d.admin.registry_entry(d.clients[0].address)["maxExamples"] == NO_EXAMPLE_BOUND  # the 2-argument form


def test_reveal_refuses_an_example_count_above_the_registered_bound(deployment: Deployment) -> None:
    d = deployment
    d.admin.revoke(d.clients[2].address)
    d.admin.register(d.clients[2].address, b"\x02" * 32, 5_000)
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    inflated = commit(d, 2, run_id, round_id, num_examples=2**40)
    at_bound = commit(d, 0, run_id, round_id, num_examples=NO_EXAMPLE_BOUND)  # client 0 has no bound
    r1 = commit(d, 1, run_id, round_id)
    with pytest.raises(ContractRevertError) as refused:
        do_reveal(d, 2, run_id, round_id, inflated)
    assert refused.value.error_name == "ExampleCountAboveBound"
    assert refused.value.error_args == (run_id, round_id, d.clients[2].address.lower(), 2**40, 5_000)
    d.admin.revoke(d.clients[2].address)  # the bound outlives the revocation
    with expect_revert("ExampleCountAboveBound"):
        do_reveal(d, 2, run_id, round_id, inflated)
    do_reveal(d, 0, run_id, round_id, at_bound)
    do_reveal(d, 1, run_id, round_id, r1)
    assert d.admin.get_member(run_id, d.clients[2].address)["rewardPoints"] == 0


# ---------------------------------------------------------------------- reveal


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
    record = reveal_record(cid=r0.cid, num_examples=r0.num_examples, dp=r0.dp, salt=r0.salt)
    with pytest.raises(ContractRevertError, match=r"InvalidRevealRecord\(length=144\)"):
        d.as_client(0)._transact("reveal", run_id, round_id, record[:-1])
    wrong = Reveal(r0.cid, r0.num_examples + 1, r0.dp, r0.salt)
    with pytest.raises(ContractRevertError) as mismatch:
        do_reveal(d, 0, run_id, round_id, wrong)
    assert mismatch.value.error_name == "CommitmentMismatch"
    assert len(mismatch.value.error_args[3]) == STORED_COMMITMENT_BYTES
    with expect_revert("NotCommitted"):  # never committed (and not registered)
        do_reveal(d, 3, run_id, round_id, r0)
    with expect_revert("PrivacyBudgetExceeded"):
        do_reveal(d, 2, run_id, round_id, r2)
    do_reveal(d, 0, run_id, round_id, r0)
    with expect_revert("NotCommitted"):  # double reveal
        do_reveal(d, 0, run_id, round_id, r0)
    do_reveal(d, 1, run_id, round_id, r1)
    # client 2 cannot reveal within budget: after the deadline the reveal is late
    d.node.advance_to(deadline(d, run_id, round_id, "revealDeadline"), timeout=5)
    assert d.admin.phase(run_id, round_id) == "attest"
    with pytest.raises(ContractRevertError, match=r"current=attest, expected=reveal"):
        do_reveal(d, 2, run_id, round_id, r2)


def test_reveal_checks_the_cid_and_the_example_count(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    bad_cid = commit(d, 0, run_id, round_id, cid=b"\x01\x71\x12\x20" + b"\x07" * 32)  # codec dag-cbor
    no_examples = commit(d, 1, run_id, round_id, num_examples=0)
    commit(d, 2, run_id, round_id)
    with expect_revert("InvalidCid"):
        do_reveal(d, 0, run_id, round_id, bad_cid)
    with expect_revert("ZeroExamples"):
        do_reveal(d, 1, run_id, round_id, no_examples)


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
    # one revealer of three committed is no majority: the round fails, the ledger stays
    d.node.advance_to(deadline(d, run_id, round_id, "attestDeadline"), timeout=5)
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
            assert d.admin.get_member(run_id, d.clients[0].address)["epsilonWad"] == 2**112 - 1  # saturated
        else:
            with expect_revert("PrivacyBudgetExceeded"):
                do_reveal(d, 0, run_id, round_id, reveals[0])


# ---------------------------------------------------------------------- attest and finalize


def test_attest_rules_and_quorum(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    reveals = [commit(d, i, run_id, round_id) for i in range(3)]
    with expect_revert("UnexpectedPhase"):  # before the reveal phase ends
        attest(d.as_client(0), run_id, round_id, cid_of(5, 0x70))
    for i in (0, 1):
        do_reveal(d, i, run_id, round_id, reveals[i])
    with pytest.raises(ContractRevertError, match=r"current=reveal, expected=attest"):  # client 2 may still reveal
        attest(d.as_client(0), run_id, round_id, cid_of(5, 0x70))
    d.node.advance_to(deadline(d, run_id, round_id, "revealDeadline"), timeout=5)
    with pytest.raises(ContractRevertError, match=r"NotEligibleAttester\(.*stage=committed\)"):  # never revealed
        attest(d.as_client(2), run_id, round_id, cid_of(5, 0x70))
    with pytest.raises(ContractRevertError, match=r"NotEligibleAttester\(.*stage=none\)"):  # not in this round
        attest(d.as_client(3), run_id, round_id, cid_of(5, 0x70))
    with expect_revert("InvalidCid"):
        attest(d.as_client(0), run_id, round_id, b"\x00" * 36)
    assert d.admin.settle(run_id, d.clients[0].address).events == []  # a revealer owes nothing...
    assert d.admin.get_member(run_id, d.clients[0].address)["stage"] == 2  # ...and may still attest
    attest(d.as_client(0), run_id, round_id, cid_of(5, 0x70))
    with pytest.raises(ContractRevertError, match=r"NotEligibleAttester\(.*stage=attested\)"):  # attests once
        attest(d.as_client(0), run_id, round_id, cid_of(5, 0x70))
    assert d.admin.phase(run_id, round_id) == "attest"  # one vote, quorum 2
    tx = attest(d.as_client(1), run_id, round_id, cid_of(5, 0x70))
    assert [e["event"] for e in tx.events] == ["Attested", "RoundSettled", "RoundFinalized", "RoundOpened"]
    assert bytes(tx.events[2]["args"]["resultCid"]) == cid_of(5, 0x70)
    assert d.admin.phase(run_id, round_id) == "finalized"
    with expect_revert("UnexpectedPhase"):  # no attestation after finalization
        attest(d.as_client(2), run_id, round_id, cid_of(5, 0x70))


def test_an_attestation_that_turns_finalizing_after_its_check_still_lands(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attesters send at once: one's call is checked as a plain attestation, another's
    lands first, and the first then reaches the quorum, finalizes and opens the next
    round, which costs about twice as much; its gas limit must cover that."""
    d = deployment
    run_id = d.create_run(quorum=3, minReveals=3)
    round_id, _ = d.admin.open_round(run_id)
    for i, r in enumerate([commit(d, i, run_id, round_id) for i in range(3)]):
        do_reveal(d, i, run_id, round_id, r)
    outcome = outcome_of(d.admin, run_id, round_id)
    attest(d.as_client(0), run_id, round_id, cid_of(5, 0x70), outcome)
    slow, fast = d.as_client(1), d.as_client(2)
    real_request, raced, sending = type(d.node).request, [], []

    def request(node, method, params):  # noqa: ANN001, ANN202 - a pass-through spy
        if method.startswith("eth_sendRawTransaction") and not sending:  # slow's, signed with its limit already
            sending.append(method)
            raced.append(fast.attest(run_id, round_id, cid_of(5, 0x70), outcome))  # lands first
        return real_request(node, method, params)

    monkeypatch.setattr(type(d.node), "request", request)
    tx = slow.attest(run_id, round_id, cid_of(5, 0x70), outcome)
    assert raced and [e["event"] for e in raced[0].events] == ["Attested"]
    assert tx.gas_used > 80_000  # the finalizing path was taken (a plain attestation: about 43,700)
    assert [e["event"] for e in tx.events] == ["Attested", "RoundSettled", "RoundFinalized", "RoundOpened"]


def test_failed_round_lets_the_next_open_with_the_same_model(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    r0 = commit(d, 0, run_id, round_id)
    d.node.advance_to(deadline(d, run_id, round_id, "commitDeadline"), timeout=5)
    do_reveal(d, 0, run_id, round_id, r0)  # only one reveal, minReveals is 2
    d.node.advance_to(deadline(d, run_id, round_id, "revealDeadline"), timeout=5)
    assert d.admin.phase(run_id, round_id) == "failed"
    with pytest.raises(ContractRevertError, match=r"current=failed, expected=attest"):
        attest(d.as_client(0), run_id, round_id, cid_of(5, 0x70))
    nxt, tx = d.admin.open_round(run_id)
    (opened,) = [e for e in tx.events if e["event"] == "RoundOpened"]
    assert nxt == round_id + 1 and bytes(d.admin.get_run(run_id)["modelCid"]) == cid_of(0)
    expected = beacon_of(chain_id=d.node.chain_id, contract=d.admin.address, run_id=run_id, round_id=nxt,
                         model_cid=cid_of(0))  # fmt: skip
    assert bytes(opened["args"]["beacon"]) == expected  # same model, new round: a fresh sample
    assert d.admin.phase(run_id, round_id) == "failed"  # recorded when the next round opened
    assert d.admin.get_run(run_id)["finalizedRounds"] == 0


def test_round_without_quorum_fails_at_the_attest_deadline(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    reveals = [commit(d, i, run_id, round_id) for i in range(3)]
    for i, r in enumerate(reveals):
        do_reveal(d, i, run_id, round_id, r)
    attest(d.as_client(0), run_id, round_id, cid_of(5, 0x70))
    with expect_revert("PreviousRoundOpen"):
        d.admin.open_round(run_id)
    d.node.advance_to(deadline(d, run_id, round_id, "attestDeadline"), timeout=5)
    assert d.admin.phase(run_id, round_id) == "failed"
    d.admin.settle(run_id, d.clients[0].address)  # attested in a failed round: no penalty
    assert d.admin.get_member(run_id, d.clients[0].address)["penalties"] == 0
    d.admin.open_round(run_id)
    assert d.admin.phase(run_id, round_id) == "failed"


def test_run_completes_after_its_rounds(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run(numRounds=1)
    round_id, _ = full_round(d, run_id)
    with expect_revert("RunComplete"):
        d.admin.open_round(run_id)
    state = d.admin.get_round(run_id, round_id)  # the last round stays current, finalized
    assert state["finalized"] and bytes(state["beacon"]) == b"\x00" * 32
    assert d.admin.phase(run_id, round_id) == "finalized"
    with pytest.raises(ContractRevertError, match=r"current=finalized, expected=commit"):
        d.admin.is_sampled(run_id, round_id, d.clients[0].address)


def test_with_partial_sampling_finalization_opens_the_next_round(deployment: Deployment) -> None:
    """Opening costs the same whatever the registry's size, so the attestation that
    finalizes a round opens the next one with partial sampling too."""
    d = deployment
    run_id = d.create_run(sampleBps=6_000, quorum=1, minReveals=1)
    round_id, _ = d.admin.open_round(run_id)
    sampled = [i for i in range(3) if d.admin.is_sampled(run_id, round_id, d.clients[i].address)]
    assert len(sampled) == 2
    reveals = {i: commit(d, i, run_id, round_id) for i in sampled}
    for i, r in reveals.items():
        do_reveal(d, i, run_id, round_id, r)
    attest(d.as_client(sampled[0]), run_id, round_id, cid_of(3, 0x70))  # 2 eligible: 2 votes needed
    tx = attest(d.as_client(sampled[1]), run_id, round_id, cid_of(3, 0x70))
    assert [e["event"] for e in tx.events] == ["Attested", "RoundSettled", "RoundFinalized", "RoundOpened"]
    assert d.admin.phase(run_id, round_id) == "finalized"
    opened = tx.events[3]["args"]
    expected = beacon_of(chain_id=d.node.chain_id, contract=d.admin.address, run_id=run_id, round_id=round_id + 1,
                         model_cid=cid_of(3, 0x70))  # fmt: skip
    assert opened["round"] == round_id + 1 and bytes(opened["beacon"]) == expected and opened["sampledCount"] == 2


def test_runs_are_independent(deployment: Deployment) -> None:
    d = deployment
    first, second = d.create_run(), d.create_run(specHash=b"\x09" * 32)
    full_round(d, first, attest_tag=1)
    round_id, _ = d.admin.open_round(second)
    assert round_id == 1 and d.admin.phase(second, 1) == "commit"
    assert bytes(d.admin.get_run(second)["modelCid"]) == cid_of(0)
    assert d.admin.get_run(first)["beacon"] != d.admin.get_run(second)["beacon"]


def test_two_colluding_attesters_of_five_cannot_finalize_a_forged_cid(deployment: Deployment) -> None:
    """Every revealer is eligible (committeeSize 0): a CID needs 3 of 5 votes whatever the
    run's quorum (2), so two colluders attesting first decide nothing; the honest majority
    finalizes, the colluders are penalized and the honest are not."""
    d = with_members(deployment, 5)
    run_id = d.create_run(quorum=2, minReveals=2)
    round_id, _ = d.admin.open_round(run_id)
    reveals = [commit(d, i, run_id, round_id) for i in range(5)]
    for i, r in enumerate(reveals):
        do_reveal(d, i, run_id, round_id, r)
    forged, honest = cid_of(66, 0x70), cid_of(77, 0x70)
    for i in (3, 4):
        attest(d.as_client(i), run_id, round_id, forged)
    state = d.admin.get_round(run_id, round_id)
    assert (state["committeeCommits"], state["votesNeeded"], state["leadingVotes"]) == (5, 3, 2)
    assert d.admin.phase(run_id, round_id) == "attest"  # two votes: a minority, not a quorum of 2
    for i in (0, 1):
        tx = attest(d.as_client(i), run_id, round_id, honest)
        assert [e["event"] for e in tx.events] == ["Attested"]
    tx = attest(d.as_client(2), run_id, round_id, honest)  # the third honest vote: a majority
    assert [e["event"] for e in tx.events] == ["Attested", "RoundSettled", "RoundFinalized", "RoundOpened"]
    assert bytes(d.admin.get_run(run_id)["modelCid"]) == honest
    round2 = int(d.admin.get_run(run_id)["currentRound"])
    d.node.advance_to(deadline(d, run_id, round2, "attestDeadline"), timeout=5)
    for i in range(5):
        d.admin.settle(run_id, d.clients[i].address)
    assert [d.admin.get_member(run_id, c.address)["penalties"] for c in d.clients[:5]] == [0, 0, 0, 1, 1]


def test_a_run_is_cancelled_only_after_three_failed_attempts_in_a_row(deployment: Deployment) -> None:
    """The streak is the current attempt and the ones before it, back to a finalized round
    (protocol §2.1); a cancelled run never opens a round again."""
    d = deployment
    run_id = d.create_run(numRounds=5)
    with expect_revert("CancelTooEarly"):  # nothing opened yet
        d.admin.cancel_run(run_id)

    def fail(round_id: int) -> None:
        d.node.advance_to(deadline(d, run_id, round_id, "commitDeadline"), timeout=5)
        assert d.admin.phase(run_id, round_id) == "failed"

    first, _ = d.admin.open_round(run_id)
    fail(first)
    full_round(d, run_id)  # round 2 finalizes and opens round 3
    with expect_revert("CancelTooEarly"):  # round 3 is in its commit phase
        d.admin.cancel_run(run_id)
    fail(3)
    fail(d.admin.open_round(run_id)[0])
    with pytest.raises(ContractRevertError, match=r"CancelTooEarly\(runId=1, round=4, failedAttempts=2, required=3\)"):
        d.admin.cancel_run(run_id)
    fail(d.admin.open_round(run_id)[0])
    tx = d.as_client(3).cancel_run(run_id)  # anyone, registered or not
    assert [e["event"] for e in tx.events] == ["RunCancelled"] and tx.events[0]["args"]["round"] == 5
    assert d.admin.get_run(run_id)["cancelled"] and d.admin.get_run(run_id)["finalizedRounds"] == 1
    assert d.admin.phase(run_id, 5) == "failed"
    with expect_revert("RunIsCancelled"):
        d.admin.open_round(run_id)
    with expect_revert("UnknownRun"):
        d.admin.cancel_run(run_id + 1)

    # deai verify replays it from the log: three failed attempts before it, none opened after
    events = d.admin.event_log()
    replayed = Verification(run_id=run_id, contract=d.admin.address, spec=None, spec_cid="")  # type: ignore[arg-type]
    _check_cancellation(replayed, events)
    assert replayed.checks == ["cancelled after 3 failed attempts (rounds 3-5)"] and replayed.problems == []
    finalized_4 = {"event": "RoundFinalized", "args": {"runId": run_id, "round": 4, "resultCid": cid_of(4)}}
    forged = Verification(run_id=run_id, contract=d.admin.address, spec=None, spec_cid="")  # type: ignore[arg-type]
    _check_cancellation(forged, [*events, finalized_4])
    assert forged.checks == [] and "cancelled after round 5, but rounds [3, 4, 5]" in forged.problems[0]


def test_a_round_without_a_majority_fails_and_penalizes_nobody(deployment: Deployment) -> None:
    d = with_members(deployment, 4)
    run_id = d.create_run(quorum=1, minReveals=1)
    round_id, _ = d.admin.open_round(run_id)
    for i, r in enumerate([commit(d, i, run_id, round_id) for i in range(4)]):
        do_reveal(d, i, run_id, round_id, r)
    assert d.admin.get_round(run_id, round_id)["votesNeeded"] == 3  # 4 committed: 3, though quorum is 1
    for i, tag in ((0, 1), (1, 1), (2, 2), (3, 2)):  # a 2-2 split
        attest(d.as_client(i), run_id, round_id, cid_of(tag, 0x70))
    d.node.advance_to(deadline(d, run_id, round_id, "attestDeadline"), timeout=5)
    assert d.admin.phase(run_id, round_id) == "failed"
    for i in range(4):
        assert d.admin.settle(run_id, d.clients[i].address).events == []


def test_only_the_beacons_committee_may_attest_and_its_majority_finalizes(deployment: Deployment) -> None:
    d = with_members(deployment, 5)
    with expect_revert("InvalidCommitteeSize"):
        d.create_run(committeeSize=1, quorum=2, minReveals=2)
    run_id = d.create_run(committeeSize=3, quorum=1, minReveals=1)
    round_id, tx = d.admin.open_round(run_id)
    (opened,) = [e["args"] for e in tx.events if e["event"] == "RoundOpened"]
    beacon, members = bytes(opened["beacon"]), d.admin.members()
    assert (opened["sampledCount"], opened["committeeSize"]) == (5, 3)
    committee = {members[i] for i in sampled_indices(beacon=beacon, registry_size=5, sample_bps=10_000)[:3]}
    for c in d.clients[:5]:
        python = in_committee(beacon=beacon, sample_bps=10_000, committee_size=3, registry_size=5,
                              index=members.index(c.address))  # fmt: skip
        assert d.admin.in_committee(run_id, round_id, c.address) == python == (c.address in committee)
    inside = [i for i in range(5) if d.clients[i].address in committee]
    outside = [i for i in range(5) if i not in inside]
    reveals = {i: commit(d, i, run_id, round_id) for i in range(5)}
    d.node.advance_to(deadline(d, run_id, round_id, "commitDeadline"), timeout=5)
    for i in [*outside, *inside[1:]]:  # one committee member does not reveal
        do_reveal(d, i, run_id, round_id, reveals[i])
    d.node.advance_to(deadline(d, run_id, round_id, "revealDeadline"), timeout=5)
    state = d.admin.get_round(run_id, round_id)
    # the majority is of the 3 committee members that committed, the silent one included
    assert (state["committeeSize"], state["committeeCommits"], state["votesNeeded"]) == (3, 3, 2)
    with expect_revert("NotInCommittee"):
        attest(d.as_client(outside[0]), run_id, round_id, cid_of(4, 0x70))
    with pytest.raises(ContractRevertError, match=r"NotEligibleAttester\(.*stage=committed\)"):
        attest(d.as_client(inside[0]), run_id, round_id, cid_of(4, 0x70))
    attest(d.as_client(inside[1]), run_id, round_id, cid_of(4, 0x70))
    tx = attest(d.as_client(inside[2]), run_id, round_id, cid_of(4, 0x70))
    assert [e["event"] for e in tx.events] == ["Attested", "RoundSettled", "RoundFinalized", "RoundOpened"]


# ---------------------------------------------------------------------- accounting


def test_penalties_for_missing_reveal_and_minority_attestation(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    reveals = [commit(d, i, run_id, round_id) for i in range(3)]
    for i in (0, 1, 2):
        do_reveal(d, i, run_id, round_id, reveals[i])
    attest(d.as_client(2), run_id, round_id, cid_of(7, 0x70))  # the minority CID, attested first
    attest(d.as_client(0), run_id, round_id, cid_of(8, 0x70))
    assert d.admin.get_round(run_id, round_id)["disputed"]
    attest(d.as_client(1), run_id, round_id, cid_of(8, 0x70))
    assert bytes(d.admin.get_run(run_id)["modelCid"]) == cid_of(8, 0x70)
    round2 = next_round(d, run_id)
    commit(d, 0, run_id, round2)  # client 0 will not reveal
    tx = d.admin.settle(run_id, d.clients[2].address)
    assert [(e["event"], PENALTY_REASONS[e["args"]["reason"]]) for e in tx.events] == [
        ("PenaltyRecorded", "minority-attestation")
    ]
    assert d.admin.get_member(run_id, d.clients[2].address)["penalties"] == 1
    assert d.admin.settle(run_id, d.clients[2].address).events == []  # settled once
    assert d.admin.get_member(run_id, d.clients[1].address)["penalties"] == 0
    tx = d.admin.settle(run_id, d.clients[0].address)
    assert tx.events == []  # round 2 still open: nothing to settle yet
    d.node.advance_to(deadline(d, run_id, round2, "attestDeadline"), timeout=5)
    tx = d.admin.settle(run_id, d.clients[0].address)
    assert [(e["event"], PENALTY_REASONS[e["args"]["reason"]]) for e in tx.events] == [
        ("PenaltyRecorded", "missing-reveal")
    ]
    assert d.admin.get_member(run_id, d.clients[0].address)["penalties"] == 1


def test_round_calls_stay_well_within_their_fixed_gas_limits(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dearest paths of commit, reveal and attest use at most 2/3 of the fixed limits
    they are sent with: first rounds, a disputed finalization that opens the next round,
    and penalties (minority attestation, missing reveal) settled by a commit. An
    attestation's limit grows with the round's revealers (its outcome's entries)."""
    used: dict[str, list[tuple[int, int]]] = {}  # (gas used, limit sent with)
    real = RoundsContract._transact

    def spy(self: RoundsContract, fn_name: str, *args: object, **kwargs: object) -> object:
        tx = real(self, fn_name, *args, **kwargs)
        used.setdefault(fn_name, []).append((tx.gas_used, kwargs.get("gas") or ROUND_CALL_GAS.get(fn_name)))
        return tx

    monkeypatch.setattr(RoundsContract, "_transact", spy)
    d = deployment
    run_id = d.create_run()
    round1, _ = d.admin.open_round(run_id)
    for i, r in enumerate([commit(d, i, run_id, round1) for i in range(3)]):
        do_reveal(d, i, run_id, round1, r)
    attest(d.as_client(2), run_id, round1, cid_of(7, 0x70))  # the minority
    attest(d.as_client(0), run_id, round1, cid_of(8, 0x70))
    attest(d.as_client(1), run_id, round1, cid_of(8, 0x70))  # finalizes a disputed round, opens round 2
    round2 = next_round(d, run_id)
    reveals = {i: commit(d, i, run_id, round2, tag=20 + i) for i in range(3)}  # 2 settles its penalty
    for i in (1, 2):  # client 0 never reveals
        do_reveal(d, i, run_id, round2, reveals[i])
    d.node.advance_to(deadline(d, run_id, round2, "revealDeadline"), timeout=5)
    attest(d.as_client(1), run_id, round2, cid_of(9, 0x70))
    attest(d.as_client(2), run_id, round2, cid_of(9, 0x70))
    commit(d, 0, run_id, next_round(d, run_id), tag=30)  # settles the missing reveal
    assert d.admin.get_member(run_id, d.clients[0].address)["penalties"] == 1
    assert d.admin.get_member(run_id, d.clients[2].address)["penalties"] == 1
    assert {limit for _, limit in used["attest"]} == {ROUND_CALL_GAS["attest"] + 3 * ATTEST_GAS_PER_REVEALER,
                                                      ROUND_CALL_GAS["attest"] + 2 * ATTEST_GAS_PER_REVEALER}
    for fn_name in ROUND_CALL_GAS:
        assert used[fn_name] and all(3 * gas <= 2 * limit for gas, limit in used[fn_name]), (fn_name, used[fn_name])


def test_relayed_batches_stay_well_within_their_gas_limits(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``revealMany`` and ``attestMany`` at their dearest: five first reveals in a run (fresh
    ledger slots), a minority's votes, then the majority's, which finalize a disputed
    round and open the next; each uses at most 2/3 of its limit."""
    used: dict[str, list[tuple[int, int]]] = {}
    real = RoundsContract._transact

    def spy(self: RoundsContract, fn_name: str, *args: object, **kwargs: object) -> object:
        tx = real(self, fn_name, *args, **kwargs)
        used.setdefault(fn_name, []).append((tx.gas_used, int(kwargs["gas"])))  # type: ignore[arg-type]
        return tx

    d = with_members(deployment, 5)
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    reveals = [commit(d, i, run_id, round_id) for i in range(5)]
    d.node.advance_to(deadline(d, run_id, round_id, "commitDeadline"), timeout=5)
    monkeypatch.setattr(RoundsContract, "_transact", spy)
    records = {d.clients[i].address: reveal_record(cid=r.cid, num_examples=r.num_examples, dp=r.dp, salt=r.salt)
               for i, r in enumerate(reveals)}  # fmt: skip
    d.admin.reveal_many(run_id, round_id, records)
    d.node.advance_to(deadline(d, run_id, round_id, "revealDeadline"), timeout=5)
    outcome = outcome_of(d.admin, run_id, round_id)
    for voters, tag in (((3, 4), 7), ((0, 1, 2), 8)):
        signed = [d.as_client(i).sign_vote(run_id, round_id, cid_of(tag, 0x70), outcome) for i in voters]
        d.admin.attest_many(run_id, round_id, cid_of(tag, 0x70), outcome, signed)
    assert d.admin.phase(run_id, round_id) == "finalized" and d.admin.get_round(run_id, round_id + 1)
    assert set(used) == {"revealMany", "attestMany"}
    for fn_name, calls in used.items():
        assert all(3 * gas <= 2 * limit for gas, limit in calls), (fn_name, calls)


def test_commits_that_evaluate_the_permutation_stay_well_within_their_gas_limit(deployment: Deployment) -> None:
    """With partial sampling a commit evaluates the sampling permutation (90 rounds); its
    dearest path, a first commit that also settles a minority attestation, stays under 2/3
    of the fixed commit limit."""
    d = with_members(deployment, 4)
    run_id = d.create_run(sampleBps=7_500, quorum=1, minReveals=1)  # k = 3 of 4
    round1, _ = d.admin.open_round(run_id)
    sampled = [i for i in range(4) if d.admin.is_sampled(run_id, round1, d.clients[i].address)]
    reveals = {i: commit(d, i, run_id, round1) for i in sampled}
    for i, r in reveals.items():
        do_reveal(d, i, run_id, round1, r)
    attest(d.as_client(sampled[0]), run_id, round1, cid_of(7, 0x70))  # the minority, first
    for i in sampled[1:]:
        attest(d.as_client(i), run_id, round1, cid_of(8, 0x70))
    round2 = int(d.admin.get_run(run_id)["currentRound"])
    used = []
    for i in range(4):
        if d.admin.is_sampled(run_id, round2, d.clients[i].address):
            c = d.as_client(i)
            used.append(c.commit(run_id, round2, bytes([i + 1]) * 32).gas_used)
    assert used and 3 * max(used) <= 2 * ROUND_CALL_GAS["commit"], used


def test_minority_attester_is_penalized_when_the_first_cid_wins(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    reveals = [commit(d, i, run_id, round_id) for i in range(3)]
    for i in (0, 1, 2):
        do_reveal(d, i, run_id, round_id, reveals[i])
    attest(d.as_client(0), run_id, round_id, cid_of(8, 0x70))
    attest(d.as_client(2), run_id, round_id, cid_of(7, 0x70))
    assert d.admin.get_round(run_id, round_id)["leadingVotes"] == 1
    attest(d.as_client(1), run_id, round_id, cid_of(8, 0x70))
    # the penalty is settled by the participant's next commit
    round2 = next_round(d, run_id)
    tx = d.as_client(2).commit(run_id, round2, b"\x05" * 32)
    assert [e["event"] for e in tx.events] == ["PenaltyRecorded", "Committed"]
    tx = d.as_client(0).commit(run_id, round2, b"\x06" * 32)
    assert [e["event"] for e in tx.events] == ["Committed"]


def test_majority_attesters_of_an_undisputed_round_are_not_penalized(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    round_id, _ = full_round(d, run_id)
    round2 = next_round(d, run_id)
    for i in range(3):
        tx = d.as_client(i).commit(run_id, round2, bytes([i + 1]) * 32)
        assert [e["event"] for e in tx.events] == ["Committed"]
    assert all(d.admin.get_member(run_id, c.address)["penalties"] == 0 for c in d.clients[:3])


def test_minority_attester_skipping_rounds_is_penalized_when_it_returns(deployment: Deployment) -> None:
    """The clock only remembers whether the round just before was disputed; an older
    disputed round is looked up, so skipping rounds does not dodge the penalty."""
    d = deployment
    run_id = d.create_run(numRounds=4)
    round_id = next_round(d, run_id)
    reveals = [commit(d, i, run_id, round_id) for i in range(3)]
    for i in (0, 1, 2):
        do_reveal(d, i, run_id, round_id, reveals[i])
    attest(d.as_client(2), run_id, round_id, cid_of(7, 0x70))
    attest(d.as_client(0), run_id, round_id, cid_of(8, 0x70))
    attest(d.as_client(1), run_id, round_id, cid_of(8, 0x70))
    round2 = next_round(d, run_id)  # client 2 sits this one out; round 2 is undisputed
    reveals = [commit(d, i, run_id, round2) for i in (0, 1)]
    d.node.advance_to(deadline(d, run_id, round2, "commitDeadline"), timeout=5)
    for i in (0, 1):
        do_reveal(d, i, run_id, round2, reveals[i])
    for i in (0, 1):
        attest(d.as_client(i), run_id, round2, cid_of(9, 0x70))
    round3 = next_round(d, run_id)
    assert round3 == round2 + 1
    tx = d.as_client(2).commit(run_id, round3, b"\x05" * 32)
    assert [e["event"] for e in tx.events] == ["PenaltyRecorded", "Committed"]


def test_rewards_accumulate_examples_of_valid_reveals(deployment: Deployment) -> None:
    d = deployment
    run_id = d.create_run()
    full_round(d, run_id)
    full_round(d, run_id)
    assert [d.admin.get_member(run_id, c.address)["rewardPoints"] for c in d.clients[:3]] == [200, 202, 204]


def test_handles_sharing_a_key_recover_their_nonces(deployment: Deployment) -> None:
    """A second run (or process) signing with the same key makes a handle's cached nonce
    stale; the handle re-reads it instead of failing."""
    d = deployment
    other = RoundsContract(d.node, d.admin.address, d.admin.account)
    other.register(d.clients[3].address, b"\x03" * 32)
    d.admin.revoke(d.clients[3].address)  # d.admin's cached nonce was one behind
    other.register(d.clients[3].address, b"\x04" * 32)
    assert d.admin.participant_info(d.clients[3].address) == (True, b"\x04" * 32)


# ---------------------------------------------------------------------- gas shape


def test_round_cost_does_not_grow_with_the_registry(deployment: Deployment) -> None:
    """Finalizing a round and opening the next (full sampling), and opening a round with
    partial sampling and a committee, cost the same for 3 or 8 members."""
    d = deployment

    def one_round(run_id: int, tag: int) -> tuple[int, int]:
        round_id = next_round(d, run_id)
        reveals = [commit(d, i, run_id, round_id) for i in range(3)]
        d.node.advance_to(deadline(d, run_id, round_id, "commitDeadline"), timeout=5)  # unsampled-yet members
        for i, r in enumerate(reveals):
            do_reveal(d, i, run_id, round_id, r)
        attest(d.as_client(0), run_id, round_id, cid_of(tag, 0x70))
        final = attest(d.as_client(1), run_id, round_id, cid_of(tag, 0x70))  # finalizes and opens the next
        return final.gas_used, next_round(d, run_id)

    def round_gas() -> tuple[int, int]:
        run_id = d.create_run()
        one_round(run_id, 41)  # the first round writes fresh slots; measure the second
        return one_round(run_id, 42)

    def open_gas() -> int:  # partial sampling and a committee: opening does not walk the registry
        return d.admin.open_round(d.create_run(sampleBps=5_000, committeeSize=1, quorum=1, minReveals=1))[1].gas_used

    small, small_open = round_gas(), open_gas()
    extra = [simulation_key(seed=123, role=f"extra-{i}") for i in range(5)]
    d.admin.register_many([k.address for k in extra], [bytes([9, i]) * 16 for i in range(5)])
    large, large_open = round_gas(), open_gas()
    assert large == small and large_open == small_open


def test_reading_an_address_without_the_contract_is_a_clear_error(deployment: Deployment) -> None:
    from deai_flower.errors import ChainError

    d = deployment
    nothing = RoundsContract(d.node, "0x" + "12" * 20, d.admin.account)
    with pytest.raises(ChainError, match=r"getRun: the answer from 0x1212.* is not a CommitRevealRounds answer"):
        nothing.get_run(1)


def test_the_fallback_runs_only_the_extension_and_takes_no_stray_ether(deployment: Deployment) -> None:
    from eth_utils import function_signature_to_4byte_selector

    from deai_flower.errors import ChainError

    d = deployment
    # the extension's functions answer at the rounds contract, on its storage
    assert d.admin.admin() == d.admin.account.address and len(d.admin.members()) == 3
    extension = d.admin.contract.functions.extension().call()
    assert extension != d.admin.address and len(d.node.w3.eth.get_code(extension)) > 0
    # a selector neither part defines, and a plain payment, revert
    unknown = function_signature_to_4byte_selector("noSuchFunction()")
    with pytest.raises(ChainError):
        d.admin._send(unknown, to=d.admin.address, label="noSuchFunction")
    with pytest.raises(ChainError):
        d.admin._send(b"", to=d.admin.address, label="a payment", value=1)
    # the extension called directly works on its own, empty storage: it is no backdoor
    direct = RoundsContract(d.node, extension, d.admin.account)
    assert direct.members() == [] and direct.admin() == "0x" + "00" * 20
    with pytest.raises(ContractRevertError, match="NotAdmin"):
        direct.register(d.clients[3].address, b"\x09" * 32)


def test_a_rounds_contract_without_extension_code_is_refused(deployment: Deployment) -> None:
    # a delegatecall to an address without code would succeed doing nothing
    d = deployment
    with pytest.raises(ContractRevertError, match="NoExtensionCode"):
        RoundsContract.deploy(d.node, d.admin.account, extension=d.clients[3].address)


def test_a_call_asks_for_no_more_gas_than_a_block_holds(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finalizing attestation's allowance grows with its revealers (45,000 each): at 1,000
    it asked for 45.9M gas of a 30M block and the node refused the transaction."""
    d = deployment
    run_id = d.create_run(quorum=3, minReveals=3)
    round_id, _ = d.admin.open_round(run_id)
    for i, r in enumerate([commit(d, i, run_id, round_id) for i in range(3)]):
        do_reveal(d, i, run_id, round_id, r)
    outcome = outcome_of(d.admin, run_id, round_id)
    monkeypatch.setattr(contract_module, "ATTEST_GAS_PER_REVEALER", 10**9)  # far past any block
    for i in range(3):
        tx = attest(d.as_client(i), run_id, round_id, cid_of(5, 0x70), outcome)
    assert [e["event"] for e in tx.events][:3] == ["Attested", "RoundSettled", "RoundFinalized"]
    assert d.node.block_gas_limit() < 30_029_122

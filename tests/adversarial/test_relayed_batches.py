"""Attack: a relayer abuses the batches that spare participants their own transactions.

``revealMany`` publishes several participants' reveal records and ``attestMany`` casts
several attesters' signed votes in one transaction; anyone may send either (protocol
§2.4, §2.5). A relayer holds what the participants gave it and nothing else, and tries,
on the real contract: to publish a record that is not the one committed (an inflated
example count, another participant's record), to cast a vote nobody signed, to move a
signed vote to another result, outcome, round, run or contract, to count one vote twice,
to finalize with a minority's signatures, and to block a batch by revealing first. Each
is refused, or changes nothing. Through the apps, nodes hand the relaying coordinator a
tampered record, a vote signed by another key and a malformed signature: each is left
out and reported, and the rounds go on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from flwr.app import Context, Message
from support import Deployment, cid_of, compose_with, deploy_for_tests, with_members

from deai_flower.apps import client_app
from deai_flower.chain import DpParams, RoundsContract, commitment_of, simulation_key
from deai_flower.errors import ContractRevertError
from deai_flower.protocol.encoding import reveal_record, vote_key, vote_message
from deai_flower.protocol.outcome import encode_outcome
from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run

RESULT, FORGED = cid_of(77, 0x70), cid_of(66, 0x70)
DP = DpParams.from_floats(noise_multiplier=1.1, sample_rate=0.1, steps=10, delta=1e-5, epsilon=1.0,
                          accountant="rdp")  # fmt: skip


def expect_revert(name: str):
    return pytest.raises(ContractRevertError, match=rf"\b{name}\(")


def record_of(i: int, round_id: int, *, num_examples: int | None = None) -> bytes:
    return reveal_record(cid=cid_of(10 + i), num_examples=100 + i if num_examples is None else num_examples, dp=DP,
                         salt=bytes([i + 1, round_id]) * 16)  # fmt: skip


def committed_round(d: Deployment, run_id: int, n: int) -> tuple[int, dict[str, bytes]]:
    """Open a round in which clients 0..n-1 commit; return it and their records."""
    round_id, _ = d.admin.open_round(run_id)
    records = {}
    for i in range(n):
        c = d.as_client(i)
        record = record_of(i, round_id)
        commitment = commitment_of(chain_id=d.node.chain_id, contract=c.address, run_id=run_id, round_id=round_id,
                                   participant=c.account.address, cid=record[:36], num_examples=100 + i, dp=DP,
                                   salt=record[113:])  # fmt: skip
        c.commit(run_id, round_id, commitment)
        records[c.account.address] = record
    return round_id, records


def attest_phase(d: Deployment, run_id: int, n: int) -> tuple[int, bytes, RoundsContract]:
    """A round in its attest phase with clients 0..n-1 revealed (by a relayer); return it,
    the honest outcome and the relayer (an account that is no participant)."""
    round_id, records = committed_round(d, run_id, n)
    relayer = d.admin.as_account(simulation_key(seed=123, role="outsider"))
    relayer.reveal_many(run_id, round_id, records)
    d.node.advance_to(int(d.admin.get_round(run_id, round_id)["revealDeadline"]), timeout=5)
    return round_id, encode_outcome(dict.fromkeys(records, 1), {}), relayer


def reveal_phase(d: Deployment, n: int) -> tuple[int, int, dict[str, bytes], RoundsContract]:
    """A new run's first round in its reveal phase with clients 0..n-1 committed; return
    the run, the round, their records and a relayer (an account that is no participant)."""
    run_id = d.create_run(quorum=2, minReveals=2)
    round_id, records = committed_round(d, run_id, n)
    d.node.advance_to(int(d.admin.get_round(run_id, round_id)["commitDeadline"]), timeout=5)
    return run_id, round_id, records, d.admin.as_account(simulation_key(seed=123, role="outsider"))


@pytest.fixture
def five(deployment: Deployment) -> Deployment:
    return with_members(deployment, 5)


def test_a_relayer_publishes_only_the_committed_records(five: Deployment) -> None:
    d = five
    run_id, round_id, records, relayer = reveal_phase(d, 5)
    addresses = list(records)
    inflated = {**records, addresses[0]: record_of(0, round_id, num_examples=2**40)}
    with expect_revert("CommitmentMismatch"):
        relayer.reveal_many(run_id, round_id, inflated)
    swapped = {addresses[0]: records[addresses[1]], addresses[1]: records[addresses[0]]}
    with expect_revert("CommitmentMismatch"):  # a record is bound to the participant that committed it
        relayer.reveal_many(run_id, round_id, swapped)
    outsider = Account.create().address
    with expect_revert("NotCommitted"):
        relayer.reveal_many(run_id, round_id, {outsider: records[addresses[0]]})
    with expect_revert("InvalidRevealRecord"):
        relayer.reveal_many(run_id, round_id, {addresses[0]: records[addresses[0]][:-1]})
    assert int(d.admin.get_round(run_id, round_id)["revealCount"]) == 0  # nothing of it landed

    # a participant that reveals on its own first does not block the batch: it is skipped
    d.as_client(2).reveal(run_id, round_id, cid=cid_of(12), num_examples=102, dp=DP, salt=bytes([3, round_id]) * 16)
    tx = relayer.reveal_many(run_id, round_id, records)
    assert [e["args"]["participant"] for e in tx.events] == [a for a in addresses if a != addresses[2]]
    state = d.admin.get_round(run_id, round_id)
    assert (state["revealCount"], state["committeeCommits"]) == (5, 5)
    order = [addresses[2], *(a for a in addresses if a != addresses[2])]
    published = d.admin.revealed(run_id, round_id, from_block=0)
    assert [(r["participant"], bytes(r["cid"]), r["numExamples"]) for r in published] == [
        (a, records[a][:36], int.from_bytes(records[a][36:44], "big")) for a in order]  # fmt: skip


def test_a_large_batch_goes_in_chunks_that_fit_a_block(five: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relayed round of any size fits the chain's blocks: the batch is sent in chunks of
    ``BATCH_ITEMS`` (434 commitments in one ``commitMany`` asked for 47.9M gas of a 30M
    block), and an item the chain refuses is left out of its own chunk only."""
    from deai_flower.strategies import relay

    d = five
    run_id, round_id, records, relayer = reveal_phase(d, 5)
    addresses = list(records)
    tampered = {**records, addresses[3]: record_of(3, round_id, num_examples=2**40)}
    monkeypatch.setattr(relay, "BATCH_ITEMS", 2)
    relayed = relay.relay_reveals(relayer, run_id, round_id, tampered)
    assert len(relayed.gas) == 3  # chunks of 2, 2 and 1
    assert list(relayed.refused) == [addresses[3]]
    assert relayed.landed == [a for a in addresses if a != addresses[3]]
    assert int(d.admin.get_round(run_id, round_id)["revealCount"]) == 4


def test_signed_votes_count_once_for_their_own_pair_and_a_minority_never_finalizes(five: Deployment) -> None:
    d = five
    run_id = d.create_run(quorum=2, minReveals=2)
    round_id, outcome, relayer = attest_phase(d, run_id, 5)
    voters = [d.as_client(i) for i in range(5)]

    def sign(c: RoundsContract, result: bytes = RESULT, out: bytes = outcome, r: int = round_id) -> bytes:
        return c.sign_vote(run_id, r, result, out)

    # a vote nobody eligible signed: a stranger's key, or a signature moved to another
    # result, outcome or round (it recovers to some other address)
    stranger = d.admin.as_account(Account.create())
    for bad in (sign(stranger), sign(voters[0], result=FORGED), sign(voters[0], r=round_id + 1),
                sign(voters[0], out=encode_outcome(dict.fromkeys(d.admin.members()[:5], 2), {}))):  # fmt: skip
        with expect_revert("NotEligibleAttester"):
            relayer.attest_many(run_id, round_id, RESULT, outcome, [bad])
    with expect_revert("ECDSAInvalidSignature"):
        relayer.attest_many(run_id, round_id, RESULT, outcome, [b"\x00" * 65])
    with expect_revert("InvalidSignatures"):
        relayer.attest_many(run_id, round_id, RESULT, outcome, [sign(voters[0])[:64]])
    with expect_revert("NotEligibleAttester"):  # one signature twice in a batch
        relayer.attest_many(run_id, round_id, RESULT, outcome, [sign(voters[0])] * 2)

    # two of five (a minority) sign a forged pair: counted, nothing finalizes
    tx = relayer.attest_many(run_id, round_id, FORGED, outcome, [sign(voters[3], FORGED), sign(voters[4], FORGED)])
    assert [e["event"] for e in tx.events] == ["Attested", "Attested"]
    assert d.admin.phase(run_id, round_id) == "attest"
    with expect_revert("NotEligibleAttester"):  # a cast vote cannot be cast again, relayed or not
        relayer.attest_many(run_id, round_id, FORGED, outcome, [sign(voters[3], FORGED)])

    # the honest majority: one votes on its own, two through the relayer; the third vote finalizes
    voters[0].attest(run_id, round_id, RESULT, outcome)
    tx = relayer.attest_many(run_id, round_id, RESULT, outcome, [sign(voters[1]), sign(voters[2])])
    assert [e["event"] for e in tx.events][:2] == ["Attested", "Attested"]
    assert "RoundFinalized" in [e["event"] for e in tx.events]
    assert [e["args"]["attester"] for e in tx.events if e["event"] == "Attested"] == [
        voters[1].account.address, voters[2].account.address]  # fmt: skip
    assert bytes(d.admin.get_run(run_id)["modelCid"]) == RESULT

    # the minority is penalized, the majority is not, whoever sent the transactions
    next_round = int(d.admin.get_run(run_id)["currentRound"])
    d.node.advance_to(int(d.admin.get_round(run_id, next_round)["attestDeadline"]), timeout=5)
    for c in voters:
        d.admin.settle(run_id, c.account.address)
    assert [d.admin.get_member(run_id, c.account.address)["penalties"] for c in voters] == [0, 0, 0, 1, 1]


def test_a_signed_vote_is_bound_to_its_contract_and_run(five: Deployment) -> None:
    d = five
    first, second = d.create_run(quorum=2, minReveals=2), d.create_run(quorum=2, minReveals=2, specHash=b"\x09" * 32)
    relayer = d.admin.as_account(simulation_key(seed=123, role="outsider"))
    # the same participants, the same round number and the same pair in both runs
    (round_id, records), (round_b, records_b) = committed_round(d, first, 5), committed_round(d, second, 5)
    assert round_b == round_id
    d.node.advance_to(int(d.admin.get_round(second, round_b)["commitDeadline"]), timeout=5)
    relayer.reveal_many(first, round_id, records)
    relayer.reveal_many(second, round_b, records_b)
    d.node.advance_to(int(d.admin.get_round(second, round_b)["revealDeadline"]), timeout=5)
    outcome = encode_outcome(dict.fromkeys(records, 1), {})
    assert encode_outcome(dict.fromkeys(records_b, 1), {}) == outcome and d.admin.phase(first, round_id) == "attest"

    other = deploy_for_tests(d.node)  # the same keys registered on another deployment
    signed_elsewhere = [other.as_client(i).sign_vote(first, round_id, RESULT, outcome) for i in range(3)]
    signed_for_b = [d.as_client(i).sign_vote(second, round_b, RESULT, outcome) for i in range(3)]
    for moved in (signed_elsewhere, signed_for_b):
        with expect_revert("NotEligibleAttester"):
            relayer.attest_many(first, round_id, RESULT, outcome, moved)
    assert d.admin.phase(first, round_id) == "attest"
    relayer.attest_many(first, round_id, RESULT, outcome,
                        [d.as_client(i).sign_vote(first, round_id, RESULT, outcome) for i in range(3)])  # fmt: skip
    assert d.admin.phase(first, round_id) == "finalized" and d.admin.phase(second, round_b) == "attest"


def test_the_python_vote_message_is_the_contracts(five: Deployment) -> None:
    """What a signer signs (protocol §2.5) is what the contract recovers from."""
    d = five
    message = vote_message(chain_id=d.node.chain_id, contract=d.admin.address, run_id=3, round_id=7,
                           key=vote_key(RESULT, b"\x01" * 25))  # fmt: skip
    digest = d.admin._call("voteDigest", 3, 7, vote_key(RESULT, b"\x01" * 25))
    signature = d.as_client(0).sign_vote(3, 7, RESULT, b"\x01" * 25)
    assert Account.recover_message(encode_defunct(primitive=message), signature=signature) == d.clients[0].address
    assert Account._recover_hash(bytes(digest), signature=signature) == d.clients[0].address


# ------------------------------------------------------------------ through the apps


def tampering(victims: dict[int, str]) -> Callable[[Message, Context], Message]:
    """The real ClientApp, whose replies to the relaying coordinator some nodes tamper
    with: ``inflate`` hands a record claiming 2^40 examples, ``foreign`` a vote signed by
    another key, ``bomb`` a signature that is an integer (``bytes(n)`` would allocate n)."""

    def call(message: Message, context: Context) -> Message:
        answer = client_app(message, context)
        how = victims.get(int(context.node_config["partition-id"]))
        if how is None or answer.has_error():
            return answer
        status = answer.content["status"]
        if how == "inflate" and status.get("state") == "handed" and "record" in status:  # its reveal, not its commit
            record = bytes(status["record"])
            status["record"] = record[:36] + (2**40).to_bytes(8, "big") + record[44:]
        elif how == "foreign" and status.get("state") == "signed":
            status["signature"] = Account.create().sign_message(encode_defunct(b"x" * 32)).signature
        elif how == "bomb" and status.get("state") == "signed":
            status["signature"] = 10**12
        return answer

    return call


@pytest.mark.slow
def test_tampered_hand_overs_are_left_out_and_the_round_goes_on(tmp_path: Path) -> None:
    # seven committed nodes (4 votes needed), six revealers, of which four vote honestly
    cfg = compose_with("num_clients=7", "num_rounds=2", "progress=false", "training.local_epochs=1",
                       "privacy=none")  # fmt: skip
    results = run_experiment(cfg, output_dir=tmp_path,
                             client_app=tampering({0: "inflate", 1: "foreign", 2: "bomb"}))  # fmt: skip
    inflater, forger, bomber = (simulation_key(seed=0, role=f"client-{i}").address for i in range(3))
    assert [r["status"] for r in results["rounds"]] == ["finalized", "finalized"]
    for r in results["rounds"]:
        assert inflater not in r["revealed"] and len(r["revealed"]) == 6, r
        assert "CommitmentMismatch" in r["errors"][inflater]
        assert "not its own" in r["errors"][forger] and "'signature' is not 65 bytes" in r["errors"][bomber]
        assert forger not in r["attested"] and bomber not in r["attested"]
        assert set(r["gas_by_call"]) >= {"revealMany", "attestMany"} and "reveal" not in r["gas_by_call"]
    # the inflated count never reached the chain; its node was slashed for a missing reveal
    assert all(e["args"]["numExamples"] < 2**40 for e in results["events"] if e["event"] == "Revealed")
    assert [(e["args"]["participant"], e["args"]["reason"]) for e in results["events"]
            if e["event"] == "PenaltyRecorded"] == [(inflater, 0), (inflater, 0)]  # fmt: skip
    assert all(v.ok for v in verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store")))

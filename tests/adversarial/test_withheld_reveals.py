"""Attack: a relayer withholds honest reveals so that a colluding minority decides.

On the real contract, with real keys: five committee members commit, each hands its
reveal record to a relayer (protocol §2.4). The relayer colludes with two of them: it
publishes only the colluders' records, one honest member reveals on its own, and the
colluders vote for a forged pair whose outcome pays them and refuses the honest update.
Were the majority counted over the revealers (three), two votes would decide the round,
pay the colluders the round's pool and slash the honest revealer twice (refused update,
minority vote). The majority is counted over the committee members that committed
(§2.5), which no relayer can withhold: two of five never finalize, the round fails, the
honest revealer is not penalized, and the colluders gain nothing.
"""

from __future__ import annotations

import pytest
from support import Deployment, cid_of, with_members

from deai_flower.chain import DpParams, commitment_of, simulation_key, to_wad
from deai_flower.protocol.encoding import reveal_record
from deai_flower.protocol.outcome import encode_outcome

DP = DpParams.from_floats(noise_multiplier=1.1, sample_rate=0.1, steps=10, delta=1e-5, epsilon=1.0,
                          accountant="rdp")  # fmt: skip
STAKE, POOL = to_wad(2.0), to_wad(10.0)
FORGED, HONEST_RESULT = cid_of(66, 0x70), cid_of(77, 0x70)
COLLUDERS, SELF_REVEALER = (0, 1), 2


@pytest.fixture
def five(deployment: Deployment) -> Deployment:
    return with_members(deployment, 5)


def test_withheld_reveals_never_let_a_minority_decide(five: Deployment) -> None:
    d = five
    slashes = {"slashMissingReveal": to_wad(0.1), "slashRefused": to_wad(1.0), "slashMinority": to_wad(0.2)}
    run_id = d.create_run(quorum=2, minReveals=2, numRounds=2, stake=STAKE, rewardPool=POOL, **slashes)
    members = [d.as_client(i) for i in range(5)]
    for m in members:
        m.deposit(run_id, STAKE)
    round_id, _ = d.admin.open_round(run_id)
    records = {}
    for i, m in enumerate(members):
        salt = bytes([i + 1, round_id]) * 16
        records[m.account.address] = reveal_record(cid=cid_of(10 + i), num_examples=100, dp=DP, salt=salt)
        m.commit(run_id, round_id, commitment_of(chain_id=d.node.chain_id, contract=m.address, run_id=run_id,
                                                 round_id=round_id, participant=m.account.address,
                                                 cid=cid_of(10 + i), num_examples=100, dp=DP, salt=salt))  # fmt: skip
    addresses = list(records)
    colluders = [addresses[i] for i in COLLUDERS]

    # the relayer publishes the colluders' records only; one honest member reveals itself
    relayer = d.admin.as_account(simulation_key(seed=123, role="outsider"))
    relayer.reveal_many(run_id, round_id, {who: records[who] for who in colluders})
    members[SELF_REVEALER].reveal(run_id, round_id, cid=cid_of(10 + SELF_REVEALER), num_examples=100, dp=DP,
                                  salt=bytes([SELF_REVEALER + 1, round_id]) * 16)  # fmt: skip
    d.node.advance_to(int(d.admin.get_round(run_id, round_id)["revealDeadline"]), timeout=5)

    # the colluders' pair pays them and refuses the honest update; the honest revealer dissents
    revealers = [*colluders, addresses[SELF_REVEALER]]
    forged_outcome = encode_outcome(dict.fromkeys(colluders, 1), {addresses[SELF_REVEALER]: "invalid"})
    signed = [members[i].sign_vote(run_id, round_id, FORGED, forged_outcome) for i in COLLUDERS]
    relayer.attest_many(run_id, round_id, FORGED, forged_outcome, signed)
    assert d.admin.phase(run_id, round_id) == "attest"  # two votes of five committed decide nothing
    members[SELF_REVEALER].attest(run_id, round_id, HONEST_RESULT, encode_outcome(dict.fromkeys(revealers, 1), {}))
    state = d.admin.get_round(run_id, round_id)
    assert (state["revealCount"], state["committeeCommits"], state["votesNeeded"]) == (3, 5, 3)

    d.node.advance_to(int(d.admin.get_round(run_id, round_id)["attestDeadline"]), timeout=5)
    assert d.admin.phase(run_id, round_id) == "failed"
    for who in addresses:
        d.admin.settle(run_id, who)
    run = d.admin.get_run(run_id)
    assert run["finalizedRounds"] == 0 and bytes(run["modelCid"]) == cid_of(0)
    assert d.admin.get_incentives(run_id)["pool"] == POOL + 2 * to_wad(0.1)  # only the withheld paid: missing reveals
    accounts = {who: d.admin.get_account(run_id, who) for who in addresses}
    for who in [*colluders, addresses[SELF_REVEALER]]:
        assert (accounts[who]["stake"], accounts[who]["rewards"]) == (STAKE, 0), who
        assert d.admin.get_member(run_id, who)["penalties"] == 0, who
    # the withheld members owed their own reveal (§2.4: a participant whose record is not on
    # chain reveals itself); they are charged that duty only, never a minority vote
    penalties = [(e["args"]["participant"], e["args"]["reason"]) for e in d.admin.event_log()
                 if e["event"] == "PenaltyRecorded"]  # fmt: skip
    assert sorted(penalties) == sorted((addresses[i], 0) for i in (3, 4))

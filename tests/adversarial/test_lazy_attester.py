"""Attack: an eligible attester that never attests, and is paid as if it did.

Before protocol 0.7 the pool paid only the updates' scores: a committee member that
trained honestly but never fetched, aggregated or voted earned exactly what one that did
earned, and carried none of the gas or the minority-slash risk. Now each finalized
round's attester share (``incentives.attester_share_bps``, 10 % by default) is split
equally among the votes recorded for the finalized pair (protocol §2.7.4). Through the
whole app on the real contract: client 0 is in every round's committee, reveals honestly
and never answers an attest message; it earns no attester pay, every voting attester
does, its total is below theirs, and the books balance to the wei and verify.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import pytest
from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from support import compose_with

from deai_flower.apps import client_app
from deai_flower.chain import simulation_key
from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow

LAZY = 0


def never_attesting(lazy: int) -> Callable[[Message, Context], Message]:
    """The real ClientApp, except that participant ``lazy`` answers every attest message
    with an error: it never fetches, aggregates, signs or sends a vote."""

    def call(message: Message, context: Context) -> Message:
        if message.metadata.message_type == "train.attest" and int(context.node_config["partition-id"]) == lazy:
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "never attests"), reply_to=message)
        return client_app(message, context)

    return call


@pytest.mark.parametrize("relay", [True, False], ids=["relayed-votes", "own-votes"])
def test_an_eligible_attester_that_never_votes_earns_less_than_one_that_does(tmp_path: Path, relay: bool) -> None:
    cfg = compose_with("num_clients=5", "num_rounds=3", "progress=false", "training.local_epochs=1",
                       f"strategy.relay={str(relay).lower()}")  # fmt: skip
    results = run_experiment(cfg, output_dir=tmp_path, client_app=never_attesting(LAZY))

    lazy = simulation_key(seed=0, role=f"client-{LAZY}").address
    assert [r["status"] for r in results["rounds"]] == ["finalized"] * 3
    for r in results["rounds"]:  # eligible every round (revealed, committee = every revealer), never voted
        assert lazy in r["revealed"] and lazy not in r["attested"] and len(r["attested"]) >= 3
    incentives = results["incentives"]
    funds = incentives["participants"]
    voters = [who for who in funds if who != lazy]
    # relayed, every signed vote lands in the finalizing batch; sending their own, the votes
    # after the finalizing one land nowhere, and only the votes recorded are paid
    recorded = {who for r in results["rounds"] for who in r["attested"]}
    assert recorded == set(voters) if relay else len(recorded) >= 3
    assert funds[lazy]["attester_pay"] == 0
    assert all((funds[who]["attester_pay"] > 0) == (who in recorded) for who in voters), funds
    earned = {who: funds[who]["payout"] + funds[who]["attester_pay"] for who in funds}
    assert earned[lazy] < statistics.median(earned[who] for who in voters), earned
    # the attesters' part is what the votes for the finalized pairs earned, and no wei is lost
    assert incentives["attester_paid"] == sum(funds[who]["attester_pay"] for who in voters)
    assert incentives["conserved"]
    assert (incentives["paid"] + incentives["attester_paid"] + incentives["pool_left"] + incentives["pool_withdrawn"]
            == incentives["funded"] + incentives["slashed"])  # fmt: skip
    credited = [e["args"] for e in results["events"] if e["event"] == "AttesterRewardCredited"]
    assert lazy not in {c["attester"] for c in credited}
    verification = verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store"))
    assert verification.ok, [v.problems for v in verification] + verification.problems
    books = next(c for c in verification.checks if c.startswith("incentives: funded"))
    assert f"and {incentives['attester_paid']} to attesters" in books, books  # the line adds up as printed

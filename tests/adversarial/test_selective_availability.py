"""Attack: a revealer serves its blob to some attesters and not to others.

Through the whole app on the embedded chain and the local store: five silos, all in the
committee; one revealer's blob is hidden from two attesters while they judge the round
and present for everyone else. Had those two voted it "unavailable", their pair (another
aggregate, another outcome) would lose to the three who aggregated it, and they would be
slashed as a minority for what the revealer chose to show them. An attester that cannot
fetch every revealed blob abstains instead (protocol §2.5): the three finalize, nobody
honest is penalized, and `deai verify` accepts the run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message

from support import compose_with

from deai_flower.apps import client_app, participant_for
from deai_flower.chain import simulation_key
from deai_flower.participant.run_view import run_view
from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore, cid_from_bytes
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow

SELECTIVE, KEPT_IN_THE_DARK = 0, {1, 2}


def serving_selectively(store_dir: Path, hidden: dict[int, list[str]]) -> Callable[[Message, Context], Message]:
    """The real ClientApp, except that while the partitions in ``KEPT_IN_THE_DARK`` judge a
    round, the ``SELECTIVE`` revealer's blob is out of the store (attest calls take turns,
    so the others find it in place)."""
    turn = threading.Lock()
    selective = simulation_key(seed=0, role=f"client-{SELECTIVE}").address

    def call(message: Message, context: Context) -> Message:
        if message.metadata.message_type != "train.attest":
            return client_app(message, context)
        partition, config = int(context.node_config["partition-id"]), message.content["config"]
        with turn:
            if partition not in KEPT_IN_THE_DARK:
                return client_app(message, context)
            view = run_view(participant_for(message, context), str(config["contract"]), int(config["run-id"]))
            round_id = int(config["round"])
            (reveal,) = [r for r in view.contract.final_reveals(view.run_id, round_id) if r["participant"] == selective]
            cid = cid_from_bytes(bytes(reveal["cid"]))
            moved = [(path, path.with_name(path.name + ".away")) for path in store_dir.glob(f"*/{cid}")]
            for path, away in moved:
                path.rename(away)
            try:
                hidden.setdefault(round_id, []).append(view.account.address)
                return client_app(message, context)
            finally:
                for path, away in moved:
                    away.rename(path)

    return call


def test_a_blob_served_selectively_gets_no_honest_attester_slashed(tmp_path: Path) -> None:
    hidden: dict[int, list[str]] = {}
    # two rounds: round 1's minority votes, if any, are settled at the round-2 commits
    cfg = compose_with("num_clients=5", "num_rounds=2", "progress=false", "training.local_epochs=1")
    results = run_experiment(cfg, output_dir=tmp_path, client_app=serving_selectively(tmp_path / "store", hidden))

    dark = {simulation_key(seed=0, role=f"client-{i}").address for i in KEPT_IN_THE_DARK}
    selective = simulation_key(seed=0, role=f"client-{SELECTIVE}").address
    assert {r: set(who) for r, who in hidden.items()} == {1: dark, 2: dark}, "the blob was never hidden"
    assert [r["status"] for r in results["rounds"]] == ["finalized", "finalized"]
    penalties = [e["args"] for e in results["events"] if e["event"] == "PenaltyRecorded"]
    assert penalties == [], penalties  # nobody honest was slashed as a minority
    for r in results["rounds"]:
        # the two kept in the dark cast no vote; the three who fetched every blob decided
        assert dark.isdisjoint(r["attested"]) and len(r["attested"]) == 3, r["attested"]
        assert selective in r["excluded"]  # reported by those who could not fetch it
    # the update the majority fetched was aggregated (and paid) like any other
    paid = {(e["args"]["round"], e["args"]["participant"]) for e in results["events"] if e["event"] == "RewardCredited"}
    assert {(1, selective), (2, selective)} <= paid
    verification = verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store"))
    assert verification.ok, [v.problems for v in verification] + verification.problems

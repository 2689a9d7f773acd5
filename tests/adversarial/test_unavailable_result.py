"""Fault: the store loses a finalized result's blob after the chain finalized it.

Through the whole app on the embedded chain and the local store: right after round 1
finalizes, before the coordinator fetches the result, its blob is deleted from the store
(as an IPFS node may collect it). The result is the spec's rule over the round's
aggregated reveals, so the coordinator rebuilds it, checks it against the finalized CID
and stores it again; a silo that then misses it at its next commit rebuilds it too. When
an aggregated reveal's blob is gone as well, nothing can be rebuilt: the round reports
why, naming both CIDs, and no other model takes its place. Such a run cannot go on, and
its pool is not locked: after three failed attempts in a row anyone may cancel it
(protocol §2.1), the creator takes back the unspent pool and every participant its stake
and the rewards it earned.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message

from support import Deployment, compose_with

from unit.chain.test_contract import attest, commit, deadline, do_reveal, expect_revert

from deai_flower.apps import client_app
from deai_flower.apps import participant_for
from deai_flower.participant.run_view import run_view
from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore, cid_from_bytes
from deai_flower.verify import RunRecord, verify_run


# Attesters send their own attestations (no relay): the one whose vote finalizes round 1
# sees it in its own call, and deletes the blob before the coordinator fetches it.
RUN = ["num_clients=3", "num_rounds=2", "progress=false", "training.local_epochs=1", "strategy.relay=false"]


def _delete(store_dir: Path, cid: str) -> bool:
    """Remove blob ``cid`` from the local store in ``store_dir``; whether it was there."""
    found = list(store_dir.glob(f"*/{cid}"))
    for path in found:
        path.unlink()
    return bool(found)


def losing_blobs(store_dir: Path, *, lose_a_reveal: bool, lose_at_commit: bool,
                 lost: dict[str, Any]) -> Callable[[Message, Context], Message]:  # fmt: skip
    """The real ClientApp, except that once round 1 is finalized, every attester's call
    ends by deleting the finalized result's blob (and, with ``lose_a_reveal``, the blob of
    the first reveal, which the outcome aggregated), so it is gone when the coordinator
    fetches the result. With ``lose_at_commit`` the result's blob is deleted once more as
    the first round-2 commit starts, after the coordinator stored it again."""
    lock = threading.Lock()

    def call(message: Message, context: Context) -> Message:
        config = message.content["config"]
        action, round_id = message.metadata.message_type, int(config["round"]) if "round" in config else 0
        view = run_view(participant_for(message, context), str(config["contract"]), int(config["run-id"]))
        if lose_at_commit and action == "train.commit" and round_id == 2:
            with lock:
                if "at-commit" not in lost:
                    lost["at-commit"] = _delete(store_dir, lost["result"])
        reply = client_app(message, context)
        if action == "train.attest" and round_id == 1 and view.contract.phase(view.run_id, 1) == "finalized":
            with lock:  # the last attester to finish deletes after every attester's own put
                lost["result"] = cid_from_bytes(bytes(view.contract.get_run(view.run_id)["modelCid"]))
                lost["deleted"] = _delete(store_dir, lost["result"]) or lost.get("deleted", False)
                if lose_a_reveal:
                    first = view.contract.final_reveals(view.run_id, 1)[0]
                    lost["reveal"] = cid_from_bytes(bytes(first["cid"]))
                    _delete(store_dir, lost["reveal"])
        if action == "train.commit" and round_id == 2 and "at-commit" in lost:
            lost["back-after-commit"] = LocalStore(store_dir).has(lost["result"])
        return reply

    return call


@pytest.mark.slow
def test_a_lost_result_is_rebuilt_and_the_run_goes_on(tmp_path: Path) -> None:
    lost: dict[str, Any] = {}
    app = losing_blobs(tmp_path / "store", lose_a_reveal=False, lose_at_commit=True, lost=lost)
    results = run_experiment(compose_with(*RUN), output_dir=tmp_path, client_app=app)

    assert lost["deleted"], "the blob was never deleted: the test proves nothing"
    first, second, *_ = results["rounds"]
    assert [r["status"] for r in results["rounds"]] == ["finalized", "finalized"], first["reason"]
    finalized = [e["args"]["resultCid"] for e in results["events"] if e["event"] == "RoundFinalized"]
    assert first["result_cid"] == lost["result"] == cid_from_bytes(bytes.fromhex(finalized[0][2:]))
    assert results["global_model_cids"][1] == lost["result"]  # round 1's model is the finalized one
    assert lost["result"] in first["recovered"] and "rebuilt from the 3 aggregated reveals" in first["recovered"]
    assert second["recovered"] == ""
    # a silo missed it at its round-2 commit, rebuilt it and stored it again; every silo trained
    assert lost["at-commit"] and lost["back-after-commit"]
    assert second["errors"] == {} and len(second["committed"]) == 3
    verification = verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store"))
    assert verification.ok, [v.problems for v in verification] + verification.problems


@pytest.mark.slow
def test_a_result_that_cannot_be_rebuilt_fails_its_round_with_the_reason(tmp_path: Path) -> None:
    lost: dict[str, Any] = {}
    app = losing_blobs(tmp_path / "store", lose_a_reveal=True, lose_at_commit=False, lost=lost)
    results = run_experiment(compose_with(*RUN, "strategy.max_failed_rounds=1"), output_dir=tmp_path,
                             client_app=app)  # fmt: skip

    first, *later = results["rounds"]
    assert first["status"] == "failed" and first["recovered"] == ""
    assert lost["result"] in first["reason"] and lost["reveal"] in first["reason"], first["reason"]
    assert "cannot be rebuilt" in first["reason"] and "Traceback" not in first["reason"]
    assert results["global_model_cids"] == [first["model_cid"]]  # no other model took its place
    # the chain's next round starts from the lost model: the silos cannot rebuild it either
    assert later and all(r["status"] == "failed" for r in later)
    assert any(lost["result"] in reason for r in later for reason in r["errors"].values())
    verification = verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store"))
    assert any(lost["reveal"] in p for p in verification[0].problems)



def test_a_run_that_cannot_go_on_is_cancelled_and_its_pool_returned(deployment: Deployment) -> None:
    """On the real contract: round 1 finalizes and pays a third of the pool; its result is
    then lost, so nobody can commit to any later attempt. Three failed attempts in a row
    let anyone cancel the run; nothing stays locked."""
    d, stake, pool = deployment, 10**18, 6 * 10**18 + 670
    run_id = d.create_run(numRounds=3, stake=stake, rewardPool=pool, slashMissingReveal=10**17)
    for i in range(3):
        d.as_client(i).deposit(run_id, stake)
    round_id, _ = d.admin.open_round(run_id)
    reveals = [commit(d, i, run_id, round_id) for i in range(3)]
    for i, r in enumerate(reveals):
        do_reveal(d, i, run_id, round_id, r)
    d.node.advance_to(deadline(d, run_id, round_id, "revealDeadline"), timeout=5)
    for i in range(2):
        attest(d.as_client(i), run_id, round_id, bytes([1, 0x55, 0x12, 0x20]) + b"\x55" * 32)
    earned = [d.admin.get_account(run_id, c.address)["rewards"] for c in d.clients[:3]]
    assert all(earned) and d.admin.get_incentives(run_id)["pool"] == pool - sum(earned)

    outsider = d.admin.as_account(d.clients[3])  # not registered, not the creator: anyone
    round_id = int(d.admin.get_run(run_id)["currentRound"])  # round 2, opened by the finalization
    for attempt in (1, 2, 3):  # the model is gone: nobody commits, every attempt fails
        if attempt > 1:
            round_id, _ = d.admin.open_round(run_id)
        d.node.advance_to(deadline(d, run_id, round_id, "commitDeadline"), timeout=5)
        assert d.admin.phase(run_id, round_id) == "failed"
        if attempt < 3:
            with expect_revert("CancelTooEarly"):
                outsider.cancel_run(run_id)
            with expect_revert("RunNotComplete"):
                d.admin.withdraw_pool(run_id)

    tx = outsider.cancel_run(run_id)
    left = pool - sum(earned)
    assert [(e["event"], e["args"]["round"], e["args"]["pool"]) for e in tx.events] == [("RunCancelled", 4, left)]
    assert d.admin.get_run(run_id)["cancelled"]
    with expect_revert("RunIsCancelled"):
        d.admin.open_round(run_id)
    with expect_revert("RunIsCancelled"):
        outsider.cancel_run(run_id)
    before = d.admin.balance(d.admin.account.address)
    tx = d.admin.withdraw_pool(run_id)
    assert tx.events[0]["args"]["amount"] == left and d.admin.balance(d.admin.account.address) > before
    for i, c in enumerate(d.clients[:3]):
        member = d.as_client(i)
        assert member.withdraw_rewards(run_id).events[0]["args"]["amount"] == earned[i]
        assert member.withdraw_stake(run_id).events[0]["args"]["amount"] == stake
    assert d.admin.balance(d.admin.address) == 0  # the contract holds nothing of the run any more

"""A round trained but never revealed is rolled back from the participant's privacy ledger.

DP covers released outputs only, and attesters and ``deai verify`` recompute each
participant's ε from its revealed history on chain: a ledger still charged with an
update that was never revealed makes every later reveal claim a larger ε than the chain
gives (``deai verify``: "claims ε=..., its revealed parameters give ε=..."), and spends
budget on nothing. A revealed round is never rolled back, even when its round failed;
nor is a commitment whose reveal may still come.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context
from support import Deployment

from deai_flower.chain import DpParams
from deai_flower.errors import ChainError
from deai_flower.participant import Participant, handle_attest, handle_commit, handle_reveal
from deai_flower.privacy import PrivacyLedger, ledger_path, load_ledger
from deai_flower.protocol.encoding import from_wad
from deai_flower.protocol.judgment import dp_claim_problem
from deai_flower.storage import LocalStore, cid_from_bytes
from unit.participant._support import call, context, create_run, message, small_spec

class Run:
    """A fresh run of ``small_spec(num_rounds=3)``, its participants with their own contexts."""

    def __init__(self, d: Deployment, store: LocalStore, participants: list[Participant], *,
                 ledgers: Path | None = None) -> None:  # fmt: skip
        self.d = d
        self.participants = [dataclasses.replace(p, ledger_dir=ledgers) for p in participants]
        self.spec = small_spec(rounds=dataclasses.replace(small_spec().rounds, num_rounds=3))
        self.run_id = create_run(d, store, self.spec)
        self.round_id, _ = d.admin.open_round(self.run_id)
        self.contexts = [context(node_id=10 + i) for i in range(len(participants))]
        self.ledgers = ledgers

    def send(self, handler: Any, i: int, message_type: str, *, ctx: Context | None = None, **extra: Any) -> Any:
        p = self.participants[i]
        config = {"contract": self.d.admin.address, "run-id": self.run_id, "chain-url": p.chain_url,
                  "store": p.store_location, "round": self.round_id, **extra}  # fmt: skip
        reply = call(handler, p, message(message_type, config), ctx or self.contexts[i], node_id=10 + i)
        assert not reply.has_error(), reply.error
        return reply

    def commit(self, i: int, *, ctx: Context | None = None) -> Any:
        model_cid = cid_from_bytes(bytes(self.d.admin.get_run(self.run_id)["modelCid"]))
        return self.send(handle_commit, i, "train.commit", ctx=ctx, **{"model-cid": model_cid})

    def reveal(self, i: int) -> None:
        assert self.send(handle_reveal, i, "train.reveal").content["status"]["state"] == "revealed"

    def finish_round(self, revealers: list[int]) -> str:
        """After the reveals: pass the reveal deadline, let two revealers attest (when
        enough revealed) or the round lapse; then open the next round. Its final phase."""
        admin, state = self.d.admin, self.d.admin.get_round(self.run_id, self.round_id)
        self.d.node.advance_to(int(state["revealDeadline"]), timeout=1)
        if len(revealers) >= self.spec.rounds.min_reveals:
            for i in revealers[:2]:
                self.send(handle_attest, i, "train.attest")
        else:
            self.d.node.advance_to(int(state["attestDeadline"]), timeout=1)
        phase = admin.phase(self.run_id, self.round_id)
        run = admin.get_run(self.run_id)
        self.round_id = int(run["currentRound"]) if phase == "finalized" else admin.open_round(self.run_id)[0]
        return phase

    def ledger(self, i: int) -> PrivacyLedger:
        return PrivacyLedger.from_record(dict(self.contexts[i].state["privacy-ledger"]))

    def ledger_file(self, i: int) -> PrivacyLedger | None:
        assert self.ledgers is not None
        identity = {"participant": self.participants[i].address, "chain_id": self.d.node.chain_id,
                    "contract": self.d.admin.address, "run_id": self.run_id}  # fmt: skip
        return load_ledger(ledger_path(self.ledgers, **identity), identity=identity)  # type: ignore[arg-type]

    def revealed_history(self, i: int) -> list[tuple[float, float, int]]:
        """Participant ``i``'s revealed (σ, q, steps) in every round so far, from the chain."""
        address = self.participants[i].address
        return [(from_wad(r["dp"]["noiseMultiplierWad"]), from_wad(r["dp"]["sampleRateWad"]), int(r["dp"]["steps"]))
                for round_id in range(1, self.round_id + 1)
                for r in self.d.admin.revealed(self.run_id, round_id, from_block=0)
                if r["participant"] == address]  # fmt: skip

    def claim_problem(self, reply: Any, i: int) -> str | None:
        """What attesters would say of the ε this commit's reveal will claim, given the chain."""
        metrics = reply.content["metrics"]
        dp = DpParams.from_floats(noise_multiplier=float(metrics["noise-multiplier"]),
                                  sample_rate=float(metrics["sample-rate"]), steps=int(metrics["steps"]),
                                  delta=self.spec.privacy.delta, epsilon=float(metrics["epsilon"]),
                                  accountant=self.spec.privacy.accountant)  # fmt: skip
        # Attesters reject an understated ε; deai verify any ε but the recomputed one.
        history = self.revealed_history(i)
        recomputed = PrivacyLedger(history=[*history, (float(metrics["noise-multiplier"]),
                                                       float(metrics["sample-rate"]), int(metrics["steps"]))]
                                   ).epsilon(self.spec.privacy.delta, self.spec.privacy.accountant)  # fmt: skip
        if not math.isclose(float(metrics["epsilon"]), recomputed, rel_tol=1e-6):
            return f"claims ε={float(metrics['epsilon']):.6f}, its revealed history gives ε={recomputed:.6f}"
        return dp_claim_problem(self.spec, num_examples=int(metrics["num-examples"]), dp=dp, history=history)


def test_an_update_never_revealed_is_rolled_back_at_the_next_commit(
    deployment: Deployment, store: LocalStore, participants: list[Participant], tmp_path: Path
) -> None:
    """Client 2 commits round 1 but its reveal never comes (the round finalizes with the
    other two): at its round-2 commit the round-1 charge is gone, in memory and on disk;
    the revealers keep theirs, and every round-2 claim is the chain's ε."""
    r = Run(deployment, store, participants, ledgers=tmp_path / "ledgers")
    for i in range(3):
        r.commit(i)
    assert [len(r.ledger(i).history) for i in range(3)] == [1, 1, 1]  # training charges before the commit
    r.reveal(0)
    r.reveal(1)
    assert r.finish_round([0, 1]) == "finalized"
    replies = [r.commit(i) for i in range(3)]
    assert [len(r.ledger(i).history) for i in range(3)] == [2, 2, 1]
    assert len(r.ledger_file(2).history) == 1  # the file too
    assert [r.claim_problem(reply, i) for i, reply in enumerate(replies)] == [None, None, None]
    # client 2's abandoned staged copy of round 1 is gone; its round-2 copy waits for the reveal
    staging = Path(store.describe()["location"]) / ".staging"
    staged = Path(str(r.contexts[2].state["pending-reveal"]["staged"])).name
    assert [p.name for p in staging.iterdir()].count(staged) == 1
    assert len(list(staging.iterdir())) == 3


def test_a_restarted_participant_rolls_back_the_round_its_coordinator_abandoned(
    deployment: Deployment, store: LocalStore, participants: list[Participant], tmp_path: Path
) -> None:
    """Everyone revealed round 1; round 2 is trained and committed, then the whole
    simulation stops (Ctrl-C) before its reveal: the participants restart with only their
    ledger files, each charged for two rounds, one of them never revealed. After the
    resume's lapsed round, their next commit is charged for round 1 and itself only."""
    r = Run(deployment, store, participants, ledgers=tmp_path / "ledgers")
    for i in range(3):
        r.commit(i)
    for i in range(3):
        r.reveal(i)
    assert r.finish_round([0, 1, 2]) == "finalized"
    for i in range(3):
        r.commit(i)
    assert [len(r.ledger_file(i).history) for i in range(3)] == [2, 2, 2]
    assert r.finish_round([]) == "failed"  # the resumed coordinator lets it lapse
    restarted = [context(node_id=10 + i) for i in range(3)]  # nothing in memory survived
    replies = [r.commit(i, ctx=restarted[i]) for i in range(3)]
    assert [len(r.ledger_file(i).history) for i in range(3)] == [2, 2, 2]
    assert all(r.claim_problem(reply, i) is None for i, reply in enumerate(replies))


def test_a_revealed_round_stays_charged_even_when_the_round_failed(
    deployment: Deployment, store: LocalStore, participants: list[Participant]
) -> None:
    """Only client 0 reveals round 1, which fails for want of reveals: its update was
    released and stays charged; clients 1 and 2 never released theirs."""
    r = Run(deployment, store, participants)
    for i in range(3):
        r.commit(i)
    r.reveal(0)
    assert r.finish_round([0]) == "failed"
    replies = [r.commit(i) for i in range(3)]
    assert [len(r.ledger(i).history) for i in range(3)] == [2, 1, 1]
    assert all(r.claim_problem(reply, i) is None for i, reply in enumerate(replies))


def test_a_commitment_of_the_open_round_is_not_rolled_back(
    deployment: Deployment, store: LocalStore, participants: list[Participant], tmp_path: Path
) -> None:
    """Its reveal may still come: client 0, asked again in the same round by a restarted
    node that kept its ledger file, keeps that charge (the contract then refuses the
    second commitment, whose training is rolled back at the next round instead)."""
    r = Run(deployment, store, participants, ledgers=tmp_path / "ledgers")
    for i in range(3):
        r.commit(i)
    with pytest.raises(ChainError):
        r.commit(0, ctx=context(node_id=10))
    assert len(r.ledger_file(0).history) == 2  # the commitment's round, and the refused one's
    for i in range(3):
        r.reveal(i)
    assert r.finish_round([0, 1, 2]) == "finalized"
    reply = r.commit(0)
    assert len(r.ledger(0).history) == len(r.ledger_file(0).history) == 2
    assert r.claim_problem(reply, 0) is None


def test_a_ledger_charged_on_another_chain_is_never_rolled_back(
    deployment: Deployment, store: LocalStore, participants: list[Participant], tmp_path: Path
) -> None:
    """A ledger file carried over from another chain with the same contract address and
    run id (a restarted development node, a rerun of a seeded simulation): its rounds
    were released there, whatever this chain shows, and stay charged."""
    r = Run(deployment, store, participants, ledgers=tmp_path / "ledgers")
    for i in range(3):
        r.commit(i)
    path = next((tmp_path / "ledgers").glob(f"*{participants[0].address.lower()}.json"))
    document = json.loads(path.read_text())
    assert [u["round"] for u in document["unconfirmed"]] == [1]
    document["unconfirmed"][0]["block_hash"] = "ab" * 32  # as if opened on another chain
    path.write_text(json.dumps(document))
    r.reveal(1)
    r.reveal(2)
    assert r.finish_round([1, 2]) == "finalized"
    r.commit(0, ctx=context(node_id=10))  # restarted, with only its ledger file
    assert len(r.ledger_file(0).history) == 2
    assert [u.round for u in r.ledger_file(0).unconfirmed] == [2]


def test_a_published_update_stays_charged_when_its_reveal_transaction_fails(
    deployment: Deployment, store: LocalStore, participants: list[Participant], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Client 2 publishes its round-1 blob, then its reveal transaction fails for good: the
    blob is readable under its CID, so the update is released and its charge must stand
    at the next commit even though the chain holds no reveal of it."""
    from deai_flower.chain import RoundsContract

    r = Run(deployment, store, participants, ledgers=tmp_path / "ledgers")
    for i in range(3):
        r.commit(i)
    r.reveal(0)
    r.reveal(1)
    blob_cid = str(r.contexts[2].state["pending-reveal"]["cid"])

    def failing_reveal(*args: Any, **kwargs: Any) -> Any:
        raise ChainError("reveal failed: node gone")

    with monkeypatch.context() as patched:
        patched.setattr(RoundsContract, "reveal", failing_reveal)
        with pytest.raises(ChainError):
            r.send(handle_reveal, 2, "train.reveal")
    assert store.has(blob_cid)  # published: released
    assert r.finish_round([0, 1]) == "finalized"
    r.commit(2)
    assert len(r.ledger(2).history) == 2  # round 1 kept, round 2 added
    assert len(r.ledger_file(2).history) == 2

"""One round by hand on the embedded chain: commit, reveal and attest as the spec says,
with the behaviours a round depends on (declines, staged reveals, exclusions, late attesters)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context
from support import Deployment

from deai_flower.errors import ProtocolError
from deai_flower.participant import Participant, handle_attest, handle_commit, handle_reveal
from deai_flower.participant.run_view import run_view
from deai_flower.privacy import ledger_path
from deai_flower.protocol.spec import PrivacySpec
from deai_flower.storage import LocalStore, cid_from_bytes
from unit.participant._support import call, context, create_run, message, small_spec


class Round:
    """Round 1 of a fresh run of ``spec``, its participants each with their own context."""

    def __init__(self, d: Deployment, store: LocalStore, participants: list[Participant], **spec_changes: Any):
        self.d, self.participants = d, participants
        self.run_id = create_run(d, store, small_spec(**spec_changes))
        self.round_id, _ = d.admin.open_round(self.run_id)
        self.contexts = [context(node_id=10 + i) for i in range(len(participants))]
        p = participants[0]
        self.locator = {"contract": d.admin.address, "run-id": self.run_id, "chain-url": p.chain_url,
                        "store": p.store_location, "round": self.round_id}  # fmt: skip

    @property
    def model_cid(self) -> str:
        return cid_from_bytes(bytes(self.d.admin.get_run(self.run_id)["modelCid"]))

    def send(self, handler: Any, i: int, message_type: str, *, ctx: Context | None = None, **extra: Any) -> dict:
        reply = call(handler, self.participants[i], message(message_type, {**self.locator, **extra}),
                     ctx or self.contexts[i], node_id=10 + i)  # fmt: skip
        assert not reply.has_error(), reply.error
        return dict(reply.content["status"])

    def commit(self, i: int, **kwargs: Any) -> dict:
        return self.send(handle_commit, i, "train.commit", **{"model-cid": self.model_cid, **kwargs})

    def reveal(self, i: int) -> dict:
        return self.send(handle_reveal, i, "train.reveal")

    def attest(self, i: int) -> dict:
        return self.send(handle_attest, i, "train.attest")


def test_a_round_finalizes_with_the_specs_rule_and_a_late_attester_is_told_so(
    deployment: Deployment, store: LocalStore, participants: list[Participant]
) -> None:
    r = Round(deployment, store, participants)
    initial = r.model_cid
    commits = [r.commit(i) for i in range(3)]
    assert [c["state"] for c in commits] == ["committed"] * 3
    assert [c["address"] for c in commits] == [p.address for p in participants]
    assert all(not store.has(c["cid"]) for c in commits)  # nothing published before the reveal
    assert deployment.admin.phase(r.run_id, r.round_id) == "reveal"
    assert [r.reveal(i)["state"] for i in range(3)] == ["revealed"] * 3
    assert all(store.has(c["cid"]) for c in commits)
    first, second = r.attest(0), r.attest(1)
    assert first["state"] == second["state"] == "attested" and first["cid"] == second["cid"]
    assert first["excluded"] == [] and first["excluded-reasons"] == []
    assert deployment.admin.phase(r.run_id, r.round_id) == "finalized"
    assert r.model_cid == first["cid"] != initial
    assert r.attest(2) == {"state": "late", "address": participants[2].address}


def test_a_model_other_than_the_chains_is_refused(
    deployment: Deployment, store: LocalStore, participants: list[Participant]
) -> None:
    r = Round(deployment, store, participants)
    decoy = store.put(b"not the global model")
    with pytest.raises(ProtocolError, match=f"coordinator announced model {decoy} but the chain records"):
        call(handle_commit, participants[0], message("train.commit", {**r.locator, "model-cid": decoy}),
             r.contexts[0])  # fmt: skip


def test_a_reveal_without_a_commit_is_refused(
    deployment: Deployment, store: LocalStore, participants: list[Participant]
) -> None:
    r = Round(deployment, store, participants)
    with pytest.raises(ProtocolError, match=f"nothing committed for round 1 of run {r.run_id}"):
        call(handle_reveal, participants[0], message("train.reveal", r.locator), r.contexts[0])


@pytest.mark.parametrize("kind", ["restart", "lost-staging"])
def test_a_participant_whose_staged_update_is_gone_stores_it_again(
    kind: str, deployment: Deployment, store: LocalStore, participants: list[Participant]
) -> None:
    r = Round(deployment, store, participants)
    cids = [r.commit(i)["cid"] for i in range(3)]
    view = run_view(participants[2], deployment.admin.address, r.run_id)
    if kind == "restart":  # its process restarted: the state survived, the store handle did not
        view.store = LocalStore(store.describe()["location"])
    else:
        Path(str(r.contexts[2].state["pending-reveal"]["staged"])).unlink()
    assert [r.reveal(i)["state"] for i in range(3)] == ["revealed"] * 3
    assert store.has(cids[2])
    assert list((Path(store.describe()["location"]) / ".staging").iterdir()) == []


def test_attesters_abstain_when_a_revealed_blob_is_unavailable(
    deployment: Deployment, store: LocalStore, participants: list[Participant]
) -> None:
    """A blob its revealer may have served others is no verdict an attester can share with
    them: it casts no vote (protocol §2.5), naming the blob it missed."""
    r = Round(deployment, store, participants)
    cids = [r.commit(i)["cid"] for i in range(3)]
    for i in range(3):
        r.reveal(i)
    (blob,) = Path(store.describe()["location"]).glob(f"*/{cids[2]}")
    blob.unlink()  # revealed, then gone from the store
    first, second = r.attest(0), r.attest(1)
    assert first["state"] == second["state"] == "abstained"
    assert first["excluded"] == second["excluded"] == [participants[2].address]
    assert first["excluded-verdicts"] == ["unavailable"] and cids[2] in first["excluded-reasons"][0]
    assert "cid" not in first


def test_a_participant_past_its_budget_declines_even_after_a_restart(
    deployment: Deployment, store: LocalStore, participants: list[Participant], tmp_path: Path
) -> None:
    """One planned round spends the whole budget: a second training is declined before it
    starts, also by a restarted node that kept only its ledger directory."""
    ledgers = tmp_path / "ledgers"
    r = Round(deployment, store, [dataclasses.replace(p, ledger_dir=ledgers) for p in participants],
              rounds=dataclasses.replace(small_spec().rounds, num_rounds=1),
              privacy=PrivacySpec(epsilon=2.0, delta=1e-5, max_grad_norm=1.0, accountant="rdp"))  # fmt: skip
    assert r.commit(0)["state"] == "committed"
    view = run_view(r.participants[0], deployment.admin.address, r.run_id)
    assert ledger_path(ledgers, chain_id=deployment.node.chain_id, contract=deployment.admin.address,
                       run_id=r.run_id, participant=participants[0].address).is_file()  # fmt: skip
    assert view.privacy_settings().state_dir == str(ledgers)
    for ctx in (r.contexts[0], context(node_id=10)):  # the same node, then restarted
        declined = r.send(handle_commit, 0, "train.commit", ctx=ctx, **{"model-cid": r.model_cid})
        assert declined["state"] == "declined" and "budget" in declined["reason"]


def test_a_message_without_its_run_is_refused(participants: list[Participant]) -> None:
    with pytest.raises(ProtocolError, match="lacks contract, run-id"):
        call(handle_commit, participants[0], message("train.commit", {"round": 1, "chain-url": "x", "store": "y"}),
             context())  # fmt: skip


"""Federated evaluation by hand: a silo scores the chain's model on its own held-out data."""

from __future__ import annotations

import dataclasses

import pytest
from support import Deployment

from deai_flower.errors import ProtocolError
from deai_flower.participant import LocalData, Participant, handle_evaluate
from deai_flower.storage import LocalStore, cid_from_bytes
from unit.participant._support import call, context, create_run, local_data, message, small_spec


def _ask(participant: Participant, locator: dict, **extra: object) -> tuple[dict, dict]:
    reply = call(handle_evaluate, participant, message("evaluate", {**locator, **extra}), context(node_id=10),
                 node_id=10)  # fmt: skip
    if reply.has_error():
        raise AssertionError(reply.error)
    return dict(reply.content["status"]), dict(reply.content["metrics"])


def test_a_silo_scores_the_chains_model_on_its_held_out_data_only(
    deployment: Deployment, store: LocalStore, participants: list[Participant]
) -> None:
    run_id = create_run(deployment, store, small_spec())
    model_cid = cid_from_bytes(bytes(deployment.admin.get_run(run_id)["modelCid"]))
    p = participants[0]
    locator = {"contract": deployment.admin.address, "run-id": run_id, "chain-url": p.chain_url,
               "store": p.store_location, "round": 0}  # fmt: skip
    held = local_data(99, n=20)
    silo = dataclasses.replace(p, data=LocalData(p.data.x, p.data.y, held.x, held.y),  # type: ignore[union-attr]
                               _data_cache={})
    status, metrics = _ask(silo, locator, **{"model-cid": model_cid})
    assert status["state"] == "evaluated" and status["address"] == p.address and status["model-cid"] == model_cid
    assert metrics["num-examples"] == 20 and 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
    # a participant without held-out data says so
    status, metrics = _ask(p, locator, **{"model-cid": model_cid})
    assert status["state"] == "no-eval-data" and metrics["num-examples"] == 0
    # a model the chain does not record is not evaluated
    with pytest.raises(ProtocolError, match="the chain records"):
        call(handle_evaluate, silo, message("evaluate", {**locator, "model-cid": "bafkreiother"}), context())

"""Fault: the store loses the global model after the coordinator fetched it.

Through the whole app on the embedded chain and the local store: round 1 finalizes, the
coordinator fetches its result, and then, as round 2 starts, the store loses that blob
and the blob of a reveal the result aggregated, so nobody can fetch or rebuild the model
the chain names. Before, every later attempt failed and the run halted. Now the
coordinator, which holds the model (checked against the CID the chain finalized), puts
it back when it opens the next attempt, and the run goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message
from support import compose_with

from deai_flower.apps import client_app
from deai_flower.apps import participant_for
from deai_flower.participant.run_view import run_view
from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore, cid_from_bytes

pytestmark = pytest.mark.slow

RUN = ["num_clients=3", "num_rounds=2", "progress=false", "training.local_epochs=1", "privacy=none",
       "strategy.max_failed_rounds=2"]  # fmt: skip


def losing_the_model(store_dir: Path, lost: dict[str, Any]) -> Callable[[Message, Context], Message]:
    """The real ClientApp, except that the first round-2 commit starts by deleting the
    chain's global model (round 1's result) and the first reveal it aggregated."""
    lock = threading.Lock()

    def call(message: Message, context: Context) -> Message:
        config = message.content["config"]
        if message.metadata.message_type == "train.commit" and int(config["round"]) >= 2:
            view = run_view(participant_for(message, context), str(config["contract"]), int(config["run-id"]))
            with lock:
                if not lost:
                    lost["model"] = cid_from_bytes(bytes(view.contract.get_run(view.run_id)["modelCid"]))
                    lost["reveal"] = cid_from_bytes(bytes(view.contract.final_reveals(view.run_id, 1)[0]["cid"]))
                    for cid in (lost["model"], lost["reveal"]):
                        for path in store_dir.glob(f"*/{cid}"):
                            path.unlink()
                    lost["gone"] = not LocalStore(store_dir).has(lost["model"])
        return client_app(message, context)

    return call


def test_the_coordinator_puts_back_the_model_it_holds(tmp_path: Path) -> None:
    lost: dict[str, Any] = {}
    results = run_experiment(compose_with(*RUN), output_dir=tmp_path,
                             client_app=losing_the_model(tmp_path / "store", lost))  # fmt: skip

    assert lost.get("gone"), "the model was never deleted: the test proves nothing"
    rounds = results["rounds"]
    first, lapsed, *_ = rounds
    assert first["status"] == "finalized" and first["result_cid"] == lost["model"]
    # the attempt the loss hit fails (no node could fetch or rebuild the model) ...
    assert lapsed["status"] == "failed" and lapsed["model_cid"] == lost["model"]
    assert any(lost["model"] in reason for reason in lapsed["errors"].values()), lapsed["errors"]
    # ... and the next one trains on the copy the coordinator put back
    assert [r["status"] for r in rounds].count("finalized") == 2, [r["reason"] for r in rounds]
    assert rounds[-1]["model_cid"] == lost["model"] and rounds[-1]["errors"] == {}
    assert LocalStore(tmp_path / "store").has(lost["model"])

"""A simulation registers its participants in batches, in client order, each with its partition's bound."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import compose_with

from deai_flower.chain import simulation_key
from deai_flower.simulation import harness


def test_participants_are_registered_in_batches_in_client_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "_REGISTER_BATCH", 2)  # 5 clients: batches of 2, 2 and 1
    cfg = compose_with("num_clients=5", "progress=false")
    prepared = harness.prepare_run(cfg, tmp_path)
    clients = [simulation_key(seed=int(cfg.seed), role=harness.client_role(i)).address for i in range(5)]
    assert prepared.contract.members() == clients
    registered = [e for e in prepared.contract.event_log(from_block=prepared.first_block)
                  if e["event"] == "ParticipantRegistered"]  # fmt: skip
    assert len({e["tx"] for e in registered}) == 3
    bounds = [prepared.contract.registry_entry(a)["maxExamples"] for a in clients]
    assert sum(bounds) == len(prepared.split.y_train) and all(b > 0 for b in bounds)

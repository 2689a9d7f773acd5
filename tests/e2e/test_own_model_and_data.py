"""Bring your own model and data: a model class and a loader defined here, named by
``_target_``, run the whole protocol on the real contract and store, and verify. The
experiment wrote the spec, so its simulated participants build the model it names; a
verifier builds it (for loss scores) only when told to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from support import compose_with

from deai_flower.protocol.spec import RunSpec, SpecError, allowed_models, spec_cid
from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow

#: This module as the tests' import path names it (``tests`` is on pytest's pythonpath).
HERE = "e2e.test_own_model_and_data"


class TwoLayerNet(nn.Module):
    """A user's model: takes only what it needs from the data schema."""

    def __init__(self, num_features: int, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(num_features, width), nn.Tanh(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def load_blobs(*, rows: int = 600, features: int = 6, seed: int = 7) -> dict[str, object]:
    """A user's loader: three Gaussian blobs, returned as the documented mapping."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=rows)
    centers = rng.normal(0, 3, size=(3, features))
    x = (centers[y] + rng.normal(0, 1, size=(rows, features))).astype(np.float32)
    return {"x": x, "y": y.astype(np.int64), "input_shape": (features,)}


def test_a_model_and_loader_from_a_test_module_run_the_protocol_and_verify(tmp_path: Path) -> None:
    cfg = compose_with(
        "num_clients=3", "num_rounds=2", "progress=false", "training.local_epochs=2", "training.batch_size=16",
        f"model._target_={HERE}.TwoLayerNet", "~model.hidden", "~model.activation", "~model.pool", "+model.width=12",
        f"dataset.loader._target_={HERE}.load_blobs", "+dataset.loader.rows=450", "incentives.score=loss",
        "incentives.validation_size=60",
    )
    results = run_experiment(cfg, output_dir=tmp_path)
    assert [r["status"] for r in results["rounds"]] == ["finalized", "finalized"]
    assert results["rounds"][-1]["accuracy"] > 0.6  # three separable blobs: well above chance (1/3)
    store = LocalStore(tmp_path / results["store"]["root"])
    spec = RunSpec.from_bytes(store.get(results["spec_cid"]))
    assert spec_cid(spec.digest()) == results["spec_cid"]
    assert (spec.model.target, spec.model.args) == (f"{HERE}.TwoLayerNet", {"width": 12})
    assert (spec.data.num_features, spec.data.num_classes, spec.data.input_shape) == (6, 3, (6,))
    record = RunRecord.from_output_dir(tmp_path)
    verification = verify_run(record, store, models=allowed_models([f"{HERE}.TwoLayerNet"]))
    assert verification.ok, (verification.problems, [v.problems for v in verification.rounds])
    assert all("loss scores recomputed" in " ".join(v.checks) for v in verification.rounds)
    with pytest.raises(SpecError, match=f"model {HERE}.TwoLayerNet is not one this party builds .*--allow-model"):
        verify_run(record, store)  # a verifier that did not allow it builds none of its code

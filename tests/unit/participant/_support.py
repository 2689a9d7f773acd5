"""Helpers of the participant tests: a small run spec, data, messages and contexts."""

from __future__ import annotations

import dataclasses
from typing import Any
from uuid import uuid4

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from support import Deployment

from deai_flower.flower_compat import task_identity
from deai_flower.models import get_arrays, instantiate_model
from deai_flower.participant import LocalData
from deai_flower.protocol.spec import (
    DataSchema,
    ModelSpec,
    PrivacySpec,
    RoundsSpec,
    RuleSpec,
    RunSpec,
    TrainingSpec,
)
from deai_flower.storage import LocalStore, cid_to_bytes, encode_arrays

SCHEMA = DataSchema(num_features=4, num_classes=3, input_shape=(4,))


def small_spec(**changes: Any) -> RunSpec:
    spec = RunSpec(
        model=ModelSpec("deai_flower.models.mlp", {"hidden": [8]}),
        data=SCHEMA,
        rule=RuleSpec("fedavg", {}),
        privacy=PrivacySpec(epsilon=8.0, delta=1e-5, max_grad_norm=1.0, accountant="rdp"),
        training=TrainingSpec(local_epochs=1, batch_size=8, learning_rate=0.1),
        rounds=RoundsSpec(num_rounds=2, commit_s=100, reveal_s=100, attest_s=100, sample_fraction=1.0, quorum=2,
                          min_reveals=2, committee_size=3),  # fmt: skip
        max_blob_bytes=2**20,
    )
    return dataclasses.replace(spec, **changes)


def local_data(seed: int, n: int = 40) -> LocalData:
    rng = np.random.default_rng(seed)
    return LocalData(rng.normal(size=(n, SCHEMA.num_features)).astype(np.float32),
                     rng.integers(0, SCHEMA.num_classes, size=n))  # fmt: skip


def create_run(d: Deployment, store: LocalStore, spec: RunSpec, *, stored: RunSpec | None = None,
               initial_model: bool = True) -> int:  # fmt: skip
    """Create a run of ``spec`` (its digest on chain); the store holds ``stored`` (default:
    the same spec) and, with ``initial_model``, the spec's model built with seed 0."""
    store.put((stored or spec).to_bytes())
    blob = encode_arrays(get_arrays(instantiate_model(spec.model, spec.data, seed=0))) if initial_model else b"none"
    initial = store.put(blob)
    return d.create_run(**spec.run_params(initial_model_cid=cid_to_bytes(initial), code_hash=b"\x02" * 32))


def message(message_type: str, config: dict[str, Any], *, node_id: int = 7) -> Message:
    with task_identity(run_id=1, node_id=0):
        msg = Message(RecordDict({"config": ConfigRecord(config)}), node_id, message_type, group_id="1")
    msg.metadata.__dict__["_message_id"] = uuid4().hex
    return msg


def context(node_config: dict[str, Any] | None = None, run_config: dict[str, Any] | None = None,
            node_id: int = 7) -> Context:  # fmt: skip
    return Context(run_id=1, node_id=node_id, node_config=node_config or {}, state=RecordDict(),
                   run_config=run_config or {})  # fmt: skip


def call(handler: Any, *args: Any, node_id: int = 7) -> Message:
    """Run a handler (or a ClientApp) as node ``node_id`` would."""
    with task_identity(run_id=1, node_id=node_id):
        return handler(*args)

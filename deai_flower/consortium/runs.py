"""Run creation, as the consortium does it: publish the run spec, its initial model and
(for a loss-scored run) its validation set in the store, then ``createRun`` on chain.

Needs no dataset and no Hydra: a spec and the creator's own validation rows. A
simulation creates its runs through these same steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from eth_utils import keccak

from .. import __version__
from ..chain import RoundsContract, TxResult
from ..chain.artifact import load_artifact
from ..models import get_arrays, instantiate_model
from ..protocol.blob import encode_arrays
from ..protocol.cid import cid_to_bytes
from ..protocol.spec import RunSpec, allowed_models
from ..protocol.validation import validation_arrays
from ..storage import ContentStore

__all__ = ["code_hash", "create_run", "publish_run", "publish_validation_set"]


def code_hash() -> bytes:
    """keccak256 identifying the code release: package version and contract bytecode."""
    return keccak(f"deai-flower {__version__}\n{load_artifact()['deployedBytecode']}".encode())


def publish_validation_set(store: ContentStore, x: np.ndarray, y: np.ndarray) -> str:
    """Store the validation set a loss-scored run names in its spec (a canonical blob with
    tensors ``x`` float32 and ``y`` int64); its CID."""
    return store.put(encode_arrays(validation_arrays(x, y)))


def publish_run(spec: RunSpec, store: ContentStore, *, seed: int) -> tuple[str, dict[str, Any]]:
    """Put the spec and the initial model (the spec's model built with ``seed``) into
    ``store``; return the initial model's CID and arrays."""
    # The run's creator wrote this spec from its own config: its own model is allowed.
    model = instantiate_model(spec.model, spec.data, allowed=allowed_models([spec.model.target]), seed=seed)
    initial = get_arrays(model)
    store.put(spec.to_bytes())
    return store.put(encode_arrays(initial)), initial


def create_run(contract: RoundsContract, spec: RunSpec, initial_cid: str) -> tuple[int, TxResult]:
    """Create the run of ``spec`` on chain, starting from the model stored at ``initial_cid``.

    The chain records the spec's digest (the spec itself must already be in the store
    participants read, under :func:`~deai_flower.protocol.spec.spec_cid` of that digest)
    and the run parameters it enforces, all taken from the spec.
    """
    return contract.create_run(spec.run_params(initial_model_cid=cid_to_bytes(initial_cid), code_hash=code_hash()))

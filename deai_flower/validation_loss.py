"""Validation losses for loss-improvement scores (:func:`~deai_flower.protocol.scores.loss_improvement_scores`).

Every attester evaluates the global model and each revealed update on the same
validation set and turns the losses into integer scores, so the losses must agree across
attesters to the micro-nat. They are computed here as:

* a deep copy of the model (the caller's model is left as it was), converted to
  ``float64`` and moved to the CPU whatever device it was on, in eval mode, under
  ``torch.no_grad``, with the arrays loaded by :func:`~deai_flower.models.set_arrays`
  (``float32`` weights widen exactly);
* features widened to ``float64``, fed in fixed batches of :data:`BATCH_SIZE` rows in
  the order given (so every matrix product has the same shapes everywhere);
* the per-example cross-entropy losses (``float64``) summed exactly (``math.fsum``) and
  divided by the number of examples: the mean does not depend on how torch would
  reduce, nor on the thread count.

Determinism conditions: the same releases of torch and numpy, and the CPU ``float64``
forward pass above, give the same bytes on every run and thread count. Across machines,
torch's CPU kernels may still differ in the last bits of a ``float64`` logit (vectorised
``exp``/``log`` and reductions dispatched by CPU capability, BLAS blocking); setting
``ATEN_CPU_CAPABILITY=default`` on every attester removes the dispatch part. Quantizing
losses to 1e-6 nats (:func:`~deai_flower.protocol.scores.quantize_loss`) absorbs such
differences, ~1e-16 relative, except for a loss that falls within them of a rounding
boundary.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from deai_flower.models import set_arrays

__all__ = ["BATCH_SIZE", "validation_loss", "validation_losses"]

#: Rows per forward pass: fixed, so that every attester runs products of the same shapes.
BATCH_SIZE = 1024


def _validation_set(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    features = np.asarray(x)
    labels = np.asarray(y)
    if len(features) == 0:
        raise ValueError("the validation set is empty")
    if len(features) != len(labels):
        raise ValueError(f"the validation set has {len(features)} feature rows but {len(labels)} labels")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"validation labels must be integer class indices (got dtype {labels.dtype})")
    return torch.as_tensor(features.astype(np.float64)), torch.as_tensor(labels.astype(np.int64))


@torch.no_grad()
def _mean_loss(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    per_example: list[float] = []
    for start in range(0, len(features), BATCH_SIZE):
        logits = model(features[start : start + BATCH_SIZE])
        losses = nn.functional.cross_entropy(logits, labels[start : start + BATCH_SIZE], reduction="none")
        per_example.extend(losses.tolist())
    return math.fsum(per_example) / len(per_example)


def validation_losses(
    model: torch.nn.Module,
    arrays_by_address: Mapping[str, Mapping[str, np.ndarray]],
    x: np.ndarray,
    y: np.ndarray,
) -> dict[str, float]:
    """Address -> mean cross-entropy (nats) on ``(x, y)`` of ``model`` with that address's arrays.

    ``model`` supplies the architecture only: a ``float64`` CPU copy of it is evaluated
    (see the module docstring); it is not modified.

    Raises:
        ValueError: an empty validation set, features and labels of different lengths,
            or non-integer labels.
        ConfigError: arrays whose names or shapes do not match the model.
    """
    features, labels = _validation_set(x, y)
    evaluated = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    evaluated.eval()
    losses = {}
    for address, arrays in arrays_by_address.items():
        set_arrays(evaluated, arrays)
        losses[address] = _mean_loss(evaluated, features, labels)
    return losses


def validation_loss(model: torch.nn.Module, arrays: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy (nats) on ``(x, y)`` of ``model`` with ``arrays`` loaded, as
    :func:`validation_losses` computes it."""
    return validation_losses(model, {"": arrays}, x, y)[""]

"""The validation set a loss-scored run names by CID in its spec.

Stored as a canonical blob (deai_flower.protocol.blob) of two tensors: ``x`` float32 of
shape [n, num_features] and ``y`` int64 of shape [n], labels below the spec's
num_classes. Every attester fetches it by the CID the spec records, so all score
updates on the same examples.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from deai_flower.errors import ProtocolError

__all__ = ["validation_arrays", "validation_set"]


def validation_arrays(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The tensors to store for features ``x`` and labels ``y``."""
    x, y = np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)
    return {"x": x.reshape(len(x), -1), "y": y.reshape(-1)}


def validation_set(arrays: Mapping[str, np.ndarray], *, num_features: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from a decoded validation blob, checked against the spec's data schema.

    Raises:
        ProtocolError: the tensors are not ``x`` [n, num_features] float32 and ``y`` [n]
            int64 with labels in [0, num_classes), or the set is empty.
    """
    if set(arrays) != {"x", "y"}:
        raise ProtocolError(f"validation set must hold tensors x and y (got {sorted(arrays)})")
    x, y = arrays["x"], arrays["y"]
    if x.dtype != np.float32 or y.dtype != np.int64 or x.ndim != 2 or y.ndim != 1:
        raise ProtocolError("validation set must be x float32 [n, features] and y int64 [n]")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0 or x.shape[1] != num_features:
        raise ProtocolError(f"validation set has x {list(x.shape)} and y {list(y.shape)}; the spec needs "
                            f"n > 0 rows of {num_features} features")  # fmt: skip
    if y.min() < 0 or y.max() >= num_classes:
        raise ProtocolError(f"validation labels must be in [0, {num_classes})")
    return x, y

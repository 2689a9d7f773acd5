"""Piecewise sums over update deltas: the fixed-order reductions every score uses.

A *piecewise sum* of a vector (docs/protocol.md §4.3, step 3 of the alignment score):
each tensor's stretch is cut into consecutive pieces of ``PIECE`` elements (the last one
shorter); a piece is summed as a pairwise tree (zero-padded to ``PIECE``, then
``p = p[0::2] + p[1::2]`` until one element is left) and the piece sums are added exactly
rounded (``math.fsum``). Every addition is fixed, so the result is the same on every
machine, and an attester holds one piece of every update's delta at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np

from deai_flower.protocol.rules import RevealedUpdate

__all__ = ["PIECE", "check_layout", "delta_pieces", "exact_total", "tree_sums"]

#: Elements per piece of a piecewise sum (and per step of the computation): a power of two.
PIECE = 16_384


def tree_sums(rows: np.ndarray) -> np.ndarray:
    """Each row's pairwise tree sum (step 3): zero-padded to PIECE columns, then halved
    by adding even and odd columns until one is left. Elementwise additions only.

    Computed on the smallest power of two that holds the row: the columns beyond it are
    zero, so in the full tree they only ever add ``+0.0`` to the row's own tree sum, which
    leaves it unchanged except that ``-0.0`` becomes ``+0.0``; adding ``0.0`` once gives
    exactly that. A short tensor (a bias) costs its own width, not PIECE's.
    """
    width = rows.shape[1]
    size = 1 << max(0, width - 1).bit_length()
    padded = np.zeros((rows.shape[0], size), dtype=np.float64)
    padded[:, :width] = rows
    while padded.shape[1] > 1:
        padded = padded[:, 0::2] + padded[:, 1::2]
    return padded[:, 0] + 0.0 if size < PIECE else padded[:, 0]


def exact_total(pieces: list[float], what: str) -> float:
    """The exactly rounded sum of piece sums (the second level of a piecewise sum),
    refusing overflow."""
    try:
        total = math.fsum(pieces)
    except (OverflowError, ValueError) as exc:  # intermediate overflow, or inf + -inf
        raise ValueError(f"cannot score: {what} overflows a double ({exc})") from None
    if not math.isfinite(total):
        raise ValueError(f"cannot score: {what} overflows a double")
    return total


def check_layout(ordered: list[RevealedUpdate], global_arrays: Mapping[str, np.ndarray]) -> list[str]:
    """The tensor names in order, after checking every update has the global model's."""
    names = sorted(global_arrays)
    for update in ordered:
        missing = sorted(set(names) - set(update.arrays))
        unexpected = sorted(set(update.arrays) - set(names))
        if missing or unexpected:
            raise ValueError(f"update from {update.participant} does not match the global model's tensors: "
                             f"missing {missing}, unexpected {unexpected}")  # fmt: skip
        for name in names:
            shape, expected = np.shape(update.arrays[name]), np.shape(global_arrays[name])
            if shape != expected:
                raise ValueError(f"update from {update.participant}: tensor {name!r} has shape {shape}, "
                                 f"the global model's is {expected}")  # fmt: skip
    return names


def delta_pieces(ordered: list[RevealedUpdate], global_arrays: Mapping[str, np.ndarray],
                  names: list[str]) -> Iterator[np.ndarray]:  # fmt: skip
    """Step 1 piece by piece: an ``n x PIECE`` (or shorter) float64 array of every
    update's delta over the next piece of coordinates."""
    for name in names:
        reference = np.asarray(global_arrays[name]).reshape(-1)
        flat = [np.asarray(u.arrays[name]).reshape(-1) for u in ordered]
        for start in range(0, reference.size, PIECE):
            base = reference[start : start + PIECE].astype(np.float64)
            deltas = np.stack([f[start : start + PIECE].astype(np.float64) for f in flat]) - base
            if not np.isfinite(deltas).all():
                raise ValueError("cannot score: an update is not finite or its delta overflows a double")
            yield deltas

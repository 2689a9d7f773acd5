"""Piecewise sums: the tree sum computed on a row's own width is the PIECE-wide one, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from deai_flower.protocol.piecewise import PIECE, tree_sums


def _tree_sums_at_piece_width(rows: np.ndarray) -> np.ndarray:
    """The definition (protocol §4.3): every row zero-padded to PIECE columns, then halved."""
    padded = np.zeros((rows.shape[0], PIECE), dtype=np.float64)
    padded[:, : rows.shape[1]] = rows
    while padded.shape[1] > 1:
        padded = padded[:, 0::2] + padded[:, 1::2]
    return padded[:, 0]


_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324])


# overflow to inf and inf - inf are among the values drawn, on purpose: numpy warns of them
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")
@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=1, max_value=4), st.sampled_from([1, 2, 3, 7, 64, 100, 640, 4096, 5000, PIECE - 1, PIECE]),
       st.data())  # fmt: skip
def test_tree_sums_equal_the_piece_wide_definition_bit_for_bit(rows: int, width: int, data: st.DataObject) -> None:
    values = data.draw(arrays(np.float64, (rows, min(width, 64)), elements=_FLOATS))
    block = np.resize(values, (rows, width))  # wide rows from drawn values (signed zeros, infinities, NaN)
    if data.draw(st.booleans()):
        block = -np.abs(block) * 0.0  # all negative zeros: the sign the padding changes
    ours, definition = tree_sums(block), _tree_sums_at_piece_width(block)
    assert ours.tobytes() == definition.tobytes() or (np.isnan(ours) == np.isnan(definition)).all() and \
        np.array_equal(ours[~np.isnan(ours)], definition[~np.isnan(definition)]) and \
        (np.signbit(ours[~np.isnan(ours)]) == np.signbit(definition[~np.isnan(definition)])).all()  # fmt: skip


def test_a_negative_zero_row_sums_to_positive_zero_as_the_padded_tree_does() -> None:
    row = np.array([[-0.0, -0.0, -0.0, -0.0]])  # a power of two: no padding of its own
    assert not np.signbit(tree_sums(row)[0]) and not np.signbit(_tree_sums_at_piece_width(row)[0])
    full = np.full((1, PIECE), -0.0)  # no padding at all: the sign stays
    assert np.signbit(tree_sums(full)[0]) and np.signbit(_tree_sums_at_piece_width(full)[0])

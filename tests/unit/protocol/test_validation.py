"""The validation set of a loss-scored run: stored as a canonical blob, checked against the spec."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from deai_flower.errors import ProtocolError
from deai_flower.protocol.blob import decode_arrays, encode_arrays
from deai_flower.protocol.validation import validation_arrays, validation_set

LIMIT = 1 << 20


def _stored(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    return decode_arrays(encode_arrays(validation_arrays(x, y)), max_bytes=LIMIT)


@settings(max_examples=50, deadline=None)
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4),
    n=st.integers(min_value=1, max_value=20),
    num_classes=st.integers(min_value=2, max_value=12),
    data=st.data(),
)
def test_round_trip_through_the_blob_codec(
    shape: tuple[int, ...], n: int, num_classes: int, data: st.DataObject
) -> None:
    features = int(np.prod(shape))
    x = data.draw(hnp.arrays(np.float64, (n, *shape), elements=st.floats(-1e6, 1e6, width=32)))
    y = data.draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, num_classes - 1)))

    arrays = validation_arrays(x, y)
    assert set(arrays) == {"x", "y"}
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (n, features)
    assert arrays["y"].dtype == np.int64 and arrays["y"].shape == (n,)

    blob = encode_arrays(arrays)
    assert encode_arrays(validation_arrays(x, y)) == blob  # canonical: same data, same CID
    got_x, got_y = validation_set(decode_arrays(blob, max_bytes=LIMIT), num_features=features, num_classes=num_classes)
    np.testing.assert_array_equal(got_x, x.reshape(n, -1).astype(np.float32))
    np.testing.assert_array_equal(got_y, y.astype(np.int64))
    assert got_x.dtype == np.float32 and got_y.dtype == np.int64


def test_column_labels_are_flattened() -> None:
    arrays = validation_arrays(np.zeros((3, 2, 2)), np.array([[0], [1], [2]]))
    assert arrays["x"].shape == (3, 4) and arrays["y"].shape == (3,)
    assert arrays["x"].flags.c_contiguous and arrays["y"].flags.c_contiguous


def test_labels_at_the_edges_are_accepted() -> None:
    x, y = validation_set(_stored(np.ones((2, 3)), np.array([0, 4])), num_features=3, num_classes=5)
    assert y.tolist() == [0, 4] and x.shape == (2, 3)


def _good() -> dict[str, np.ndarray]:
    return {"x": np.zeros((4, 3), dtype=np.float32), "y": np.array([0, 1, 2, 1], dtype=np.int64)}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda a: a.pop("y"), r"must hold tensors x and y \(got \['x'\]\)"),
        (lambda a: a.update(z=np.zeros(4, dtype=np.int64)), r"must hold tensors x and y \(got \['x', 'y', 'z'\]\)"),
        (lambda a: a.update(labels=a.pop("y")), r"must hold tensors x and y \(got \['labels', 'x'\]\)"),
        (lambda a: a.update(x=a["x"].astype(np.float64)), r"x float32 \[n, features\] and y int64 \[n\]"),
        (lambda a: a.update(y=a["y"].astype(np.int32)), r"x float32 \[n, features\] and y int64 \[n\]"),
        (lambda a: a.update(y=a["y"].astype(np.float32)), r"x float32 \[n, features\] and y int64 \[n\]"),
        (lambda a: a.update(x=a["x"].reshape(4, 3, 1)), r"x float32 \[n, features\] and y int64 \[n\]"),
        (lambda a: a.update(x=a["x"].reshape(-1)), r"x float32 \[n, features\] and y int64 \[n\]"),
        (lambda a: a.update(y=a["y"].reshape(4, 1)), r"x float32 \[n, features\] and y int64 \[n\]"),
        (lambda a: a.update(x=np.zeros((4, 5), dtype=np.float32)),
         r"x \[4, 5\] and y \[4\]; the spec needs n > 0 rows of 3 features"),
        (lambda a: a.update(y=a["y"][:3]), r"x \[4, 3\] and y \[3\]; the spec needs n > 0 rows of 3 features"),
        (lambda a: a.update(x=a["x"][:0], y=a["y"][:0]), r"x \[0, 3\] and y \[0\]; the spec needs n > 0 rows"),
        (lambda a: a.update(y=np.array([0, 1, 5, 1], dtype=np.int64)), r"labels must be in \[0, 5\)"),
        (lambda a: a.update(y=np.array([0, 1, 7, 1], dtype=np.int64)), r"labels must be in \[0, 5\)"),
        (lambda a: a.update(y=np.array([0, -1, 2, 1], dtype=np.int64)), r"labels must be in \[0, 5\)"),
    ],
)
def test_refusals_name_the_problem(change, reason: str) -> None:  # type: ignore[no-untyped-def]
    arrays = _good()
    validation_set(arrays, num_features=3, num_classes=5)  # the unchanged set is fine
    change(arrays)
    with pytest.raises(ProtocolError, match=reason):
        validation_set(arrays, num_features=3, num_classes=5)


def test_refusals_survive_the_blob_codec() -> None:
    # what an attester fetched: a set stored for another schema is refused, not misread
    arrays = _stored(np.zeros((4, 6)), np.array([0, 1, 2, 3]))
    with pytest.raises(ProtocolError, match="rows of 5 features"):
        validation_set(arrays, num_features=5, num_classes=4)
    with pytest.raises(ProtocolError, match=r"labels must be in \[0, 3\)"):
        validation_set(arrays, num_features=6, num_classes=3)
    validation_set(arrays, num_features=6, num_classes=4)

"""Tests for deai_flower.data: bundled dataset loading and federated partitioning."""

from __future__ import annotations

import numpy as np
import pytest

from deai_flower.data import DatasetSplit, load_dataset, partition
from deai_flower.errors import ConfigError


@pytest.fixture(scope="module")
def digits() -> DatasetSplit:
    return load_dataset("digits", seed=0)


def test_digits_shapes_types_and_scaling(digits: DatasetSplit) -> None:
    assert digits.name == "digits"
    assert digits.num_features == 64
    assert digits.num_classes == 10
    # 1797 images, 20 % held out (rounded up by scikit-learn).
    assert digits.x_train.shape == (1437, 64)
    assert digits.x_test.shape == (360, 64)
    assert digits.y_train.shape == (1437,)
    assert digits.y_test.shape == (360,)
    assert digits.x_train.dtype == np.float32 and digits.x_test.dtype == np.float32
    assert digits.y_train.dtype == np.int64 and digits.y_test.dtype == np.int64
    # Pixel values 0..16 are scaled into [0, 1] and reach both ends.
    assert digits.x_train.min() == 0.0
    assert digits.x_train.max() == 1.0
    assert set(np.unique(digits.y_train)) == set(range(10))
    assert set(np.unique(digits.y_test)) == set(range(10))


def test_split_is_stratified(digits: DatasetSplit) -> None:
    train_share = np.bincount(digits.y_train, minlength=10) / len(digits.y_train)
    test_share = np.bincount(digits.y_test, minlength=10) / len(digits.y_test)
    assert np.abs(train_share - test_share).max() < 0.01


def test_split_is_reproducible_by_seed(digits: DatasetSplit) -> None:
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    np.testing.assert_array_equal(again.x_train, digits.x_train)
    np.testing.assert_array_equal(again.y_test, digits.y_test)
    assert not np.array_equal(other.x_train, digits.x_train)


def test_test_fraction_is_honoured() -> None:
    split = load_dataset("digits", seed=0, test_fraction=0.5)
    assert abs(len(split.x_test) - len(split.x_train)) <= 1


def test_unknown_dataset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'x'; choose one of: digits"):
        load_dataset("x", seed=0)


def test_bad_test_fraction_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        load_dataset("digits", seed=0, test_fraction=1.0)


def _indexed(n: int) -> tuple[np.ndarray, np.ndarray]:
    # Feature 0 is the row number, so partitions can be traced back to source rows.
    x = np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.float32)
    y = (np.arange(n) % 10).astype(np.int64)
    return x, y


def test_iid_partition_sizes_cover_all_rows_once() -> None:
    x, y = _indexed(1437)
    parts = partition(x, y, num_partitions=5, seed=0)
    assert sorted(len(px) for px, _ in parts) == [287, 287, 287, 288, 288]
    rows = np.concatenate([px[:, 0] for px, _ in parts]).astype(np.int64)
    np.testing.assert_array_equal(np.sort(rows), np.arange(1437))
    for px, py in parts:
        # Each row keeps its own label and dtypes survive the round trip.
        assert px.dtype == np.float32 and py.dtype == np.int64
        np.testing.assert_array_equal(py, px[:, 0].astype(np.int64) % 10)


def test_iid_partition_is_random_and_deterministic() -> None:
    x, y = _indexed(500)
    first = partition(x, y, num_partitions=4, seed=7)
    second = partition(x, y, num_partitions=4, seed=7)
    other = partition(x, y, num_partitions=4, seed=8)
    for (a, ay), (b, by) in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ay, by)
    assert any(not np.array_equal(a, b) for (a, _), (b, _) in zip(first, other, strict=True))
    # Shuffled, not contiguous slices of the input.
    assert not np.array_equal(first[0][0][:, 0], np.arange(len(first[0][0])))


def test_dirichlet_partition_is_deterministic_and_complete() -> None:
    x, y = _indexed(600)
    first = partition(x, y, num_partitions=3, partitioner="dirichlet", seed=3, alpha=0.3)
    second = partition(x, y, num_partitions=3, partitioner="dirichlet", seed=3, alpha=0.3)
    assert sum(len(px) for px, _ in first) == 600
    assert all(len(px) >= 1 for px, _ in first)
    for (a, _), (b, _) in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    # A small alpha skews label mixes: some client's majority label dominates.
    shares = [np.bincount(py, minlength=10).max() / len(py) for _, py in first]
    assert max(shares) > 0.2


@pytest.mark.parametrize("num_partitions", [0, -1, 11])
def test_bad_num_partitions_is_a_config_error(num_partitions: int) -> None:
    x, y = _indexed(10)
    with pytest.raises(ConfigError, match="num_partitions"):
        partition(x, y, num_partitions=num_partitions, seed=0)


def test_unknown_partitioner_is_a_config_error() -> None:
    x, y = _indexed(10)
    with pytest.raises(ConfigError, match="unknown partitioner 'shards'"):
        partition(x, y, num_partitions=2, partitioner="shards", seed=0)

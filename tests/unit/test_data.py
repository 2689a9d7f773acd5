"""Tests for deai_flower.data: bundled dataset loading and federated partitioning."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from deai_flower import data
from deai_flower.data import DatasetSplit, client_partitions, load_dataset, partition
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
    with pytest.raises(ConfigError, match=r"unknown dataset 'x'; choose one of: breast_cancer, cifar10, digits"):
        load_dataset("x", seed=0)


def test_digits_carry_their_image_shape(digits: DatasetSplit) -> None:
    assert digits.input_shape == (1, 8, 8)
    assert digits.groups_train is None and digits.num_groups == 0


def test_breast_cancer_is_tabular_binary_and_scaled() -> None:
    split = load_dataset("breast_cancer", seed=0)
    assert (split.num_features, split.num_classes, split.input_shape) == (30, 2, (30,))
    assert len(split.x_train) + len(split.x_test) == 569
    both = np.concatenate([split.x_train, split.x_test])
    assert both.min() == 0.0 and both.max() == 1.0
    assert set(np.unique(split.y_test)) == {0, 1}


def test_lung_is_split_naturally_by_institution() -> None:
    split = load_dataset("lung", seed=0)
    assert (split.num_classes, split.group_name) == (2, "institution")
    assert split.input_shape == (split.num_features,)
    assert np.isfinite(split.x_train).all() and np.isfinite(split.x_test).all()
    # 18 institutions in the trial; every one keeps training rows after the hold-out.
    assert split.num_groups == 18
    assert len(split.x_train) + len(split.x_test) == 185  # labelled one-year outcomes
    parts = client_partitions(split, num_partitions=18, partitioner="natural", seed=0)
    sizes = [len(py) for _, py in parts]
    assert sum(sizes) == len(split.y_train) and min(sizes) >= 1
    # Partition i is the i-th institution in ascending id order.
    groups = np.unique(split.groups_train)
    for i, (px, _) in enumerate(parts):
        np.testing.assert_array_equal(np.sort(px[:, 0]), np.sort(split.x_train[split.groups_train == groups[i], 0]))


def test_natural_split_needs_one_client_per_group() -> None:
    split = load_dataset("lung", seed=0)
    with pytest.raises(ConfigError, match=r"the data has 18 institutions, so set num_clients=18 \(got 5\)"):
        client_partitions(split, num_partitions=5, partitioner="natural", seed=0)
    x, y = _indexed(20)
    with pytest.raises(ConfigError, match="needs a dataset with natural groups"):
        partition(x, y, num_partitions=2, partitioner="natural", seed=0)


def test_mnist_5k_is_the_bundled_mnist_subset() -> None:
    split = load_dataset("mnist_5k", seed=0)
    assert (split.num_features, split.num_classes, split.input_shape) == (784, 10, (1, 28, 28))
    assert (len(split.x_train), len(split.x_test)) == (4000, 1000)
    assert split.x_train.min() == 0.0 and split.x_train.max() == 1.0
    assert np.bincount(split.y_test).tolist() == [100] * 10  # stratified: 500 per class in all


@pytest.mark.filterwarnings("ignore:Classes:UserWarning")
def test_pathological_partition_gives_each_client_its_classes() -> None:
    x, y = _indexed(1000)
    parts = partition(x, y, num_partitions=5, partitioner="pathological", classes_per_partition=2, seed=0)
    assert sum(len(py) for _, py in parts) <= 1000
    for i, (px, py) in enumerate(parts):
        classes = set(np.unique(py).tolist())
        assert len(classes) == 2 and i % 10 in classes  # first class fixed, as in the paper
        np.testing.assert_array_equal(py, px[:, 0].astype(np.int64) % 10)
    again = partition(x, y, num_partitions=5, partitioner="pathological", classes_per_partition=2, seed=0)
    for (a, _), (b, _) in zip(parts, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_hub_dataset_offline_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr_datasets

    class Offline:
        def __init__(self, **kwargs: object) -> None:
            raise ConnectionError("Couldn't reach 'ylecun/mnist' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(flwr_datasets, "FederatedDataset", Offline)
    data._load_raw.cache_clear()
    with pytest.raises(ConfigError, match=r"dataset 'mnist' \(ylecun/mnist\) is downloaded from the Hugging Face "
                                          r"Hub on first use and could not be loaded \(ConnectionError"):  # fmt: skip
        load_dataset("mnist", seed=0)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "femnist"])
def test_hub_datasets_fail_cleanly_with_hugging_face_offline(name: str, tmp_path) -> None:
    # The real loader in a fresh process with Hugging Face's offline switches on and an
    # empty cache: nothing may be fetched, and the error must say what to do.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONWARNINGS": "ignore"}  # fmt: skip
    code = ("from deai_flower.data import load_dataset\n"
            "from deai_flower.errors import ConfigError\n"
            "try:\n"
            f"    load_dataset({name!r}, seed=0)\n"
            "except ConfigError as exc:\n"
            "    print('CONFIG-ERROR', exc)\n")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"CONFIG-ERROR dataset {name!r}" in result.stdout
    assert "connect to the network once" in result.stdout and "mnist_5k" in result.stdout


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


class _FakeHub:
    """Stands in for flwr-datasets' FederatedDataset: tiny in-memory image tables."""

    def __init__(self, *, dataset: str, shuffle: bool, partitioners: dict) -> None:
        import datasets
        from PIL import Image

        self.partitioners = partitioners
        colour = dataset == "uoft-cs/cifar10"
        shape = (32, 32, 3) if colour else (28, 28)
        image_column = "img" if colour else "image"
        label_column = "character" if dataset == "flwrlabs/femnist" else "label"
        classes = 62 if dataset == "flwrlabs/femnist" else 10
        rows = 12
        columns = {
            image_column: [Image.fromarray(np.full(shape, 17 * (i % 15), np.uint8)) for i in range(rows)],
            label_column: [i % 3 for i in range(rows)],
            "writer_id": [f"w{i % 4}" for i in range(rows)],
        }
        features = datasets.Features({image_column: datasets.Image(),
                                      label_column: datasets.ClassLabel(num_classes=classes),
                                      "writer_id": datasets.Value("string")})  # fmt: skip
        self.table = datasets.Dataset.from_dict(columns, features=features)

    def load_split(self, split: str):
        return self.table

    def load_partition(self, partition_id: int, split: str):
        partitioner = self.partitioners[split]
        if not partitioner.is_dataset_assigned():
            partitioner.dataset = self.table
        return partitioner.load_partition(partition_id)


@pytest.mark.parametrize(
    "name,shape,classes", [("mnist", (1, 28, 28), 10), ("cifar10", (3, 32, 32), 10), ("femnist", (1, 28, 28), 62)]
)
def test_hub_datasets_become_flat_scaled_images(monkeypatch: pytest.MonkeyPatch, name, shape, classes) -> None:
    import flwr_datasets

    monkeypatch.setattr(flwr_datasets, "FederatedDataset", _FakeHub)
    data._load_raw.cache_clear()
    try:
        split = load_dataset(name, seed=0, max_groups=3 if name == "femnist" else None)
    finally:
        data._load_raw.cache_clear()
    assert (split.input_shape, split.num_classes, split.num_features) == (shape, classes, int(np.prod(shape)))
    assert split.x_train.dtype == np.float32 and 0.0 <= split.x_train.min() and split.x_train.max() <= 1.0
    if name == "femnist":
        # The first three writers (of four), one natural partition each.
        assert (split.group_name, split.num_groups) == ("writer", 3)
        assert len(client_partitions(split, num_partitions=3, partitioner="natural", seed=0)) == 3
    else:
        assert len(split.x_test) == 12  # the official test split is kept

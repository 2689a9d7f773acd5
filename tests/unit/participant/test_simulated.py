"""Simulated participants: built from the experiment config and a partition id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deai_flower.chain import simulation_key
from deai_flower.data import client_partitions, load_dataset
from deai_flower.errors import ConfigError
from deai_flower.participant import BUNDLED_MODEL_TARGETS, LocalData, RunLocator
from deai_flower.simulation.config import experiment_config
from deai_flower.simulation.participants import (
    FreeRider,
    ScaledUpdate,
    forget_simulated_participants,
    simulated_participant,
)

HERE = RunLocator(contract="0x" + "ab" * 20, run_id=1, chain_url="embedded://1", store="local:/tmp/s")


@pytest.fixture
def run_config(tmp_path: Path) -> dict[str, str]:
    forget_simulated_participants()
    return {"overrides": "num_clients=3 seed=4 adversary=scaled privacy.state_dir=ledgers device=cpu",
            "output-dir": str(tmp_path)}  # fmt: skip


def test_a_simulated_participant_is_a_seeded_key_and_a_partition(run_config: dict[str, str], tmp_path: Path) -> None:
    cfg = experiment_config(run_config)
    split = load_dataset(cfg.dataset, seed=4)
    parts = client_partitions(split, num_partitions=3, partitioner=str(cfg.dataset.partitioner), seed=4,
                              alpha=float(cfg.dataset.dirichlet_alpha),
                              classes_per_partition=int(cfg.dataset.classes_per_partition))  # fmt: skip
    for i in range(3):
        p = simulated_participant(run_config, i, HERE)
        assert p.address == simulation_key(seed=4, role=f"client-{i}").address
        assert isinstance(p.data, LocalData)
        assert np.array_equal(p.data.x, parts[i][0]) and np.array_equal(p.data.y, parts[i][1])
        assert (p.chain_url, p.store_location) == (HERE.chain_url, HERE.store)
        assert p.ledger_dir == tmp_path / "ledgers"
        assert (p.device, p.device_index, p.model_targets) == ("cpu", i, BUNDLED_MODEL_TARGETS)
        assert p.noise_seed is None and p.round_seed(2) != p.round_seed(2)  # secret noise by default
    assert simulated_participant(run_config, 0, HERE).behaviour == ScaledUpdate(-5.0)
    assert simulated_participant(run_config, 1, HERE).behaviour is None


def test_reproducible_noise_is_seeded_only_when_asked(run_config: dict[str, str]) -> None:
    seeded = {**run_config, "overrides": run_config["overrides"] + " privacy.reproducible_noise=true"}
    for i in range(3):
        p = simulated_participant(seeded, i, HERE)
        # seed * 1_000_003 + round * 1_009 + partition: anyone who knows the seed replays it
        assert p.round_seed(2) == p.round_seed(2) == 4 * 1_000_003 + 2 * 1_009 + i


def test_simulated_participants_are_built_once_per_experiment_and_place(run_config: dict[str, str]) -> None:
    first = simulated_participant(run_config, 1, HERE)
    assert simulated_participant(run_config, 1, HERE) is first
    elsewhere = RunLocator(contract=HERE.contract, run_id=2, chain_url="http://127.0.0.1:8545", store="local:/tmp/t")
    moved = simulated_participant(run_config, 1, elsewhere)
    assert moved is not first and moved.chain_url == elsewhere.chain_url and moved.data is first.data
    assert simulated_participant({**run_config, "overrides": run_config["overrides"] + " seed=5"}, 1, HERE) is not first
    assert simulated_participant(run_config, 1, HERE, num_partitions=2) is not first


def test_a_partition_outside_the_experiment_is_a_config_error(run_config: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="partition-id 3 is outside the experiment's 3 participants"):
        simulated_participant(run_config, 3, HERE)


def test_a_scaled_adversary_moves_its_update_away_from_the_global_model() -> None:
    g = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    u = {"w": np.array([2.0, 0.0], dtype=np.float32)}
    poisoned = ScaledUpdate(-5.0).poison(g, u)
    assert poisoned["w"].dtype == np.float32
    assert np.array_equal(poisoned["w"], np.array([1.0 - 5.0, 2.0 + 10.0], dtype=np.float32))


def test_a_seeded_free_rider_repeats_its_noise_for_a_model_and_draws_anew_for_the_next() -> None:
    g = {"w": np.zeros(64, dtype=np.float32), "b": np.ones(3, dtype=np.float32)}
    g2 = {**g, "b": np.full(3, 2.0, dtype=np.float32)}  # the next round's model
    a, again, other_seed = FreeRider(0.1, seed=7).poison(g, g), FreeRider(0.1, seed=7).poison(g, g), \
        FreeRider(0.1, seed=8).poison(g, g)  # fmt: skip
    assert all(np.array_equal(a[n], again[n]) for n in g)
    assert not np.array_equal(a["w"], other_seed["w"])
    assert not np.array_equal(a["w"], FreeRider(0.1, seed=7).poison(g2, g2)["w"])
    assert not np.array_equal(FreeRider(0.1).poison(g, g)["w"], FreeRider(0.1).poison(g, g)["w"])  # fresh entropy
    assert a["w"].dtype == np.float32 and float(np.abs(a["w"]).max()) > 0
    assert all(np.array_equal(FreeRider(0.0, seed=7).poison(g, g)[n], g[n]) for n in g)  # unchanged without noise

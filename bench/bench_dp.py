"""DP-SGD benchmarks: per-sample-gradient speed and memory, and privacy vs utility.

1. ``speed``: samples per second of one client's local training round with this
   project's trainer (``deai_flower.privacy.train_round``) for each per-sample-gradient
   mode (Opacus ``hooks``, ``ghost`` clipping) against non-private SGD, for the MLP and
   the CNN, and the peak resident memory each adds. Every case runs in a fresh process
   so the peak (``ru_maxrss``) is its own.
2. ``utility``: final test accuracy of federated DP (this project's whole run: chain,
   store, in-process engine, 5 clients, 5 rounds) against centralized DP-SGD (the same
   model and trainer, one client holding all the training data, the same total number
   of optimizer steps: 5 rounds of the same local epochs) on the same split, at
   ε = 1, 3, 8 (δ = 1e-5) and without privacy, on ``digits`` and ``mnist_5k``, with the
   tuned experiment configs ``conf/experiment/dp_digits.yaml`` and ``dp_mnist_5k.yaml``.
   Centralized runs twice: with the preset's hyper-parameters (the matched comparison)
   and with its learning rate re-tuned (best mean over ``CENTRAL_LEARNING_RATES`` and the
   preset's; one client takes 5x the sequential steps, so it wants a smaller rate), as a
   reference for what centralized DP-SGD reaches with this trainer.

Prints the tables and writes ``bench/results/dp.json``. Run from the repository root:
``python bench/bench_dp.py [speed|utility] [--seeds N] [--datasets digits mnist_5k]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "dp.json"

# (label, dataset, model overrides) for the speed table.
SPEED_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("mlp [64] / digits", "digits", {"name": "mlp", "hidden": [64]}),
    ("mlp [256,128] / digits", "digits", {"name": "mlp", "hidden": [256, 128]}),
    ("cnn [16,32] / digits", "digits", {"name": "cnn", "hidden": [32], "channels": [16, 32], "activation": "tanh"}),
    ("cnn [16,32] / mnist_5k", "mnist_5k",
     {"name": "cnn", "hidden": [32], "channels": [16, 32], "activation": "tanh"}),  # fmt: skip
]
SPEED_MODES = ("non-private", "hooks", "ghost")
SPEED_BATCH = 64
SPEED_EPOCHS = 2

UTILITY_DATASETS = {"digits": "dp_digits", "mnist_5k": "dp_mnist_5k"}
UTILITY_EPSILONS = (1.0, 3.0, 8.0, math.inf)
CENTRAL_LEARNING_RATES = (0.05, 0.1)


# --- speed ---------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def speed_case(dataset: str, model_args: dict[str, Any], mode: str, repeats: int) -> dict[str, Any]:
    """One (model, mode) measurement, in this process (run it in a fresh one)."""
    import numpy as np
    import torch

    from deai_flower.data import load_dataset
    from deai_flower.models import build_model
    from deai_flower.privacy import PrivacyLedger, PrivacySettings, train_round

    # One thread, as a client gets by default (engine.num_cpus_per_client=1); it also
    # keeps the numbers steadier on a shared machine.
    torch.set_num_threads(1)
    split = load_dataset(dataset, seed=0)
    x, y = split.x_train, split.y_train
    model = build_model(model_args["name"], num_features=split.num_features, num_classes=split.num_classes,
                        hidden=model_args.get("hidden", []), channels=model_args.get("channels", (16, 32)),
                        activation=model_args.get("activation", "relu"), input_shape=split.input_shape,
                        seed=0)  # fmt: skip
    private = mode != "non-private"
    settings = PrivacySettings(epsilon=1e9 if private else math.inf, delta=1e-5, max_grad_norm=1.0,
                               accountant="rdp", grad_sample_mode=mode if private else "auto")  # fmt: skip

    def one_round(seed: int) -> None:
        # A fixed noise multiplier skips calibration: only training is timed.
        train_round(model=model, x=x, y=y, settings=settings, ledger=PrivacyLedger(noise_multiplier=1.0),
                    planned_rounds=1, local_epochs=SPEED_EPOCHS, batch_size=SPEED_BATCH, learning_rate=0.1,
                    seed=seed, device=torch.device("cpu"))  # fmt: skip

    baseline = _rss_bytes()
    one_round(0)  # warm-up: allocator, first-call paths
    times = []
    for seed in range(1, repeats + 1):
        started = time.perf_counter()
        one_round(seed)
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    samples = SPEED_EPOCHS * len(x)
    return {
        "dataset": dataset,
        "model": model_args,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "mode": mode,
        "samples_per_round": samples,
        # Best of the repeats: the least disturbed by other work on the machine.
        "seconds_best": min(times),
        "samples_per_second": samples / min(times),
        "peak_rss_increase_mib": max(0, peak - baseline) / 2**20,
        "threads": torch.get_num_threads(),
        "numpy": np.__version__,
    }


def run_speed(repeats: int) -> list[dict[str, Any]]:
    rows = []
    for label, dataset, model_args in SPEED_CASES:
        for mode in SPEED_MODES:
            call = f"bench_dp.speed_case({dataset!r}, {model_args!r}, {mode!r}, {repeats})"
            code = f"import json, sys; sys.path.insert(0, 'bench'); import bench_dp; print(json.dumps({call}))"
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  cwd=Path(__file__).resolve().parents[1])  # fmt: skip
            if proc.returncode != 0:
                sys.exit(f"speed case {label} / {mode} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["case"] = label
            rows.append(row)
            print(f"  {label:24s} {mode:12s} {row['samples_per_second']:9.0f} samples/s  "
                  f"+{row['peak_rss_increase_mib']:6.1f} MiB peak", flush=True)  # fmt: skip
    return rows


def speed_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model / data | parameters | " + " | ".join(f"{m} samples/s (peak MiB)" for m in SPEED_MODES) + " |",
             "|---|---:|" + "---:|" * len(SPEED_MODES)]  # fmt: skip
    for label, _, _ in SPEED_CASES:
        cells = {r["mode"]: r for r in rows if r["case"] == label}
        params = next(iter(cells.values()))["parameters"]
        speeds = [f"{cells[m]['samples_per_second']:,.0f} ({cells[m]['peak_rss_increase_mib']:.0f})"
                  for m in SPEED_MODES]  # fmt: skip
        lines.append(f"| {label} | {params:,} | " + " | ".join(speeds) + " |")
    return "\n".join(lines)


# --- privacy vs utility ----------------------------------------------------------------------


def _compose(*overrides: str):
    from hydra import compose, initialize_config_module

    from deai_flower.config import register_configs

    register_configs()
    with initialize_config_module(config_module="deai_flower.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def federated_accuracy(overrides: list[str]) -> tuple[float, float]:
    """Final accuracy of the whole federated run and its wall time."""
    from deai_flower.experiment import run_experiment

    with tempfile.TemporaryDirectory(prefix="deai-bench-dp-") as out:
        results = run_experiment(_compose(*overrides, "progress=false"), output_dir=Path(out))
    finalized = [r for r in results["rounds"] if r["status"] == "finalized"]
    if len(finalized) != len(results["rounds"]):
        raise RuntimeError(f"not every round finalized: {[r['status'] for r in results['rounds']]}")
    return float(finalized[-1]["accuracy"]), float(results["wall_seconds"])


def centralized_accuracy(overrides: list[str]) -> tuple[float, float]:
    """Same model, trainer and total steps, one client holding every training row."""
    import torch

    from deai_flower.config import privacy_epsilon
    from deai_flower.data import load_dataset
    from deai_flower.models import evaluate, instantiate_model, model_spec, select_device, set_arrays
    from deai_flower.privacy import PrivacyLedger, PrivacySettings, train_round

    cfg = _compose(*overrides)
    started = time.perf_counter()
    split = load_dataset(cfg.dataset, seed=cfg.seed)
    model = instantiate_model(model_spec(cfg.model), split.schema(), seed=cfg.seed)
    settings = PrivacySettings(epsilon=privacy_epsilon(cfg), delta=float(cfg.privacy.delta),
                               max_grad_norm=float(cfg.privacy.max_grad_norm), accountant=str(cfg.privacy.accountant),
                               grad_sample_mode=str(cfg.privacy.grad_sample_mode))  # fmt: skip
    device = select_device(cfg.device)
    ledger = PrivacyLedger()
    for round_id in range(1, cfg.num_rounds + 1):
        trained = train_round(model=model, x=split.x_train, y=split.y_train, settings=settings, ledger=ledger,
                              planned_rounds=cfg.num_rounds, local_epochs=cfg.training.local_epochs,
                              batch_size=cfg.training.batch_size, learning_rate=float(cfg.training.learning_rate),
                              seed=cfg.seed * 1_000_003 + round_id, device=device)  # fmt: skip
        set_arrays(model, trained.arrays)
    _, accuracy = evaluate(model, split.x_test, split.y_test, device=torch.device("cpu"))
    return float(accuracy), time.perf_counter() - started


def run_utility(seeds: int, datasets: list[str] | None = None) -> list[dict[str, Any]]:
    rows = []
    for dataset, experiment in UTILITY_DATASETS.items():
        if datasets and dataset not in datasets:
            continue
        for epsilon in UTILITY_EPSILONS:
            privacy = ["privacy=none"] if math.isinf(epsilon) else [f"privacy.epsilon={epsilon:g}"]
            for seed in range(seeds):
                overrides = [f"experiment={experiment}", *privacy, f"seed={seed}"]
                fed, fed_s = federated_accuracy(overrides)
                central, central_s = centralized_accuracy(overrides)
                by_lr = {lr: centralized_accuracy([*overrides, f"training.learning_rate={lr}"])[0]
                         for lr in CENTRAL_LEARNING_RATES}  # fmt: skip
                rows.append({"dataset": dataset, "epsilon": "inf" if math.isinf(epsilon) else epsilon, "seed": seed,
                             "federated": fed, "centralized": central, "federated_seconds": fed_s,
                             "centralized_seconds": central_s, "centralized_by_learning_rate": by_lr,
                             "overrides": overrides})  # fmt: skip
                print(f"  {dataset:9s} ε={epsilon:<4g} seed {seed}: federated {fed:.4f} ({fed_s:.0f}s)  "
                      f"centralized {central:.4f} ({central_s:.0f}s)", flush=True)  # fmt: skip
    return rows


def utility_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| dataset | ε | federated DP acc. % | centralized, same settings % | gap (points) "
             "| centralized, lr re-tuned % (lr) |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    keys = list(dict.fromkeys((r["dataset"], r["epsilon"]) for r in rows))
    for dataset, epsilon in keys:
        group = [r for r in rows if (r["dataset"], r["epsilon"]) == (dataset, epsilon)]

        def cell(values: list[float]) -> str:
            mean = 100 * statistics.mean(values)
            return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {100 * statistics.stdev(values):.1f}"

        fed = [r["federated"] for r in group]
        central = [r["centralized"] for r in group]
        gap = 100 * (statistics.mean(central) - statistics.mean(fed))
        label = "∞ (non-private)" if epsilon == "inf" else f"{epsilon:g}"
        # The preset's own rate competes too (its runs are the "same settings" column).
        candidates = {"preset": central}
        for lr in group[0].get("centralized_by_learning_rate", {}):
            candidates[str(lr)] = [r["centralized_by_learning_rate"][lr] for r in group]
        best = max(candidates, key=lambda k: statistics.mean(candidates[k]))
        lines.append(f"| {dataset} | {label} | {cell(fed)} | {cell(central)} | {gap:+.1f} "
                     f"| {cell(candidates[best])} ({best}) |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", choices=("all", "speed", "utility"), default="all")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per utility cell (mean ± std when > 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per speed case (best of)")
    parser.add_argument("--datasets", nargs="+", choices=tuple(UTILITY_DATASETS), default=None,
                        help="utility: re-measure only these datasets, keeping the others' rows in the results")
    args = parser.parse_args()

    summary: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    summary["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "processor": platform.processor() or platform.machine()}  # fmt: skip
    if args.part in ("all", "speed"):
        print(f"per-sample-gradient speed (batch {SPEED_BATCH}, {SPEED_EPOCHS} local epochs, one CPU thread):")
        rows = run_speed(args.repeats)
        summary["speed"] = {"batch_size": SPEED_BATCH, "local_epochs": SPEED_EPOCHS, "rows": rows}
        print(speed_table(rows))
    if args.part in ("all", "utility"):
        print("privacy vs utility (5 clients x 5 rounds federated vs centralized, same total steps):")
        rows = run_utility(args.seeds, args.datasets)
        previous = summary.get("utility", {})
        if args.datasets and previous.get("seeds") == args.seeds:
            # Keep the other datasets' rows (same number of seeds), in the usual order.
            kept = [r for r in previous.get("rows", []) if r["dataset"] not in args.datasets]
            order = list(UTILITY_DATASETS)
            rows = sorted([*kept, *rows], key=lambda r: order.index(r["dataset"]))
        summary["utility"] = {"delta": 1e-5, "seeds": args.seeds, "rows": rows}
        print(utility_table(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}")


if __name__ == "__main__":
    main()

"""What commit–reveal costs over plain Flower: the same experiment both ways.

A ~1M-parameter MLP, 10 clients, 5 rounds, the same data, seeds and DP-SGD trainer.
Plain: Flower's FedAvg strategy with ClientApps that return their weights.
Commit–reveal: this project on a real anvil node (started here). Both run on the
in-process engine, so the difference is the protocol, not the engine. The time compared
is the federated loop (rounds), set-up (deploying, registering) reported apart.

Two workloads: the bundled MNIST subset (4,000 training images, 400 per client, an MLP
784-1200-10 of 954k parameters) is the headline; digits (1,437 rows of 8x8 pixels, 144
per client, an MLP 64-1024-960-10 of 1.06M parameters) shows the other end, a round whose
local training is a tenth of a second per client. The protocol's cost per round hardly
depends on the training (it is hashing, storing and checking 4 MB per update and a few
transactions), so the ratio falls as local training grows.

Prints a summary and writes ``bench/results/overhead.json``. Run from the repository
root: ``python bench/bench_overhead.py [--rounds 5] [--clients 10] [--workload NAME]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from hydra import compose, initialize_config_module

from deai_flower.chain.devnode import AnvilNode, find_anvil, install_anvil
from deai_flower.config import register_configs
from deai_flower.data import client_partitions, load_dataset
from deai_flower.simulation.inprocess import run_inprocess
from deai_flower.experiment import run_experiment
from deai_flower.models import get_arrays, instantiate_model, model_spec, select_device, set_arrays
from deai_flower.privacy import PrivacyLedger, PrivacySettings, calibrate_noise, train_round

RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"
#: name -> (dataset, MLP hidden widths): both about 1M parameters
WORKLOADS = {
    "mnist_5k": ("mnist_5k", [1200]),  # 784*1200 + 1200*10 weights + biases: 954k
    "digits": ("digits", [1024, 960]),  # 64*1024 + 1024*960 + 960*10 weights + biases: 1.06M
}


def compose_cfg(*overrides: str):
    register_configs()
    with initialize_config_module(config_module="deai_flower.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def plain_flower(cfg: Any) -> dict[str, Any]:
    """Flower's FedAvg with the same data, model, trainer, thread cap and seeds; no chain, no store."""
    split = load_dataset(cfg.dataset, seed=cfg.seed)
    parts = client_partitions(split, num_partitions=cfg.num_clients, partitioner=cfg.dataset.partitioner,
                              seed=cfg.seed)  # fmt: skip
    model = instantiate_model(model_spec(cfg.model), split.schema(), seed=cfg.seed)
    privacy = PrivacySettings(epsilon=float(cfg.privacy.epsilon), delta=float(cfg.privacy.delta),
                              max_grad_norm=float(cfg.privacy.max_grad_norm), accountant=str(cfg.privacy.accountant))  # fmt: skip
    device = select_device("cpu")
    ledgers = {i: PrivacyLedger() for i in range(cfg.num_clients)}
    round_seconds: list[float] = []

    client_app = ClientApp()

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        set_arrays(model, {k: v.numpy() for k, v in message.content["arrays"].items()})
        x, y = parts[pid]
        trained = train_round(model=model, x=x, y=y, settings=privacy, ledger=ledgers[pid],
                              planned_rounds=cfg.num_rounds, local_epochs=cfg.training.local_epochs,
                              batch_size=cfg.training.batch_size, learning_rate=float(cfg.training.learning_rate),
                              seed=cfg.seed * 1_000_003 + int(message.content["config"]["round"]) * 1_009 + pid,
                              device=device, num_threads=max(1, int(cfg.engine.num_cpus_per_client)))  # fmt: skip
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in trained.arrays.items()}),
                              "metrics": MetricRecord({"num-examples": trained.num_examples})})  # fmt: skip
        return Message(content, reply_to=message)

    class TimedFedAvg(FedAvg):
        def configure_train(self, server_round: int, arrays: ArrayRecord, config: Any, grid: Grid):
            self._started = time.perf_counter()
            config["round"] = server_round
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Any):
            result = super().aggregate_train(server_round, replies)
            round_seconds.append(time.perf_counter() - self._started)
            return result

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=cfg.num_clients)
        strategy.start(grid=grid, initial_arrays=ArrayRecord({k: Array(v) for k, v in get_arrays(model).items()}),
                       num_rounds=cfg.num_rounds)  # fmt: skip

    started = time.perf_counter()
    run_inprocess(server_app=server_app, client_app=client_app, num_nodes=cfg.num_clients, seed=cfg.seed)
    parameters = sum(int(v.size) for v in get_arrays(model).values())
    return {"wall_seconds": time.perf_counter() - started, "round_seconds": round_seconds, "parameters": parameters}


def _commit_reveal(overrides: list[str]) -> dict[str, Any]:
    calibrate_noise.cache_clear()  # memoised per process: each run starts cold
    binary = find_anvil() or install_anvil()
    with AnvilNode(binary) as anvil, tempfile.TemporaryDirectory() as out:
        return run_experiment(compose_cfg(*overrides, "chain=anvil", f"chain.rpc_url={anvil.url}"),
                              output_dir=Path(out))  # fmt: skip


def measure(workload: str, *, rounds: int, clients: int, repeats: int) -> dict[str, Any]:
    """Plain Flower and commit-reveal (each on a fresh anvil) in turn, ``repeats`` times.

    The runs alternate so that a slow spell of the machine hits both sides; the ratio is
    that of the median times in rounds.
    """
    dataset, hidden = WORKLOADS[workload]
    overrides = [f"num_clients={clients}", f"num_rounds={rounds}", f"dataset={dataset}",
                 f"model.hidden=[{','.join(map(str, hidden))}]", "progress=false", "device=cpu"]  # fmt: skip
    plain_runs, cr_runs = [], []
    for _ in range(repeats):
        calibrate_noise.cache_clear()
        plain_runs.append(plain_flower(compose_cfg(*overrides)))
        cr_runs.append(_commit_reveal(overrides))
    plain_totals = [sum(r["round_seconds"]) for r in plain_runs]
    cr_totals = [sum(r["seconds"] for r in run["rounds"]) for run in cr_runs]
    # Rounds after the first: without the one-time σ calibration both sides pay in round 1
    plain_steady = [sum(r["round_seconds"][1:]) for r in plain_runs]
    cr_steady = [sum(r["seconds"] for r in run["rounds"][1:]) for run in cr_runs]
    median_cr = cr_runs[cr_totals.index(statistics.median_low(cr_totals))]["rounds"]
    phases = {p: statistics.mean(r["phase_seconds"].get(p, 0.0) for r in median_cr)
              for p in median_cr[0]["phase_seconds"]}  # fmt: skip
    return {
        "workload": workload,
        "dataset": dataset,
        "hidden": hidden,
        "clients": clients,
        "rounds": rounds,
        "repeats": repeats,
        "parameters": plain_runs[0]["parameters"],
        "plain_seconds_in_rounds": plain_totals,
        "commit_reveal_seconds_in_rounds": cr_totals,
        "plain_round_seconds": [r["round_seconds"] for r in plain_runs],
        "commit_reveal_round_seconds": [[r["seconds"] for r in run["rounds"]] for run in cr_runs],
        "commit_reveal_phase_seconds_mean": phases,
        "ratio": statistics.median(cr_totals) / statistics.median(plain_totals),
        "ratio_per_repeat": [c / p for c, p in zip(cr_totals, plain_totals, strict=True)],
        "median_ratio_per_repeat": statistics.median(c / p for c, p in zip(cr_totals, plain_totals, strict=True)),
        "steady_ratio": statistics.median(cr_steady) / statistics.median(plain_steady),
        "steady_overhead_seconds_per_round": (statistics.median(cr_steady) - statistics.median(plain_steady))
        / max(1, rounds - 1),
        "final_accuracy": median_cr[-1]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs per side (median taken)")
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    summary = {"machine": {"cpus": os.cpu_count()}, "workloads": {}}
    for name in names:
        m = measure(name, rounds=args.rounds, clients=args.clients, repeats=args.repeats)
        summary["workloads"][name] = m
        plain, cr = statistics.median(m["plain_seconds_in_rounds"]), statistics.median(m["commit_reveal_seconds_in_rounds"])
        print(f"{name}: {m['parameters']:,} parameters, {args.clients} clients, {args.rounds} rounds, "
              f"median of {args.repeats}")  # fmt: skip
        print(f"  plain Flower FedAvg: {plain:.2f}s in rounds ({plain / args.rounds:.2f}s/round)")
        print(f"  commit-reveal on anvil: {cr:.2f}s in rounds ({cr / args.rounds:.2f}s/round): "
              + ", ".join(f"{p} {t:.2f}s" for p, t in m["commit_reveal_phase_seconds_mean"].items()))  # fmt: skip
        print(f"  overhead ratio (commit-reveal / plain): {m['ratio']:.3f} "
              f"(per repeat: {', '.join(f'{r:.3f}' for r in m['ratio_per_repeat'])}; "
              f"their median {m['median_ratio_per_repeat']:.3f})")  # fmt: skip
        print(f"  rounds 2-{args.rounds} only (no σ calibration): ratio {m['steady_ratio']:.3f}, "
              f"{m['steady_overhead_seconds_per_round']:.2f}s a round")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

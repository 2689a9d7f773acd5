"""A privacy sweep at research scale, end to end: ε ∈ {1, 3, 8, ∞} × 3 seeds at 100 clients.

Runs the README's sweep command at 100 clients a round on the bundled ``mnist_5k``
(5,000 real MNIST digits shipped with a PyPI package; nothing is downloaded), on the
default engine (in-process), chain (embedded) and store (local):

    deai-flower -m privacy.epsilon=1,3,8,inf seed=0,1,2 num_clients=100 dataset=mnist_5k num_rounds=3

and records the sweep's wall time, its peak memory (the largest resident set of the
sweep's process tree, from ``/usr/bin/time``-style ``ru_maxrss`` of its children), each
job's wall time and round times, and the sweep's own table (``summary.md``, ``summary.csv``)
and plot (``accuracy_vs_epsilon.png``), copied into ``bench/results/sweep/``. The machine's
load average is recorded before and after: on a shared machine the wall time grows with
the others' work.

``--collect DIR --wall-seconds S`` records a sweep already run with the same command into
``DIR`` (its wall time measured by whoever ran it) instead of running one.

Writes ``bench/results/sweep.json``. Run from the repository root:
``python bench/bench_sweep.py [--rounds 3] [--clients 100]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "sweep.json"
COPIES = REPO / "bench" / "results" / "sweep"
EPSILONS = "1,3,8,inf"
SEEDS = "0,1,2"


def command(clients: int, rounds: int, sweep_dir: Path) -> list[str]:
    entry = Path(sys.executable).with_name("deai-flower")
    return [str(entry), "-m", f"privacy.epsilon={EPSILONS}", f"seed={SEEDS}", f"num_clients={clients}",
            "dataset=mnist_5k", f"num_rounds={rounds}", "progress=false", f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip


def jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Each job's overrides, wall time, round times and final accuracy."""
    found = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        results = json.loads((job / "results.json").read_text(encoding="utf-8"))
        overrides = (job / ".hydra" / "overrides.yaml").read_text(encoding="utf-8").split()
        rounds = results["rounds"]
        found.append({
            "job": int(job.name),
            "overrides": [o for o in overrides if o != "-"],
            "wall_seconds": round(float(results["wall_seconds"]), 1),
            "round_seconds": [round(float(r["seconds"]), 1) for r in rounds],
            "finalized": sum(1 for r in rounds if r["status"] == "finalized"),
            "final_accuracy": next((r["accuracy"] for r in reversed(rounds) if r.get("accuracy") is not None), None),
        })  # fmt: skip
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--collect", type=Path, default=None, help="a sweep directory already run")
    parser.add_argument("--wall-seconds", type=float, default=None, help="its wall time (with --collect)")
    parser.add_argument("--peak-rss-mib", type=float, default=None, help="its peak RSS (with --collect)")
    args = parser.parse_args()
    load_before = [round(v, 2) for v in os.getloadavg()]
    if args.collect is not None:
        if args.wall_seconds is None:
            parser.error("--collect needs --wall-seconds")
        sweep_dir, wall, peak, rc = args.collect, args.wall_seconds, args.peak_rss_mib, 0
    else:
        sweep_dir = Path(tempfile.mkdtemp(prefix="deai-sweep-"))
        argv = command(args.clients, args.rounds, sweep_dir)
        print(" ".join(argv[:1] + argv[1:-1]), flush=True)
        started = time.perf_counter()
        rc = subprocess.run(argv, cwd=sweep_dir, stdout=subprocess.DEVNULL, check=False).returncode
        wall = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    ran = jobs(sweep_dir)
    COPIES.mkdir(parents=True, exist_ok=True)
    for name in ("summary.md", "summary.csv", "accuracy_vs_epsilon.png"):
        if (sweep_dir / name).exists():
            shutil.copy(sweep_dir / name, COPIES / name)
    result = {
        "command": f"deai-flower -m privacy.epsilon={EPSILONS} seed={SEEDS} num_clients={args.clients} "
                   f"dataset=mnist_5k num_rounds={args.rounds}",
        "rc": rc,
        "wall_seconds": round(wall, 1),
        "peak_rss_mib": round(peak, 1) if peak is not None else None,
        "jobs": ran,
        "job_wall_seconds_mean": round(sum(j["wall_seconds"] for j in ran) / max(1, len(ran)), 1),
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_before,
                    "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "collected": args.collect is not None,
        "table": "bench/results/sweep/summary.md",
        "plot": "bench/results/sweep/accuracy_vs_epsilon.png",
    }  # fmt: skip
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print((COPIES / "summary.md").read_text(encoding="utf-8") if (COPIES / "summary.md").exists() else "no summary")
    print(f"sweep: {len(ran)} jobs, {result['wall_seconds']} s wall (mean job {result['job_wall_seconds_mean']} s), "
          f"peak RSS {result['peak_rss_mib']} MiB, rc {rc}; wrote {RESULTS.relative_to(REPO)}")  # fmt: skip


if __name__ == "__main__":
    main()

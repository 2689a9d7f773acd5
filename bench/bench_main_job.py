"""The main job on the embedded defaults: wall time, time per round by phase, gas.

Runs ``deai-flower`` as a user would (a fresh process, so imports count), then reads
its ``results.json``. Gas per participant per round is the round's total gas (open,
commits, reveals, attestations) divided by the participants that revealed.

Prints a summary and writes ``bench/results/main_job.json``. Run from the repository
root: ``python bench/bench_main_job.py [hydra overrides...]``.
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "main_job.json"


def main(overrides: list[str]) -> None:
    out = Path(tempfile.mkdtemp(prefix="deai-bench-"))
    try:
        entry = "from deai_flower.cli.main import main; main()"
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", entry, "progress=false", f"hydra.run.dir={out}", *overrides],
                              capture_output=True, text=True)  # fmt: skip
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            sys.exit(f"deai-flower failed:\n{proc.stderr[-3000:]}")
        results = json.loads((out / "results.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)

    rounds = results["rounds"]
    phases = sorted({p for r in rounds for p in r["phase_seconds"]})
    per_phase = {p: [r["phase_seconds"].get(p, 0.0) for r in rounds] for p in phases}
    per_participant = [r["gas_used"] / max(len(r["revealed"]), 1) for r in rounds]
    calls = sorted({c for r in rounds for c in r["gas_by_call"]})
    # steady state: rounds after the first (which writes fresh storage slots)
    steady = rounds[1:] or rounds
    by_call = {c: statistics.mean(r["gas_by_call"].get(c, 0) / max(len(r["revealed"]), 1) for r in steady)
               for c in calls}  # fmt: skip
    summary = {
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "overrides": overrides,
        "process_wall_seconds": wall,
        "run_wall_seconds": results["wall_seconds"],
        "final_accuracy": rounds[-1]["accuracy"],
        "private": results["private"],
        "round_seconds": [r["seconds"] for r in rounds],
        "phase_seconds_mean": {p: statistics.mean(v) for p, v in per_phase.items()},
        "phase_seconds_by_round": per_phase,
        "gas_per_participant_per_round": per_participant,
        "steady_gas_per_participant_by_call": by_call,
        "setup_gas": results["setup_gas"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")

    print(f"main job: {wall:.1f}s process wall ({results['wall_seconds']:.1f}s inside the run), "
          f"final accuracy {rounds[-1]['accuracy']:.4f}")  # fmt: skip
    print("time per round by phase (s): " + ", ".join(
        f"{p} {statistics.mean(v):.2f} (round 1: {v[0]:.2f})" for p, v in per_phase.items()))  # fmt: skip
    print("gas per participant per round: " + ", ".join(f"{g:,.0f}" for g in per_participant))
    print("steady-state gas per participant by call: " + ", ".join(f"{c} {g:,.0f}" for c, g in by_call.items()))
    print(f"setup gas: {results['setup_gas']}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])

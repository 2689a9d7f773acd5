"""How fast the commands answer: ``deai --help``, ``deai store add``, two config errors
and the time to the first line of a real run.

Each command runs ``--runs`` times (default 5) as a user runs it, through the installed
console scripts; the median, min and max wall-clock seconds go to the table and to
``bench/results/cli.json`` with the machine's load average. A run's time to its first
line is measured by reading its output until the first line, then stopping it (its own
process group). Run from the repository root: ``python bench/bench_cli.py [--runs N]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"help": 2.0, "store add": 2.0, "num_rounds=0": 2.0, "+privacy.epsilonn=3": 2.0, "first line of a run": 3.0}


def _script(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        sys.exit(f"{name} is not installed (pip install -e .)")
    return found


def time_command(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def time_to_first_line(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        elapsed = time.perf_counter() - started
        if not line:
            raise RuntimeError(f"{' '.join(argv)} printed nothing (exit {proc.wait()})")
        return elapsed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cli.json")
    args = parser.parse_args()
    deai, flower = _script("deai"), _script("deai-flower")
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        work = Path(tmp)
        blob = work / "blob.bin"
        blob.write_bytes(os.urandom(1 << 20))
        runs = {
            "help": lambda: time_command([deai, "--help"], work),
            "store add": lambda: time_command([deai, "store", "--root", str(work / "store"), "add", str(blob)], work),
            "num_rounds=0": lambda: time_command([flower, "num_rounds=0", f"hydra.run.dir={work / 'o0'}"], work),
            "+privacy.epsilonn=3": lambda: time_command([flower, "+privacy.epsilonn=3", f"hydra.run.dir={work / 'o1'}"],
                                                        work),  # fmt: skip
            "first line of a run": lambda: time_to_first_line(
                [flower, "num_rounds=1", "progress=false", f"hydra.run.dir={work / 'o2'}"], work
            ),
        }
        load_before = os.getloadavg()
        timings: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.runs):  # interleaved: a burst of load hits every command alike
            for name, run in runs.items():
                timings[name].append(run())
        load_after = os.getloadavg()
    print(f"{'command':<22} {'median s':>9} {'min':>6} {'max':>6} {'target':>7}")
    results = {}
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        results[name] = {"median_s": round(median, 3), "min_s": round(min(seconds), 3), "max_s": round(max(seconds), 3),
                         "runs_s": [round(s, 3) for s in seconds], "target_s": TARGETS[name]}  # fmt: skip
        print(f"{name:<22} {median:>9.2f} {min(seconds):>6.2f} {max(seconds):>6.2f} {TARGETS[name]:>7.1f}")
    print(f"load average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; {os.cpu_count()} CPUs")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "runs": args.runs,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "commands": results,
    }, indent=2) + "\n", encoding="utf-8")  # fmt: skip
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()

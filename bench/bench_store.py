"""Throughput of CID computation and of the embedded store.

Every model update is hashed when it is stored and again whenever it is read back, so
these numbers bound how fast a round can move updates through the local store. ``put``
times include the fsync that makes a stored blob durable.

Prints a summary and writes ``bench/results/store.json``. Run from the repository root:
``python -m bench.bench_store``.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from deai_flower.storage import LocalStore, compute_cid

MB = 1_000_000
CID_MB = 100
STORE_SIZES_MB = (1, 10, 100)
REPEATS = 3
RESULTS = Path(__file__).resolve().parent / "results" / "store.json"


def _best_of(action: Callable[[], object]) -> float:
    """Fastest of :data:`REPEATS` timed calls: the one least disturbed by other work."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    data = os.urandom(CID_MB * MB)
    cid_seconds = _best_of(lambda: compute_cid(data))
    print(f"compute_cid, {CID_MB} MB: {cid_seconds:.3f} s = {CID_MB / cid_seconds:.0f} MB/s")

    store_rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for size_mb in STORE_SIZES_MB:
            blob = data[: size_mb * MB]
            # a fresh store per timed put, so every put really writes the file
            put_seconds = _best_of(lambda: LocalStore(tempfile.mkdtemp(dir=scratch)).put(blob))
            store = LocalStore(Path(scratch) / f"read-{size_mb}")
            cid = store.put(blob)
            get_seconds = _best_of(lambda: store.get(cid))
            store_rows.append(
                {
                    "size_mb": size_mb,
                    "put_seconds": round(put_seconds, 4),
                    "get_seconds": round(get_seconds, 4),
                }
            )
            print(f"LocalStore {size_mb:>3} MB: put {put_seconds:.3f} s, get {get_seconds:.3f} s")

    results = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cid_mb": CID_MB,
        "cid_seconds": round(cid_seconds, 4),
        "cid_mb_per_s": round(CID_MB / cid_seconds, 1),
        "store": store_rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.name} in {RESULTS.parent.name}/")


if __name__ == "__main__":
    main()

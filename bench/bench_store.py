"""Throughput of CID computation and of both content stores.

Every model update is hashed when it is stored and again whenever it is read back, so
these numbers bound how fast a round can move updates through a store:

* ``compute_cid`` over 100 MB (target: at least 200 MB/s);
* the embedded :class:`LocalStore`: ``put`` (hash, write, fsync, rename) and ``get``
  (read, re-hash) of 1, 10 and 100 MB blobs (target: put + get of 100 MB under 2 s);
* :class:`IpfsStore` against an IPFS node, the same sizes: ``put`` (local hash, upload,
  the node's import and pin, CID comparison) and ``get`` (root check, download, re-hash).
  The node is the one at ``--api-addr`` if given, else a throwaway offline daemon (Kubo
  if installed, else js-ipfs from the npm cache; ``--install`` installs js-ipfs first).
  Without any, the IPFS rows are skipped and the reason recorded.

Each figure is the fastest of three runs; every IPFS ``put`` uploads new content (the
first bytes differ) so the node cannot skip work it has already done.

Prints a table and writes ``bench/results/store.json``. Run from the repository root:
``python -m bench.bench_store [--api-addr MULTIADDR] [--install]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from deai_flower.errors import StoreUnavailableError
from deai_flower.storage import IpfsStore, LocalStore, compute_cid
from deai_flower.storage.ipfs_daemon import IpfsDaemon, find_daemon

MB = 1_000_000
CID_MB = 100
STORE_SIZES_MB = (1, 10, 100)
REPEATS = 3
CID_TARGET_MB_S = 200.0
LOCAL_100MB_TARGET_S = 2.0
RESULTS = Path(__file__).resolve().parent / "results" / "store.json"


def _best_of(action: Callable[[int], object]) -> float:
    """Fastest of :data:`REPEATS` timed calls (``action(i)``): the one least disturbed by other work."""
    times = []
    for attempt in range(REPEATS):
        start = time.perf_counter()
        action(attempt)
        times.append(time.perf_counter() - start)
    return min(times)


def _variant(data: bytes, attempt: int) -> bytes:
    """``data`` with its first 8 bytes replaced: new content, same size."""
    return attempt.to_bytes(8, "big") + data[8:]


def _row(store: str, size_mb: int, put_s: float, get_s: float) -> dict[str, Any]:
    return {
        "store": store,
        "size_mb": size_mb,
        "put_seconds": round(put_s, 4),
        "get_seconds": round(get_s, 4),
        "put_mb_per_s": round(size_mb / put_s, 1),
        "get_mb_per_s": round(size_mb / get_s, 1),
    }


def bench_local(data: bytes) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for size_mb in STORE_SIZES_MB:
            blob = data[: size_mb * MB]
            # a fresh store per timed put, so every put really writes the file
            put_s = _best_of(lambda _i: LocalStore(tempfile.mkdtemp(dir=scratch)).put(blob))
            store = LocalStore(Path(scratch) / f"read-{size_mb}")
            cid = store.put(blob)
            get_s = _best_of(lambda _i: store.get(cid))
            rows.append(_row("local", size_mb, put_s, get_s))
    return rows


def bench_ipfs(data: bytes, store: IpfsStore) -> list[dict[str, Any]]:
    rows = []
    for size_mb in STORE_SIZES_MB:
        variants = [_variant(data[: size_mb * MB], i) for i in range(REPEATS)]
        put_s = _best_of(lambda i: store.put(variants[i]))
        cid = compute_cid(variants[0])
        get_s = _best_of(lambda _i: store.get(cid))
        rows.append(_row("ipfs", size_mb, put_s, get_s))
        del variants
    return rows


@contextlib.contextmanager
def ipfs_node(api_addr: str | None, install: bool) -> Iterator[tuple[str, str]]:
    """``(api_addr, description)`` of the node to measure: the given one, or a throwaway daemon."""
    if api_addr:
        yield api_addr, "node at --api-addr"
        return
    with IpfsDaemon(find_daemon(install=install)) as daemon:
        yield daemon.api_addr, f"throwaway offline {daemon.kind} daemon"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-addr", help="measure this IPFS node instead of starting one")
    parser.add_argument("--install", action="store_true", help="install js-ipfs from npm if no node is found")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    data = os.urandom(CID_MB * MB)
    cid_seconds = _best_of(lambda _i: compute_cid(data))
    cid_rate = CID_MB / cid_seconds
    print(f"compute_cid, {CID_MB} MB: {cid_seconds:.3f} s = {cid_rate:.0f} MB/s (target >= {CID_TARGET_MB_S:.0f})")

    rows = bench_local(data)
    ipfs: dict[str, Any] = {}
    try:
        with ipfs_node(args.api_addr, args.install) as (api_addr, description):
            store = IpfsStore(api_addr, timeout=120, retries=0)
            agent = str(store.node_id().get("AgentVersion", "unknown"))
            ipfs = {"node": f"{description} ({agent})"}
            rows += bench_ipfs(data, store)
    except StoreUnavailableError as exc:
        ipfs = {"skipped": str(exc)}
        print(f"IPFS rows skipped: {exc}")

    print(f"\n{'store':<6} {'MB':>4} {'put s':>8} {'get s':>8} {'put MB/s':>9} {'get MB/s':>9}")
    for row in rows:
        print(f"{row['store']:<6} {row['size_mb']:>4} {row['put_seconds']:>8.3f} {row['get_seconds']:>8.3f} "
              f"{row['put_mb_per_s']:>9.1f} {row['get_mb_per_s']:>9.1f}")  # fmt: skip
    if "node" in ipfs:
        print(f"ipfs: {ipfs['node']}")
    local_100 = next(r for r in rows if r["store"] == "local" and r["size_mb"] == 100)
    local_put_get = local_100["put_seconds"] + local_100["get_seconds"]
    targets = {
        "cid_mb_per_s_at_least_200": cid_rate >= CID_TARGET_MB_S,
        "local_put_plus_get_100mb_under_2s": local_put_get < LOCAL_100MB_TARGET_S,
    }
    print(f"local put + get, 100 MB: {local_put_get:.3f} s (target < {LOCAL_100MB_TARGET_S:g} s)")
    print("targets: " + ", ".join(f"{name} {'met' if ok else 'MISSED'}" for name, ok in targets.items()))

    results = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cid_mb": CID_MB,
        "cid_seconds": round(cid_seconds, 4),
        "cid_mb_per_s": round(cid_rate, 1),
        "local_put_plus_get_100mb_seconds": round(local_put_get, 4),
        "targets": targets,
        "ipfs": ipfs,
        "store": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.name} in {RESULTS.parent.name}/")


if __name__ == "__main__":
    main()

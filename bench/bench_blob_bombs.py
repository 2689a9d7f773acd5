"""What a hostile revealed blob costs an attester: time, peak memory and the length of
the refusal it writes to its log and to ``results.json``.

Each case is a blob within the default 64 MiB ``max_blob_bytes`` (the bombs of
``tests/adversarial/test_blob_bombs.py``: a header of 16 or 64 MiB of tensor names, the
same with one expected tensor given millions of dims, and a well-formed 64 MiB blob of
the expected names with a wrong shape), plus a sparse 1 GiB file under a CID's name.
Each is put in a local store, then read in a fresh child process as an attester does:
``LocalStore.get`` then ``decode_arrays(..., expected=run spec)``, and again without the
spec (the initial model, the validation set). The child reports the seconds of that call,
its peak resident memory above what it had before the call (``VmHWM`` after resetting
it, less ``VmRSS`` before), and the
exception and its message length.

``--baseline REV`` runs the same cases against ``blob.py`` and ``local.py`` as they were at
REV (before the header bounds), for comparison. Run from the repository root:
``python bench/bench_blob_bombs.py [--baseline REV] [--skip-baseline-without-spec]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "blob_bombs.json"
MAX_BLOB_BYTES = 64 * 1024 * 1024
MiB = 1024 * 1024


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _bombs() -> ModuleType:
    return _load("blob_bombs", ROOT / "tests" / "adversarial" / "test_blob_bombs.py")


# ---------------------------------------------------------------- child: one read


def child(root: str, cid: str, code: str, with_spec: bool) -> None:
    """Read ``cid`` as an attester would; print one JSON line."""
    if code == "current":
        from deai_flower.protocol import blob
        from deai_flower.storage.local import LocalStore

        store = LocalStore(root, max_bytes=MAX_BLOB_BYTES)
    else:  # a directory holding an earlier blob.py and local.py
        blob = _load("old_blob", Path(code) / "blob.py")
        LocalStore = _load("old_local", Path(code) / "local.py").LocalStore  # noqa: N806
        store = LocalStore(root)  # the earlier store had no size limit
    spec = _bombs().SPEC if with_spec else None
    _reset_peak()
    before = _memory_kib("VmRSS")
    started = time.perf_counter()
    outcome: dict[str, object]
    try:
        arrays = blob.decode_arrays(store.get(cid), max_bytes=MAX_BLOB_BYTES, expected=spec)
        outcome = {"error": None, "tensors": len(arrays)}
    except Exception as exc:  # noqa: BLE001 - reported, whatever it is
        outcome = {"error": type(exc).__name__, "error_chars": len(str(exc)), "error_head": str(exc)[:160]}
    outcome["seconds"] = round(time.perf_counter() - started, 4)
    peak = _memory_kib("VmHWM")
    outcome["peak_rss_mib"] = round(peak / 1024, 1)
    outcome["peak_rss_above_start_mib"] = round((peak - before) / 1024, 1)
    print(json.dumps(outcome))


def _memory_kib(field: str) -> int:
    """A ``/proc/self/status`` figure (Linux) in KiB: ``VmRSS`` now, ``VmHWM`` the peak.
    (``ru_maxrss`` would not do: Linux carries it over from the parent through exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Make ``VmHWM`` start from the current RSS (so it measures the call alone)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # then VmHWM also counts the imports' peak: an overestimate


# ---------------------------------------------------------------- parent


def _verdict(outcome: dict[str, object]) -> str:
    error = outcome.get("error")
    if error is None:
        return "accepted"
    if error in ("BlobNotFoundError", "StoreUnavailableError"):
        return "unavailable"
    if error in ("BlobFormatError", "StoreError", "TamperedBlobError"):
        return "invalid"
    return f"crash ({error})"


def _measure(root: Path, cid: str, code: str, with_spec: bool, timeout: float) -> dict[str, object]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(root), cid, code, str(int(with_spec))]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": "timeout", "seconds": timeout}
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}", "stderr": done.stderr[-300:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _line(row: dict[str, object]) -> str:
    spec = "spec" if row["spec"] else "no spec"
    seconds, memory = float(row.get("seconds", 0)), float(row.get("peak_rss_above_start_mib", 0))
    return (f"{row['code']:>18} {row['case']:>26} {spec:>7} {row['verdict']:>19} {seconds:8.3f} s "
            f"{memory:8.1f} MiB {int(row.get('error_chars', 0)):>10} chars")  # fmt: skip


def _old_code(rev: str, into: Path) -> Path:
    for path in ("deai_flower/protocol/blob.py", "deai_flower/storage/local.py"):
        source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True)
        (into / Path(path).name).write_text(source.stdout)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="REV", help="also run blob.py and local.py as they were at REV")
    parser.add_argument("--skip-baseline-without-spec", action="store_true",
                        help="baseline: only the attester path (with the spec), the slower one is without")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    args = parser.parse_args()

    from deai_flower.storage import LocalStore, compute_cid

    bombs = _bombs()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="blob-bombs-") as scratch:
        store_root = Path(scratch) / "store"
        store = LocalStore(store_root)
        cases: dict[str, tuple[str, int]] = {}
        honest = bombs.encode_arrays(bombs._model())
        cases["honest-update"] = (store.put(honest), len(honest))
        for name, make in bombs.BOMBS.items():
            data = make()
            cases[name] = (store.put(data), len(data))
            del data
        sparse_cid = compute_cid(b"a name for a sparse 1 GiB file")
        sparse = store_root / sparse_cid[7:9] / sparse_cid
        sparse.parent.mkdir(parents=True, exist_ok=True)
        with open(sparse, "wb") as handle:
            handle.truncate(1 << 30)
        cases["sparse-1GiB-file"] = (sparse_cid, 1 << 30)

        codes = {"current": "current"}
        if args.baseline:
            old = Path(scratch) / "old"
            old.mkdir()
            codes[f"baseline {args.baseline}"] = str(_old_code(args.baseline, old))
        for label, code in codes.items():
            for name, (cid, size) in cases.items():
                for with_spec in (True, False):
                    skip = args.skip_baseline_without_spec or name.startswith("sparse")  # reads 1 GiB twice
                    if label != "current" and not with_spec and skip:
                        continue
                    outcome = _measure(store_root, cid, code, with_spec, args.timeout)
                    row = {"code": label, "case": name, "bytes": size, "spec": with_spec, "verdict": _verdict(outcome),
                           **outcome}  # fmt: skip
                    rows.append(row)
                    print(_line(row), flush=True)

    document = {
        "what": "LocalStore.get + decode_arrays as an attester does, per hostile blob, in a fresh process",
        "max_blob_bytes": MAX_BLOB_BYTES,
        "store": "current: LocalStore(root, max_bytes=max_blob_bytes), as open_store should open it for an "
                 "attester; baseline: LocalStore(root), which had no limit",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg": os.getloadavg()},  # fmt: skip
        "columns": {
            "seconds": "wall-clock of get + decode",
            "peak_rss_above_start_mib": "peak RSS minus RSS before the call",
            "error_chars": "length of the refusal message",
        },
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1")
    else:
        main()

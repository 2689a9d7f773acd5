"""LocalStore in a directory others can write to: it reads regular files only, never
blocks, and never reads more than the store's limit.

An attester reads revealed blobs from a store directory it may share with the run's
other participants. Whatever they leave under a CID's name (a link to ``/dev/zero``, a
FIFO nobody writes to, a directory, a huge sparse file), ``get`` must answer promptly
with a :class:`StoreError` that is not :class:`BlobNotFoundError` (the verdict is then
"invalid", not "unavailable") and without reading the entry. The dangerous cases run in
a child process with a memory limit and a timeout, so a regression fails the test
instead of hanging it or exhausting the machine's memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deai_flower.errors import BlobNotFoundError, ConfigError, StoreError, TamperedBlobError
from deai_flower.storage import LocalStore, compute_cid

CHILD_MEMORY = 512 * 1024 * 1024  # address space of the child: far below 1 GiB
CHILD_TIMEOUT_S = 20.0

_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
    from deai_flower.storage import LocalStore
    root, cid, method, max_bytes = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    store = LocalStore(root, max_bytes=max_bytes)
    started = time.perf_counter()
    try:
        if method == "get":
            store.get(cid)
        else:
            store.get_to_file(cid, sys.argv[5])
        outcome = {{"error": None}}
    except BaseException as exc:
        outcome = {{"error": type(exc).__name__, "bases": [c.__name__ for c in type(exc).__mro__],
                    "message": str(exc)[:2000]}}
    outcome["seconds"] = time.perf_counter() - started
    print(json.dumps(outcome))
    """
).format(memory=CHILD_MEMORY)


def _read_in_child(root: Path, cid: str, *, method: str = "get", max_bytes: int | None = None,
                   destination: Path | None = None) -> dict[str, object]:  # fmt: skip
    """What ``LocalStore(root, max_bytes=...).<method>(cid)`` does in a fresh, memory-limited process."""
    args = [sys.executable, "-c", _CHILD, str(root), cid, method, json.dumps(max_bytes)]
    if destination is not None:
        args.append(str(destination))
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"LocalStore.{method} did not return within {CHILD_TIMEOUT_S} s")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _entry(root: Path, cid: str) -> Path:
    """Where the store keeps ``cid`` (created empty of any file)."""
    path = root / cid[7:9] / cid
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _assert_refused_as_tampered(outcome: dict[str, object], kind: str) -> None:
    assert outcome["error"] == "TamperedBlobError", outcome
    assert "StoreError" in outcome["bases"] and "BlobNotFoundError" not in outcome["bases"]  # type: ignore[operator]
    assert kind in str(outcome["message"]) and "not a regular file" in str(outcome["message"])


CID = compute_cid(b"a blob whose entry was replaced")


@pytest.mark.parametrize("method", ["get", "get_to_file"])
def test_a_symlink_to_dev_zero_is_refused_without_reading(tmp_path: Path, method: str) -> None:
    root = tmp_path / "blobs"
    _entry(root, CID).symlink_to("/dev/zero")
    outcome = _read_in_child(root, CID, method=method, destination=tmp_path / "out")
    _assert_refused_as_tampered(outcome, "a symbolic link")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["get", "get_to_file"])
def test_a_fifo_is_refused_at_once(tmp_path: Path, method: str) -> None:
    root = tmp_path / "blobs"
    os.mkfifo(_entry(root, CID))
    outcome = _read_in_child(root, CID, method=method, destination=tmp_path / "out")
    _assert_refused_as_tampered(outcome, "a FIFO")
    assert float(outcome["seconds"]) < CHILD_TIMEOUT_S  # type: ignore[arg-type]


def test_a_symlink_to_a_character_device_is_refused_in_process(tmp_path: Path) -> None:
    """The same refusal, in this process: a link is refused from its lstat, never opened
    (``/dev/null`` here: an old reader must fail this test, not exhaust memory)."""
    store = LocalStore(tmp_path / "blobs")
    _entry(tmp_path / "blobs", CID).symlink_to("/dev/null")
    with pytest.raises(TamperedBlobError, match="symbolic link"):
        store.get(CID)
    assert not store.has(CID)


def test_a_symlink_to_the_right_bytes_is_still_refused_and_put_replaces_it(tmp_path: Path) -> None:
    """A link can change its target at any time; only the store's own files are read."""
    data = b"the genuine bytes"
    cid = compute_cid(data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(data)
    store = LocalStore(tmp_path / "blobs")
    entry = _entry(tmp_path / "blobs", cid)
    entry.symlink_to(elsewhere)
    assert not store.has(cid)
    with pytest.raises(TamperedBlobError, match="symbolic link"):
        store.get(cid)
    assert store.put(data) == cid  # a link of the right size is not taken for the blob
    assert not entry.is_symlink() and store.has(cid) and store.get(cid) == data


def test_a_directory_is_refused_as_tampering(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "blobs")
    _entry(tmp_path / "blobs", CID).mkdir()
    with pytest.raises(TamperedBlobError, match="a directory, not a regular file") as caught:
        store.get(CID)
    assert not isinstance(caught.value, BlobNotFoundError)
    with pytest.raises(TamperedBlobError, match="a directory"):
        store.get_to_file(CID, tmp_path / "out")
    assert not store.has(CID)


@pytest.mark.parametrize("method", ["get", "get_to_file"])
def test_an_oversized_file_is_refused_from_its_size_without_reading(tmp_path: Path, method: str) -> None:
    """A sparse 1 GiB file (instant to make) against a 64 MiB limit, in a 512 MiB process."""
    root = tmp_path / "blobs"
    with open(_entry(root, CID), "wb") as handle:
        handle.truncate(1 << 30)
    outcome = _read_in_child(root, CID, method=method, max_bytes=64 << 20, destination=tmp_path / "out")
    assert outcome["error"] == "StoreError", outcome
    assert f"{1 << 30} bytes, over the limit of {64 << 20}" in str(outcome["message"])
    assert not (tmp_path / "out").exists()


def test_the_limit_admits_a_file_of_exactly_max_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4
    probe = LocalStore(tmp_path / "blobs")
    cid = probe.put(data)
    assert LocalStore(tmp_path / "blobs", max_bytes=len(data)).get(cid) == data
    with pytest.raises(StoreError, match="over the limit") as caught:
        LocalStore(tmp_path / "blobs", max_bytes=len(data) - 1).get(cid)
    assert not isinstance(caught.value, (BlobNotFoundError, TamperedBlobError))
    out = tmp_path / "out"
    LocalStore(tmp_path / "blobs", max_bytes=len(data)).get_to_file(cid, out)
    assert out.read_bytes() == data


def test_a_negative_limit_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        LocalStore(tmp_path / "blobs", max_bytes=-1)


def test_a_missing_blob_is_still_not_found(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "blobs", max_bytes=10)
    with pytest.raises(BlobNotFoundError):
        store.get(CID)
    with pytest.raises(BlobNotFoundError):
        store.get_to_file(CID, tmp_path / "out")

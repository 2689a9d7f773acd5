"""LocalStore keeps blobs under their CID and never returns bytes that do not match it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from deai_flower.errors import BlobNotFoundError, InvalidCidError, StoreError, TamperedBlobError
from deai_flower.storage import ContentStore, LocalStore, compute_cid

LARGE = hashlib.shake_256(b"local store").digest(3 * 262_144 + 11)  # a multi-block dag-pb CID


def _stored_file(root: Path, cid: str) -> Path:
    matches = [path for path in root.rglob(cid) if path.is_file()]
    assert len(matches) == 1
    return matches[0]


def _all_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "blobs")


@pytest.mark.parametrize("data", [b"", b"hello world", LARGE], ids=["empty", "small", "large"])
def test_put_get_round_trip(store: LocalStore, data: bytes) -> None:
    cid = store.put(data)
    assert cid == compute_cid(data)
    assert store.has(cid)
    assert store.get(cid) == data


def test_put_is_idempotent(store: LocalStore, tmp_path: Path) -> None:
    first = store.put(b"same bytes")
    second = store.put(b"same bytes")
    assert first == second
    assert _all_files(tmp_path / "blobs") == [_stored_file(tmp_path / "blobs", first)]


def test_layout_is_sharded_by_digest_characters(store: LocalStore, tmp_path: Path) -> None:
    cid = store.put(b"layout")
    assert _stored_file(tmp_path / "blobs", cid) == tmp_path / "blobs" / cid[7:9] / cid


def test_flipped_byte_is_detected(store: LocalStore, tmp_path: Path) -> None:
    cid = store.put(LARGE)
    path = _stored_file(tmp_path / "blobs", cid)
    corrupted = bytearray(path.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0x01
    path.write_bytes(corrupted)
    with pytest.raises(TamperedBlobError, match=cid):
        store.get(cid)


def test_truncated_file_is_detected(store: LocalStore, tmp_path: Path) -> None:
    cid = store.put(b"a blob that will lose its tail")
    path = _stored_file(tmp_path / "blobs", cid)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(TamperedBlobError, match=cid):
        store.get(cid)


def test_missing_blob(store: LocalStore) -> None:
    cid = compute_cid(b"never stored")
    assert not store.has(cid)
    with pytest.raises(BlobNotFoundError, match=cid):
        store.get(cid)
    with pytest.raises(BlobNotFoundError):
        store.get_to_file(cid, os.devnull)


def test_invalid_cid_is_refused(store: LocalStore) -> None:
    with pytest.raises(InvalidCidError):
        store.get("../../etc/passwd")
    with pytest.raises(InvalidCidError):
        store.has("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG")


def test_streaming_round_trip(store: LocalStore, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(LARGE)
    cid = store.put_file(source)
    assert cid == compute_cid(LARGE)
    assert store.get(cid) == LARGE
    destination = tmp_path / "out" / "copy.bin"
    store.get_to_file(cid, destination)
    assert destination.read_bytes() == LARGE
    assert not any(p.name.startswith(".incoming-") for p in tmp_path.rglob("*"))


def test_get_to_file_refuses_tampered_blob_and_keeps_destination(
    store: LocalStore, tmp_path: Path
) -> None:
    cid = store.put(LARGE)
    path = _stored_file(tmp_path / "blobs", cid)
    corrupted = bytearray(path.read_bytes())
    corrupted[0] ^= 0xFF
    path.write_bytes(corrupted)
    destination = tmp_path / "copy.bin"
    destination.write_bytes(b"previous content")
    with pytest.raises(TamperedBlobError, match=cid):
        store.get_to_file(cid, destination)
    assert destination.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".incoming-")] == []


def test_describe_and_protocol(store: LocalStore, tmp_path: Path) -> None:
    assert store.kind == "local"
    assert store.describe() == {"kind": "local", "location": str(tmp_path / "blobs")}
    assert isinstance(store, ContentStore)


def test_put_with_a_known_cid_and_a_wrong_one_caught_on_read(store: LocalStore) -> None:
    data = b"update bytes" * 1000
    cid = compute_cid(data)
    assert store.put(data, cid=cid) == cid
    assert store.get(cid) == data
    other = b"other bytes"
    wrong = store.put(other, cid=compute_cid(b"not these bytes"))  # a caller's bug...
    with pytest.raises(TamperedBlobError):  # ...is caught by every read
        store.get(wrong)


def test_staged_blob_is_hidden_until_published(store: LocalStore, tmp_path: Path) -> None:
    cid = compute_cid(LARGE)
    token = store.stage(LARGE, cid=cid)
    assert not store.has(cid)
    with pytest.raises(BlobNotFoundError):
        store.get(cid)
    staged = Path(token)
    assert staged.parent == tmp_path / "blobs" / ".staging" and cid not in staged.name
    assert staged.stat().st_mode & 0o077 == 0  # owner-only while secret
    assert store.publish(token, cid=cid)
    assert store.get(cid) == LARGE
    assert _stored_file(tmp_path / "blobs", cid).stat().st_mode & 0o777 == 0o644
    assert not staged.exists()


def test_publish_of_an_unknown_token_asks_for_a_put(store: LocalStore, tmp_path: Path) -> None:
    other = LocalStore(tmp_path / "blobs")  # the same directory, another process's handle
    token = store.stage(b"secret update", cid=compute_cid(b"secret update"))
    assert not other.publish(token, cid=compute_cid(b"secret update"))
    assert not store.publish("", cid=compute_cid(b"secret update"))
    assert not other.has(compute_cid(b"secret update"))


def test_discard_removes_the_staged_copy_and_nothing_outside_staging(store: LocalStore, tmp_path: Path) -> None:
    token = store.stage(b"abandoned", cid=compute_cid(b"abandoned"))
    store.discard(token)
    assert not Path(token).exists()
    assert not store.publish(token, cid=compute_cid(b"abandoned"))
    outside = tmp_path / "keep.txt"
    outside.write_text("not the store's")
    store.discard(str(outside))
    assert outside.exists()


def test_a_failed_staged_write_fails_the_publish_clearly(store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    token = store.stage(b"x" * 1000, cid=compute_cid(b"x" * 1000))
    with pytest.raises(StoreError, match="cannot write staged blob"):
        store.publish(token, cid=compute_cid(b"x" * 1000))
    monkeypatch.undo()
    assert not Path(token).exists()
    assert not store.has(compute_cid(b"x" * 1000))

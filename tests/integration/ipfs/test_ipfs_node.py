"""IpfsStore against a real IPFS daemon: the node's CIDs are ours, and it is never trusted."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deai_flower.cli.deai import main as deai_main
from deai_flower.errors import BlobNotFoundError, StoreError, StoreUnavailableError, TamperedBlobError
from deai_flower.storage import IpfsStore, LocalStore, compute_cid
from deai_flower.storage import ipfs as ipfs_module
from deai_flower.protocol.cid import CHUNK_SIZE, MAX_LINKS
from deai_flower.storage.ipfs_daemon import DaemonCommand, IpfsDaemon

pytestmark = [pytest.mark.ipfs, pytest.mark.filterwarnings("ignore:The 'strict' parameter:FutureWarning")]

K = CHUNK_SIZE
BOUNDARY_SIZES = {
    "empty": 0,
    "one-byte": 1,
    "one-chunk": K,
    "one-chunk-plus-1": K + 1,
    "full-node": MAX_LINKS * K,  # the widest single dag-pb node
    "full-node-plus-1": MAX_LINKS * K + 1,  # the first two-level tree
    "175-chunks-plus-7": (MAX_LINKS + 1) * K + 7,
}


@pytest.fixture
def store(ipfs_daemon: IpfsDaemon) -> IpfsStore:
    return IpfsStore(ipfs_daemon.api_addr, timeout=30, retries=1)


@pytest.mark.parametrize("size", BOUNDARY_SIZES.values(), ids=BOUNDARY_SIZES.keys())
def test_node_assigns_the_embedded_store_cid(
    size: int, store: IpfsStore, ipfs_daemon: IpfsDaemon, tmp_path: Path
) -> None:
    data = random.Random(size).randbytes(size)
    local = LocalStore(tmp_path / "local")
    # put() itself refuses a node whose CID differs; compare explicitly all the same
    assert store.put(data) == local.put(data) == compute_cid(data)
    assert store.get(local.put(data)) == data


def test_put_get_pin_round_trip(store: IpfsStore, tmp_path: Path) -> None:
    data = random.Random(1).randbytes(3 * K + 11)
    cid = store.put(data)
    assert store.put(data) == cid  # idempotent
    assert store.has(cid) and store.is_pinned(cid)
    assert store.get(cid) == data
    store.pin(cid)
    store.get_to_file(cid, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == data
    source = tmp_path / "source.bin"
    source.write_bytes(data[::-1])
    assert store.put_file(source) == compute_cid(data[::-1])


def test_missing_blob_is_not_found(store: IpfsStore) -> None:
    cid = compute_cid(b"never added to this node")
    assert not store.has(cid)
    assert not store.is_pinned(cid)
    with pytest.raises(BlobNotFoundError, match=cid):
        IpfsStore(store.api_addr, timeout=2, retries=0).get(cid)


class _FlippingStream:
    """Wraps the node's ``cat`` stream and flips one bit of what it returns."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._first = True

    def __iter__(self) -> Iterator[bytes]:
        for piece in self._inner:
            if self._first and piece:
                self._first = False
                piece = bytes([piece[0] ^ 0x01]) + piece[1:]
            yield piece

    def close(self) -> None:
        self._inner.close()


def test_wrong_bytes_from_the_node_are_refused(store: IpfsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    data = random.Random(2).randbytes(2 * K)
    cid = store.put(data)
    real_cat = store._client.cat
    monkeypatch.setattr(store._client, "cat", lambda *a, **kw: _FlippingStream(real_cat(*a, **kw)))
    with pytest.raises(TamperedBlobError, match=f"blob {cid} is corrupted or tampered with"):
        store.get(cid)


def test_a_node_chunking_differently_is_refused(store: IpfsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ipfs_module.ADD_OPTIONS, "chunker", "size-1024")  # as a misconfigured node would
    data = random.Random(3).randbytes(5000)
    with pytest.raises(StoreError, match=f"but its bytes hash to {compute_cid(data)}"):
        store.put(data)


def test_node_down_is_unavailable_with_its_address(ipfs_command: DaemonCommand) -> None:
    with IpfsDaemon(ipfs_command) as daemon:
        store = IpfsStore(daemon.api_addr, timeout=5, retries=1, retry_delay=0.05)
        cid = store.put(b"written before the node stops")
    started = time.perf_counter()
    with pytest.raises(StoreUnavailableError, match=f"IPFS node at {daemon.api_addr} cannot be reached"):
        store.get(cid)
    assert time.perf_counter() - started < 5
    with socket.socket() as sock:  # the port really is closed
        assert sock.connect_ex(("127.0.0.1", int(daemon.api_addr.rsplit("/", 1)[1]))) != 0


def test_cli_store_commands_against_the_node(
    ipfs_daemon: IpfsDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "hello.txt"
    source.write_bytes(b"hello world")
    common = ["store", "--store", "ipfs", "--api-addr", ipfs_daemon.api_addr]
    deai_main([*common, "add", str(source)])
    cid = capsys.readouterr().out.strip()
    assert cid == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"  # what `ipfs add --cid-version=1` prints
    deai_main([*common, "get", cid, "-o", str(tmp_path / "out.txt")])
    assert (tmp_path / "out.txt").read_bytes() == b"hello world"
    deai_main([*common, "verify", cid])
    assert capsys.readouterr().out.strip() == f"ok {cid}"
    with pytest.raises(SystemExit) as exit_info:
        deai_main([*common, "--timeout", "2", "--retries", "0", "verify", compute_cid(b"absent")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: blob ")

"""IpfsStore trusts its node for nothing: CIDs checked on add, bytes checked on read.

These run against the misbehaving stand-in node of ``conftest.py``; the same store
against real IPFS daemons is tested in ``tests/integration/ipfs``.
"""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module

from deai_flower.cli.deai import main as deai_main
from deai_flower.config import register_configs, validate
from deai_flower.errors import (
    BlobNotFoundError,
    ConfigError,
    InvalidCidError,
    StoreError,
    StoreUnavailableError,
    TamperedBlobError,
)
from deai_flower.storage.location import open_store
from deai_flower.storage import ContentStore, IpfsStore, compute_cid
from deai_flower.storage.ipfs import ADD_OPTIONS

# ipfshttpclient 0.7 passes urllib3 2 a deprecated argument on every request
pytestmark = pytest.mark.filterwarnings("ignore:The 'strict' parameter:FutureWarning")

FakeIpfsNode = Any  # the ``fake_ipfs`` fixture's node, defined in this folder's conftest.py
LARGE = hashlib.shake_256(b"ipfs store").digest(3 * 262_144 + 5)  # a dag-pb CID


def _store(node: FakeIpfsNode, **options: float) -> IpfsStore:
    return IpfsStore(node.api_addr, **{"timeout": 5.0, "retries": 0, **options})  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("data", [b"", b"hello world", LARGE], ids=["empty", "small", "large"])
def test_put_get_round_trip(fake_ipfs: FakeIpfsNode, data: bytes) -> None:
    store = _store(fake_ipfs)
    cid = store.put(data)
    assert cid == compute_cid(data)
    assert store.get(cid) == data
    assert store.has(cid)


def test_add_asks_for_the_ipfs_add_cid_version_1_raw_leaves_layout(fake_ipfs: FakeIpfsNode) -> None:
    _store(fake_ipfs).put(b"options")
    ((path, query),) = fake_ipfs.requests
    assert path == "add"
    assert query == {**query, **ADD_OPTIONS}
    assert (query["cid-version"], query["raw-leaves"], query["chunker"], query["pin"]) == (
        "1", "true", "size-262144", "true",
    )  # fmt: skip


def test_a_node_that_reports_another_cid_is_refused(fake_ipfs: FakeIpfsNode) -> None:
    fake_ipfs.report_cid = compute_cid(b"something else")
    expected = compute_cid(b"payload")
    with pytest.raises(StoreError, match=f"stored the blob as '{fake_ipfs.report_cid}'.*hash to {expected}"):
        _store(fake_ipfs).put(b"payload")


def test_a_node_that_returns_other_bytes_is_refused(fake_ipfs: FakeIpfsNode, tmp_path: Path) -> None:
    store = _store(fake_ipfs)
    cid = store.put(LARGE)
    fake_ipfs.corrupt_cat = True
    with pytest.raises(TamperedBlobError, match=f"blob {cid} is corrupted or tampered with"):
        store.get(cid)
    destination = tmp_path / "copy.bin"
    destination.write_bytes(b"previous content")
    with pytest.raises(TamperedBlobError):
        store.get_to_file(cid, destination)
    assert destination.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["copy.bin"]


def test_a_node_that_appends_bytes_is_refused(fake_ipfs: FakeIpfsNode) -> None:
    store = _store(fake_ipfs)
    cid = store.put(b"exact")
    fake_ipfs.extra_cat_bytes = 1
    with pytest.raises(TamperedBlobError):
        store.get(cid)


def test_download_cap(fake_ipfs: FakeIpfsNode) -> None:
    cid = _store(fake_ipfs).put(LARGE)
    with pytest.raises(StoreError, match=f"exceeds the limit of {len(LARGE) - 1} bytes"):
        _store(fake_ipfs, max_bytes=len(LARGE) - 1).get(cid)
    assert _store(fake_ipfs, max_bytes=len(LARGE)).get(cid) == LARGE


def test_missing_blob(fake_ipfs: FakeIpfsNode) -> None:
    store = _store(fake_ipfs)
    cid = compute_cid(b"never added")
    assert not store.has(cid)
    with pytest.raises(BlobNotFoundError, match=cid):
        store.get(cid)


def test_invalid_cid_never_reaches_the_node(fake_ipfs: FakeIpfsNode) -> None:
    store = _store(fake_ipfs)
    for bad in ("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "../../etc/passwd", "bafyfoo"):
        with pytest.raises(InvalidCidError):
            store.get(bad)
        with pytest.raises(InvalidCidError):
            store.has(bad)
    assert fake_ipfs.requests == []


def test_put_pins_and_pin(fake_ipfs: FakeIpfsNode) -> None:
    store = _store(fake_ipfs)
    cid = store.put(b"pin me")
    assert store.is_pinned(cid)
    fake_ipfs.pins.clear()
    assert not store.is_pinned(cid)
    store.pin(cid)
    assert store.is_pinned(cid)
    with pytest.raises(BlobNotFoundError):
        store.pin(compute_cid(b"absent"))


def test_node_down_is_unavailable_after_bounded_retries() -> None:
    addr = f"/ip4/127.0.0.1/tcp/{_free_port()}"
    store = IpfsStore(addr, timeout=2.0, retries=2, retry_delay=0.01)
    started = time.perf_counter()
    with pytest.raises(StoreUnavailableError, match=f"IPFS node at {addr} cannot be reached .* after 3 attempts"):
        store.put(b"x")
    with pytest.raises(StoreUnavailableError, match=addr):
        store.get(compute_cid(b"x"))
    assert time.perf_counter() - started < 10


def test_slow_node_times_out_after_bounded_retries(fake_ipfs: FakeIpfsNode) -> None:
    fake_ipfs.delay_s = 1.0
    store = IpfsStore(fake_ipfs.api_addr, timeout=0.2, retries=1, retry_delay=0.01)
    with pytest.raises(StoreUnavailableError, match=r"did not answer add within 0.2 s after 2 attempts"):
        store.put(b"slow")
    assert fake_ipfs.count("add") == 2


def test_a_dropped_connection_is_retried(fake_ipfs: FakeIpfsNode) -> None:
    fake_ipfs.drop_first = 1
    store = IpfsStore(fake_ipfs.api_addr, timeout=5.0, retries=1, retry_delay=0.01)
    cid = store.put(b"second time lucky")
    assert fake_ipfs.count("add") == 2 and store.get(cid) == b"second time lucky"


def test_a_reply_cut_off_midway_is_retried_then_unavailable(fake_ipfs: FakeIpfsNode) -> None:
    store = IpfsStore(fake_ipfs.api_addr, timeout=5.0, retries=1, retry_delay=0.01)
    cid = store.put(LARGE)
    fake_ipfs.break_cat = 1
    assert store.get(cid) == LARGE
    fake_ipfs.break_cat = 2
    with pytest.raises(StoreUnavailableError, match=f"broke off cat {cid} .* after 2 attempts"):
        store.get(cid)


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="invalid IPFS API address 'localhost:5001'"):
        IpfsStore("localhost:5001")
    with pytest.raises(ConfigError, match="timeout"):
        IpfsStore(timeout=0)
    with pytest.raises(ConfigError, match="retries"):
        IpfsStore(retries=-1)


def test_describe_protocol_and_open_store(fake_ipfs: FakeIpfsNode) -> None:
    store = open_store(f"ipfs:{fake_ipfs.api_addr}", timeout_s=3.0, retries=1, max_bytes=10)
    assert isinstance(store, IpfsStore) and isinstance(store, ContentStore)
    assert store.describe() == {"kind": "ipfs", "location": fake_ipfs.api_addr}
    assert (store.timeout, store.retries, store.max_bytes) == (3.0, 1, 10)
    with pytest.raises(ConfigError, match="expected local:DIRECTORY or ipfs:"):
        open_store("s3:bucket")
    with pytest.raises(ConfigError, match="expected local:DIRECTORY or ipfs:"):
        open_store("ipfs:localhost:5001")


def test_cli_against_an_ipfs_node(
    fake_ipfs: FakeIpfsNode, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "hello.txt"
    source.write_bytes(b"hello world")
    common = ["store", "--api-addr", fake_ipfs.api_addr, "--retries", "0"]
    deai_main([*common, "add", str(source)])
    cid = capsys.readouterr().out.strip()
    assert cid == "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    deai_main([*common, "get", cid, "-o", str(tmp_path / "out.txt")])
    assert (tmp_path / "out.txt").read_bytes() == b"hello world"
    deai_main([*common, "verify", cid])
    assert capsys.readouterr().out.strip() == f"ok {cid}"

    fake_ipfs.corrupt_cat = True
    with pytest.raises(SystemExit) as exit_info:
        deai_main([*common, "verify", cid])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: blob {cid} is corrupted or tampered with") and err.count("\n") == 1


def test_cli_node_down_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    addr = f"/ip4/127.0.0.1/tcp/{_free_port()}"
    with pytest.raises(SystemExit) as exit_info:
        deai_main(["store", "--store", "ipfs", "--api-addr", addr, "--retries", "0", "add", str(source)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: IPFS node at {addr} cannot be reached") and err.count("\n") == 1


def _compose(*overrides: str) -> Any:
    register_configs()
    with initialize_config_module(config_module="deai_flower.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_storage_ipfs_config() -> None:
    cfg = _compose("storage=ipfs", "storage.api_addr=/ip4/127.0.0.1/tcp/5002")
    assert (cfg.storage.kind, cfg.storage.api_addr, cfg.storage.timeout_s, cfg.storage.retries) == (
        "ipfs", "/ip4/127.0.0.1/tcp/5002", 30.0, 2,
    )  # fmt: skip
    validate(cfg)
    for override, message in [
        ("storage.api_addr=localhost:5001", "storage.api_addr must be a multiaddr"),
        ("storage.timeout_s=0", "storage.timeout_s must be > 0"),
        ("storage.retries=-1", "storage.retries must be >= 0"),
        ("storage.kind=s3", "storage.kind must be 'local' or 'ipfs'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate(_compose("storage=ipfs", override))

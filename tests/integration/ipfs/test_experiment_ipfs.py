"""A whole experiment with every blob on a real IPFS node, started from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deai_flower.storage import IpfsStore, cid_from_bytes
from deai_flower.storage.ipfs_daemon import IpfsDaemon

pytestmark = [pytest.mark.ipfs, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:The 'strict' parameter:FutureWarning")]  # fmt: skip

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_USAGE_STATS_ENABLED": "0"}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    entry = "from deai_flower.cli.main import main; main()"  # as the deai-flower console script does
    return subprocess.run([sys.executable, "-c", entry, *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_experiment_runs_on_the_ipfs_node(ipfs_daemon: IpfsDaemon, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("storage=ipfs", f"storage.api_addr={ipfs_daemon.api_addr}", "num_clients=3", "num_rounds=1",
                     "progress=false", f"hydra.run.dir={out}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["store"] == {"kind": "ipfs", "location": ipfs_daemon.api_addr}
    assert results["config"]["storage"]["kind"] == "ipfs"
    (round_1,) = results["rounds"]
    assert round_1["status"] == "finalized" and round_1["excluded"] == {}
    assert not (out / "store").exists()  # nothing went to the embedded store

    # every CID the chain recorded is on the node, pinned, and its bytes verify
    store = IpfsStore(ipfs_daemon.api_addr)
    revealed = [cid_from_bytes(bytes.fromhex(e["args"]["cid"][2:]))
                for e in results["events"] if e["event"] == "Revealed"]  # fmt: skip
    assert len(revealed) == 3
    for cid in [*results["global_model_cids"], *revealed]:
        assert store.is_pinned(cid)
        store.get(cid)


def test_unreachable_node_is_one_readable_error(tmp_path: Path) -> None:
    result = run_cli("storage=ipfs", "storage.api_addr=/ip4/127.0.0.1/tcp/9", "storage.retries=0",
                     "num_clients=3", "num_rounds=1", "progress=false", f"hydra.run.dir={tmp_path / 'out'}",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode != 0
    assert "IPFS node at /ip4/127.0.0.1/tcp/9 cannot be reached" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout

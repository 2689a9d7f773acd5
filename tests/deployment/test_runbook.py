"""docs/deployment.md walked end to end on one machine (``runbook_walk.sh``): the admin's
chain, key, funds and contract; three hospitals' keys and data files; registration; TLS, the
SuperLink and the hand-written ``flwr`` connection; the run; each silo's node config, check,
SuperNode and gate; ``flwr run`` as ``create-run`` printed it, followed by ``deai consortium
watch``; ``deai verify``; ``deai local stop`` for every party. Each party has its own HOME.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deai_flower.chain.devnode import free_port

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent


@pytest.mark.timeout(2700)  # a dozen minutes on a loaded 2-core machine; the suite's 900 s is for one test
def test_the_runbook_walks_an_admin_and_three_hospitals_to_a_verified_run(tmp_path: Path) -> None:
    trial = tmp_path / "trial"
    node_port0 = free_port()
    while any(_busy(node_port0 + i) for i in range(1, 3)):
        node_port0 = free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "CHAIN_PORT": str(free_port()),
           "LINK_PORT": str(free_port()), "NODE_PORT0": str(node_port0)}  # fmt: skip
    try:
        done = subprocess.run(["bash", str(HERE / "runbook_walk.sh"), str(trial)], capture_output=True, text=True,
                              env=env, timeout=2400, check=False)  # fmt: skip
        out = done.stdout + done.stderr
        assert done.returncode == 0, out[-5000:]
        for step in ("deployed the round contract at 0x", "registered silo 0x", "registered successfully",
                     "created run 1 on contract", "ok   participant: builds as 0x"):  # fmt: skip
            assert step in out, (step, out[-3000:])
        assert len(re.findall(r"^ok   ", out, re.M)) == 3 * 8, out  # every silo check holds, for each of the silos
        assert re.search(r"^round 2: finalized \(3 of 3 revealed\)", out, re.M), out[-3000:]
        assert "run 1: all 2 rounds finalized" in out and "all 2 rounds verified (2 finalized)" in out
        assert '"status": "finished:completed"' in out
    finally:  # whatever happened: every party stops what it started
        for party in ("silo-0", "silo-1", "silo-2", "admin"):
            subprocess.run([str(BIN / "deai"), "local", "stop", "--dir", str(trial / party / "run")],
                           capture_output=True, timeout=120, check=False)  # fmt: skip
    left = [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(trial).encode() in _read(p)]
    assert not left, [_read(p) for p in left]


def _busy(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""

"""``deai-flower`` against a real JSON-RPC node, invoked as a user invokes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deai_flower.chain.devnode import AnvilNode

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_USAGE_STATS_ENABLED": "0"}
SMALL = ("num_clients=3", "num_rounds=2", "progress=false", "training.local_epochs=1")


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    # As the console script does: Hydra finds the packaged configs through the module.
    entry = "from deai_flower.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", entry, *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def anvil_for_cli(anvil_binary: Path) -> Iterator[AnvilNode]:
    """An anvil of its own: the runs leave their state on it, as a user's node keeps it."""
    with AnvilNode(anvil_binary) as node:
        yield node


def test_two_runs_on_one_anvil_node(anvil_for_cli: AnvilNode, tmp_path: Path) -> None:
    results = []
    for i in (1, 2):
        out = tmp_path / f"run{i}"
        done = run_cli("chain=anvil", f"chain.rpc_url={anvil_for_cli.url}", *SMALL, "privacy.reproducible_noise=true",
                       f"hydra.run.dir={out}", cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert "finalized" in done.stdout
        results.append(json.loads((out / "results.json").read_text()))
    for r in results:
        assert r["chain"] == {"kind": "rpc", "url": anvil_for_cli.url, "chain_id": 31337}
        assert [x["status"] for x in r["rounds"]] == ["finalized", "finalized"]
        assert {"RunCreated", "RoundOpened", "Committed", "Revealed", "Attested", "RoundFinalized"} <= {
            e["event"] for e in r["events"]
        }
    # the second run deployed its own contract with the same (funded, already used) keys
    assert results[0]["contract_address"] != results[1]["contract_address"]
    # same seed and seeded noise, same models: the node changes where the rounds run, not their result
    assert results[0]["global_model_cids"] == results[1]["global_model_cids"]


def test_a_krum_run_verifies_from_the_node_with_no_rule_given(anvil_for_cli: AnvilNode, tmp_path: Path) -> None:
    """``deai verify --rpc`` reads the rule (here Krum) from the spec the chain names."""
    out = tmp_path / "krum"
    krum = ("strategy=krum", "strategy.num_malicious_nodes=0", "strategy.min_reveals=3")  # 3 clients: n >= 2f + 3
    done = run_cli("chain=anvil", f"chain.rpc_url={anvil_for_cli.url}", *krum, *SMALL, f"hydra.run.dir={out}",
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    chain_args = ["--rpc", anvil_for_cli.url, "--contract", results["contract_address"],
                  "--run-id", str(results["run_id"]), "--store-root", str(out / "store")]  # fmt: skip
    verified = run_deai("verify", *chain_args, cwd=tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "krum" in verified.stdout and "all 2 rounds verified" in verified.stdout
    assert all("krum aggregate equals the finalized CID" in line
               for line in verified.stdout.splitlines() if line.startswith("round "))  # fmt: skip
    # the rule is the chain's business: the old flag is refused, not obeyed
    refused = run_deai("verify", *chain_args, "--rule", "fedavg", cwd=tmp_path)
    assert refused.returncode == 2 and "unrecognized arguments: --rule" in refused.stderr


def run_deai(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deai_flower.cli.deai", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_unreachable_node_is_one_readable_error_line(tmp_path: Path) -> None:
    url = "http://127.0.0.1:1"
    done = run_cli("chain=anvil", f"chain.rpc_url={url}", *SMALL, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path,
                   timeout=300)  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0] and "unreachable" in errors[0], done.stderr[-2000:]
    assert not (tmp_path / "out" / "results.json").exists()

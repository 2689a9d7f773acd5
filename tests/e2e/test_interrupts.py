"""Stopping ``deai-flower`` mid-run: one line, the finished rounds kept, and a resume that
verifies clean.

The run plays on anvil, so the chain outlives the stopped process. A participant's reveal
of round 3 stalls (a slow silo), so the stop lands where it hurts most: round 3 trained,
its privacy cost charged to every participant's ledger and committed, and never revealed.
Resumed with the command the run printed at its start, the run completes and ``deai
verify`` recomputes every claimed ε from the chain's revealed history: a ledger still
charged with the abandoned round would claim more.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from deai_flower.chain.devnode import AnvilNode, find_anvil, install_anvil
from deai_flower.cli.main import claim_output_dir, with_unique_output_dirs
from deai_flower.errors import ChainUnavailableError, ConfigError

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_USAGE_STATS_ENABLED": "0"}
#: ``deai-flower`` as its console script runs it, with one silo's reveal of a chosen round
#: (``DEAI_TEST_STALL_ROUND``) hanging after it wrote ``DEAI_TEST_STALLED``.
ENTRY = """
import faulthandler, os, signal, sys, time
from pathlib import Path
from deai_flower.participant import handlers

faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for stacks if a stop hangs
# Ctrl-C as a terminal delivers it: a harness started in the background (a non-interactive
# shell's `&`) hands its children SIGINT ignored, and Python then leaves it ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

stall, real = int(os.environ.get("DEAI_TEST_STALL_ROUND", "0")), handlers.handle_reveal

def stalling_reveal(participant, message, context):
    if int(message.content["config"]["round"]) == stall:
        Path(os.environ["DEAI_TEST_STALLED"]).write_text("round %s" % stall)
        time.sleep(600)
    return real(participant, message, context)

handlers.handle_reveal = stalling_reveal  # the ClientApp looks its handlers up per message
from deai_flower.cli.main import main
sys.argv[0] = "deai-flower"
main()
"""


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilNode]:
    binary = find_anvil(search_from=REPO)
    if binary is None:
        try:
            binary = install_anvil()
        except ChainUnavailableError as exc:
            pytest.skip(f"anvil not found and cannot be installed: {exc}")
    with AnvilNode(binary) as node:
        yield node


def start(args: list[str], *, cwd: Path, logs: Path, stall_round: int = 0) -> subprocess.Popen[bytes]:
    env = {**ENV, "DEAI_TEST_STALL_ROUND": str(stall_round), "DEAI_TEST_STALLED": str(cwd / "stalled")}
    return subprocess.Popen([sys.executable, "-c", ENTRY, *args], cwd=cwd, env=env,
                            stdout=(logs / "stdout").open("wb"), stderr=(logs / "stderr").open("wb"))  # fmt: skip


def wait_for_finalized_rounds(cwd: Path, process: subprocess.Popen[bytes], count: int, *,
                              timeout: float = 240) -> Path:  # fmt: skip
    """The output directory, once its results.json has ``count`` finalized rounds and
    the next round's reveal has stalled."""
    deadline, stalled_since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        assert process.poll() is None, "deai-flower ended before it was stopped"
        if stalled_since is None and (cwd / "stalled").exists():
            stalled_since = time.monotonic()
        for results in cwd.glob("outputs/*/*/results.json"):
            rounds = json.loads(results.read_text())["rounds"]  # written atomically: never half a file
            if sum(r["status"] == "finalized" for r in rounds) >= count and stalled_since is not None:
                return results.parent
        if stalled_since is not None and time.monotonic() - stalled_since > 30:
            break  # the stalled round comes after the ones awaited: they were never written
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"no results.json with {count} finalized rounds while round {count + 1} was under way")


def first_start(anvil: AnvilNode, cwd: Path, stop: signal.Signals) -> tuple[subprocess.Popen[bytes], Path]:
    """A private 4-round run on anvil, stopped by ``stop`` in round 3 after its commits."""
    args = ["chain=anvil", f"chain.rpc_url={anvil.url}", "num_clients=3", "num_rounds=4", "training.local_epochs=1",
            "privacy.state_dir=ledgers"]  # fmt: skip
    process = start(args, cwd=cwd, logs=cwd, stall_round=3)
    out = wait_for_finalized_rounds(cwd, process, 2)
    process.send_signal(stop)
    try:
        process.wait(timeout=120)  # a loaded machine may take a while to unwind
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)  # every thread's stack, to stderr
        time.sleep(3)
        process.kill()
        pytest.fail(f"deai-flower did not end within 120 s of {stop.name}; its threads:\n"
                    + (cwd / "stderr").read_text()[-12000:])  # fmt: skip
    return process, out


@pytest.mark.slow
@pytest.mark.chain
def test_ctrl_c_keeps_the_finished_rounds_and_the_printed_resume_verifies_clean(
    anvil: AnvilNode, tmp_path: Path
) -> None:
    started = time.monotonic()
    process, out = first_start(anvil, tmp_path, signal.SIGINT)
    stderr = (tmp_path / "stderr").read_text()
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) <= 3, stderr  # the progress display's last state, then one line
    assert lines[-1].startswith(f"interrupted: 2 finalized rounds saved in {out / 'results.json'}; resume")

    record = json.loads((out / "run.json").read_text())
    assert record["contract_address"].startswith("0x") and record["run_id"] == 1 and record["resumable"]
    assert record["chain"]["url"] == anvil.url and record["spec_cid"]
    assert lines[-1].endswith(record["resume_command"])
    stdout = (tmp_path / "stdout").read_text().splitlines()
    assert stdout[1].startswith(f"run 1 on contract {record['contract_address']}")  # said at the start
    assert stdout[1].endswith(str(out / "run.json")) and record["resume_command"] in stdout[1]
    results = json.loads((out / "results.json").read_text())
    assert [(r["round"], r["status"]) for r in results["rounds"]] == [(1, "finalized"), (2, "finalized")]
    assert results["contract_address"] == record["contract_address"]
    # The first start's store and ledgers, pinned (the resume gets an output directory of its own).
    assert f"storage.root={out / 'store'}" in record["resume_overrides"]
    assert f"privacy.state_dir={out / 'ledgers'}" in record["resume_overrides"]

    # The documented resume: the printed command, from anywhere.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = shlex.split(record["resume_command"])
    assert command[0] == "deai-flower"
    resumed = start(command[1:], cwd=elsewhere, logs=elsewhere)
    assert resumed.wait(timeout=300) == 0, (elsewhere / "stderr").read_text()[-3000:]
    (second,) = elsewhere.glob("outputs/*/*/results.json")
    rounds = json.loads(second.read_text())["rounds"]
    assert [r["status"] for r in rounds] == ["finalized", "finalized"]  # rounds 3 and 4 of the run
    assert rounds[0]["round"] > 3  # round 3's attempt lapsed; a new attempt replaced it

    verify = subprocess.run([sys.executable, "-c", "from deai_flower.cli.deai import main; main()", "verify",
                             str(second.parent)], capture_output=True, text=True, env=ENV, timeout=300)  # fmt: skip
    assert verify.returncode == 0, verify.stdout[-4000:] + verify.stderr[-2000:]
    assert "MISMATCH" not in verify.stdout
    print(f"interrupt, resume and verify: {time.monotonic() - started:.1f}s")


@pytest.mark.slow
@pytest.mark.chain
def test_sigterm_stops_like_ctrl_c(anvil: AnvilNode, tmp_path: Path) -> None:
    process, out = first_start(anvil, tmp_path, signal.SIGTERM)
    stderr = (tmp_path / "stderr").read_text()
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(f"terminated: 2 finalized rounds saved in {out}")
    assert json.loads((out / "run.json").read_text())["resume_command"] in stderr


# --- one output directory per run ----------------------------------------------------


def test_two_starts_in_the_same_second_get_their_own_output_directories() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5)
    first, second = (with_unique_output_dirs(["num_rounds=2"], now=now) for _ in range(2))
    assert first[0] == second[0] == "num_rounds=2"
    assert first[1].startswith("hydra.run.dir=outputs/2025-01-02/03-04-05-")
    assert first[2].startswith("hydra.sweep.dir=multirun/2025-01-02/03-04-05-")
    assert first[1] != second[1] and first[2] != second[2]
    assert with_unique_output_dirs(["hydra.run.dir=mine"], now=now)[:1] == ["hydra.run.dir=mine"]
    assert not any(o.startswith("hydra.run.dir") for o in with_unique_output_dirs(["hydra.run.dir=x"], now=now)[1:])
    assert with_unique_output_dirs(["--help"], now=now) == ["--help"]


def test_an_output_directory_holds_one_run(tmp_path: Path) -> None:
    claim_output_dir(tmp_path / "a")
    with pytest.raises(ConfigError, match="already holds a run"):
        claim_output_dir(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run"):
        claim_output_dir(tmp_path / "b")


def test_the_cli_refuses_a_directory_that_holds_another_run(tmp_path: Path) -> None:
    """Refused with one line before Hydra writes its own files (.hydra/, main.log) there."""
    out = tmp_path / "out"
    claim_output_dir(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for where in (f"hydra.run.dir={out}", f"hydra.sweep.dir={tmp_path}"):
        result = subprocess.run([sys.executable, "-c", "from deai_flower.cli.main import main; main()",
                                 *(["-m"] if "sweep" in where else []), "num_rounds=1", where], cwd=tmp_path, env=ENV,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"error: output directory {out} already holds a run (run.json); give the new run another hydra.run.dir"]
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before

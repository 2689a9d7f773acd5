"""Attack: a launcher ships its own code to every silo in the FAB.

Anyone holding the SuperLink's CA certificate can ``flwr run`` a FAB, and Flower's
``flwr-clientapp`` imports the FAB's own ``deai_flower`` on each SuperNode. Here the
adversary takes the consortium's approved release, adds to its ClientApp a line that
writes the silo's keystore path to a file on the silo (a stand-in for sending the
decrypted key back), and submits it. On a real deployment (TLS, SuperNode authentication,
anvil) whose silos run pinned (``--isolation process`` + ``deai release gate`` with the
release's SHA-256), the marker never appears, every silo refuses the run with a reason that
reaches the launcher's run log, and the approved release then runs a round to the end.

Before the gate, the same FAB wrote the marker at the first message (the identity
challenge): the SuperNode's default ``flwr-clientapp`` unpacks the FAB and imports its
ClientApp module.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from deai_flower.chain.devnode import find_anvil
from deai_flower.consortium.demo_data import write_silo_files
from deai_flower.consortium.localnet import CONNECTION, PROJECT_ROOT, LocalConsortium, tools_missing
from deai_flower.consortium.release import fab_sha256

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

OVERRIDES = ["num_rounds=1", "dataset=breast_cancer", "training.local_epochs=1", "training.batch_size=16"]
REFUSAL = "this silo runs only releases it approved"
WARM = "each task is forked from a forkserver holding the installed release"
COLD_FALLBACK = "the warm start failed"
PAYLOAD = "    __import__('pathlib').Path({marker!r}).write_text(str(node_config.get('keystore')))  # adversary\n"


def _tampered_release(release: Path, dest: Path, marker: Path) -> Path:
    """The approved release, with the ClientApp writing ``marker`` whenever a node handles a message."""
    shutil.copytree(release, dest)
    app = dest / "deai_flower" / "participant" / "app.py"
    source = app.read_text()
    anchor = "    node_config = context.node_config\n"
    assert anchor in source, "participant_for changed: put the payload where a node handles every message"
    app.write_text(source.replace(anchor, anchor + PAYLOAD.format(marker=str(marker)), 1))
    return dest


def _wait_for(what: str, predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(5.0)  # each check below is a `flwr` process (about a CPU-second)


def test_a_fab_that_is_not_the_approved_release_runs_none_of_its_code_on_a_silo(tmp_path: Path) -> None:
    if tools_missing() or (find_anvil(search_from=PROJECT_ROOT) is None and shutil.which("npm") is None):
        pytest.skip("Flower's deployment executables or anvil (npm) are missing")
    marker = tmp_path / "adversary-was-here"
    with LocalConsortium(tmp_path) as net:
        net.start_chain()
        net.set_up_chain()
        approved = net.approve_release()
        assert net.release is not None
        tampered = _tampered_release(net.release, tmp_path / "adversary" / "app", marker)
        assert fab_sha256(tampered) != approved
        files = write_silo_files(tmp_path / "data", num_silos=2, overrides=["dataset=breast_cancer"])
        silos = [net.add_silo(f"silo-{i}", data_path=f.train, eval_path=f.eval) for i, f in enumerate(files)]
        attacked, created = net.create_run(OVERRIDES), net.create_run(OVERRIDES)
        net.start_superlink()
        for silo in silos:
            net.register_supernode(silo)
            net.start_supernode(silo, silo.node_config(chain_url=net.rpc, store=net.store))
        net.wait_for_nodes(len(silos))

        attack = net.run(net.coordinator_run_config(attacked, tmp_path / "attack"), app=tampered)
        _wait_for("the silos' refusal in the launcher's run log", lambda: REFUSAL in net.server_log(attack),
                  timeout=400)  # fmt: skip
        # Every silo refused, so the launcher's rounds fail and its run ends by itself. It is
        # not stopped: a SuperNode whose reply lands on a run stopped meanwhile is refused by
        # the SuperLink and took no further work in our tries.
        assert net.wait(attack, timeout=300).startswith("finished"), net.server_log(attack)[-3000:]
        log = net.server_log(attack)
        assert f"SHA-256 {fab_sha256(tampered)}" in log, log[-3000:]
        for node in net.supernodes.values():
            assert REFUSAL in node.gate_log(), node.gate_log()[-3000:]
            # The refusal came from a task forked warm: the forkserver holds the installed
            # release, and the FAB check still comes before any of the run's bytes is used.
            assert WARM in node.gate_log() and COLD_FALLBACK not in node.gate_log(), node.gate_log()[-3000:]
        assert not marker.exists(), f"the adversary's code ran on a silo: {marker.read_text()}"

        run_config = {**net.coordinator_run_config(created, tmp_path / "results"), "federated-evaluation": False}
        run = net.run(run_config)
        status = net.wait(run, timeout=900)
        assert status == "finished:completed", net.server_log(run)[-3000:]
        results = json.loads((tmp_path / "results" / "results.json").read_text())
        assert [r["status"] for r in results["rounds"]] == ["finalized"], results["rounds"]
        assert set(results["rounds"][0]["revealed"]) == {s.key.address for s in silos}
        assert not marker.exists()
        # Warm-started tasks played the approved run with the installed release: its
        # participants' log lines, written by the gate's tasks, none started cold.
        for node in net.supernodes.values():
            assert "participant 0x" in node.gate_log() and COLD_FALLBACK not in node.gate_log(), node.gate_log()[-3000:]

"""Commit–reveal vs plain Flower FedAvg on the same 3-silo deployment: per-round time by phase.

One machine plays the consortium as real processes (:class:`LocalConsortium`): anvil, a
store directory, a SuperLink with TLS and SuperNode authentication, three SuperNodes,
each with its own keystore, SuperNode key, data files and node config. With the same silo
files and the same training (DP-SGD under the same run spec), it runs

* the commit–reveal run (``flwr run .``) on pinned silos (``--isolation process`` and the
  code gate, which forks each task from a forkserver holding the installed release), in
  both flows: the step-wise one (``phase-messages=true``, the default: ``train.commit``,
  ``train.reveal``, ``train.attest`` and ``evaluate`` messages, the coordinator batching
  the signed commitments, reveals and votes) and one ``train.round`` message per silo
  (``phase-messages=false``: each silo sends its own transactions); phase times from
  results.json;
* plain Flower FedAvg (``flwr run bench/plain_fedavg``) on the same silos' SuperNodes
  restarted unpinned (Flower's own ``flwr-clientapp``, a fresh interpreter per message, as
  plain Flower deploys; the gate answers only with this release's ClientApp): per round
  ``train`` and ``evaluate`` to every node; phase times recorded by its ServerApp;
* with ``--cold``, both commit–reveal flows again on those unpinned SuperNodes (every
  message a cold ``flwr-clientapp``: how the deployment ran before warm starts).

First it times a task's start in the gate: from asking for a process to the task running
with the release imported, warm (forked) and cold (a new interpreter). Prints a table and
writes ``bench/results/deployment.json`` (after every arm, with the load averages). Run
from the repository root:
``python bench/bench_deployment.py [--rounds N] [--cold] [--work DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from deai_flower.consortium.demo_data import write_silo_files
from deai_flower.consortium.localnet import LocalConsortium, Silo
from deai_flower.silo_gate import WARM_PRELOAD, TaskStarter

ROOT = Path(__file__).resolve().parents[1]
PLAIN_APP = ROOT / "bench" / "plain_fedavg"
STEPWISE, ONE_MESSAGE = {"phase-messages": True}, {"phase-messages": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", action="store_true",
                        help="also play both commit-reveal flows with a cold interpreter per message")
    parser.add_argument("--work", type=Path, default=None, help="keep keys, logs and results here")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "deployment.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-deployment-"))
    overrides = [f"num_rounds={args.rounds}", "dataset=breast_cancer", "training.local_epochs=1",
                 "training.batch_size=16"]  # fmt: skip
    document: dict[str, Any] = {
        "machine": f"one machine, loopback, {os.cpu_count()} cores shared with other work (load averages "
                   "per arm); pinned silos fork each task from the gate's forkserver, unpinned ones start "
                   "a fresh flwr-clientapp interpreter per message",  # fmt: skip
        "rounds": args.rounds,
        "task_start_seconds": _task_start_seconds(),
    }
    _write(args.output, document)
    with LocalConsortium(work) as net:
        t0 = time.perf_counter()
        net.start_chain()
        net.set_up_chain()
        files = write_silo_files(work / "data", num_silos=3, overrides=["dataset=breast_cancer"])
        silos = [net.add_silo(f"silo-{i}", data_path=f.train, eval_path=f.eval) for i, f in enumerate(files)]
        net.start_superlink()
        for silo in silos:
            net.register_supernode(silo)
        node_ids = _start_nodes(net, silos, pinned=True)
        document["silos"], document["setup_seconds"] = len(silos), time.perf_counter() - t0

        for key, extra in (("commit_reveal_stepwise", STEPWISE), ("commit_reveal_one_message", ONE_MESSAGE)):
            document[key] = _commit_reveal_arm(net, net.create_run(overrides), work / key, extra)
            _write(args.output, document)

        # Plain FedAvg is another app, which the gate refuses: its SuperNodes run Flower's own
        # flwr-clientapp, as plain Flower deploys.
        for silo in silos:
            net.stop_process(net.supernodes[silo.name].process)
        for node_id in node_ids:
            net.wait_until_offline(node_id)
        _start_nodes(net, silos, pinned=False, suffix="-unpinned")
        created = net.create_run(overrides)
        load = os.getloadavg()
        started = time.perf_counter()
        plain_run = net.run({"spec-cid": created.spec_cid, "initial-cid": created.initial_cid, "store": net.store,
                             "output-dir": str(work / "plain")}, app=PLAIN_APP)  # fmt: skip
        status = net.wait(plain_run, timeout=3600)
        plain_wall = time.perf_counter() - started
        if status != "finished:completed":
            sys.exit(f"plain FedAvg run ended as {status}:\n{net.server_log(plain_run)[-3000:]}")
        plain = json.loads((work / "plain" / "plain.json").read_text())
        plain_rounds = [plain["rounds"][str(r)] for r in sorted(int(k) for k in plain["rounds"])]
        document["plain_fedavg"] = {
            "wall_seconds": plain_wall,
            "round_seconds": statistics.mean(p["train"] + p["evaluate"] for p in plain_rounds),
            "phase_seconds_mean": {p: statistics.mean(r[p] for r in plain_rounds) for p in ("train", "evaluate")},
            "rounds": plain_rounds,
            "federated_accuracy": [r.get("federated-accuracy") for r in plain_rounds],
            "load_average_before_after": [list(load), list(os.getloadavg())],
        }
        arms = ["commit_reveal_stepwise", "commit_reveal_one_message"]
        if args.cold:
            for key, extra in (("cold_commit_reveal_stepwise", STEPWISE), ("cold_commit_reveal_one_message",
                                                                            ONE_MESSAGE)):  # fmt: skip
                document[key] = _commit_reveal_arm(net, net.create_run(overrides), work / key, extra)
                arms.append(key)
                _write(args.output, document)
        plain_round = document["plain_fedavg"]["round_seconds"]
        document["ratio_round_seconds"] = {arm: document[arm]["round_seconds"] / plain_round for arm in arms}
        document["ratio_wall_seconds"] = {arm: document[arm]["wall_seconds"] / plain_wall for arm in arms}
        _write(args.output, document)

    starts = document["task_start_seconds"]
    print(f"{len(silos)} silos, {args.rounds} rounds (setup {document['setup_seconds']:.0f}s); a task starts in "
          f"{starts['warm_mean']:.2f}s warm, {starts['cold_mean']:.2f}s cold")  # fmt: skip
    print(f"{'':32}{'round s':>9}{'x FedAvg':>9}  phases (mean s)")
    for name in [*arms, "plain_fedavg"]:
        arm = document[name]
        print(f"{name:32}{arm['round_seconds']:9.1f}{arm['round_seconds'] / plain_round:9.2f}  "
              + "  ".join(f"{p} {v:.1f}" for p, v in arm["phase_seconds_mean"].items()))
    print(f"results in {args.output}")


def _write(output: Path, document: dict[str, Any]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _start_nodes(net: LocalConsortium, silos: list[Silo], *, pinned: bool, suffix: str = "") -> list[int]:
    for silo in silos:
        net.start_supernode(silo, silo.node_config(chain_url=net.rpc, store=net.store), pinned=pinned,
                            name=silo.name + suffix)  # fmt: skip
    return [int(n["node-id"]) for n in net.wait_for_nodes(len(silos), timeout=120)]


def _task_start_seconds(tries: int = 5) -> dict[str, Any]:
    """Seconds from asking for a task's process to the task running with the release imported:
    forked from the gate's forkserver (warm) and as a new interpreter (cold, what
    ``python -m deai_flower.silo_gate`` and ``flwr-clientapp`` do)."""
    load = os.getloadavg()
    cold = []
    for _ in range(tries):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {', '.join(m for m in WARM_PRELOAD if m != '__main__')}"],
                       check=True)  # fmt: skip
        cold.append(time.perf_counter() - started)
    with tempfile.TemporaryDirectory() as out:
        starter = TaskStarter(out, frozenset({"0" * 64}), target=_ready)
        starter.start("first")  # waits for the forkserver's imports: a gate does this before its first task
        starter.wait(timeout=120)
        warm = []
        for i in range(tries):
            started = time.perf_counter()
            starter.start(str(i))
            starter.wait(timeout=120)
            warm.append(time.perf_counter() - started)
    return {"cold": cold, "warm": warm, "cold_mean": statistics.mean(cold), "warm_mean": statistics.mean(warm),
            "load_average_before_after": [list(load), list(os.getloadavg())]}  # fmt: skip


def _ready(out: str, token: str, approved: list[str], root_certificates_path: str | None) -> None:
    """A warm task that only imports what a task runs (the forkserver has), then ends."""
    for module in WARM_PRELOAD[1:]:
        __import__(module)


def _commit_reveal_arm(net: LocalConsortium, created: Any, output_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Play one commit–reveal run to the end; its per-round times by phase."""
    load = os.getloadavg()
    started = time.perf_counter()
    run = net.run({**net.coordinator_run_config(created, output_dir), **extra})
    status = net.wait(run, timeout=3600)
    wall = time.perf_counter() - started
    if status != "finished:completed":
        sys.exit(f"commit-reveal run ended as {status}:\n{net.server_log(run)[-3000:]}")
    results = json.loads((output_dir / "results.json").read_text())
    rounds = [r["phase_seconds"] for r in results["rounds"] if r["status"] == "finalized"]
    phases = list(dict.fromkeys(p for r in rounds for p in r))
    return {
        "load_average_before_after": [list(load), list(os.getloadavg())],
        "wall_seconds": wall,
        "round_seconds": statistics.mean(sum(p.values()) for p in rounds),
        "phase_seconds_mean": {p: statistics.mean(r.get(p, 0.0) for r in rounds) for p in phases},
        "rounds": rounds,
        "federated_accuracy": [r.get("federated_evaluation", {}).get("accuracy") for r in results["rounds"]],
    }

if __name__ == "__main__":
    main()

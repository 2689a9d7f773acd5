"""Commit–reveal vs plain Flower FedAvg on the same 3-silo deployment: per-round time by phase.

One machine plays the consortium as real processes (:class:`LocalConsortium`): anvil, a
store directory, a SuperLink with TLS and SuperNode authentication, three SuperNodes,
each with its own keystore, SuperNode key, data files and node config. On the same
SuperLink and SuperNodes, with the same silo files and the same training (DP-SGD under
the same run spec), it runs

* the commit–reveal run (``flwr run .``): identity, then per round open, one
  ``train.round`` message per silo (train, commit, reveal, attest, paced by the chain),
  finalize and federated evaluation; phase times from results.json;
* plain Flower FedAvg (``flwr run bench/plain_fedavg``): per round ``train`` and
  ``evaluate`` to every node; phase times recorded by its ServerApp;
* with ``--phase-messages``, the commit–reveal run again with one message per phase
  (commit, reveal, attest: four messages a round with the evaluation).

Prints a table and writes ``bench/results/deployment.json``. Every message to a deployed
node starts a fresh ``flwr-clientapp`` process, so the ratio mostly counts messages per
round. Run from the repository root:
``python bench/bench_deployment.py [--rounds N] [--phase-messages] [--work DIR]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from deai_flower.consortium.demo_data import write_silo_files
from deai_flower.consortium.localnet import LocalConsortium

ROOT = Path(__file__).resolve().parents[1]
PLAIN_APP = ROOT / "bench" / "plain_fedavg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--phase-messages", action="store_true",
                        help="also play the run with one message per phase (as a simulation does)")
    parser.add_argument("--work", type=Path, default=None, help="keep keys, logs and results here")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "deployment.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-deployment-"))
    overrides = [f"num_rounds={args.rounds}", "dataset=breast_cancer", "training.local_epochs=1",
                 "training.batch_size=16"]  # fmt: skip
    with LocalConsortium(work) as net:
        t0 = time.perf_counter()
        net.start_chain()
        net.set_up_chain()
        files = write_silo_files(work / "data", num_silos=3, overrides=["dataset=breast_cancer"])
        silos = [net.add_silo(f"silo-{i}", data_path=f.train, eval_path=f.eval) for i, f in enumerate(files)]
        created = net.create_run(overrides)
        net.start_superlink()
        for silo in silos:
            net.register_supernode(silo)
            # Unpinned: the plain FedAvg arm is another app, which a silo's release gate would
            # refuse; both arms then run on Flower's own flwr-clientapp, measured alike.
            net.start_supernode(silo, silo.node_config(chain_url=net.rpc, store=net.store), pinned=False)
        net.wait_for_nodes(len(silos))
        setup_s = time.perf_counter() - t0

        commit_reveal = _commit_reveal_arm(net, created, work / "commit-reveal", {})
        started = time.perf_counter()
        plain_run = net.run({"spec-cid": created.spec_cid, "initial-cid": created.initial_cid, "store": net.store,
                             "output-dir": str(work / "plain")}, app=PLAIN_APP)  # fmt: skip
        status = net.wait(plain_run, timeout=3600)
        plain_wall = time.perf_counter() - started
        if status != "finished:completed":
            sys.exit(f"plain FedAvg run ended as {status}:\n{net.server_log(plain_run)[-3000:]}")
        plain = json.loads((work / "plain" / "plain.json").read_text())
        per_phase = (_commit_reveal_arm(net, net.create_run(overrides), work / "phase-messages",
                                        {"phase-messages": True}) if args.phase_messages else None)  # fmt: skip

    plain_rounds = [plain["rounds"][str(r)] for r in sorted(int(k) for k in plain["rounds"])]
    plain_round = statistics.mean(p["train"] + p["evaluate"] for p in plain_rounds)
    document: dict[str, Any] = {
        "machine": "one machine, loopback; every message to a node starts a fresh flwr-clientapp process",
        "silos": len(silos),
        "rounds": args.rounds,
        "setup_seconds": setup_s,
        "commit_reveal": commit_reveal,
        "plain_fedavg": {
            "wall_seconds": plain_wall,
            "round_seconds": plain_round,
            "phase_seconds_mean": {p: statistics.mean(r[p] for r in plain_rounds) for p in ("train", "evaluate")},
            "rounds": plain_rounds,
            "federated_accuracy": [r.get("federated-accuracy") for r in plain_rounds],
        },
        "ratio_round_seconds": commit_reveal["round_seconds"] / plain_round,
        "ratio_wall_seconds": commit_reveal["wall_seconds"] / plain_wall,
    }
    if per_phase is not None:
        document["commit_reveal_phase_messages"] = per_phase
        document["ratio_round_seconds_phase_messages"] = per_phase["round_seconds"] / plain_round
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"{len(silos)} silos, {args.rounds} rounds (setup {setup_s:.0f}s)")
    print(f"{'':28}{'round s':>9}  phases (mean s)")
    arms = [("commit-reveal", commit_reveal), ("commit-reveal, per phase", per_phase),
            ("plain FedAvg", document["plain_fedavg"])]  # fmt: skip
    for name, arm in arms:
        if arm is not None:
            print(f"{name:28}{arm['round_seconds']:9.1f}  "
                  + "  ".join(f"{p} {v:.1f}" for p, v in arm["phase_seconds_mean"].items()))
    print(f"ratio per round {document['ratio_round_seconds']:.2f}"
          + (f" (one message per phase: {document['ratio_round_seconds_phase_messages']:.2f})" if per_phase else "")
          + f"; whole run {commit_reveal['wall_seconds']:.0f}s vs {plain_wall:.0f}s "
          f"({document['ratio_wall_seconds']:.2f}); results in {args.output}")


def _commit_reveal_arm(net: LocalConsortium, created: Any, output_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Play one commit–reveal run to the end; its per-round times by phase."""
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
        "wall_seconds": wall,
        "round_seconds": statistics.mean(sum(p.values()) for p in rounds),
        "phase_seconds_mean": {p: statistics.mean(r.get(p, 0.0) for r in rounds) for p in phases},
        "rounds": rounds,
        "federated_accuracy": [r.get("federated_evaluation", {}).get("accuracy") for r in results["rounds"]],
    }

if __name__ == "__main__":
    main()

"""Who the reward pool pays: honest silos against the defections of issue 24, per score.

For each strategy (honest only, and each simulated adversary of conf/adversary/, which
includes ``fit_validation``: no noise, trained on the validation set a loss-scored spec names) x score
(``incentives.score``) x seed, the real experiment runs (in-process engine, embedded
chain, the real contract, digits, 5 clients, ε = 8, 3 rounds) and the pool's payouts are
read from results.json's ``incentives`` section (replayed from the chain's events). Per
run it records every client's payout and per-round scores, the best, median and least
honest payout, what the attacker's identities got together, and the final accuracy. The
3-silo breast-cancer DP case (3 clients, ε = 8, honest only) runs per score too, and with
``--demo-seeds`` the hospital-silos demo's training (2 rounds of one epoch at batch 16):
the question there is whether every honest silo is paid more than zero.

Prints one table per case and writes ``bench/results/incentives.json``. Run from the
repository root: ``python bench/bench_incentives.py [--scores alignment,shares]
[--adversaries none,sybil] [--seeds 0,1] [--rounds 3]`` (about 10-20 s per run on 2 CPUs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "incentives.json"
ETHER = 10**18
ADVERSARIES = ("none", "public_step", "public_step_bare", "no_noise", "sybil", "sign_flip_twins", "freerider",
               "fit_validation")
#: Cases that are an adversary config with settings changed.
VARIANTS = {"public_step_bare": ("public_step", ["adversary.look_honest=false"]),
            "freerider": ("freerider", ["adversary.noise=0.05"])}
SCORES = ("alignment", "loss", "shares")
#: Cases that are a dataset with settings changed: the hospital-silos demo's training
#: (examples/hospital-silos/run_demo.sh: 2 rounds of one epoch at batch 16).
DATASETS = {"breast_cancer_demo": ("breast_cancer", ["training.local_epochs=1", "training.batch_size=16"], 2)}


def _compose(*overrides: str) -> Any:
    from hydra import compose, initialize_config_module

    from deai_flower.config import register_configs

    register_configs()
    with initialize_config_module(config_module="deai_flower.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def run_case(*, dataset: str, clients: int, adversary: str, score: str, seed: int, rounds: int,
             reproducible: bool) -> dict[str, Any]:  # fmt: skip
    """One experiment: payouts (ether) and scores per client, and the summary numbers."""
    try:
        from deai_flower.experiment import run_experiment
    except ImportError:  # a checkout from before the experiment left deai_flower.simulation
        from deai_flower.simulation.experiment import run_experiment

    config, extra = VARIANTS.get(adversary, (adversary, []))
    data, training, rounds = DATASETS.get(dataset, (dataset, [], rounds))
    overrides = [f"dataset={data}", *training, f"num_clients={clients}", f"num_rounds={rounds}", "privacy=dp",
                 "privacy.epsilon=8", "engine=inprocess", "chain=embedded", f"adversary={config}", *extra,
                 f"incentives.score={score}", f"seed={seed}", "progress=false",
                 f"privacy.reproducible_noise={str(reproducible).lower()}"]  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deai-bench-incentives-") as out:
        results = run_experiment(_compose(*overrides), output_dir=Path(out))
    incentives = results["incentives"]
    attackers = {int(c) for c in (results["config"].get("adversary") or {}).get("poisoned_clients") or []}
    if adversary == "none":
        attackers = set()
    clients_out: dict[int, dict[str, Any]] = {}
    for entry in incentives["participants"].values():
        clients_out[int(entry["client"])] = {"payout": entry["payout"] / ETHER, "score": entry["score"],
                                             "slashed": entry["slashed"] / ETHER}  # fmt: skip
    honest = sorted(v["payout"] for c, v in clients_out.items() if c not in attackers)
    finalized = [r for r in results["rounds"] if r["status"] == "finalized"]
    return {
        "dataset": dataset, "clients": clients, "adversary": adversary, "score": score, "seed": seed,
        "attackers": sorted(attackers),
        "payouts": {str(c): round(v["payout"], 4) for c, v in sorted(clients_out.items())},
        "scores": {str(c): v["score"] for c, v in sorted(clients_out.items())},
        "best_honest": round(max(honest), 4) if honest else None,
        "median_honest": round(statistics.median(honest), 4) if honest else None,
        "least_honest": round(min(honest), 4) if honest else None,
        "attacker_total": round(sum(clients_out[c]["payout"] for c in attackers), 4) if attackers else None,
        "attacker_each": [round(clients_out[c]["payout"], 4) for c in sorted(attackers)] or None,
        "pool_left": round(incentives["pool_left"] / ETHER, 4), "conserved": incentives["conserved"],
        "reproducible_noise": reproducible,
        "accuracy": finalized[-1].get("accuracy") if finalized else None,
        "finalized": f"{len(finalized)}/{len(results['rounds'])}",
        "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip


def _table(rows: list[dict[str, Any]]) -> str:
    head = "| case | score | seed | payouts by client (ether) | best honest | least honest | attacker(s) | acc |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        pays = " ".join(f"{c}:{p:.2f}" for c, p in r["payouts"].items())
        who = "-" if r["attacker_each"] is None else "+".join(f"{p:.2f}" for p in r["attacker_each"])
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        case = f"{r['dataset']}/{r['clients']}/{r['adversary']}"
        lines.append(f"| {case} | {r['score']} | {r['seed']} | {pays} | {r['best_honest']} | "
                     f"{r['least_honest']} | {who} | {acc} |")  # fmt: skip
    return "\n".join(lines)


def _side_by_side(rows: list[dict[str, Any]]) -> str:
    """Per case and score, over the seeds: the attacker's payout (its identities
    together) and the best and least honest payouts, in ether, as ranges."""
    scores = sorted({r["score"] for r in rows}, key=lambda s: SCORES.index(s) if s in SCORES else 99)
    cases = sorted({(r["dataset"], r["clients"], r["adversary"]) for r in rows})

    def span(values: list[float | None]) -> str:
        known = [v for v in values if v is not None]
        if not known:
            return "-"
        low, high = min(known), max(known)
        return f"{low:.2f}" if low == high else f"{low:.2f}-{high:.2f}"

    lines = ["| case | " + " | ".join(f"{s}: attacker / best honest / least honest" for s in scores) + " |",
             "|---|" + "---|" * len(scores)]  # fmt: skip
    for case in cases:
        cells = []
        for score in scores:
            runs = [r for r in rows if (r["dataset"], r["clients"], r["adversary"]) == case and r["score"] == score]
            cells.append(" / ".join(span([r[k] for r in runs]) for k in ("attacker_total", "best_honest",
                                                                          "least_honest")) if runs else "")  # fmt: skip
        lines.append(f"| {case[0]}, {case[1]} clients, {case[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scores", default="alignment,loss,shares")
    parser.add_argument("--adversaries", default=",".join(ADVERSARIES))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--breast-cancer", default="yes", choices=("yes", "no", "only"))
    parser.add_argument("--demo-seeds", default="", help="also the hospital-silos demo's training, these seeds")
    parser.add_argument("--secret-noise", action="store_true", help="fresh DP noise (not reproducible)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    scores = [s for s in args.scores.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    cases = []
    if args.breast_cancer != "only":
        cases += [("digits", 5, a, s, seed) for a in args.adversaries.split(",") if a for s in scores for seed in seeds]
    if args.breast_cancer != "no":
        cases += [("breast_cancer", 3, "none", s, seed) for s in scores for seed in seeds]
    demo_seeds = [int(s) for s in args.demo_seeds.split(",") if s]
    cases += [("breast_cancer_demo", 3, "none", s, seed) for s in scores for seed in demo_seeds]
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() else {}
    done = {(r["dataset"], r["clients"], r["adversary"], r["score"], r["seed"]): r for r in previous.get("runs", [])}
    for dataset, clients, adversary, score, seed in cases:
        try:
            row = run_case(dataset=dataset, clients=clients, adversary=adversary, score=score, seed=seed,
                           rounds=args.rounds, reproducible=not args.secret_noise)  # fmt: skip
        except Exception as exc:  # one failed case must not lose the others
            row = {"dataset": dataset, "clients": clients, "adversary": adversary, "score": score, "seed": seed,
                   "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
        done[(dataset, clients, adversary, score, seed)] = row
        print(json.dumps(row), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"python": platform.python_version(), "rounds": args.rounds,
                                   "reproducible_noise": not args.secret_noise,
                                   "runs": list(done.values())}, indent=1) + "\n")  # fmt: skip
    ok = [r for r in done.values() if "error" not in r]
    print(_table(sorted(ok, key=lambda r: (r["dataset"], r["adversary"], r["score"], r["seed"]))))
    print()
    print(_side_by_side(ok))


if __name__ == "__main__":
    main()

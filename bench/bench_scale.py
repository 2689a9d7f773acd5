"""100 clients a round: time per round by phase and peak memory per role, at scale.

Each point runs in a process of its own (a clean interpreter, its memory alone):

* ``inprocess_100``: ``deai-flower num_clients=100 num_rounds=2`` on the in-process engine.
  The coordinator, the embedded chain and all 100 simulated participants (trainers and
  attesters) share one process: its peak RSS is all of them.
* ``ray_100``: the same on Flower's simulation engine (``engine=ray``), each client actor
  given ``--ray-cpus`` CPUs (0.5: four actors on this 2-core machine). The driver holds the
  coordinator, the embedded chain (served to the workers over loopback JSON-RPC) and
  Flower's SuperLink; the Ray workers run the participants, training and attesting; Ray's
  own daemons (GCS, raylet, agents) are counted apart.
* ``plain_ray_100``: plain Flower on Ray, the same 100-client workload (dataset, model,
  DP-SGD trainer, thread cap, rounds, actor CPU share) with Flower's FedAvg and
  ClientApps that return their weights: no chain, no store, no commit-reveal. The time
  of a round is the strategy's configure_train to aggregate_train.
* ``sampled_1000``: 1,000 participants registered, 10 % sampled a round
  (``strategy.sample_fraction=0.1``), in-process, on the embedded chain (``--sampled-chain
  anvil``: on an anvil node the bench starts). Digits has 1,437 training rows: one or
  two per participant, on which DP-SGD (q = 1, noise calibrated for ε = 8 over the run)
  does not learn; ``sampled_1000_nodp`` is the same without DP (``privacy=none``).
* ``inprocess_100_anvil`` and ``ray_100_anvil``: the 100-client points on an anvil node
  instead of the embedded chain, to tell the chain's share of a round from the protocol's.
* ``inprocess_1000``: 1,000 clients a round in-process on the embedded chain (every
  registered participant sampled), scored by ``alignment`` (O(n) per attester; the
  ``shares`` score's Gram matrix is O(n^2) pairs per attester, minutes at 1,000).
* ``attester``: an attester's work on 100 updates of ~1M float32 parameters, measured
  directly (``rules.aggregate("fedavg")`` and ``scores.alignment_scores``): time, and the
  tracemalloc peak beyond the updates themselves.

CPU: ``process_cpu_seconds`` is the user and system time of the point's process and the
descendants it waited for (Ray's daemons are not among them): on a shared machine the
wall time grows with the others' load, the CPU time much less.

Memory: a sampler walks the point's process tree every 0.2 s (psutil), keeping each
process's peak RSS (the larger of the sampled RSS and the kernel's VmHWM). RSS counts
shared pages (libraries, Ray's object store) once per process, so the tree's summed peak
overstates what the machine needs. The machine's load average is recorded around each
point: other work may share its 2 cores.

Prints a table and writes ``bench/results/scale.json``. Run from the repository root:
``python bench/bench_scale.py [--points ray_100,plain_ray_100]`` (default: every point).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "scale.json"
POINTS = ("inprocess_100", "ray_100", "plain_ray_100", "sampled_1000", "sampled_1000_nodp", "attester",
          "inprocess_100_anvil", "ray_100_anvil", "inprocess_1000")
SAMPLE_EVERY_S = 0.2
#: What the runs that made this bench showed besides their numbers (written into scale.json).
NOTES = [
    "In-process: the coordinator, the embedded chain and all participants (trainers and attesters) are one process; "
    "its peak RSS is theirs together.",
    "Ray: 'driver' is the coordinator with the embedded chain (served to the workers by a loopback JSON-RPC bridge) "
    "and Flower's SuperLink; 'ray_worker' are the client actors (4 at 0.5 CPU each, plus idle workers Ray "
    "prestarts), which train and attest; 'ray_system' are Ray's daemons.",
    "Model: the default mlp (hidden [64]) on digits, 4,810 parameters: local training is milliseconds, so a round "
    "is almost all protocol and chain; the attester point measures ~1M parameters directly.",
    "ray_100 on the embedded chain failed once when the load average reached 10 (another Ray run and tests on the "
    "same 2 cores): Ray marked its node dead for missed heartbeats, killed the actors, and the coordinator's "
    "eth_getLogs through the bridge timed out (ReadTimeout) after round 1.",
    "1,000 registered on the embedded chain, before its indexes: set-up (1,001 fundings and registrations) took "
    "~150 s and the coordinator's first eth_getLogs (fetch_spec -> run_params) was still running after 140 s more; "
    "no round finished within 600 s: eth-tester found every receipt by walking back from the head and answered "
    "eth_getLogs by reading every block of the range, so a receipt cost O(blocks) and a log query O(blocks^2). "
    "The embedded chain now finds receipts by hash and answers log queries from an index (deai_flower/chain/"
    "embedded.py); see embedded_chain_before_after.",
    "1,000 registered on digits: 1 or 2 training rows per participant; DP-SGD (q = 1) does not learn on them "
    "(accuracy ~0.1), nor does plain SGD much (sampled_1000_nodp).",
    "Points named <name>_before were measured before the release that answers each eth_call once per head, "
    "defaults to a committee of 25 and sums the scores at their own width (docs/benchmarks.md, scale section); "
    "the points without the suffix after it, at the load average each records (this session's machine ran at "
    "13-36 on 2 cores: plain_ray_100 did not finish a round within 910 s at load 36, so no new ratio).",
]
MIB = 1024 * 1024


# --------------------------------------------------------------------------- memory


def _hwm_bytes(pid: int) -> int:
    """The kernel's peak RSS of ``pid`` (VmHWM), 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _role(proc: Any, root_pid: int) -> str:
    if proc.pid == root_pid:
        return "driver"
    try:
        title = " ".join(proc.cmdline()) or proc.name()
    except Exception:  # noqa: BLE001 - a process gone between listing and reading
        return "other"
    if title.startswith("ray::") or "default_worker.py" in title:
        return "ray_worker"
    if any(word in title for word in ("gcs_server", "raylet", "ray/", "ray_", "dashboard", "log_monitor")):
        return "ray_system"
    return "other"


class TreeSampler:
    """Peak RSS per process of the tree under ``root_pid``, sampled every 0.2 s."""

    def __init__(self, root_pid: int) -> None:
        import psutil

        self.psutil = psutil
        self.root_pid = root_pid
        self.procs: dict[int, dict[str, Any]] = {}
        self.tree_peak = 0
        self.load_peak = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def pids(self) -> list[int]:
        return list(self.procs)

    def _run(self) -> None:
        try:
            root = self.psutil.Process(self.root_pid)
        except self.psutil.Error:
            return
        while not self._stop.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except self.psutil.Error:
                break
            total = 0
            for proc in tree:
                try:
                    rss = proc.memory_info().rss
                except self.psutil.Error:
                    continue
                entry = self.procs.get(proc.pid)
                if entry is None:
                    entry = self.procs[proc.pid] = {"role": _role(proc, self.root_pid), "peak": 0, "titles": set()}
                if entry["role"] == "other":  # Ray workers retitle themselves after they start
                    entry["role"] = _role(proc, self.root_pid)
                if entry["role"] == "ray_worker":
                    try:
                        title = proc.cmdline()[0].split(" ")[0]
                    except Exception:  # noqa: BLE001
                        title = ""
                    if title.startswith("ray::"):
                        entry["titles"].add(title[:40])
                entry["peak"] = max(entry["peak"], rss, _hwm_bytes(proc.pid))
                total += rss
            self.tree_peak = max(self.tree_peak, total)
            self.load_peak = max(self.load_peak, os.getloadavg()[0])
            self.samples += 1
            self._stop.wait(SAMPLE_EVERY_S)

    def summary(self) -> dict[str, Any]:
        by_role: dict[str, list[dict[str, Any]]] = {}
        for entry in self.procs.values():
            by_role.setdefault(entry["role"], []).append(entry)
        out: dict[str, Any] = {"samples": self.samples, "tree_peak_mib": round(self.tree_peak / MIB, 1)}
        for role, entries in sorted(by_role.items()):
            peaks = sorted((e["peak"] for e in entries), reverse=True)
            out[role] = {"processes": len(entries), "max_peak_mib": round(peaks[0] / MIB, 1),
                         "sum_of_peaks_mib": round(sum(peaks) / MIB, 1),
                         "peaks_mib": [round(p / MIB, 1) for p in peaks]}  # fmt: skip
            titles = sorted(set().union(*(e["titles"] for e in entries)))
            if titles:
                out[role]["titles"] = titles
        return out


# --------------------------------------------------------------------------- subprocess runs


def _scrub(text: str, tmp: str) -> str:
    """``text`` without this machine's paths."""
    for path, label in ((tmp, "<tmp>"), (str(REPO), "<repo>"), (sys.prefix, "<venv>"), (str(Path.home()), "~")):
        text = text.replace(path, label)
    return re.sub(r"/tmp/[\w.\-/]+", "<tmp>", text)


def _kill_tree(pids: list[int], root_pid: int) -> None:
    """End the processes this bench started (the point's process and its descendants)."""
    import psutil

    procs = []
    for pid in [root_pid, *pids]:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def run_measured(argv: list[str], *, timeout_s: float, tmp: str) -> dict[str, Any]:
    """Run ``argv``, sampling its process tree's memory; its rc, wall time, memory and log tail."""
    log_path = Path(tmp) / "log.txt"
    load_before = os.getloadavg()
    used_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        with TreeSampler(proc.pid) as sampler:
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_tree(sampler.pids(), proc.pid)
                rc = "timeout"
                proc.wait()
    wall = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (used.ru_utime + used.ru_stime) - (used_before.ru_utime + used_before.ru_stime)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    return {"rc": rc, "process_wall_seconds": round(wall, 2), "process_cpu_seconds": round(cpu, 2),
            "memory": sampler.summary(),
            "load_average": {"before": [round(v, 2) for v in load_before], "max_1min_during": round(sampler.load_peak, 2),
                             "after": [round(v, 2) for v in os.getloadavg()]},
            "log_tail": _scrub("\n".join(text.strip().splitlines()[-25:]), tmp)}  # fmt: skip


def _deai_flower() -> list[str]:
    script = Path(sys.executable).parent / "deai-flower"
    return [str(script)] if script.exists() else [sys.executable, "-m", "deai_flower.cli.main"]


def round_summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"round": r["round"], "attempt": r["attempt"], "status": r["status"], "reason": r["reason"],
             "seconds": round(r["seconds"], 2),
             "phase_seconds": {p: round(s, 2) for p, s in r["phase_seconds"].items()},
             "accuracy": r["accuracy"], "epsilon": r["epsilon"], "gas_used": r["gas_used"],
             "sampled": len(r["sampled"]), "committed": len(r["committed"]), "revealed": len(r["revealed"]),
             "attested": len(r["attested"]), "errors": len(r["errors"]), "excluded": len(r["excluded"])}
            for r in results["rounds"]]  # fmt: skip


def deai_point(overrides: list[str], *, timeout_s: float, anvil: bool = False) -> dict[str, Any]:
    """``deai-flower`` with ``overrides``, on its embedded chain, or on an anvil node started here."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, contextlib.ExitStack() as stack:
        out = Path(tmp) / "run"
        chain: list[str] = []
        node_sampler = None
        if anvil:
            from deai_flower.chain.devnode import AnvilNode, find_anvil, install_anvil

            # 100 ether funds each of 1,001 keys: more than anvil's default 10,000 per account
            node = stack.enter_context(AnvilNode(find_anvil() or install_anvil(), extra_args=("--balance", "1000000")))
            chain = ["chain=anvil", f"chain.rpc_url={node.url}"]
            node_sampler = stack.enter_context(TreeSampler(node._process.pid))  # type: ignore[union-attr]
        argv = [*_deai_flower(), *overrides, *chain, "progress=false", f"hydra.run.dir={out}"]
        point: dict[str, Any] = {"overrides": [*overrides, *(["chain=anvil (an anvil node started by the bench)"] if anvil else [])],
                                 **run_measured(argv, timeout_s=timeout_s, tmp=tmp)}  # fmt: skip
        if node_sampler is not None:
            node_sampler.__exit__(None, None, None)
            point["memory"]["anvil_node"] = node_sampler.summary().get("driver")
        results_file = out / "results.json"
        if results_file.exists():
            results = json.loads(results_file.read_text(encoding="utf-8"))
            point["rounds"] = round_summary(results)
            point["results_wall_seconds"] = round(results["wall_seconds"], 2)
            point["setup_gas"] = results["setup_gas"]
            in_rounds = sum(r["seconds"] for r in results["rounds"])
            point["seconds_in_rounds"] = round(in_rounds, 2)
            point["seconds_outside_rounds"] = round(point["process_wall_seconds"] - in_rounds, 2)
        return point


def python_point(mode: str, args: list[str], *, timeout_s: float) -> dict[str, Any]:
    """This script in ``mode`` in a process of its own, writing its result to a JSON file."""
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        out = Path(tmp) / "out.json"
        argv = [sys.executable, str(Path(__file__).resolve()), mode, str(out), *args]
        point = run_measured(argv, timeout_s=timeout_s, tmp=tmp)
        if out.exists():
            point.update(json.loads(out.read_text(encoding="utf-8")))
        return point


# --------------------------------------------------------------------------- plain Flower on Ray


def plain_worker(out: Path, *, clients: int, rounds: int, ray_cpus: float) -> None:
    """Flower's FedAvg on Ray with the project's data, model and DP-SGD trainer, and no protocol.

    The ClientApp is pickled for every message (Flower's Ray backend passes it along), so it
    carries only the resolved config; each worker process loads the data and builds the
    model once (a cache registered in ``sys.modules``), as the project's participants do.
    """
    import logging

    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation
    from omegaconf import OmegaConf

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_overhead import compose_cfg  # the same config composition as the overhead bench

    from deai_flower.models import get_arrays, instantiate_model, model_spec

    cfg = compose_cfg(f"num_clients={clients}", f"num_rounds={rounds}", "progress=false", "device=cpu", "engine=ray",
                      f"engine.num_cpus_per_client={ray_cpus}")  # fmt: skip
    plain_cfg = OmegaConf.to_container(cfg, resolve=True)
    round_seconds: list[float] = []
    client_stats: list[dict[str, Any]] = []

    client_app = ClientApp()

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        import types

        entered = time.perf_counter()

        from omegaconf import OmegaConf as Conf

        from deai_flower.data import client_partitions, load_dataset
        from deai_flower.models import instantiate_model, model_spec, select_device, set_arrays
        from deai_flower.privacy import PrivacyLedger, PrivacySettings, train_round

        cache = sys.modules.setdefault("_bench_scale_plain_cache", types.ModuleType("_bench_scale_plain_cache"))
        if not hasattr(cache, "parts"):
            c = Conf.create(plain_cfg)
            split = load_dataset(c.dataset, seed=c.seed)
            cache.parts = client_partitions(split, num_partitions=c.num_clients, partitioner=c.dataset.partitioner,
                                            seed=c.seed)  # fmt: skip
            cache.model = instantiate_model(model_spec(c.model), split.schema(), seed=c.seed)
            cache.cfg = c
        c, model = cache.cfg, cache.model
        pid = int(context.node_config["partition-id"])
        ledger = (PrivacyLedger.from_record(context.state["ledger"]) if "ledger" in context.state
                  else PrivacyLedger())  # fmt: skip
        settings = PrivacySettings(epsilon=float(c.privacy.epsilon), delta=float(c.privacy.delta),
                                   max_grad_norm=float(c.privacy.max_grad_norm), accountant=str(c.privacy.accountant))  # fmt: skip
        set_arrays(model, {k: v.numpy() for k, v in message.content["arrays"].items()})
        x, y = cache.parts[pid]
        trained = train_round(model=model, x=x, y=y, settings=settings, ledger=ledger, planned_rounds=c.num_rounds,
                              local_epochs=c.training.local_epochs, batch_size=c.training.batch_size,
                              learning_rate=float(c.training.learning_rate), device=select_device("cpu"),
                              num_threads=max(1, int(c.engine.num_cpus_per_client)))  # fmt: skip
        context.state["ledger"] = ConfigRecord(ledger.to_record())
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in trained.arrays.items()}),
                              "metrics": MetricRecord({"num-examples": trained.num_examples,
                                                       "client-seconds": time.perf_counter() - entered,
                                                       "worker-pid": os.getpid()})})  # fmt: skip
        return Message(content, reply_to=message)

    class TimedFedAvg(FedAvg):
        def configure_train(self, server_round: int, arrays: ArrayRecord, config: Any, grid: Grid):
            self._started = time.perf_counter()
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Any):
            replies = list(replies)
            ok = [m for m in replies if m.has_content()]
            seconds = [float(m.content["metrics"]["client-seconds"]) for m in ok]
            client_stats.append({"replies": len(ok), "failures": len(replies) - len(ok),
                                 "client_seconds_sum": round(sum(seconds), 2),
                                 "client_seconds_max": round(max(seconds, default=0.0), 2),
                                 "workers": len({int(m.content["metrics"]["worker-pid"]) for m in ok})})  # fmt: skip
            result = super().aggregate_train(server_round, replies)
            round_seconds.append(time.perf_counter() - self._started)
            return result

    from deai_flower.data import load_dataset

    split = load_dataset(cfg.dataset, seed=cfg.seed)
    model = instantiate_model(model_spec(cfg.model), split.schema(), seed=cfg.seed)
    initial = ArrayRecord({k: Array(v) for k, v in get_arrays(model).items()})
    loop: dict[str, float] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        # min_train_nodes too: FedAvg sizes its sample from the nodes connected when the round
        # starts, which on Ray's first round can be 2 of 100 (then waits for all, and takes 2)
        strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=clients,
                               min_train_nodes=clients)  # fmt: skip
        loop["started"] = time.perf_counter()
        strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds)
        loop["ended"] = time.perf_counter()

    backend_config = {"client_resources": {"num_cpus": ray_cpus, "num_gpus": 0.0},
                      "init_args": {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}}  # fmt: skip
    logging.getLogger("flwr").setLevel(logging.WARNING)
    started = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=clients,
                   backend_config=backend_config)  # type: ignore[arg-type]  # fmt: skip
    wall = time.perf_counter() - started
    out.write_text(json.dumps({
        "clients": clients, "rounds_planned": rounds, "ray_cpus_per_client": ray_cpus,
        "parameters": sum(int(v.size) for v in get_arrays(model).values()),
        "round_seconds": [round(s, 2) for s in round_seconds],
        "client_stats": client_stats,
        "loop_seconds": round(loop.get("ended", float("nan")) - loop.get("started", float("nan")), 2),
        "run_simulation_seconds": round(wall, 2),
    }))  # fmt: skip


# --------------------------------------------------------------------------- attester


def attester_worker(out: Path, *, updates: int) -> None:
    """An attester's work on ``updates`` updates of the ~1M-parameter digits MLP (64-1024-960-10)."""
    import tracemalloc

    import numpy as np

    from deai_flower.protocol.rules import RevealedUpdate, aggregate
    from deai_flower.protocol.scores import alignment_scores

    shapes = {"0.weight": (1024, 64), "0.bias": (1024,), "2.weight": (960, 1024), "2.bias": (960,),
              "4.weight": (10, 960), "4.bias": (10,)}  # fmt: skip
    rng = np.random.default_rng(0)
    global_arrays = {k: rng.standard_normal(s).astype(np.float32) * 0.05 for k, s in shapes.items()}
    items = [RevealedUpdate(f"0x{i + 1:040x}", 10 + i % 7,
                            {k: (v + rng.standard_normal(v.shape).astype(np.float32) * 0.01) for k, v in global_arrays.items()})
             for i in range(updates)]  # fmt: skip
    parameters = sum(int(v.size) for v in global_arrays.values())
    update_bytes = sum(v.nbytes for u in items for v in u.arrays.values())
    hwm_inputs = _hwm_bytes(os.getpid())
    result: dict[str, Any] = {"updates": updates, "parameters": parameters,
                              "updates_mib": round(update_bytes / MIB, 1), "process_peak_rss_after_inputs_mib": round(hwm_inputs / MIB, 1)}  # fmt: skip
    for name, work in (("aggregate_fedavg", lambda: aggregate("fedavg", items, {})),
                       ("alignment_scores", lambda: alignment_scores(items, global_arrays))):  # fmt: skip
        started = time.perf_counter()
        work()
        seconds = time.perf_counter() - started
        tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        traced_started = time.perf_counter()
        work()
        traced_seconds = time.perf_counter() - traced_started
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        result[name] = {"seconds": round(seconds, 2), "seconds_under_tracemalloc": round(traced_seconds, 2),
                        "extra_peak_mib": round(peak / MIB, 1)}  # fmt: skip
    result["process_peak_rss_mib"] = round(_hwm_bytes(os.getpid()) / MIB, 1)
    out.write_text(json.dumps(result))


# --------------------------------------------------------------------------- main


def _mean_phases(rounds: list[dict[str, Any]]) -> dict[str, float]:
    done = [r for r in rounds if r["status"] == "finalized"] or rounds
    phases = {p for r in done for p in r["phase_seconds"]}
    return {p: round(statistics.mean(r["phase_seconds"].get(p, 0.0) for r in done), 2) for p in sorted(phases)}


def derive(summary: dict[str, Any]) -> None:
    """The ratios commit-reveal / plain FedAvg on Ray, round by round (embedded chain and anvil).

    Round 1 is not like for like: plain Flower's first round pays its actors' cold start
    (imports, data, σ calibration), most of which commit-reveal's actors pay before round 1
    (the coordinator asks every node for its chain identity first). Rounds 2 on compare
    steady states.
    """
    points = summary["points"]
    plain = points.get("plain_ray_100", {}).get("round_seconds", [])
    summary.pop("ratio_commit_reveal_over_plain_on_ray", None)
    for point in points.values():  # a log is kept for a point that failed only
        if point.get("rc") == 0:
            point.pop("log_tail", None)
    ratios = {}
    for name in ("ray_100", "ray_100_anvil"):
        cr = [r["seconds"] for r in points.get(name, {}).get("rounds", []) if r["status"] == "finalized"]
        paired = list(zip(cr, plain))
        if not paired:
            continue
        steady = paired[1:]
        ratios[name] = {
            "per_round": [round(c / p, 1) for c, p in paired],
            "steady_rounds_2_on": round(sum(c for c, _ in steady) / sum(p for _, p in steady), 1) if steady else None,
            "commit_reveal_round_seconds": [c for c, _ in paired],
            "plain_round_seconds": [p for _, p in paired],
        }  # fmt: skip
    if ratios:
        summary["ratio_commit_reveal_over_plain_fedavg_on_ray"] = ratios


def print_table(summary: dict[str, Any]) -> None:
    points = summary["points"]
    print(f"\n{'point':<20} {'round':>5} {'status':<9} {'s':>6} {'commit':>6} {'reveal':>6} {'attest':>6} "
          f"{'acc':>5} {'driver MiB':>10} {'worker MiB':>10} {'load':>5}")  # fmt: skip
    for name, point in points.items():
        mem = point.get("memory", {})
        driver = mem.get("driver", {}).get("max_peak_mib", "-")
        worker = mem.get("ray_worker", {}).get("max_peak_mib", "-")
        load = point.get("load_average", {}).get("max_1min_during", "-")
        for r in point.get("rounds", []) or [None]:
            if r is None:
                if "round_seconds" in point:
                    for i, sec in enumerate(point["round_seconds"], 1):
                        print(f"{name:<20} {i:>5} {'plain':<9} {sec:>6.1f} {'':>6} {'':>6} {'':>6} {'':>5} "
                              f"{driver:>10} {worker:>10} {load:>5}")  # fmt: skip
                elif "alignment_scores" in point:
                    print(f"{name:<20} {'':>5} {'direct':<9} {'':>6} {'':>6} {'':>6} "
                          f"{point['alignment_scores']['seconds'] + point['aggregate_fedavg']['seconds']:>6.1f} {'':>5} "
                          f"{driver:>10} {'-':>10} {load:>5}")  # fmt: skip
                else:
                    print(f"{name:<20} {'-':>5} {'rc ' + str(point.get('rc')):<9}")
                continue
            ph = r["phase_seconds"]
            acc = f"{r['accuracy']:.2f}" if r["accuracy"] is not None else "-"
            print(f"{name:<20} {r['round']:>5} {r['status']:<9} {r['seconds']:>6.1f} {ph.get('commit', 0):>6.1f} "
                  f"{ph.get('reveal', 0):>6.1f} {ph.get('attest', 0):>6.1f} {acc:>5} {driver:>10} {worker:>10} {load:>5}")  # fmt: skip
    for name, ratio in summary.get("ratio_commit_reveal_over_plain_fedavg_on_ray", {}).items():
        print(f"ratio {name} / plain_ray_100 per round: {ratio['per_round']} (rounds 2 on: {ratio['steady_rounds_2_on']})")
    if "attester" in points and "alignment_scores" in points["attester"]:
        a = points["attester"]
        print(f"attester on {a['updates']} updates x {a['parameters']:,} parameters ({a['updates_mib']} MiB): "
              f"fedavg {a['aggregate_fedavg']['seconds']} s +{a['aggregate_fedavg']['extra_peak_mib']} MiB, "
              f"alignment scores {a['alignment_scores']['seconds']} s +{a['alignment_scores']['extra_peak_mib']} MiB, "
              f"process peak RSS {a['process_peak_rss_mib']} MiB")  # fmt: skip


def _print_point(name: str, point: dict[str, Any]) -> None:
    mem = point.get("memory", {})
    print(f"\n== {name}: rc {point.get('rc')}, {point.get('process_wall_seconds')} s wall, "
          f"load {point.get('load_average', {}).get('before')} -> max {point.get('load_average', {}).get('max_1min_during')}")  # fmt: skip
    for r in point.get("rounds", []):
        phases = ", ".join(f"{p} {s:.1f}" for p, s in r["phase_seconds"].items())
        print(f"  round {r['round']}: {r['status']:<9} {r['seconds']:6.1f} s ({phases}); sampled {r['sampled']}, "
              f"committed {r['committed']}, revealed {r['revealed']}, attested {r['attested']}; "
              f"acc {r['accuracy']}; gas {r['gas_used']:,}")  # fmt: skip
    for stats in point.get("client_stats", []):
        print(f"  replies {stats['replies']} (failures {stats['failures']}) from {stats['workers']} workers; "
              f"client time sum {stats['client_seconds_sum']} s, max {stats['client_seconds_max']} s")  # fmt: skip
    if "round_seconds" in point:
        print(f"  rounds: {point['round_seconds']} s (loop {point['loop_seconds']} s, run_simulation {point['run_simulation_seconds']} s)")
    for key in ("aggregate_fedavg", "alignment_scores"):
        if key in point:
            print(f"  {key}: {point[key]['seconds']} s, extra peak {point[key]['extra_peak_mib']} MiB "
                  f"(updates {point['updates_mib']} MiB)")  # fmt: skip
    for role in ("driver", "ray_worker", "ray_system", "other"):
        if role in mem:
            m = mem[role]
            print(f"  peak RSS {role}: {m['processes']} process(es), max {m['max_peak_mib']} MiB, sum {m['sum_of_peaks_mib']} MiB")
    if point.get("rc") != 0:
        print("  log tail:\n    " + point.get("log_tail", "").replace("\n", "\n    "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", default=",".join(POINTS), help=f"comma-separated subset of {', '.join(POINTS)}")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ray-cpus", type=float, default=0.5, help="engine.num_cpus_per_client on Ray (both sides)")
    parser.add_argument("--sampled-overrides", default="dataset=digits",
                        help="extra overrides of the 1,000-registered point, space-separated")
    parser.add_argument("--sampled-chain", choices=("embedded", "anvil"), default="embedded",
                        help="the 1,000-registered point's chain")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per point")
    parser.add_argument("--merge", action="store_true", help="keep points of an earlier scale.json not run now")
    parser.add_argument("--report-only", action="store_true", help="recompute ratios and the table from scale.json")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write (default bench/results/scale.json)")
    args = parser.parse_args()
    out: Path = args.out
    if args.report_only:
        summary = json.loads(out.read_text(encoding="utf-8"))
        summary["notes"] = NOTES
        derive(summary)
        print_table(summary)
        out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return
    names = [n.strip() for n in args.points.split(",") if n.strip()]
    unknown = set(names) - set(POINTS)
    if unknown:
        parser.error(f"unknown points {sorted(unknown)}; choose from {', '.join(POINTS)}")

    rounds = [f"num_rounds={args.rounds}"]
    summary: dict[str, Any] = {"points": {}}
    if args.merge and out.exists():
        summary = json.loads(out.read_text(encoding="utf-8"))
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())  # fmt: skip
    summary["notes"] = NOTES
    summary["machine"] = {"cpus": os.cpu_count(), "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
                          "commit": head, "working_tree_modified": dirty}  # fmt: skip
    started = time.perf_counter()
    for name in names:
        print(f"running {name} …", flush=True)
        if name == "inprocess_1000":
            # Round 1's 1,000 stake deposits are 1,000 blocks, and the embedded chain's clock
            # moves at least a second a block: a 600 s commit phase lapses on chain before the
            # coordinator's commitMany (UnexpectedPhase); an hour's phase holds the round.
            point = deai_point(["num_clients=1000", *rounds, "incentives.score=alignment",
                                "strategy.commit_timeout_s=3600"], timeout_s=args.timeout)  # fmt: skip
        elif name.startswith("inprocess_100"):
            point = deai_point(["num_clients=100", *rounds], timeout_s=args.timeout, anvil=name.endswith("_anvil"))
        elif name.startswith("ray_100"):
            point = deai_point(["num_clients=100", *rounds, "engine=ray", f"engine.num_cpus_per_client={args.ray_cpus}"],
                               timeout_s=args.timeout, anvil=name.endswith("_anvil"))  # fmt: skip
        elif name.startswith("sampled_1000"):
            nodp = ["privacy=none"] if name.endswith("_nodp") else []
            point = deai_point(["num_clients=1000", "strategy.sample_fraction=0.1", *rounds,
                                *args.sampled_overrides.split(), *nodp], timeout_s=args.timeout,
                               anvil=args.sampled_chain == "anvil")  # fmt: skip
        elif name == "plain_ray_100":
            point = python_point("--plain-worker", ["--clients", "100", "--rounds", str(args.rounds),
                                                    "--ray-cpus", str(args.ray_cpus)], timeout_s=args.timeout)  # fmt: skip
        else:
            point = python_point("--attester-worker", ["--updates", "100"], timeout_s=args.timeout)
        if "rounds" in point:
            point["mean_phase_seconds_finalized"] = _mean_phases(point["rounds"])
        summary["points"][name] = point
        _print_point(name, point)
    summary["bench_seconds"] = round(time.perf_counter() - started, 1)

    derive(summary)
    print_table(summary)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out.name} ({summary['bench_seconds']} s)")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] in ("--plain-worker", "--attester-worker"):
        mode, out_path, rest = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
        worker = argparse.ArgumentParser()
        worker.add_argument("--clients", type=int, default=100)
        worker.add_argument("--rounds", type=int, default=2)
        worker.add_argument("--ray-cpus", type=float, default=0.5)
        worker.add_argument("--updates", type=int, default=100)
        w = worker.parse_args(rest)
        if mode == "--plain-worker":
            plain_worker(out_path, clients=w.clients, rounds=w.rounds, ray_cpus=w.ray_cpus)
        else:
            attester_worker(out_path, updates=w.updates)
    else:
        main()

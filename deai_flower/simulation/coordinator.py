"""The coordinator of a simulated consortium: the ServerApp's side of a simulation.

``deai-flower`` has already set the consortium up and names the run (``contract``,
``run-id``, ``chain-url``, ``store``); under ``flwr run .`` nobody has, so it is set up
here first (:func:`~deai_flower.simulation.harness.prepare_run`), with one participant per
SuperNode, and the embedded chain is served to the SuperNodes over loopback JSON-RPC.
The run is played with the deployed coordinator's building blocks
(:mod:`deai_flower.server_app`); the finalized models are scored on the dataset's test
split and ``results.json`` is written into ``output-dir``.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.common import log
from flwr.serverapp import Grid

from ..chain import RoundsContract, simulation_key
from ..chain.node import connect_url
from ..data import load_dataset
from ..errors import ConfigError, ProtocolError
from ..models import evaluate, instantiate_model, select_device, set_arrays
from ..outputs import write_run_outputs
from ..protocol.spec import allowed_models
from ..report import ProgressMonitor, round_line
from ..results import results_document
from ..server_app import strategy_for, with_nodes, write_results
from ..storage.location import open_store
from .config import experiment_config
from .harness import locator, prepare_run, serve_chain

__all__ = ["coordinate_simulation"]

#: How long ``flwr run`` waits for its SuperNodes to connect.
_NODES_TIMEOUT_S = 120.0
#: How long a number of connected SuperNodes below the run's needs must stand still to be taken as final.
_NODES_STEADY_S = 15.0


def coordinate_simulation(grid: Grid, run_config: Mapping[str, Any]) -> None:
    """Play the simulated run ``run_config`` names, or, under ``flwr run``, set one up
    with one participant per SuperNode and play it."""
    started = time.time()
    cfg = experiment_config(run_config)
    output_dir = Path(str(run_config.get("output-dir") or tempfile.mkdtemp(prefix="deai-flower-")))
    if run_config.get("contract"):  # deai-flower set the run up; the chain and store say what it is
        setup = json.loads(str(run_config.get("setup", "{}")))
        node = connect_url(str(run_config.get("coordinator-chain-url") or run_config["chain-url"]))
        store = open_store(str(run_config["store"]), max_bytes=int(cfg.storage.max_blob_bytes))
        contract = RoundsContract(node, str(run_config["contract"]), simulation_key(seed=int(cfg.seed), role="coordinator"))
        where = {k: run_config[k] for k in ("contract", "run-id", "chain-url", "store")}
        split = load_dataset(cfg.dataset, seed=int(cfg.seed))  # its test split (the harness checked the rest)
        _play_simulation(grid, cfg, contract, int(run_config["run-id"]), store, where, split, output_dir, setup,
                         started, progress=bool(cfg.progress) and bool(str(run_config.get("experiment", ""))))  # fmt: skip
        return
    # flwr run: this app is the whole harness, with one participant per SuperNode.
    nodes = _wait_for_nodes(grid, minimum=int(cfg.strategy.min_reveals))
    log(INFO, "flwr run: %s SuperNodes, one simulated participant each; results go to %s", len(nodes), output_dir)
    prepared = prepare_run(cfg, output_dir, num_clients=len(nodes))
    with serve_chain(prepared.node, same_process=False) as chain_url:
        setup = {"setup_gas": prepared.setup_gas, "first_block": prepared.first_block,
                 "initial_cid": prepared.initial_cid, "num_clients": len(nodes),
                 "chain": prepared.node.describe()}  # fmt: skip
        document = _play_simulation(grid, cfg, prepared.contract, prepared.run_id, prepared.store,
                                    locator(prepared, chain_url), prepared.split, output_dir, setup, started,
                                    progress=False)  # fmt: skip
    finalized = sum(1 for r in document["rounds"] if r["status"] == "finalized")
    if finalized < int(cfg.num_rounds):  # flwr ls says finished:failed, as for a run that raised
        last = document["rounds"][-1] if document["rounds"] else {"round": "-", "reason": "no round ran"}
        raise ProtocolError(f"{finalized} of {cfg.num_rounds} rounds finalized (attempt {last['round']}: "
                            f"{last['reason']}); results in {output_dir}")  # fmt: skip


def _wait_for_nodes(grid: Grid, *, minimum: int) -> list[int]:
    deadline = time.monotonic() + _NODES_TIMEOUT_S
    seen, steady_since = -1, time.monotonic()
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) != seen:
            seen, steady_since = len(nodes), time.monotonic()
        # the simulation runtime registers all its SuperNodes at once: a count that has
        # stood still for a while is the federation's size, no need to wait out the deadline
        steady = bool(nodes) and time.monotonic() - steady_since > _NODES_STEADY_S
        if len(nodes) >= minimum or steady or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if len(nodes) < minimum:
        raise ConfigError(f"{len(nodes)} SuperNodes connected; the run needs at least {minimum} "
                          f"(strategy.min_reveals): flwr run . --federation-config 'num-supernodes={minimum}'")  # fmt: skip
    return nodes


def _play_simulation(grid: Grid, cfg: Any, contract: RoundsContract, run_id: int, store: Any, where: dict[str, Any],
                     split: Any, output_dir: Path, setup: dict[str, Any], started: float, *,
                     progress: bool) -> dict[str, Any]:  # fmt: skip
    """Play a simulated run with central evaluation on the dataset's test split; its results."""
    device = select_device(str(cfg.device))
    models = allowed_models([str(cfg.model._target_)])  # the experiment wrote the spec: its own model too
    evaluation: dict[int, dict[str, float]] = {}
    holder: dict[str, Any] = {}

    def evaluate_global(round_id: int, arrays: dict[str, Any]) -> dict[str, float]:
        model = holder.setdefault("model", instantiate_model(strategy.spec.model, strategy.spec.data, allowed=models))
        set_arrays(model, arrays)
        loss, accuracy = evaluate(model, split.x_test, split.y_test, device=device)
        evaluation[round_id] = {"loss": loss, "accuracy": accuracy}
        monitor.evaluated(round_id, accuracy)
        return {"loss": loss, "accuracy": accuracy}

    def record_results() -> dict[str, Any]:
        document = results_document(strategy, node=contract.node, store=store,
                                    first_block=int(setup.get("first_block", 0)), setup=setup,
                                    wall_seconds=time.time() - float(setup.get("started", started)), cfg=cfg,
                                    output_dir=output_dir)  # fmt: skip
        document["finalized_before"] = done  # a resumed run counts its rounds on from these
        write_results(output_dir, with_nodes(document, strategy))
        return document

    def round_done(report: Any) -> None:
        document = record_results()  # after every round: a stop loses at most the round in flight
        log(INFO, "%s", round_line(document))  # flwr run's progress (deai-flower shows its own display)
        monitor.round_done(report)

    done = int(contract.get_run(run_id)["finalizedRounds"])
    monitor = ProgressMonitor(num_rounds=int(cfg.num_rounds), enabled=progress, completed=done)
    # simulated participants are registered with made-up identities: no SuperNode key to bind
    strategy, arrays = strategy_for(contract, run_id, store, where, models=models, evaluate_fn=evaluate_global,
                                     bind_supernode_keys=False, on_phase=monitor.phase, on_round=round_done,
                                     max_failed_rounds=int(cfg.strategy.get("max_failed_rounds", 3)),
                                     relay=bool(cfg.strategy.get("relay", True)))  # fmt: skip
    with monitor:
        strategy.start(grid, arrays)
    document = record_results()
    written = write_run_outputs(output_dir, document, store=store)
    log(INFO, "run %s: results.json, %s in %s", run_id, ", ".join(path.name for path in written.values()), output_dir)
    return document

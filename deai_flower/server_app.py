"""The coordinator's ServerApp (module level: ``deai_flower.apps:server_app``).

Configured from ``context.run_config`` alone. Two kinds of run:

* **A simulation** (``experiment`` or ``overrides`` in the run config). ``deai-flower``
  has already set the consortium up and names the run (``contract``, ``run-id``,
  ``chain-url``, ``store``); under ``flwr run .`` nobody has, so this app does it first
  (:func:`deai_flower.simulation.harness.prepare_run`), with one participant per
  SuperNode, and serves the embedded chain to the SuperNodes over loopback JSON-RPC.
  The finalized models are scored on the dataset's test split and ``results.json`` is
  written into ``output-dir``.
* **A deployment** (``contract``, ``run-id``, ``chain-url``, ``store``, ``keystore`` and
  ``password-file``, no experiment): the run's spec is read from the chain; nothing is
  evaluated centrally. Each round is one ``train.round`` message per sampled node
  (``phase-messages=true``: one message per phase, as in a simulation).

Either way the coordinator reads the run's spec from the chain like every participant,
and plays it with :class:`~deai_flower.strategies.CommitRevealStrategy`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from .chain import RoundsContract, simulation_key
from .chain.keys import keystore_key
from .chain.node import connect_url
from .chain.runs import fetch_spec
from .errors import ConfigError, DeaiError, ProtocolError
from .logs import project_errors_in_one_line
from .models import evaluate, get_arrays, instantiate_model, select_device, set_arrays
from .protocol.spec import allowed_models
from .storage import array_spec, cid_from_bytes, decode_arrays
from .storage.location import open_store
from .strategies import CommitRevealStrategy

server_app = ServerApp()
project_errors_in_one_line()  # a config error or a refused run: one line, not Flower's traceback

#: How long ``flwr run`` waits for its SuperNodes to connect.
_NODES_TIMEOUT_S = 120.0
#: How long a number of connected SuperNodes below the run's needs must stand still to be taken as final.
_NODES_STEADY_S = 15.0
#: How often a deployed coordinator asks the SuperLink for replies (Flower's own
#: ``send_and_receive`` asks every 3 s: on average 1.5 s lost per message exchange).
_REPLY_POLL_S = 0.5


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        coordinate(grid, context.run_config)
    except DeaiError as exc:  # said at once: under flwr run, Flower reports the failure only once its runtime stops
        log(ERROR, "run failed: %s", exc)
        raise


def coordinate(grid: Grid, run_config: Mapping[str, Any]) -> None:
    """Play the run ``run_config`` names (or, under ``flwr run``, set one up and play it).

    A deployment names the coordinator's keystore and no experiment; ``flwr run`` hands
    every key of ``[tool.flwr.app.config]`` over, so emptiness, not presence, decides.
    """
    simulated = any(str(run_config.get(key, "")).strip() for key in ("experiment", "overrides"))
    if not simulated and str(run_config.get("keystore", "")).strip():
        _deployment(grid, run_config)
    else:
        _simulation(grid, run_config)


def _required(run_config: Mapping[str, Any], key: str) -> str:
    value = str(run_config.get(key, "")).strip()
    if not value:
        raise ConfigError(f"run config: '{key}' is required for a deployed run (flwr run --run-config '{key}=...')")
    return value


def _flag(run_config: Mapping[str, Any], key: str, *, default: bool) -> bool:
    """A yes/no run-config entry; anything but a clear yes or no is refused."""
    value = str(run_config.get(key, "")).strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ConfigError(f"run config: '{key}' must be true or false, not '{run_config[key]}'")


def _strategy_for(contract: RoundsContract, run_id: int, store: Any, locator: dict[str, Any], *,
                  models: tuple[str, ...], **hooks: Any) -> tuple[CommitRevealStrategy, ArrayRecord]:  # fmt: skip
    """The strategy and the chain's current global model, both from what the chain records;
    the spec's model is built only if ``models`` names it."""
    spec = fetch_spec(contract, run_id, store)
    model = instantiate_model(spec.model, spec.data, allowed=models)
    shape = array_spec(get_arrays(model))
    current = cid_from_bytes(bytes(contract.get_run(run_id)["modelCid"]))
    arrays = decode_arrays(store.get(current), max_bytes=spec.max_blob_bytes, expected=shape)
    strategy = CommitRevealStrategy(contract=contract, run_id=run_id, spec=spec, store=store, expected_spec=shape,
                                    locator=locator, **hooks)  # fmt: skip
    return strategy, ArrayRecord({k: Array(v) for k, v in arrays.items()})


def _deployment(grid: Grid, run_config: Mapping[str, Any]) -> None:
    started = time.time()
    chain_url, store_at = _required(run_config, "chain-url"), _required(run_config, "store")
    contract_address, run_id = _required(run_config, "contract"), int(_required(run_config, "run-id"))
    account = keystore_key(_required(run_config, "keystore"), password_file=_required(run_config, "password-file"))
    node = connect_url(chain_url)
    store = open_store(store_at)
    contract = RoundsContract(node, contract_address, account)
    # Deployed nodes reach chain and store through their own endpoints; the locator names
    # the coordinator's only because every message carries all four entries.
    locator = {"contract": contract.address, "run-id": run_id, "chain-url": chain_url, "store": store_at}
    # No central test set in a deployment: every silo scores each finalized model on its own held-out data
    # (unless the run config turns it off). Every SuperNode runs its message at once: one message per round,
    # unless asked for one per phase.
    per_phase = _flag(run_config, "phase-messages", default=False)
    evaluate = _flag(run_config, "federated-evaluation", default=True)
    try:  # the coordinator's own list, as a silo's node config has one
        models = allowed_models(str(run_config.get("model-targets", "")))
    except ConfigError as exc:
        raise ConfigError(f"run config 'model-targets': {exc}") from None
    strategy, arrays = _strategy_for(contract, run_id, store, locator, models=models, federated_evaluation=evaluate,
                                     one_message_rounds=not per_phase, relay=_flag(run_config, "relay", default=True),
                                     reply_poll_s=_REPLY_POLL_S)  # fmt: skip
    strategy.start(grid, arrays)
    output_dir = run_config.get("output-dir")
    if output_dir:
        from .simulation.results import results_document

        document = results_document(strategy, node=node, store=store, first_block=0, setup={},
                                    wall_seconds=time.time() - started)  # fmt: skip
        _write_results(Path(str(output_dir)), _with_nodes(document, strategy))


def _simulation(grid: Grid, run_config: Mapping[str, Any]) -> None:
    from .simulation.config import experiment_config
    from .data import load_dataset
    from .simulation.harness import locator, prepare_run, serve_chain

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
    from .outputs import write_run_outputs
    from .report import ProgressMonitor, round_line
    from .simulation.results import results_document

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

    def write_results() -> dict[str, Any]:
        document = results_document(strategy, node=contract.node, store=store,
                                    first_block=int(setup.get("first_block", 0)), setup=setup,
                                    wall_seconds=time.time() - float(setup.get("started", started)), cfg=cfg,
                                    output_dir=output_dir)  # fmt: skip
        document["finalized_before"] = done  # a resumed run counts its rounds on from these
        _write_results(output_dir, _with_nodes(document, strategy))
        return document

    def round_done(report: Any) -> None:
        document = write_results()  # after every round: a stop loses at most the round in flight
        log(INFO, "%s", round_line(document))  # flwr run's progress (deai-flower shows its own display)
        monitor.round_done(report)

    done = int(contract.get_run(run_id)["finalizedRounds"])
    monitor = ProgressMonitor(num_rounds=int(cfg.num_rounds), enabled=progress, completed=done)
    # simulated participants are registered with made-up identities: no SuperNode key to bind
    strategy, arrays = _strategy_for(contract, run_id, store, where, models=models, evaluate_fn=evaluate_global,
                                     bind_supernode_keys=False, on_phase=monitor.phase, on_round=round_done,
                                     max_failed_rounds=int(cfg.strategy.get("max_failed_rounds", 3)),
                                     relay=bool(cfg.strategy.get("relay", True)))  # fmt: skip
    with monitor:
        strategy.start(grid, arrays)
    document = write_results()
    written = write_run_outputs(output_dir, document, store=store)
    log(INFO, "run %s: results.json, %s in %s", run_id, ", ".join(path.name for path in written.values()), output_dir)
    return document


def _with_nodes(document: dict[str, Any], strategy: CommitRevealStrategy) -> dict[str, Any]:
    """``results.json`` plus who took part (the nodes that proved their identity, and the
    nodes refused, never asked to act, with the reason) and, where the silos evaluated,
    each round's per-silo and weighted scores."""
    document["nodes"] = {str(n): a for n, a in sorted(strategy.addresses.items())}
    if strategy.federated_evaluation:
        document["initial_federated_evaluation"] = strategy.initial_federated
        for entry, report in zip(document["rounds"], strategy.reports, strict=True):
            entry["federated_evaluation"] = report.federated
    document["refused_nodes"] = [{"node_id": n, **r} for n, r in sorted(strategy.refused.items())]
    return document


def _write_results(output_dir: Path, document: dict[str, Any]) -> None:
    """Write ``results.json`` atomically (temporary file, then rename): a reader, or a stop
    at any moment, sees the previous round's file or this one, never half of one."""
    output_dir.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".results.json.", dir=output_dir)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(document, indent=2, allow_nan=True) + "\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, output_dir / "results.json")
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

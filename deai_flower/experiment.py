"""One simulated experiment, end to end, from a composed config to ``results.json``.

The harness sets the simulated consortium up (:mod:`.simulation.harness`), then Flower's
module-level ServerApp and ClientApp (``deai_flower.apps``) run on the chosen engine,
configured through Flower's ``run_config`` as they would be by ``flwr run``: the
coordinator and the simulated participants build everything else from the chain and
the store. The coordinator writes ``results.json``.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import validate
from .models import check_engine_devices, select_device
from .participant.run_view import forget_run_views
from .protocol.spec import spec_cid
from .results import write_json_atomic
from .simulation.harness import PreparedRun, locator, prepare_run, serve_chain
from .simulation.participants import forget_simulated_participants

#: Where a run is and how to resume it, written into the output directory before the run starts.
RUN_FILE = "run.json"
RUN_FORMAT = "deai-flower/run/1"
RESULTS_FILE = "results.json"
#: Overrides a resume sets itself (from where the first start's run actually is).
_RESUME_SETS = ("resume.contract_address", "resume.run_id", "storage.root", "privacy.state_dir")


def experiment_run_config(cfg: DictConfig, *, output_dir: Path, where: dict[str, Any],
                          setup: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Flower's ``run_config`` for a simulated run (every value a string or number)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {"mode": "simulation", "experiment": json.dumps(resolved, sort_keys=True, default=str),
            "output-dir": str(output_dir), "setup": json.dumps(setup), **where}  # fmt: skip


def run_experiment(cfg: DictConfig, *, output_dir: Path, client_app: Any = None,
                   overrides: Sequence[str] | None = None,
                   on_start: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run the experiment ``cfg`` describes; write and return its results.

    ``client_app``: the participants' ClientApp (``deai_flower.apps.client_app`` unless
    a test wraps it to make some nodes misbehave). ``overrides``: the command-line
    overrides ``cfg`` was composed with (default: Hydra's, when a Hydra job runs), which
    ``run.json``'s resume command repeats. ``on_start``: called with ``run.json``'s
    content once it is written, before the first round.
    """
    from .apps import client_app as default_client_app
    from .apps import server_app

    validate(cfg)  # type: ignore[arg-type]
    check_engine_devices(cfg.engine.kind, cfg.device, float(cfg.engine.num_gpus_per_client))
    select_device(str(cfg.device))  # device=cuda on a machine without CUDA: refused before anything is deployed
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    prepared = prepare_run(cfg, output_dir)
    record = run_record(cfg, prepared, output_dir=output_dir, started=started,
                        overrides=_hydra_overrides() if overrides is None else overrides)  # fmt: skip
    write_json_atomic(output_dir / RUN_FILE, record)
    if on_start is not None:
        on_start(record)
    setup = {"setup_gas": prepared.setup_gas, "first_block": prepared.first_block, "initial_cid": prepared.initial_cid,
             "num_clients": int(cfg.num_clients), "started": started, "chain": prepared.node.describe()}  # fmt: skip
    try:
        with serve_chain(prepared.node, same_process=cfg.engine.kind == "inprocess") as chain_url, \
                serve_chain(prepared.node, same_process=True) as own_url:
            run_config = experiment_run_config(cfg, output_dir=output_dir, where=locator(prepared, chain_url),
                                               setup=setup)  # fmt: skip
            # the coordinator runs in this process (Flower's simulation engine runs the
            # ServerApp in a thread of it): it reaches the chain directly, not through the
            # loopback bridge its participants' workers use
            run_config["coordinator-chain-url"] = own_url
            run_engine(cfg, server_app=server_app, client_app=client_app or default_client_app, run_config=run_config)
    finally:  # a sweep runs many experiments in one process: drop this one's participants
        forget_run_views()
        forget_simulated_participants()
    return json.loads((output_dir / RESULTS_FILE).read_text(encoding="utf-8"))


def run_record(cfg: DictConfig, prepared: PreparedRun, *, output_dir: Path, started: float,
               overrides: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """``run.json``: where the run is (contract, run id, chain, spec, store) and whether and
    how it can be resumed: ``resume_overrides`` (``resume_command`` for a shell) are the
    first start's overrides with the run's contract and id, and the store and ledger
    directories it used pinned as absolute paths, so that a resume started anywhere (in
    a new output directory) finds them."""
    live = str(cfg.chain.kind) != "embedded"
    resume = resume_overrides(cfg, overrides, contract_address=prepared.contract.address, run_id=prepared.run_id,
                              store_location=prepared.store_location, output_dir=output_dir)  # fmt: skip
    return {
        "format": RUN_FORMAT,
        "contract_address": prepared.contract.address,
        "run_id": prepared.run_id,
        "chain": prepared.node.describe(),
        "spec_cid": spec_cid(prepared.spec.digest()),
        "store": prepared.store_location,
        "output_dir": str(output_dir.resolve()),
        "results": str((output_dir / RESULTS_FILE).resolve()),
        "started": datetime.fromtimestamp(started, tz=timezone.utc).isoformat(timespec="seconds"),
        "resumed": bool(cfg.resume.contract_address),
        "resumable": live,
        "not_resumable_because": None if live else "the embedded chain ends with this process (chain=anvil runs on "
                                                   "a live chain and can be resumed)",  # fmt: skip
        "resume_overrides": resume if live else None,
        "resume_command": shlex.join(["deai-flower", *resume]) if live else None,
    }


def resume_overrides(cfg: DictConfig, overrides: Sequence[str], *, contract_address: str, run_id: int,
                     store_location: str, output_dir: Path) -> list[str]:  # fmt: skip
    """The ``deai-flower`` overrides that resume this run: the same overrides as its start
    (the resume recomputes the run spec from them, which must match the chain's), less
    Hydra's own (a resume gets an output directory of its own), with the contract and
    run id, a local store's directory and the ledger directory as absolute paths."""
    kept = [o for o in overrides if not _override_key(o).startswith("hydra.") and _override_key(o) not in _RESUME_SETS]
    pinned = []
    kind, _, where = store_location.partition(":")
    if kind == "local":
        pinned.append(f"storage.root={_hydra_value(where)}")
    state_dir = cfg.privacy.get("state_dir")
    if state_dir is not None:
        pinned.append(f"privacy.state_dir={_hydra_value(str((output_dir / str(state_dir)).resolve()))}")
    return [*kept, *pinned, f"resume.contract_address={contract_address}", f"resume.run_id={int(run_id)}"]


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].strip()


def _hydra_value(value: str) -> str:
    """``value`` as a Hydra override value (quoted unless plainly a path or a word)."""
    if re.fullmatch(r"[A-Za-z0-9_./-]+", value):
        return value
    quote = "'" if "'" not in value else '"'
    return quote + value.replace(quote, "\\" + quote) + quote


def _hydra_overrides() -> list[str]:
    """The overrides of the running Hydra job (none outside one)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_engine(cfg: DictConfig, *, server_app: Any, client_app: Any, run_config: dict[str, Any]) -> None:
    """Run the apps on the configured engine, with Flower's own logging quietened."""
    flwr_logger = logging.getLogger("flwr")
    previous_level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)
    try:
        if cfg.engine.kind == "ray":
            from .simulation.ray import run_ray

            run_ray(server_app=server_app, client_app=client_app, num_nodes=int(cfg.num_clients),
                    num_cpus=float(cfg.engine.num_cpus_per_client), num_gpus=float(cfg.engine.num_gpus_per_client),
                    run_config=run_config)  # fmt: skip
        else:
            from .simulation.inprocess import run_inprocess

            concurrency = cfg.engine.get("concurrency")
            run_inprocess(server_app=server_app, client_app=client_app, num_nodes=int(cfg.num_clients),
                          seed=int(cfg.seed), run_config=run_config,
                          concurrency=None if concurrency is None else int(concurrency))  # fmt: skip
    finally:
        flwr_logger.setLevel(previous_level)

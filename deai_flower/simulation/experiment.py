"""One simulated experiment, end to end, from a composed config to ``results.json``.

The harness sets the simulated consortium up (:mod:`.harness`), then Flower's
module-level ServerApp and ClientApp (``deai_flower.apps``) run on the chosen engine,
configured through Flower's ``run_config`` as they would be by ``flwr run``: the
coordinator and the simulated participants build everything else from the chain and
the store. The coordinator writes ``results.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import validate
from ..models import check_engine_devices
from ..participant.run_view import forget_run_views
from .harness import locator, prepare_run, serve_chain
from .participants import forget_simulated_participants


def experiment_run_config(cfg: DictConfig, *, output_dir: Path, where: dict[str, Any],
                          setup: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Flower's ``run_config`` for a simulated run (every value a string or number)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {"experiment": json.dumps(resolved, sort_keys=True, default=str), "output-dir": str(output_dir),
            "setup": json.dumps(setup), **where}  # fmt: skip


def run_experiment(cfg: DictConfig, *, output_dir: Path, client_app: Any = None) -> dict[str, Any]:
    """Run the experiment ``cfg`` describes; write and return its results.

    ``client_app``: the participants' ClientApp (``deai_flower.apps.client_app`` unless
    a test wraps it to make some nodes misbehave).
    """
    from ..apps import client_app as default_client_app
    from ..apps import server_app

    validate(cfg)  # type: ignore[arg-type]
    check_engine_devices(cfg.engine.kind, cfg.device, float(cfg.engine.num_gpus_per_client))
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    prepared = prepare_run(cfg, output_dir)
    setup = {"setup_gas": prepared.setup_gas, "first_block": prepared.first_block, "initial_cid": prepared.initial_cid,
             "num_clients": int(cfg.num_clients), "started": started, "chain": prepared.node.describe()}  # fmt: skip
    try:
        with serve_chain(prepared.node, same_process=cfg.engine.kind == "inprocess") as chain_url:
            run_config = experiment_run_config(cfg, output_dir=output_dir, where=locator(prepared, chain_url),
                                               setup=setup)  # fmt: skip
            run_engine(cfg, server_app=server_app, client_app=client_app or default_client_app, run_config=run_config)
    finally:  # a sweep runs many experiments in one process: drop this one's participants
        forget_run_views()
        forget_simulated_participants()
    return json.loads((output_dir / "results.json").read_text(encoding="utf-8"))


def run_engine(cfg: DictConfig, *, server_app: Any, client_app: Any, run_config: dict[str, Any]) -> None:
    """Run the apps on the configured engine, with Flower's own logging quietened."""
    flwr_logger = logging.getLogger("flwr")
    previous_level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)
    try:
        if cfg.engine.kind == "ray":
            from .ray import run_ray

            run_ray(server_app=server_app, client_app=client_app, num_nodes=int(cfg.num_clients),
                    num_cpus=float(cfg.engine.num_cpus_per_client), num_gpus=float(cfg.engine.num_gpus_per_client),
                    run_config=run_config)  # fmt: skip
        else:
            from .inprocess import run_inprocess

            run_inprocess(server_app=server_app, client_app=client_app, num_nodes=int(cfg.num_clients),
                          seed=int(cfg.seed), run_config=run_config)  # fmt: skip
    finally:
        flwr_logger.setLevel(previous_level)

"""Flower's simulation engine (Ray): the same ServerApp and ClientApp, one actor per client."""

from __future__ import annotations

import logging
import os
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from ..errors import ConfigError


def run_ray(*, server_app: ServerApp, client_app: ClientApp, num_nodes: int, num_cpus: float, num_gpus: float,
            run_config: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Run the federation on Flower's Simulation Runtime, every party seeing ``run_config``.

    Every party sees ``run_config`` as ``context.run_config``. Each client actor gets ``num_cpus`` CPUs and ``num_gpus`` (a fraction is fine) of a
    GPU; Ray fits as many actors as the machine's resources allow. Flower's public
    ``run_simulation`` takes no run config, so its implementation is called with a
    ``Run`` and a server context that carry one; its nodes read theirs from an installed
    app, which a Python-API run has not, so the ClientApp is wrapped to fill it in.
    """
    if num_cpus <= 0:
        raise ConfigError(f"engine.num_cpus_per_client must be > 0 (got {num_cpus})")
    if num_gpus < 0:
        raise ConfigError(f"engine.num_gpus_per_client must be >= 0 (got {num_gpus})")
    try:
        from flwr.app import Context, RecordDict
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.telemetry import EventType
        from flwr.simulation.run_simulation import _run_simulation
        from flwr.supercore.constant import NOOP_FEDERATION_ID
        from flwr.supercore.run import Run
        from flwr.supercore.task_identity import TaskIdentity
    except ImportError as exc:  # pragma: no cover - flwr[simulation] is a dependency
        raise ConfigError("engine=ray needs Flower's simulation extra: pip install 'flwr[simulation]'") from exc
    # Ray's own dashboard and metrics exporters need network services we never use.
    os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray starts its workers at nice 15, so the clients (the whole workload here) yield to
    # every other process: beside three busy processes on 2 cores, a 3-client, 1-round run
    # took 205 s at nice 15 and 65 s at 0 (25 s alone). A RAY_worker_niceness set by the
    # user wins.
    os.environ.setdefault("RAY_worker_niceness", "0")
    backend_config = {
        "client_resources": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        "init_args": {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False},
    }
    config = dict(run_config or {})
    # As run_simulation builds its run, plus the run config.
    run = Run.create_empty(run_id=int.from_bytes(os.urandom(7), "big") or 1)
    run.primary_task_id = int.from_bytes(os.urandom(7), "big") or 1
    run.federation_id = NOOP_FEDERATION_ID
    run.override_config = config
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    context = Context(run_id=run.run_id, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(),
                      run_config=config)  # fmt: skip
    _run_simulation(
        num_supernodes=num_nodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=_WithRunConfig(client_app, config),  # type: ignore[arg-type]
        server_app=server_app,
        backend_config=backend_config,  # type: ignore[arg-type]
        server_app_context=context,
        run=run,
    )


class _WithRunConfig:
    """The ClientApp, with the run's config filled into each node's context."""

    def __init__(self, app: ClientApp, run_config: dict[str, Any]) -> None:
        self.app, self.run_config = app, run_config

    def __call__(self, message: Any, context: Any) -> Any:
        from flwr.app import Context

        if not context.run_config:  # the same node and state, seeing the run's config
            context = Context(run_id=context.run_id, node_id=context.node_id, node_config=context.node_config,
                              state=context.state, run_config=dict(self.run_config))  # fmt: skip
        return self.app(message=message, context=context)

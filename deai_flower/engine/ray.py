"""Flower's simulation engine (Ray): the same ServerApp and ClientApp, one actor per client."""

from __future__ import annotations

import logging
import os

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from ..errors import ConfigError


def run_ray(*, server_app: ServerApp, client_app: ClientApp, num_nodes: int, num_cpus: float, num_gpus: float) -> None:
    """Run the federation under ``flwr.simulation.run_simulation``.

    Each client actor gets ``num_cpus`` CPUs and ``num_gpus`` (a fraction is fine) of a
    GPU; Ray fits as many actors as the machine's resources allow.
    """
    if num_cpus <= 0:
        raise ConfigError(f"engine.num_cpus_per_client must be > 0 (got {num_cpus})")
    if num_gpus < 0:
        raise ConfigError(f"engine.num_gpus_per_client must be >= 0 (got {num_gpus})")
    try:
        from flwr.simulation import run_simulation
    except ImportError as exc:  # pragma: no cover - flwr[simulation] is a dependency
        raise ConfigError("engine=ray needs Flower's simulation extra: pip install 'flwr[simulation]'") from exc
    # Ray's own dashboard and metrics exporters need network services we never use.
    os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    backend_config = {
        "client_resources": {"num_cpus": num_cpus, "num_gpus": num_gpus},
        "init_args": {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False},
    }
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_nodes,
        backend_config=backend_config,  # type: ignore[arg-type]
    )

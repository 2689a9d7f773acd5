"""Flower's entry points: the module-level apps ``flwr run`` and every engine run.

``[tool.flwr.app.components]`` in pyproject.toml names them; ``deai-flower`` runs the
very same objects on the in-process engine or on Ray. Each is imported on first use
(PEP 562): a silo's ClientApp process, started by Flower for every message, never loads
the coordinator's side. Here deployment and simulation meet: the ServerApp plays what the
run config's ``mode`` names, and the ClientApp serves deployed silos and the simulation's
nodes alike, whose participants the simulation builds.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message

from .errors import ConfigError, DeaiError

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

    from .participant import Participant, RunLocator

    client_app: ClientApp
    server_app: ServerApp

__all__ = ["client_app", "coordinate", "participant_for", "server_app"]

# Flower's simulation runtime loads these apps before it starts Ray, whose start then warns
# about a future default for GPU visibility: nothing a user of a run can act on.
warnings.filterwarnings("ignore", message="Tip: In future versions of Ray, Ray will no longer override accelerator",
                        category=FutureWarning)  # fmt: skip



def simulated_participant(run_config: Mapping[str, Any], partition_id: int, locator: RunLocator,
                          num_partitions: int | None) -> Participant:  # fmt: skip
    """The simulation's participant of a simulated node (imported at its first message: a
    deployed silo's process never loads the simulation)."""
    from .simulation.participants import simulated_participant as build

    return build(run_config, partition_id, locator, num_partitions=num_partitions)


def participant_for(message: Message, context: Context) -> Participant:
    """The participant a node of :data:`client_app` is, for this message."""
    from .participant.app import participant_for as deployed_or

    return deployed_or(message, context, simulated=simulated_participant)


def _client_app() -> ClientApp:
    from .participant.app import build_client_app

    return build_client_app(simulated=simulated_participant)


def coordinate(grid: Grid, run_config: Mapping[str, Any]) -> None:
    """Play the run ``run_config`` names, as its ``mode`` says: ``deployment`` (the
    coordinator of a consortium's silos, :mod:`.server_app`) or ``simulation`` (a simulated
    consortium, set up here under ``flwr run .``: :mod:`.simulation.coordinator`)."""
    mode = str(run_config.get("mode", "")).strip()
    if mode == "deployment":
        from .server_app import coordinate as coordinate_deployment

        coordinate_deployment(grid, run_config)
    elif mode == "simulation":
        from .simulation.coordinator import coordinate_simulation

        coordinate_simulation(grid, run_config)
    else:
        raise ConfigError(f"run config 'mode' must be 'deployment' or 'simulation' (got {mode!r}): "
                          "flwr run . <connection> --run-config 'mode=\"deployment\" ...'")  # fmt: skip


def _server_app() -> ServerApp:
    from flwr.serverapp import ServerApp

    from .logs import project_errors_in_one_line

    app = ServerApp()
    project_errors_in_one_line()  # a config error or a refused run: one line, not Flower's traceback

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            coordinate(grid, context.run_config)
        except DeaiError as exc:  # said at once: under flwr run, Flower reports the failure only once its runtime stops
            from flwr.common import log

            log(logging.ERROR, "run failed: %s", exc)
            raise

    return app


_BUILD = {"client_app": _client_app, "server_app": _server_app}


def __getattr__(name: str) -> Any:
    """The apps, built on first use (PEP 562)."""
    if name not in _BUILD:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = _BUILD[name]()
    return value

"""Flower's entry points: the module-level apps ``flwr run`` and every engine run.

``[tool.flwr.app.components]`` in pyproject.toml names them; ``deai-flower`` runs the
very same objects on the in-process engine or on Ray. Each is imported on first use
(PEP 562): a silo's ClientApp process, started by Flower for every message, never loads
the coordinator's side.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp

    from .participant import Participant, RunLocator
    from .server_app import server_app

__all__ = ["client_app", "participant_for", "server_app"]

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


def _server_app() -> Any:
    from .server_app import server_app

    return server_app


_BUILD = {"client_app": _client_app, "server_app": _server_app}


def __getattr__(name: str) -> Any:
    """The apps, built on first use (PEP 562)."""
    if name not in _BUILD:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = _BUILD[name]()
    return value

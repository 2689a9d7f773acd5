"""The participants' ClientApp.

Which participant a node is follows from ``context.node_config``: a deployed SuperNode
names its keystore (``keystore``, see :meth:`Participant.from_node_config`); a simulated
node has a ``partition-id`` and is built by the simulation, which supplies its builder to
:func:`build_client_app` (participants never import the simulation):
``deai_flower.apps.client_app`` serves both kinds on every engine, :data:`client_app`
deployed silos only. A deployed participant serves only the run its SuperNode's
``run_config`` names (``contract``, ``run-id``) and reaches chain and store through its
own endpoints; a simulated one goes where each message's locator says. Either kind
refuses to be relayed when its node config says ``relay=false`` (protocol §2.4).
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

from eth_utils import is_address, to_checksum_address
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from ..errors import ConfigError, ProtocolError
from ..messages import CONFIG, IdentityRequest
from .locator import RunLocator
from .participant import Participant, _NodeConfig

__all__ = ["SimulatedParticipants", "build_client_app", "client_app", "participant_for"]

#: Builds simulated participant ``partition_id`` of the experiment ``run_config`` names, at
#: ``locator``'s chain and store, among ``num_partitions`` (the experiment's own count when None).
SimulatedParticipants = Callable[[Mapping[str, Any], int, RunLocator, "int | None"], Participant]

_DEPLOYED: dict[tuple[tuple[str, str], ...], Participant] = {}
_UNRELAYED: weakref.WeakKeyDictionary[Participant, Participant] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _deployed(node_config: Mapping[str, Any]) -> Participant:
    key = tuple(sorted((str(k), repr(v)) for k, v in node_config.items()))
    with _LOCK:  # decrypting a keystore takes a second: once per node config and process
        participant = _DEPLOYED.get(key)
        if participant is None:
            participant = _DEPLOYED[key] = Participant.from_node_config(node_config)
        return participant


def _check_run(locator: RunLocator, run_config: Mapping[str, Any]) -> None:
    """A deployed participant acts only in the run its SuperNode was started for."""
    for key in ("contract", "run-id"):
        if key not in run_config or str(run_config[key]).strip() == "":
            raise ConfigError(f"run_config lacks '{key}': a deployed participant serves only the run it names")
    contract = str(run_config["contract"])
    if not is_address(contract):
        raise ConfigError(f"run_config 'contract' {contract!r} is not an address")
    try:
        run_id = int(run_config["run-id"])
    except (TypeError, ValueError):
        raise ConfigError(f"run_config 'run-id' {run_config['run-id']!r} is not an integer") from None
    if (locator.contract, locator.run_id) != (to_checksum_address(contract), run_id):
        raise ProtocolError(f"message is about run {locator.run_id} of contract {locator.contract}; this participant "
                            f"serves run {run_id} of contract {to_checksum_address(contract)}")  # fmt: skip


def participant_for(message: Message, context: Context, *,
                    simulated: SimulatedParticipants | None = None) -> Participant:  # fmt: skip
    """The participant this node is, for this message; ``simulated`` builds a simulated node's.

    Raises:
        ConfigError: the node config names neither a keystore nor a partition, or names a
            partition with no ``simulated`` to build it.
        ProtocolError: a deployed participant got a message about another run, or a
            message that does not say which run it is about.
    """
    node_config = context.node_config
    config = message.content[CONFIG] if CONFIG in message.content else {}
    if "keystore" in node_config:
        participant = _deployed(node_config)
        if message.metadata.message_type != IdentityRequest.message_type or "contract" in config:
            _check_run(RunLocator.from_config(config), context.run_config)
        return participant
    if "partition-id" in node_config:
        if simulated is None:
            raise ConfigError("node_config names a 'partition-id' (a simulated participant), and this ClientApp "
                              "serves deployed ones only (deai_flower.apps.client_app serves both)")  # fmt: skip
        n = node_config.get("num-partitions")
        participant = simulated(context.run_config, int(node_config["partition-id"]), RunLocator.from_config(config),
                                None if n is None else int(n))  # fmt: skip
        return participant if _NodeConfig(node_config).flag("relay", default=True) else _unrelayed(participant)
    raise ConfigError("node_config names neither a 'keystore' (a deployed participant: see "
                      "Participant.from_node_config) nor a 'partition-id' (a simulated one)")  # fmt: skip


def _unrelayed(participant: Participant) -> Participant:
    """``participant`` refusing any relayer (one copy per participant: views are cached per object)."""
    with _LOCK:
        copy = _UNRELAYED.get(participant)
        if copy is None:
            copy = _UNRELAYED[participant] = dataclasses.replace(participant, relay=False)
        return copy


def _serve(module: str, name: str, simulated: SimulatedParticipants | None) -> Callable[[Message, Context], Message]:
    """Flower's entry for one message type: ``module``'s handler ``name``, imported on the
    first message (Flower starts a ClientApp process per message in a deployment, and only
    training and evaluation need torch and Opacus)."""

    def serve(message: Message, context: Context) -> Message:
        handler: Callable[[Participant, Message, Context], Message] = getattr(import_module(module, __package__), name)
        return handler(participant_for(message, context, simulated=simulated), message, context)

    serve.__name__ = serve.__qualname__ = name
    return serve


def build_client_app(*, simulated: SimulatedParticipants | None = None) -> ClientApp:
    """The participants' ClientApp; with ``simulated`` it also serves simulated nodes."""
    app = ClientApp()
    app.query("identity")(_serve(".identity_query", "handle_identity", simulated))
    app.train("commit")(_serve(".handlers", "handle_commit", simulated))
    app.train("reveal")(_serve(".handlers", "handle_reveal", simulated))
    app.train("attest")(_serve(".handlers", "handle_attest", simulated))
    app.train("round")(_serve(".handlers", "handle_round", simulated))
    app.evaluate()(_serve(".handlers", "handle_evaluate", simulated))
    return app


#: The ClientApp of deployed silos.
client_app = build_client_app()

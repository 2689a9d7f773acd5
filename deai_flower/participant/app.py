"""The participants' ClientApp: one module-level object for every engine.

Which participant a node is follows from ``context.node_config``: a deployed SuperNode
names its keystore (``keystore``, see :meth:`Participant.from_node_config`); a simulated
node has a ``partition-id`` and is built by the simulation harness from the run's
experiment config. A deployed participant serves only the run its SuperNode's
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
from ..messages import CONFIG
from .locator import RunLocator
from .participant import Participant, _NodeConfig

__all__ = ["client_app", "participant_for"]

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


def participant_for(message: Message, context: Context) -> Participant:
    """The participant this node is, for this message.

    Raises:
        ConfigError: the node config names neither a keystore nor a partition.
        ProtocolError: a deployed participant got a message about another run, or a
            message that does not say which run it is about.
    """
    node_config = context.node_config
    config = message.content[CONFIG] if CONFIG in message.content else {}
    if "keystore" in node_config:
        participant = _deployed(node_config)
        if message.metadata.message_type != "query.identity" or "contract" in config:
            _check_run(RunLocator.from_config(config), context.run_config)
        return participant
    if "partition-id" in node_config:
        from ..simulation.participants import simulated_participant

        n = node_config.get("num-partitions")
        locator = RunLocator.from_config(config)
        participant = simulated_participant(context.run_config, int(node_config["partition-id"]), locator,
                                            num_partitions=None if n is None else int(n))  # fmt: skip
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


def _serve(module: str, name: str) -> Callable[[Message, Context], Message]:
    """Flower's entry for one message type: ``module``'s handler ``name``, imported on the
    first message (Flower starts a ClientApp process per message in a deployment, and only
    training and evaluation need torch and Opacus)."""

    def serve(message: Message, context: Context) -> Message:
        handler: Callable[[Participant, Message, Context], Message] = getattr(import_module(module, __package__), name)
        return handler(participant_for(message, context), message, context)

    serve.__name__ = serve.__qualname__ = name
    return serve


client_app = ClientApp()
client_app.query("identity")(_serve(".identity_query", "handle_identity"))
client_app.train("commit")(_serve(".handlers", "handle_commit"))
client_app.train("reveal")(_serve(".handlers", "handle_reveal"))
client_app.train("attest")(_serve(".handlers", "handle_attest"))
client_app.train("round")(_serve(".handlers", "handle_round"))
client_app.evaluate()(_serve(".handlers", "handle_evaluate"))

"""The deployed coordinator: reads ``context.run_config`` and plays the run it names.

A deployment names the run (``contract``, ``run-id``, ``chain-url``, ``store``) and the
coordinator's own chain key (``keystore``, ``password-file``); the run's spec is read
from the chain like every participant reads it, and played with
:class:`~deai_flower.strategies.CommitRevealStrategy`. Nothing is evaluated centrally: the
silos score each finalized model on their own held-out data. Each round is one message per
phase to each sampled node (``train.commit``, ``train.reveal``, ``train.attest``), whose
signed commitments, reveal records and votes the coordinator publishes in batches
(``phase-messages=false``: one ``train.round`` message per node, which sends its own
transactions).

The module-level ServerApp is ``deai_flower.apps.server_app``, which plays a deployment
here and a simulated consortium with :mod:`deai_flower.simulation.coordinator`, as the
run config's ``mode`` says. The building blocks below (the strategy from the chain,
``results.json``) serve both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord
from flwr.serverapp import Grid

from .chain import RoundsContract
from .chain.keys import keystore_key
from .chain.node import connect_url
from .chain.runs import fetch_spec
from .errors import ConfigError
from .models import get_arrays, instantiate_model
from .protocol.spec import allowed_models
from .results import write_json_atomic
from .storage import array_spec, cid_from_bytes, decode_arrays
from .storage.location import open_store
from .strategies import CommitRevealStrategy

#: How often a deployed coordinator asks the SuperLink for replies (Flower's own
#: ``send_and_receive`` asks every 3 s: on average 1.5 s lost per message exchange).
_REPLY_POLL_S = 0.5


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


def strategy_for(contract: RoundsContract, run_id: int, store: Any, locator: dict[str, Any], *,
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


def coordinate(grid: Grid, run_config: Mapping[str, Any]) -> None:
    """Play the deployed run ``run_config`` names."""
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
    # (unless the run config turns it off). One message per phase by default, relayed: a third less gas per
    # participant than one train.round message each (97,451 against 152,034 at 5), and since the silos' code
    # gates fork each message's process warm, the extra messages cost seconds, not the 20 s a cold start took.
    per_phase = _flag(run_config, "phase-messages", default=True)
    evaluate = _flag(run_config, "federated-evaluation", default=True)
    try:  # the coordinator's own list, as a silo's node config has one
        models = allowed_models(str(run_config.get("model-targets", "")))
    except ConfigError as exc:
        raise ConfigError(f"run config 'model-targets': {exc}") from None
    strategy, arrays = strategy_for(contract, run_id, store, locator, models=models, federated_evaluation=evaluate,
                                     one_message_rounds=not per_phase, relay=_flag(run_config, "relay", default=True),
                                     reply_poll_s=_REPLY_POLL_S)  # fmt: skip
    strategy.start(grid, arrays)
    output_dir = run_config.get("output-dir")
    if output_dir:
        from .results import results_document

        document = results_document(strategy, node=node, store=store, first_block=0, setup={},
                                    wall_seconds=time.time() - started)  # fmt: skip
        write_results(Path(str(output_dir)), with_nodes(document, strategy))


def with_nodes(document: dict[str, Any], strategy: CommitRevealStrategy) -> dict[str, Any]:
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


def write_results(output_dir: Path, document: dict[str, Any]) -> None:
    """Write ``results.json`` atomically: a reader, or a stop at any moment, sees the
    previous round's file or this one, never half of one."""
    write_json_atomic(output_dir / "results.json", document)

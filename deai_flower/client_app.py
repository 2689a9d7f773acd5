"""The ClientApp of a participant: train + commit, reveal, attest.

Each handler acts on chain with the participant's own key and talks to the coordinator
only to be told *when* to act; nothing the coordinator sends is trusted for content:
the global model is fetched by the CID the chain records and checked against it, and
attesters read the revealed set from chain events, not from the coordinator.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from eth_utils import keccak
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log

from .chain import DpParams, commitment_of
from .errors import (
    BlobFormatError,
    ChainError,
    ContractRevertError,
    PrivacyBudgetExhaustedError,
    ProtocolError,
    StoreError,
)
from .messages import CONFIG, METRICS, STATUS
from .federation import ClientRuntime, client_runtime
from .models import set_arrays
from .privacy import PrivacyLedger, ledger_path, load_ledger, save_ledger, train_round
from .settings import RunSettings
from .storage import cid_from_bytes, cid_to_bytes, compute_cid, decode_arrays, encode_arrays
from .protocol.rules import RevealedUpdate, aggregate

_LEDGER = "privacy-ledger"
_PENDING = "pending-reveal"


def _reply(message: Message, *, status: dict, metrics: dict | None = None) -> Message:
    content = RecordDict({STATUS: ConfigRecord(status)})
    if metrics is not None:
        content[METRICS] = MetricRecord(metrics)
    return Message(content, reply_to=message)


def _salt(runtime: ClientRuntime, round_id: int) -> bytes:
    """The round's secret salt: unpredictable to others, reproducible for a fixed key."""
    secret = runtime.account.key
    return keccak(secret + runtime.contract.address.encode() + runtime.settings.run_id.to_bytes(32, "big")
                  + round_id.to_bytes(32, "big"))  # fmt: skip


def _ledger_file(runtime: ClientRuntime) -> tuple[Path | None, dict[str, object]]:
    """The client's ledger state file (None without ``privacy.state_dir``) and its owner."""
    identity = {"participant": runtime.account.address, "chain_id": runtime.contract.node.chain_id,
                "contract": runtime.contract.address, "run_id": runtime.settings.run_id}  # fmt: skip
    state_dir = runtime.settings.privacy.state_dir
    return (None if state_dir is None else ledger_path(state_dir, **identity)), identity  # type: ignore[arg-type]


def _load_ledger(runtime: ClientRuntime, context: Context) -> PrivacyLedger:
    """The privacy ledger from ``context.state`` or, after a restart, from the state file.

    When both exist the one with more rounds wins: never account for less than was spent.
    """
    in_memory = PrivacyLedger.from_record(dict(context.state[_LEDGER])) if _LEDGER in context.state else None
    path, identity = _ledger_file(runtime)
    on_disk = None if path is None else load_ledger(path, identity=identity)
    candidates = [ledger for ledger in (in_memory, on_disk) if ledger is not None]
    return max(candidates, key=lambda ledger: len(ledger.history)) if candidates else PrivacyLedger()


def _save_ledger(runtime: ClientRuntime, context: Context, ledger: PrivacyLedger) -> None:
    context.state[_LEDGER] = ConfigRecord(ledger.to_record())
    path, identity = _ledger_file(runtime)
    if path is not None:
        save_ledger(path, ledger, settings=runtime.settings.privacy, identity=identity)


def handle_commit(settings: RunSettings, message: Message, context: Context) -> Message:
    """Fetch the chain's global model, train with DP-SGD, commit to the update's hash."""
    config = message.content[CONFIG]
    round_id = int(config["round"])
    runtime = client_runtime(settings, int(context.node_config["partition-id"]))
    contract = runtime.contract
    started = time.perf_counter()

    model_cid = cid_from_bytes(bytes(contract.get_run(settings.run_id)["modelCid"]))
    if str(config["model-cid"]) != model_cid:
        raise ProtocolError(f"coordinator announced model {config['model-cid']} but the chain records {model_cid}")
    global_arrays = decode_arrays(
        runtime.store.get(model_cid), max_bytes=settings.max_blob_bytes, expected=runtime.spec
    )
    set_arrays(runtime.model, global_arrays)

    ledger = _load_ledger(runtime, context)
    try:
        trained = train_round(
            model=runtime.model,
            x=runtime.x,
            y=runtime.y,
            settings=settings.privacy,
            ledger=ledger,
            planned_rounds=settings.num_rounds,
            local_epochs=settings.training.local_epochs,
            batch_size=settings.training.batch_size,
            learning_rate=settings.training.learning_rate,
            seed=settings.seed * 1_000_003 + round_id * 1_009 + runtime.partition_id,
            device=runtime.device,
            num_threads=settings.training.num_threads,
        )
    except PrivacyBudgetExhaustedError as exc:
        log(INFO, "client %s declines round %s: %s", runtime.partition_id, round_id, exc)
        return _reply(message, status={"state": "declined", "reason": str(exc), "address": runtime.account.address})
    _save_ledger(runtime, context, ledger)
    train_seconds = time.perf_counter() - started

    update = trained.arrays
    if runtime.partition_id in settings.poisoned_clients:
        # A simulated adversary, for robustness experiments: scale its own update.
        scale = settings.poison_scale
        update = {k: (global_arrays[k] + scale * (v - global_arrays[k])).astype(v.dtype) for k, v in update.items()}
    blob = encode_arrays(update)
    cid = compute_cid(blob)
    dp = DpParams.from_floats(
        noise_multiplier=trained.noise_multiplier,
        sample_rate=trained.sample_rate,
        steps=trained.steps,
        delta=trained.delta,
        epsilon=trained.epsilon,
        accountant=trained.accountant,
    )
    salt = _salt(runtime, round_id)
    commitment = commitment_of(
        chain_id=contract.node.chain_id,
        contract=contract.address,
        run_id=settings.run_id,
        round_id=round_id,
        participant=runtime.account.address,
        cid=cid_to_bytes(cid),
        num_examples=trained.num_examples,
        dp=dp,
        salt=salt,
    )
    tx = contract.commit(settings.run_id, round_id, commitment)
    if _PENDING in context.state:  # a round abandoned before its reveal
        runtime.store.discard(str(context.state[_PENDING].get("staged", "")))
    # Published only at the reveal; staging writes it meanwhile, out of sight (after the
    # transaction, so that the write overlaps what comes next rather than the send).
    staged = runtime.store.stage(blob, cid=cid)
    context.state[_PENDING] = ConfigRecord(
        {
            "round": round_id,
            "cid": cid,
            "blob": blob,  # to put at the reveal if the staged copy is gone (a restart)
            "staged": staged,
            "num-examples": trained.num_examples,
            "dp": [str(v) for v in dp.as_tuple()],
            "salt": salt,
        }
    )
    return _reply(
        message,
        status={"state": "committed", "address": runtime.account.address, "cid": cid},
        metrics={
            "num-examples": trained.num_examples,
            "epsilon": trained.epsilon,
            "noise-multiplier": trained.noise_multiplier,
            "sample-rate": trained.sample_rate,
            "steps": trained.steps,
            "train-loss": trained.train_loss,
            "train-seconds": train_seconds,
            "gas": tx.gas_used,
        },
    )


def handle_reveal(settings: RunSettings, message: Message, context: Context) -> Message:
    """Upload the committed blob and reveal its preimage on chain."""
    round_id = int(message.content[CONFIG]["round"])
    runtime = client_runtime(settings, int(context.node_config["partition-id"]))
    if _PENDING not in context.state or int(context.state[_PENDING]["round"]) != round_id:
        raise ProtocolError(f"nothing committed for round {round_id}")
    pending = context.state[_PENDING]
    stored_cid, staged = str(pending["cid"]), str(pending.get("staged", ""))
    try:
        published = runtime.store.publish(staged, cid=stored_cid)
    except StoreError as exc:  # the background write failed: the bytes are still here
        log(WARNING, "client %s: staged copy unusable (%s); storing the update again", runtime.partition_id, exc)
        published = False
    if not published:
        stored_cid = runtime.store.put(bytes(pending["blob"]), cid=stored_cid)  # hashed at commit
        runtime.store.discard(staged)
    if stored_cid != pending["cid"]:
        raise StoreError(f"store returned CID {stored_cid}, committed {pending['cid']}")
    dp = DpParams(*(int(v) for v in pending["dp"]))
    tx = runtime.contract.reveal(
        settings.run_id,
        round_id,
        cid=cid_to_bytes(stored_cid),
        num_examples=int(pending["num-examples"]),
        dp=dp,
        salt=bytes(pending["salt"]),
    )
    del context.state[_PENDING]
    return _reply(message, status={"state": "revealed", "address": runtime.account.address}, metrics={"gas": tx.gas_used})


def revealed_updates(
    runtime: ClientRuntime, round_id: int, opened_block: int
) -> tuple[list[RevealedUpdate], dict[str, str]]:
    """The round's valid reveals, read from chain events (from the round's opening
    block on) and fetched from the store.

    A blob that is missing, does not match its CID or fails validation is excluded,
    with the reason; every honest attester excludes the same ones.
    """
    settings = runtime.settings
    reveals = runtime.contract.revealed(settings.run_id, round_id, from_block=opened_block)

    def fetch(reveal: dict[str, Any]) -> dict[str, np.ndarray] | str:
        try:
            blob = runtime.store.get(cid_from_bytes(reveal["cid"]))
            return decode_arrays(blob, max_bytes=settings.max_blob_bytes, expected=runtime.spec)
        except (StoreError, BlobFormatError) as exc:
            return str(exc)

    # Hashing and decoding release the GIL: a store that allows it is read on all cores.
    workers = max(1, min(len(reveals), getattr(runtime.store, "read_concurrency", 1)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        fetched = list(pool.map(fetch, reveals))
    updates, rejected = [], {}
    for reveal, arrays in zip(reveals, fetched, strict=True):
        if isinstance(arrays, str):
            rejected[reveal["participant"]] = arrays
        else:
            updates.append(RevealedUpdate(reveal["participant"], reveal["numExamples"], arrays))
    return updates, rejected


def _exclusions(rejected: dict[str, str]) -> dict[str, list[str]]:
    """The excluded reveals as two parallel lists (a ConfigRecord holds no mappings)."""
    return {"excluded": list(rejected), "excluded-reasons": list(rejected.values())}


def _finalized_reply(message: Message, runtime: ClientRuntime, result_cid: str, rejected: dict[str, str]) -> Message:
    """Reply of an attester that found the round already finalized by the quorum."""
    final = cid_from_bytes(bytes(runtime.contract.get_run(runtime.settings.run_id)["modelCid"]))
    state = "agreed" if final == result_cid else "disagreed"
    return _reply(message, status={"state": state, "address": runtime.account.address, "cid": result_cid,
                                   **_exclusions(rejected)})  # fmt: skip


def _late_reply(message: Message, runtime: ClientRuntime) -> Message:
    """Reply of a committee member asked after the quorum had finalized the round: there
    is nothing left to attest (`deai verify` replays the round for anyone who wants to)."""
    return _reply(message, status={"state": "late", "address": runtime.account.address})


def handle_attest(settings: RunSettings, message: Message, context: Context) -> Message:
    """Aggregate the round's revealed updates independently and attest the result's CID."""
    round_id = int(message.content[CONFIG]["round"])
    runtime = client_runtime(settings, int(context.node_config["partition-id"]))
    contract = runtime.contract
    if contract.phase(settings.run_id, round_id) == "finalized":
        return _late_reply(message, runtime)
    try:
        opened_block = int(contract.get_round(settings.run_id, round_id)["openedBlock"])
    except ContractRevertError:
        # finalized since (its finalization opened the next round), or not current at all
        if contract.phase(settings.run_id, round_id) == "finalized":
            return _late_reply(message, runtime)
        raise
    updates, rejected = revealed_updates(runtime, round_id, opened_block)
    for participant, reason in rejected.items():
        log(WARNING, "round %s: excluded update of %s: %s", round_id, participant, reason)
    if not updates:
        raise ProtocolError(f"round {round_id}: no valid revealed update to aggregate")
    aggregated = aggregate(settings.rule, updates, dict(settings.rule_params))
    result_cid = runtime.store.put(encode_arrays(aggregated))
    try:
        tx = contract.attest(settings.run_id, round_id, cid_to_bytes(result_cid))
    except ChainError:
        # Other attesters may have reached the quorum while this one aggregated (the
        # eth_call check refuses the attestation before anything is sent).
        if contract.phase(settings.run_id, round_id) != "finalized":
            raise
        return _finalized_reply(message, runtime, result_cid, rejected)
    return _reply(
        message,
        status={"state": "attested", "address": runtime.account.address, "cid": result_cid, **_exclusions(rejected)},
        metrics={"gas": tx.gas_used, "excluded": len(rejected)},
    )


def handle_identity(settings: RunSettings, message: Message, context: Context) -> Message:
    """Tell the coordinator which chain address this node signs with."""
    runtime = client_runtime(settings, int(context.node_config["partition-id"]))
    return _reply(message, status={"address": runtime.account.address})


def build_client_app(settings: RunSettings) -> ClientApp:
    """The participants' ClientApp for a run."""
    app = ClientApp()

    def bound(handler: Callable[[RunSettings, Message, Context], Message]) -> Callable[[Message, Context], Message]:
        def serve(message: Message, context: Context) -> Message:
            return handler(settings, message, context)

        return serve

    app.query("identity")(bound(handle_identity))
    app.train("commit")(bound(handle_commit))
    app.train("reveal")(bound(handle_reveal))
    app.train("attest")(bound(handle_attest))
    return app

"""A participant's handlers: identity, train + commit, reveal, attest (or all three on one
message), evaluate.

Each handler acts on chain with the participant's own key and talks to the coordinator
only to be told *when* to act. Nothing the coordinator sends is trusted for content:
the run is built from the spec the chain records (:mod:`.run_view`), the global model is
fetched by the CID the chain records and checked against it, and attesters read the
revealed set from chain events, not from the coordinator.

Durable per-node state (the privacy ledger, the pending reveal) lives in Flower's
``context.state``, which follows the node whichever worker serves it; the ledger is
also written to the participant's ledger directory, so it survives a restart. A
deployed node's pending reveal is also written there for its reveal guard
(:mod:`.reveal_guard`), which reveals on its own when no relayer published it in time.
"""

from __future__ import annotations

import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from logging import DEBUG, INFO, WARNING
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from eth_utils import keccak
from flwr.app import ConfigRecord, Context, Message
from flwr.common import log

from ..chain import DpParams, commitment_of
from ..chain.phases import await_phase_end
from ..protocol.encoding import STAGES, from_wad, reveal_record
from ..errors import (
    ChainError,
    ConfigError,
    ContractRevertError,
    PrivacyBudgetExhaustedError,
    ProtocolError,
    StoreError,
)
from ..messages import (
    CONFIG,
    AttestReply,
    AttestRequest,
    CommitReply,
    CommitRequest,
    EvaluateReply,
    EvaluateRequest,
    Exclusion,
    ReplyState,
    RevealReply,
    RevealRequest,
    RoundReply,
    RoundRequest,
    TrainingMetrics,
    reply_message,
)
from ..models import evaluate, set_arrays
from ..privacy import PrivacyLedger, ledger_path, load_ledger, reconcile_with_chain, save_ledger, train_round
from ..protocol.judgment import RevealClaims, judge_reveal
from ..protocol.outcome import Refusal, RoundOutcome, round_outcome
from ..protocol.rules import RevealedUpdate
from ..recovery import fetch_result
from ..storage import cid_from_bytes, cid_to_bytes, compute_cid, encode_arrays
from .locator import RunLocator
from .participant import Participant
from .reveal_guard import GuardOutcome, PendingReveal, guard_in_thread, spawn_guard
from .run_view import RunView, run_view
from .public_history import previous_global_cid
from .scoring import validation_losses_of
from .shared_outcome import shared_outcome

__all__ = ["handle_attest", "handle_commit", "handle_evaluate", "handle_reveal", "handle_round", "revealed_updates"]

_R = TypeVar("_R", CommitRequest, RevealRequest, AttestRequest, RoundRequest, EvaluateRequest)

_LEDGER = "privacy-ledger"
_PENDING = "pending-reveal"


def _request_and_view(participant: Participant, message: Message, request_type: type[_R]) -> tuple[_R, RunView]:
    """The coordinator's request (``request_type``) and the run it is about.

    Raises:
        ProtocolError: the message does not name its run, or a request field is missing
            or malformed.
    """
    config = message.content[CONFIG]
    locator = RunLocator.from_config(config)
    return request_type.from_record(config), run_view(participant, locator.contract, locator.run_id)


def _salt(view: RunView, round_id: int) -> bytes:
    """The round's secret salt: unpredictable to others, reproducible for a fixed key."""
    secret = view.account.key
    return keccak(secret + view.contract.address.encode() + view.run_id.to_bytes(32, "big")
                  + round_id.to_bytes(32, "big"))  # fmt: skip


def _ledger_file(view: RunView) -> tuple[Path | None, dict[str, object]]:
    """The participant's ledger file for this run (None without a ledger directory) and its owner."""
    identity = {"participant": view.account.address, "chain_id": view.contract.node.chain_id,
                "contract": view.contract.address, "run_id": view.run_id}  # fmt: skip
    ledger_dir = view.participant.ledger_dir
    return (None if ledger_dir is None else ledger_path(ledger_dir, **identity)), identity  # type: ignore[arg-type]


def _load_ledger(view: RunView, context: Context) -> PrivacyLedger:
    """The privacy ledger from ``context.state`` or, after a restart, from the ledger file,
    charged with what this participant released (called before it trains a round).

    When both exist the one with more rounds wins: never account for less than was spent.
    In a private run the ledger is then reconciled with the chain
    (:func:`~deai_flower.privacy.reconcile_with_chain`: updates trained but never
    revealed rolled back, revealed ones it lacks added), in ``context.state`` and in the
    ledger file, and the round about to be trained is charged as unconfirmed.
    """
    in_memory = PrivacyLedger.from_record(dict(context.state[_LEDGER])) if _LEDGER in context.state else None
    path, identity = _ledger_file(view)
    on_disk = None if path is None else load_ledger(path, identity=identity)
    candidates = [ledger for ledger in (in_memory, on_disk) if ledger is not None]
    ledger = max(candidates, key=lambda ledger: len(ledger.history)) if candidates else PrivacyLedger()
    if not view.spec.private:
        return ledger  # every round spends an infinite ε: nothing to reconcile
    contract, address = view.contract, view.account.address
    current = int(contract.get_run(view.run_id)["currentRound"])
    result = reconcile_with_chain(
        ledger, current_round=current, released=_revealed_histories(view, current).get(address, []),
        reveals_in=lambda round_id: sum(1 for r in contract.final_reveals(view.run_id, round_id)
                                        if r["participant"] == address),
        block_hash=lambda number: _block_hash(view, number))  # fmt: skip
    if result.dropped or result.added:
        pending = context.state[_PENDING] if _PENDING in context.state else None
        lapsed = int(pending["round"]) if pending is not None and int(pending["round"]) < current else None
        settings = view.privacy_settings()
        log(WARNING, "participant %s: privacy ledger reconciled with the chain: %s", view.participant.label,
            ", ".join(part for part in (
                f"{result.dropped} update(s) trained but never revealed rolled back"
                + (f" (round {lapsed} lapsed before its reveal)" if lapsed is not None else "")
                if result.dropped else "",
                f"{result.added} revealed round(s) missing from the ledger added" if result.added else "",
                f"ε spent now {result.ledger.epsilon(settings.delta, settings.accountant):.6f}") if part))  # fmt: skip
    if result.changed:
        _save_ledger(view, context, result.ledger)
    opened = int(contract.get_round(view.run_id, current)["openedBlock"])
    result.ledger.charging(round_id=current, block=opened, block_hash=_block_hash(view, opened))
    return result.ledger


def _block_hash(view: RunView, number: int) -> str:
    """The hash of block ``number`` of the participant's chain ('' when it has none)."""
    try:
        block = view.contract.node.w3.eth.get_block(int(number))
    except Exception:  # noqa: BLE001 - a block this chain lacks (another chain's ledger)
        return ""
    return bytes(block["hash"]).hex() if block is not None else ""


def _save_ledger(view: RunView, context: Context, ledger: PrivacyLedger) -> None:
    """Store ``ledger`` in ``context.state`` and the ledger file; the entries a training
    just added are recorded as unconfirmed until their round's reveal is seen."""
    ledger.mark_charged()
    context.state[_LEDGER] = ConfigRecord(ledger.to_record())
    path, identity = _ledger_file(view)
    if path is not None:
        save_ledger(path, ledger, settings=view.privacy_settings(), identity=identity)


def _confirm_release(view: RunView, context: Context, round_id: int) -> None:
    """Keep round ``round_id``'s charge for good: its update is about to be published, and
    a published update is released whether or not the reveal transaction then lands."""
    if _LEDGER not in context.state:
        return
    result = PrivacyLedger.from_record(dict(context.state[_LEDGER])).confirmed_round(round_id)
    if result.settled:
        _save_ledger(view, context, result.ledger)


_BOUNDS: dict[int, tuple[weakref.ref[RunView], int]] = {}
_BOUNDS_LOCK = threading.Lock()


def _example_bound(view: RunView) -> int:
    """The most examples this participant's reveals may claim (its registered
    ``maxExamples``), read from chain once per run view."""
    with _BOUNDS_LOCK:
        cached = _BOUNDS.get(id(view))
    if cached is not None and cached[0]() is view:
        return cached[1]
    bound = int(view.contract.registry_entry(view.account.address)["maxExamples"])
    with _BOUNDS_LOCK:
        for key in [k for k, (ref, _) in _BOUNDS.items() if ref() is None]:
            del _BOUNDS[key]
        _BOUNDS[id(view)] = (weakref.ref(view), bound)
    return bound


def _ensure_stake(view: RunView) -> int:
    """Top this participant's stake in the run up to what the spec requires before it
    commits; return the gas spent. A run without stake costs nothing. (A penalty still
    pending is settled by the commit itself: :func:`_commit` tops up again if that leaves
    the stake short.)

    Raises:
        ChainError: the deposit failed (e.g. the account cannot pay it).
    """
    incentives = view.spec.incentives
    if incentives.stake == 0:
        return 0
    contract, address = view.contract, view.account.address
    gas = 0
    held = int(contract.get_account(view.run_id, address)["stake"])
    if held >= incentives.stake:
        return gas
    missing = incentives.stake - held
    if incentives.stake_token:
        gas += contract.approve_token(incentives.stake_token, missing).gas_used
    tx = contract.deposit(view.run_id, missing, native=not incentives.stake_token)
    log(INFO, "participant %s staked %s in run %s", view.participant.label, missing, view.run_id)
    return gas + tx.gas_used


def _settling_may_slash(view: RunView) -> bool:
    """Whether this participant's commit, which settles its previous round first, could find
    its stake short: only in a staked run, and only after a round it committed to without
    revealing or voted in (a missing reveal, a minority vote: the only penalties a
    settlement applies). Otherwise the call that would show it is skipped: at 100 clients
    those calls, each a commit run on the EVM, were seconds of every commit phase."""
    if view.spec.incentives.stake == 0:
        return False
    stage = STAGES[int(view.contract.get_member(view.run_id, view.account.address)["stage"])]
    return stage in ("committed", "attested")


def _global_model(view: RunView, model_cid: str) -> dict[str, np.ndarray]:
    """The chain's global model from the store, rebuilt from its round's reveals when the
    store has lost it (:func:`~deai_flower.recovery.fetch_result`)."""
    arrays, rebuilt = fetch_result(view.contract, view.run_id, model_cid, spec=view.spec, store=view.store,
                                   expected=view.array_spec)  # fmt: skip
    if rebuilt is not None:
        log(WARNING, "participant %s: %s", view.participant.label, rebuilt.describe())
    return arrays


def handle_commit(participant: Participant, message: Message, context: Context) -> Message:
    """Fetch the chain's global model, train with DP-SGD under the spec's settings,
    commit to the update's hash; with ``relay`` in the message's config, sign the
    commitment (or the decline) for the coordinator's ``commitMany`` instead, guarded: a
    commitment not on chain by the commit fallback point is sent by the node itself."""
    request, view = _request_and_view(participant, message, CommitRequest)
    relay = request.relay and participant.relay  # a silo may refuse any relayer
    committed = _commit(participant, view, context, request.round, request.model_cid, relay=relay)
    if committed.state in (ReplyState.COMMITTED, ReplyState.HANDED):
        _guard_reveal(view, context, request.round, commitment=committed.commitment)
    return reply_message(message, committed)


def _guard_reveal(view: RunView, context: Context, round_id: int, *, commitment: bytes = b"") -> None:
    """Make sure the reveal just committed to lands even if the coordinator withholds
    the hand-over or never asks for it (:mod:`.reveal_guard`): a detached process for a
    deployed silo, whose ClientApp process ends with this reply; a thread otherwise."""
    held = context.state[_PENDING]
    pending = PendingReveal(chain_id=view.contract.node.chain_id, contract=view.contract.address,
                            run_id=view.run_id, round=round_id, participant=view.account.address,
                            cid=str(held["cid"]), num_examples=int(held["num-examples"]),
                            dp=DpParams(*(int(v) for v in held["dp"])), salt=bytes(held["salt"]),
                            blob=bytes(held["blob"]), commitment=commitment)  # fmt: skip
    label, ledger_dir = view.participant.label, view.participant.ledger_dir
    if "keystore" in context.node_config and ledger_dir is not None:
        try:
            spawn_guard(pending, context.node_config, ledger_dir)
            return
        except ConfigError as exc:  # the commit stands: guard it for as long as this process lives
            log(WARNING, "participant %s: %s; guarding the reveal in this process", label, exc)

    def report(outcome: GuardOutcome) -> None:
        level = WARNING if outcome.revealed_itself or outcome.failed else DEBUG
        log(level, "participant %s: reveal guard: %s", label, outcome)

    guard_in_thread(view.contract, view.store, pending, report)


def _terms_refusal(participant: Participant, view: RunView) -> str | None:
    """Why this silo's own terms (its node config) refuse the run, or None: the run is
    judged by what the chain records, never by what the coordinator says it is."""
    if participant.terms is None:  # a simulation's participant serves its own experiment
        return None
    params = view.contract.run_params(view.run_id) or {}
    return participant.terms.check(contract=view.contract.address, run_id=view.run_id, spec=view.spec,
                                   spec_digest=view.spec_digest, params=params)  # fmt: skip


def _signed_decline(view: RunView, round_id: int) -> bytes:
    """This silo's signed decline of ``round_id``, for whoever relays it (``commitMany``
    with a zero commitment): signed, never sent by the silo, so that a sampled silo whose
    terms refuse the run does not hold the round's commit phase to its deadline on a
    chain whose clock nobody moves (protocol §2.3).

    It costs the silo nothing and cannot be replayed: the signed digest
    (``_signedDigest``; :meth:`~deai_flower.chain.RoundsContract.sign_commit`) is
    ``keccak256(abi.encode(COMMIT_TAG, chainId, contract, runId, round, 0))``, which the
    chain rebuilds from its own ``block.chainid`` and ``address(this)``, so it is good
    in this contract, on this chain, for this run's round only, and only as a decline
    (the tag keeps it apart from a vote; no record hashes to a zero commitment). A
    decline stakes nothing, is never penalized, and settles nothing this silo owes
    (it never committed in a run its terms refuse).

    Also when the refusal is that the contract is not the one the silo pinned: the
    signature is then usable only in that unpinned contract, as that round's decline,
    and the silo holds nothing there to lose (no stake, no approval, no reveal), so
    whatever that contract's code makes of it touches nothing of the silo's; it only
    tells that contract's coordinator, truthfully, that the silo does not serve it.
    """
    return view.contract.sign_commit(view.run_id, round_id, None)


def _decline(participant: Participant, view: RunView, round_id: int, reason: str, *, relay: bool) -> CommitReply:
    """Decline a round this node was sampled for, on chain (protocol §2.3), so that the
    commit phase stops waiting for it: signed for the relaying coordinator's
    ``commitMany``, or by its own transaction (a chain that refuses it, say the node is
    not sampled, changes nothing: the decline is reported either way)."""
    if relay:
        return CommitReply(ReplyState.DECLINED, participant.address, reason=reason,
                           signature=_signed_decline(view, round_id))
    try:
        view.contract.decline(view.run_id, round_id)
    except ChainError as exc:
        log(WARNING, "participant %s: declining round %s on chain failed: %s", participant.label, round_id, exc)
    return CommitReply(ReplyState.DECLINED, participant.address, reason=reason)


def _commit(participant: Participant, view: RunView, context: Context, round_id: int, announced_cid: str, *,
            relay: bool = False) -> CommitReply:  # fmt: skip
    """The commit step: train on the chain's global model (which the coordinator must
    have announced as ``announced_cid``) and commit to the update (relayed: sign it for
    the coordinator), or decline."""
    contract, spec = view.contract, view.spec
    started = time.perf_counter()

    refusal = _terms_refusal(participant, view)
    if refusal is not None:  # before anything is fetched, staked or trained
        log(WARNING, "participant %s refuses run %s: %s", participant.label, view.run_id, refusal)
        return CommitReply(ReplyState.DECLINED, participant.address, reason=refusal, terms=True,
                           signature=_signed_decline(view, round_id))  # fmt: skip

    model_cid = cid_from_bytes(bytes(contract.get_run(view.run_id)["modelCid"]))
    if announced_cid != model_cid:
        raise ProtocolError(f"coordinator announced model {announced_cid} but the chain records {model_cid}")
    global_arrays = _global_model(view, model_cid)
    set_arrays(view.model, global_arrays)

    bound = _example_bound(view)
    if len(view.data.y) > bound:
        # The contract would refuse the reveal (ExampleCountAboveBound) and penalize the
        # commitment as never revealed: better not to commit at all.
        reason = (f"its {len(view.data.y)} training examples exceed the {bound} it is registered with "
                  "(the contract refuses a reveal above the bound)")  # fmt: skip
        log(WARNING, "participant %s declines round %s: %s", participant.label, round_id, reason)
        return _decline(participant, view, round_id, reason, relay=relay)
    stake_gas = _ensure_stake(view)
    ledger = _load_ledger(view, context)
    try:
        # a simulated adversary may train otherwise (simulation/adversaries.py)
        train = getattr(participant.behaviour, "train_round", None) or train_round
        trained = train(
            model=view.model,
            x=view.data.x,
            y=view.data.y,
            settings=view.privacy_settings(),
            ledger=ledger,
            planned_rounds=spec.rounds.num_rounds,
            local_epochs=spec.training.local_epochs,
            batch_size=spec.training.batch_size,
            learning_rate=spec.training.learning_rate,
            seed=participant.round_seed(round_id),
            device=view.device,
            num_threads=participant.num_threads,
        )
    except PrivacyBudgetExhaustedError as exc:
        log(INFO, "participant %s declines round %s: %s", participant.label, round_id, exc)
        return _decline(participant, view, round_id, str(exc), relay=relay)
    _save_ledger(view, context, ledger)
    train_seconds = time.perf_counter() - started

    update = trained.arrays
    if participant.behaviour is not None:  # a simulated adversary
        update = participant.behaviour.poison(global_arrays, update)
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
    salt = _salt(view, round_id)
    commitment = commitment_of(
        chain_id=contract.node.chain_id,
        contract=contract.address,
        run_id=view.run_id,
        round_id=round_id,
        participant=participant.address,
        cid=cid_to_bytes(cid),
        num_examples=trained.num_examples,
        dp=dp,
        salt=salt,
    )
    try:
        # relayed: signed for the coordinator's commitMany (the reveal guard sends it if the
        # coordinator does not in time), once a call of its own commit shows the item would land
        if relay:
            # skipped in the commit phase when no settlement can slash (most commits): a late
            # or unsampled node still learns here that its item would not land
            check = contract.phase(view.run_id, round_id) != "commit" or _settling_may_slash(view)
            refusal = contract.commit_refusal_now(view.run_id, round_id, commitment) if check else None
            if refusal is not None:
                raise refusal
            tx = None
        else:
            tx = contract.commit(view.run_id, round_id, commitment)
    except ContractRevertError as exc:
        if exc.error_name != "InsufficientStake":
            raise
        # A penalty of an earlier round (a missing reveal, a minority vote) was pending: the
        # commit settles it first and then finds the stake short. Settle it on its own, top
        # the stake up again and commit (rare: most rounds leave nothing to settle, and a
        # settle of its own would cost every commit a transaction).
        stake_gas += contract.settle(view.run_id, participant.address).gas_used + _ensure_stake(view)
        tx = None if relay else contract.commit(view.run_id, round_id, commitment)
    if _PENDING in context.state:  # a round abandoned before its reveal
        view.store.discard(str(context.state[_PENDING].get("staged", "")))
    # Published only at the reveal; staging writes it meanwhile, out of sight (after the
    # transaction, so that the write overlaps what comes next rather than the send).
    staged = view.store.stage(blob, cid=cid)
    context.state[_PENDING] = ConfigRecord(
        {
            "round": round_id,
            "contract": contract.address,
            "run-id": view.run_id,
            "cid": cid,
            "blob": blob,  # to put at the reveal if the staged copy is gone (a restart)
            "staged": staged,
            "num-examples": trained.num_examples,
            "dp": [str(v) for v in dp.as_tuple()],
            "salt": salt,
        }
    )
    training = TrainingMetrics(num_examples=trained.num_examples, epsilon=trained.epsilon,
                               noise_multiplier=trained.noise_multiplier, sample_rate=trained.sample_rate,
                               steps=trained.steps, train_loss=trained.train_loss, train_seconds=train_seconds)  # fmt: skip
    if tx is None:
        return CommitReply(ReplyState.HANDED, participant.address, cid=cid, training=training, gas=stake_gas,
                           commitment=commitment, signature=contract.sign_commit(view.run_id, round_id, commitment))  # fmt: skip
    return CommitReply(ReplyState.COMMITTED, participant.address, cid=cid, training=training,
                       gas=tx.gas_used + stake_gas)  # fmt: skip


def handle_reveal(participant: Participant, message: Message, context: Context) -> Message:
    """Upload the committed blob and reveal its preimage on chain; with ``relay`` in the
    message's config, hand the reveal record to the coordinator instead, which publishes
    every participant's in one ``revealMany`` (the record reproduces this participant's
    commitment, so the relayer can publish nothing else in its name)."""
    request, view = _request_and_view(participant, message, RevealRequest)
    relay = request.relay and participant.relay  # a silo may refuse any relayer
    return reply_message(message, _reveal(participant, view, context, request.round, relay=relay))


def _reveal(participant: Participant, view: RunView, context: Context, round_id: int, *,
            relay: bool = False) -> RevealReply:  # fmt: skip
    """The reveal step: publish the committed blob and reveal it (relayed: hand the record over)."""
    pending = context.state[_PENDING] if _PENDING in context.state else None
    if (pending is None or int(pending["round"]) != round_id
            or str(pending.get("contract", view.contract.address)) != view.contract.address
            or int(pending.get("run-id", view.run_id)) != view.run_id):  # fmt: skip
        raise ProtocolError(f"nothing committed for round {round_id} of run {view.run_id}")
    stored_cid, staged = str(pending["cid"]), str(pending.get("staged", ""))
    _confirm_release(view, context, round_id)
    try:
        published = view.store.publish(staged, cid=stored_cid)
    except StoreError as exc:  # the background write failed: the bytes are still here
        log(WARNING, "participant %s: staged copy unusable (%s); storing the update again", participant.label, exc)
        published = False
    if not published:
        stored_cid = view.store.put(bytes(pending["blob"]), cid=stored_cid)  # hashed at commit
        view.store.discard(staged)
    if stored_cid != pending["cid"]:
        raise StoreError(f"store returned CID {stored_cid}, committed {pending['cid']}")
    dp = DpParams(*(int(v) for v in pending["dp"]))
    fields = {"cid": cid_to_bytes(stored_cid), "num_examples": int(pending["num-examples"]), "dp": dp,
              "salt": bytes(pending["salt"])}  # fmt: skip
    if relay:  # kept: the reveal guard, not this hand-over, makes sure it lands
        return RevealReply(ReplyState.HANDED, participant.address, record=reveal_record(**fields))
    tx = view.contract.reveal(view.run_id, round_id, **fields)
    del context.state[_PENDING]
    return RevealReply(ReplyState.REVEALED, participant.address, gas=tx.gas_used)


def revealed_updates(
    view: RunView, round_id: int, opened_block: int
) -> tuple[list[RevealedUpdate], dict[str, Refusal]]:
    """The round's valid reveals, read from chain events (from the round's opening
    block on) and fetched from the store.

    Each reveal is judged by :func:`~deai_flower.protocol.judgment.judge_reveal`, as
    ``deai verify`` judges it: every honest attester excludes the same ones, with the
    reason, but for availability, which a revealer may grant some attesters and not others
    (an attester missing a blob abstains, protocol §4.2).
    """
    # asked in the attest phase: the round's reveals are final (read once per connection)
    reveals = view.contract.final_reveals(view.run_id, round_id, from_block=opened_block)
    histories = _revealed_histories(view, round_id) if view.spec.private else {}

    def judge(reveal: dict[str, Any]) -> RevealedUpdate | Refusal:
        claims = RevealClaims(reveal["participant"], cid_from_bytes(reveal["cid"]), int(reveal["numExamples"]),
                              _dp_of(reveal))  # fmt: skip
        return judge_reveal(view.spec, claims, history=histories.get(claims.participant, []),
                            read=view.store.get, expected=view.array_spec)  # fmt: skip

    # Hashing and decoding release the GIL: a store that allows it is read on all cores.
    workers = max(1, min(len(reveals), getattr(view.store, "read_concurrency", 1)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        judged = list(pool.map(judge, reveals))
    updates = [verdict for verdict in judged if isinstance(verdict, RevealedUpdate)]
    rejected = {reveal["participant"]: verdict for reveal, verdict in zip(reveals, judged, strict=True)
                if isinstance(verdict, Refusal)}  # fmt: skip
    return updates, rejected


def _dp_of(reveal: dict[str, Any]) -> DpParams:
    d = reveal["dp"]
    return DpParams(d["noiseMultiplierWad"], d["sampleRateWad"], d["steps"], d["deltaWad"], d["epsilonWad"],
                    d["accountant"])  # fmt: skip


def _revealed_histories(view: RunView, round_id: int) -> dict[str, list[tuple[float, float, int]]]:
    """Each participant's revealed (σ, q, steps) in the rounds of this run before ``round_id``,
    read from the chain's ``Revealed`` events (a past round's are final: read once per
    chain connection, whoever asks)."""
    histories: dict[str, list[tuple[float, float, int]]] = {}
    for r in range(1, round_id):
        for reveal in view.contract.final_reveals(view.run_id, r):
            dp = _dp_of(reveal)
            histories.setdefault(reveal["participant"], []).append(
                (from_wad(dp.noise_multiplier_wad), from_wad(dp.sample_rate_wad), dp.steps))
    return histories


def _exclusions(rejected: dict[str, Refusal]) -> tuple[Exclusion, ...]:
    """The excluded reveals, as an attester's reply names them."""
    return tuple(Exclusion(participant, refusal.verdict, refusal.reason) for participant, refusal in rejected.items())


def _finalized(view: RunView, result_cid: str, rejected: dict[str, Refusal]) -> AttestReply:
    """Outcome of an attester that found the round already finalized by the quorum."""
    final = cid_from_bytes(bytes(view.contract.get_run(view.run_id)["modelCid"]))
    state = ReplyState.AGREED if final == result_cid else ReplyState.DISAGREED
    return AttestReply(state, view.account.address, cid=result_cid, excluded=_exclusions(rejected))


def _abstained(view: RunView, round_id: int, rejected: dict[str, Refusal]) -> AttestReply:
    """Outcome of an attester that could not fetch every revealed blob: it casts no vote
    (protocol §2.5). Its revealer may have served others, whose pair then differs from
    the one this attester would vote only by availability, and a losing vote is slashed:
    a blob withheld can make a round fail, never get an honest attester slashed."""
    missing = sorted(address for address, refusal in rejected.items() if refusal.verdict == "unavailable")
    log(WARNING, "round %s: abstained: the blobs of %s are unavailable", round_id, ", ".join(missing))
    return AttestReply(ReplyState.ABSTAINED, view.account.address, excluded=_exclusions(rejected))


def _late(view: RunView) -> AttestReply:
    """Outcome of a committee member asked after the quorum had finalized the round: there
    is nothing left to attest (`deai verify` replays the round for anyone who wants to)."""
    return AttestReply(ReplyState.LATE, view.account.address)


def handle_attest(participant: Participant, message: Message, context: Context) -> Message:
    """Aggregate the round's revealed updates with the spec's rule and attest the result's
    CID; with ``relay`` in the message's config, sign the vote instead (state ``signed``,
    with the CID, the outcome and the signature) for the coordinator to cast with the
    others' in one ``attestMany``: the signature counts for this pair in this round only."""
    request, view = _request_and_view(participant, message, AttestRequest)
    relay = request.relay and participant.relay  # a silo may refuse any relayer
    return reply_message(message, _attest(participant, view, request.round, relay=relay))


def _attest(participant: Participant, view: RunView, round_id: int, *, relay: bool = False) -> AttestReply:
    """The attest step: aggregate the revealed set and attest (relayed: sign) the result."""
    contract = view.contract
    phase = contract.phase(view.run_id, round_id)
    if phase == "finalized":
        return _late(view)
    if phase != "attest":  # reveals may still come (or the round failed): nothing final to aggregate
        raise ProtocolError(f"asked to attest round {round_id} in its {phase} phase")
    try:
        opened_block = int(contract.get_round(view.run_id, round_id)["openedBlock"])
    except ContractRevertError:
        # finalized since (its finalization opened the next round), or not current at all
        if contract.phase(view.run_id, round_id) == "finalized":
            return _late(view)
        raise
    updates, rejected = revealed_updates(view, round_id, opened_block)
    for address, reason in rejected.items():
        log(WARNING, "round %s: excluded update of %s: %s", round_id, address, reason)
    if any(refusal.verdict == "unavailable" for refusal in rejected.values()):
        return _abstained(view, round_id, rejected)
    if not updates:
        raise ProtocolError(f"round {round_id}: no valid revealed update to aggregate")
    global_arrays = _global_model(view, cid_from_bytes(bytes(contract.get_run(view.run_id)["modelCid"])))
    # shares: the model before the round's, whose public step is removed before scoring
    previous_cid = previous_global_cid(view, round_id) if view.spec.incentives.score == "shares" else None
    previous = _global_model(view, previous_cid) if previous_cid is not None else None
    losses = validation_losses_of(view)

    def compute() -> RoundOutcome:
        return round_outcome(view.spec, updates, rejected, global_arrays=global_arrays, validation_losses=losses,
                             previous_global=previous)  # fmt: skip

    # attesters sharing a process (a simulation) compute an outcome of the same inputs once
    voted = compute() if losses is not None else \
        shared_outcome(view.spec_digest, updates, rejected, global_arrays, previous, compute)  # fmt: skip
    result_cid, outcome = view.store.put(voted.result), voted.outcome
    if relay:
        signature = contract.sign_vote(view.run_id, round_id, cid_to_bytes(result_cid), outcome)
        return AttestReply(ReplyState.SIGNED, participant.address, cid=result_cid, outcome=outcome,
                           signature=signature, excluded=_exclusions(rejected))  # fmt: skip
    try:
        tx = contract.attest(view.run_id, round_id, cid_to_bytes(result_cid), outcome)
    except ChainError:
        # Other attesters may have reached the quorum while this one aggregated (the chain
        # refuses the attestation with its reason: a call before sending, or, on the
        # embedded chain, the reverted transaction explained).
        if contract.phase(view.run_id, round_id) != "finalized":
            raise
        return _finalized(view, result_cid, rejected)
    return AttestReply(ReplyState.ATTESTED, participant.address, cid=result_cid, excluded=_exclusions(rejected),
                       gas=tx.gas_used)  # fmt: skip


def handle_round(participant: Participant, message: Message, context: Context) -> Message:
    """Play a whole round on one message: train and commit; once the commit phase is over,
    reveal; once the reveal phase is over, aggregate and attest (a committee member).

    What a deployment's coordinator sends (``train.round``): every sampled node runs its
    message at the same time, so the chain's phases, not further messages, pace the
    steps, and a round costs each node one ClientApp start instead of three. The steps
    are the ones :func:`handle_commit`, :func:`handle_reveal` and :func:`handle_attest`
    take. The reply's ``state`` is the last step's (``declined``, ``committed`` when the
    round closed before a reveal, ``revealed`` outside the committee, or an attester's
    state), ``update-cid`` the committed update's CID, and each step's gas is
    ``commit-gas``, ``reveal-gas``, ``attest-gas``.
    """
    request, view = _request_and_view(participant, message, RoundRequest)
    round_id = request.round
    committed = _commit(participant, view, context, round_id, request.model_cid)
    if committed.state is not ReplyState.COMMITTED:
        return reply_message(message, RoundReply(commit=committed))
    phase = _await_phase_end(view, round_id, "commit")
    if phase != "reveal":
        return reply_message(message, RoundReply(commit=committed, phase=phase))
    # asked while the round is in its reveal phase: inCommittee refuses a finalized round
    attests = view.contract.in_committee(view.run_id, round_id, participant.address)
    revealed = _reveal(participant, view, context, round_id)
    phase = _await_phase_end(view, round_id, "reveal")
    attested = _attest(participant, view, round_id) if attests and phase in ("attest", "finalized") else None
    return reply_message(message, RoundReply(commit=committed, reveal=revealed, attest=attested, phase=phase))


#: How often a node playing a whole round asks the chain whether a phase has ended.
_PHASE_POLL_S = 0.2


def _await_phase_end(view: RunView, round_id: int, phase: str) -> str:
    """Wait until the round leaves ``phase`` (every sampled node committed, every committer
    revealed, or the phase's deadline passed); return the phase it is in then."""
    rounds = view.spec.rounds
    return await_phase_end(view.contract, view.run_id, round_id, phase, watch_s=_PHASE_POLL_S,
                           timeout=float(rounds.commit_s + rounds.reveal_s + rounds.attest_s))  # fmt: skip


def handle_evaluate(participant: Participant, message: Message, context: Context) -> Message:
    """Score a finalized model on this silo's own held-out data.

    The model is the one the chain records now (the coordinator announces its CID, which
    must agree), fetched from the silo's own store and checked against the CID and the
    spec's array layout. A silo without held-out data says so and scores nothing.
    """
    request, view = _request_and_view(participant, message, EvaluateRequest)
    model_cid = cid_from_bytes(bytes(view.contract.get_run(view.run_id)["modelCid"]))
    if request.model_cid != model_cid:
        raise ProtocolError(f"coordinator asked to evaluate model {request.model_cid} but the chain records "
                            f"{model_cid}")  # fmt: skip
    data = view.data
    if data.x_eval is None or data.y_eval is None or len(data.y_eval) == 0:
        return reply_message(message, EvaluateReply(ReplyState.NO_EVAL_DATA, participant.address))
    set_arrays(view.model, _global_model(view, model_cid))
    loss, accuracy = evaluate(view.model, data.x_eval, data.y_eval, device=view.device)
    log(INFO, "participant %s: round %s model scores accuracy %.4f on %s held-out examples", participant.label,
        request.round, accuracy, len(data.y_eval))  # fmt: skip
    return reply_message(message, EvaluateReply(ReplyState.EVALUATED, participant.address, model_cid=model_cid,
                                                loss=loss, accuracy=accuracy, num_examples=int(len(data.y_eval))))

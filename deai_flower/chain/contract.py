"""The round contract seen from Python: deploy, send signed calls, read state and events.

A deployment is ``CommitRevealRounds`` and the ``RoundsExtension`` whose code it runs
through its fallback (the registry, incentives and views: the functions no round needs),
called at the rounds contract's address; the handle knows both parts' ABIs.

Each participant (and the coordinator) holds its own :class:`RoundsContract` bound to
its own key; transactions are signed locally and sent raw, so the same code works on
the embedded chain and on any JSON-RPC node. Reverts are decoded from the ABI's custom
errors into :class:`~deai_flower.errors.ContractRevertError` with a readable message.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode, encode
from eth_abi.exceptions import DecodingError
from eth_account import Account
from eth_account.messages import SignableMessage, encode_defunct
from eth_account.signers.local import LocalAccount
from eth_keys.exceptions import BadSignature
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from eth_utils.exceptions import ValidationError
from hexbytes import HexBytes
from web3 import Web3

from ..errors import ChainError, ContractRevertError
from .artifact import EXTENSION_NAME, load_artifact, rounds_abi
from .node import ChainNode, JsonRpcError
from ..protocol.encoding import (
    COMMIT_TAG,
    NO_EXAMPLE_BOUND,
    PHASES,
    STAGES,
    ZERO_ADDRESS,
    DpParams,
    parse_reveal_record,
    reveal_record,
    vote_key,
    vote_message,
)
from ..protocol.outcome import OUTCOME_ENTRY_BYTES


#: Seconds to wait for a transaction receipt before giving up.
RECEIPT_TIMEOUT_S = 120.0
#: Gas limit of other calls = estimate + a quarter + this: the state can change between
#: the estimate and inclusion (another party's transaction lands first).
GAS_HEADROOM = 60_000
#: Gas limits of the calls every round makes, sent without eth_estimateGas: their cost is
#: O(1) by the contract's design (docs/protocol.md §2.9); a test keeps the dearest path of
#: each (a first commit that evaluates the sampling permutation and settles a penalty, a
#: first reveal, an attestation that finalizes a disputed round and opens the next) under
#: 2/3 of its limit. A fixed limit also covers what an estimate cannot foresee: attesters
#: sending at once, one checked as a plain attestation that lands as the finalizing one.
#: An eth_call first still refuses a call that would revert, with its reason, before
#: anything is paid.
ROUND_CALL_GAS = {"commit": 200_000, "reveal": 150_000, "attest": 200_000}
#: Added to the attestation's limit per revealer: the finalizing attestation settles the
#: round's outcome (a ledger read, a credit or a slash and an event per revealer).
ATTEST_GAS_PER_REVEALER = 45_000
#: Added to a relayed batch's limit per reveal (``revealMany``) and per signed vote
#: (``attestMany``): each is one participant's checks, two slot writes and an event.
RELAYED_GAS_PER_REVEAL = 40_000
RELAYED_GAS_PER_VOTE = 30_000
#: Added to a ``commitMany``'s limit per signed commitment: a signature recovery, the
#: commit's own checks (a permutation where the sample is partial, a settlement) and writes.
RELAYED_GAS_PER_COMMIT = 110_000
#: Gas limit of a native-currency ``deposit`` (about 57k through the extension's fallback):
#: sent without an estimate, since every sampled participant of a staked run deposits
#: before its first commit and the estimate's EVM runs made most of that commit phase.
DEPOSIT_GAS = 100_000


@dataclass(frozen=True)
class TxResult:
    """A mined transaction: its hash, gas used and (on first use) its decoded events."""

    tx_hash: str
    gas_used: int
    block_number: int
    logs: tuple[Any, ...] = field(default=(), repr=False)
    decoder: Callable[[list[Any]], list[dict[str, Any]]] | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def events(self) -> list[dict[str, Any]]:
        """The transaction's events, decoded when first asked for: most callers only need
        to know it was mined, and web3's event decoding costs a millisecond or more."""
        return self.decoder(list(self.logs)) if self.decoder is not None else []


def _abi_type(param: dict[str, Any]) -> str:
    """Canonical ABI type string of a parameter (tuples expanded)."""
    t = param["type"]
    if t.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param["components"])
        return f"({inner}){t[len('tuple'):]}"
    return t


@dataclass(frozen=True)
class _FunctionSpec:
    """What a call needs from the ABI: selector, argument types and outputs."""

    selector: bytes
    input_types: list[str]
    outputs: list[dict[str, Any]]
    output_types: list[str]

    def calldata(self, args: tuple[Any, ...]) -> bytes:
        return self.selector + encode(self.input_types, args)


def _function_table(abi: list[dict[str, Any]]) -> dict[str, _FunctionSpec]:
    """Functions by name; an overloaded name also by ``name/arity`` (the name alone then
    means its form with the most arguments)."""
    table: dict[str, _FunctionSpec] = {}
    for entry in abi:
        if entry["type"] == "function":
            types = [_abi_type(p) for p in entry["inputs"]]
            selector = function_signature_to_4byte_selector(f"{entry['name']}({','.join(types)})")
            outputs = entry["outputs"]
            spec = _FunctionSpec(selector, types, outputs, [_abi_type(p) for p in outputs])
            table[f"{entry['name']}/{len(types)}"] = spec
            known = table.get(entry["name"])
            if known is None or len(known.input_types) < len(types):
                table[entry["name"]] = spec
    return table


def _checksummed(value: Any, param: dict[str, Any]) -> Any:
    """``value`` decoded by eth_abi with its addresses checksummed, as web3 returns them."""
    t = param["type"]
    if t.endswith("[]"):
        inner = {**param, "type": t[:-2]}
        return [_checksummed(v, inner) for v in value]
    if t == "tuple":
        return tuple(_checksummed(v, c) for v, c in zip(value, param["components"], strict=True))
    return to_checksum_address(value) if t == "address" else value


def _error_table(abi: list[dict[str, Any]]) -> dict[bytes, tuple[str, list[str], list[str]]]:
    table = {}
    for entry in abi:
        if entry["type"] != "error":
            continue
        types = [_abi_type(p) for p in entry["inputs"]]
        signature = f"{entry['name']}({','.join(types)})"
        table[function_signature_to_4byte_selector(signature)] = (
            entry["name"],
            [p["name"] for p in entry["inputs"]],
            types,
        )
    return table


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def describe_revert(error_name: str, names: list[str], values: tuple[Any, ...]) -> str:
    """Readable line for a custom error, e.g. ``NotSampled(runId=1, round=2, ...)``."""
    rendered = []
    for name, value in zip(names, values, strict=True):
        if name in ("current", "expected") and isinstance(value, int) and value < len(PHASES):
            value = PHASES[value]
        elif name == "stage" and isinstance(value, int) and value < len(STAGES):
            value = STAGES[value]
        rendered.append(f"{name}={_jsonable(value)}")
    return f"{error_name}({', '.join(rendered)})"


class RoundsContract:
    """A handle on a deployed ``CommitRevealRounds`` (with its extension's functions),
    signing with one account."""

    def __init__(self, node: ChainNode, address: str, account: LocalAccount) -> None:
        abi = rounds_abi()
        self.node = node
        self.w3: Web3 = node.w3
        self.address = to_checksum_address(address)
        self.account = account
        self.contract = self.w3.eth.contract(address=self.address, abi=abi)
        self._errors = _error_table(abi)
        self._functions = _function_table(abi)
        self._nonce: int | None = None
        self._lock = threading.Lock()
        self._chain_id = node.chain_id
        self._events_by_topic: dict[bytes, Any] | None = None
        #: (from_block, events read, next block to read) of the last event_log call
        self._event_cache: tuple[int, list[dict[str, Any]], int] | None = None

    # ------------------------------------------------------------------ deployment

    @classmethod
    def deploy(
        cls, node: ChainNode, account: LocalAccount, *, extension: str | None = None
    ) -> tuple[RoundsContract, TxResult]:
        """Deploy the committed rounds contract with ``account`` as admin, running the
        ``RoundsExtension`` at ``extension`` (without one, a new one is deployed first).
        The result is the rounds contract's deployment (the extension's:
        :meth:`deploy_extension`)."""
        if extension is None:
            extension, _ = cls.deploy_extension(node, account)
        deployer = cls(node, ZERO_ADDRESS, account)  # a handle to sign with; no contract yet
        receipt = deployer._send(_creation_code(load_artifact(), ["address"], [extension]), to=None, label="deploy")
        contract = cls(node, receipt["contractAddress"], account)
        return contract, contract._tx_result(receipt)

    @classmethod
    def deploy_extension(cls, node: ChainNode, account: LocalAccount) -> tuple[str, TxResult]:
        """Deploy a ``RoundsExtension``: its address and deployment. It holds no state, so
        any number of rounds contracts may run one (:meth:`deploy`)."""
        deployer = cls(node, ZERO_ADDRESS, account)  # a handle to sign with
        receipt = deployer._send(_creation_code(load_artifact(EXTENSION_NAME), [], []), to=None,
                                 label="deploy the extension")  # fmt: skip
        return to_checksum_address(receipt["contractAddress"]), deployer._tx_result(receipt)

    def as_account(self, account: LocalAccount) -> RoundsContract:
        """The same contract, signing with another key."""
        return RoundsContract(self.node, self.address, account)

    # ------------------------------------------------------------------ transactions

    def _decode_revert(self, exc: JsonRpcError, label: str) -> ContractRevertError:
        """Decode a revert's custom error from a node's error answer."""
        data: Any = exc.data
        if isinstance(data, dict):  # some nodes nest it
            data = data.get("data")
        if isinstance(data, str) and data.startswith("0x"):
            raw = bytes.fromhex(data[2:])
            entry = self._errors.get(raw[:4]) if len(raw) >= 4 else None
            if entry is not None:
                name, names, types = entry
                values = decode(types, raw[4:])
                line = describe_revert(name, names, values)
                return ContractRevertError(f"{label} reverted: {line}", error_name=name, args=tuple(values))
        return ContractRevertError(f"{label} reverted: {exc.rpc_message}")

    def _send(
        self, data: bytes, *, to: str | None, label: str, gas: int | None = None, value: int = 0
    ) -> dict[str, Any]:
        """Sign and send a transaction with ``data``; return its receipt (wire form).

        The call is tried first (``eth_estimateGas``, or ``eth_call`` when ``gas`` is
        given), so one that would revert is refused with its decoded reason before
        anything is sent or paid. On the embedded chain, where a reverted transaction
        costs only development ether, a call with its ``gas`` given is sent untried (the
        EVM runs it once, not twice: a relayed batch of a hundred commitments is seconds
        of py-evm) and a revert is explained afterwards by the same call on the state it
        ran on: the same decoded error either way.
        """
        node, sender = self.node, self.account.address
        recipient = {"to": to} if to else {}  # none: a contract creation
        tried = gas is None or not node.reverts_cost_nothing
        with self._lock:
            for attempt in range(2):
                try:
                    if self._nonce is None:
                        self._nonce = int(node.request("eth_getTransactionCount", [sender, "pending"]), 16)
                    call = {"from": sender, "data": "0x" + data.hex(), "value": hex(value), **recipient}
                    if gas is None:
                        estimate = int(node.request("eth_estimateGas", [call]), 16)
                        limit = estimate + estimate // 4 + GAS_HEADROOM
                    else:
                        if tried:
                            node.request("eth_call", [{**call, "gas": hex(gas)}, "latest"])
                        limit = gas
                    signed = self.account.sign_transaction({
                        **recipient, "data": data, "value": value, "nonce": self._nonce,
                        "gas": limit, "chainId": self._chain_id, **node.fee_fields(),
                    })  # fmt: skip
                    receipt = node.send_raw_transaction(signed.raw_transaction, timeout=RECEIPT_TIMEOUT_S)
                    self._nonce += 1
                    break
                except JsonRpcError as exc:
                    self._nonce = None
                    # Another handle on this key (another run, another process) sent
                    # transactions since this one counted: re-read the nonce once.
                    if attempt == 0 and "nonce" in exc.rpc_message.lower():
                        continue
                    if exc.is_revert:
                        raise self._decode_revert(exc, label) from exc
                    raise ChainError(f"{label} failed: {exc}") from exc
                except ChainError as exc:  # unreachable, or no receipt in time
                    self._nonce = None
                    raise ChainError(f"{label} failed: {exc}") from exc
        if int(receipt["status"], 16) != 1:
            used = int(receipt["gasUsed"], 16)
            if not tried and used < limit:
                self._explain_revert(call, limit, receipt, label)
            why = f"out of gas at its limit of {limit}" if used >= limit else f"after {used} gas"
            raise ChainError(f"{label} reverted on chain, {why} (tx {receipt['transactionHash']})")
        return receipt

    def _explain_revert(self, call: dict[str, Any], limit: int, receipt: dict[str, Any], label: str) -> None:
        """Raise the decoded reason a transaction sent untried reverted with: the same call
        on the state of the block before its own (the embedded chain mines one
        transaction a block). Returns when the call no longer reverts there."""
        before = hex(int(receipt["blockNumber"], 16) - 1)
        try:
            self.node.request("eth_call", [{**call, "gas": hex(limit)}, before])
        except JsonRpcError as exc:
            if exc.is_revert:
                raise self._decode_revert(exc, label) from exc

    def _tx_result(self, receipt: dict[str, Any]) -> TxResult:
        return TxResult(
            tx_hash=receipt["transactionHash"][2:],
            gas_used=int(receipt["gasUsed"], 16),
            block_number=int(receipt["blockNumber"], 16),
            logs=tuple(receipt["logs"]),
            decoder=self._decode_logs,
        )

    def _transact(self, fn_name: str, *args: Any, value: int = 0, gas: int | None = None) -> TxResult:
        data = self._functions[fn_name].calldata(args)
        limit = gas if gas is not None else ROUND_CALL_GAS.get(fn_name)
        if limit is not None:  # allowances per item grow with a round; no block holds more than its limit
            limit = min(limit, self.node.block_gas_limit())
        return self._tx_result(self._send(data, to=self.address, label=fn_name, gas=limit, value=value))

    def register(self, participant: str, identity: bytes, max_examples: int | None = None) -> TxResult:
        """Register ``participant``; its reveals may claim at most ``max_examples`` examples
        (``None``: no bound)."""
        bound = NO_EXAMPLE_BOUND if max_examples is None else int(max_examples)
        return self._transact("register", to_checksum_address(participant), identity, bound)

    def register_many(
        self, participants: list[str], identities: list[bytes], max_examples: list[int | None] | None = None
    ) -> TxResult:
        """Register several participants in one transaction (``registerMany``)."""
        bounds = [NO_EXAMPLE_BOUND if b is None else int(b) for b in (max_examples or [None] * len(participants))]
        return self._transact("registerMany", [to_checksum_address(p) for p in participants], list(identities),
                              bounds)  # fmt: skip

    def transfer_admin(self, new_admin: str) -> TxResult:
        """Offer the admin role to ``new_admin`` (it takes effect when that key accepts)."""
        return self._transact("transferAdmin", to_checksum_address(new_admin))

    def accept_admin(self) -> TxResult:
        """Take the admin role offered to this account."""
        return self._transact("acceptAdmin")

    def revoke(self, participant: str) -> TxResult:
        return self._transact("revoke", to_checksum_address(participant))

    def create_run(self, params: dict[str, Any]) -> tuple[int, TxResult]:
        """Create a run; ``params`` maps ``RunParams`` field names to values. Left out:
        ``committeeSize`` 0 (every revealer may attest) and no incentives (no stake, an
        empty pool, nothing slashed). A native-currency pool is sent with the call; a
        token pool must be approved to the contract first. ``attesterShareBps`` left out
        is 0: the whole budget is paid by score."""
        order = [
            "specHash", "codeHash", "initialModelCid", "epsilonBudgetWad", "deltaWad", "numRounds",
            "commitDuration", "revealDuration", "attestDuration", "sampleBps", "quorum", "minReveals",
            "committeeSize", "stakeToken", "stake", "rewardPool", "slashMissingReveal", "slashRefused",
            "slashMinority", "attesterShareBps",
        ]  # fmt: skip
        defaults = {"committeeSize": 0, "stakeToken": ZERO_ADDRESS, "stake": 0, "rewardPool": 0,
                    "slashMissingReveal": 0, "slashRefused": 0, "slashMinority": 0,
                    "attesterShareBps": 0}  # fmt: skip
        values = {**defaults, **params}
        native = int(values["stakeToken"], 16) == 0
        result = self._transact("createRun", tuple(values[k] for k in order),
                                value=int(values["rewardPool"]) if native else 0)  # fmt: skip
        (created,) = [e for e in result.events if e["event"] == "RunCreated"]
        return int(created["args"]["runId"]), result

    def open_round(self, run_id: int) -> tuple[int, TxResult]:
        result = self._transact("openRound", run_id)
        (opened,) = [e for e in result.events if e["event"] == "RoundOpened"]
        return int(opened["args"]["round"]), result

    def commit(self, run_id: int, round_id: int, commitment: bytes) -> TxResult:
        return self._transact("commit", run_id, round_id, commitment)

    def decline(self, run_id: int, round_id: int) -> TxResult:
        """Decline the open round (protocol §2.3): the commit phase no longer waits for
        this sampled participant, which cannot commit in the round afterwards."""
        return self._transact("decline", run_id, round_id)

    def sign_commit(self, run_id: int, round_id: int, commitment: bytes | None) -> bytes:
        """This account's 65-byte signature of its commitment (``None``: of its decline),
        for a relayer to record with :meth:`commit_many`."""
        key = bytes(32) if commitment is None else bytes(commitment)
        return bytes(self.account.sign_message(self._signed_message(run_id, round_id, key, COMMIT_TAG)).signature)

    def commit_signer(self, run_id: int, round_id: int, commitment: bytes, signature: bytes) -> str | None:
        """The address that signed this commitment (zero bytes: a decline), as the chain
        recovers it; None: not a signature."""
        return self._signer(self._signed_message(run_id, round_id, bytes(commitment), COMMIT_TAG), signature)

    def commit_many(self, run_id: int, round_id: int, signed: dict[str, tuple[bytes, bytes]]) -> TxResult:
        """Record several participants' signed commitments in one transaction
        (``commitMany``): participant address -> (commitment, signature); a zero
        commitment is a decline. Anyone may send it; a participant that has committed or
        declined in the round already is skipped."""
        participants = [to_checksum_address(a) for a in signed]
        commitments = [bytes(c) for c, _ in signed.values()]
        return self._transact("commitMany", run_id, round_id, participants, commitments,
                              b"".join(bytes(s) for _, s in signed.values()),
                              gas=ROUND_CALL_GAS["commit"] + RELAYED_GAS_PER_COMMIT * len(participants))  # fmt: skip

    def commit_refusal(
        self, run_id: int, round_id: int, participant: str, commitment: bytes, signature: bytes
    ) -> ContractRevertError | None:
        """Why the chain would refuse this one signed commitment now (``commitMany``,
        called, not sent), or None."""
        return self._refusal("commitMany", run_id, round_id, [to_checksum_address(participant)], [bytes(commitment)],
                             bytes(signature))  # fmt: skip

    def reveal(
        self, run_id: int, round_id: int, *, cid: bytes, num_examples: int, dp: DpParams, salt: bytes
    ) -> TxResult:
        record = reveal_record(cid=cid, num_examples=num_examples, dp=dp, salt=salt)
        return self._transact("reveal", run_id, round_id, record)

    def reveal_many(self, run_id: int, round_id: int, records: dict[str, bytes]) -> TxResult:
        """Publish several participants' reveal records (participant address -> 145-byte
        record) in one transaction (``revealMany``); anyone may send it, and a participant
        that has revealed already is skipped."""
        revealers = [to_checksum_address(a) for a in records]
        return self._transact("revealMany", run_id, round_id, revealers, b"".join(records.values()),
                              gas=ROUND_CALL_GAS["reveal"] + RELAYED_GAS_PER_REVEAL * len(revealers))  # fmt: skip

    def reveal_refusal(self, run_id: int, round_id: int, participant: str, record: bytes) -> ContractRevertError | None:
        """Why the chain would refuse ``participant``'s reveal of ``record`` now (``revealMany``
        with it alone, called, not sent), or None: how a relayer finds the record that
        made a batch revert."""
        return self._refusal("revealMany", run_id, round_id, [to_checksum_address(participant)], bytes(record))

    def vote_refusal(
        self, run_id: int, round_id: int, result_cid: bytes, outcome: bytes, signature: bytes
    ) -> ContractRevertError | None:
        """Why the chain would refuse one signed vote now (``attestMany``, called, not
        sent), or None."""
        return self._refusal("attestMany", run_id, round_id, result_cid, outcome, bytes(signature))

    def commit_refusal_now(self, run_id: int, round_id: int, commitment: bytes) -> ContractRevertError | None:
        """Why the chain would refuse this account's own ``commit`` now (called, not sent),
        or None: a pending slash that a commit settles first may leave the stake short."""
        return self._refusal("commit", run_id, round_id, bytes(commitment), sender=True)

    def _refusal(self, fn_name: str, *args: Any, sender: bool = False) -> ContractRevertError | None:
        try:
            self._call(fn_name, *args, sender=sender)
        except ContractRevertError as exc:
            return exc
        return None

    def sign_vote(self, run_id: int, round_id: int, result_cid: bytes, outcome: bytes) -> bytes:
        """This account's 65-byte signature of its vote for (``result_cid``, ``outcome``),
        for a relayer to cast with :meth:`attest_many`."""
        message = self._signed_message(run_id, round_id, vote_key(result_cid, outcome))
        return bytes(self.account.sign_message(message).signature)

    def vote_signer(
        self, run_id: int, round_id: int, result_cid: bytes, outcome: bytes, signature: bytes
    ) -> str | None:
        """The address that signed this vote (None: not a signature), as the chain recovers it."""
        return self._signer(self._signed_message(run_id, round_id, vote_key(result_cid, outcome)), signature)

    @staticmethod
    def _signer(message: SignableMessage, signature: bytes) -> str | None:
        try:
            return str(Account.recover_message(message, signature=bytes(signature)))
        except (ValueError, TypeError, BadSignature, ValidationError):
            return None

    def _signed_message(self, run_id: int, round_id: int, key: bytes, tag: bytes | None = None) -> SignableMessage:
        """The EIP-191 message of a vote (protocol §2.5) or, with ``COMMIT_TAG``, of a
        commitment (§2.3) on this contract."""
        extra = {} if tag is None else {"tag": tag}
        return encode_defunct(primitive=vote_message(chain_id=self.node.chain_id, contract=self.address, run_id=run_id,
                                                     round_id=round_id, key=key, **extra))  # fmt: skip

    def attest_many(
        self, run_id: int, round_id: int, result_cid: bytes, outcome: bytes, signatures: list[bytes]
    ) -> TxResult:
        """Cast the signed votes of several attesters for one (result CID, outcome) pair in
        one transaction (``attestMany``; see :meth:`sign_vote`)."""
        revealers = len(outcome) // OUTCOME_ENTRY_BYTES
        return self._transact("attestMany", run_id, round_id, result_cid, outcome, b"".join(signatures),
                              gas=ROUND_CALL_GAS["attest"] + ATTEST_GAS_PER_REVEALER * revealers
                              + RELAYED_GAS_PER_VOTE * len(signatures))  # fmt: skip

    def attest(self, run_id: int, round_id: int, result_cid: bytes, outcome: bytes) -> TxResult:
        """Attest the round's result CID together with its outcome (scores and verdicts,
        see :mod:`deai_flower.protocol.outcome`)."""
        revealers = len(outcome) // OUTCOME_ENTRY_BYTES
        return self._transact("attest", run_id, round_id, result_cid, outcome,
                              gas=ROUND_CALL_GAS["attest"] + ATTEST_GAS_PER_REVEALER * revealers)  # fmt: skip

    def deposit(self, run_id: int, amount: int, *, native: bool = True) -> TxResult:
        """Add ``amount`` to this account's stake in ``run_id`` (a token stake must be
        approved to the contract first)."""
        if native:
            return self._transact("deposit", run_id, int(amount), value=int(amount), gas=DEPOSIT_GAS)
        return self._transact("deposit", run_id, int(amount))  # a token's transferFrom: estimated

    def approve_token(self, token: str, amount: int) -> TxResult:
        """Let this contract pull ``amount`` of the ERC-20 ``token`` from this account
        (``approve``), as a token stake or pool needs."""
        data = function_signature_to_4byte_selector("approve(address,uint256)") + encode(
            ["address", "uint256"], [self.address, int(amount)])  # fmt: skip
        return self._tx_result(self._send(data, to=to_checksum_address(token), label="approve"))

    def withdraw_stake(self, run_id: int) -> TxResult:
        return self._transact("withdrawStake", run_id)

    def withdraw_rewards(self, run_id: int) -> TxResult:
        return self._transact("withdrawRewards", run_id)

    def withdraw_pool(self, run_id: int) -> TxResult:
        return self._transact("withdrawPool", run_id)

    def cancel_run(self, run_id: int) -> TxResult:
        """Cancel a run whose last three attempts failed (``cancelRun``, protocol §2.8):
        no round opens again and the creator may withdraw the pool."""
        return self._transact("cancelRun", run_id)

    def settle(self, run_id: int, participant: str) -> TxResult:
        return self._transact("settle", run_id, to_checksum_address(participant))

    # ------------------------------------------------------------------ views

    def _call(self, fn_name: str, *args: Any, sender: bool = False) -> Any:
        spec = self._functions[fn_name]
        call = {"to": self.address, "data": "0x" + spec.calldata(args).hex()}
        if sender:  # as this account would send it
            call["from"] = self.account.address
        try:
            answer = self.node.request("eth_call", [call, "latest"])
            raw = bytes.fromhex(answer.removeprefix("0x"))
            values = [_checksummed(v, p) for v, p in zip(decode(spec.output_types, raw), spec.outputs, strict=True)]
            return values[0] if len(values) == 1 else tuple(values)
        except JsonRpcError as exc:
            if exc.is_revert:
                raise self._decode_revert(exc, fn_name) from exc
            raise ChainError(f"{fn_name} call failed: {exc}") from exc
        except DecodingError as exc:
            raise ChainError(f"{fn_name}: the answer from {self.address} is not a CommitRevealRounds answer "
                             f"(no such contract at that address?): {exc}") from exc  # fmt: skip

    def phase(self, run_id: int, round_id: int) -> str:
        return PHASES[self._call("phase", run_id, round_id)]

    def get_run(self, run_id: int) -> dict[str, Any]:
        return self._struct("getRun", run_id)

    def get_round(self, run_id: int, round_id: int) -> dict[str, Any]:
        return self._struct("getRound", run_id, round_id)

    def get_incentives(self, run_id: int) -> dict[str, Any]:
        """The run's token (zero address: native), stake, pool now and slashing amounts."""
        return self._struct("getIncentives", run_id)

    def get_account(self, run_id: int, participant: str) -> dict[str, Any]:
        """A participant's ``stake`` and unwithdrawn ``rewards`` in ``run_id``."""
        return self._struct("getAccount", run_id, to_checksum_address(participant))

    def balance(self, address: str | None = None) -> int:
        """Native balance of ``address`` (this account's by default), in wei."""
        return int(self.node.request("eth_getBalance", [to_checksum_address(address or self.account.address),
                                                        "latest"]), 16)  # fmt: skip

    def get_member(self, run_id: int, participant: str) -> dict[str, Any]:
        return self._struct("getMember", run_id, to_checksum_address(participant))

    def is_sampled(self, run_id: int, round_id: int, participant: str) -> bool:
        return bool(self._call("isSampled", run_id, round_id, to_checksum_address(participant)))

    def in_committee(self, run_id: int, round_id: int, participant: str) -> bool:
        """Whether ``participant`` is sampled in the current round and may attest once revealed."""
        return bool(self._call("inCommittee", run_id, round_id, to_checksum_address(participant)))

    def permuted_position(self, beacon: bytes, index: int, registry_size: int) -> int:
        """The contract's ``permutedPosition`` (the sampling permutation, for cross-checks)."""
        return int(self._call("permutedPosition", beacon, index, registry_size))

    def registry(self) -> tuple[int, int]:
        """The registry's size and epoch."""
        size, epoch = self._call("registry")
        return int(size), int(epoch)

    def registry_entry(self, participant: str) -> dict[str, Any]:
        """``active``, ``index``, ``epoch`` (when the index was assigned) and ``maxExamples``."""
        active, index, epoch, bound = self._call("registryEntry", to_checksum_address(participant))
        return {"active": bool(active), "index": int(index), "epoch": int(epoch), "maxExamples": int(bound)}

    def members(self) -> list[str]:
        """The registered participants' addresses, in registry order."""
        return [to_checksum_address(a) for a in self._call("members")]

    def admin(self) -> str:
        """The consortium admin, who registers participants and creates runs."""
        return str(self._call("admin"))

    def pending_admin(self) -> str:
        """The address a transfer of the admin role awaits (the zero address: none)."""
        return str(self._call("pendingAdmin"))

    def participant_info(self, participant: str) -> tuple[bool, bytes]:
        active, identity = self._call("participantInfo", to_checksum_address(participant))
        return bool(active), bytes(identity)

    def commitment_of(
        self, run_id: int, round_id: int, participant: str, *, cid: bytes, num_examples: int, dp: DpParams, salt: bytes
    ) -> bytes:
        record = reveal_record(cid=cid, num_examples=num_examples, dp=dp, salt=salt)
        return bytes(self._call("commitmentOf", run_id, round_id, to_checksum_address(participant), record))

    def beacon_of(self, run_id: int, round_id: int, model_cid: bytes) -> bytes:
        return bytes(self._call("beaconOf", run_id, round_id, model_cid[4:36]))

    def _struct(self, fn_name: str, *args: Any) -> dict[str, Any]:
        values = self._call(fn_name, *args)
        names = [c["name"] for c in self._functions[fn_name].outputs[0]["components"]]
        return dict(zip(names, values, strict=True))

    # ------------------------------------------------------------------ events

    def _decode_logs(self, logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """This contract's events among ``logs`` (wire form), decoded by web3's event ABI."""
        if self._events_by_topic is None:
            self._events_by_topic = {
                bytes(Web3.keccak(text=event.signature)): event for event in self.contract.events
            }
        decoded = []
        for log in map(_log_entry, logs):
            topics = log["topics"]
            event = self._events_by_topic.get(bytes(topics[0])) if topics else None
            if event is None:  # not one of this contract's events
                continue
            rich = event().process_log(log)
            decoded.append(
                {
                    "event": rich["event"],
                    "block": int(rich["blockNumber"]),
                    "tx": rich["transactionHash"].hex(),
                    "log_index": int(rich["logIndex"]),
                    "args": _expand_record(rich["event"], dict(rich["args"])),
                }
            )
        return decoded

    def _logs(self, what: str, *, from_block: int, topics: list[str | None] | None = None,
              to_block: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
        # the address as a list: the embedded chain's filter formatter only takes that form
        query: dict[str, Any] = {"address": [self.address], "fromBlock": hex(from_block),
                                 "toBlock": "latest" if to_block is None else hex(to_block)}  # fmt: skip
        if topics is not None:
            query["topics"] = topics
        try:
            return self.node.request("eth_getLogs", [query])
        except ChainError as exc:
            raise ChainError(f"reading {what} failed: {exc}") from exc

    def _run_events(self, event: str, what: str, run_id: int, round_id: int | None = None, *,
                    from_block: int = 0) -> list[dict[str, Any]]:  # fmt: skip
        """The args of this contract's ``event`` events of ``run_id`` (and of ``round_id``,
        for events that index it second), in chain order."""
        signature = "0x" + Web3.keccak(text=getattr(self.contract.events, event).signature).hex().removeprefix("0x")
        topics = [signature, "0x" + encode(["uint256"], [run_id]).hex()]
        if round_id is not None:
            topics.append("0x" + encode(["uint32"], [round_id]).hex())
        logs = self._logs(what, from_block=from_block, topics=topics)
        return [e["args"] for e in self._decode_logs(logs)]

    def revealed(self, run_id: int, round_id: int, *, from_block: int) -> list[dict[str, Any]]:
        """The ``Revealed`` events of one round, their records decoded (see :func:`_expand_record`)."""
        return self._run_events("Revealed", f"round {round_id}'s reveals", run_id, round_id, from_block=from_block)

    def attestations(self, run_id: int, round_id: int, *, from_block: int = 0) -> list[dict[str, Any]]:
        """The ``Attested`` events of one round (``attester``, ``resultCid``, ``outcome``)."""
        return self._run_events("Attested", f"round {round_id}'s attestations", run_id, round_id,
                                from_block=from_block)  # fmt: skip

    def finalized_rounds(self, run_id: int, *, from_block: int = 0) -> list[dict[str, Any]]:
        """The ``RoundFinalized`` events of a run (``round``, ``resultCid``), in chain order."""
        return self._run_events("RoundFinalized", f"run {run_id}'s finalized rounds", run_id, from_block=from_block)

    def run_params(self, run_id: int) -> dict[str, Any] | None:
        """The ``RunParams`` ``run_id`` was created with (its ``RunCreated`` event), or None.

        ``getRun`` leaves out what the contract never reads again (``specHash``,
        ``codeHash``, ``initialModelCid``); the event keeps all of it.
        """
        key = ("RunCreated", self.address, run_id)
        if key in self.node.final_answers:
            return dict(self.node.final_answers[key])
        events = self._run_events("RunCreated", f"run {run_id}'s creation", run_id)
        if not events:
            return None
        params = dict(events[0]["params"])
        self.node.final_answers[key] = params
        return dict(params)

    def final_reveals(self, run_id: int, round_id: int, *, from_block: int = 0) -> list[dict[str, Any]]:
        """The ``Revealed`` events of a round whose reveal phase the caller knows is over
        (attesting, finalized or failed: no reveal can be added), read once per connection."""
        key = ("Revealed", self.address, run_id, round_id)
        if key not in self.node.final_answers:
            self.node.final_answers[key] = self.revealed(run_id, round_id, from_block=from_block)
        return list(self.node.final_answers[key])

    def event_log(self, *, from_block: int = 0, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Every event the contract emitted from ``from_block`` on, decoded, in chain
        order, JSON-ready (the extension's code emits at the contract's address too).
        Asked again (a coordinator writing results after every round), this handle reads
        only the blocks mined since: the others' events are kept."""
        start = time.monotonic()
        head = int(self.node.request("eth_blockNumber", []), 16)
        known_from, known, next_block = self._event_cache if self._event_cache else (from_block, [], from_block)
        if known_from != from_block:
            known, next_block = [], from_block
        if next_block <= head:
            logs = self._logs("the contract's events", from_block=next_block, to_block=head)
            known = known + [{**e, "args": {k: _jsonable(_plain(v)) for k, v in e["args"].items()}}
                             for e in self._decode_logs(logs)]  # fmt: skip
            next_block = head + 1
        if time.monotonic() - start > timeout:
            raise ChainError("reading the contract's events timed out")
        self._event_cache = (from_block, known, next_block)
        return list(known)


def _creation_code(artifact: dict[str, Any], types: list[str], args: list[Any]) -> bytes:
    """An artifact's creation bytecode followed by its ABI-encoded constructor arguments."""
    return bytes.fromhex(artifact["bytecode"].removeprefix("0x")) + encode(types, args)


def _log_entry(wire: dict[str, Any]) -> dict[str, Any]:
    """A log in wire form (0x-hex) as web3's event decoding takes it."""
    return {
        "address": to_checksum_address(wire["address"]),
        "topics": [HexBytes(t) for t in wire["topics"]],
        "data": HexBytes(wire["data"]),
        "blockNumber": int(wire["blockNumber"], 16),
        "blockHash": HexBytes(wire["blockHash"]),
        "transactionHash": HexBytes(wire["transactionHash"]),
        "transactionIndex": int(wire["transactionIndex"], 16),
        "logIndex": int(wire["logIndex"], 16),
    }


def _expand_record(event: str, args: dict[str, Any]) -> dict[str, Any]:
    """A ``Revealed`` event's packed record, also as named fields: ``cid``, ``numExamples``,
    ``dp`` (the DP fields by their contract names) and ``salt``. The contract checked the
    record's length, so every logged record parses."""
    if event != "Revealed":
        return args
    parsed = parse_reveal_record(bytes(args["record"]))
    dp = parsed.dp
    return {
        **args,
        "cid": parsed.cid,
        "numExamples": parsed.num_examples,
        "dp": {
            "noiseMultiplierWad": dp.noise_multiplier_wad,
            "sampleRateWad": dp.sample_rate_wad,
            "steps": dp.steps,
            "deltaWad": dp.delta_wad,
            "epsilonWad": dp.epsilon_wad,
            "accountant": dp.accountant,
        },
        "salt": parsed.salt,
    }


def _plain(value: Any) -> Any:
    """AttributeDict/tuples from web3 event decoding to plain containers."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

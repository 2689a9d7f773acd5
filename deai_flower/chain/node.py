"""Connections to an EVM: the embedded in-process chain or any JSON-RPC node.

Both give a :class:`ChainNode` with the same interface; only funding of fresh keys
and fast-forwarding the clock differ (a simulation may skip time, a real node waits).
"""

from __future__ import annotations

import ast
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from requests.exceptions import ConnectionError as RequestsConnectionError
from web3 import Web3
from web3.exceptions import Web3Exception
from web3.providers.rpc.utils import ExceptionRetryConfiguration

from ..errors import ChainError, ChainUnavailableError

if TYPE_CHECKING:
    from .embedded import LogIndex

#: Ether given to each simulated participant key on development chains.
DEV_FUNDING_WEI = 10**20
#: Seconds a fee quote serves transactions before it is read again.
FEE_QUOTE_TTL_S = 6.0
#: JSON-RPC error codes meaning "this node does not offer that method".
_NO_SUCH_METHOD = (-32601, -32600)
#: EIP-7966: the node sent the transaction but its receipt was not ready in time.
_SYNC_SEND_TIMEOUT = 4


class JsonRpcError(ChainError):
    """A node's JSON-RPC error answer; ``data`` holds a failed call's revert data."""

    def __init__(self, method: str, error: Mapping[str, Any]) -> None:
        self.code = error.get("code")
        self.data = error.get("data")
        self.rpc_message = str(error.get("message", ""))
        super().__init__(f"{method}: {self.rpc_message} (code {self.code})")

    @property
    def is_revert(self) -> bool:
        """Whether the EVM reverted the call (rather than the node refusing the request)."""
        return self.data is not None or "revert" in self.rpc_message.lower()


def to_wire(value: Any) -> Any:
    """A web3/eth-tester result in JSON-RPC wire form: bytes and ints as 0x-hex."""
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, Mapping):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    return value


def tester_revert_data(message: Any) -> bytes | None:
    """The revert data inside eth-tester's ``TransactionFailed`` (it carries a bytes repr)."""
    if isinstance(message, bytes):
        return message
    prefix = "execution reverted: "
    if isinstance(message, str) and message.startswith(prefix + "b"):
        try:
            value = ast.literal_eval(message[len(prefix) :])
        except (ValueError, SyntaxError):
            return None
        return value if isinstance(value, bytes) else None
    return None


def embedded_error(exc: Exception) -> dict[str, Any]:
    """The JSON-RPC error object a node would answer for an exception of the embedded chain."""
    response = getattr(exc, "rpc_response", None)  # web3 relays a JSON-RPC error (an unknown method, ...)
    if isinstance(response, Mapping) and isinstance(response.get("error"), Mapping):
        return dict(response["error"])
    data = getattr(exc, "data", None)
    if data is None and exc.args:
        raw = tester_revert_data(exc.args[0])
        data = "0x" + raw.hex() if raw is not None else None
    return {"code": 3, "message": str(getattr(exc, "message", None) or exc), "data": data}


@dataclass
class ChainNode:
    """A connected chain: ``kind`` is ``embedded`` or ``rpc``."""

    w3: Web3
    kind: str
    url: str
    _tester: Any = field(default=None, repr=False)
    _chain_id: int | None = field(default=None, repr=False)
    _fee_quote: tuple[float, dict[str, int]] | None = field(default=None, repr=False)
    #: whether the node answers eth_sendRawTransactionSync (None: not tried yet)
    _sync_send: bool | None = field(default=None, repr=False)
    _embedded_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: the embedded chain's log index (see :mod:`.embedded`)
    _log_index: LogIndex | None = field(default=None, repr=False)
    #: Answers that can never change (a run's creation event, a closed round's reveals),
    #: shared by every handle on this connection: a hundred participants asking the same
    #: question would cost a hundred log queries (over JSON-RPC, a hundred round trips).
    final_answers: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)
    #: the embedded chain's answers to ``eth_call`` at its head (see :class:`_HeadAnswers`)
    _head_answers: _HeadAnswers = field(default_factory=lambda: _HeadAnswers(), repr=False)
    #: the latest block's gas limit when first asked (see :meth:`block_gas_limit`)
    _block_gas_limit: int | None = field(default=None, repr=False)
    #: the embedded chain's first account, which eth-tester's middleware would look up
    #: (two ``eth_accounts`` requests) for every call that names no sender
    _default_sender: str | None = field(default=None, repr=False)

    def request(self, method: str, params: list[Any], *, keep: Callable[[], bool] | None = None) -> Any:
        """One JSON-RPC request with wire-format (0x-hex) parameters; the result as sent.

        The per-round calls (views, transactions) go this way rather than through web3's
        method pipeline, whose formatters and middleware cost more Python time than a
        local node takes to answer. The embedded chain answers through web3's request
        manager, whose tester middleware reads wire-format parameters, so both kinds of
        node speak the same wire format here. Raises :class:`JsonRpcError` on an error
        answer and :class:`ChainUnavailableError` when the node cannot be reached.

        On the embedded chain an ``eth_call`` at the head is answered once per head: the
        answer of the same call at the same state (:class:`_HeadAnswers`). ``keep`` says,
        after the EVM ran, whether its answer may be kept (the JSON-RPC bridge's watchdog
        may have stopped the run part way).
        """
        if self._tester is not None:
            with self._embedded_lock:  # py-evm is not thread-safe
                try:
                    if method == "eth_getLogs" and self._log_index is not None and params:
                        answer = self._log_index.get_logs(params[0])
                        if answer is not None:
                            return answer
                    if method in ("eth_call", "eth_estimateGas") and params and isinstance(params[0], Mapping) \
                            and params[0].get("from") is None:  # fmt: skip
                        params = [{**params[0], "from": self._first_account()}, *params[1:]]
                    head = self._tester.backend.chain
                    key = _HeadAnswers.key(method, params)
                    if key is not None and (answer := self._head_answers.get(head, key)) is not None:
                        return answer
                    answer = to_wire(self.w3.manager.request_blocking(method, params))
                    if key is not None and (keep is None or keep()):
                        self._head_answers.put(head, key, answer)
                    return answer
                except Exception as exc:  # noqa: BLE001 - eth-tester raises many kinds; all become answers
                    raise JsonRpcError(method, embedded_error(exc)) from exc
        try:
            response = self.w3.provider.make_request(method, params)
        except (Web3Exception, OSError) as exc:  # requests' errors are OSErrors
            raise ChainUnavailableError(
                f"{method}: chain node at {self.url} is unreachable ({exc.__class__.__name__})"
            ) from exc
        if response.get("error") is not None:
            raise JsonRpcError(method, response["error"])
        return response.get("result")

    def _first_account(self) -> str | None:
        """The sender eth-tester's middleware gives a call that names none (its first
        account: accounts are only ever added after it), read once."""
        if self._default_sender is None:
            accounts = self.w3.eth.accounts
            self._default_sender = str(accounts[0]) if accounts else None
        return self._default_sender

    def send_raw_transaction(self, raw: bytes, *, timeout: float) -> dict[str, Any]:
        """Send a signed transaction; return its receipt (wire form) once it is mined.

        A node that implements EIP-7966 ``eth_sendRawTransactionSync`` (anvil does)
        answers with the receipt in one round trip; any other gets the classic
        ``eth_sendRawTransaction`` and receipt polling, at most ``timeout`` seconds.
        """
        payload = "0x" + raw.hex()
        if self._sync_send is not False and self._tester is None:
            try:
                receipt = self.request("eth_sendRawTransactionSync", [payload])
                self._sync_send = True
                return receipt
            except JsonRpcError as exc:
                if exc.code == _SYNC_SEND_TIMEOUT and isinstance(exc.data, str):
                    return self._wait_for_receipt(exc.data, timeout=timeout)  # sent; mined later
                if self._sync_send or exc.code not in _NO_SUCH_METHOD:
                    raise
                self._sync_send = False  # not offered by this node: nothing was sent
        return self._wait_for_receipt(self.request("eth_sendRawTransaction", [payload]), timeout=timeout)

    def _wait_for_receipt(self, tx_hash: str, *, timeout: float) -> dict[str, Any]:
        deadline, pause = time.monotonic() + timeout, 0.01
        while (receipt := self.request("eth_getTransactionReceipt", [tx_hash])) is None:
            if time.monotonic() > deadline:
                raise ChainError(f"transaction {tx_hash} was sent but not mined within {timeout:.0f}s")
            time.sleep(pause)
            pause = min(2 * pause, 1.0)
        return receipt

    def block_gas_limit(self) -> int:
        """The most gas a transaction may ask for here: fifteen sixteenths of the latest
        block's gas limit when first asked (a chain's limit moves by at most 1/1024 a
        block), read once per connection."""
        if self._block_gas_limit is None:
            latest = self.request("eth_getBlockByNumber", ["latest", False])
            self._block_gas_limit = int(latest["gasLimit"], 16) * 15 // 16
        return self._block_gas_limit

    @property
    def reverts_cost_nothing(self) -> bool:
        """Whether a transaction that reverts costs nothing real: the embedded chain, whose
        ether is development ether and whose blocks nobody else waits for."""
        return self._tester is not None

    @property
    def chain_id(self) -> int:
        """The chain's id, read once: a connection's chain does not change."""
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def fee_fields(self) -> dict[str, int]:
        """EIP-1559 fee fields for a transaction, by web3's own rule (max fee = twice the
        latest base fee plus the node's suggested tip), quoted at most every
        ``FEE_QUOTE_TTL_S`` seconds instead of two extra requests per transaction."""
        now = time.monotonic()
        if self._fee_quote is None or now - self._fee_quote[0] > FEE_QUOTE_TTL_S:
            try:
                tip = int(self.w3.eth.max_priority_fee)
                base = int(self.w3.eth.get_block("latest").get("baseFeePerGas") or 0)
            except (Web3Exception, OSError) as exc:
                raise ChainError(f"reading the chain's fees failed: {exc}") from exc
            self._fee_quote = (now, {"maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * base + tip})
        return dict(self._fee_quote[1])

    def describe(self) -> dict[str, Any]:
        """What ``results.json`` records about the chain."""
        return {"kind": self.kind, "url": self.url, "chain_id": self.chain_id}

    def now(self) -> int:
        """The timestamp the next block will carry at the earliest."""
        return int(self.request("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)

    def fund(self, addresses: list[str], *, wei: int = DEV_FUNDING_WEI) -> None:
        """Give development ether to fresh keys from the node's first unlocked account.

        Works on the embedded chain and on development nodes (anvil, hardhat); on a
        public network keys must be funded by their owners.
        """
        try:
            sources = self.w3.eth.accounts
        except Web3Exception as exc:
            raise ChainError(f"cannot list the node's unlocked accounts to fund keys: {exc}") from exc
        if not sources:
            raise ChainError("the chain node has no unlocked account to fund participant keys; fund them yourself")
        source = sources[0]
        hashes = []
        for address in addresses:
            if self.w3.eth.get_balance(address) >= wei // 2:
                continue
            hashes.append(self.w3.eth.send_transaction({"from": source, "to": address, "value": wei}))
        for tx_hash in hashes:
            self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)

    def advance_to(self, timestamp: int, *, timeout: float) -> None:
        """Make the chain's clock reach ``timestamp``.

        The embedded chain and development nodes jump there (simulated time); other
        nodes are waited for, at most ``timeout`` seconds of wall time.
        """
        if self.now() >= timestamp:
            return
        if self._tester is not None:
            with self._embedded_lock:  # not while another thread's request reads the chain (or its log index)
                self._tester.time_travel(timestamp)
                self._tester.mine_blocks(1)  # calls then see the new time, as on a real node
            return
        # anvil and hardhat name it evm_setNextBlockTimestamp; the embedded chain served
        # over JSON-RPC (eth-tester) testing_timeTravel
        for method in ("evm_setNextBlockTimestamp", "testing_timeTravel"):
            try:
                answer = self.w3.provider.make_request(method, [timestamp])
                if answer.get("error"):
                    continue
                self.w3.provider.make_request("evm_mine", [])
                if self.now() >= timestamp:
                    return
            except Exception:  # noqa: BLE001 - a production node refuses dev methods: wait instead
                continue
        deadline = time.monotonic() + timeout
        while self.now() < timestamp:
            if time.monotonic() > deadline:
                raise ChainError(f"chain clock did not reach {timestamp} within {timeout:.0f}s")
            time.sleep(1.0)


class _HeadAnswers:
    """The embedded chain's ``eth_call`` answers at its current head, by exact request.

    A call at ``latest`` runs on the latest mined block's state, with the sender, gas and
    data it names: the same request at the same head has the same answer. A round asks
    the same views (``getRun``, ``getRound``, ``phase``) of every participant between two
    blocks: at 100 participants, most of a round's EVM runs were repeats. The head is
    py-evm's pending header, an immutable object that the chain replaces whenever its
    state moves (a block mined, time travel, a snapshot revert, a pending transaction),
    so the answers are kept for the header *object* (compared by identity, held so its
    identity cannot be reused) and dropped when it changes. Only successful answers are
    kept; a call that reverts runs again.
    """

    #: The calls answered from the state of the latest mined block.
    _AT_HEAD = (None, "latest")

    def __init__(self) -> None:
        self._chain: Any = None
        self._header: Any = None
        self._answers: dict[str, Any] = {}

    @classmethod
    def key(cls, method: str, params: list[Any]) -> str | None:
        """The request's key, or ``None`` for one that is not a call at the head."""
        if method != "eth_call" or not params or not isinstance(params[0], Mapping) or len(params) > 2:
            return None
        if (params[1] if len(params) > 1 else None) not in cls._AT_HEAD:
            return None
        try:
            return json.dumps(params[0], sort_keys=True)
        except (TypeError, ValueError):
            return None

    def _current(self, chain: Any) -> bool:
        if chain is self._chain and chain.header is self._header:
            return True
        self._chain, self._header, self._answers = chain, chain.header, {}
        return False

    def get(self, chain: Any, key: str) -> Any:
        return self._answers.get(key) if self._current(chain) else None

    def put(self, chain: Any, key: str, answer: Any) -> None:
        if self._current(chain) and answer is not None:
            self._answers[key] = answer


def connect_embedded() -> ChainNode:
    """A fresh in-process EVM (py-evm through web3's tester provider), indexed so that
    receipts and log queries cost what they return, not the blocks mined (:mod:`.embedded`)."""
    from eth_tester import EthereumTester
    from web3.providers.eth_tester import EthereumTesterProvider

    from .embedded import IndexedPyEVMBackend, LogIndex

    tester = EthereumTester(IndexedPyEVMBackend())
    w3 = Web3(EthereumTesterProvider(tester))

    def block_logs(number: int) -> list[dict[str, Any]]:
        """One block's logs as eth-tester answers them (what the index files)."""
        return to_wire(w3.manager.request_blocking("eth_getLogs", [{"fromBlock": hex(number), "toBlock": hex(number)}]))

    index = LogIndex(lambda: tester.backend.chain, block_logs)
    return ChainNode(w3=w3, kind="embedded", url="embedded://py-evm", _tester=tester, _log_index=index)


#: A request whose connection was refused (a node restarting) is tried once more; one that
#: timed out is not, having used its whole time already (web3's default, five tries on any
#: error with back-off, turned a 3 s timeout into 17 s, more than a phase's deadline
#: allows for). At most two timeouts a request, then: a connect timeout is a connection
#: error too.
RPC_RETRY = ExceptionRetryConfiguration(errors=(RequestsConnectionError,), retries=2, backoff_factor=0.1)


def connect_rpc(url: str, *, timeout: float = 30.0) -> ChainNode:
    """A JSON-RPC node at ``url`` (http(s)://...), checked to answer."""
    if not url.startswith(("http://", "https://")):
        raise ChainUnavailableError(f"chain RPC URL must start with http:// or https:// (got {url!r})")
    # eth_chainId is cached: web3 re-reads it to validate every transaction otherwise
    provider = Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}, cache_allowed_requests=True,
                                 cacheable_requests={"eth_chainId"}, exception_retry_configuration=RPC_RETRY)  # fmt: skip
    w3 = Web3(provider)
    try:
        w3.eth.chain_id  # noqa: B018 - a cheap call that proves the node answers
    except Exception as exc:  # requests/OS errors surface in many shapes
        hint = "is the node running? A local one: npx --yes @foundry-rs/anvil"
        try:
            port = urlsplit(url).port if url.startswith("http://") else None
        except ValueError:  # a malformed port: the hint stays generic
            port = None
        hint += f" --port {port}" if port else ""
        raise ChainUnavailableError(f"chain node at {url} is unreachable ({exc.__class__.__name__}); {hint}") from exc
    return ChainNode(w3=w3, kind="rpc", url=url)


# In-process chains reachable by URL, for participants that live in the same process as
# the embedded chain (the in-process engine): ``embedded://<id>``.
_EMBEDDED_NODES: dict[str, ChainNode] = {}


def register_embedded_node(node: ChainNode) -> str:
    """Make an in-process chain reachable by URL from participants in this process."""
    url = f"embedded://{id(node):x}"
    _EMBEDDED_NODES[url] = node
    return url


def unregister_embedded_node(url: str) -> None:
    _EMBEDDED_NODES.pop(url, None)


# JSON-RPC connections by URL, with the hash of the chain's genesis block: participants
# served by one process (a Ray worker serves many) share a connection, and so its
# final answers, while a different chain behind the same URL gets a fresh one.
_RPC_NODES: dict[tuple[str, float], tuple[ChainNode, str]] = {}
_RPC_LOCK = threading.Lock()


def _genesis(node: ChainNode) -> str:
    block = node.request("eth_getBlockByNumber", ["0x0", False])
    return str(block.get("hash")) if isinstance(block, Mapping) else ""


def connect_url(url: str, *, timeout: float = 30.0) -> ChainNode:
    """The chain at ``url``: a registered in-process chain or a JSON-RPC node (one shared
    connection per URL and chain in this process)."""
    if url.startswith("embedded://"):
        try:
            return _EMBEDDED_NODES[url]
        except KeyError:
            raise ChainUnavailableError(
                "the embedded chain lives in the process that started it; "
                "this process cannot reach it (serve it over JSON-RPC)"
            ) from None
    with _RPC_LOCK:
        cached = _RPC_NODES.get((url, timeout))
    if cached is not None:
        node, genesis = cached
        try:
            if _genesis(node) == genesis:
                return node
        except ChainError:
            pass  # unreachable now: connect anew (and say so if it still is)
    node = connect_rpc(url, timeout=timeout)
    genesis = _genesis(node)
    with _RPC_LOCK:
        _RPC_NODES[(url, timeout)] = (node, genesis)
    return node

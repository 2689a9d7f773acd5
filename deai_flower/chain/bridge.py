"""Serve the embedded chain over JSON-RPC on loopback, for workers in other processes.

Flower's simulation engine runs ClientApps in Ray worker processes, which cannot share
the in-process EVM object. This bridge answers standard JSON-RPC over HTTP on
127.0.0.1 by forwarding each request to the embedded chain's provider, one at a time,
so those workers use the same chain through an ordinary ``HTTPProvider``.

Any local process can reach a loopback port, so the bridge serves only what a
participant needs: reads (views, logs, receipts, nonces, balances, code, blocks, fees,
the chain id), gas estimates and the submission of transactions signed by their own
keys. The embedded chain's development methods (``evm_revert``, time travel, transfers
from its unlocked accounts, ...) are refused unless a test opts in with
``allow_dev_methods``. Requests are bounded: a body above :data:`MAX_BODY_BYTES` is
refused before it is read, and a batch holds at most :data:`MAX_BATCH` requests.

The EVM work of a request is bounded too, since the chain answers one request at a time
and anything that holds it holds every participant. Two limits, as a public node has
(geth's ``--rpc.gascap`` and ``--rpc.evmtimeout``):

* **Gas:** an ``eth_call`` or ``eth_estimateGas`` burns at most :data:`GAS_CAP` (a larger
  or missing ``gas`` is lowered to it), and a raw transaction asking more than
  :data:`GAS_CAP` is refused unsent. 10 million covers the project's heaviest request, a
  relayed ``attestMany`` of 100 participants (a 7.7 million gas limit, 3.1 million used).
* **Time:** the requests of one body may run the EVM for :data:`EXECUTION_BUDGET_S`
  seconds, counted from when their turn at the chain comes; a call or estimate that runs
  past it is stopped and answered with an error naming the budget, a transaction fails on
  chain as if it ran out of gas (its gas is paid).

The gas cap alone cannot bound the time: py-evm is pure Python, and what a gas unit
costs varies a hundredfold. Measured on this project's 2-core development machine, busy
with other work: a tight loop (``JUMPDEST PUSH0 JUMP``) burns 10 million gas in 7 s and
a loop over ``JUMPDEST`` opcodes in 17 s, while the BLAKE2 precompile costs about 14 µs a gas
(its 10 million rounds, one opcode, would take over two minutes) and the pairing
precompile about 5 µs. The project's own heaviest estimate (deploying the contract,
5.3 million gas) takes 0.05 s. So a watchdog enforces the time (:class:`_ExecutionWatch`).
"""

from __future__ import annotations

import ctypes
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from eth.exceptions import VMError
from eth.vm.forks import PragueVM

from .node import ChainNode, JsonRpcError

#: What participants (and the coordinator's tools over JSON-RPC) call: reads and signed sends.
SERVED_METHODS = frozenset({
    "web3_clientVersion", "net_version", "net_listening", "eth_chainId", "eth_syncing", "eth_blockNumber",
    "eth_getBlockByNumber", "eth_getBlockByHash", "eth_getBalance", "eth_getCode", "eth_getStorageAt",
    "eth_getTransactionCount", "eth_getTransactionByHash", "eth_getTransactionReceipt", "eth_call",
    "eth_estimateGas", "eth_getLogs", "eth_gasPrice", "eth_maxPriorityFeePerGas", "eth_feeHistory",
    "eth_sendRawTransaction", "eth_sendRawTransactionSync",
})  # fmt: skip
#: The development methods a test fixture may opt into: the embedded chain's unlocked
#: accounts (``fund``), snapshots, mining and time travel.
DEV_METHODS = frozenset({
    "eth_accounts", "eth_sendTransaction", "evm_mine", "evm_snapshot", "evm_revert", "evm_increaseTime",
    "evm_setNextBlockTimestamp", "testing_timeTravel",
})  # fmt: skip
#: The largest request body read. A signed reveal or attestation is a few KB; the
#: outcome of a round of 10,000 revealers is about 250 KB.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: The most requests one batch may hold.
MAX_BATCH = 100
#: The deepest nesting of arrays and objects a request body may have (a batch of
#: transactions with access lists is 6 deep).
MAX_DEPTH = 32
#: Seconds a connection may stay silent while its request is read or its answer written.
SOCKET_TIMEOUT_S = 30.0
#: The most gas an ``eth_call``/``eth_estimateGas`` burns and a raw transaction may ask for.
GAS_CAP = 10_000_000
#: Seconds of EVM execution the requests of one body may take together.
EXECUTION_BUDGET_S = 5.0
#: How often the watchdog looks again at a request past its budget that was not in EVM code.
_WATCH_INTERVAL_S = 0.02
#: The methods that run the EVM.
_CALLS = frozenset({"eth_call", "eth_estimateGas"})
_TRANSACTIONS = frozenset({"eth_sendRawTransaction", "eth_sendRawTransactionSync"})
#: Modules whose code runs only inside a py-evm computation (the interpreter loop, opcodes,
#: precompiles), where py-evm catches a VMError and reverts that computation's state.
_EVM_CODE = re.compile(r"(eth\.vm\.(logic|opcode|computation|stack|memory|gas_meter|code_stream|transient_storage)"
                       r"|eth\.vm\.forks\.\w+\.(computation|logic|opcodes)|eth\.precompiles|eth\._utils\.blake2"
                       r"|py_ecc)(\.|$)")  # fmt: skip

_PARSE_ERROR, _INVALID_REQUEST, _NO_SUCH_METHOD, _INTERNAL_ERROR = -32700, -32600, -32601, -32603
_SERVER_ERROR = -32000  # what geth answers for a call stopped at its time limit or above its gas cap
_JSON_TYPE = re.compile(r"^application/json\s*(;.*)?$", re.IGNORECASE)
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DIGITS = re.compile(r"\s*([0-9]+)\s*", re.ASCII)


def _shallow(body: bytes) -> bool:
    """Whether ``body``'s brackets nest at most :data:`MAX_DEPTH` deep and balance.

    Checked before parsing: py-evm raises Python's recursion limit to 100,000, deep enough
    for ``json.loads`` of a few hundred KB of ``[`` to overflow the C stack and kill the
    process that holds the chain. Strings are dropped first (their brackets are text);
    each pass then removes the innermost bracket pairs, all in C.
    """
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    for _ in range(MAX_DEPTH):
        if not brackets:
            return True
        reduced = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if len(reduced) == len(brackets):
            return False  # unbalanced: not JSON
        brackets = reduced
    return not brackets


def _error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class ExecutionBudgetExceeded(VMError):
    """The EVM ran past the chain bridge's time budget for one request body."""

    def __init__(self, *args: Any) -> None:  # raised as a class, into another thread
        super().__init__(*(args or (f"stopped after the chain bridge's {EXECUTION_BUDGET_S:g} s execution budget",)))


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in a thread at its next bytecode (``None``: cancel a pending one)."""
    exc = ctypes.py_object(exc_type) if exc_type else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)


def _in_evm_code(thread_id: int) -> bool:
    frame = sys._current_frames().get(thread_id)
    return frame is not None and bool(_EVM_CODE.match(frame.f_globals.get("__name__", "")))


class _ExecutionWatch:
    """Stops the EVM work of the calling thread once ``deadline`` (monotonic) has passed.

    py-evm cannot be cancelled from outside, and one opcode may be minutes of pure Python
    (a precompile). So a watchdog raises :class:`ExecutionBudgetExceeded` in the serving
    thread, and only while that thread's innermost frame is EVM execution
    (:data:`_EVM_CODE`): there py-evm takes it like any VMError, failing the computation as
    if out of gas and reverting its state. Anywhere else (validating, mining, persisting a
    block) the watchdog waits and looks again, so nothing is stopped half-written. The look
    and the raise run within one of the watchdog's turns at the interpreter (microseconds
    of a 5 ms switch interval), so the serving thread does not move in between unless a
    third thread forces a switch at that very moment.
    """

    def __init__(self, deadline: float) -> None:
        self.fired = False
        self._deadline = deadline
        self._thread_id = threading.get_ident()
        self._lock = threading.Lock()  # no raise after __exit__ began
        self._done = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="deai-jsonrpc-watchdog", daemon=True)

    def _watch(self) -> None:
        wait = self._deadline - time.monotonic()
        while not self._done.wait(max(wait, 0.0)):
            with self._lock:
                if not self._done.is_set() and _in_evm_code(self._thread_id):
                    _raise_in_thread(self._thread_id, ExecutionBudgetExceeded)
                    self.fired = True
            wait = _WATCH_INTERVAL_S  # caught by a nested call's computation, or not in EVM code yet

    def __enter__(self) -> _ExecutionWatch:
        self._watchdog.start()
        return self

    def stop(self) -> None:
        """No raise from now on (idempotent)."""
        with self._lock:
            self._done.set()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self.fired:
            _raise_in_thread(self._thread_id, None)  # one raised as the EVM finished: not delivered, and never later


def _gas_capped(params: list[Any]) -> list[Any]:
    """A call's parameters with its gas at most :data:`GAS_CAP` (and :data:`GAS_CAP` when not given)."""
    if not params or not isinstance(params[0], dict):
        return params
    try:
        gas = int(params[0].get("gas") or hex(GAS_CAP), 16)
    except (TypeError, ValueError):
        return params  # the node refuses it with its own reason
    return [{**params[0], "gas": hex(min(gas, GAS_CAP))}, *params[1:]]


def _gas_limit(params: list[Any]) -> int | None:
    """The gas limit of a raw transaction, or ``None`` when it does not decode (the node then refuses it)."""
    try:
        return int(PragueVM.get_transaction_builder().decode(bytes.fromhex(params[0].removeprefix("0x"))).gas)
    except Exception:  # noqa: BLE001 - rlp raises many kinds for a malformed transaction
        return None


class _BodyClock:
    """When the EVM work of one request body must end: set when its first request gets its turn."""

    deadline: float | None = None


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # a client that hung up or went silent: nothing to report
            return
        super().handle_error(request, client_address)


class JsonRpcBridge:
    """A loopback HTTP JSON-RPC endpoint in front of an embedded :class:`ChainNode`.

    ``allow_dev_methods`` adds :data:`DEV_METHODS` (for tests that fund keys from the
    chain's unlocked accounts through the bridge); never for a run's participants.
    """

    def __init__(self, node: ChainNode, *, allow_dev_methods: bool = False) -> None:
        self._node = node
        self.methods = SERVED_METHODS | DEV_METHODS if allow_dev_methods else SERVED_METHODS
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # One request runs the EVM at a time (the chain serializes anyway), so a budget
        # counts that request's own work, not its wait behind another's.
        self._evm_turn = threading.Lock()

    def _execute(self, request_id: Any, method: str, params: list[Any], clock: _BodyClock) -> dict[str, Any]:
        """Answer a request that runs the EVM, within the gas cap and the body's time budget
        (raises the node's :class:`JsonRpcError` for any other error)."""
        stopped = _error(request_id, _SERVER_ERROR, f"{method} ran past this chain bridge's execution budget of "
                                                    f"{EXECUTION_BUDGET_S:g} s and was stopped")  # fmt: skip
        if method in _CALLS:
            params = _gas_capped(params)
        elif (gas := _gas_limit(params)) is not None and gas > GAS_CAP:
            return _error(request_id, _SERVER_ERROR, f"{method}: a transaction sent through this chain bridge may "
                                                     f"ask at most {GAS_CAP} gas (this one asks {gas})")  # fmt: skip
        with self._evm_turn:
            if clock.deadline is None:
                clock.deadline = time.monotonic() + EXECUTION_BUDGET_S
            elif time.monotonic() >= clock.deadline:
                return stopped
            watch = _ExecutionWatch(clock.deadline)
            try:
                with watch:  # an answer the watchdog may have cut short is not kept for the next asker
                    result = self._node.request(method, params, keep=lambda: not watch.fired)
            except ExecutionBudgetExceeded:  # raised as the EVM finished, and landed outside it
                return stopped
            except JsonRpcError:
                if watch.fired:
                    return stopped
                raise
            finally:
                watch.stop()  # also when the raise landed in __exit__ before it could
        if watch.fired and method in _CALLS:  # an estimate whose stopped runs counted as out of gas
            return stopped
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def _answer(self, request: Any, clock: _BodyClock) -> dict[str, Any]:
        if not isinstance(request, dict):
            return _error(None, _INVALID_REQUEST, "a JSON-RPC request must be an object")
        request_id, method, params = request.get("id"), request.get("method"), request.get("params", [])
        if not isinstance(method, str):
            return _error(request_id, _INVALID_REQUEST, "a JSON-RPC request needs a 'method' string")
        if not isinstance(params, list):
            return _error(request_id, _INVALID_REQUEST, "'params' must be an array")
        if method not in self.methods:
            return _error(request_id, _NO_SUCH_METHOD, f"the method {method[:64]!r} does not exist or is not "
                                                       "available: this chain bridge serves reads and signed "
                                                       "raw transactions only")  # fmt: skip
        try:
            if method in _CALLS or method in _TRANSACTIONS:
                return self._execute(request_id, method, params, clock)
            # the node serializes requests to the EVM itself
            return {"jsonrpc": "2.0", "id": request_id, "result": self._node.request(method, params)}
        except JsonRpcError as exc:
            error = {"code": exc.code, "message": exc.rpc_message, "data": exc.data}
            return {"jsonrpc": "2.0", "id": request_id, "error": error}
        except Exception as exc:  # noqa: BLE001 - an answer, never a traceback in the server thread
            return _error(request_id, _INTERNAL_ERROR, f"{method} failed ({exc.__class__.__name__})")

    def answer_body(self, body: bytes) -> Any:
        """The JSON-RPC answer to a request body (one request or a batch)."""
        if not _shallow(body):
            return _error(None, _PARSE_ERROR, f"parse error: the request body is not JSON nested at most "
                                              f"{MAX_DEPTH} deep")  # fmt: skip
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):  # bad JSON, bad UTF-8
            return _error(None, _PARSE_ERROR, "parse error: the request body is not JSON")
        if isinstance(payload, list):
            if not payload:
                return _error(None, _INVALID_REQUEST, "an empty batch")
            if len(payload) > MAX_BATCH:
                return _error(None, _INVALID_REQUEST, f"a batch holds at most {MAX_BATCH} requests "
                                                      f"(got {len(payload)})")  # fmt: skip
            clock = _BodyClock()
            return [self._answer(p, clock) for p in payload]
        return self._answer(payload, _BodyClock())

    def start(self) -> str:
        """Start serving on a free loopback port; return the URL."""
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            timeout = SOCKET_TIMEOUT_S  # a silent client does not hold its thread forever

            def _refuse(self, status: int, reason: str, *, headers: dict[str, str] | None = None) -> None:
                data = (reason + "\n").encode()
                self.close_connection = True  # an unread body must not be taken for the next request
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            def _body_length(self) -> int | None:
                """The request's Content-Length, or ``None`` once it is refused."""
                if self.headers.get("Transfer-Encoding"):
                    self._refuse(411, "send a Content-Length (no chunked bodies)")
                    return None
                declared = self.headers.get_all("Content-Length") or []
                if not declared:
                    self._refuse(411, "a Content-Length is required")
                    return None
                digits = _DIGITS.fullmatch(declared[0])
                if len(declared) > 1 or digits is None:
                    self._refuse(400, "the Content-Length is not one number")
                    return None
                if len(digits[1]) > 15 or int(digits[1]) > MAX_BODY_BYTES:  # refused before any of it is read
                    self._refuse(413, f"a request body may hold at most {MAX_BODY_BYTES} bytes")
                    return None
                return int(digits[1])

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = self._body_length()
                if length is None:
                    return
                try:
                    body = self.rfile.read(length)
                except OSError:  # silent for SOCKET_TIMEOUT_S, or reset
                    body = b""
                if len(body) < length:
                    self.close_connection = True  # the client hung up mid-body: nobody to answer
                    return
                # Refused after the (bounded) body is read, so the client sees the answer, not a reset.
                hosts = [h.strip().lower() for h in self.headers.get_all("Host") or []]
                if len(hosts) != 1 or hosts[0].rsplit(":", 1)[0] not in _LOOPBACK_HOSTS:  # a DNS-rebound browser page names its own
                    self._refuse(403, "this chain bridge answers requests to 127.0.0.1 only")
                    return
                if not _JSON_TYPE.match(self.headers.get("Content-Type") or ""):  # a browser's form cannot send it
                    self._refuse(415, "send JSON-RPC as Content-Type: application/json")
                    return
                data = json.dumps(bridge.answer_body(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_post(self) -> None:
                self._refuse(405, "this chain bridge answers JSON-RPC over POST only", headers={"Allow": "POST"})

            do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_post  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence access logs
                return

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="deai-jsonrpc-bridge", daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

"""The loopback JSON-RPC bridge serves participants' reads and signed transactions only,
and bounds what it reads: every refusal is an answer, and the bridge keeps serving."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from support import Deployment, deploy_for_tests

from deai_flower.chain import RoundsContract, connect_embedded, connect_rpc
from deai_flower.chain.bridge import MAX_BATCH, MAX_BODY_BYTES, SERVED_METHODS, JsonRpcBridge
from deai_flower.chain.node import DEV_FUNDING_WEI, ChainNode
from deai_flower.errors import ChainError

REFUSAL = "serves reads and signed raw transactions only"


@dataclass
class Served:
    node: ChainNode
    deployment: Deployment
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def state(self) -> tuple[int, int, int, int]:
        """What a development method would change: blocks, time, an unlocked account's and a key's ether."""
        w3 = self.node.w3
        return (w3.eth.block_number, self.node.now(), w3.eth.get_balance(w3.eth.accounts[0]),
                w3.eth.get_balance(self.deployment.clients[0].address))  # fmt: skip


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    node = connect_embedded()
    deployment = deploy_for_tests(node)  # funded from the unlocked account in-process, not over the bridge
    bridge = JsonRpcBridge(node)
    url = bridge.start()
    try:
        yield Served(node, deployment, url)
    finally:
        bridge.stop()


def post(served: Served, body: bytes | None, *, headers: dict[str, str] | None = None, method: str = "POST",
         length: bool = True) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One HTTP request with these headers over the defaults (a Content-Length unless not ``length``)."""
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
    try:
        conn.putrequest(method, "/", skip_host=True, skip_accept_encoding=True)
        defaults = {"Host": f"127.0.0.1:{served.port}", "Content-Type": "application/json"}
        for name, value in {**defaults, **(headers or {})}.items():
            conn.putheader(name, value)
        if length and body is not None and "Content-Length" not in (headers or {}):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def rpc(served: Served, payload: Any) -> Any:
    status, _, data = post(served, json.dumps(payload).encode())
    assert status == 200
    return json.loads(data)


def call(method: str, params: list[Any] | None = None, request_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or []}


def test_reads_and_a_signed_raw_transaction_are_served(served: Served) -> None:
    remote = connect_rpc(served.url)
    assert remote.chain_id == served.node.chain_id
    admin = served.deployment.admin
    contract = RoundsContract(remote, admin.address, admin.account)  # eth_call, eth_getLogs, ... over the bridge
    assert contract.members() == admin.members()
    newcomer = Account.create().address
    blocks = served.node.w3.eth.block_number
    tx = contract.register(newcomer, b"\x09" * 32)  # eth_estimateGas, fees, eth_sendRawTransaction, the receipt
    assert tx.block_number == blocks + 1 == served.node.w3.eth.block_number
    assert admin.participant_info(newcomer) == (True, b"\x09" * 32)
    assert rpc(served, call("eth_chainId"))["result"] == hex(served.node.chain_id)
    assert int(rpc(served, call("eth_getBalance", [newcomer, "latest"]))["result"], 16) == 0


@pytest.mark.parametrize("method", [
    "evm_revert", "evm_snapshot", "evm_increaseTime", "evm_mine", "evm_setNextBlockTimestamp", "testing_timeTravel",
    "eth_sendTransaction", "eth_accounts", "eth_sign", "eth_newFilter", "personal_unlockAccount",
    "personal_sendTransaction", "debug_traceTransaction", "admin_peers", "anvil_setBalance",
    "hardhat_impersonateAccount",
])  # fmt: skip
def test_development_and_account_methods_are_refused_and_change_nothing(served: Served, method: str) -> None:
    w3 = served.node.w3
    unlocked, victim = w3.eth.accounts[0], served.deployment.clients[0].address
    params = {
        "evm_revert": [0], "evm_increaseTime": [10**8], "evm_mine": [5],
        "evm_setNextBlockTimestamp": [served.node.now() + 10**8], "testing_timeTravel": [served.node.now() + 10**8],
        "eth_sendTransaction": [{"from": unlocked, "to": Account.create().address, "value": hex(10**18)}],
        "personal_sendTransaction": [{"from": victim, "to": unlocked, "value": hex(10**18)}, ""],
        "anvil_setBalance": [victim, "0x0"],
    }.get(method, [])  # fmt: skip
    before = served.state()
    answer = rpc(served, call(method, params, request_id=7))
    assert answer["id"] == 7 and "result" not in answer
    assert answer["error"]["code"] == -32601 and REFUSAL in answer["error"]["message"]
    assert served.state() == before


def test_a_revert_to_a_real_snapshot_is_refused(served: Served) -> None:
    provider = served.node.w3.provider
    snapshot = provider.make_request("evm_snapshot", [])["result"]  # in-process: the coordinator's own tools
    served.deployment.admin.register(Account.create().address, b"\x0a" * 32)
    before = served.state()
    answer = rpc(served, call("evm_revert", [snapshot]))
    assert answer["error"]["code"] == -32601 and served.state() == before


def test_funding_from_unlocked_accounts_needs_the_explicit_opt_in() -> None:
    node = connect_embedded()
    key = Account.create().address
    plain, dev = JsonRpcBridge(node), JsonRpcBridge(node, allow_dev_methods=True)
    try:
        with pytest.raises(ChainError, match="unlocked accounts"):
            connect_rpc(plain.start()).fund([key])
        assert node.w3.eth.get_balance(key) == 0
        connect_rpc(dev.start()).fund([key])  # a test fixture's dev bridge: deai consortium fund works
        assert node.w3.eth.get_balance(key) == DEV_FUNDING_WEI
    finally:
        plain.stop()
        dev.stop()
    assert "eth_sendTransaction" not in SERVED_METHODS and "eth_sendRawTransaction" in SERVED_METHODS


def test_a_100_gb_content_length_is_refused_unread_and_the_bridge_keeps_serving(served: Served) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000000000\r\n\r\n" + b"[" * 4096)  # fmt: skip
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.0 413 ") and str(MAX_BODY_BYTES).encode() in reply
    assert time.monotonic() - started < 2.0
    status, _, _ = post(served, b"{}", headers={"Content-Length": "9" * 40})  # too many digits for int()
    assert status == 413
    assert rpc(served, call("eth_chainId"))["result"] == hex(served.node.chain_id)


@pytest.mark.parametrize(("headers", "length", "status"), [
    ({}, False, 411),
    ({"Transfer-Encoding": "chunked"}, False, 411),
    ({"Content-Length": "abc"}, False, 400),
    ({"Content-Length": "-5"}, False, 400),
    ({"Content-Length": "\u00b2"}, False, 400),  # a digit to str.isdigit, not to int()
], ids=["missing", "chunked", "not-a-number", "negative", "superscript"])  # fmt: skip
def test_a_missing_or_invalid_content_length_is_refused(served: Served, headers: dict[str, str], length: bool,
                                                       status: int) -> None:  # fmt: skip
    assert post(served, None, headers=headers, length=length)[0] == status
    assert rpc(served, call("eth_blockNumber"))["result"] == hex(served.node.w3.eth.block_number)


def test_a_request_cut_short_is_dropped_and_the_bridge_keeps_serving(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"jsonrpc\"")  # fmt: skip
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(4096) == b""  # no answer to half a request, no crash
    assert rpc(served, call("eth_chainId"))["result"] == hex(served.node.chain_id)


def test_only_post_json_to_loopback_is_answered(served: Served) -> None:
    status, headers, _ = post(served, None, method="GET")
    assert status == 405 and headers["Allow"] == "POST"
    body = json.dumps(call("eth_chainId")).encode()
    assert post(served, body, headers={"Content-Type": "text/plain"})[0] == 415  # a browser form's simple request
    assert post(served, body, headers={"Host": "attacker.example:80"})[0] == 403  # a DNS-rebound page
    assert post(served, body, headers={"Host": f"localhost:{served.port}"})[0] == 200
    assert post(served, body, headers={"Content-Type": "application/json; charset=utf-8"})[0] == 200


def test_malformed_json_and_requests_are_json_rpc_errors(served: Served) -> None:
    # 100,000 deep: enough to overflow the C stack under py-evm's recursion limit, were it parsed
    for body in (b"{not json", b"\xff\xfe\x00", b"[" * 100_000 + b"]" * 100_000):
        status, _, data = post(served, body)
        assert status == 200 and json.loads(data)["error"]["code"] == -32700
    brackets_in_a_string = rpc(served, call("eth_getBalance", ["[{" * 1000, "latest"]))  # text, not nesting
    assert brackets_in_a_string["error"]["code"] != -32700
    assert rpc(served, 42)["error"]["code"] == -32600
    assert rpc(served, {"id": 3, "params": []}) == {"jsonrpc": "2.0", "id": 3, "error": {
        "code": -32600, "message": "a JSON-RPC request needs a 'method' string"}}  # fmt: skip
    assert rpc(served, {"id": 4, "method": "eth_chainId", "params": {"a": 1}})["error"]["code"] == -32600
    answer = rpc(served, call("eth_getBalance", ["not an address", "latest"]))  # the chain's own error answer
    assert "error" in answer and "result" not in answer


def test_a_batch_is_bounded_and_answered_request_by_request(served: Served) -> None:
    answers = rpc(served, [call("eth_chainId", request_id=i) for i in range(MAX_BATCH)])
    assert [a["id"] for a in answers] == list(range(MAX_BATCH)) and {a["result"] for a in answers} == {
        hex(served.node.chain_id)}  # fmt: skip
    too_many = rpc(served, [call("eth_chainId", request_id=i) for i in range(MAX_BATCH + 1)])
    assert too_many["error"]["code"] == -32600 and str(MAX_BATCH) in too_many["error"]["message"]
    assert rpc(served, [])["error"]["code"] == -32600
    mixed = rpc(served, [call("eth_blockNumber", request_id=1), call("evm_mine", request_id=2), 5])
    assert "result" in mixed[0] and mixed[1]["error"]["code"] == -32601 and mixed[2]["error"]["code"] == -32600


def test_the_bridge_listens_on_loopback_only(served: Served) -> None:
    assert served.url.startswith("http://127.0.0.1:")

"""How transactions reach a JSON-RPC node: raw requests, receipts with or without EIP-7966."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import deploy_for_tests

from deai_flower.chain import ChainNode, connect_embedded, connect_rpc, simulation_key
from deai_flower.chain.bridge import JsonRpcBridge
from deai_flower.chain.node import JsonRpcError
from deai_flower.errors import ContractRevertError


@pytest.fixture
def bridged() -> Iterator[ChainNode]:
    """The embedded chain over loopback JSON-RPC: a node without eth_sendRawTransactionSync."""
    bridge = JsonRpcBridge(connect_embedded(), allow_dev_methods=True)
    url = bridge.start()
    try:
        yield connect_rpc(url)
    finally:
        bridge.stop()


def test_a_node_without_sync_send_is_polled_for_the_receipt(bridged: ChainNode, monkeypatch: pytest.MonkeyPatch) -> None:
    d = deploy_for_tests(bridged)  # deploying and registering already went this way
    assert bridged._sync_send is False
    methods: list[str] = []
    real = ChainNode.request
    def spy(node: ChainNode, method: str, params: list, **kwargs: object) -> object:
        if node is bridged:  # not the embedded chain answering behind the bridge
            methods.append(method)
        return real(node, method, params, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ChainNode, "request", spy)
    tx = d.admin.register(simulation_key(seed=5, role="late joiner").address, b"\x07" * 32)
    assert methods == ["eth_estimateGas", "eth_sendRawTransaction", "eth_getTransactionReceipt"]
    assert [e["event"] for e in tx.events] == ["ParticipantRegistered"]


def test_an_error_answer_keeps_its_code_and_data(bridged: ChainNode) -> None:
    with pytest.raises(JsonRpcError) as caught:
        bridged.request("eth_noSuchMethod", [])
    assert caught.value.code == -32601
    d = deploy_for_tests(bridged)
    open_round = d.admin._functions["openRound"].calldata((7,))  # run 7 does not exist
    with pytest.raises(JsonRpcError) as caught:  # the custom error's data comes back
        bridged.request("eth_estimateGas", [{"from": d.admin.account.address, "to": d.admin.address,
                                             "data": "0x" + open_round.hex()}])  # fmt: skip
    assert d.admin._decode_revert(caught.value, "openRound").error_name == "UnknownRun"


def test_a_request_that_times_out_is_not_tried_again() -> None:
    """A frozen node costs a request its timeout once, not five times with back-off
    (web3's default retries turned a 3 s timeout into 17 s, past a phase's deadline)."""
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from deai_flower.errors import ChainUnavailableError

    asked: list[str] = []
    release = threading.Event()

    class FrozenAfterChainId(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append(request["method"])
            if request["method"] != "eth_chainId":
                release.wait(10)  # frozen: answers nothing in time
                return
            body = json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": "0x1"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), FrozenAfterChainId)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        node = connect_rpc(f"http://127.0.0.1:{server.server_address[1]}", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(ChainUnavailableError, match="eth_blockNumber: chain node at .* is unreachable"):
            node.request("eth_blockNumber", [])
        assert asked.count("eth_blockNumber") == 1, asked
        assert time.monotonic() - started < 5  # one timeout, not 5 plus back-off (a loose bound)
    finally:
        release.set()
        server.shutdown()
        server.server_close()



def test_a_view_runs_the_evm_once_per_head_and_never_answers_from_an_older_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded chain answers a repeated ``eth_call`` at the same head from what it ran;
    a mined transaction, time travel or a reverted call runs the EVM again."""
    node = connect_embedded()
    d = deploy_for_tests(node)
    backend = node._tester.backend
    runs: list[object] = []
    real_call = backend.call
    monkeypatch.setattr(backend, "call", lambda *a, **k: (runs.append(a), real_call(*a, **k))[1])

    assert d.admin.registry() == d.admin.registry() == (3, 3)
    assert len(runs) == 1  # the second came from the first's answer
    d.admin.register(d.clients[3].address, b"\x03" * 32)  # a block mined: the head moved
    runs.clear()
    assert d.admin.registry() == (4, 4) and len(runs) == 1

    run_id = d.create_run()
    round_id, _ = d.admin.open_round(run_id)
    assert d.admin.phase(run_id, round_id) == "commit"
    deadline = int(d.admin.get_round(run_id, round_id)["commitDeadline"])
    node.advance_to(deadline + 1, timeout=1.0)  # time travel: the same call, a new answer
    assert d.admin.phase(run_id, round_id) != "commit"

    runs.clear()
    for _ in range(2):  # a revert is not kept: it runs (and is refused) every time
        with pytest.raises(ContractRevertError):
            d.admin.get_round(run_id, round_id + 7)
    assert len(runs) == 2


def test_a_call_the_bridge_watchdog_cut_short_is_not_kept() -> None:
    node = connect_embedded()
    d = deploy_for_tests(node)
    call = [{"to": d.admin.address, "data": "0x" + d.admin._functions["registry"].calldata(()).hex()}, "latest"]
    node.request("eth_call", call, keep=lambda: False)
    assert node._head_answers._answers == {}
    node.request("eth_call", call)
    assert len(node._head_answers._answers) == 1

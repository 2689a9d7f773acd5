"""Attack: another local process rewrites the embedded chain through the loopback bridge.

Ray's workers (and ``flwr run``'s SuperNodes) reach the coordinator's embedded chain
over JSON-RPC on 127.0.0.1, which any process on the machine can reach too. While a
simulated run plays its rounds through that bridge, an attacker thread asks it to revert
to a snapshot, skip the clock ahead, mine, move ether out of the chain's unlocked
accounts, and sends a body of 100 GB: every request is refused with an answer, nothing
it asked for happens, and the run finishes and verifies as if nobody had tried.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from support import compose_with

from deai_flower.chain import connect_embedded, simulation_key
from deai_flower.chain.bridge import JsonRpcBridge
from deai_flower.chain.node import ChainNode
from deai_flower import experiment
from deai_flower.experiment import run_experiment
from deai_flower.simulation.harness import client_role
from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow

SKIP_S = 10**8  # three years, asked of the chain's clock


class Attacker(threading.Thread):
    """Sends development requests to the bridge until told to stop; keeps every answer."""

    def __init__(self, url: str, node: ChainNode) -> None:
        super().__init__(name="bridge-attacker", daemon=True)
        self.port = int(url.rsplit(":", 1)[1])
        self.unlocked = node.w3.eth.accounts[0]  # eth-tester's accounts are the same on every machine
        self.thief = Account.create().address
        self.stop = threading.Event()
        self.answers: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.start_time = node.now()

    def post(self, body: bytes, *, length: int | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.putrequest("POST", "/")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body) if length is None else length))
            conn.endheaders(body if length is None else None)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def attacks(self) -> list[dict[str, Any]]:
        later = self.start_time + SKIP_S
        transfer = {"from": self.unlocked, "to": self.thief, "value": hex(10**19)}
        calls = [("evm_snapshot", []), ("evm_revert", [0]), ("evm_revert", [1]), ("evm_increaseTime", [SKIP_S]),
                 ("evm_setNextBlockTimestamp", [later]), ("testing_timeTravel", [later]), ("evm_mine", [100]),
                 ("eth_sendTransaction", [transfer]), ("eth_accounts", []),
                 ("personal_sendTransaction", [transfer, ""])]  # fmt: skip
        return [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]

    def run(self) -> None:
        while not self.stop.is_set():
            for request in self.attacks():
                status, data = self.post(json.dumps(request).encode())
                self.statuses.append(status)
                self.answers.append(json.loads(data))
            status, data = self.post(json.dumps(self.attacks()).encode())  # the same as one batch
            self.statuses.append(status)
            self.answers.extend(json.loads(data))
            self.statuses.append(self.post(b"", length=100 * 10**9)[0])  # 100 GB declared, none sent
            self.stop.wait(0.2)  # two cores: leave the run most of them


def test_development_requests_through_the_bridge_during_a_run_are_refused_and_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_serve_chain = experiment.serve_chain
    seen: dict[str, Any] = {}

    @contextlib.contextmanager
    def bridged(node: ChainNode, *, same_process: bool) -> Iterator[str]:
        # In-process participants reach the chain through the bridge, as Ray's workers do.
        with real_serve_chain(node, same_process=False) as url:
            assert url.startswith("http://127.0.0.1:")
            attacker = Attacker(url, node)
            seen.update(node=node, attacker=attacker, first_block=node.w3.eth.block_number + 1,
                        unlocked_balance=node.w3.eth.get_balance(attacker.unlocked))  # fmt: skip
            attacker.start()
            try:
                yield url
            finally:
                attacker.stop.set()
                attacker.join(timeout=60)

    monkeypatch.setattr(experiment, "serve_chain", bridged)
    cfg = compose_with("dataset=breast_cancer", "num_clients=3", "num_rounds=2", "training.local_epochs=1",
                       "progress=false")  # fmt: skip
    results = run_experiment(cfg, output_dir=tmp_path)

    node, attacker = seen["node"], seen["attacker"]
    assert not attacker.is_alive() and len(attacker.answers) >= 20, len(attacker.answers)
    for answer in attacker.answers:
        assert "result" not in answer and answer["error"]["code"] == -32601, answer
        assert "serves reads and signed raw transactions only" in answer["error"]["message"]
    assert set(attacker.statuses) == {200, 413}  # the 100 GB bodies: refused unread
    # the run played through the bridge as if nobody had asked
    assert [r["status"] for r in results["rounds"]] == ["finalized"] * 2
    verification = verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store"))
    assert verification.ok, [v.problems for v in verification] + verification.problems
    # no ether moved: the unlocked account only paid for the setup before the bridge started
    assert node.w3.eth.get_balance(attacker.unlocked) == seen["unlocked_balance"]
    assert node.w3.eth.get_balance(attacker.thief) == 0
    # every transaction since the bridge started is the run's own, signed by its keys, and
    # the clock moved only by the run's own phase deadlines
    parties = {simulation_key(seed=int(cfg.seed), role=role).address
               for role in ["coordinator", *(client_role(i) for i in range(3))]}  # fmt: skip
    senders = {tx["from"] for n in range(seen["first_block"], node.w3.eth.block_number + 1)
               for tx in node.w3.eth.get_block(n, full_transactions=True)["transactions"]}  # fmt: skip
    assert senders and senders <= parties, senders - parties
    assert node.now() < attacker.start_time + SKIP_S // 100


# ---------------------------------------------------------------- an endless computation

#: Init code that never ends: it writes a BLAKE2 compression of 200,000 rounds to memory
#: (200,000 gas, seconds of pure-Python work on py-evm), then calls that precompile
#: (``STATICCALL`` to address 9, its output written past its input) in a loop. Sent as
#: ``eth_call``/``eth_estimateGas`` with no ``to``, or as a contract creation, it runs the
#: loop as the attacker's own code.
ENDLESS_INIT_CODE = bytes.fromhex(
    "6300030d4060e01b5f52"  # MSTORE(0, 200000 << 224): the rounds, then zeros (h, m, t, f)
    "5b" "6040" "60e0" "60d5" "5f" "6009" "5a" "fa" "50"  # loop: STATICCALL(gas, 9, 0, 213, 224, 64); POP
    "600a" "56"  # JUMP back to the JUMPDEST at 10
)
#: What "answered promptly" means while another request tries to hold the chain.
PROMPT_S = 10.0


def rpc_post(url: str, payload: Any, *, timeout: float) -> Any:
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/", body=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


@contextlib.contextmanager
def served_chain() -> Iterator[tuple[ChainNode, str]]:
    node = connect_embedded()
    bridge = JsonRpcBridge(node)
    try:
        yield node, bridge.start()
    finally:
        bridge.stop()


class Held(threading.Thread):
    """One request body sent to the bridge in the background; keeps its answer and how long it took."""

    def __init__(self, url: str, payload: Any) -> None:
        super().__init__(name="bridge-holder", daemon=True)
        self.url, self.payload = url, payload
        self.answer: Any = None
        self.seconds = float("nan")

    def run(self) -> None:
        start = time.monotonic()
        self.answer = rpc_post(self.url, self.payload, timeout=600)
        self.seconds = time.monotonic() - start


def block_number_wait(url: str) -> float:
    """How long a participant's ``eth_blockNumber`` takes; fails when it takes past PROMPT_S."""
    start = time.monotonic()
    request = {"jsonrpc": "2.0", "id": 7, "method": "eth_blockNumber", "params": []}
    answer = rpc_post(url, request, timeout=PROMPT_S)
    assert "result" in answer, answer
    return time.monotonic() - start


@pytest.mark.parametrize("method", ["eth_call", "eth_estimateGas"])
def test_an_endless_call_is_stopped_with_an_error_and_a_participant_is_answered_meanwhile(method: str) -> None:
    with served_chain() as (node, url):
        intruder = node.w3.eth.accounts[0]  # a call needs no key: any funded address does, and these are public
        params: list[Any] = [{"from": intruder, "data": "0x" + ENDLESS_INIT_CODE.hex()}, "latest"]
        batch = [{"jsonrpc": "2.0", "id": i, "method": method, "params": params} for i in range(3)]
        holder = Held(url, batch)  # one body: one budget for the three
        holder.start()
        time.sleep(0.5)  # the loop holds the chain now
        assert block_number_wait(url) < PROMPT_S
        holder.join(timeout=600)
        assert not holder.is_alive() and isinstance(holder.answer, list) and len(holder.answer) == 3, holder.answer
        for answer in holder.answer:
            assert "result" not in answer and "budget" in answer["error"]["message"], answer
            assert method in answer["error"]["message"], answer
        assert holder.seconds < PROMPT_S, holder.seconds
        # the chain serves calls as before
        empty = rpc_post(url, {"jsonrpc": "2.0", "id": 2, "method": "eth_call",
                               "params": [{"from": intruder, "data": "0x00"}, "latest"]}, timeout=PROMPT_S)  # fmt: skip
        assert empty == {"jsonrpc": "2.0", "id": 2, "result": "0x"}, empty


def test_an_endless_transaction_fails_on_chain_within_the_budget_and_one_above_the_gas_cap_is_refused() -> None:
    with served_chain() as (node, url):
        attacker = Account.create()
        node.fund([attacker.address])  # a participant's funded key, signing for itself

        def raw(nonce: int, gas: int, data: bytes) -> dict[str, Any]:
            signed = attacker.sign_transaction({"data": data, "value": 0, "nonce": nonce, "gas": gas,
                                                "chainId": node.chain_id, **node.fee_fields()})  # fmt: skip
            return {"jsonrpc": "2.0", "id": nonce, "method": "eth_sendRawTransaction",
                    "params": ["0x" + signed.raw_transaction.hex()]}  # fmt: skip

        holder = Held(url, raw(0, 9_000_000, ENDLESS_INIT_CODE))  # under the cap: it runs
        holder.start()
        time.sleep(0.5)
        assert block_number_wait(url) < PROMPT_S
        holder.join(timeout=600)
        assert not holder.is_alive() and holder.answer is not None and holder.seconds < PROMPT_S, holder.seconds
        receipt = node.w3.eth.get_transaction_receipt(holder.answer["result"])
        assert receipt["status"] == 0 and receipt["gasUsed"] == 9_000_000  # failed as if out of gas, and paid for

        start = time.monotonic()
        refused = rpc_post(url, raw(1, 30_000_000, ENDLESS_INIT_CODE), timeout=PROMPT_S)
        assert time.monotonic() - start < 2.0 and "result" not in refused, refused
        assert "gas" in refused["error"]["message"] and "10000000" in refused["error"]["message"], refused
        # nothing was sent: the next transaction takes nonce 1 and succeeds
        answer = rpc_post(url, raw(1, 100_000, bytes.fromhex("00")), timeout=PROMPT_S)
        assert node.w3.eth.get_transaction_receipt(answer["result"])["status"] == 1


def test_a_call_asking_for_more_gas_than_the_cap_gets_the_cap() -> None:
    with served_chain() as (node, url):
        gas_left = "0x5a5f5260205ff3"  # init code returning GAS: what the call was given, less 2
        call = {"from": node.w3.eth.accounts[0], "data": gas_left, "gas": hex(30_000_000)}
        answer = rpc_post(url, {"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [call, "latest"]},
                          timeout=PROMPT_S)  # fmt: skip
        assert 9_900_000 < int(answer["result"], 16) <= 10_000_000, answer

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from support import compose_with

from deai_flower.chain import simulation_key
from deai_flower.chain.node import ChainNode
from deai_flower.simulation import experiment
from deai_flower.simulation.experiment import run_experiment
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

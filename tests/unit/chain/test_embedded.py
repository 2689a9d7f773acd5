"""The embedded chain's indexes answer exactly what eth-tester's full walks answer."""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi import encode
from eth_tester import PyEVMBackend
from eth_tester.exceptions import TransactionNotFound
from support import deploy_for_tests

from deai_flower.chain import RoundsContract, connect_embedded, simulation_key
from deai_flower.chain.node import ChainNode, JsonRpcError, to_wire


def _scanned(node: ChainNode, query: dict[str, Any]) -> Any:
    """eth-tester's own answer: every block of the range read (the index bypassed)."""
    try:
        return to_wire(node.w3.manager.request_blocking("eth_getLogs", [query]))
    except Exception as exc:  # noqa: BLE001 - compared by kind with the indexed answer's error
        return ("error", type(exc).__name__)


def _indexed(node: ChainNode, query: dict[str, Any]) -> Any:
    try:
        return node.request("eth_getLogs", [query])
    except JsonRpcError as exc:
        return ("error", type(exc.__cause__).__name__)


def _word(value: int) -> str:
    return "0x" + encode(["uint256"], [value]).hex()


def _queries(node: ChainNode, addresses: list[str]) -> list[dict[str, Any]]:
    head = int(node.request("eth_blockNumber", []), 16)
    logs = _scanned(node, {"fromBlock": "0x0"})
    first_topics = [log["topics"][0] for log in logs]
    registered = max(set(first_topics), key=first_topics.count)  # the registrations' event
    created = next(log["topics"][0] for log in logs if log["topics"][0] != registered and len(log["topics"]) >= 2
                   and log["topics"][1] in (_word(0), _word(1)))  # a run's creation (indexed by its id)
    ranges = [{}, {"fromBlock": "0x0"}, {"fromBlock": "0x0", "toBlock": "latest"}, {"fromBlock": hex(head // 2)},
              {"fromBlock": hex(head // 3), "toBlock": hex(2 * head // 3)}, {"fromBlock": "latest"},
              {"fromBlock": hex(head), "toBlock": hex(head)}, {"fromBlock": hex(head - 1), "toBlock": hex(3)},
              {"fromBlock": "0x0", "toBlock": hex(head + 5)}, {"fromBlock": "earliest"}]  # fmt: skip
    selectors: list[dict[str, Any]] = [
        {}, {"address": addresses[0]}, {"address": [addresses[1]]}, {"address": [a.lower() for a in addresses]},
        {"address": [addresses[0], addresses[0]]}, {"address": "0x" + "11" * 20},
        {"topics": []}, {"topics": [registered]}, {"address": [addresses[1]], "topics": [registered]},
        {"topics": [None, _word(1)]}, {"topics": [created, _word(1)]}, {"topics": [created, _word(2)]},
        {"topics": [created, None, None, None]}, {"topics": [registered.upper().replace("0X", "0x")]},
        {"topics": [[registered, created]]},
    ]  # fmt: skip
    return [{**r, **s} for r in ranges for s in selectors]


@pytest.fixture
def busy_chain() -> tuple[ChainNode, list[str]]:
    """Two deployments of the contract, registrations, runs and plain transfers, interleaved."""
    node = connect_embedded()
    first = deploy_for_tests(node)
    other_key = simulation_key(seed=7, role="second admin")
    node.fund([other_key.address])
    second, _ = RoundsContract.deploy(node, other_key)
    for i in range(4):
        second.register(simulation_key(seed=7, role=f"member-{i}").address, bytes([i]) * 32)
        node.fund([simulation_key(seed=7, role=f"bystander-{i}").address])  # blocks without logs
    first.create_run()
    first.create_run()
    return node, [first.admin.address, second.address]


def test_log_queries_answer_what_a_full_scan_answers(busy_chain: tuple[ChainNode, list[str]]) -> None:
    node, addresses = busy_chain
    assert node._log_index is not None
    answered = 0
    for query in _queries(node, addresses):
        expected = _scanned(node, query)
        assert _indexed(node, query) == expected, query
        answered += bool(expected) and not isinstance(expected, tuple)
    assert answered > 50  # the filters select something, not only nothing


def test_the_index_drops_blocks_a_revert_takes_out_and_indexes_their_replacements(
    busy_chain: tuple[ChainNode, list[str]],
) -> None:
    node, addresses = busy_chain
    tester = node._tester
    snapshot = tester.take_snapshot()
    third = simulation_key(seed=8, role="admin")
    node.fund([third.address])
    RoundsContract.deploy(node, third)
    node.request("eth_getLogs", [{"fromBlock": "0x0"}])  # indexed, then reverted away
    tester.revert_to_snapshot(snapshot)
    node.fund([simulation_key(seed=9, role="after revert").address])
    again, _ = RoundsContract.deploy(node, simulation_key(seed=123, role="coordinator"))
    again.register(third.address, b"\x09" * 32)
    for query in _queries(node, [*addresses, again.address])[::3]:
        assert _indexed(node, query) == _scanned(node, query), query


def test_receipts_found_by_hash_are_those_the_walk_finds(busy_chain: tuple[ChainNode, list[str]]) -> None:
    node, _ = busy_chain
    backend = node._tester.backend
    chain = backend.chain
    hashes = [tx.hash for n in range(chain.get_block().number) for tx in chain.get_canonical_block_by_number(n).transactions]
    assert len(hashes) > 15
    for tx_hash in hashes:
        assert backend.get_transaction_receipt(tx_hash) == PyEVMBackend.get_transaction_receipt(backend, tx_hash)
        assert backend.get_transaction_by_hash(tx_hash) == PyEVMBackend.get_transaction_by_hash(backend, tx_hash)
    snapshot = node._tester.take_snapshot()
    gone = node.w3.eth.send_transaction({"from": node.w3.eth.accounts[0], "to": "0x" + "22" * 20, "value": 1})
    node._tester.revert_to_snapshot(snapshot)
    with pytest.raises(TransactionNotFound):  # reverted away: not found through a stale index entry
        backend.get_transaction_receipt(bytes(gone))


def test_gas_estimates_are_py_evms_own_over_a_whole_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every estimate of deploying, registering, opening, committing, revealing and
    attesting (the finalizing attestation included) equals py-evm's bisection, from fewer runs."""
    import importlib.util
    import sys
    from pathlib import Path

    from eth.estimators.gas import binary_gas_search_intrinsic_tolerance

    from deai_flower.chain import embedded

    spec = importlib.util.spec_from_file_location("contract_cases", Path(__file__).with_name("test_contract.py"))
    assert spec is not None and spec.loader is not None
    cases = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, cases)  # its dataclasses look themselves up there
    spec.loader.exec_module(cases)  # its round helpers: commit, reveal, attest

    runs = {"ours": 0, "py-evm": 0}
    compared: list[int] = []
    real_consumed = embedded._consumed

    def counted(state: Any, transaction: Any) -> int | None:
        runs["ours"] += 1
        return real_consumed(state, transaction)

    def both(state: Any, transaction: Any) -> int:
        from eth.estimators import gas

        before = runs["ours"]
        real_error = gas._get_computation_error

        def counted_error(s: Any, t: Any) -> Any:
            runs["py-evm"] += 1
            return real_error(s, t)

        monkeypatch.setattr(gas, "_get_computation_error", counted_error)
        try:
            expected = binary_gas_search_intrinsic_tolerance(state, transaction)
        finally:
            monkeypatch.setattr(gas, "_get_computation_error", real_error)
        ours = embedded.estimate_gas(state, transaction)
        assert ours == expected
        assert runs["ours"] > before
        compared.append(ours)
        return ours

    monkeypatch.setattr(embedded, "_consumed", counted)
    node = connect_embedded()
    chain = node._tester.backend.chain
    type(chain).gas_estimator = staticmethod(both)
    chain.gas_estimator = both
    d = deploy_for_tests(node)
    run_id = d.create_run()
    cases.full_round(d, run_id)
    cases.full_round(d, run_id)
    assert len([gas for gas in compared if gas > 100_000]) >= 3, compared  # contract calls, not only transfers
    assert runs["ours"] < runs["py-evm"]

"""What only a real node shows: the same gas as the embedded chain; redeploys on one node."""

from __future__ import annotations

from support import Deployment, cid_of, deploy_for_tests

from deai_flower.chain import ChainNode, DpParams, commitment_of, connect_embedded, simulation_key
from deai_flower.protocol.outcome import encode_outcome

DP = DpParams.from_floats(noise_multiplier=1.1, sample_rate=0.1, steps=10, delta=1e-5, epsilon=1.0, accountant="rdp")


def _calldata_gas(node: ChainNode, tx_hash: str) -> int:
    data = bytes(node.w3.eth.get_transaction(tx_hash)["input"])
    return sum(4 if b == 0 else 16 for b in data)


def _two_rounds(d: Deployment) -> dict[str, list[int]]:
    """Gas of every call of a second (steady) round, calldata cost removed (the finalizing
    attestation includes opening round 3)."""
    run_id = d.create_run()
    gas: dict[str, list[int]] = {}
    for index in (1, 2):
        gas = {"openRound": [], "commit": [], "reveal": [], "attest": []}
        if index == 1:  # later rounds are opened by the attestation that finalizes the one before
            round_id, tx = d.admin.open_round(run_id)
            gas["openRound"].append(tx.gas_used - _calldata_gas(d.node, tx.tx_hash))
        else:
            round_id = int(d.admin.get_run(run_id)["currentRound"])
        salts = [bytes([i + 1, index]) * 16 for i in range(3)]
        for i in range(3):
            c = d.as_client(i)
            commitment = commitment_of(chain_id=d.node.chain_id, contract=c.address, run_id=run_id,
                                       round_id=round_id, participant=c.account.address, cid=cid_of(i + 10 * index),
                                       num_examples=100 + i, dp=DP, salt=salts[i])  # fmt: skip
            tx = c.commit(run_id, round_id, commitment)
            gas["commit"].append(tx.gas_used - _calldata_gas(d.node, tx.tx_hash))
        for i in range(3):
            tx = d.as_client(i).reveal(run_id, round_id, cid=cid_of(i + 10 * index), num_examples=100 + i, dp=DP,
                                       salt=salts[i])  # fmt: skip
            gas["reveal"].append(tx.gas_used - _calldata_gas(d.node, tx.tx_hash))
        outcome = encode_outcome({d.clients[i].address: 1 for i in range(3)}, {})  # every revealer aggregated
        for i in range(2):
            tx = d.as_client(i).attest(run_id, round_id, cid_of(99 + index, 0x70), outcome)
            gas["attest"].append(tx.gas_used - _calldata_gas(d.node, tx.tx_hash))
    return gas


def test_gas_equals_the_embedded_chain(deployment: Deployment) -> None:
    """anvil charges what the embedded chain charges, call by call (calldata aside, since
    commitments bind the chain id)."""
    assert _two_rounds(deployment) == _two_rounds(deploy_for_tests(connect_embedded()))


def test_a_second_deployment_on_the_same_node_works(chain_node: ChainNode) -> None:
    first = deploy_for_tests(chain_node)  # registers clients 0-2 with the same keys
    second = deploy_for_tests(chain_node)
    assert first.admin.address != second.admin.address
    for d in (first, second):
        run_id = d.create_run(quorum=1, minReveals=1)
        round_id, _ = d.admin.open_round(run_id)
        assert d.admin.phase(run_id, round_id) == "commit"


def test_a_transaction_is_an_estimate_and_a_synchronous_send(deployment: Deployment, monkeypatch) -> None:
    """anvil implements EIP-7966: the receipt comes back with the send, no polling."""
    d = deployment
    d.create_run()  # the admin's nonce is known from here on
    methods: list[str] = []
    real = ChainNode.request
    monkeypatch.setattr(ChainNode, "request", lambda node, m, p: (methods.append(m), real(node, m, p))[1])
    tx = d.admin.register(simulation_key(seed=5, role="late joiner").address, b"\x07" * 32)
    assert methods == ["eth_estimateGas", "eth_sendRawTransactionSync"]
    assert d.node._sync_send is True and tx.gas_used > 21_000

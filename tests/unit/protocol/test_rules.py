"""Aggregation is bit-identical whatever the order of the revealed updates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deai_flower.errors import ConfigError
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from deai_flower.protocol.rules import RevealedUpdate, aggregate, canonical_order, minimum_updates
from deai_flower.flower_compat import task_identity


def make_updates(seed: int, n: int) -> list[RevealedUpdate]:
    rng = np.random.default_rng(seed)
    return [
        RevealedUpdate(
            participant="0x" + rng.bytes(20).hex(),
            num_examples=int(rng.integers(1, 500)),
            arrays={"w": rng.normal(size=(7, 5)).astype(np.float32), "b": rng.normal(size=(5,)).astype(np.float32)},
        )
        for _ in range(n)
    ]


RULE_PARAMS = {
    "fedavg": {},
    "fedmedian": {},
    "fedtrimmedavg": {"beta": 0.2},
    "krum": {"num_malicious_nodes": 1},
    "multikrum": {"num_malicious_nodes": 1, "num_nodes_to_select": 2},
    "bulyan": {"num_malicious_nodes": 1},
}


@settings(max_examples=15, deadline=None)
@pytest.mark.parametrize("rule", sorted(RULE_PARAMS))
@given(seed=st.integers(0, 2**32 - 1), extra=st.integers(0, 3), data=st.data())
def test_every_rule_is_bit_identical_under_shuffles(rule: str, seed: int, extra: int, data: st.DataObject) -> None:
    params = RULE_PARAMS[rule]
    updates = make_updates(seed, minimum_updates(rule, params) + extra)
    shuffled = data.draw(st.permutations(updates))
    a, b = aggregate(rule, updates, params), aggregate(rule, shuffled, params)
    assert a.keys() == b.keys() == updates[0].arrays.keys()
    for name in a:
        assert a[name].dtype == np.float32 and a[name].shape == updates[0].arrays[name].shape
        assert a[name].tobytes() == b[name].tobytes()


def test_median_and_krum_ignore_one_outlier() -> None:
    updates = make_updates(11, 6)
    honest = aggregate("fedmedian", updates[1:])
    poisoned = [RevealedUpdate(updates[0].participant, updates[0].num_examples,
                               {k: v * 1000 for k, v in updates[0].arrays.items()})] + updates[1:]  # fmt: skip
    assert np.abs(aggregate("fedmedian", poisoned)["w"]).max() < 10
    assert np.abs(aggregate("fedavg", poisoned)["w"]).max() > 100
    chosen = aggregate("krum", poisoned, {"num_malicious_nodes": 1})["w"]
    assert any(np.array_equal(chosen, u.arrays["w"]) for u in updates[1:])
    assert np.abs(honest["w"]).max() < 10


def test_rules_refuse_too_few_updates() -> None:
    with pytest.raises(ValueError, match="needs at least 7 updates"):
        aggregate("bulyan", make_updates(1, 6), {"num_malicious_nodes": 1})


def test_fedavg_is_the_example_weighted_mean() -> None:
    updates = make_updates(3, 4)
    total = sum(u.num_examples for u in updates)
    expected = sum(u.arrays["w"].astype(np.float64) * u.num_examples for u in canonical_order(updates)) / total
    np.testing.assert_allclose(aggregate("fedavg", updates)["w"], expected.astype(np.float32), rtol=1e-6)


def test_canonical_order_rejects_duplicates_and_sorts_by_address() -> None:
    updates = make_updates(5, 3)
    ordered = canonical_order(updates)
    assert [int(u.participant, 16) for u in ordered] == sorted(int(u.participant, 16) for u in updates)
    with pytest.raises(ValueError, match="same participant"):
        canonical_order([updates[0], updates[0]])


def test_unknown_rule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown aggregation rule 'krum2'"):
        aggregate("krum2", make_updates(1, 2))


def flower_aggregate(strategy, updates: list[RevealedUpdate]) -> dict[str, np.ndarray]:
    """Flower's own aggregate_train on the updates (float64, in the given order)."""
    with task_identity(run_id=1, node_id=1):
        replies = []
        for u in updates:
            request = Message(RecordDict(), dst_node_id=1, message_type="train")
            content = RecordDict({"arrays": ArrayRecord({k: Array(v.astype(np.float64)) for k, v in u.arrays.items()}),
                                  "metrics": MetricRecord({"num-examples": u.num_examples})})  # fmt: skip
            replies.append(Message(content, reply_to=request))
        result, _ = strategy.aggregate_train(1, replies)
    return {k: v.numpy() for k, v in result.items()}


@pytest.mark.parametrize("rule,flower", [("fedavg", FedAvg), ("fedmedian", FedMedian)])
def test_fedavg_and_median_are_flowers_bit_for_bit(rule: str, flower) -> None:
    updates = canonical_order(make_updates(9, 6))
    ours = aggregate(rule, updates)
    theirs = flower_aggregate(flower(), updates)
    for name in ours:
        assert ours[name].tobytes() == theirs[name].astype(np.float32).tobytes()


@pytest.mark.parametrize(
    "rule,flower",
    [
        ("fedtrimmedavg", lambda: FedTrimmedAvg(beta=0.2)),
        ("krum", lambda: Krum(num_malicious_nodes=1)),
        ("multikrum", lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=2)),
        ("bulyan", lambda: Bulyan(num_malicious_nodes=1)),
    ],
)
def test_deterministic_rules_agree_with_flowers_definitions(rule: str, flower) -> None:
    """Our machine-independent arithmetic computes what Flower's strategy computes."""
    params = RULE_PARAMS[rule]
    updates = canonical_order(make_updates(21, 8))
    ours = aggregate(rule, updates, params)
    theirs = flower_aggregate(flower(), updates)
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name].astype(np.float32), rtol=1e-5, atol=1e-6)

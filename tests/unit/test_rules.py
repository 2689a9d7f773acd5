"""Aggregation is bit-identical whatever the order of the revealed updates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deai_flower.errors import ConfigError
from deai_flower.strategies import RevealedUpdate, aggregate, canonical_order


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


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 8), data=st.data())
def test_fedavg_is_bit_identical_under_shuffles(seed: int, n: int, data: st.DataObject) -> None:
    updates = make_updates(seed, n)
    shuffled = data.draw(st.permutations(updates))
    a, b = aggregate("fedavg", updates), aggregate("fedavg", shuffled)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == np.float32
        assert a[name].tobytes() == b[name].tobytes()


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

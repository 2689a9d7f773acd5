"""A round's sample (protocol §2.2, §2.5): one function the coordinator, attesters and the
verifier share, and it is the contract's rule (the per-index rule the chain tests pin)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from deai_flower.protocol.encoding import in_committee, is_sampled
from deai_flower.protocol.sampling import round_sample

BEACON = bytes(range(32))


@settings(max_examples=60, deadline=None)
@given(
    beacon=st.binary(min_size=32, max_size=32),
    size=st.integers(min_value=1, max_value=40),
    sample_bps=st.integers(min_value=1, max_value=10_000),
    committee_size=st.integers(min_value=0, max_value=45),
)
def test_the_sample_is_the_contracts_rule_index_by_index(beacon: bytes, size: int, sample_bps: int,
                                                         committee_size: int) -> None:  # fmt: skip
    sample = round_sample(beacon=beacon, registry_size=size, registry_epoch=5, sample_bps=sample_bps,
                          committee_size=committee_size)  # fmt: skip
    for index in range(size):
        sampled = sample.position(index=index, epoch=5) is not None
        assert sampled == is_sampled(beacon=beacon, sample_bps=sample_bps, index=index, registry_size=size)
        assert sample.in_committee(index=index, epoch=5) == in_committee(
            beacon=beacon, sample_bps=sample_bps, committee_size=committee_size, index=index, registry_size=size)
        assert sample.position(index=index, epoch=6) is None  # assigned after the round opened: sits it out


def test_members_follow_the_registry_now_and_the_committee_its_positions() -> None:
    sample = round_sample(beacon=BEACON, registry_size=6, registry_epoch=2, sample_bps=10_000, committee_size=3)
    registry = [f"0x{i}" for i in range(6)]
    positions = sample.members(registry)
    assert sorted(positions.values()) == list(range(6)) and list(positions.values()) == list(range(6))
    # index 5 revoked (not refilled) and index 4's holder newer than the round: both sit it out
    newer = registry[4]
    shrunk = sample.members(registry[:5], entry_epoch=lambda address: 3 if address == newer else 1)
    assert set(shrunk) == set(registry[:4])
    seated = [a for a, p in positions.items() if p < 3]
    assert sample.committee(positions, reversed(registry)) == seated  # in shuffle order, whoever asks
    assert sample.committee(positions, [a for a in registry if a not in seated]) == []

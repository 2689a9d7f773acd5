"""Python encodings equal the contract's, byte for byte (property tests on real bytecode)."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from deai_flower.chain import DpParams, RoundsContract, commitment_of, connect_embedded, from_wad, simulation_key
import pytest

from deai_flower.chain import beacon_of
from deai_flower.protocol.encoding import REVEAL_RECORD_BYTES, UINT128_MAX, parse_reveal_record, reveal_record, to_wad


@cache
def contract() -> RoundsContract:
    node = connect_embedded()
    admin = simulation_key(seed=7, role="coordinator")
    node.fund([admin.address])
    deployed, _ = RoundsContract.deploy(node, admin)
    return deployed


uint128 = st.integers(min_value=0, max_value=UINT128_MAX)
dp_params = st.builds(
    DpParams,
    noise_multiplier_wad=uint128,
    sample_rate_wad=uint128,
    steps=st.integers(min_value=0, max_value=2**32 - 1),
    delta_wad=uint128,
    epsilon_wad=uint128,
    accountant=st.integers(min_value=0, max_value=2),
)
addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())


@settings(max_examples=40, deadline=None)
@given(
    run_id=st.integers(min_value=0, max_value=2**256 - 1),
    round_id=st.integers(min_value=0, max_value=2**32 - 1),
    participant=addresses,
    cid=st.binary(min_size=36, max_size=36),
    num_examples=st.integers(min_value=0, max_value=2**64 - 1),
    dp=dp_params,
    salt=st.binary(min_size=32, max_size=32),
)
def test_commitment_matches_contract(run_id, round_id, participant, cid, num_examples, dp, salt) -> None:
    c = contract()
    ours = commitment_of(chain_id=c.node.chain_id, contract=c.address, run_id=run_id, round_id=round_id,
                         participant=participant, cid=cid, num_examples=num_examples, dp=dp, salt=salt)  # fmt: skip
    theirs = c.commitment_of(run_id, round_id, participant, cid=cid, num_examples=num_examples, dp=dp, salt=salt)
    assert ours == theirs


@given(st.binary(min_size=20, max_size=20), st.binary(min_size=20, max_size=20))
def test_commitment_binds_the_sender(a: bytes, b: bytes) -> None:
    dp = DpParams.from_floats(noise_multiplier=1.0, sample_rate=0.1, steps=1, delta=1e-5, epsilon=1.0, accountant="rdp")
    common = dict(chain_id=1, contract="0x" + "11" * 20, run_id=1, round_id=1, cid=b"x" * 36, num_examples=1, dp=dp,
                  salt=b"\x00" * 32)  # fmt: skip
    same = commitment_of(participant="0x" + a.hex(), **common) == commitment_of(participant="0x" + b.hex(), **common)
    assert same == (a == b)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_wad_roundtrip(value: float) -> None:
    assert math.isclose(from_wad(to_wad(value)), value, rel_tol=1e-12, abs_tol=1e-18)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_wad_is_the_exact_value_rounded_to_nearest(value: float) -> None:
    """The double's exact binary value times 10^18, ties to even: no float product in between."""
    exact = Fraction(value) * 10**18
    assert to_wad(value) == round(exact)
    assert abs(to_wad(value) - exact) <= Fraction(1, 2)


def test_a_dyadic_sigma_keeps_its_low_digits() -> None:
    assert to_wad(1.38916015625) == 1_389_160_156_250_000_000  # float multiplication gave ...249999872
    assert to_wad(1e-5) == 10_000_000_000_000


def test_infinity_is_the_saturated_value() -> None:
    assert to_wad(math.inf) == UINT128_MAX and from_wad(UINT128_MAX) == math.inf


@settings(max_examples=40, deadline=None)
@given(
    run_id=st.integers(min_value=0, max_value=2**256 - 1),
    round_id=st.integers(min_value=0, max_value=2**32 - 1),
    model_cid=st.binary(min_size=36, max_size=36),
)
def test_beacon_matches_contract(run_id: int, round_id: int, model_cid: bytes) -> None:
    c = contract()
    ours = beacon_of(chain_id=c.node.chain_id, contract=c.address, run_id=run_id, round_id=round_id,
                     model_cid=model_cid)  # fmt: skip
    assert ours == c.beacon_of(run_id, round_id, model_cid)


@given(cid=st.binary(min_size=36, max_size=36), num_examples=st.integers(min_value=0, max_value=2**64 - 1),
       dp=dp_params, salt=st.binary(min_size=32, max_size=32))  # fmt: skip
def test_reveal_record_roundtrips(cid: bytes, num_examples: int, dp: DpParams, salt: bytes) -> None:
    record = reveal_record(cid=cid, num_examples=num_examples, dp=dp, salt=salt)
    assert len(record) == REVEAL_RECORD_BYTES
    parsed = parse_reveal_record(record)
    assert (parsed.cid, parsed.num_examples, parsed.dp, parsed.salt) == (cid, num_examples, dp, salt)


def test_reveal_record_refuses_other_lengths() -> None:
    dp = DpParams.from_floats(noise_multiplier=1.0, sample_rate=0.1, steps=1, delta=1e-5, epsilon=1.0, accountant="rdp")
    with pytest.raises(ValueError, match="36-byte"):
        reveal_record(cid=b"x" * 35, num_examples=1, dp=dp, salt=b"\x00" * 32)
    with pytest.raises(ValueError, match="145 bytes, got 144"):
        parse_reveal_record(b"\x00" * 144)

"""A round's outcome bytes: one canonical encoding in, nothing off-format accepted out."""

from __future__ import annotations

import dataclasses
import random

import pytest
from eth_utils import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from deai_flower.protocol.outcome import (
    OUTCOME_ENTRY_BYTES,
    VERDICTS,
    OutcomeEntry,
    Refusal,
    decode_outcome,
    encode_outcome,
)

A = "0x" + "11" * 20
B = "0x" + "22" * 20
C = "0x" + "ab" * 20


def _entry(key: int, score: int, code: int) -> bytes:
    return key.to_bytes(20, "big") + score.to_bytes(4, "big") + bytes([code])


def _spelled(key: int, style: int) -> str:
    """An address as callers may write it: lowercase, checksummed or upper-case hex."""
    raw = key.to_bytes(20, "big")
    return ("0x" + raw.hex(), to_checksum_address(raw), "0x" + raw.hex().upper())[style]


# address (as an integer) -> score (aggregated) or refusing verdict
_lines = st.dictionaries(
    st.integers(min_value=0, max_value=2**160 - 1),
    st.one_of(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from(VERDICTS[1:])),
    max_size=12,
)


@settings(max_examples=80, deadline=None)
@given(lines=_lines, styles=st.lists(st.integers(0, 2), min_size=12, max_size=12), seed=st.integers(0, 2**32 - 1))
def test_round_trip_is_sorted_and_byte_exact(lines: dict[int, int | str], styles: list[int], seed: int) -> None:
    items = list(lines.items())
    random.Random(seed).shuffle(items)
    scores = {_spelled(k, styles[i]): v for i, (k, v) in enumerate(items) if isinstance(v, int)}
    refused = {_spelled(k, styles[i]): v for i, (k, v) in enumerate(items) if isinstance(v, str)}

    data = encode_outcome(scores, refused)

    assert len(data) == OUTCOME_ENTRY_BYTES * len(lines)
    expected = b"".join(
        _entry(k, v, 0) if isinstance(v, int) else _entry(k, 0, VERDICTS.index(v)) for k, v in sorted(lines.items())
    )
    assert data == expected
    # the order of the input maps does not matter
    assert encode_outcome(dict(reversed(scores.items())), dict(reversed(refused.items()))) == data
    decoded = decode_outcome(data)
    assert decoded == [
        OutcomeEntry(to_checksum_address(k.to_bytes(20, "big")), v if isinstance(v, int) else 0,
                     "aggregated" if isinstance(v, int) else v)  # fmt: skip
        for k, v in sorted(lines.items())
    ]
    assert all(e.participant == to_checksum_address(e.participant) for e in decoded)


def test_sorting_is_numeric_not_by_spelling() -> None:
    # as strings "0xB0.." < "0xa0.." (upper case sorts first); as 160-bit integers 0xa0.. < 0xb0..
    low, high = "0xa0" + "00" * 19, "0xB0" + "00" * 19
    assert sorted([low, high]) == [high, low]
    data = encode_outcome({high: 7, low: 9}, {})
    assert data == _entry(int(low, 16), 9, 0) + _entry(int(high, 16), 7, 0)
    assert [e.score for e in decode_outcome(data)] == [9, 7]


def test_byte_layout_of_one_entry() -> None:
    data = encode_outcome({A: 0x01020304}, {B: "dp-claims"})
    assert data[:20] == bytes.fromhex("11" * 20)
    assert data[20:24] == b"\x01\x02\x03\x04"  # big-endian uint32
    assert data[24] == 0  # aggregated
    assert data[25:45] == bytes.fromhex("22" * 20)
    assert data[45:49] == b"\x00\x00\x00\x00"
    assert data[49] == VERDICTS.index("dp-claims") == 3


def test_empty_outcome() -> None:
    assert encode_outcome({}, {}) == b""
    assert decode_outcome(b"") == []


def test_score_bounds() -> None:
    assert decode_outcome(encode_outcome({A: 2**32 - 1}, {}))[0].score == 2**32 - 1
    assert decode_outcome(encode_outcome({A: 0}, {}))[0] == OutcomeEntry(to_checksum_address(A), 0, "aggregated")
    for bad in (-1, 2**32, 2**64):
        with pytest.raises(ValueError, match="is not a uint32"):
            encode_outcome({A: bad}, {})


@pytest.mark.parametrize("spelling", [C, to_checksum_address(C), "0x" + "AB" * 20])
def test_an_address_cannot_be_both_scored_and_refused(spelling: str) -> None:
    with pytest.raises(ValueError, match="both aggregated and refused"):
        encode_outcome({C: 5}, {spelling: "invalid"})


def test_a_refusal_needs_a_refusing_verdict() -> None:
    with pytest.raises(ValueError, match="refusing verdict, not 'aggregated'"):
        encode_outcome({}, {A: "aggregated"})
    with pytest.raises(ValueError):
        encode_outcome({}, {A: "no-such-verdict"})


@pytest.mark.parametrize("length", [1, 24, 26, 49, 51])
def test_decode_refuses_partial_entries(length: int) -> None:
    with pytest.raises(ValueError, match=f"{length} bytes is not made of 25-byte entries"):
        decode_outcome(bytes(length))


def test_decode_refuses_unsorted_and_duplicate_addresses() -> None:
    a, b = _entry(int(A, 16), 1, 0), _entry(int(B, 16), 2, 0)
    assert len(decode_outcome(a + b)) == 2
    with pytest.raises(ValueError, match="strictly ascending"):
        decode_outcome(b + a)
    with pytest.raises(ValueError, match="strictly ascending"):
        decode_outcome(a + a)
    with pytest.raises(ValueError, match="strictly ascending"):
        decode_outcome(a + _entry(int(A, 16), 0, 1))  # same address, different line


def test_decode_accepts_the_zero_address_first() -> None:
    assert decode_outcome(_entry(0, 3, 0))[0] == OutcomeEntry("0x" + "00" * 20, 3, "aggregated")


@pytest.mark.parametrize("code", [len(VERDICTS), 5, 255])
def test_decode_refuses_unknown_verdict_codes(code: int) -> None:
    with pytest.raises(ValueError, match=f"unknown verdict code {code}"):
        decode_outcome(_entry(int(A, 16), 0, code))


@pytest.mark.parametrize("code", range(1, len(VERDICTS)))
def test_decode_refuses_a_refused_entry_with_a_score(code: int) -> None:
    assert decode_outcome(_entry(int(A, 16), 0, code))[0].verdict == VERDICTS[code]
    with pytest.raises(ValueError, match="refused update has a non-zero score"):
        decode_outcome(_entry(int(A, 16), 1, code))


def test_decode_checksums_addresses() -> None:
    (entry,) = decode_outcome(_entry(int(C, 16), 42, 0))
    assert entry.participant == to_checksum_address(C)
    assert entry.participant != C and entry.participant.lower() == C  # mixed case, same address


def test_refusal_prints_its_reason() -> None:
    refusal = Refusal("invalid", "tensor fc1.weight has shape [3, 4]")
    assert str(refusal) == "tensor fc1.weight has shape [3, 4]"
    assert f"{refusal}" == refusal.reason and refusal.verdict == "invalid"
    with pytest.raises(dataclasses.FrozenInstanceError):
        refusal.reason = "other"  # type: ignore[misc]

"""The run spec's incentives: stake, reward pool, scoring and slashing amounts."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deai_flower.protocol.spec import SPEC_FORMAT, IncentivesSpec, RunSpec, SpecError
from unit.protocol.test_spec import make_spec

MAX = 2**128 - 1
TOKEN = "0x" + "aB" * 20
CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def incentives(**changes: object) -> IncentivesSpec:
    base = IncentivesSpec(score="loss", validation_cid=CID, stake_token=TOKEN, stake=10**18, reward_pool=10**19,
                          slash_missing_reveal=10**17, slash_refused=5 * 10**17, slash_minority=2 * 10**17)  # fmt: skip
    return dataclasses.replace(base, **changes)


def _document(spec: RunSpec) -> dict:  # type: ignore[type-arg]
    return json.loads(spec.to_bytes())


def test_defaults_are_an_unfunded_alignment_run() -> None:
    assert make_spec().incentives == IncentivesSpec("alignment", "", "", 0, 0, 0, 0, 0, 1_000)
    assert _document(make_spec())["incentives"] == {
        "score": "alignment", "validation_cid": "", "stake_token": "", "stake": 0, "reward_pool": 0,
        "slash_missing_reveal": 0, "slash_refused": 0, "slash_minority": 0, "attester_share_bps": 1_000,
    }  # fmt: skip
    assert _document(make_spec())["format"] == SPEC_FORMAT == "deai-flower/run-spec/3"


def test_non_default_incentives_round_trip_byte_identically() -> None:
    spec = make_spec(incentives=incentives())
    data = spec.to_bytes()
    parsed = RunSpec.from_bytes(data)
    assert parsed.incentives == spec.incentives
    assert parsed.to_bytes() == data
    assert parsed.digest() == spec.digest()
    assert b'"stake_token":"0xaBaBaBaBaBaBaBaBaBaBaBaBaBaBaBaBaBaBaBaB"' in data  # kept as written


amounts = st.integers(min_value=0, max_value=MAX)


@settings(max_examples=60, deadline=None)
@given(pool=amounts, stake=amounts, data=st.data())
def test_big_wei_amounts_survive_exactly(pool: int, stake: int, data: st.DataObject) -> None:
    slash = st.integers(min_value=0, max_value=stake)
    minority = st.integers(min_value=0, max_value=min(stake, 2**96 - 1))
    drawn = {"slash_missing_reveal": data.draw(slash), "slash_refused": data.draw(slash),
             "slash_minority": data.draw(minority)}  # fmt: skip
    spec = make_spec(incentives=incentives(stake=stake, reward_pool=pool, **drawn))
    data_bytes = spec.to_bytes()
    parsed = RunSpec.from_bytes(data_bytes)
    assert parsed.incentives == spec.incentives  # ints, not floats: no rounding at 2**128
    assert json.loads(data_bytes)["incentives"]["stake"] == stake
    assert str(stake).encode() in data_bytes


def test_the_largest_amounts_are_written_as_integers() -> None:
    spec = make_spec(incentives=incentives(stake=MAX, reward_pool=MAX, slash_missing_reveal=MAX, slash_refused=MAX))
    data = spec.to_bytes()
    assert f'"reward_pool":{MAX},'.encode() in data and b"e+" not in data
    assert RunSpec.from_bytes(data).incentives.reward_pool == MAX


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"score": "shapley"}, "incentives.score must be one of alignment, loss, shares (got 'shapley')"),
        ({"score": ""}, "incentives.score must be one of alignment, loss, shares (got '')"),
        ({"score": "loss", "validation_cid": ""}, "incentives.score 'loss' needs incentives.validation_cid"),
        ({"stake_token": "0x1234"}, "incentives.stake_token must be a 0x address or empty (got '0x1234')"),
        ({"stake_token": "ab" * 21}, "incentives.stake_token must be a 0x address or empty"),
        ({"stake_token": "0x" + "g" * 40}, "incentives.stake_token must be a 0x address or empty"),
        ({"stake_token": "0x" + "a" * 41}, "incentives.stake_token must be a 0x address or empty"),
        ({"stake": -1, "slash_missing_reveal": 0, "slash_refused": 0, "slash_minority": 0},
         "incentives.stake must be between 0 and 2**128 - 1 (got -1)"),
        ({"reward_pool": MAX + 1}, f"incentives.reward_pool must be between 0 and 2**128 - 1 (got {MAX + 1})"),
        ({"slash_refused": -5}, "incentives.slash_refused must be between 0 and 2**128 - 1 (got -5)"),
        ({"slash_missing_reveal": 10**18 + 1}, "no slashing amount may exceed the stake (1000000000000000000)"),
        ({"slash_refused": 10**18 + 1}, "no slashing amount may exceed the stake"),
        ({"slash_minority": 10**18 + 1}, "no slashing amount may exceed the stake"),
        ({"stake": 0}, "no slashing amount may exceed the stake (0)"),
        ({"stake": MAX, "slash_minority": 2**96}, "slash_minority must be at most 2**96 - 1"),
    ],
)
def test_each_problem_is_refused_by_check(changes: dict, reason: str) -> None:  # type: ignore[type-arg]
    spec = make_spec(incentives=incentives(**changes))
    with pytest.raises(SpecError, match="^run spec: .*" + _escaped(reason)):
        spec.check()
    with pytest.raises(SpecError, match=_escaped(reason)):  # and by the reader, which checks what it parsed
        RunSpec.from_bytes(spec.to_bytes())


def _escaped(text: str) -> str:
    return "".join("\\" + c if c in "()[]*+.?^$|{}" else c for c in text)


@pytest.mark.parametrize(
    "changes",
    [
        {"stake_token": ""},
        {"stake_token": "0x" + "00" * 20},
        {"score": "alignment", "validation_cid": ""},
        {"stake": 5, "slash_missing_reveal": 5, "slash_refused": 5, "slash_minority": 5},
        {"stake": MAX, "slash_minority": 2**96 - 1, "slash_refused": MAX},
        {"stake": 0, "reward_pool": MAX, "slash_missing_reveal": 0, "slash_refused": 0, "slash_minority": 0},
    ],
)
def test_limits_that_are_allowed(changes: dict) -> None:  # type: ignore[type-arg]
    make_spec(incentives=incentives(**changes)).check()


def test_problems_are_all_reported_together() -> None:
    spec = make_spec(incentives=incentives(score="nope", stake_token="x", reward_pool=-1))
    with pytest.raises(SpecError) as caught:
        spec.check()
    message = str(caught.value)
    assert "incentives.score" in message and "incentives.stake_token" in message and "incentives.reward_pool" in message
    assert message.count(";") == 2


def _mutated(mutate) -> bytes:  # type: ignore[no-untyped-def]
    document = _document(make_spec(incentives=incentives()))
    mutate(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_mutated(lambda d: d["incentives"].update(bonus=1)), "unknown key bonus in incentives"),
        (_mutated(lambda d: d.pop("incentives")), "missing incentives"),
        (_mutated(lambda d: d.update(incentives=[])), "incentives must be an object"),
        (_mutated(lambda d: d["incentives"].pop("slash_minority")), "missing incentives.slash_minority"),
        (_mutated(lambda d: d["incentives"].update(stake="1000")), "incentives.stake must be an integer"),
        (_mutated(lambda d: d["incentives"].update(stake=1e18)), "incentives.stake must be an integer"),
        (_mutated(lambda d: d["incentives"].update(stake=True)), "incentives.stake must be an integer"),
        (_mutated(lambda d: d["incentives"].update(stake_token=None)), "incentives.stake_token must be a string"),
        (_mutated(lambda d: d.update(format="deai-flower/run-spec/1")), "format 'deai-flower/run-spec/1' is not"),
    ],
)
def test_bad_incentives_objects_are_refused(data: bytes, reason: str) -> None:
    assert RunSpec.from_bytes(_mutated(lambda d: None)).incentives == incentives()
    with pytest.raises(SpecError, match=_escaped(reason)):
        RunSpec.from_bytes(data)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("score", "alignment"),
        ("validation_cid", CID[:-1] + "a"),
        ("stake_token", "0x" + "ab" * 20),  # the same address, other letter case: other bytes
        ("stake_token", ""),
        ("stake", 10**18 + 1),
        ("reward_pool", 10**19 - 1),
        ("slash_missing_reveal", 10**17 + 1),
        ("slash_refused", 5 * 10**17 - 1),
        ("slash_minority", 0),
    ],
)
def test_digest_changes_with_every_field(name: str, value: object) -> None:
    spec = make_spec(incentives=incentives())
    other = make_spec(incentives=incentives(**{name: value}))
    other.check()
    assert other.digest() != spec.digest()
    assert RunSpec.from_bytes(other.to_bytes()).digest() == other.digest()


def test_a_minority_slash_above_uint96_names_its_limit() -> None:
    spec = make_spec(incentives=incentives(stake=MAX, slash_minority=2**96))
    with pytest.raises(SpecError) as caught:
        spec.check()
    assert "2**96" in str(caught.value) or "uint96" in str(caught.value)

"""The run spec's canonical encoding, parsing errors and support checks."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deai_flower.protocol.cid import compute_cid
from deai_flower.protocol.spec import (
    DataSchema,
    ModelSpec,
    PrivacySpec,
    Release,
    RoundsSpec,
    RuleSpec,
    RunSpec,
    SpecError,
    TrainingSpec,
    spec_cid,
)


def make_spec(**changes: object) -> RunSpec:
    spec = RunSpec(
        model=ModelSpec("deai_flower.models.mlp", {"hidden": [64], "activation": "relu"}),
        data=DataSchema(num_features=64, num_classes=10, input_shape=(1, 8, 8)),
        rule=RuleSpec("krum", {"num_malicious_nodes": 1}),
        privacy=PrivacySpec(epsilon=8.0, delta=1e-5, max_grad_norm=1.0, accountant="rdp"),
        training=TrainingSpec(local_epochs=3, batch_size=64, learning_rate=0.5),
        rounds=RoundsSpec(num_rounds=5, commit_s=600, reveal_s=600, attest_s=600, sample_fraction=1.0, quorum=2,
                          min_reveals=5, committee_size=3),  # fmt: skip
        max_blob_bytes=64 * 2**20,
    )
    return dataclasses.replace(spec, **changes)


def test_round_trip_is_byte_identical_and_sorted() -> None:
    spec = make_spec()
    data = spec.to_bytes()
    assert RunSpec.from_bytes(data) == dataclasses.replace(spec, model=ModelSpec(spec.model.target, spec.model.args))
    assert RunSpec.from_bytes(data).to_bytes() == data
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()


def test_digest_names_the_cid_the_store_gives() -> None:
    spec = make_spec()
    assert spec_cid(spec.digest()) == compute_cid(spec.to_bytes())


def test_run_params_follow_from_the_spec_alone() -> None:
    """The on-chain RunParams of a spec: every field the contract takes, the spec's values
    in its units (WADs, basis points), and only the initial model and the release given."""
    spec = make_spec(rounds=dataclasses.replace(make_spec().rounds, sample_fraction=0.25),
                     privacy=PrivacySpec(epsilon=math.inf, delta=1e-5, max_grad_norm=1.0, accountant="rdp"))  # fmt: skip
    params = spec.run_params(initial_model_cid=b"\x01\x55", code_hash=b"\x02" * 32)
    assert list(params) == [
        "specHash", "codeHash", "initialModelCid", "epsilonBudgetWad", "deltaWad", "numRounds", "commitDuration",
        "revealDuration", "attestDuration", "sampleBps", "quorum", "minReveals", "committeeSize", "stakeToken",
        "stake", "rewardPool", "slashMissingReveal", "slashRefused", "slashMinority", "attesterShareBps",
    ]  # fmt: skip
    assert params["specHash"] == spec.digest() and params["initialModelCid"] == b"\x01\x55"
    assert params["sampleBps"] == 2_500 and params["committeeSize"] == 3 and params["minReveals"] == 5
    assert params["epsilonBudgetWad"] == 2**128 - 1 and params["deltaWad"] == 10**13  # ε = inf: uint128 max
    assert params["stakeToken"] == "0x" + "00" * 20 and params["stake"] == params["rewardPool"] == 0


def test_infinite_epsilon_is_a_string_and_non_private() -> None:
    spec = make_spec(privacy=PrivacySpec(math.inf, 1e-5, 1.0, "rdp"))
    assert b'"epsilon":"inf"' in spec.to_bytes()
    parsed = RunSpec.from_bytes(spec.to_bytes())
    assert math.isinf(parsed.privacy.epsilon) and not parsed.private
    assert make_spec().private


@given(st.floats(min_value=1e-3, max_value=1e3), st.floats(min_value=1e-9, max_value=0.5))
def test_floats_survive_the_encoding(epsilon: float, delta: float) -> None:
    spec = make_spec(privacy=PrivacySpec(epsilon, delta, 1.0, "prv"))
    parsed = RunSpec.from_bytes(spec.to_bytes())
    assert parsed.privacy == spec.privacy


def _mutated(mutate) -> bytes:  # type: ignore[no-untyped-def]
    document = json.loads(make_spec().to_bytes())
    mutate(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff", "not UTF-8 JSON"),
        (b"[1]", "must be an object"),
        (_mutated(lambda d: d.update(format="other/1")), "format 'other/1' is not supported"),
        (_mutated(lambda d: d.pop("rule")), "missing rule"),
        (_mutated(lambda d: d["training"].update(batch_size="64")), "training.batch_size must be an integer"),
        (_mutated(lambda d: d["training"].update(batch_size=True)), "training.batch_size must be an integer"),
        (_mutated(lambda d: d["privacy"].update(epsilon="lots")), "privacy.epsilon must be a number"),
        (_mutated(lambda d: d["rounds"].update(extra=1)), "unknown key extra in rounds"),
        (_mutated(lambda d: d.update(extra=1)), "unknown key extra in the document"),
        (_mutated(lambda d: d["data"].update(input_shape=[1, 8, 9])), "does not hold 64 features"),
        (_mutated(lambda d: d["rounds"].update(quorum=4)), "committee_size 0 or >= quorum"),
        (_mutated(lambda d: d["rounds"].update(quorum=6)), "1 <= quorum <= min_reveals"),
        (b"x" * 300_000, "more than"),
    ],
)
def test_bad_specs_are_refused_with_one_reason(data: bytes, reason: str) -> None:
    with pytest.raises(SpecError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        RunSpec.from_bytes(data)


def test_unsupported_rule_release_and_quorum_are_refused() -> None:
    make_spec().check_supported()
    with pytest.raises(SpecError, match="rule 'mean'"):
        make_spec(rule=RuleSpec("mean", {})).check_supported()
    with pytest.raises(SpecError, match="deai-flower 0.0.1"):
        make_spec(release=Release(deai_flower="0.0.1", libraries=Release.current().libraries)).check_supported()
    with pytest.raises(SpecError, match="numpy 0.1"):
        make_spec(release=Release(deai_flower=Release.current().deai_flower, libraries={"numpy": "0.1"})).check_supported()
    with pytest.raises(SpecError, match="min_reveals >= 5"):
        make_spec(rounds=dataclasses.replace(make_spec().rounds, min_reveals=2)).check_supported()

"""Attack: a participant reveals a privacy claim its own revealed parameters contradict.

Attesters recompute each reveal's cumulative ε from the participant's revealed (σ, q,
steps) history on chain, with the spec's δ and accountant, and check σ, q and steps
against the spec's DP-SGD settings; a reveal that understates ε or contradicts the spec
is excluded, with the reason, and `deai verify` reports it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message

from support import compose_with

from deai_flower.apps import client_app
from deai_flower.chain import simulation_key
from deai_flower.participant import handlers
from deai_flower.apps import participant_for
from deai_flower.participant.run_view import run_view
from deai_flower.privacy import PrivacyLedger
from deai_flower.protocol.encoding import DpParams
from deai_flower.protocol.judgment import dp_claim_problem
from deai_flower.protocol.spec import DataSchema, ModelSpec, PrivacySpec, RoundsSpec, RuleSpec, RunSpec, TrainingSpec
from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run


def _lying_app(attacker: int, monkeypatch: pytest.MonkeyPatch, **lie: Any) -> Any:
    """The real ClientApp; the ``attacker``'s trained round reveals ``lie`` instead."""
    attacker_data: list[Any] = []
    real_train_round = handlers.train_round

    def lying_train_round(**kwargs: Any) -> Any:
        trained = real_train_round(**kwargs)
        return dataclasses.replace(trained, **lie) if any(kwargs["x"] is x for x in attacker_data) else trained

    monkeypatch.setattr(handlers, "train_round", lying_train_round)

    def app(message: Message, context: Context) -> Message:
        if int(context.node_config["partition-id"]) == attacker and not attacker_data:
            config = message.content["config"]
            view = run_view(participant_for(message, context), str(config["contract"]), int(config["run-id"]))
            attacker_data.append(view.data.x)
        return client_app(message, context)

    return app


@pytest.mark.slow
@pytest.mark.parametrize("lie", [{"epsilon": 0.0}, {"noise_multiplier": 0.0, "steps": 0}])
def test_a_false_privacy_claim_is_excluded_by_every_attester_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lie: dict[str, Any]
) -> None:
    attacker = 2
    cfg = compose_with("num_clients=4", "num_rounds=2", "progress=false", "training.local_epochs=1")
    results = run_experiment(cfg, output_dir=tmp_path, client_app=_lying_app(attacker, monkeypatch, **lie))
    address = simulation_key(seed=0, role=f"client-{attacker}").address
    for r in results["rounds"]:
        assert r["status"] == "finalized", r["reason"]
        assert address in r["revealed"]
        assert address in r["excluded"] and "DP claims" in str(r["excluded"][address]), r["excluded"]
    verification = verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store"))
    problems = [p for v in verification for p in v.problems]
    # only the liar is reported (and results.json, which reports its claimed ε)
    assert problems and all(address in p or p.startswith("results.json") for p in problems), problems
    assert any("excluded" in p for p in problems)
    assert not any("finalized" in p for p in problems)  # the aggregate without it is the chain's


def test_epsilon_zero_for_known_parameters_is_refused(tmp_path: Path) -> None:
    """ε = 0 claimed for (σ=1.1, q=0.1, 10 steps), whose ε is 2.84 at δ=1e-5 (RDP)."""
    spec = _spec(batch_size=10)
    truth = PrivacyLedger(history=[(1.1, 0.1, 10)]).epsilon(1e-5, "rdp")
    honest = DpParams.from_floats(noise_multiplier=1.1, sample_rate=0.1, steps=10, delta=1e-5, epsilon=truth,
                                  accountant="rdp")  # fmt: skip
    assert dp_claim_problem(spec, num_examples=100, dp=honest, history=[]) is None
    lying = dataclasses.replace(honest, epsilon_wad=0)
    assert "claims cumulative ε=0.000000" in (dp_claim_problem(spec, num_examples=100, dp=lying, history=[]) or "")
    assert truth > 2  # 2.84 under RDP at δ = 1e-5
    # a second round claiming only one round's ε understates the cumulative one
    assert dp_claim_problem(spec, num_examples=100, dp=honest, history=[(1.1, 0.1, 10)]) is not None
    # no noise, no steps, a sample rate the batch size does not give, steps the epochs do not give
    for wrong in (dict(noise_multiplier=0.0), dict(steps=0), dict(sample_rate=0.05), dict(steps=20)):
        fields = dict(noise_multiplier=1.1, sample_rate=0.1, steps=10, delta=1e-5, epsilon=truth, accountant="rdp")
        dp = DpParams.from_floats(**{**fields, **wrong})
        assert dp_claim_problem(spec, num_examples=100, dp=dp, history=[]) is not None, wrong


def _spec(*, batch_size: int) -> RunSpec:
    return RunSpec(
        model=ModelSpec("deai_flower.models.mlp", {"hidden": [4]}),
        data=DataSchema(num_features=4, num_classes=2, input_shape=(4,)),
        rule=RuleSpec("fedavg", {}),
        privacy=PrivacySpec(epsilon=8.0, delta=1e-5, max_grad_norm=1.0, accountant="rdp"),
        training=TrainingSpec(local_epochs=1, batch_size=batch_size, learning_rate=0.1),
        rounds=RoundsSpec(num_rounds=2, commit_s=100, reveal_s=100, attest_s=100, sample_fraction=1.0,
                          quorum=2, min_reveals=3, committee_size=0),  # fmt: skip
        max_blob_bytes=1 << 20,
    )

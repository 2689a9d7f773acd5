"""Tests for deai_flower.privacy: DP-SGD rounds, the persistent ledger, settings."""

from __future__ import annotations

import copy
import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from opacus import GradSampleModule
from opacus.accountants import PRVAccountant, RDPAccountant
from torch import nn

import deai_flower.privacy as privacy
from deai_flower.data import load_dataset
from deai_flower.errors import ConfigError, PrivacyBudgetExhaustedError, PrivacyError
from deai_flower.models import build_model, get_arrays
from deai_flower.privacy import PrivacyLedger, PrivacySettings, RoundTraining, train_round

CPU = torch.device("cpu")
# 210 rows at batch 50: q = 50/210, which differs from Opacus' own 1/len(loader) = 1/4,
# so the tests notice if the wrong sampling rate reaches the accountant.
ROWS = 210
BATCH = 50
STEPS_PER_EPOCH = 4  # floor(210 / 50)
DELTA = 1e-5
# Every private test below plans 2 rounds of one epoch at this q, so the (~0.3 s)
# noise calibration is computed once and shared through the module's cache.
PLANNED_ROUNDS = 2


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    split = load_dataset("digits", seed=0)
    return split.x_train[:ROWS], split.y_train[:ROWS]


def _model(seed: int = 0) -> nn.Module:
    return build_model("mlp", num_features=64, num_classes=10, hidden=(16,), seed=seed)


def _settings(**overrides: object) -> PrivacySettings:
    values: dict[str, object] = {
        "epsilon": 8.0,
        "delta": DELTA,
        "max_grad_norm": 1.0,
        "accountant": "rdp",
    }
    values.update(overrides)
    return PrivacySettings(**values)  # type: ignore[arg-type]


def _round(
    data: tuple[np.ndarray, np.ndarray],
    ledger: PrivacyLedger,
    *,
    model: nn.Module | None = None,
    settings: PrivacySettings | None = None,
    seed: int = 0,
) -> RoundTraining:
    x, y = data
    return train_round(
        model=model if model is not None else _model(),
        x=x,
        y=y,
        settings=settings or _settings(),
        ledger=ledger,
        planned_rounds=PLANNED_ROUNDS,
        local_epochs=1,
        batch_size=BATCH,
        learning_rate=0.5,
        seed=seed,
        device=CPU,
    )


def _has_hooks(model: nn.Module) -> bool:
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules()
    )


# --- accounting ------------------------------------------------------------------------


def test_two_rounds_match_an_independent_opacus_accountant(data) -> None:
    ledger = PrivacyLedger()
    first = _round(data, ledger, seed=1)
    second = _round(data, ledger, seed=2)

    q = BATCH / ROWS
    sigma = ledger.noise_multiplier
    assert sigma is not None and sigma > 0
    assert ledger.history == [(sigma, q, STEPS_PER_EPOCH), (sigma, q, STEPS_PER_EPOCH)]
    assert (first.noise_multiplier, first.sample_rate, first.steps) == (sigma, q, STEPS_PER_EPOCH)
    assert second.noise_multiplier == sigma  # calibrated once, then reused

    reference = RDPAccountant()
    reference.history = list(ledger.history[:1])
    assert first.epsilon == pytest.approx(reference.get_epsilon(delta=DELTA), rel=1e-9)
    reference.history = list(ledger.history)
    assert second.epsilon == pytest.approx(reference.get_epsilon(delta=DELTA), rel=1e-9)
    assert ledger.epsilon(DELTA, "rdp") == pytest.approx(second.epsilon, rel=1e-12)

    # Calibrated for the planned rounds: the last one lands on (not over) the budget.
    assert 0 < first.epsilon < second.epsilon <= 8.0 + 1e-9
    assert second.epsilon > 7.9
    assert (first.delta, first.accountant) == (DELTA, "rdp")


def test_empty_ledger_spends_nothing() -> None:
    assert PrivacyLedger().epsilon(DELTA, "rdp") == 0.0
    assert PrivacyLedger().epsilon(DELTA, "prv") == 0.0


def test_prv_ledger_matches_opacus_prv_accountant() -> None:
    ledger = PrivacyLedger(history=[(1.1, 0.25, 4), (1.1, 0.25, 4)])
    reference = PRVAccountant()
    reference.history = [(1.1, 0.25, 8)]
    assert ledger.epsilon(DELTA, "prv") == pytest.approx(reference.get_epsilon(delta=DELTA))
    # PRV is the tighter accountant.
    assert ledger.epsilon(DELTA, "prv") < ledger.epsilon(DELTA, "rdp")


def test_non_private_rounds_spend_infinite_epsilon() -> None:
    ledger = PrivacyLedger(history=[(1.1, 0.25, 4), (0.0, 0.25, 5)])
    assert ledger.epsilon(DELTA, "rdp") == math.inf


def test_ledger_record_roundtrip_through_config_record(data) -> None:
    ledger = PrivacyLedger()
    _round(data, ledger)
    record = ConfigRecord(ledger.to_record())  # Flower accepts the value types
    restored = PrivacyLedger.from_record(dict(record))
    assert restored == ledger
    assert restored.epsilon(DELTA, "rdp") == ledger.epsilon(DELTA, "rdp")

    empty = PrivacyLedger.from_record(dict(ConfigRecord(PrivacyLedger().to_record())))
    assert empty == PrivacyLedger()
    assert empty.noise_multiplier is None


def test_malformed_ledger_record_is_a_privacy_error() -> None:
    with pytest.raises(PrivacyError, match="differ in length"):
        PrivacyLedger.from_record({"noise_multipliers": [1.0], "sample_rates": [], "steps": []})


IDENTITY = {"participant": "0xAbC0000000000000000000000000000000000001", "chain_id": 131277322940537,
            "contract": "0x00000000000000000000000000000000000000c0", "run_id": 1}  # fmt: skip


def test_ledger_state_file_survives_a_restart(data, tmp_path) -> None:
    # Round 1 in one "process", then a restart: a fresh ledger loaded from the file
    # must continue the accounting exactly as the in-memory one would.
    path = privacy.ledger_path(tmp_path / "state", **IDENTITY)
    assert path.name.endswith(f"-{IDENTITY['participant'].lower()}.json") and str(IDENTITY["run_id"]) in path.name
    assert privacy.load_ledger(path, identity=IDENTITY) is None  # nothing saved yet
    ledger = PrivacyLedger()
    _round(data, ledger, seed=1)
    privacy.save_ledger(path, ledger, settings=_settings(), identity=IDENTITY)
    restored = privacy.load_ledger(path, identity=IDENTITY)
    assert restored == ledger  # bit-for-bit: JSON floats round-trip
    document = json.loads(path.read_text())
    assert document["participant"] == IDENTITY["participant"] and document["accountant"] == "rdp"
    assert document["epsilon"] == pytest.approx(ledger.epsilon(DELTA, "rdp"))
    assert list(tmp_path.joinpath("state").iterdir()) == [path]  # no temporary file left

    continued = _round(data, restored, seed=2)
    uninterrupted = _round(data, ledger, seed=2)
    assert continued.epsilon == uninterrupted.epsilon
    assert restored.history == ledger.history and len(ledger.history) == 2
    # The planned budget is spent: after a second restart the client declines.
    privacy.save_ledger(path, restored, settings=_settings(), identity=IDENTITY)
    with pytest.raises(PrivacyBudgetExhaustedError):
        _round(data, privacy.load_ledger(path, identity=IDENTITY), seed=3)


def test_ledger_state_file_of_another_run_or_corrupt_is_refused(data, tmp_path) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger()
    _round(data, ledger)
    privacy.save_ledger(path, ledger, settings=_settings(), identity=IDENTITY)
    with pytest.raises(PrivacyError, match="belongs to run_id=1"):
        privacy.load_ledger(path, identity={**IDENTITY, "run_id": 2})
    # Addresses compare case-insensitively (checksummed or not).
    assert privacy.load_ledger(path, identity={**IDENTITY, "participant": IDENTITY["participant"].lower()})
    path.write_text("{not json")
    with pytest.raises(PrivacyError, match="cannot read"):
        privacy.load_ledger(path, identity=IDENTITY)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(PrivacyError, match="not a privacy ledger"):
        privacy.load_ledger(path, identity=IDENTITY)


# --- training --------------------------------------------------------------------------


def test_budget_exhaustion_raises_and_leaves_ledger_unchanged(data) -> None:
    ledger = PrivacyLedger()
    for seed in range(PLANNED_ROUNDS):
        _round(data, ledger, seed=seed)
    before = copy.deepcopy(ledger)
    with pytest.raises(PrivacyBudgetExhaustedError, match=r"would spend ε=\S+ > budget ε=8"):
        _round(data, ledger, seed=99)
    assert ledger == before


def test_a_budget_smaller_than_already_spent_is_refused(data) -> None:
    # A ledger calibrated elsewhere for a larger budget cannot spend a smaller one.
    ledger = PrivacyLedger()
    _round(data, ledger)
    before = copy.deepcopy(ledger)
    with pytest.raises(PrivacyBudgetExhaustedError):
        _round(data, ledger, settings=_settings(epsilon=1.0))
    assert ledger == before


def test_training_twice_with_one_model_and_ledger(data) -> None:
    model = _model()
    initial = get_arrays(model)
    ledger = PrivacyLedger()
    first = _round(data, ledger, model=model, seed=1)
    # Reusing the same module must not hit Opacus' "hooks registered twice" error.
    second = _round(data, ledger, model=model, seed=2)
    assert len(ledger.history) == 2
    # The caller's module is neither trained nor hooked.
    for name, value in get_arrays(model).items():
        np.testing.assert_array_equal(value, initial[name])
    assert not _has_hooks(model)
    assert any(not np.array_equal(first.arrays[k], second.arrays[k]) for k in first.arrays)


def test_an_opacus_wrapped_model_is_accepted(data) -> None:
    wrapped = GradSampleModule(_model())
    result = _round(data, PrivacyLedger(), model=wrapped)
    assert set(result.arrays) == set(get_arrays(_model()))


def test_round_returns_unwrapped_float32_arrays_that_moved(data) -> None:
    model = _model()
    result = _round(data, PrivacyLedger(), model=model)
    initial = get_arrays(model)
    assert set(result.arrays) == set(initial)
    assert not any(name.startswith("_module.") for name in result.arrays)
    for name, value in result.arrays.items():
        assert value.dtype == np.float32
        assert value.shape == initial[name].shape
        assert np.isfinite(value).all()
    assert any(not np.array_equal(result.arrays[k], initial[k]) for k in initial)
    assert result.num_examples == ROWS
    assert math.isfinite(result.train_loss) and result.train_loss > 0


def test_training_is_deterministic_for_a_seed(data) -> None:
    a = _round(data, PrivacyLedger(), seed=5)
    b = _round(data, PrivacyLedger(), seed=5)
    c = _round(data, PrivacyLedger(), seed=6)
    for name in a.arrays:
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name])
    assert a.train_loss == b.train_loss
    assert any(not np.array_equal(a.arrays[k], c.arrays[k]) for k in a.arrays)


def _cnn(seed: int = 0) -> nn.Module:
    return build_model("cnn", num_features=64, num_classes=10, hidden=(8,), channels=(4, 8), activation="tanh",
                       input_shape=(1, 8, 8), seed=seed)  # fmt: skip


def _scatter(seed: int = 0) -> nn.Module:
    # Fixed scattering features (no parameters) before the trained Linear head.
    return build_model("scatter", num_features=64, num_classes=10, hidden=(), pool=2, input_shape=(1, 8, 8),
                       seed=seed)  # fmt: skip


@pytest.mark.parametrize("make_model", [_model, _cnn, _scatter], ids=["mlp", "cnn", "scatter"])
def test_ghost_clipping_matches_hooks(data, make_model) -> None:
    # Both per-sample-gradient modes implement the same DP-SGD step: with the same
    # seed (same batches and noise) they must produce the same weights.
    ghost = _round(data, PrivacyLedger(), model=make_model(), settings=_settings(grad_sample_mode="ghost"), seed=3)
    hooks = _round(data, PrivacyLedger(), model=make_model(), settings=_settings(grad_sample_mode="hooks"), seed=3)
    for name in ghost.arrays:
        np.testing.assert_allclose(ghost.arrays[name], hooks.arrays[name], atol=1e-5)
    assert not any(name.startswith("_module.") for name in ghost.arrays)


def test_auto_mode_uses_ghost_clipping_for_large_all_linear_models() -> None:
    # Measured (bench/bench_dp.py): ghost wins only for large all-Linear models.
    small = build_model("mlp", num_features=64, num_classes=10, hidden=(64,), seed=0)
    large = build_model("mlp", num_features=64, num_classes=10, hidden=(256, 128), seed=0)
    digits_cnn = _cnn()
    mnist_cnn = build_model("cnn", num_features=784, num_classes=10, hidden=(32,), channels=(16, 32),
                            input_shape=(1, 28, 28), seed=0)  # fmt: skip
    choose = privacy.choose_grad_sample_mode
    assert (choose(small), choose(large)) == ("hooks", "ghost")
    assert (choose(digits_cnn), choose(mnist_cnn)) == ("hooks", "hooks")
    # The MNIST scattering preset: only its 17,650-weight Linear head is trained.
    mnist_scatter = build_model("scatter", num_features=784, num_classes=10, hidden=(), pool=2,
                                input_shape=(1, 28, 28), seed=0)  # fmt: skip
    assert choose(mnist_scatter) == "ghost"
    assert choose(large, "hooks") == "hooks" and choose(small, "ghost") == "ghost"
    with pytest.raises(ConfigError, match="grad_sample_mode"):
        choose(small, "functorch")


def test_a_mode_opacus_rejects_falls_back_to_hooks(data, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = privacy._make_private

    def reject_ghost(**kwargs):
        calls.append(kwargs["mode"])
        if kwargs["mode"] == "ghost":
            raise NotImplementedError("no norm sampler for this layer")
        return original(**kwargs)

    monkeypatch.setattr(privacy, "_make_private", reject_ghost)
    result = _round(data, PrivacyLedger(), settings=_settings(grad_sample_mode="ghost"), seed=3)
    assert calls == ["ghost", "hooks"]
    assert all(np.isfinite(v).all() for v in result.arrays.values())


def test_a_model_opacus_cannot_train_is_refused_with_the_fix(data) -> None:
    model = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(144, 10))  # fmt: skip
    with pytest.raises(PrivacyError, match="BatchNorm.*make_dp_compatible"):
        _round(data, PrivacyLedger(), model=model)


def test_num_threads_caps_training_and_is_restored(data, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    original = privacy._run_epochs

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(privacy, "_run_epochs", spy)
    before = torch.get_num_threads()
    x, y = data
    for settings in (_settings(), _settings(epsilon=math.inf)):
        train_round(model=_model(), x=x, y=y, settings=settings, ledger=PrivacyLedger(), planned_rounds=PLANNED_ROUNDS,
                    local_epochs=1, batch_size=BATCH, learning_rate=0.5, seed=0, device=CPU, num_threads=1)  # fmt: skip
    assert seen == [1, 1]
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="num_threads"):
        train_round(model=_model(), x=x, y=y, settings=_settings(), ledger=PrivacyLedger(), planned_rounds=PLANNED_ROUNDS,
                    local_epochs=1, batch_size=BATCH, learning_rate=0.5, seed=0, device=CPU, num_threads=0)  # fmt: skip


def test_a_model_left_in_eval_mode_is_trained(data) -> None:
    model = _model().eval()
    result = _round(data, PrivacyLedger(), model=model)
    assert result.steps == STEPS_PER_EPOCH
    assert not model.training  # the caller's mode is left as it was


def test_empty_poisson_batches_keep_weights_finite() -> None:
    # Ten rows at q = 0.1: Poisson sampling draws empty batches; each must still be a
    # (noise-only) step rather than poisoning the weights with NaN.
    split = load_dataset("digits", seed=0)
    ledger = PrivacyLedger(noise_multiplier=1.0)
    result = train_round(
        model=_model(),
        x=split.x_train[:10],
        y=split.y_train[:10],
        settings=_settings(epsilon=1e6),
        ledger=ledger,
        planned_rounds=1,
        local_epochs=3,
        batch_size=1,
        learning_rate=0.1,
        seed=0,
        device=CPU,
    )
    assert result.steps == 30
    assert all(np.isfinite(v).all() for v in result.arrays.values())


def test_non_private_mode(data) -> None:
    ledger = PrivacyLedger()
    model = _model()
    result = _round(data, ledger, model=model, settings=_settings(epsilon=math.inf))
    assert result.epsilon == math.inf
    assert result.noise_multiplier == 0.0
    assert result.accountant == "none"  # protocol §2.4: accountant 0 for non-private reveals
    assert result.steps == math.ceil(ROWS / BATCH)  # one shuffled pass, last batch partial
    assert result.sample_rate == BATCH / ROWS
    assert ledger.history == [(0.0, BATCH / ROWS, result.steps)]
    assert ledger.noise_multiplier is None
    initial = get_arrays(model)
    assert any(not np.array_equal(result.arrays[k], initial[k]) for k in initial)
    assert not _has_hooks(model)


@pytest.mark.skipif(
    importlib.util.find_spec("torchcsprng") is not None, reason="torchcsprng is installed"
)
def test_secure_mode_without_torchcsprng_is_a_privacy_error(data) -> None:
    with pytest.raises(PrivacyError, match="torchcsprng"):
        _round(data, PrivacyLedger(), settings=_settings(secure_mode=True))


def test_invalid_training_arguments_are_config_errors(data) -> None:
    x, y = data
    with pytest.raises(ConfigError, match="planned_rounds"):
        train_round(
            model=_model(),
            x=x,
            y=y,
            settings=_settings(),
            ledger=PrivacyLedger(),
            planned_rounds=0,
            local_epochs=1,
            batch_size=BATCH,
            learning_rate=0.5,
            seed=0,
            device=CPU,
        )


# --- settings --------------------------------------------------------------------------


def test_settings_validation_messages() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^privacy\.epsilon must be > 0 \(got -1\.0\); use inf for a non-private run$",
    ):
        _settings(epsilon=-1.0)
    with pytest.raises(ConfigError, match=r"privacy\.epsilon must be > 0"):
        _settings(epsilon=0.0)
    with pytest.raises(ConfigError, match=r"privacy\.epsilon"):
        _settings(epsilon=float("nan"))
    for delta in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match=r"privacy\.delta must be in \(0, 1\)"):
            _settings(delta=delta)
    with pytest.raises(ConfigError, match=r"privacy\.max_grad_norm must be"):
        _settings(max_grad_norm=0.0)
    with pytest.raises(ConfigError, match=r"privacy\.accountant must be one of: prv, rdp"):
        _settings(accountant="gdp")
    with pytest.raises(ConfigError, match=r"privacy\.grad_sample_mode must be one of: auto, ghost, hooks"):
        _settings(grad_sample_mode="functorch")


def test_settings_private_flag() -> None:
    assert _settings().private
    assert not _settings(epsilon=math.inf).private


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_a_round_on_the_gpu_matches_the_cpu_contract(data, mode: str) -> None:
    # The CUDA path: noise drawn by a CUDA generator, batches moved per step, weights
    # returned as CPU float32 arrays under the unwrapped names.
    x, y = data
    result = train_round(model=_model(), x=x, y=y, settings=_settings(grad_sample_mode=mode), ledger=PrivacyLedger(),
                         planned_rounds=PLANNED_ROUNDS, local_epochs=1, batch_size=BATCH, learning_rate=0.5, seed=0,
                         device=torch.device("cuda"))  # fmt: skip
    assert set(result.arrays) == set(get_arrays(_model()))
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 and np.isfinite(v).all()
               for v in result.arrays.values())  # fmt: skip
    assert result.steps == STEPS_PER_EPOCH


@pytest.mark.filterwarnings("ignore:Optimal order is the")  # ε = 10⁴ is met at the smallest RDP order
@pytest.mark.parametrize(
    ("epsilon", "sample_rate", "steps", "accountant"),
    [(8.0, 16 / 114, 21, "rdp"), (1.0, 0.1, 30, "rdp"), (50.0, 0.2, 10, "rdp"), (1e4, 0.5, 5, "rdp"),
     (8.0, 0.25, 12, "prv")],
)  # fmt: skip
def test_calibration_spends_the_budget_to_within_its_tolerance_and_never_more(
    epsilon: float, sample_rate: float, steps: int, accountant: str
) -> None:
    sigma = privacy._calibrate(target_epsilon=epsilon, delta=DELTA, sample_rate=sample_rate, steps=steps,
                               accountant=accountant)  # fmt: skip
    spent = privacy._epsilon_of([(sigma, sample_rate, steps)], delta=DELTA, accountant=accountant)
    assert epsilon - privacy._CALIBRATION_TOLERANCE <= spent <= epsilon


def test_a_budget_no_noise_can_meet_is_a_privacy_error() -> None:
    # RDP over Opacus' orders cannot go below log(1/delta)/62 whatever the noise
    with pytest.raises(PrivacyError, match="budget is too low"):
        privacy._calibrate(target_epsilon=0.01, delta=DELTA, sample_rate=0.01, steps=1000, accountant="rdp")

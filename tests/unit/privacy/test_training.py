"""Tests for deai_flower.privacy.training: one DP-SGD round with Opacus, and its ledger entry."""

from __future__ import annotations

import copy
import importlib.util
import math

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from torch import nn

import deai_flower.privacy.training as training
from deai_flower.data import load_dataset
from deai_flower.errors import ConfigError, PrivacyBudgetExhaustedError, PrivacyError
from deai_flower.models import build_model, get_arrays
from deai_flower.privacy import PrivacyLedger, train_round
from unit.privacy._support import (
    BATCH,
    CPU,
    DELTA,
    PLANNED_ROUNDS,
    ROWS,
    STEPS_PER_EPOCH,
    has_hooks,
    settings_with,
    small_model,
    train,
)


def test_two_rounds_match_an_independent_opacus_accountant(data) -> None:
    ledger = PrivacyLedger()
    first = train(data, ledger, seed=1)
    second = train(data, ledger, seed=2)

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


def test_budget_exhaustion_raises_and_leaves_ledger_unchanged(data) -> None:
    ledger = PrivacyLedger()
    for seed in range(PLANNED_ROUNDS):
        train(data, ledger, seed=seed)
    before = copy.deepcopy(ledger)
    with pytest.raises(PrivacyBudgetExhaustedError, match=r"would spend ε=\S+ > budget ε=8"):
        train(data, ledger, seed=99)
    assert ledger == before


def test_a_budget_smaller_than_already_spent_is_refused(data) -> None:
    # A ledger calibrated elsewhere for a larger budget cannot spend a smaller one.
    ledger = PrivacyLedger()
    train(data, ledger)
    before = copy.deepcopy(ledger)
    with pytest.raises(PrivacyBudgetExhaustedError):
        train(data, ledger, settings=settings_with(epsilon=1.0))
    assert ledger == before


def test_training_twice_with_one_model_and_ledger(data) -> None:
    model = small_model()
    initial = get_arrays(model)
    ledger = PrivacyLedger()
    first = train(data, ledger, model=model, seed=1)
    # Reusing the same module must not hit Opacus' "hooks registered twice" error.
    second = train(data, ledger, model=model, seed=2)
    assert len(ledger.history) == 2
    # The caller's module is neither trained nor hooked.
    for name, value in get_arrays(model).items():
        np.testing.assert_array_equal(value, initial[name])
    assert not has_hooks(model)
    assert any(not np.array_equal(first.arrays[k], second.arrays[k]) for k in first.arrays)


def test_an_opacus_wrapped_model_is_accepted(data) -> None:
    wrapped = GradSampleModule(small_model())
    result = train(data, PrivacyLedger(), model=wrapped)
    assert set(result.arrays) == set(get_arrays(small_model()))


def test_round_returns_unwrapped_float32_arrays_that_moved(data) -> None:
    model = small_model()
    result = train(data, PrivacyLedger(), model=model)
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
    a = train(data, PrivacyLedger(), seed=5)
    b = train(data, PrivacyLedger(), seed=5)
    c = train(data, PrivacyLedger(), seed=6)
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


@pytest.mark.parametrize("make_model", [small_model, _cnn, _scatter], ids=["mlp", "cnn", "scatter"])
def test_ghost_clipping_matches_hooks(data, make_model) -> None:
    # Both per-sample-gradient modes implement the same DP-SGD step: with the same
    # seed (same batches and noise) they must produce the same weights.
    ghost = train(data, PrivacyLedger(), model=make_model(), settings=settings_with(grad_sample_mode="ghost"), seed=3)
    hooks = train(data, PrivacyLedger(), model=make_model(), settings=settings_with(grad_sample_mode="hooks"), seed=3)
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
    choose = training.choose_grad_sample_mode
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
    original = training._make_private

    def reject_ghost(**kwargs):
        calls.append(kwargs["mode"])
        if kwargs["mode"] == "ghost":
            raise NotImplementedError("no norm sampler for this layer")
        return original(**kwargs)

    monkeypatch.setattr(training, "_make_private", reject_ghost)
    result = train(data, PrivacyLedger(), settings=settings_with(grad_sample_mode="ghost"), seed=3)
    assert calls == ["ghost", "hooks"]
    assert all(np.isfinite(v).all() for v in result.arrays.values())


def test_a_model_opacus_cannot_train_is_refused_with_the_fix(data) -> None:
    model = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(144, 10))  # fmt: skip
    with pytest.raises(PrivacyError, match="BatchNorm.*make_dp_compatible"):
        train(data, PrivacyLedger(), model=model)


def test_num_threads_caps_training_and_is_restored(data, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    original = training._run_epochs

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "_run_epochs", spy)
    before = torch.get_num_threads()
    x, y = data
    for settings in (settings_with(), settings_with(epsilon=math.inf)):
        train_round(model=small_model(), x=x, y=y, settings=settings, ledger=PrivacyLedger(),
                    planned_rounds=PLANNED_ROUNDS, local_epochs=1, batch_size=BATCH, learning_rate=0.5, seed=0,
                    device=CPU, num_threads=1)  # fmt: skip
    assert seen == [1, 1]
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="num_threads"):
        train_round(model=small_model(), x=x, y=y, settings=settings_with(), ledger=PrivacyLedger(),
                    planned_rounds=PLANNED_ROUNDS, local_epochs=1, batch_size=BATCH, learning_rate=0.5, seed=0,
                    device=CPU, num_threads=0)  # fmt: skip


def test_a_model_left_in_eval_mode_is_trained(data) -> None:
    model = small_model().eval()
    result = train(data, PrivacyLedger(), model=model)
    assert result.steps == STEPS_PER_EPOCH
    assert not model.training  # the caller's mode is left as it was


def test_empty_poisson_batches_keep_weights_finite() -> None:
    # Ten rows at q = 0.1: Poisson sampling draws empty batches; each must still be a
    # (noise-only) step rather than poisoning the weights with NaN.
    split = load_dataset("digits", seed=0)
    ledger = PrivacyLedger(noise_multiplier=1.0)
    result = train_round(
        model=small_model(),
        x=split.x_train[:10],
        y=split.y_train[:10],
        settings=settings_with(epsilon=1e6),
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
    model = small_model()
    result = train(data, ledger, model=model, settings=settings_with(epsilon=math.inf))
    assert result.epsilon == math.inf
    assert result.noise_multiplier == 0.0
    assert result.accountant == "none"  # protocol §2.4: accountant 0 for non-private reveals
    assert result.steps == math.ceil(ROWS / BATCH)  # one shuffled pass, last batch partial
    assert result.sample_rate == BATCH / ROWS
    assert ledger.history == [(0.0, BATCH / ROWS, result.steps)]
    assert ledger.noise_multiplier is None
    initial = get_arrays(model)
    assert any(not np.array_equal(result.arrays[k], initial[k]) for k in initial)
    assert not has_hooks(model)


@pytest.mark.skipif(
    importlib.util.find_spec("torchcsprng") is not None, reason="torchcsprng is installed"
)
def test_secure_mode_without_torchcsprng_is_a_privacy_error(data) -> None:
    with pytest.raises(PrivacyError, match="torchcsprng"):
        train(data, PrivacyLedger(), settings=settings_with(secure_mode=True))


def test_invalid_training_arguments_are_config_errors(data) -> None:
    x, y = data
    with pytest.raises(ConfigError, match="planned_rounds"):
        train_round(
            model=small_model(),
            x=x,
            y=y,
            settings=settings_with(),
            ledger=PrivacyLedger(),
            planned_rounds=0,
            local_epochs=1,
            batch_size=BATCH,
            learning_rate=0.5,
            seed=0,
            device=CPU,
        )



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_a_round_on_the_gpu_matches_the_cpu_contract(data, mode: str) -> None:
    # The CUDA path: noise drawn by a CUDA generator, batches moved per step, weights
    # returned as CPU float32 arrays under the unwrapped names.
    x, y = data
    result = train_round(model=small_model(), x=x, y=y, settings=settings_with(grad_sample_mode=mode),
                         ledger=PrivacyLedger(), planned_rounds=PLANNED_ROUNDS, local_epochs=1, batch_size=BATCH,
                         learning_rate=0.5, seed=0, device=torch.device("cuda"))  # fmt: skip
    assert set(result.arrays) == set(get_arrays(small_model()))
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 and np.isfinite(v).all()
               for v in result.arrays.values())  # fmt: skip
    assert result.steps == STEPS_PER_EPOCH

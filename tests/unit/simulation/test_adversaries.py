"""The simulated defectors of deai_flower/simulation/adversaries.py send what they claim
to, and reveal honest-looking DP claims."""

from __future__ import annotations

import numpy as np
import pytest

from deai_flower.data import load_dataset
from deai_flower.models import get_arrays, set_arrays
from deai_flower.privacy import PrivacyLedger
from deai_flower.privacy.training import train_round
from deai_flower.simulation.adversaries import NoNoise, PublicStepEcho, Twin, forget_twins, honest_noise_std
from unit.privacy._support import CPU, small_model, settings_with

ROWS = 290


@pytest.fixture(scope="module")
def kwargs() -> dict:
    split = load_dataset("digits", seed=0)
    return dict(x=split.x_train[:ROWS], y=split.y_train[:ROWS], settings=settings_with(), planned_rounds=3,
                local_epochs=3, batch_size=64, learning_rate=0.5, device=CPU)  # fmt: skip


def flat(arrays: dict, base: dict) -> np.ndarray:
    return np.concatenate([(arrays[k].astype(np.float64) - base[k]).ravel() for k in sorted(base)])


def test_no_noise_reveals_honest_claims_and_sends_an_update_without_the_noise(kwargs) -> None:
    model = small_model()
    base = get_arrays(model)
    honest = train_round(model=model, ledger=PrivacyLedger(), seed=3, **kwargs)
    ledger = PrivacyLedger()
    clean = NoNoise().train_round(model=model, ledger=ledger, seed=3, **kwargs)
    claims = ("noise_multiplier", "sample_rate", "steps", "epsilon", "delta", "accountant", "num_examples")
    assert {c: getattr(clean, c) for c in claims} == {c: getattr(honest, c) for c in claims}
    assert honest.noise_multiplier > 0 and len(ledger.history) == 1  # its ledger spent an honest round
    std = honest_noise_std(honest, kwargs)
    noisy, noiseless = np.mean(flat(honest.arrays, base) ** 2), np.mean(flat(clean.arrays, base) ** 2)
    # the honest update's extra power is its DP noise, as update_noise_std predicts
    assert noisy - noiseless == pytest.approx(std**2, rel=0.2)
    assert noiseless < 0.5 * std**2


def test_public_step_echoes_the_last_change_of_the_global_model_with_honest_noise(kwargs) -> None:
    model = small_model()
    first = get_arrays(model)
    echo = PublicStepEcho(look_honest=True, seed=0)
    sent1 = echo.train_round(model=model, ledger=PrivacyLedger(), seed=1, **kwargs)
    std = honest_noise_std(sent1, kwargs)
    assert np.std(flat(sent1.arrays, first)) == pytest.approx(std, rel=0.1)  # round 1: no public step yet
    second = {k: v + 0.01 * np.sign(v) for k, v in first.items()}
    set_arrays(model, second)
    sent2 = echo.train_round(model=model, ledger=PrivacyLedger(), seed=2, **kwargs)
    step = flat(second, first)
    residual = flat(sent2.arrays, second) - step  # what is left after the public step: the noise alone
    assert np.std(residual) == pytest.approx(std, rel=0.1)
    assert abs(np.dot(residual, step)) / (np.linalg.norm(residual) * np.linalg.norm(step)) < 0.1
    bare = PublicStepEcho(look_honest=False, seed=0)
    set_arrays(model, first)
    bare.train_round(model=model, ledger=PrivacyLedger(), seed=1, **kwargs)
    set_arrays(model, second)
    exact = bare.train_round(model=model, ledger=PrivacyLedger(), seed=2, **kwargs)
    np.testing.assert_allclose(flat(exact.arrays, second), step, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, -5.0], ids=["sybil", "sign_flip_twins"])
def test_twins_send_identical_bytes_of_the_first_to_train(scale: float) -> None:
    forget_twins()
    rng = np.random.default_rng(0)
    base = {"w": rng.standard_normal((4, 3)).astype(np.float32)}
    trained = [{"w": base["w"] + rng.standard_normal((4, 3)).astype(np.float32)} for _ in range(2)]
    a, b = Twin(pair="p", scale=scale), Twin(pair="p", scale=scale)
    first, second = a.poison(base, trained[0]), b.poison(base, trained[1])
    assert first["w"].tobytes() == second["w"].tobytes() and first["w"].dtype == np.float32
    np.testing.assert_allclose(first["w"], base["w"] + scale * (trained[0]["w"] - base["w"]), rtol=1e-6)
    # the next round pairs up afresh, and another pair never sees this one's board
    other = Twin(pair="q", scale=scale).poison(base, trained[1])
    np.testing.assert_allclose(other["w"], base["w"] + scale * (trained[1]["w"] - base["w"]), rtol=1e-6)
    forget_twins()


def test_fit_validation_trains_on_the_spec_named_validation_set_with_its_own_honest_claims(kwargs) -> None:
    from support import compose_with

    from deai_flower.simulation.adversaries import make_adversary

    cfg = compose_with("adversary=fit_validation", "incentives.validation_size=120")
    adversary = make_adversary(cfg, 0)
    split = load_dataset(cfg.dataset, seed=int(cfg.seed))
    x, y = adversary.data
    np.testing.assert_array_equal(x, split.x_test[:120])  # what harness.store_validation_set stores
    np.testing.assert_array_equal(y, split.y_test[:120])
    model = small_model()
    base = get_arrays(model)
    honest = train_round(model=model, ledger=PrivacyLedger(), seed=3, **kwargs)
    fitted = adversary.train_round(model=model, ledger=PrivacyLedger(), seed=3, **kwargs)
    assert fitted.num_examples == honest.num_examples == ROWS  # it claims its own data
    assert np.mean(flat(fitted.arrays, base) ** 2) < 0.5 * honest_noise_std(honest, kwargs) ** 2  # and no noise

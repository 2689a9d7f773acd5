"""Tests for deai_flower.models: construction, weight exchange, evaluation, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from deai_flower.errors import ConfigError
from deai_flower.models import build_model, evaluate, get_arrays, select_device, set_arrays


def _mlp(seed: int = 0, hidden: tuple[int, ...] = (16, 8)) -> nn.Module:
    return build_model("mlp", num_features=6, num_classes=3, hidden=hidden, seed=seed)


def test_mlp_architecture() -> None:
    arrays = get_arrays(_mlp())
    shapes = {name: a.shape for name, a in arrays.items()}
    assert shapes == {
        "0.weight": (16, 6),
        "0.bias": (16,),
        "2.weight": (8, 16),
        "2.bias": (8,),
        "4.weight": (3, 8),
        "4.bias": (3,),
    }
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert set(get_arrays(_mlp(hidden=()))) == {"0.weight", "0.bias"}


def test_init_is_deterministic_by_seed() -> None:
    a, b, c = get_arrays(_mlp(1)), get_arrays(_mlp(1)), get_arrays(_mlp(2))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert any(not np.array_equal(a[name], c[name]) for name in a)


def test_build_leaves_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _mlp(5)
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())


def test_unknown_model_and_bad_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model 'cnn'"):
        build_model("cnn", num_features=6, num_classes=3, hidden=(4,), seed=0)
    with pytest.raises(ConfigError, match="hidden"):
        build_model("mlp", num_features=6, num_classes=3, hidden=(4, 0), seed=0)


def test_get_set_arrays_roundtrip() -> None:
    source, target = _mlp(1), _mlp(2)
    arrays = get_arrays(source)
    set_arrays(target, arrays)
    loaded = get_arrays(target)
    for name in arrays:
        np.testing.assert_array_equal(loaded[name], arrays[name])
    x = torch.randn(4, 6)
    torch.testing.assert_close(target(x), source(x))


def test_get_arrays_returns_copies() -> None:
    model = _mlp()
    arrays = get_arrays(model)
    arrays["0.bias"][:] = 42.0
    assert not np.any(get_arrays(model)["0.bias"] == 42.0)


def test_set_arrays_is_strict() -> None:
    model = _mlp()
    arrays = get_arrays(model)
    missing = dict(arrays)
    del missing["0.bias"]
    with pytest.raises(ConfigError, match="missing"):
        set_arrays(model, missing)
    with pytest.raises(ConfigError, match="unexpected"):
        set_arrays(model, {**arrays, "extra": np.zeros(1, np.float32)})
    with pytest.raises(ConfigError, match="shape"):
        set_arrays(model, {**arrays, "0.bias": np.zeros(17, np.float32)})


def test_opacus_prefix_is_stripped_and_restored() -> None:
    plain = _mlp(3)
    wrapped = GradSampleModule(_mlp(3))
    assert all(key.startswith("_module.") for key in wrapped.state_dict())
    arrays = get_arrays(wrapped)
    assert set(arrays) == set(get_arrays(plain))
    for name, value in get_arrays(plain).items():
        np.testing.assert_array_equal(arrays[name], value)
    # Unwrapped names load into a wrapped model, and vice versa.
    set_arrays(wrapped, get_arrays(_mlp(4)))
    set_arrays(plain, get_arrays(wrapped))
    np.testing.assert_array_equal(get_arrays(plain)["0.weight"], get_arrays(_mlp(4))["0.weight"])


def test_evaluate_matches_direct_computation() -> None:
    model = _mlp(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=37).astype(np.int64)
    # A batch size that does not divide the data checks the mean is over rows.
    loss, acc = evaluate(model, x, y, device=torch.device("cpu"), batch_size=10)
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        expected_loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(y)))
        expected_acc = float((logits.argmax(1).numpy() == y).mean())
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert acc == pytest.approx(expected_acc)


def test_select_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    assert select_device() == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        select_device("cuda")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        select_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")

"""Validation losses: float64 on the CPU, exactly summed, the same whatever the thread count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from deai_flower.errors import ConfigError
from deai_flower.models import build_model, evaluate, get_arrays
from deai_flower.protocol.scores import loss_improvement_scores
from deai_flower.validation_loss import BATCH_SIZE, validation_loss, validation_losses


def _mlp(seed: int = 0) -> nn.Module:
    return build_model("mlp", num_features=6, num_classes=3, hidden=(64, 32), seed=seed)


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A learnable task: the label is the arg-max of a fixed linear map of the features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    mapping = np.arange(18, dtype=np.float32).reshape(6, 3) % 5 - 2
    return x, np.argmax(x @ mapping, axis=1).astype(np.int64)


def test_loss_is_identical_with_one_and_two_threads() -> None:
    model = _mlp()
    x, y = _data(2 * BATCH_SIZE + 300)  # several batches, the last one partial
    arrays = {"global": get_arrays(model), "other": get_arrays(_mlp(1))}
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = validation_losses(model, arrays, x, y)
        torch.set_num_threads(2)
        two = validation_losses(model, arrays, x, y)
    finally:
        torch.set_num_threads(previous)
    assert torch.get_num_threads() == previous
    assert {a: v.hex() for a, v in one.items()} == {a: v.hex() for a, v in two.items()}
    assert one["global"] != one["other"]
    assert validation_loss(model, arrays["other"], x, y) == one["other"]


def test_loss_is_the_mean_cross_entropy() -> None:
    model = _mlp()
    x, y = _data(1500)
    loss = validation_loss(model, get_arrays(model), x, y)
    reference, _ = evaluate(model, x, y, device=torch.device("cpu"), batch_size=256)  # float32
    assert loss == pytest.approx(reference, rel=1e-5)
    # All-zero weights give zero logits: every example costs ln 3, so the mean is ln 3.
    zeros = {name: np.zeros_like(value) for name, value in get_arrays(model).items()}
    assert abs(validation_loss(model, zeros, x, y) - math.log(3)) < 1e-15


def test_the_callers_model_is_left_as_it_was() -> None:
    model = _mlp()
    model.train()
    before = get_arrays(model)
    validation_loss(model, get_arrays(_mlp(5)), *_data(100))
    assert model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    after = get_arrays(model)
    assert all(np.array_equal(before[name], after[name]) for name in before)


def test_trained_model_earns_a_loss_improvement_score() -> None:
    model = _mlp()
    x_train, y_train = _data(1000, seed=1)
    x_val, y_val = _data(800, seed=2)
    global_arrays = get_arrays(model)
    trained = _mlp()
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.5)
    features, labels = torch.as_tensor(x_train), torch.as_tensor(y_train)
    for _ in range(30):
        optimizer.zero_grad()
        nn.functional.cross_entropy(trained(features), labels).backward()
        optimizer.step()
    losses = validation_losses(model, {"0xglobal": global_arrays, "0xtrained": get_arrays(trained)}, x_val, y_val)
    scores = loss_improvement_scores(losses["0xglobal"], losses)
    assert losses["0xtrained"] < losses["0xglobal"] - 0.1
    assert scores["0xglobal"] == 0
    assert scores["0xtrained"] > 100_000  # more than 0.1 nats, in micro-nats


def test_bad_inputs_are_refused() -> None:
    model = _mlp()
    arrays = get_arrays(model)
    x, y = _data(10)
    with pytest.raises(ValueError, match="empty"):
        validation_loss(model, arrays, x[:0], y[:0])
    with pytest.raises(ValueError, match="10 feature rows but 9 labels"):
        validation_loss(model, arrays, x, y[:9])
    with pytest.raises(ValueError, match="integer class indices"):
        validation_loss(model, arrays, x, y.astype(np.float32))
    with pytest.raises(ConfigError, match="missing"):
        validation_loss(model, {k: v for k, v in arrays.items() if k != "0.bias"}, x, y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_on_the_gpu_is_evaluated_on_the_cpu_in_float64() -> None:
    model = _mlp()
    x, y = _data(500)
    cpu = validation_loss(model, get_arrays(model), x, y)
    assert validation_loss(model.to("cuda"), get_arrays(model), x, y) == cpu

"""Round metrics: example-weighted as Flower weights them, and nothing made up when no
silo trained or scored on any example."""

from __future__ import annotations

import math

import pytest

from deai_flower.messages import EvaluateReply, ReplyState, TrainingMetrics
from deai_flower.strategies.metrics import federated_summary, training_summary


def _trained(num_examples: int, loss: float, epsilon: float) -> TrainingMetrics:
    return TrainingMetrics(num_examples=num_examples, epsilon=epsilon, noise_multiplier=1.0, sample_rate=0.1,
                           steps=10, train_loss=loss, train_seconds=1.0)  # fmt: skip


def test_training_loss_is_weighted_by_examples_and_epsilon_is_the_largest() -> None:
    epsilon_max, loss = training_summary([_trained(10, 1.0, 2.0), _trained(30, 3.0, 0.5)])
    assert epsilon_max == 2.0 and loss == pytest.approx((10 * 1.0 + 30 * 3.0) / 40)
    assert training_summary([]) == (0.0, None)
    assert training_summary([_trained(0, 1.0, math.inf)]) == (math.inf, None)  # a non-private run, no examples


def test_federated_scores_per_silo_and_weighted() -> None:
    scores = {"0xb": EvaluateReply(ReplyState.EVALUATED, "0xb", loss=0.2, accuracy=1.0, num_examples=30),
              "0xa": EvaluateReply(ReplyState.EVALUATED, "0xa", loss=0.6, accuracy=0.5, num_examples=10)}  # fmt: skip
    summary = federated_summary(scores, {"0xc": "it failed"})
    assert list(summary["per_silo"]) == ["0xa", "0xb"] and summary["num_examples"] == 40
    assert summary["accuracy"] == pytest.approx(0.875) and summary["loss"] == pytest.approx(0.3)
    assert summary["errors"] == {"0xc": "it failed"}
    assert federated_summary({}, {}) == {"per_silo": {}, "num_examples": 0}

"""Shared by the privacy tests: a small digits partition and one DP-SGD round on it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from deai_flower.models import build_model
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


def small_model(seed: int = 0) -> nn.Module:
    return build_model("mlp", num_features=64, num_classes=10, hidden=(16,), seed=seed)


def settings_with(**overrides: object) -> PrivacySettings:
    values: dict[str, object] = {
        "epsilon": 8.0,
        "delta": DELTA,
        "max_grad_norm": 1.0,
        "accountant": "rdp",
    }
    values.update(overrides)
    return PrivacySettings(**values)  # type: ignore[arg-type]


def train(
    data: tuple[np.ndarray, np.ndarray],
    ledger: PrivacyLedger,
    *,
    model: nn.Module | None = None,
    settings: PrivacySettings | None = None,
    seed: int = 0,
) -> RoundTraining:
    x, y = data
    return train_round(
        model=model if model is not None else small_model(),
        x=x,
        y=y,
        settings=settings or settings_with(),
        ledger=ledger,
        planned_rounds=PLANNED_ROUNDS,
        local_epochs=1,
        batch_size=BATCH,
        learning_rate=0.5,
        seed=seed,
        device=CPU,
    )


def has_hooks(model: nn.Module) -> bool:
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules()
    )

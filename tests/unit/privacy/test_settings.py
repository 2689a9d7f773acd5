"""Tests for deai_flower.privacy.settings: what a client's DP configuration accepts."""

from __future__ import annotations

import math

import pytest

from deai_flower.errors import ConfigError
from unit.privacy._support import settings_with


def test_settings_validation_messages() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^privacy\.epsilon must be > 0 \(got -1\.0\); use inf for a non-private run$",
    ):
        settings_with(epsilon=-1.0)
    with pytest.raises(ConfigError, match=r"privacy\.epsilon must be > 0"):
        settings_with(epsilon=0.0)
    with pytest.raises(ConfigError, match=r"privacy\.epsilon"):
        settings_with(epsilon=float("nan"))
    for delta in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match=r"privacy\.delta must be in \(0, 1\)"):
            settings_with(delta=delta)
    with pytest.raises(ConfigError, match=r"privacy\.max_grad_norm must be"):
        settings_with(max_grad_norm=0.0)
    with pytest.raises(ConfigError, match=r"privacy\.accountant must be one of: prv, rdp"):
        settings_with(accountant="gdp")
    with pytest.raises(ConfigError, match=r"privacy\.grad_sample_mode must be one of: auto, ghost, hooks"):
        settings_with(grad_sample_mode="functorch")


def test_settings_private_flag() -> None:
    assert settings_with().private
    assert not settings_with(epsilon=math.inf).private

"""Tests for deai_flower.privacy.accounting: noise calibration against the protocol's ε."""

from __future__ import annotations

import pytest

from deai_flower.errors import PrivacyError
from deai_flower.privacy.accounting import CALIBRATION_TOLERANCE, calibrate_noise
from deai_flower.protocol.epsilon import epsilon_of

DELTA = 1e-5


@pytest.mark.filterwarnings("ignore:Optimal order is the")  # ε = 10⁴ is met at the smallest RDP order
@pytest.mark.parametrize(
    ("epsilon", "sample_rate", "steps", "accountant"),
    [(8.0, 16 / 114, 21, "rdp"), (1.0, 0.1, 30, "rdp"), (50.0, 0.2, 10, "rdp"), (1e4, 0.5, 5, "rdp"),
     (8.0, 0.25, 12, "prv")],
)  # fmt: skip
def test_calibration_spends_the_budget_to_within_its_tolerance_and_never_more(
    epsilon: float, sample_rate: float, steps: int, accountant: str
) -> None:
    sigma = calibrate_noise(target_epsilon=epsilon, delta=DELTA, sample_rate=sample_rate, steps=steps,
                               accountant=accountant)  # fmt: skip
    spent = epsilon_of([(sigma, sample_rate, steps)], delta=DELTA, accountant=accountant)
    assert epsilon - CALIBRATION_TOLERANCE <= spent <= epsilon


def test_a_budget_no_noise_can_meet_is_a_privacy_error() -> None:
    # RDP over Opacus' orders cannot go below log(1/delta)/62 whatever the noise
    with pytest.raises(PrivacyError, match="budget is too low"):
        calibrate_noise(target_epsilon=0.01, delta=DELTA, sample_rate=0.01, steps=1000, accountant="rdp")

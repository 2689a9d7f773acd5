"""Noise calibration: the noise multiplier that spends a planned budget.

Pure maths on :func:`deai_flower.protocol.epsilon.epsilon_of` (no torch): the accountant
that calibrates a participant's noise is the very one that checks each of its rounds and
that attesters and ``deai verify`` recompute ε with.
"""

from __future__ import annotations

import functools
import warnings

from deai_flower.errors import PrivacyError
from deai_flower.protocol.epsilon import epsilon_of

__all__ = ["CALIBRATION_TOLERANCE", "EPSILON_TOLERANCE", "calibrate_noise"]

#: Slack when comparing a spent epsilon with the budget: calibration targets the budget
#: exactly, so float noise must not turn the last planned round into a refusal.
EPSILON_TOLERANCE = 1e-9

#: Calibration spends the planned rounds' budget to within this (Opacus'
#: ``get_noise_multiplier`` default), never more than the budget.
CALIBRATION_TOLERANCE = 0.01
#: Noise multipliers searched: beyond the largest no budget is met (Opacus' MAX_SIGMA);
#: below the smallest a budget is spent to well within the tolerance anyway.
_SIGMA_RANGE = (1e-3, 1e6)


@functools.lru_cache(maxsize=256)
def calibrate_noise(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """The noise multiplier whose ``steps`` steps at ``sample_rate`` spend an epsilon in
    [target - tolerance, target], by the same accountant that later checks each round.

    Brent's method (scipy) on Opacus' accountant, in a bracket found by doubling, stopped
    at the first probe inside the window: 5 to 8 accountant evaluations. Opacus'
    ``get_noise_multiplier`` bisects from [0, 20] in about 16, each ~0.06 s with RDP (151
    Rényi orders), which made calibration half of the CPU time of the whole-experiment
    tests. Memoised: clients with equal data sizes share one.

    Raises:
        PrivacyError: even the largest noise multiplier searched spends more than the target.
    """
    from scipy.optimize import brentq

    @functools.lru_cache(maxsize=None)
    def spent(sigma: float) -> float:
        with warnings.catch_warnings():
            # Probes far from the answer make the largest or smallest RDP order the best
            # one, which Opacus notes; irrelevant for the value returned.
            warnings.filterwarnings("ignore", message="Optimal order is the")
            return epsilon_of([(sigma, sample_rate, steps)], delta=delta, accountant=accountant)

    smallest, largest = _SIGMA_RANGE
    high = 1.0  # spent(high) <= target < spent(high / 2)
    while spent(high) > target_epsilon:
        high *= 2
        if high > largest:
            raise PrivacyError(
                f"cannot calibrate noise for ε={target_epsilon:g}, δ={delta:g} over {steps} steps at "
                f"sample rate {sample_rate:.4g}: even σ={largest:g} spends more (the budget is too low)"
            )
    while high / 2 >= smallest and spent(high / 2) <= target_epsilon:
        high /= 2
    if target_epsilon - spent(high) <= CALIBRATION_TOLERANCE or high / 2 < smallest:
        return high

    def above_goal(sigma: float) -> float:
        epsilon = spent(sigma)
        if target_epsilon - CALIBRATION_TOLERANCE <= epsilon <= target_epsilon:
            raise _Calibrated(sigma)  # the first probe in the window ends the search
        return epsilon - (target_epsilon - CALIBRATION_TOLERANCE / 2)

    try:
        brentq(above_goal, high / 2, high, xtol=1e-15, rtol=1e-15, maxiter=200)
    except _Calibrated as found:
        return found.sigma
    except RuntimeError:  # no convergence: cannot happen for a monotone epsilon, but stay within the budget
        pass
    return high


class _Calibrated(Exception):
    """Ends the calibration search: ``sigma`` spends an epsilon inside the window."""

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

"""A client's differential-privacy settings, checked when they are built."""

from __future__ import annotations

import math
from dataclasses import dataclass

from deai_flower.errors import ConfigError
from deai_flower.protocol.epsilon import ACCOUNTANTS

__all__ = ["ACCOUNTANTS", "GRAD_SAMPLE_MODES", "PrivacySettings"]

# Per-sample-gradient implementation: "hooks", "ghost" or "auto". Hooks materialise
# every example's gradient; ghost clipping computes per-example gradient *norms* without
# them for Linear layers (other layers fall back to per-sample gradients) and then
# backpropagates a second time through the clipped loss. Measured with this trainer,
# one CPU thread, batch 64 (bench/bench_dp.py, samples/s hooks vs ghost): MLP [64] on
# digits (4.8k parameters) 45.9k vs 39.8k; MLP [256, 128] (51k) 11.1k vs 24.0k; CNN on
# digits 11.5k vs 10.2k; CNN on MNIST (55k, 50k of them in its Linear head) 2.7k vs
# 2.4-2.6k over three runs. So ghost pays off only for large all-Linear models, and
# "auto" picks it for models whose every trainable layer is Linear once they are large
# enough (deai_flower.privacy.training.choose_grad_sample_mode). Both modes give the
# same update (tested); "hooks" is also the fallback for a layer ghost clipping rejects.
GRAD_SAMPLE_MODES: tuple[str, ...] = ("auto", "ghost", "hooks")


@dataclass(frozen=True)
class PrivacySettings:
    """A client's differential-privacy configuration.

    ``epsilon=math.inf`` disables DP (plain SGD). ``accountant`` is ``"rdp"`` (Rényi DP,
    fast) or ``"prv"`` (privacy random variables, tighter, slower). ``secure_mode``
    draws noise and samples from a cryptographically secure generator (``torchcsprng``)
    and then ignores seeds. ``grad_sample_mode`` is Opacus' per-sample-gradient
    implementation (``"auto"``, ``"hooks"`` or ``"ghost"``). ``state_dir``, when set, is
    where each client keeps its ledger file so its accounting survives a restart.
    """

    epsilon: float
    delta: float
    max_grad_norm: float
    accountant: str
    secure_mode: bool = False
    grad_sample_mode: str = "auto"
    state_dir: str | None = None

    def __post_init__(self) -> None:
        if not is_number(self.epsilon) or not self.epsilon > 0:
            raise ConfigError(
                f"privacy.epsilon must be > 0 (got {self.epsilon!r}); "
                "use inf for a non-private run"
            )
        if not is_number(self.delta) or not 0.0 < self.delta < 1.0:
            raise ConfigError(f"privacy.delta must be in (0, 1) (got {self.delta!r})")
        if (
            not is_number(self.max_grad_norm)
            or not self.max_grad_norm > 0
            or not math.isfinite(self.max_grad_norm)
        ):
            raise ConfigError(
                f"privacy.max_grad_norm must be a finite number > 0 (got {self.max_grad_norm!r})"
            )
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"privacy.accountant must be one of: {', '.join(ACCOUNTANTS)} "
                f"(got {self.accountant!r})"
            )
        if not isinstance(self.secure_mode, bool):
            raise ConfigError(f"privacy.secure_mode must be a boolean (got {self.secure_mode!r})")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(
                f"privacy.grad_sample_mode must be one of: {', '.join(GRAD_SAMPLE_MODES)} "
                f"(got {self.grad_sample_mode!r})"
            )

    @property
    def private(self) -> bool:
        """Whether training is differentially private (finite epsilon)."""
        return math.isfinite(self.epsilon)


def is_number(value: object) -> bool:
    """Whether ``value`` is an int or float, not a bool, not NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)

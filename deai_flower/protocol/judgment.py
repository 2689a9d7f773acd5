"""Reveal judgment: what every attester, and ``deai verify`` after them, decides about one
revealed update (docs/protocol.md §2.5, §3).

A reveal is aggregated unless one of these refuses it, checked in this order:

* ``dp-claims``: its DP record contradicts the spec or understates the ε its revealed
  history gives (:func:`dp_claim_problem`); its blob is then not even read;
* ``unavailable``: the store cannot produce its blob (an attester then abstains, §4.2:
  a revealer may serve some attesters and not others);
* ``invalid``: the blob does not hash to its CID, exceeds the spec's size limit, or is
  not a blob of the run's array layout (:func:`judge_blob`).

Pure: the caller hands in how to read a blob by CID (a store's ``get``); ε is
:func:`~deai_flower.protocol.epsilon.epsilon_of`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from deai_flower.errors import BlobFormatError, BlobNotFoundError, StoreError, StoreUnavailableError
from deai_flower.protocol.blob import ArraySpec, decode_arrays
from deai_flower.protocol.encoding import ACCOUNTANT_NAMES, DpParams, from_wad, to_wad
from deai_flower.protocol.epsilon import epsilon_of
from deai_flower.protocol.outcome import Refusal
from deai_flower.protocol.rules import RevealedUpdate
from deai_flower.protocol.spec import RunSpec

__all__ = [
    "EPSILON_ATOL",
    "EPSILON_RTOL",
    "RevealClaims",
    "dp_claim_problem",
    "epsilon_close",
    "judge_blob",
    "judge_reveal",
]

#: Relative tolerance on an ε compared with the one recomputed from revealed parameters
#: (the chain holds σ, q and δ in 18-decimal fixed point, so recomputation is not exact).
EPSILON_RTOL = 1e-6
#: Absolute floor of that comparison, for ε near zero.
EPSILON_ATOL = 1e-9
#: How a refusal names the comparison it made.
TOLERANCE_NOTE = f"tolerance EPSILON_RTOL={EPSILON_RTOL:g}, relative"


def epsilon_close(a: float, b: float) -> bool:
    """Whether two ε values agree within :data:`EPSILON_RTOL` (or :data:`EPSILON_ATOL`)."""
    return math.isclose(a, b, rel_tol=EPSILON_RTOL, abs_tol=EPSILON_ATOL)


@dataclass(frozen=True)
class RevealClaims:
    """What the chain records of one reveal: who, the blob's CID and its claims."""

    participant: str
    cid: str
    num_examples: int
    dp: DpParams


def dp_claim_problem(spec: RunSpec, *, num_examples: int, dp: DpParams,
                     history: Sequence[tuple[float, float, int]]) -> str | None:  # fmt: skip
    """Why a reveal's DP claims contradict what can be checked, or None.

    ``history``: the participant's revealed (σ, q, steps) in this run before this reveal.
    Checked for a private spec: the spec's accountant and δ; σ > 0 and steps > 0; q equal
    to ``min(batch_size, n) / n`` for the revealed n and steps to ``local_epochs *
    floor(1/q)`` (how DP-SGD runs under the spec); and the cumulative ε recomputed from
    the whole history, this reveal included, neither understated nor past the budget.
    What happened inside the silo (that this noise was really added) stays a claim.
    """
    p = spec.privacy
    if not spec.private:
        return None
    accountant = ACCOUNTANT_NAMES.get(dp.accountant)
    if accountant != p.accountant:
        return f"accounts with {accountant or dp.accountant}, the spec names {p.accountant}"
    if dp.delta_wad != to_wad(p.delta):
        return f"reveals δ={from_wad(dp.delta_wad):g}, the spec gives {p.delta:g}"
    sigma, rate = from_wad(dp.noise_multiplier_wad), from_wad(dp.sample_rate_wad)
    if not sigma > 0 or dp.steps <= 0:
        return f"reveals σ={sigma:g} and {dp.steps} steps in a private run (no noise, or no DP-SGD)"
    if num_examples <= 0:
        return f"reveals {num_examples} examples"
    expected_rate = min(spec.training.batch_size, num_examples) / num_examples
    if not math.isclose(rate, expected_rate, rel_tol=1e-9, abs_tol=1e-15):
        return (f"reveals q={rate:.9g}, the spec's batch size gives {expected_rate:.9g} for its "
                f"{num_examples} examples")  # fmt: skip
    expected_steps = spec.training.local_epochs * int(1 / expected_rate)
    if dp.steps != expected_steps:
        return f"reveals {dp.steps} steps, the spec's training gives {expected_steps} at q={expected_rate:.9g}"
    epsilon = epsilon_of([*history, (sigma, rate, dp.steps)], delta=from_wad(dp.delta_wad), accountant=accountant)
    if dp.epsilon < epsilon and not epsilon_close(dp.epsilon, epsilon):
        return (f"claims cumulative ε={dp.epsilon:.6f}, its revealed history gives ε={epsilon:.6f} "
                f"({TOLERANCE_NOTE})")  # fmt: skip
    if epsilon > p.epsilon and not epsilon_close(epsilon, p.epsilon):
        return f"its revealed history gives ε={epsilon:.6f}, past the run's budget {p.epsilon:g}"
    return None


def judge_blob(read: Callable[[], bytes], *, max_bytes: int,
               expected: ArraySpec | None) -> dict[str, np.ndarray] | Refusal:  # fmt: skip
    """A blob's arrays, or why they cannot be aggregated: ``unavailable`` when ``read``
    (a store's ``get``, which checks the bytes against the CID) cannot produce it,
    ``invalid`` when they do not hash to the CID or are not a blob of the ``expected``
    layout within ``max_bytes``."""
    try:
        return decode_arrays(read(), max_bytes=max_bytes, expected=expected)
    except (BlobNotFoundError, StoreUnavailableError) as exc:
        return Refusal("unavailable", str(exc))
    except (StoreError, BlobFormatError) as exc:
        return Refusal("invalid", str(exc))


def judge_reveal(spec: RunSpec, reveal: RevealClaims, *, history: Sequence[tuple[float, float, int]],
                 read: Callable[[str], bytes],
                 expected: ArraySpec | None) -> RevealedUpdate | Refusal:  # fmt: skip
    """The verdict on one reveal (the module docstring's order): the update to aggregate,
    or the :class:`~deai_flower.protocol.outcome.Refusal` that excludes it.

    ``history``: the participant's revealed (σ, q, steps) before this reveal; ``read``:
    the blob's bytes by CID; ``expected``: the run's array layout (its initial model's).
    """
    claim = dp_claim_problem(spec, num_examples=reveal.num_examples, dp=reveal.dp, history=history)
    if claim is not None:
        return Refusal("dp-claims", f"DP claims: {claim}")
    arrays = judge_blob(lambda: read(reveal.cid), max_bytes=spec.max_blob_bytes, expected=expected)
    if isinstance(arrays, Refusal):
        return arrays
    return RevealedUpdate(reveal.participant, reveal.num_examples, arrays, reveal.dp)

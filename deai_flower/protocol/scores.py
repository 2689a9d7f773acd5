"""Contribution scores for the reward pool, bit-identical for every honest attester.

Scores are non-negative integers (encoded as ``uint32`` on chain), so that attesters
compare and sign exact values. They follow the conventions of the aggregation rules
(:mod:`.rules`, docs/protocol.md §4): updates in canonical order (ascending address as a
160-bit integer), every value widened to float64, every operation a correctly rounded
IEEE-754 double operation in the order given below (no fused multiply-add), and every
reduction over a vector an exactly rounded sum (Python's ``math.fsum``). The scores are
then a function of the revealed bytes alone: not of the order the updates were read in,
the machine, the BLAS library or the thread count.

**Alignment scores** (:func:`alignment_scores`): how much each revealed update agrees
with the weighted sum of the others, damped when it is much larger than is typical.
Updates are full model weights, ``u_1..u_n`` in canonical order, ``G`` the round's
global model (the arrays the updates were trained from):

1. ``delta_i`` = ``float64(u_i[t]) - float64(G[t])`` elementwise for every tensor ``t``;
   each difference flattened row-major and the tensors concatenated in name order
   (ascending, as Python sorts ``str``). ``w_i`` = ``float(numExamples_i)`` (a double).
2. ``S`` = ``w_1*delta_1``, then ``S = S + w_i*delta_i`` for ``i = 2..n`` (elementwise:
   each product rounded to double, then added).
3. With ``fsum`` the exactly rounded sum of a vector's elements and ``x*y`` the
   elementwise double product: ``a_i = fsum(delta_i*S)``, ``n_i = fsum(delta_i*delta_i)``,
   ``T = fsum(S*S)``.
4. ``d_i = a_i - w_i*n_i`` (the dot product of ``delta_i`` with ``R_i = S - w_i*delta_i``,
   the weighted sum of the *other* updates) and
   ``r_i = max(0, (T - (2*w_i)*a_i) + (w_i*w_i)*n_i)`` (``||R_i||^2``), double operations
   in the order written.
5. ``cos_i = d_i / (sqrt(n_i) * sqrt(r_i))``, or 0 when ``n_i == 0`` or ``r_i == 0``;
   ``c_i = min(1, max(0, cos_i))``.
6. ``med`` = the lower median of ``sqrt(n_j)`` over all ``n`` updates (the element at
   0-based index ``(n - 1) // 2`` of the ascending list); ``m_i = min(1, med / sqrt(n_i))``,
   or 0 when ``n_i == 0``.
7. ``score_i = floor((SCORE_SCALE * c_i) * m_i)``, an integer in ``[0, SCORE_SCALE]``.

With a single update there are no others: its score is ``SCORE_SCALE`` when its delta is
non-zero (``n_1 > 0``) and 0 otherwise. ``sqrt`` is the correctly rounded square root.

Consequences: an update equal to the global model (a free-rider) scores 0; one that adds
noise unrelated to the others' direction has ``cos`` near 0; one that points against the
others (a sign-flipping poisoner) scores 0; one scaled up beyond the median norm loses in
proportion (``m_i``). Caveats of the definition: the lower median makes the magnitude
factor 0 for everyone when at least half of the updates are zero deltas (two updates, one
of them a free-rider, score 0 both); and an update opposing the others with more weight
than they have together flips the others' ``R_i`` and so their ``cos`` too. ``r_i`` is
computed from ``T``, ``a_i`` and ``n_i`` and loses relative accuracy when ``R_i`` is
tiny next to ``S`` (one update dominating by weight); it stays deterministic.

Inputs must be finite (accepted blobs are, §3). Float32 and int64 tensors, with weights
below 2^64, cannot overflow any step; float64 tensors with magnitudes near 1e100 and
beyond can, and then :class:`ValueError` is raised, identically on every machine.

**Loss improvement scores** (:func:`loss_improvement_scores`): losses quantized to
integer micro-nats (``round_half_even(loss * SCORE_SCALE)``, the product a double), and
each update's score is how much it lowers the global model's quantized validation loss,
clamped to ``[0, MAX_SCORE]``. Quantizing absorbs last-bit differences in how losses were
reduced, except for a loss that falls exactly at a rounding boundary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from deai_flower.protocol.rules import RevealedUpdate, canonical_order

__all__ = [
    "MAX_SCORE",
    "SCORE_SCALE",
    "alignment_scores",
    "loss_improvement_scores",
    "quantize_loss",
]

#: Scores are fixed point with six decimals: 1.0 is SCORE_SCALE (and a loss unit 1e-6 nats).
SCORE_SCALE = 1_000_000

#: Largest score: scores are encoded as uint32 on chain.
MAX_SCORE = 2**32 - 1


def _exact_sum(values: np.ndarray, what: str) -> float:
    """The exactly rounded sum of ``values`` (float64), refusing overflow."""
    try:
        total = math.fsum(values.tolist())
    except (OverflowError, ValueError) as exc:  # intermediate overflow, or inf + -inf
        raise ValueError(f"cannot score: {what} overflows a double ({exc})") from None
    if not math.isfinite(total):
        raise ValueError(f"cannot score: {what} overflows a double")
    return total


def _flat_deltas(ordered: list[RevealedUpdate], global_arrays: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """``delta_i`` of every update: float64 differences, tensors in name order, flattened."""
    names = sorted(global_arrays)
    reference = {name: np.asarray(global_arrays[name], dtype=np.float64) for name in names}
    deltas = []
    for update in ordered:
        missing = sorted(set(names) - set(update.arrays))
        unexpected = sorted(set(update.arrays) - set(names))
        if missing or unexpected:
            raise ValueError(f"update from {update.participant} does not match the global model's tensors: "
                             f"missing {missing}, unexpected {unexpected}")  # fmt: skip
        parts = []
        for name in names:
            array = np.asarray(update.arrays[name])
            if array.shape != reference[name].shape:
                raise ValueError(f"update from {update.participant}: tensor {name!r} has shape {array.shape}, "
                                 f"the global model's is {reference[name].shape}")  # fmt: skip
            parts.append((array.astype(np.float64) - reference[name]).ravel())
        delta = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)
        if not np.isfinite(delta).all():
            raise ValueError(f"cannot score: update from {update.participant} is not finite or overflows a double")
        deltas.append(delta)
    return deltas


@np.errstate(over="ignore", invalid="ignore")  # overflow is detected and refused (ValueError)
def _alignment_terms(
    updates: Sequence[RevealedUpdate], global_arrays: Mapping[str, np.ndarray]
) -> dict[str, tuple[float, float]]:
    """Address -> ``(c_i, m_i)``: the clamped cosine and the magnitude factor (steps 1-6)."""
    if not updates:
        return {}
    ordered = canonical_order(updates)
    deltas = _flat_deltas(ordered, global_arrays)
    weights = [float(u.num_examples) for u in ordered]
    norms2 = [_exact_sum(delta * delta, "a squared norm") for delta in deltas]
    norms = [math.sqrt(v) for v in norms2]
    if len(ordered) == 1:  # no others to agree with: full score for any non-zero delta
        full = 1.0 if norms2[0] > 0.0 else 0.0
        return {ordered[0].participant: (full, full)}

    total = np.multiply(deltas[0], weights[0])
    product = np.empty_like(total)
    for delta, w in zip(deltas[1:], weights[1:], strict=True):
        np.multiply(delta, w, out=product)
        total += product
    if not np.isfinite(total).all():
        raise ValueError("cannot score: the weighted sum of the updates overflows a double")
    total_norm2 = _exact_sum(total * total, "the weighted sum's squared norm")
    median = sorted(norms)[(len(norms) - 1) // 2]

    terms = {}
    for update, delta, w, n, norm in zip(ordered, deltas, weights, norms2, norms, strict=True):
        a = _exact_sum(delta * total, "a dot product")
        dot_others = a - w * n
        others_norm2 = max(0.0, (total_norm2 - (2.0 * w) * a) + (w * w) * n)
        if n == 0.0 or others_norm2 == 0.0:
            cos = 0.0
        else:
            cos = dot_others / (norm * math.sqrt(others_norm2))
        clamped = min(1.0, max(0.0, cos))
        magnitude = 0.0 if n == 0.0 else min(1.0, median / norm)
        terms[update.participant] = (clamped, magnitude)
    return terms


def alignment_scores(updates: Sequence[RevealedUpdate], global_arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Address -> alignment score in ``[0, SCORE_SCALE]`` (definition in the module docstring).

    ``updates`` may come in any order; the result depends only on their bytes, weights and
    addresses. No updates give no scores.

    Raises:
        ValueError: an update's tensor names or shapes differ from ``global_arrays``'s,
            two updates share an address, or a value overflows a double.
    """
    return {address: math.floor((SCORE_SCALE * c) * m)
            for address, (c, m) in _alignment_terms(updates, global_arrays).items()}  # fmt: skip


def quantize_loss(loss: float) -> int:
    """A loss in nats as an integer number of micro-nats (1e-6 nats).

    ``round(loss * SCORE_SCALE)``: the product is a double, rounded to the nearest
    integer with ties to even.

    Raises:
        ValueError: the loss is NaN or infinite.
    """
    value = float(loss)
    if not math.isfinite(value):
        raise ValueError(f"cannot quantize a non-finite loss ({value})")
    return round(value * SCORE_SCALE)


def loss_improvement_scores(global_loss: float, losses: Mapping[str, float]) -> dict[str, int]:
    """Address -> how much its model lowers the global model's validation loss.

    ``min(MAX_SCORE, max(0, quantize_loss(global_loss) - quantize_loss(loss_i)))``, in
    micro-nats: a model no better than the global one scores 0.

    Raises:
        ValueError: a loss is NaN or infinite.
    """
    reference = quantize_loss(global_loss)
    return {address: min(MAX_SCORE, max(0, reference - quantize_loss(loss))) for address, loss in losses.items()}

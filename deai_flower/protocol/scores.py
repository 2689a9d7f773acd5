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
with the coordinate-wise median of the *other* updates (FedMedian's aggregate without
it, which no single update can drag far), damped when it is much larger than is
typical. Updates are full model weights, ``u_1..u_n`` in canonical order, ``G`` the
round's global model (the arrays the updates were trained from):

1. ``delta_i`` = ``float64(u_i[t]) - float64(G[t])`` elementwise for every tensor ``t``;
   each difference flattened row-major and the tensors concatenated in name order
   (ascending, as Python sorts ``str``).
2. ``M_i`` = the coordinate-wise median of the ``delta_j``, ``j != i``: at each
   coordinate those ``n - 1`` values sorted ascending, the middle one for odd ``n - 1``,
   ``(a + b) / 2`` of the two middle ones ``a <= b`` for even ``n - 1`` (double operations).
3. With ``fsum`` the exactly rounded sum of a vector's elements and ``x*y`` the
   elementwise double product: ``a_i = fsum(delta_i*M_i)``, ``n_i = fsum(delta_i*delta_i)``,
   ``t_i = fsum(M_i*M_i)``.
4. ``cos_i = a_i / (sqrt(n_i) * sqrt(t_i))``, or 0 when ``n_i == 0`` or ``t_i == 0``;
   ``c_i = min(1, max(0, cos_i - CHANCE_MARGIN / sqrt(D)))`` with ``D`` the number of
   coordinates and ``CHANCE_MARGIN = 2``: the cosine of a direction drawn independently
   of ``M_i`` is about normal with standard deviation ``1/sqrt(D)``, so only agreement
   beyond two standard deviations of chance counts (noise sent as an update earns
   almost nothing, honest DP-SGD updates agree well beyond it).
5. ``med`` = the upper median of ``sqrt(n_j)`` over all ``n`` updates (the element at
   0-based index ``n // 2`` of the ascending list); ``m_i = min(1, med / sqrt(n_i))``,
   or 0 when ``n_i == 0``.
6. ``score_i = floor((SCORE_SCALE * c_i) * m_i)``, an integer in ``[0, SCORE_SCALE]``.

With a single update there are no others: its score is ``SCORE_SCALE`` when its delta is
non-zero (``n_1 > 0``) and 0 otherwise. ``sqrt`` is the correctly rounded square root.
Example counts do not enter: a silo's weight in the aggregate is its (bounded) count;
its pay is for the direction and size of what it sent.

Consequences: an update equal to the global model (a free-rider) scores 0; one that adds
noise unrelated to the others has ``cos`` near 0 (the others' median owes nothing to
it); one that points against the majority (a sign-flipping poisoner) scores 0, and while
honest updates are a majority of the others the medians stay on their side; one scaled
up beyond the median norm loses in proportion (``m_i``). Caveats: when half or more of
the updates are free-riders or poisoners the medians are theirs, and so are the scores
(as the model is under FedMedian); with two updates, each is scored against the other
alone (an honest update next to a free-rider scores 0 too).

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
    "CHANCE_MARGIN",
    "MAX_SCORE",
    "SCORE_SCALE",
    "alignment_scores",
    "loss_improvement_scores",
    "quantize_loss",
]

#: Scores are fixed point with six decimals: 1.0 is SCORE_SCALE (and a loss unit 1e-6 nats).
SCORE_SCALE = 1_000_000

#: Chance agreement discounted from an alignment cosine, in standard deviations (1/sqrt(D)).
CHANCE_MARGIN = 2.0

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


def _others_medians(deltas: list[np.ndarray]) -> list[np.ndarray]:
    """``M_i`` for every ``i`` (step 2), from one sort: removing the value of rank ``r``
    from a sorted column shifts the order statistics at and above ``r`` down by one."""
    stacked = np.stack(deltas)
    order = np.argsort(stacked, axis=0, kind="stable")
    ordered = np.take_along_axis(stacked, order, axis=0)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(len(deltas))[:, None], axis=0)
    others = len(deltas) - 1

    def statistic(k: int, rank: np.ndarray) -> np.ndarray:  # k-th smallest of the others
        return np.where(k < rank, ordered[k], ordered[min(k + 1, others)])

    medians = []
    for rank in ranks:
        if others % 2:
            medians.append(statistic(others // 2, rank))
        else:
            medians.append((statistic(others // 2 - 1, rank) + statistic(others // 2, rank)) / 2.0)
    return medians


@np.errstate(over="ignore", invalid="ignore")  # overflow is detected and refused (ValueError)
def _alignment_terms(
    updates: Sequence[RevealedUpdate], global_arrays: Mapping[str, np.ndarray]
) -> dict[str, tuple[float, float]]:
    """Address -> ``(c_i, m_i)``: the clamped cosine and the magnitude factor (steps 1-5)."""
    if not updates:
        return {}
    ordered = canonical_order(updates)
    deltas = _flat_deltas(ordered, global_arrays)
    norms2 = [_exact_sum(delta * delta, "a squared norm") for delta in deltas]
    norms = [math.sqrt(v) for v in norms2]
    if len(ordered) == 1:  # no others to agree with: full score for any non-zero delta
        full = 1.0 if norms2[0] > 0.0 else 0.0
        return {ordered[0].participant: (full, full)}
    typical = sorted(norms)[len(norms) // 2]
    chance = CHANCE_MARGIN / math.sqrt(len(deltas[0])) if len(deltas[0]) else 0.0
    terms = {}
    for update, delta, n2, norm, median in zip(ordered, deltas, norms2, norms, _others_medians(deltas), strict=True):
        if not np.isfinite(median).all():
            raise ValueError("cannot score: the median of the updates overflows a double")
        median_norm = math.sqrt(_exact_sum(median * median, "a median's squared norm"))
        if n2 == 0.0 or median_norm == 0.0:
            cos = 0.0
        else:
            cos = _exact_sum(delta * median, "a dot product") / (norm * median_norm)
        clamped = min(1.0, max(0.0, cos - chance))
        magnitude = 0.0 if n2 == 0.0 else min(1.0, typical / norm)
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

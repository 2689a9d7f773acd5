"""Contribution scores for the reward pool, bit-identical for every honest attester.

Scores are non-negative integers (encoded as ``uint32`` on chain), so that attesters
compare and sign exact values. They follow the conventions of the aggregation rules
(:mod:`.rules`, docs/protocol.md §4): updates in canonical order (ascending address as a
160-bit integer), every value widened to float64, every operation a correctly rounded
IEEE-754 double operation in the order given below (no fused multiply-add), and every
reduction over a vector a *piecewise sum* whose every addition is fixed (below). The scores are
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
3. With ``x*y`` the elementwise double product and ``S(v)`` the piecewise sum of a
   vector ``v``: each tensor's stretch of ``v`` is cut into consecutive pieces of
   ``PIECE = 16,384`` elements (the last one shorter); a piece is summed as a pairwise
   tree — padded with zeros to ``PIECE`` elements, then ``p = p[0::2] + p[1::2]``
   (elementwise double additions) until one element is left — and the piece sums,
   tensors in name order and pieces in order, are summed exactly rounded (Python's
   ``math.fsum``): ``a_i = S(delta_i*M_i)``, ``n_i = S(delta_i*delta_i)``,
   ``t_i = S(M_i*M_i)``. Every addition is fixed by the definition, so the result is the
   same on every machine; pieces let an attester hold one piece of every update's
   delta at a time, and the tree is vectorised (a million coordinates in milliseconds).
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

from deai_flower.protocol.piecewise import check_layout, delta_pieces, exact_total, tree_sums
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


def _others_medians(deltas: np.ndarray) -> np.ndarray:
    """``M_i`` for every row ``i`` of ``deltas`` (step 2), from one sort: removing the
    value of rank ``r`` from a sorted column shifts the order statistics at and above
    ``r`` down by one."""
    order = np.argsort(deltas, axis=0, kind="stable")
    ordered = np.take_along_axis(deltas, order, axis=0)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(len(deltas))[:, None], axis=0)
    others = len(deltas) - 1

    def statistic(k: int) -> np.ndarray:  # k-th smallest of the others, for every row
        return np.where(k < ranks, ordered[k], ordered[min(k + 1, others)])

    if others % 2:
        return statistic(others // 2)
    return (statistic(others // 2 - 1) + statistic(others // 2)) / 2.0


@np.errstate(over="ignore", invalid="ignore")  # overflow is detected and refused (ValueError)
def _alignment_terms(
    updates: Sequence[RevealedUpdate], global_arrays: Mapping[str, np.ndarray]
) -> dict[str, tuple[float, float]]:
    """Address -> ``(c_i, m_i)``: the clamped cosine and the magnitude factor (steps 1-5).

    Extra memory beyond the updates: a few ``n x PIECE`` float64 arrays (50 MiB at n = 100).
    """
    if not updates:
        return {}
    ordered = canonical_order(updates)
    names = check_layout(ordered, global_arrays)
    n = len(ordered)
    # per update, the piece sums of delta*delta, delta*M and M*M (step 3)
    own: list[list[float]] = [[] for _ in range(n)]
    dots: list[list[float]] = [[] for _ in range(n)]
    medians: list[list[float]] = [[] for _ in range(n)]
    coordinates = 0
    for deltas in delta_pieces(ordered, global_arrays, names):
        coordinates += deltas.shape[1]
        median = _others_medians(deltas) if n > 1 else np.zeros_like(deltas)
        if not np.isfinite(median).all():
            raise ValueError("cannot score: the median of the updates overflows a double")
        for sums, products in ((own, deltas * deltas), (dots, deltas * median), (medians, median * median)):
            for i, value in enumerate(tree_sums(products).tolist()):
                sums[i].append(value)
    norms2 = [exact_total(pieces, "a squared norm") for pieces in own]
    norms = [math.sqrt(v) for v in norms2]
    if n == 1:  # no others to agree with: full score for any non-zero delta
        full = 1.0 if norms2[0] > 0.0 else 0.0
        return {ordered[0].participant: (full, full)}
    typical = sorted(norms)[n // 2]
    chance = CHANCE_MARGIN / math.sqrt(coordinates) if coordinates else 0.0
    terms = {}
    for i, update in enumerate(ordered):
        median_norm = math.sqrt(exact_total(medians[i], "a median's squared norm"))
        if norms2[i] == 0.0 or median_norm == 0.0:
            cos = 0.0
        else:
            cos = exact_total(dots[i], "a dot product") / (norms[i] * median_norm)
        clamped = min(1.0, max(0.0, cos - chance))
        magnitude = 0.0 if norms2[i] == 0.0 else min(1.0, typical / norms[i])
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

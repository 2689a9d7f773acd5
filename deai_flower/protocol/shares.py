"""The ``shares`` contribution score (the default): equal shares for updates that carry
their DP noise, are not copies, and agree with the others beyond chance once the public
trajectory is removed.

Under DP an honest update is mostly noise, so any score that grows with an update's
quality pays most to whoever drops its noise, copies a neighbour or echoes the public
step (issue 24, docs/incentives.md). This score does not grade quality: it admits or
refuses each update by tests calibrated to the noise the run's spec fixes, and every
admitted update scores the same (``SCORE_SCALE``), so that an update's pay cannot grow
with less noise. The threat model and the known limits are in docs/incentives.md.

The exact rule, which an independent verifier implements, is docs/protocol.md §4.3.3;
in short (``D`` coordinates, ``n`` updates, ``G`` the round's global model, ``P`` the one
before it):

1. **Residuals.** ``delta_i = u_i - G``; ``p = P - G`` (the public step, none in round
   1); ``r_i = delta_i - (a_i / pp) p`` with ``a_i = S(delta_i*p)``, ``pp = S(p*p)``:
   what anyone could echo from the chain is removed. ``R`` is their Gram matrix.
2. ``s_i``: the per-coordinate std of the DP noise an honest update of i's claims
   carries (:func:`update_noise_std`).
3. **Noise.** Refused when its own power (its residual's spread around the others'
   mean, less the others' claimed noise) is below ``NOISE_FLOOR * s_i^2``.
4. **Copies.** Both of a pair refused when their distance is below
   ``copy_bar * (s_i^2 + s_j^2)``, or their cross-power exceeds what their signals explain
   by ``shared_bar * s_i * s_j`` (one is the other plus fresh noise)
   (:func:`duplicate_bars`).
5. **Direction.** The others' admitted residuals, each scaled down to at most its
   claimed noise's power, summed and soft-thresholded per coordinate at
   ``REFERENCE_THRESHOLD`` times their noise std: ``v_i``;
   ``z_i = <r_i, v_i> / (|v_i| * max(s_i, rms(r_i)))``, at most a standard normal for
   anything independent of the others. Refused below ``MIN_AGREEMENT`` in a round where
   at least two updates, and a quarter of those tested, reach it; in another round (its
   updates stand out from noise no more than noise would) below ``-MIN_AGREEMENT`` only.
6. ``score_i = SCORE_SCALE`` when admitted, else 0: equal shares.

Conventions are :mod:`.scores`' (docs/protocol.md §4): updates in canonical order,
float64, every vector reduction a piecewise sum (:func:`.piecewise.tree_sums` per piece,
``math.fsum`` over pieces), every scalar sum ``math.fsum``, correctly rounded double
operations in the order written: a function of the revealed bytes and DP records alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from deai_flower.errors import ProtocolError
from deai_flower.protocol.encoding import DpParams, from_wad
from deai_flower.protocol.rules import RevealedUpdate, canonical_order
from deai_flower.protocol.piecewise import check_layout, delta_pieces, exact_total, tree_sums
from deai_flower.protocol.scores import SCORE_SCALE
from deai_flower.protocol.spec import RunSpec

__all__ = [
    "DUPLICATE_FLOOR",
    "MIN_AGREEMENT",
    "MOMENTUM",
    "NOISE_FLOOR",
    "REFERENCE_THRESHOLD",
    "SHARED_NOISE",
    "ShareVerdict",
    "duplicate_bars",
    "share_scores",
    "share_verdicts",
    "update_noise_std",
]

#: The SGD momentum of the release's DP-SGD (deai_flower.privacy.training.MOMENTUM).
MOMENTUM = 0.9
#: Least share of its claimed noise power an update must carry (step 3).
NOISE_FLOOR = 0.25
#: Two updates closer than this share of two independent noises are copies (step 4).
DUPLICATE_FLOOR = 0.25
#: Two updates whose cross-power exceeds what their signals explain by this share of
#: ``s_i * s_j`` share one noise: one is the other plus fresh noise (step 4).
SHARED_NOISE = 0.5
#: The others' summed residual is soft-thresholded at this many standard deviations of
#: its noise before it is a reference (step 5): coordinates where the others move no
#: more than their noise would are left out, so the test weighs where the signal is.
REFERENCE_THRESHOLD = 1.0
#: Least agreement with the others, in standard deviations of chance (step 5): noise sent
#: as an update passes about one round in twenty (one-sided 5 %).
MIN_AGREEMENT = 1.645


def duplicate_bars(coordinates: int) -> tuple[float, float]:
    """Step 4's bars for a model of ``coordinates`` parameters: ``(copy, shared noise)``.

    Two independent noises differ by ``chi^2_D / D`` times their power, and their
    cross-power is about normal with standard deviation ``1 / sqrt(D)`` of it: for a
    small model both bars move six of those standard deviations away, so that honest
    pairs are not taken for copies (with ``D = 10`` only exact copies are)."""
    spread = 6.0 * math.sqrt(2.0 / coordinates) if coordinates > 0 else math.inf
    return min(DUPLICATE_FLOOR, max(0.0, 1.0 - spread)), max(SHARED_NOISE, spread / math.sqrt(2.0))


def update_noise_std(*, noise_multiplier: float, steps: int, num_examples: int, batch_size: int,
                     learning_rate: float, max_grad_norm: float) -> float:  # fmt: skip
    """Per-coordinate standard deviation of the DP noise in an honest update.

    DP-SGD adds ``N(0, (σC)^2)`` to each step's summed clipped gradients, and SGD with
    momentum β steps by ``lr / B`` (``B = min(batch_size, num_examples)``, the expected
    batch); the noise of step ``t`` of ``T`` moves the final weights by
    ``(1 - β^(T-t+1)) / (1 - β)`` times its own step, so the variance is
    ``(lr σ C / B)^2 * sum_{k=1..T} ((1 - β^k) / (1 - β))^2``.
    """
    if steps <= 0 or noise_multiplier <= 0.0:
        return 0.0
    batch = min(int(batch_size), int(num_examples))
    step = learning_rate * noise_multiplier * max_grad_norm / batch
    gains = math.fsum(((1.0 - MOMENTUM**k) / (1.0 - MOMENTUM)) ** 2 for k in range(1, int(steps) + 1))
    return step * math.sqrt(gains)


def _noise_std(spec: RunSpec, update: RevealedUpdate) -> float:
    dp: DpParams | None = getattr(update, "dp", None)
    if dp is None:
        raise ProtocolError(f"the shares score needs the DP record of {update.participant}'s reveal")
    return update_noise_std(noise_multiplier=from_wad(dp.noise_multiplier_wad), steps=dp.steps,
                            num_examples=update.num_examples, batch_size=spec.training.batch_size,
                            learning_rate=spec.training.learning_rate,
                            max_grad_norm=spec.privacy.max_grad_norm)  # fmt: skip


class ShareVerdict:
    """Why an update was admitted or refused (for reports and tests): the statistics of
    steps 3-5 and the first test that refused it (None: admitted)."""

    __slots__ = ("agreement", "copies", "noise", "refused")

    def __init__(self, noise: float, copies: tuple[str, ...], agreement: float | None, refused: str | None) -> None:
        self.noise = noise  # own_i / s_i^2 (inf when s_i == 0)
        self.copies = copies  # addresses it is a near-copy of
        self.agreement = agreement  # z_i, None when not tested
        self.refused = refused  # "noise", "copy", "direction" or None

    def __repr__(self) -> str:
        return (f"ShareVerdict(noise={self.noise:.3g}, copies={self.copies}, agreement={self.agreement}, "
                f"refused={self.refused})")  # fmt: skip


def _rows(ordered: list[RevealedUpdate], previous: Mapping[str, np.ndarray] | None,
          names: list[str]) -> list[RevealedUpdate]:  # fmt: skip
    """The updates, and the previous global model as one more row (its delta is ``p``)."""
    if previous is None:
        return list(ordered)
    return [*ordered, RevealedUpdate("0x0", 0, {name: previous[name] for name in names})]


@np.errstate(over="ignore", invalid="ignore")
def _gram(ordered: list[RevealedUpdate], global_arrays: Mapping[str, np.ndarray],
          previous: Mapping[str, np.ndarray] | None) -> tuple[list[list[float]], int, list[float] | None]:  # fmt: skip
    """``R`` and ``D`` (step 1), and each update's coefficient along the public step
    ``a_i / pp`` (None without one)."""
    names = check_layout(ordered, global_arrays)
    rows = _rows(ordered, previous, names)
    m = len(rows)
    pieces: dict[tuple[int, int], list[float]] = {(i, j): [] for i in range(m) for j in range(i, m)}
    coordinates = 0
    for deltas in delta_pieces(rows, global_arrays, names):
        coordinates += deltas.shape[1]
        for i in range(m):
            for j, value in enumerate(tree_sums(deltas[i] * deltas[i:]).tolist(), start=i):
                pieces[(i, j)].append(value)
    g = [[0.0] * m for _ in range(m)]
    for (i, j), values in pieces.items():
        g[i][j] = g[j][i] = exact_total(values, "a dot product")
    n = len(ordered)
    if previous is None or g[n][n] == 0.0:
        return [row[:n] for row in g[:n]], coordinates, None
    pp = g[n][n]
    coefficients = [g[i][n] / pp for i in range(n)]
    return [[g[i][j] - g[i][n] * g[j][n] / pp for j in range(n)] for i in range(n)], coordinates, coefficients


@np.errstate(over="ignore", invalid="ignore")
def _agreements(ordered: list[RevealedUpdate], global_arrays: Mapping[str, np.ndarray],
                previous: Mapping[str, np.ndarray] | None, coefficients: list[float] | None,
                admitted: list[int], var: list[float], weights: list[float]) -> dict[int, tuple[float, float]]:  # fmt: skip
    """Step 5's sums for every admitted update ``i``: ``(x_i, m_i)``."""
    names = sorted(global_arrays)
    rows = _rows(ordered, previous if coefficients is not None else None, names)
    n = len(ordered)
    taus = {i: REFERENCE_THRESHOLD * math.sqrt(math.fsum(weights[j] * weights[j] * var[j] for j in admitted if j != i))
            for i in admitted}  # fmt: skip
    sums: dict[int, tuple[list[float], list[float]]] = {i: ([], []) for i in admitted}
    for deltas in delta_pieces(rows, global_arrays, names):
        if coefficients is None:
            residuals = deltas[:n]
        else:
            residuals = deltas[:n] - np.array(coefficients)[:, None] * deltas[n]
        weighted = {j: residuals[j] * weights[j] for j in admitted}
        total = np.zeros(deltas.shape[1], dtype=np.float64)
        for j in admitted:  # canonical order, one elementwise addition at a time
            total = total + weighted[j]
        for i in admitted:
            rest = total - weighted[i]
            reference = np.copysign(np.maximum(np.abs(rest) - taus[i], 0.0), rest)
            sums[i][0].append(float(tree_sums((residuals[i] * reference)[None, :])[0]))
            sums[i][1].append(float(tree_sums((reference * reference)[None, :])[0]))
    return {i: (exact_total(c, "an agreement"), exact_total(v, "a reference's norm")) for i, (c, v) in sums.items()}


def _exact_partials(values: Sequence[float]) -> list[float]:
    """Non-overlapping doubles whose exact sum is that of ``values`` (Shewchuk's partials,
    as ``math.fsum`` keeps them): exact while no partial overflows."""
    partials: list[float] = []
    for x in values:
        kept = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            high = x + y
            low = y - (high - x)
            if low:
                partials[kept] = low
                kept += 1
            x = high
        partials[kept:] = [x]
    return partials


def _others_blocks(R: list[list[float]]) -> list[float]:
    """For each ``i``, ``math.fsum`` of ``R[j][l]`` over ``j, l != i`` (step 3), the same
    double from O(n) terms each instead of O(n^2).

    ``math.fsum`` rounds the exact sum of its terms once, so any terms with the same exact
    sum give the same double: the whole matrix's exact partials less row ``i`` and column
    ``i`` plus ``R[i][i]``. Where a partial could overflow (entries near the largest
    double), the block is summed as written.
    """
    n = len(R)
    largest = max((abs(v) for row in R for v in row), default=0.0)
    if not largest * (n * n + 2 * n + 1) < 1e307:
        return [math.fsum(R[j][l] for j in range(n) if j != i for l in range(n) if l != i) for i in range(n)]
    total = _exact_partials([v for row in R for v in row])
    return [math.fsum([*total, *(-v for v in R[i]), *(-R[j][i] for j in range(n)), R[i][i]]) for i in range(n)]


def share_verdicts(spec: RunSpec, updates: Sequence[RevealedUpdate], global_arrays: Mapping[str, np.ndarray], *,
                   previous_global: Mapping[str, np.ndarray] | None = None) -> dict[str, ShareVerdict]:  # fmt: skip
    """Address -> the verdict of steps 3-5 (module docstring) on each update.

    Raises:
        ProtocolError: an update without its DP record.
        ValueError: as :func:`.scores.alignment_scores`.
    """
    if not updates:
        return {}
    ordered = canonical_order(updates)
    stds = [_noise_std(spec, u) for u in ordered]
    R, D, coefficients = _gram(ordered, global_arrays, previous_global)
    n = len(ordered)
    var = [s * s for s in stds]
    noise: list[float] = []
    blocks = _others_blocks(R) if n > 1 else []
    for i in range(n):
        if n == 1:
            own = R[0][0] / D
        else:
            others = [j for j in range(n) if j != i]
            k = float(n - 1)
            cross = math.fsum(R[i][j] for j in others)
            block = blocks[i]
            spread = R[i][i] - 2.0 * cross / k + block / (k * k)
            own = spread / D - math.fsum(var[j] for j in others) / (k * k)
        noise.append(own)
    copy_bar, shared_bar = duplicate_bars(D)
    copies: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            distance = (R[i][i] + R[j][j] - 2.0 * R[i][j]) / D
            signal = math.sqrt(max(R[i][i] / D - var[i], 0.0) * max(R[j][j] / D - var[j], 0.0))
            if distance <= copy_bar * (var[i] + var[j]) or R[i][j] / D - signal >= shared_bar * stds[i] * stds[j] > 0.0:
                copies[i].append(j)
                copies[j].append(i)
    first: list[str | None] = ["noise" if noise[i] < NOISE_FLOOR * var[i] else "copy" if copies[i] else None
                               for i in range(n)]  # fmt: skip
    admitted = [i for i in range(n) if first[i] is None]
    agreements: list[float | None] = [None] * n
    # a peer counts in the reference with at most its claimed noise's power: more noise than claimed is scaled down
    weights = [min(1.0, stds[j] / math.sqrt(R[j][j] / D)) if stds[j] > 0.0 and R[j][j] > 0.0 else 1.0 for j in range(n)]
    if len(admitted) >= 2:
        for i, (c, mass) in _agreements(ordered, global_arrays, previous_global, coefficients, admitted, var,
                                        weights).items():  # fmt: skip
            scale = max(stds[i], math.sqrt(max(R[i][i], 0.0) / D))
            agreements[i] = c / (math.sqrt(mass) * scale) if mass > 0.0 and scale > 0.0 else 0.0
    tested = [z for z in agreements if z is not None]
    # step 5's fallback: a round in which no update stands out from chance refuses only what points against the others
    standing_out = sum(z >= MIN_AGREEMENT for z in tested)
    strict = standing_out >= 2 and 4 * standing_out >= len(tested)
    bar = MIN_AGREEMENT if strict else -MIN_AGREEMENT
    verdicts: dict[str, ShareVerdict] = {}
    for i, update in enumerate(ordered):
        refused, agreement = first[i], agreements[i]
        if refused is None and agreement is not None and agreement < bar:
            refused = "direction"
        ratio = noise[i] / var[i] if var[i] > 0.0 else math.inf
        verdicts[update.participant] = ShareVerdict(ratio, tuple(ordered[j].participant for j in copies[i]),
                                                    agreement, refused)  # fmt: skip
    return verdicts


def share_scores(spec: RunSpec, updates: Sequence[RevealedUpdate], global_arrays: Mapping[str, np.ndarray], *,
                 previous_global: Mapping[str, np.ndarray] | None = None) -> dict[str, int]:  # fmt: skip
    """Address -> ``SCORE_SCALE`` for each admitted update, 0 for the others (step 6)."""
    return {address: 0 if verdict.refused else SCORE_SCALE
            for address, verdict in share_verdicts(spec, updates, global_arrays,
                                                   previous_global=previous_global).items()}  # fmt: skip

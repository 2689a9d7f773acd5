"""The ``shares`` contribution score: equal shares for updates that carry their DP noise,
are not copies, and point no worse than chance once the public trajectory is removed.

Under DP an honest update is mostly noise, so any score that grows with an update's
quality pays most to whoever drops its noise, copies a neighbour or echoes the public
step (issue 24, docs/incentives.md). This score does not grade quality: it admits or
refuses each update by tests calibrated to the noise the run's spec fixes, and every
admitted update scores the same (``SCORE_SCALE``), so that an update's pay cannot grow
with less noise. The threat model and the known limits are in docs/incentives.md.

Conventions are :mod:`.scores`' (docs/protocol.md §4): updates in canonical order,
float64, every vector reduction a piecewise sum (:func:`.piecewise.tree_sums` per piece,
``math.fsum`` over pieces), every scalar sum ``math.fsum``, correctly rounded double
operations in the order written. The tests reduce to the Gram matrix of the deltas,
so the result is a function of the revealed bytes and DP records alone.

Definitions (``D`` coordinates, ``n`` updates, ``G`` the round's global model, ``P`` the
previous round's global model when there is one):

1. ``delta_i = u_i - G`` (as :mod:`.scores` step 1), ``p = P - G`` (the public step,
   up to sign; none in round 1). ``g_ij = S(delta_i*delta_j)``, ``a_i = S(delta_i*p)``,
   ``pp = S(p*p)``; ``R_ij = g_ij - a_i*a_j/pp`` (``g_ij`` without a public step or when
   ``pp == 0``): the Gram matrix of the *residuals* ``r_i``, the deltas with their
   component along the public step removed.
2. ``s_i`` = the per-coordinate standard deviation of the DP noise an honest update of
   i's claims carries (:func:`update_noise_std`, from the spec's learning rate, batch size
   and clipping norm and the reveal's σ and steps).
3. **Noise floor.** ``e_i = r_i - mean_{j != i} r_j``; its squared norm from ``R``; the
   others' claimed noise expected in it, ``N_i = fsum(s_j^2, j != i) / (n-1)^2``, is
   subtracted: ``own_i = (|e_i|^2 / D - N_i)``. Refused when ``own_i < NOISE_FLOOR * s_i^2``
   (an honest update's own noise gives about ``s_i^2``; one without noise about its
   disagreement with the others). With ``n == 1``: ``own_1 = R_11 / D``.
4. **Copies.** ``d_ij = (R_ii + R_jj - 2 R_ij) / D``; both refused when
   ``d_ij <= DUPLICATE_FLOOR * (s_i^2 + s_j^2)`` (independent noises give about the sum).
5. **Direction.** Over the others ``O_i`` that pass 3 and 4: ``c_i = fsum(R_ij, j in O_i)``,
   ``m_i = fsum(R_jk, j, k in O_i)`` (``|sum_j r_j|^2``),
   ``z_i = c_i / (sqrt(m_i) * max(s_i, sqrt(R_ii / D)))``: for noise independent of the
   others, at most a standard normal whatever its size (``c_i`` has standard deviation
   ``sqrt(m_i)`` times the noise's per-coordinate one). Refused when
   ``z_i < MIN_AGREEMENT``; with no such other, or ``m_i == 0``, nothing is refused here.
   When no update of the round reaches ``MIN_AGREEMENT`` (under heavy DP an honest
   update's signal can stay within chance of the others in a round), the bar is
   ``-MIN_AGREEMENT`` instead: only an update that points against the others is refused,
   and the round's admitted updates share equally rather than nobody being paid.
6. ``score_i = SCORE_SCALE`` when 3, 4 and 5 admit it, else 0.
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
    "ShareVerdict",
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
#: Least agreement with the others, in standard deviations of chance (step 5): noise sent
#: as an update passes about one round in twenty (one-sided 5 %).
MIN_AGREEMENT = 1.645


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


@np.errstate(over="ignore", invalid="ignore")
def _gram(ordered: list[RevealedUpdate], global_arrays: Mapping[str, np.ndarray],
          previous: Mapping[str, np.ndarray] | None) -> tuple[list[list[float]], int]:  # fmt: skip
    """``R`` (step 1) and ``D``."""
    names = check_layout(ordered, global_arrays)
    rows = list(ordered)
    if previous is not None:
        rows.append(RevealedUpdate("0x0", 0, {name: previous[name] for name in names}))
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
        return [row[:n] for row in g[:n]], coordinates
    pp = g[n][n]
    return [[g[i][j] - g[i][n] * g[j][n] / pp for j in range(n)] for i in range(n)], coordinates


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
    R, D = _gram(ordered, global_arrays, previous_global)
    n = len(ordered)
    var = [s * s for s in stds]
    noise: list[float] = []
    for i in range(n):
        if n == 1:
            own = R[0][0] / D
        else:
            others = [j for j in range(n) if j != i]
            k = float(n - 1)
            cross = math.fsum(R[i][j] for j in others)
            block = math.fsum(R[j][l] for j in others for l in others)
            spread = R[i][i] - 2.0 * cross / k + block / (k * k)
            own = spread / D - math.fsum(var[j] for j in others) / (k * k)
        noise.append(own)
    copies: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            distance = (R[i][i] + R[j][j] - 2.0 * R[i][j]) / D
            if distance <= DUPLICATE_FLOOR * (var[i] + var[j]):
                copies[i].append(j)
                copies[j].append(i)
    first: list[str | None] = ["noise" if noise[i] < NOISE_FLOOR * var[i] else "copy" if copies[i] else None
                               for i in range(n)]  # fmt: skip
    agreements: list[float | None] = [None] * n
    for i in range(n):
        if first[i] is None:
            peers = [j for j in range(n) if j != i and first[j] is None]
            mass = math.fsum(R[j][l] for j in peers for l in peers) if peers else 0.0
            if peers and mass > 0.0:
                scale = max(stds[i], math.sqrt(max(R[i][i], 0.0) / D))
                agreements[i] = math.fsum(R[i][j] for j in peers) / (math.sqrt(mass) * scale) if scale > 0.0 else 0.0
    tested = [z for z in agreements if z is not None]
    # step 5's fallback: a round in which no update rises above chance refuses only what points against the others
    bar = MIN_AGREEMENT if any(z >= MIN_AGREEMENT for z in tested) else -MIN_AGREEMENT
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

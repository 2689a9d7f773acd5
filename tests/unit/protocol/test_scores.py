"""Contribution scores: integers that are a function of the revealed bytes alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deai_flower.protocol.piecewise import PIECE
from deai_flower.protocol.rules import RevealedUpdate, canonical_order
from deai_flower.protocol.scores import (
    CHANCE_MARGIN,
    MAX_SCORE,
    SCORE_SCALE,
    _alignment_terms,
    alignment_scores,
    loss_improvement_scores,
    quantize_loss,
)


def address(i: int) -> str:
    return f"0x{i:040x}"


def global_model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(40, 50)).astype(np.float32), "b": rng.normal(size=(50,)).astype(np.float32)}


def update(who: int, base: dict[str, np.ndarray], delta: dict[str, np.ndarray], weight: int = 100) -> RevealedUpdate:
    return RevealedUpdate(address(who), weight, {k: (base[k] + delta[k]).astype(np.float32) for k in base})


def honest_round(num_honest: int, seed: int = 1) -> tuple[dict[str, np.ndarray], list[RevealedUpdate]]:
    """Honest updates: a shared direction plus individual noise of the same size per coordinate."""
    base = global_model(seed)
    rng = np.random.default_rng(seed + 100)
    common = {k: 0.01 * rng.normal(size=v.shape) for k, v in base.items()}
    honest = [update(i + 1, base, {k: common[k] + 0.01 * rng.normal(size=common[k].shape) for k in base})
              for i in range(num_honest)]  # fmt: skip
    return base, honest


def delta_of(u: RevealedUpdate, base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: u.arrays[k].astype(np.float64) - base[k] for k in base}


def padded(*values: float, size: int = 10_000) -> np.ndarray:
    """A delta with ``values`` first and zeros up to ``size`` coordinates (chance margin 2/100)."""
    v = np.zeros(size, np.float32)
    v[: len(values)] = values
    return v


def test_hand_computed_example() -> None:
    """Deltas (1,0), (1,1), (0,1) (padded to 10,000 coordinates: chance margin 0.02); each
    is compared with the median of the other two.

    (1,0): M = mean of (1,1), (0,1) = (0.5,1), cos = 0.5/sqrt(1.25) = 1/sqrt(5); norm 1 <= the
    upper median norm 1 -> m = 1. (1,1): M = (0.5,0.5), cos = 1; norm sqrt(2) -> m = 1/sqrt(2).
    """
    base = {"v": padded()}
    updates = [RevealedUpdate(address(i), 1, {"v": padded(*d)}) for i, d in ((1, [1, 0]), (2, [1, 1]), (3, [0, 1]))]
    scores = alignment_scores(updates, base)
    chance = CHANCE_MARGIN / 100
    assert abs(scores[address(1)] - SCORE_SCALE * (1 / math.sqrt(5) - chance)) <= 1
    assert abs(scores[address(3)] - SCORE_SCALE * (1 / math.sqrt(5) - chance)) <= 1
    assert abs(scores[address(2)] - SCORE_SCALE * (1 - chance) / math.sqrt(2)) <= 1


def test_agreement_within_chance_scores_nothing() -> None:
    """In 2 coordinates, chance alone gives cosines of order 1/sqrt(2): nothing counts."""
    base = {"v": np.zeros(2, np.float32)}
    updates = [RevealedUpdate(address(i), 1, {"v": np.array(d, np.float32)})
               for i, d in ((1, [1, 0]), (2, [1, 1]), (3, [0, 1]))]  # fmt: skip
    assert alignment_scores(updates, base) == {address(1): 0, address(2): 0, address(3): 0}


def test_odd_number_of_others_and_example_counts_do_not_pay() -> None:
    """For (3,0) the others (0,1), (1,1), (2,1) have median (1,1): cos = 3/(3*sqrt(2)).
    A larger example count earns nothing more."""
    base = {"v": padded()}
    deltas = {1: [3, 0], 2: [0, 1], 3: [1, 1], 4: [2, 1]}
    light = [RevealedUpdate(address(i), 1, {"v": padded(*d)}) for i, d in deltas.items()]
    heavy = [RevealedUpdate(address(i), 1000 * i, {"v": padded(*d)}) for i, d in deltas.items()]
    c, _ = _alignment_terms(light, base)[address(1)]
    assert abs(c - (1 / math.sqrt(2) - CHANCE_MARGIN / 100)) < 1e-15
    assert alignment_scores(light, base) == alignment_scores(heavy, base)


def test_two_updates_are_each_scored_against_the_other() -> None:
    base, honest = honest_round(2)
    assert all(s > SCORE_SCALE // 3 for s in alignment_scores(honest, base).values())
    rider = RevealedUpdate(address(99), 100, {k: v.copy() for k, v in base.items()})
    assert alignment_scores([honest[0], rider], base) == {honest[0].participant: 0, rider.participant: 0}


def test_free_rider_sending_the_global_model_scores_zero() -> None:
    base, honest = honest_round(6)
    rider = RevealedUpdate(address(99), 100, {k: v.copy() for k, v in base.items()})
    scores = alignment_scores([*honest, rider], base)
    assert scores[rider.participant] == 0
    assert all(scores[u.participant] > SCORE_SCALE // 2 for u in honest)


def test_free_rider_sending_noise_scores_near_zero() -> None:
    base, honest = honest_round(6)
    rng = np.random.default_rng(7)
    for trial in range(5):  # noise of the honest updates' size, several draws
        noise = {k: 0.014 * rng.normal(size=v.shape) for k, v in base.items()}
        rider = update(99, base, noise)
        scores = alignment_scores([*honest, rider], base)
        honest_min = min(scores[u.participant] for u in honest)
        assert honest_min > SCORE_SCALE // 2
        assert scores[rider.participant] < honest_min // 10, trial


def test_sign_flipping_poisoner_scores_zero() -> None:
    base, honest = honest_round(4)
    mean = {k: sum(delta_of(u, base)[k] for u in honest) / len(honest) for k in base}
    poisoner = update(99, base, {k: -5 * v for k, v in mean.items()})
    scores = alignment_scores([*honest, poisoner], base)
    assert scores[poisoner.participant] == 0
    # the median stays with the honest majority: their scores hardly move
    assert all(scores[u.participant] > SCORE_SCALE // 3 for u in honest)
    copycat = update(98, base, {k: -5 * v for k, v in delta_of(honest[0], base).items()})
    scores = alignment_scores([*honest, copycat], base)
    assert scores[copycat.participant] == 0
    assert all(scores[u.participant] > SCORE_SCALE // 4 for u in honest)  # the copied one too


def test_scaled_update_loses_through_the_magnitude_factor() -> None:
    base, honest = honest_round(6)
    boosted = update(99, base, {k: 5 * v for k, v in delta_of(honest[0], base).items()})
    scores = alignment_scores([*honest, boosted], base)
    terms = _alignment_terms([*honest, boosted], base)
    c, m = terms[boosted.participant]
    assert c > 0.5  # its direction is fine ...
    assert m < 0.25  # ... its size is 5x the median
    assert scores[boosted.participant] < min(scores[u.participant] for u in honest)


def test_single_update() -> None:
    base = global_model()
    rng = np.random.default_rng(3)
    moved = update(5, base, {k: rng.normal(size=v.shape) for k, v in base.items()})
    assert alignment_scores([moved], base) == {moved.participant: SCORE_SCALE}
    still = RevealedUpdate(address(5), 10, {k: v.copy() for k, v in base.items()})
    assert alignment_scores([still], base) == {still.participant: 0}
    assert alignment_scores([], base) == {}


def test_mismatched_arrays_are_refused() -> None:
    base, honest = honest_round(3)
    u = honest[0]
    missing = RevealedUpdate(u.participant, 1, {"w": u.arrays["w"]})
    with pytest.raises(ValueError, match=r"missing \['b'\], unexpected \[\]"):
        alignment_scores([missing, *honest[1:]], base)
    extra = RevealedUpdate(u.participant, 1, {**u.arrays, "z": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected \['z'\]"):
        alignment_scores([extra, *honest[1:]], base)
    reshaped = RevealedUpdate(u.participant, 1, {**u.arrays, "w": u.arrays["w"].reshape(50, 40)})
    with pytest.raises(ValueError, match=r"tensor 'w' has shape \(50, 40\), the global model's is \(40, 50\)"):
        alignment_scores([reshaped, *honest[1:]], base)


def test_scores_depend_on_values_not_memory_layout() -> None:
    base, honest = honest_round(4)
    fortran = [RevealedUpdate(u.participant, u.num_examples, {k: np.asfortranarray(v) for k, v in u.arrays.items()})
               for u in honest]  # fmt: skip
    assert _alignment_terms(fortran, base) == _alignment_terms(honest, base)


def test_overflow_is_refused_not_inf() -> None:
    base = {"v": np.zeros(2, np.float64)}
    huge = [RevealedUpdate(address(i), 2**40, {"v": np.array([1e300, 1e300])}) for i in (1, 2)]
    with pytest.raises(ValueError, match="overflows a double"):
        alignment_scores(huge, base)


def float_bits(terms: dict[str, tuple[float, float]]) -> dict[str, tuple[str, str]]:
    return {a: (c.hex(), m.hex()) for a, (c, m) in terms.items()}


@st.composite
def rounds(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], list[RevealedUpdate], list[int]]:
    n = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    who = draw(st.lists(st.integers(1, 2**160 - 1), min_size=n, max_size=n, unique=True))
    weights = draw(st.lists(st.integers(1, 2**40), min_size=n, max_size=n))
    rng = np.random.default_rng(seed)
    base = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(5,)).astype(np.float32)}
    common = {k: rng.normal(size=v.shape) for k, v in base.items()}
    updates = []
    for a, w in zip(who, weights, strict=True):
        scale = float(rng.choice([0.0, 1e-3, 1.0, 1e3]))  # zero deltas and very different sizes too
        delta = {k: scale * (common[k] + rng.normal(size=v.shape)) for k, v in base.items()}
        updates.append(update(a, base, delta, w))
    permutation = draw(st.permutations(range(n)))
    return base, updates, permutation


def tree(values: list[float]) -> float:
    """A piece's pairwise tree sum in plain Python: zero-padded to PIECE, halved until one."""
    level = list(values) + [0.0] * (PIECE - len(values))
    while len(level) > 1:
        level = [level[k] + level[k + 1] for k in range(0, len(level), 2)]
    return level[0]


def reference_terms(updates: list[RevealedUpdate], base: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """The module docstring's definition, step by step in plain Python doubles (no numpy
    arithmetic). Tensors here are far smaller than a piece: one piece per tensor."""
    ordered = sorted(updates, key=lambda u: int(u.participant, 16))
    names = sorted(base)

    def tensors(u: RevealedUpdate) -> list[list[float]]:
        return [[float(x) - float(g) for x, g in zip(u.arrays[name].ravel().tolist(), base[name].ravel().tolist())]
                for name in names]  # fmt: skip

    def piecewise(products: list[list[float]]) -> float:  # S(v): a tree per piece, then exact over pieces
        return math.fsum([tree(piece) for piece in products])

    deltas = [tensors(u) for u in ordered]
    n = [piecewise([[x * x for x in t] for t in d]) for d in deltas]
    if len(ordered) == 1:
        full = 1.0 if n[0] > 0 else 0.0
        return {ordered[0].participant: (full, full)}
    typical = sorted(math.sqrt(v) for v in n)[len(n) // 2]
    coordinates = sum(len(t) for t in deltas[0])
    terms = {}
    for i, (u, d, ni) in enumerate(zip(ordered, deltas, n)):
        others = [deltas[j] for j in range(len(deltas)) if j != i]
        k = len(others)
        median = []
        for t in range(len(names)):
            column_medians = []
            for column in zip(*(o[t] for o in others)):
                values = sorted(column)
                column_medians.append(values[k // 2] if k % 2 else (values[k // 2 - 1] + values[k // 2]) / 2.0)
            median.append(column_medians)
        t_norm = math.sqrt(piecewise([[x * x for x in m] for m in median]))
        dot = piecewise([[x * y for x, y in zip(dt, mt)] for dt, mt in zip(d, median)])
        cos = 0.0 if ni == 0.0 or t_norm == 0.0 else dot / (math.sqrt(ni) * t_norm)
        chance = CHANCE_MARGIN / math.sqrt(coordinates)
        terms[u.participant] = (min(1.0, max(0.0, cos - chance)),
                                0.0 if ni == 0.0 else min(1.0, typical / math.sqrt(ni)))  # fmt: skip
    return terms


def test_pieces_split_long_tensors() -> None:
    """A tensor longer than a piece: the scores are those of the piecewise definition,
    computed here with explicit pieces, and differ from nothing but the summation order."""
    rng = np.random.default_rng(11)
    size = PIECE + 100
    base = {"v": rng.normal(size=size).astype(np.float32)}
    common = rng.normal(size=size)
    updates = [update(i + 1, base, {"v": 1e-3 * (common + rng.normal(size=size))}) for i in range(3)]
    terms = _alignment_terms(updates, base)
    ordered = canonical_order(updates)
    deltas = [u.arrays["v"].astype(np.float64) - base["v"] for u in ordered]
    median = (deltas[1] + deltas[2]) / 2.0  # the others' median, for the first update

    def piecewise(v: np.ndarray) -> float:
        return math.fsum([tree(v[:PIECE].tolist()), tree(v[PIECE:].tolist())])

    norms = [math.sqrt(piecewise(d * d)) for d in deltas]
    cos = piecewise(deltas[0] * median) / (norms[0] * math.sqrt(piecewise(median * median)))
    c, m = terms[ordered[0].participant]
    assert c == min(1.0, max(0.0, cos - CHANCE_MARGIN / math.sqrt(size)))
    assert m == min(1.0, sorted(norms)[1] / norms[0])


@settings(max_examples=60, deadline=None)
@given(rounds())
def test_scores_are_independent_of_input_order_and_bit_identical(case) -> None:
    base, updates, permutation = case
    shuffled = [updates[i] for i in permutation]
    # The doubles behind the scores, not only the floored integers, are the same bits.
    assert float_bits(_alignment_terms(shuffled, base)) == float_bits(_alignment_terms(updates, base))
    # ... and they are those of the written definition, computed without numpy.
    assert float_bits(_alignment_terms(updates, base)) == float_bits(reference_terms(updates, base))
    copied = [RevealedUpdate(u.participant, u.num_examples, {k: v.copy() for k, v in u.arrays.items()})
              for u in shuffled]  # fmt: skip
    scores = alignment_scores(updates, base)
    assert alignment_scores(copied, {k: v.copy() for k, v in base.items()}) == scores
    assert set(scores) == {u.participant for u in updates}
    assert all(type(s) is int and 0 <= s <= SCORE_SCALE for s in scores.values())


def test_quantize_loss_is_micro_nats_half_even() -> None:
    assert quantize_loss(0.6931471805599453) == 693147
    assert quantize_loss(1.0) == SCORE_SCALE
    assert quantize_loss(2.5e-6) == 2  # 2.5 micro-nats: the tie goes to even
    assert quantize_loss(3.5e-6) == 4
    assert quantize_loss(0.0) == 0
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="non-finite"):
            quantize_loss(bad)


def test_loss_improvement_scores() -> None:
    scores = loss_improvement_scores(2.0, {"0xa": 1.5, "0xb": 2.0, "0xc": 2.7, "0xd": 2.0 - 4e-7, "0xe": -1e4})
    assert scores == {"0xa": 500_000, "0xb": 0, "0xc": 0, "0xd": 0, "0xe": MAX_SCORE}
    assert loss_improvement_scores(2.0, {"0xf": 2.0 - 6e-7}) == {"0xf": 1}  # rounds to a whole micro-nat

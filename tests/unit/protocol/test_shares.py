"""The ``shares`` score (deai_flower/protocol/shares.py): each defection it is built
against is refused, honest noisy updates are admitted, and the verdicts are a function
of the revealed bytes alone."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deai_flower.protocol.encoding import DpParams
from deai_flower.protocol.rules import RevealedUpdate
from deai_flower.protocol.scores import SCORE_SCALE
from deai_flower.protocol.shares import share_scores, share_verdicts, update_noise_std

SIGMA, STEPS, EXAMPLES, BATCH, LR, CLIP = 1.1, 12, 287, 64, 0.5, 1.0
SPEC = SimpleNamespace(training=SimpleNamespace(batch_size=BATCH, learning_rate=LR),
                       privacy=SimpleNamespace(max_grad_norm=CLIP),
                       incentives=SimpleNamespace(score="shares"))  # fmt: skip
DP = DpParams.from_floats(noise_multiplier=SIGMA, sample_rate=BATCH / EXAMPLES, steps=STEPS, delta=1e-5,
                          epsilon=4.0, accountant="rdp")  # fmt: skip
S = update_noise_std(noise_multiplier=SIGMA, steps=STEPS, num_examples=EXAMPLES, batch_size=BATCH,
                     learning_rate=LR, max_grad_norm=CLIP)  # fmt: skip
SHAPES = {"a.weight": (40, 64), "b.bias": (40,)}


def address(i: int) -> str:
    return "0x" + format(0x1000 + i * 0x111, "040x")


def global_model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


def sent(who: int, base: dict[str, np.ndarray], delta: dict[str, np.ndarray]) -> RevealedUpdate:
    return RevealedUpdate(address(who), EXAMPLES, {k: (base[k] + delta[k]).astype(np.float32) for k in base}, DP)


def signal(seed: int, strength: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: strength * S * rng.standard_normal(shape) for name, shape in SHAPES.items()}


def noise(rng: np.random.Generator, std: float = S) -> dict[str, np.ndarray]:
    return {name: std * rng.standard_normal(shape) for name, shape in SHAPES.items()}


def plus(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: sum(p[name] for p in parts) for name in SHAPES}


def honest_round(n: int = 5, *, strength: float = 0.3, seed: int = 1):
    """n honest updates: a shared direction plus each one's own DP noise of std S."""
    base, direction, rng = global_model(), signal(100, strength), np.random.default_rng(seed)
    return base, direction, [sent(i, base, plus(direction, noise(rng))) for i in range(n)]


def test_noise_std_follows_sgd_with_momentum() -> None:
    # one step: lr * sigma * C / B; momentum 0.9 lets step t's noise move the weights by
    # (1 - 0.9^(T-t+1)) / 0.1 of it
    one = update_noise_std(noise_multiplier=1.0, steps=1, num_examples=100, batch_size=50, learning_rate=0.5,
                           max_grad_norm=2.0)  # fmt: skip
    assert one == pytest.approx(0.5 * 2.0 / 50)
    two = update_noise_std(noise_multiplier=1.0, steps=2, num_examples=100, batch_size=50, learning_rate=0.5,
                           max_grad_norm=2.0)  # fmt: skip
    assert two == pytest.approx(0.02 * math.sqrt(1 + 1.9**2))
    assert update_noise_std(noise_multiplier=1.0, steps=1, num_examples=20, batch_size=50, learning_rate=0.5,
                            max_grad_norm=2.0) == pytest.approx(0.5 * 2.0 / 20)  # a batch capped at the data
    assert update_noise_std(noise_multiplier=0.0, steps=5, num_examples=20, batch_size=5, learning_rate=0.5,
                            max_grad_norm=1.0) == 0.0


def test_honest_noisy_updates_are_all_paid_equally() -> None:
    base, _, updates = honest_round()
    scores = share_scores(SPEC, updates, base)
    assert scores == {u.participant: SCORE_SCALE for u in updates}


def test_an_update_without_noise_is_refused() -> None:
    base, direction, updates = honest_round()
    clean = sent(0, base, direction)  # the same training, sigma = 0
    verdicts = share_verdicts(SPEC, [clean, *updates[1:]], base)
    assert verdicts[clean.participant].refused == "noise"
    assert verdicts[clean.participant].noise < 0.1
    assert all(verdicts[u.participant].refused is None for u in updates[1:])


def test_identical_updates_are_both_refused_and_a_copy_with_little_noise_too() -> None:
    base, _, updates = honest_round()
    twin = RevealedUpdate(address(9), EXAMPLES, {k: v.copy() for k, v in updates[0].arrays.items()}, DP)
    verdicts = share_verdicts(SPEC, [*updates, twin], base)
    assert verdicts[twin.participant].refused == verdicts[updates[0].participant].refused == "copy"
    assert all(verdicts[u.participant].refused is None for u in updates[1:])
    rng = np.random.default_rng(5)
    near = sent(9, base, plus({k: updates[0].arrays[k] - base[k] for k in SHAPES}, noise(rng, 0.3 * S)))
    assert share_verdicts(SPEC, [*updates, near], base)[near.participant].refused == "copy"


def test_identical_sign_flipped_twins_are_refused_and_paid_nothing() -> None:
    base, direction, updates = honest_round()
    rng = np.random.default_rng(7)
    flipped = {k: -5.0 * v for k, v in plus(direction, noise(rng)).items()}
    twins = [sent(8, base, flipped), sent(9, base, flipped)]
    scores = share_scores(SPEC, [*updates[:3], *twins], base)
    assert scores[twins[0].participant] == scores[twins[1].participant] == 0
    assert all(scores[u.participant] == SCORE_SCALE for u in updates[:3])


def test_a_lone_sign_flipper_points_the_wrong_way() -> None:
    base, direction, updates = honest_round()
    rng = np.random.default_rng(7)
    flipper = sent(9, base, {k: -v for k, v in plus(direction, noise(rng)).items()})
    verdict = share_verdicts(SPEC, [*updates[:4], flipper], base)[flipper.participant]
    assert verdict.refused == "direction" and verdict.agreement < -3


def test_echoing_the_public_step_with_honest_noise_is_no_better_than_chance() -> None:
    base, direction, updates = honest_round()
    previous = {k: base[k] - direction[k] for k in SHAPES}  # last round moved the model along the direction
    others = updates[:4]
    echoes = [sent(9, base, plus(direction, noise(np.random.default_rng(seed)))) for seed in range(300, 310)]
    without = [share_verdicts(SPEC, [*others, echo], base)[echo.participant] for echo in echoes]
    assert all(v.refused is None and v.agreement > 3 for v in without)  # the public step agrees with everyone
    removed = [share_verdicts(SPEC, [*others, echo], base, previous_global=previous)[echo.participant].agreement
               for echo in echoes]  # fmt: skip
    assert abs(float(np.mean(removed))) < 1 and max(removed) < 3  # what is left is noise
    # honest updates that carry fresh signal besides the public step still agree
    fresh = signal(200, 0.3)
    rng = np.random.default_rng(12)
    honest = [sent(i, base, plus(direction, fresh, noise(rng))) for i in range(5)]
    verdicts = share_verdicts(SPEC, honest, base, previous_global=previous)
    assert all(v.refused is None for v in verdicts.values()), verdicts


def test_noise_sent_as_an_update_agrees_only_by_chance_whatever_its_size() -> None:
    base, _, updates = honest_round()
    agreements = []
    for seed, std in [(s, f * S) for s in range(20) for f in (1.0, 1.9)]:
        rider = sent(9, base, noise(np.random.default_rng(1000 + seed), std))
        agreements.append(share_verdicts(SPEC, [*updates[:4], rider], base)[rider.participant].agreement)
    assert abs(float(np.mean(agreements))) < 0.75 and float(np.std(agreements)) < 1.5


def test_far_more_noise_than_claimed_leaves_the_others_reference_alone() -> None:
    # sent alone among honest updates, 10x the claimed noise would drown their reference;
    # scaled down to its claimed power in it, it leaves the others agreeing
    base, _, updates = honest_round(4)
    alone = share_verdicts(SPEC, updates, base)
    loud = sent(9, base, noise(np.random.default_rng(3), 10.0 * S))  # claims S, sends 10 S
    verdicts = share_verdicts(SPEC, [*updates, loud], base)
    assert verdicts[loud.participant].refused == "direction" and abs(verdicts[loud.participant].agreement) < 1.645
    for u in updates:
        assert verdicts[u.participant].refused is None
        assert verdicts[u.participant].agreement > 0.7 * alone[u.participant].agreement


def test_a_twin_with_fresh_noise_added_shares_its_noise_and_both_are_refused() -> None:
    base, _, updates = honest_round()
    rng = np.random.default_rng(21)
    for extra in (1.0, 2.0):  # fresh noise of once and twice the claimed power on the twin's update
        twin = sent(9, base, plus({k: updates[0].arrays[k] - base[k] for k in SHAPES},
                                  noise(rng, math.sqrt(extra) * S)))  # fmt: skip
        verdicts = share_verdicts(SPEC, [*updates, twin], base)
        assert verdicts[twin.participant].refused == verdicts[updates[0].participant].refused == "copy", extra
        assert all(verdicts[u.participant].refused is None for u in updates[1:])


def test_a_signal_in_few_coordinates_is_found_under_the_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    # the others' summed update is thresholded at its noise before it is a reference: a
    # signal in 2 % of the coordinates, half lost in the plain inner product, stands out
    from deai_flower.protocol import shares

    base, rng = global_model(), np.random.default_rng(8)
    sparse = {name: np.zeros(shape) for name, shape in SHAPES.items()}
    sparse["a.weight"][:1, :52] = 1.2 * S
    rounds = [[sent(i, base, plus(sparse, noise(rng))) for i in range(3)] for _ in range(10)]

    def agreements() -> list[float]:
        return [v.agreement for updates in rounds for v in share_verdicts(SPEC, updates, base).values()]

    thresholded = agreements()
    monkeypatch.setattr(shares, "REFERENCE_THRESHOLD", 0.0)  # the plain sum of the others
    plain = agreements()
    assert np.mean(thresholded) > np.mean(plain) + 0.5 and np.mean(thresholded) > 2.5, (thresholded, plain)


def test_small_models_are_not_taken_for_copies() -> None:
    # 10 parameters (a logistic regression on 4 features), 17 honest silos: two independent
    # noises come close by chance, and only an exact copy is refused as one
    shapes = {"w": (2, 4), "b": (2,)}
    rng = np.random.default_rng(4)
    base = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    refused = 0
    for trial in range(10):
        updates = [RevealedUpdate(address(i), EXAMPLES, {k: (base[k] + S * rng.standard_normal(v.shape)).astype(
            np.float32) for k, v in base.items()}, DP) for i in range(17)]  # fmt: skip
        refused += sum(v.refused == "copy" for v in share_verdicts(SPEC, updates, base).values())
    assert refused == 0


def test_a_reveal_without_its_dp_record_cannot_be_scored() -> None:
    base, _, updates = honest_round(2)
    from deai_flower.errors import ProtocolError

    with pytest.raises(ProtocolError, match="DP record"):
        share_scores(SPEC, [RevealedUpdate(address(5), EXAMPLES, updates[0].arrays), updates[1]], base)


def test_a_single_noisy_update_is_paid() -> None:
    base, _, updates = honest_round(1)
    assert share_scores(SPEC, updates, base) == {updates[0].participant: SCORE_SCALE}
    assert share_scores(SPEC, [sent(0, base, signal(3, 0.1))], base) == {address(0): 0}


@st.composite
def rounds(draw: st.DrawFn):
    n = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    strength = draw(st.sampled_from([0.0, 0.05, 0.3, 2.0]))
    base, direction, updates = honest_round(n, strength=strength, seed=seed)
    previous = {k: base[k] - direction[k] for k in SHAPES} if draw(st.booleans()) else None
    return base, updates, previous, draw(st.randoms(use_true_random=False))


@settings(max_examples=25, deadline=None)
@given(rounds())
def test_verdicts_are_independent_of_input_order_and_bit_identical(case) -> None:
    base, updates, previous, rnd = case
    first = share_verdicts(SPEC, updates, base, previous_global=previous)
    shuffled = list(updates)
    rnd.shuffle(shuffled)
    again = share_verdicts(SPEC, shuffled, base, previous_global=previous)

    def bits(verdicts):
        return {a: (v.noise.hex(), v.copies, None if v.agreement is None else v.agreement.hex(), v.refused)
                for a, v in verdicts.items()}  # fmt: skip

    assert bits(first) == bits(again)
    # Fortran-ordered copies of the same values give the same bits
    fortran = [RevealedUpdate(u.participant, u.num_examples, {k: np.asfortranarray(v) for k, v in u.arrays.items()},
                              u.dp) for u in updates]  # fmt: skip
    assert bits(share_verdicts(SPEC, fortran, base, previous_global=previous)) == bits(first)


def test_random_module_is_not_used() -> None:
    # the score draws nothing: calling it leaves Python's and numpy's global generators alone
    random.seed(3)
    np.random.seed(3)
    before = (random.random(), np.random.random())
    random.seed(3)
    np.random.seed(3)
    base, _, updates = honest_round()
    share_scores(SPEC, updates, base)
    assert (random.random(), np.random.random()) == before


def test_a_spec_that_names_shares_is_scored_by_it() -> None:
    from deai_flower.protocol.contribution import contribution_scores
    from deai_flower.protocol.spec import SCORES

    assert "shares" in SCORES
    base, direction, updates = honest_round()
    previous = {k: base[k] - direction[k] for k in SHAPES}
    assert contribution_scores(SPEC, updates, base, previous_global=previous) == share_scores(
        SPEC, updates, base, previous_global=previous)


def test_a_round_where_nobody_rises_above_chance_pays_all_but_those_against_the_others() -> None:
    base, _, updates = honest_round(4, strength=0.0)  # the updates' signal is lost in their noise
    verdicts = share_verdicts(SPEC, updates, base)
    assert all(v.agreement < 1.645 for v in verdicts.values())  # nobody is told apart from noise...
    assert all(v.refused is None for v in verdicts.values())  # ...so none is refused for it
    flipped = sent(9, base, {k: -1.5 * (updates[0].arrays[k] - base[k]) for k in SHAPES})
    verdicts = share_verdicts(SPEC, [*updates, flipped], base)
    assert verdicts[flipped.participant].refused == "direction"
    assert verdicts[flipped.participant].agreement < -1.645


_ENTRIES = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=2, max_value=9).flatmap(
    lambda n: st.lists(st.lists(_ENTRIES, min_size=n, max_size=n), min_size=n, max_size=n)))  # fmt: skip
def test_the_others_blocks_are_the_written_sums_bit_for_bit(R: list[list[float]]) -> None:
    """Step 3's block sums from the whole matrix's exact partials: the doubles (or the
    overflow) that summing each block as written gives, near the largest double too."""
    from deai_flower.protocol.shares import _others_blocks

    n = len(R)
    try:
        written: object = [math.fsum(R[j][l] for j in range(n) if j != i for l in range(n) if l != i) for i in range(n)]
    except OverflowError:
        written = OverflowError
    try:
        ours: object = _others_blocks(R)
    except OverflowError:
        ours = OverflowError
    assert ours == written if not isinstance(ours, list) else [x.hex() for x in ours] == [x.hex() for x in written]  # type: ignore[union-attr]


def test_the_others_blocks_cancel_exactly() -> None:
    from deai_flower.protocol.shares import _others_blocks

    R = [[1e16, 1.0, -1e16], [3.0, 0.5, 2.0**-60], [-1e16, 7.0, 1e16]]
    assert _others_blocks(R) == [0.5 + 2.0**-60 + 7.0 + 1e16, 1e16 - 1e16 - 1e16 + 1e16, 1e16 + 1.0 + 3.0 + 0.5]


def test_a_round_is_judged_strictly_only_when_two_and_a_quarter_of_its_updates_stand_out() -> None:
    # one update beyond chance is what noise alone gives in a round of three one time in
    # seven: it does not refuse the others; two (and a quarter of the round) do
    lone = strict = 0
    for seed in range(40):
        base, _, updates = honest_round(3, strength=0.08, seed=seed)
        verdicts = list(share_verdicts(SPEC, updates, base).values())
        above = sum(v.agreement >= 1.645 for v in verdicts)
        refused = {i for i, v in enumerate(verdicts) if v.refused == "direction"}
        if above >= 2:
            strict += 1
            assert refused == {i for i, v in enumerate(verdicts) if v.agreement < 1.645}
        else:
            lone += above == 1
            assert refused == {i for i, v in enumerate(verdicts) if v.agreement < -1.645}
    assert lone > 0 and strict > 0

"""Attack: be paid more than honest private work under the default score (issue 24).

Each defector of deai_flower/simulation/adversaries.py (and the noise-sending free-rider
of participants.py) plays client 0 (and 1 for twins) in a real run (apps, contract,
in-process engine) with the default ``incentives.score`` (``shares``, protocol §4.3.3),
over 3 seeds: the attacker is paid at most the median honest silo's payout (a free-rider
at most a tenth of it), every honest silo is paid, the books balance, and ``deai
verify`` recomputes the scores (with the public history). Under the former default,
``alignment``, every one of these defectors but the noise-sending free-rider was paid
more than the median honest silo (bench/results/incentives.json).

``fit_validation`` trains without noise on the validation set a ``loss``-scored run names
(public to every participant): ``loss`` pays it the most (docs/protocol.md §4.3.2); the
default score refuses it.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from support import compose_with

from adversarial.test_freerider import assert_books_balance, assert_verifies, by_client
from deai_flower.experiment import run_experiment

pytestmark = pytest.mark.slow

#: adversary config -> (its identities, whether it is a free-rider, whether the default score pays it nothing)
DEFECTORS = {
    "sybil": ((0, 1), False, True),  # two identities, one vector
    "sign_flip_twins": ((0, 1), False, True),  # two identical sign-flipped poisoners
    "no_noise": ((0,), False, True),  # no DP noise, honest-looking DP claims
    "public_step": ((0,), True, False),  # last round's public step plus honest-looking noise
    "freerider": ((0,), True, False),  # the global model plus noise
    "fit_validation": ((0,), False, True),  # fits the public validation set, without noise
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("adversary", list(DEFECTORS))
def test_a_defector_is_paid_no_more_than_the_median_honest_silo(tmp_path: Path, adversary: str, seed: int) -> None:
    attackers, free_rider, unpaid = DEFECTORS[adversary]
    extra = ["adversary.noise=0.05"] if adversary == "freerider" else []
    cfg = compose_with(f"adversary={adversary}", *extra, "num_rounds=3", "progress=false",
                       "privacy.reproducible_noise=true", f"seed={seed}")  # fmt: skip
    results = run_experiment(cfg, output_dir=tmp_path)
    assert results["spec"]["incentives"]["score"] == "shares"  # the default
    assert [r["status"] for r in results["rounds"]] == ["finalized"] * 3
    funds = by_client(results)
    honest = [funds[c]["payout"] for c in funds if c not in attackers]
    assert min(honest) > 0, funds
    assert all(funds[c]["payout"] <= statistics.median(honest) for c in attackers), funds
    if free_rider:
        assert all(funds[c]["payout"] <= statistics.median(honest) / 10 for c in attackers), funds
    if unpaid:
        assert all(funds[c]["payout"] == 0 for c in attackers), funds
    assert_books_balance(results)
    assert_verifies(tmp_path)

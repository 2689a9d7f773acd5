"""Attack: be paid more than honest private work under the ``shares`` score (issue 24).

Each defector of deai_flower/simulation/adversaries.py plays client 0 (and 1 for twins)
in a real run (apps, contract, in-process engine) scored with ``incentives.score=shares``,
over 3 seeds: the attacker is paid at most the median honest silo's payout (a free-rider
at most a tenth of it), every honest silo is paid,
the books balance, and ``deai verify`` recomputes the scores (with the public history).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from support import compose_with

from adversarial.test_freerider import assert_books_balance, assert_verifies, by_client
from deai_flower.experiment import run_experiment

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("adversary", "attackers"), [("sybil", (0, 1)), ("sign_flip_twins", (0, 1)),
                                                      ("no_noise", (0,)), ("public_step", (0,)),
                                                      ("freerider", (0,))])  # fmt: skip
def test_a_defector_is_paid_no_more_than_the_median_honest_silo(
    tmp_path: Path, adversary: str, attackers: tuple[int, ...], seed: int
) -> None:
    extra = ["adversary.noise=0.05"] if adversary == "freerider" else []
    cfg = compose_with(f"adversary={adversary}", *extra, "incentives.score=shares", "num_rounds=3", "progress=false",
                       "privacy.reproducible_noise=true", f"seed={seed}")  # fmt: skip
    results = run_experiment(cfg, output_dir=tmp_path)
    assert [r["status"] for r in results["rounds"]] == ["finalized"] * 3
    funds = by_client(results)
    honest = [funds[c]["payout"] for c in funds if c not in attackers]
    assert min(honest) > 0
    assert all(funds[c]["payout"] <= statistics.median(honest) for c in attackers), funds
    if adversary in ("public_step", "freerider"):  # free-riders: at most a tenth of the median honest silo
        assert all(funds[c]["payout"] <= statistics.median(honest) / 10 for c in attackers), funds
    if adversary in ("sybil", "sign_flip_twins", "no_noise"):
        assert all(funds[c]["payout"] == 0 for c in attackers), funds
    assert_books_balance(results)
    assert_verifies(tmp_path)

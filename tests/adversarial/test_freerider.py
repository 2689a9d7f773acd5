"""Attack: collect rewards without contributing, or while poisoning.

A free-rider sends the global model back (unchanged, or with noise to look like an
update); a poisoner sends its update scaled by -5. Attesters score every aggregated
update (``alignment``: against the median of the others; ``loss``: on the validation
set; the default ``shares``: protocol §4.3.3, which refuses the poisoner's power) and the
finalizing attestation pays the round's budget by score: neither earns more than a
sliver, and the pool's books balance to the wei. tests/adversarial/test_shares_defectors.py
runs the free-riders against the default score.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from support import compose_with

from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow

ATTACKER = 0  # conf/adversary/*.yaml: client 0


def by_client(results: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {entry["client"]: entry for entry in results["incentives"]["participants"].values()}


def assert_books_balance(results: dict[str, Any]) -> None:
    incentives = results["incentives"]
    paid = sum(entry["payout"] for entry in incentives["participants"].values())
    attesters = sum(entry["attester_pay"] for entry in incentives["participants"].values())
    slashed = sum(entry["slashed"] for entry in incentives["participants"].values())
    assert paid == incentives["paid"] and slashed == incentives["slashed"] and attesters == incentives["attester_paid"]
    assert attesters > 0  # the votes for each finalized result share the attesters' part of the budget
    assert (paid + attesters + incentives["pool_left"] + incentives["pool_withdrawn"]
            == incentives["funded"] + slashed)  # fmt: skip
    assert incentives["funded"] == results["spec"]["incentives"]["reward_pool"] > 0
    # rounding dust only: under one wei per paid score and per paid vote, each round
    assert incentives["pool_left"] < 2 * len(results["rounds"]) * len(incentives["participants"])


def assert_verifies(out: Path) -> None:
    verification = verify_run(RunRecord.from_output_dir(out), LocalStore(out / "store"))
    assert verification.ok, [v.problems for v in verification] + verification.problems


@pytest.mark.parametrize(("score", "noise"), [("alignment", 0.0), ("alignment", 0.05), ("loss", 0.05)],
                         ids=["unchanged", "noise-only", "noise-only-loss-scored"])
def test_a_free_rider_is_paid_at_most_a_tenth_of_the_median_honest_participant(
    tmp_path: Path, score: str, noise: float
) -> None:
    cfg = compose_with("adversary=freerider", f"adversary.noise={noise}", f"incentives.score={score}",
                       "num_rounds=3", "progress=false", "privacy.reproducible_noise=true")  # fmt: skip
    results = run_experiment(cfg, output_dir=tmp_path)
    assert [r["status"] for r in results["rounds"]] == ["finalized"] * 3
    funds = by_client(results)
    honest = [funds[c]["payout"] for c in funds if c != ATTACKER]
    assert len(honest) == 4 and min(honest) > 0
    assert funds[ATTACKER]["payout"] <= statistics.median(honest) / 10
    assert set(funds[ATTACKER]["score"]) == {"1", "2", "3"}  # scored every round, and poorly
    assert_books_balance(results)
    assert_verifies(tmp_path)


def test_a_scaled_poisoner_scores_and_is_paid_the_least_under_fedavg(tmp_path: Path) -> None:
    # Seeded noise (here and above): with secret noise, whether an honest DP update agrees
    # with the others beyond chance in a given round is itself random (round 1 of this run:
    # nobody does, the poisoner's -5x update drags every median), and the test must not be.
    cfg = compose_with("adversary=scaled", "strategy=fedavg", "num_rounds=3", "progress=false",
                       "privacy.reproducible_noise=true")  # fmt: skip
    results = run_experiment(cfg, output_dir=tmp_path)
    assert [r["status"] for r in results["rounds"]] == ["finalized"] * 3
    funds = by_client(results)
    rounds = ("1", "2", "3")
    scores = {r: {c: funds[c]["score"][r] for c in funds} for r in rounds}
    assert all(scores[r][ATTACKER] == 0 for r in rounds), scores  # the poisoner never scores
    assert sum(max(scores[r].values()) > 0 for r in rounds) >= 2, scores  # the honest ones do
    assert funds[ATTACKER]["payout"] == 0 < min(funds[c]["payout"] for c in funds if c != ATTACKER)
    assert_books_balance(results)
    assert_verifies(tmp_path)

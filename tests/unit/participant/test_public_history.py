"""The model before a round's global model, from the chain's record alone."""

from __future__ import annotations

from deai_flower.participant.public_history import previous_model_cid


def test_the_previous_model_is_the_one_before_the_last_result_finalized_before_the_round() -> None:
    assert previous_model_cid("init", [], 1) is None  # round 1: no public step yet
    assert previous_model_cid("init", [(1, "r1")], 2) == "init"
    assert previous_model_cid("init", [(1, "r1"), (2, "r2")], 3) == "r1"
    # a round that failed finalized nothing: round 4 trains from r2, whose predecessor is r1
    assert previous_model_cid("init", [(1, "r1"), (2, "r2")], 4) == "r1"
    # results of the round itself or later ones are not its history
    assert previous_model_cid("init", [(1, "r1"), (2, "r2"), (3, "r3")], 3) == "r1"

"""Attack: a colluding minority of attesters tries to finalize a forged result.

Through the whole app on the real contract: the colluders, in the committee like
everyone else, attest a forged CID (with an outcome that pays only themselves) the
moment they are asked, and never aggregate. A round needs a strict majority of the
eligible attesters (protocol §2.5), so 2 colluders of 5 and 4 of 9 never finalize; the
honest majority's result does, the colluders are slashed for their minority vote, and
no honest attester is.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from support import compose_with

from deai_flower.apps import client_app
from deai_flower.chain import simulation_key
from deai_flower.apps import participant_for
from deai_flower.participant.run_view import run_view
from deai_flower.protocol.outcome import encode_outcome
from deai_flower.experiment import run_experiment
from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run

pytestmark = pytest.mark.slow

FORGED = bytes([1, 0x55, 0x12, 0x20]) + b"\x66" * 32


def colluding(colluders: set[int], forged: list[tuple[int, str]]) -> Callable[[Message, Context], Message]:
    """The real ClientApp, except that the colluders all attest a forged pair the moment
    the first attest message of a round reaches anyone, before any honest attester."""
    views: dict[int, Any] = {}
    struck: set[int] = set()
    strike = threading.Lock()

    def call(message: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        config = message.content["config"]
        if partition in colluders and partition not in views:
            views[partition] = run_view(participant_for(message, context), str(config["contract"]),
                                        int(config["run-id"]))  # fmt: skip
        if message.metadata.message_type == "train.attest":
            round_id = int(config["round"])
            with strike:  # attesters run at once: the first to get here forges, the others wait for it
                if round_id not in struck:
                    struck.add(round_id)
                    any_view = next(iter(views.values()))
                    revealers = [r["participant"] for r in any_view.contract.revealed(any_view.run_id, round_id,
                                                                                        from_block=0)]  # fmt: skip
                    mine = {v.participant.address for v in views.values()}
                    # the forged outcome pays the colluders only
                    outcome = encode_outcome({who: (1_000_000 if who in mine else 0) for who in revealers}, {})
                    for view in views.values():
                        view.contract.attest(view.run_id, round_id, FORGED, outcome)
                        forged.append((round_id, view.participant.address))
            if partition in colluders:
                return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "forged"), reply_to=message)
        return client_app(message, context)

    return call


@pytest.mark.parametrize(("clients", "colluders"), [(5, {0, 1}), (9, {0, 1, 2, 3})], ids=["2-of-5", "4-of-9"])
def test_a_colluding_minority_never_finalizes_and_is_slashed(tmp_path: Path, clients: int,
                                                             colluders: set[int]) -> None:  # fmt: skip
    forged: list[tuple[int, str]] = []
    cfg = compose_with(f"num_clients={clients}", "num_rounds=2", "progress=false", "training.local_epochs=1")
    results = run_experiment(cfg, output_dir=tmp_path, client_app=colluding(colluders, forged))

    bad = {simulation_key(seed=0, role=f"client-{c}").address for c in colluders}
    assert {who for _, who in forged} == bad and {r for r, _ in forged} == {1, 2}  # they tried every round
    assert [r["status"] for r in results["rounds"]] == ["finalized", "finalized"]
    finalized = [e["args"]["resultCid"] for e in results["events"] if e["event"] == "RoundFinalized"]
    assert "0x" + FORGED.hex() not in finalized
    # every honest revealer attested the finalized pair; the colluders were outvoted
    for r in results["rounds"]:
        assert set(r["attested"]) == set(r["revealed"]) - bad
    funds = results["incentives"]["participants"]
    slash = results["spec"]["incentives"]["slash_minority"]
    penalties = [(e["args"]["participant"], e["args"]["reason"]) for e in results["events"]
                 if e["event"] == "PenaltyRecorded"]  # fmt: skip
    # round 1's minority votes are settled at the colluders' round-2 commits (round 2's later)
    assert sorted(penalties) == sorted((who, 1) for who in bad)
    for who, entry in funds.items():
        assert entry["slashed"] == (slash if who in bad else 0)
    # the forged outcome paid nobody: the colluders' pay follows the honest majority's scores
    for who in bad:
        assert set(funds[who]["score"]) == {"1", "2"}
    assert results["incentives"]["conserved"]
    verification = verify_run(RunRecord.from_output_dir(tmp_path), LocalStore(tmp_path / "store"))
    assert verification.ok, [v.problems for v in verification] + verification.problems

"""A coordinator that dies mid-run resumes from the chain: no round lost, none repeated."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import compose_with

from deai_flower.chain.devnode import AnvilNode
from deai_flower.errors import ConfigError
from deai_flower.report import ProgressMonitor
from deai_flower import experiment
from deai_flower.storage import LocalStore
from deai_flower.verify import RunRecord, verify_run

pytestmark = [pytest.mark.chain, pytest.mark.slow]


class CoordinatorCrashed(Exception):
    pass



def test_restart_resumes_from_the_chain(anvil: AnvilNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["chain=anvil", f"chain.rpc_url={anvil.url}", "num_clients=3", "num_rounds=3", "progress=false",
              "training.local_epochs=1", f"storage.root={tmp_path / 'store'}",
              f"privacy.state_dir={tmp_path / 'ledgers'}"]  # fmt: skip
    created = []
    real_prepare = experiment.prepare_run

    def record_prepare(*args, **kwargs):
        created.append(real_prepare(*args, **kwargs))
        return created[-1]

    def crash_after_round_2(self: ProgressMonitor, report) -> None:
        if report.round == 2:
            raise CoordinatorCrashed("the coordinator's machine went down")

    monkeypatch.setattr(experiment, "prepare_run", record_prepare)
    monkeypatch.setattr(ProgressMonitor, "round_done", crash_after_round_2)
    with pytest.raises(CoordinatorCrashed):
        experiment.run_experiment(compose_with(*common), output_dir=tmp_path / "first")
    contract = created[0].contract
    assert contract.get_run(created[0].run_id)["finalizedRounds"] == 2
    monkeypatch.undo()

    results = experiment.run_experiment(
        compose_with(*common, f"resume.contract_address={contract.address}", f"resume.run_id={created[0].run_id}"),
        output_dir=tmp_path / "second",
    )
    assert [(r["round"], r["status"]) for r in results["rounds"]] == [(3, "finalized")]
    assert contract.get_run(created[0].run_id)["finalizedRounds"] == 3
    # the whole run, both coordinators, replays from the chain; ε continued from the ledgers on disk
    record = RunRecord.from_chain(rpc_url=anvil.url, contract=contract.address, run_id=created[0].run_id)
    verdicts = verify_run(record, LocalStore(tmp_path / "store"))
    assert [v.status for v in verdicts] == ["finalized"] * 3
    assert all(v.ok for v in verdicts), [v.problems for v in verdicts]


def test_resume_refuses_a_different_config(anvil: AnvilNode, tmp_path: Path) -> None:
    common = ["chain=anvil", f"chain.rpc_url={anvil.url}", "num_clients=3", "num_rounds=1", "progress=false",
              "training.local_epochs=1", f"storage.root={tmp_path / 'store'}"]  # fmt: skip
    first = experiment.run_experiment(compose_with(*common), output_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="created with another run spec"):
        experiment.run_experiment(compose_with(*common, "privacy.epsilon=3",
                                               f"resume.contract_address={first['contract_address']}"),
                                  output_dir=tmp_path / "b")  # fmt: skip

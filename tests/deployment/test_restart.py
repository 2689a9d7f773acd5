"""Restarts on a real deployment (TLS + SuperNode authentication on), one after the other
on one consortium: a SuperNode killed mid-round and started again, then the coordinator
stopped mid-run and started again.

Silo-2's SuperNode is killed (with its ClientApp process) while round 1 asks it to
commit: the round finalizes with the other two. Once round 1 is past its commit phase the
SuperNode is started again with the same key (so the same node id), the same keystore and
the same ledger directory: it takes part in a later round (Flower issue 4844 reports
restarted nodes with TLS + auth that never receive work again). Meanwhile the two live
silos are held (their code gates paused: :meth:`LocalConsortium.holding`), since rounds
whose every asked node is accounted for end at once and they would otherwise play every
round left before silo-2 is back. Once round 2 is
finalized the coordinator is stopped (``flwr stop``) and started again with the same run
config: the new one reads what the chain finalized, lets the round in flight end, plays
the rounds still missing, and ``deai verify`` checks all of them.

Non-private: the silos that trained and committed in a lapsed attempt spent ε on it
(their ledgers say so), so a private run planned to spend its budget in exactly
``num_rounds`` rounds is declined by them before its last round. One deployment serves
both restarts: every message starts a fresh ``flwr-clientapp`` process, and a second
consortium cost the suite a few CPU-minutes.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eth_account import Account

from deai_flower.chain import RoundsContract
from deai_flower.consortium.demo_data import write_silo_files
from deai_flower.consortium.localnet import LocalConsortium
from deai_flower.errors import ContractRevertError

ROUNDS = 4
OVERRIDES = [f"num_rounds={ROUNDS}", "dataset=breast_cancer", "training.local_epochs=1", "training.batch_size=16",
             "strategy.commit_timeout_s=300", "privacy=none"]  # fmt: skip
# What this test judges is who plays which round: the silos' evaluation of each model
# (a ClientApp process per silo and round) is left out.
NO_EVALUATION = {"federated-evaluation": False}
# The run is not private (fast, and private runs are judged elsewhere): each silo's terms
# must say it accepts that, or it declines every round.
NO_DP = {"allow-no-dp": True}


def _wait(what: str, predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(0.5)


@pytest.mark.timeout(2400)  # 7 to 11 min measured on a loaded 2-core machine
def test_a_killed_supernode_and_a_stopped_coordinator_are_started_again_and_the_run_completes(
    tmp_path: Path,
) -> None:
    with LocalConsortium(tmp_path) as net:
        net.start_chain()
        net.set_up_chain()
        files = write_silo_files(tmp_path / "data", num_silos=3, overrides=["dataset=breast_cancer"])
        silos = [net.add_silo(f"silo-{i}", data_path=f.train, eval_path=f.eval) for i, f in enumerate(files)]
        created = net.create_run(OVERRIDES)
        net.start_superlink()
        node_ids = []
        for silo in silos:
            node_ids.append(net.register_supernode(silo))
            net.start_supernode(silo, silo.node_config(chain_url=net.rpc, store=net.store, **NO_DP))
        net.wait_for_nodes(3)
        # One train.round message per node (not the step-wise default): the kill and the hold
        # below are timed on that flow's messages.
        run_config = {**net.coordinator_run_config(created, tmp_path / "results"), **NO_EVALUATION,
                      "phase-messages": False}  # fmt: skip
        first = net.run(run_config)
        victim = net.supernodes["silo-2"]
        # killed as soon as round 1 asked it to play (its ClientApp with it)
        _wait("round 1's train.round at silo-2", lambda: "train.round" in victim.log(), timeout=600)
        net.stop_process(victim.process, sig=signal.SIGKILL)
        chain = net.anvil.connect()  # type: ignore[union-attr]
        reader = RoundsContract(chain, created.contract, Account.create())

        def end_commit_phase_after_the_live_silos(round_id: int) -> None:
            # The two live silos commit; the commit phase then ends at its deadline, which a
            # development chain's clock reaches at once (the silos would move it there too).
            # The coordinator may end the phase itself (every node it asked is accounted
            # for) and play on: a round that is no longer current is past its commit phase.
            _wait(f"round {round_id} to open", lambda: int(reader.get_run(created.run_id)["currentRound"]) >= round_id,
                  timeout=400)  # fmt: skip

            def live_silos_committed() -> bool:
                try:
                    return int(reader.get_round(created.run_id, round_id)["commitCount"]) >= 2
                except ContractRevertError:  # RoundNotCurrent: the run has moved past this round
                    return True

            _wait(f"the two live silos' commits in round {round_id}", live_silos_committed, timeout=400)
            try:
                if reader.phase(created.run_id, round_id) == "commit":
                    chain.advance_to(int(reader.get_round(created.run_id, round_id)["commitDeadline"]), timeout=10)
            except ContractRevertError:
                return
            _wait(f"round {round_id} leaving its commit phase",
                  lambda: reader.phase(created.run_id, round_id) not in ("none", "commit"), timeout=60)  # fmt: skip

        end_commit_phase_after_the_live_silos(1)
        # Rounds whose every asked node is accounted for end their commit phase at once:
        # without a hold, the two live silos played every round left before silo-2 was back
        # (its key is refused until the SuperLink gives up on the killed process), and the
        # run was over before the stop below. So the live silos take no new message (their
        # code gates paused, their SuperNodes online) until silo-2 is connected again;
        # round 1's ClientApps, running already, finish it. The commit phase (300 s) outlasts the hold.
        with net.holding("silo-0", "silo-1"):
            # as an operator's supervisor would: the SuperLink refuses the key until it has
            # given up on the killed process (two missed heartbeats), and fails the messages
            # that were waiting for it, round 2's among them
            net.wait_until_offline(node_ids[2])
            net.start_supernode(silos[2], silos[2].node_config(chain_url=net.rpc, store=net.store, **NO_DP),
                                 name="silo-2-again")
            net.wait_for_nodes(3)
            held_at = int(reader.get_run(created.run_id)["finalizedRounds"])
        assert held_at <= 1, f"{held_at} rounds finalized while the live silos were held"
        end_commit_phase_after_the_live_silos(2)

        # Stopped once round 2 is finalized: round 3 is then in flight (its nodes may be
        # anywhere in it)
        _wait("round 2 to finalize", lambda: int(reader.get_run(created.run_id)["finalizedRounds"]) >= 2,
              timeout=900)  # fmt: skip
        net.flwr("stop", str(first), "consortium", check=False)  # refused only for a run over already
        assert net.wait(first, timeout=120).startswith("finished"), "the first coordinator did not stop"
        # read after the stop: the nodes may have finalized round 3 meanwhile
        done_before = int(reader.get_run(created.run_id)["finalizedRounds"])
        assert done_before < ROUNDS, "the first coordinator played every round before its stop: nothing to resume"
        second = net.run(run_config)
        status = net.wait(second, timeout=1500)
        if status != "finished:completed":
            print("FIRST\n", net.server_log(first)[-6000:], "\nSECOND\n", net.server_log(second)[-6000:],
                  file=sys.stderr)  # fmt: skip
        assert status == "finished:completed"
        rounds = json.loads((tmp_path / "results" / "results.json").read_text())["rounds"]
        summary = [(r["round"], r["attempt"], r["status"], r["reason"], r["revealed"]) for r in rounds]
        assert int(reader.get_run(created.run_id)["finalizedRounds"]) == ROUNDS, summary
        # the new coordinator played what was missing (the nodes may have finalized round 3 since `done_before`)
        played = len([r for r in rounds if r["status"] == "finalized"])
        assert played <= ROUNDS - done_before, summary
        assert played >= 1, summary  # round 4 at least was left to it (the stop landed in round 3)

        # the first finalized round went on without the killed node; the restarted one took part again
        address = silos[2].key.address
        finalized = [int(e["round"]) for e in reader.finalized_rounds(created.run_id)]
        revealed = {r: {e["participant"] for e in reader.revealed(created.run_id, r, from_block=0)} for r in finalized}
        assert address not in revealed[finalized[0]] and len(revealed[finalized[0]]) == 2, revealed
        assert any(address in revealed[r] for r in finalized[1:]), revealed

        verify = subprocess.run([str(Path(sys.executable).parent / "deai"), "verify", "--rpc", net.rpc, "--contract",
                                 created.contract, "--run-id", str(created.run_id), "--store-root",
                                 str(tmp_path / "store")], capture_output=True, text=True, timeout=300)  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
        # every round on chain verified, a lapsed attempt (the one in flight at the stop) included
        assert re.search(rf"all \d+ rounds verified \({ROUNDS} finalized\)", verify.stdout), verify.stdout

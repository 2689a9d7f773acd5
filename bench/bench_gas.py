"""Gas of the round contract: per participant per round, by call, and how it scales.

Drives the real bytecode on the embedded chain (py-evm; anvil charges the same gas,
``--anvil`` checks one point). Two measurements:

* **Participants** (``main_job`` and ``participants``): N = 5, 10, 100 registered, full
  sampling, every revealer eligible to attest (``committeeSize`` 0), so a CID needs a
  strict majority of the N revealers (``votesNeeded``) and that many attest. Each runs
  two rounds and reports the second: the first writes each participant's slots for the
  first time, every later round rewrites them. Gas per participant per round = (sum of
  commits + reveals + attests + openRound) / revealers. The attestation that finalizes a
  round also opens the next one, so ``openRound`` is paid only for a run's first round
  (and after a failed one).

  The same is measured **relayed** (protocol §2.3, §2.4, §2.5): one ``revealMany``
  publishes every record and one ``attestMany`` casts every signed vote (the relayer's
  gas, shared by the k participants), with each participant committing itself
  (``relayed``) or, since protocol 0.7, one ``commitMany`` recording every signed
  commitment too (``relayed_commits``: three transactions a round, whatever k). The
  budget (110,000 per participant per round at N = 5) applies to the relayed paths.

* **Registry size** (``registry``): 10, 100, 1,000 and 10,000 registered (by
  ``registerMany``) at 1 %, 10 % and 100 % sampling. Every call's gas is independent of
  the registry's size, which is what the table shows; so that 10,000 commits a round need
  not be played on py-evm, at most ``--play`` of the k sampled participants (those at the
  first sampled positions) commit, reveal and attest, the commit phase closes at its
  deadline, and the round's gas for all k is computed from the measured per-call gas:
  ``openRound + k * (commit + reveal) + (votesNeeded(k) - 1) * attest + finalizing
  attest`` (quorum 1, so that k = 1 can finalize: votesNeeded(k) = k // 2 + 1). With partial sampling the sampled set changes every round, so the commits and
  reveals measured are mostly a participant's first in the run (its member slots are
  written fresh); both kinds are reported where they occur. The finalizing attestation
  settles the round's outcome (a credit per revealer): its cost grows with the round's
  revealers, never with the registry.

Runs carry incentives as the main job does (a stake per participant, a reward pool paid
by score, 10 % of each round's budget to the votes for the finalized pair;
``--no-incentives``: none of it, the same calls otherwise). A participant's
deposit is paid once per run and reported apart (``deposit``).

Prints tables and writes ``bench/results/gas.json``. Run from the repository root:
``python bench/bench_gas.py [--anvil] [--quick] [--main-only] [--play N] [--artifacts DIR]``
(``--artifacts`` measures another build of the contracts with the same calls: a folder as
``node contracts/compile.mjs --out DIR`` writes).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from deai_flower.chain import ChainNode, DpParams, RoundsContract, commitment_of, connect_embedded, simulation_key
from deai_flower.chain import artifact as artifact_module
from deai_flower.chain import contract as contract_module
from deai_flower.protocol.encoding import reveal_record, sampled_indices, to_wad, votes_needed
from deai_flower.protocol.outcome import encode_outcome

RESULTS = Path(__file__).resolve().parent / "results" / "gas.json"
BUDGET = 110_000
SEED = 2024
QUORUM = 2
DP = DpParams.from_floats(noise_multiplier=1.1, sample_rate=0.05, steps=30, delta=1e-5, epsilon=2.0, accountant="rdp")
#: Registrations per registerMany transaction (about 70k gas each).
BATCH = 200
#: The main job's incentives (conf defaults): stake, pool and slashes in wei.
INCENTIVES = {"stake": 10**18, "rewardPool": 10**19, "slashMissingReveal": 10**17, "slashRefused": 5 * 10**17,
              "slashMinority": 2 * 10**17, "attesterShareBps": 1_000}  # fmt: skip


@dataclass
class RoundGas:
    """One measured round. ``commit``/``reveal`` hold the calls of participants who had
    already taken part in the run (their slots exist); ``first_*`` the others'."""

    registered: int
    sampled: int  # k
    played: int  # sampled participants that committed, revealed and were eligible
    votes_needed: int
    sample_bps: int
    open_round: int  # 0 when the previous round's finalizing attestation opened it
    commit: list[int]
    reveal: list[int]
    attest: list[int]  # in order; the last one finalized the round (and opened the next)
    first_commit: list[int]
    first_reveal: list[int]
    deposit: list[int] = field(default_factory=list)  # once per participant per run
    relayed: bool = False  # reveals in one revealMany, votes in one attestMany (sent by a relayer)
    relayed_commits: bool = False  # commits in one commitMany as well
    transactions: int = 0  # sent in the round (deposits left out)

    def call_means(self) -> dict[str, float | None]:
        def mean(values: list[int]) -> float | None:
            return statistics.mean(values) if values else None

        return {
            "openRound": self.open_round,
            "commit": mean(self.commit),
            "reveal": mean(self.reveal),
            "first_commit": mean(self.first_commit),
            "first_reveal": mean(self.first_reveal),
            "attest": mean(self.attest[:-1]),
            "attest_finalizing": self.attest[-1],
            "deposit": mean(self.deposit),
        }

    @property
    def per_participant(self) -> dict[str, float]:
        """Gas per revealer when everyone sampled plays: commits and reveals at the rate of
        returning participants if any were measured, else of first-timers."""
        means = self.call_means()
        commit = means["commit"] if means["commit"] is not None else means["first_commit"]
        reveal = means["reveal"] if means["reveal"] is not None else means["first_reveal"]
        k = self.sampled
        if self.relayed_commits:
            commit = sum(self.commit) / k
        if self.relayed:  # one batch each, its gas shared by the k participants
            reveal = sum(self.reveal) / k
            attests = float(sum(self.attest))
        else:
            attests = (self.votes_needed - 1) * (means["attest"] or 0) + self.attest[-1]
        split = {"commit": commit, "reveal": reveal, "attest_share": attests / k, "open_round_share": self.open_round / k}
        split["total"] = sum(split.values())
        return split  # type: ignore[return-value]


def _cid(tag: bytes) -> bytes:
    """A binary CIDv1 (raw, sha2-256) of some content."""
    return bytes([0x01, 0x55, 0x12, 0x20]) + keccak(tag)


class Bench:
    """A deployment with ``n`` registered participants on a fresh chain."""

    def __init__(self, node: ChainNode, n: int, *, batch: bool = False, incentives: bool = True) -> None:
        self.node = node
        self.incentives = INCENTIVES if incentives else {}
        self.admin_key = simulation_key(seed=SEED, role="coordinator")
        self.keys: list[LocalAccount] = [simulation_key(seed=SEED, role=f"client-{i}") for i in range(n)]
        node.fund([self.admin_key.address])
        extension, extension_deploy = RoundsContract.deploy_extension(node, self.admin_key)
        self.admin, deploy = RoundsContract.deploy(node, self.admin_key, extension=extension)
        self.deploy_gas = {"extension": extension_deploy.gas_used, "rounds": deploy.gas_used}
        self.register_gas: list[float] = []
        if batch:
            for start in range(0, n, BATCH):
                chunk = self.keys[start : start + BATCH]
                tx = self.admin.register_many([k.address for k in chunk],
                                              [keccak(f"node-{start + i}".encode()) for i in range(len(chunk))],
                                              [10_000] * len(chunk))  # fmt: skip
                self.register_gas.append(tx.gas_used / len(chunk))
        else:
            for i, k in enumerate(self.keys):
                self.register_gas.append(self.admin.register(k.address, keccak(f"node-{i}".encode()), 10_000).gas_used)
        self.members = self.admin.members()
        self.by_address = {k.address: k for k in self.keys}
        self.funded: set[str] = set()
        self.took_part: set[str] = set()
        self.staked: set[str] = set()

    def handle(self, key: LocalAccount) -> RoundsContract:
        if key.address not in self.funded:
            self.node.fund([key.address])
            self.funded.add(key.address)
        return self.admin.as_account(key)

    def create_run(self, *, sample_bps: int, rounds: int, quorum: int = QUORUM,
                   committee_size: int = 0) -> tuple[int, int]:  # fmt: skip
        run_id, tx = self.admin.create_run({
            "specHash": keccak(b"bench config"), "codeHash": keccak(b"bench code"),
            "initialModelCid": _cid(b"initial model"), "epsilonBudgetWad": to_wad(8.0), "deltaWad": DP.delta_wad,
            "numRounds": rounds, "commitDuration": 3600, "revealDuration": 3600, "attestDuration": 3600,
            "sampleBps": sample_bps, "quorum": quorum, "minReveals": quorum, "committeeSize": committee_size,
            **self.incentives,
        })  # fmt: skip
        self.quorum = quorum
        return run_id, tx.gas_used

    def round(self, run_id: int, *, index: int, play: int | None = None, relayed: bool = False,
              relayed_commits: bool = False) -> RoundGas:  # fmt: skip
        current = int(self.admin.get_run(run_id)["currentRound"])
        if current and self.admin.phase(run_id, current) == "commit":
            round_id, open_gas = current, 0  # the previous round's finalizing attestation opened it
        else:
            round_id, opened = self.admin.open_round(run_id)
            open_gas = opened.gas_used
        state = self.admin.get_round(run_id, round_id)
        beacon, size, bps = bytes(state["beacon"]), int(state["registrySize"]), int(state["sampledCount"])
        k = int(state["sampledCount"])
        sample_bps = int(self.admin.get_run(run_id)["sampleBps"])
        order = sampled_indices(beacon=beacon, registry_size=size, sample_bps=sample_bps)
        assert len(order) == k == bps
        players = [self.by_address[self.members[i]] for i in order[: play or k]]
        gas = RoundGas(size, k, len(players), 0, sample_bps, open_gas, [], [], [], [], [], relayed=relayed,
                       relayed_commits=relayed_commits, transactions=1 if open_gas else 0)  # fmt: skip
        reveals, signed = [], {}
        for i, key in enumerate(players):
            h = self.handle(key)
            if self.incentives and key.address not in self.staked:
                gas.deposit.append(h.deposit(run_id, self.incentives["stake"]).gas_used)
                self.staked.add(key.address)
            cid, salt = _cid(f"update {index} {i}".encode()), keccak(f"salt {index} {i}".encode())
            commitment = commitment_of(chain_id=self.node.chain_id, contract=h.address, run_id=run_id,
                                       round_id=round_id, participant=key.address, cid=cid,
                                       num_examples=300 + i, dp=DP, salt=salt)  # fmt: skip
            returning = key.address in self.took_part
            if relayed_commits:
                signed[key.address] = (commitment, h.sign_commit(run_id, round_id, commitment))
            else:
                (gas.commit if returning else gas.first_commit).append(h.commit(run_id, round_id, commitment).gas_used)
                gas.transactions += 1
            reveals.append((h, cid, 300 + i, salt, returning))
        if relayed_commits:  # the coordinator records everyone's signed commitment in one transaction
            gas.commit.append(self.admin.commit_many(run_id, round_id, signed).gas_used)
            gas.transactions += 1
        if len(players) < k:
            self.node.advance_to(int(state["commitDeadline"]), timeout=5)
        if relayed:  # the coordinator publishes everyone's records in one transaction
            records = {h.account.address: reveal_record(cid=cid, num_examples=n, dp=DP, salt=salt)
                       for h, cid, n, salt, _ in reveals}  # fmt: skip
            gas.reveal.append(self.admin.reveal_many(run_id, round_id, records).gas_used)
            gas.transactions += 1
            self.took_part.update(records)
        for h, cid, n_examples, salt, returning in [] if relayed else reveals:
            used = h.reveal(run_id, round_id, cid=cid, num_examples=n_examples, dp=DP, salt=salt).gas_used
            (gas.reveal if returning else gas.first_reveal).append(used)
            gas.transactions += 1
            self.took_part.add(h.account.address)
        gas.votes_needed = int(self.admin.get_round(run_id, round_id)["votesNeeded"])
        result = bytes([0x01, 0x70, 0x12, 0x20]) + keccak(f"aggregate {index}".encode())
        # every revealer scored (distinct scores: every credit is a non-zero write)
        outcome = encode_outcome({h.account.address: 1_000 + i for i, (h, *_) in enumerate(reveals)}, {})
        if relayed:  # every signed vote, cast in one transaction (each is paid the attester share)
            signatures = [h.sign_vote(run_id, round_id, result, outcome) for h, *_ in reveals]
            gas.attest = [self.admin.attest_many(run_id, round_id, result, outcome, signatures).gas_used]
        else:  # own transactions stop at the finalizing vote
            gas.attest = [h.attest(run_id, round_id, result, outcome).gas_used
                          for h, *_ in reveals[: gas.votes_needed]]  # fmt: skip
        gas.transactions += len(gas.attest)
        # gas per round as if all k played: k eligible revealers need a majority of k
        gas.votes_needed = votes_needed(eligible=k, quorum=self.quorum) if play else gas.votes_needed
        return gas


def _two_rounds(n: int, *, incentives: bool, relayed: bool,
                relayed_commits: bool = False) -> tuple[Bench, int, RoundGas, RoundGas]:  # fmt: skip
    """A fresh deployment with ``n`` registered, all sampled: its createRun gas, first and
    steady round (round 2's finalization opens round 3)."""
    bench = Bench(connect_embedded(), n, incentives=incentives)
    run_id, create_gas = bench.create_run(sample_bps=10_000, rounds=3)
    first = bench.round(run_id, index=1, relayed=relayed, relayed_commits=relayed_commits)
    return bench, create_gas, first, bench.round(run_id, index=2, relayed=relayed, relayed_commits=relayed_commits)


def measure_participants(n: int, *, incentives: bool = True) -> dict[str, Any]:
    """Setup, the first round and a steady one with ``n`` registered, all sampled and playing;
    then the steady round again with a relayer: every reveal in one revealMany, the
    majority's signed votes in one attestMany (commits stay each participant's own)."""
    bench, create_gas, first, steady = _two_rounds(n, incentives=incentives, relayed=False)
    *_, relayed = _two_rounds(n, incentives=incentives, relayed=True)
    *_, batched = _two_rounds(n, incentives=incentives, relayed=True, relayed_commits=True)
    return {
        "participants": n,
        "quorum": QUORUM,
        "committee_size": 0,
        "votes_needed": steady.votes_needed,
        "sample_bps": 10_000,
        "setup": {"deploy": bench.deploy_gas, "register_each": statistics.mean(bench.register_gas),
                  "createRun": create_gas},  # fmt: skip
        "first_round_per_participant": first.per_participant,
        "steady": asdict(steady),
        "steady_per_participant": steady.per_participant,
        "steady_calls": steady.call_means(),
        "relayed_steady": {"revealMany": relayed.reveal[0], "attestMany": relayed.attest[0]},
        "relayed_steady_per_participant": relayed.per_participant,
        "relayed_commits_steady": {"commitMany": batched.commit[0], "revealMany": batched.reveal[0],
                                   "attestMany": batched.attest[0]},
        "relayed_commits_steady_per_participant": batched.per_participant,
        "transactions_per_round": {"own": steady.transactions, "relayed": relayed.transactions,
                                   "relayed_commits": batched.transactions},
        "deposit": first.call_means()["deposit"],
    }


def measure_registry(n: int, sample_bps: int, *, play: int, incentives: bool = True) -> dict[str, Any]:
    """Per-call gas and the round's gas for ``n`` registered at ``sample_bps`` (two rounds,
    at most ``play`` of the sampled playing each; the second is reported)."""
    started = time.perf_counter()
    bench = Bench(connect_embedded(), n, batch=True, incentives=incentives)
    run_id, _ = bench.create_run(sample_bps=sample_bps, rounds=3, quorum=1)  # k may be 1
    first = bench.round(run_id, index=1, play=play)
    second = bench.round(run_id, index=2, play=play)
    k = second.sampled
    calls = second.call_means()
    first_calls = first.call_means()
    # a round's gas with every sampled participant playing; commits and reveals at the
    # first-time rate (the dearer one, and the usual one with partial sampling)
    commit = calls["first_commit"] if calls["first_commit"] is not None else calls["commit"]
    reveal = calls["first_reveal"] if calls["first_reveal"] is not None else calls["reveal"]
    needed = votes_needed(eligible=k, quorum=1)
    attest = calls["attest"] if calls["attest"] is not None else first_calls["attest"] or 0
    round_gas = first.open_round + k * (commit + reveal) + (needed - 1) * attest + calls["attest_finalizing"]
    return {
        "registered": n,
        "sample_bps": sample_bps,
        "sampled": k,
        "played": second.played,
        "votes_needed_if_all_play": needed,
        "register_each": statistics.mean(bench.register_gas),
        "calls": {**calls, "openRound": first.open_round},
        "round_gas_if_all_play": round(round_gas),
        "per_participant_if_all_play": round(round_gas / k),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _row(label: str, split: dict[str, float]) -> str:
    return (f"{label:<30} {split['commit']:>9,.0f} {split['reveal']:>9,.0f} {split['attest_share']:>9,.0f} "
            f"{split['open_round_share']:>9,.0f} {split['total']:>10,.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anvil", action="store_true", help="also measure the main-job point on a local anvil")
    parser.add_argument("--quick", action="store_true", help="skip the 100-participant and 10,000-registered points")
    parser.add_argument("--play", type=int, default=12, help="most sampled participants playing a registry point")
    parser.add_argument("--main-only", action="store_true", help="only the main job's point (5 participants)")
    parser.add_argument("--artifacts", type=Path, help="measure the artifacts in this folder instead of the packaged ones")
    parser.add_argument("--no-incentives", action="store_true", help="runs without stake and reward pool")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args()
    if args.artifacts is not None:
        folder = args.artifacts

        def load_other(name: str = artifact_module.CONTRACT_NAME) -> dict[str, Any]:
            return json.loads((folder / f"{name}.json").read_text())

        artifact_module.load_artifact = contract_module.load_artifact = load_other  # type: ignore[assignment]
    artifact = artifact_module.load_artifact()
    started = time.perf_counter()

    summary: dict[str, Any] = {
        "contract": {"compiler": artifact["compiler"]["version"], "source_sha256": artifact.get("sourceSha256"),
                     "optimizer": artifact.get("settings", {}).get("optimizer"),
                     "deployed_bytes": {name: len(artifact_module.load_artifact(name)["deployedBytecode"]) // 2 - 1
                                        for name in (artifact_module.CONTRACT_NAME, artifact_module.EXTENSION_NAME)},
                     "artifacts": str(args.artifacts) if args.artifacts else "packaged"},  # fmt: skip
        "chain": "embedded (py-evm through eth-tester)",
        "budget_per_participant": BUDGET,
        "incentives": None if args.no_incentives else INCENTIVES,
        "main_job": None,
        "participants": [],
        "registry": [],
        "anvil": None,
        "machine": {"python": platform.python_version()},
        "seconds": 0.0,
    }

    def save() -> None:  # after every point: the 10,000-registered points take minutes each
        summary["seconds"] = time.perf_counter() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")

    participants = summary["participants"]
    for n in (5, 10, 100):
        if not (args.quick and n > 10) and not (args.main_only and n > 5):
            participants.append(measure_participants(n, incentives=not args.no_incentives))
            save()
    main_job = summary["main_job"] = participants[0]
    save()

    if args.anvil:
        from deai_flower.chain.devnode import AnvilNode, find_anvil, install_anvil

        binary = find_anvil() or install_anvil()
        with AnvilNode(binary) as node:
            bench = Bench(node.connect(), 5, incentives=not args.no_incentives)
            run_id, _ = bench.create_run(sample_bps=10_000, rounds=3)
            bench.round(run_id, index=1)
            on_anvil = bench.round(run_id, index=2).call_means()
        summary["anvil"] = {
            "steady_calls": on_anvil,
            "same_as_embedded": {k: on_anvil[k] == main_job["steady_calls"][k]
                                 for k in ("openRound", "reveal", "attest", "attest_finalizing")},  # fmt: skip
            "note": "commit calldata holds a chain-specific commitment, so commits may differ by a few gas",
        }
        save()

    registry = summary["registry"]
    for n in (10, 100, 1_000, 10_000):
        if (args.quick and n > 1_000) or args.main_only:
            continue
        for bps in (100, 1_000, 10_000):
            registry.append(measure_registry(n, bps, play=args.play, incentives=not args.no_incentives))
            save()
            print(f"  registry {n:>6,} at {bps / 100:>3.0f} %: {registry[-1]['seconds']} s", flush=True)
    anvil = summary["anvil"]

    print("steady-state gas per participant per round, full sampling, every revealer eligible")
    print(f"{'configuration':<30} {'commit':>9} {'reveal':>9} {'attest':>9} {'open':>9} {'total':>10}")
    for p in participants:
        label = f"N={p['participants']} votes needed {p['votes_needed']}"
        print(_row(label, p["steady_per_participant"]))
    for p in participants:
        label = f"N={p['participants']} relayed"
        print(_row(label, p["relayed_steady_per_participant"]))
    for p in participants:
        label = f"N={p['participants']} relayed commits"
        print(_row(label, p["relayed_commits_steady_per_participant"]))
    for p in participants:
        print(f"N={p['participants']}: transactions per round {p['transactions_per_round']}")
    print(_row("N=5, first round", main_job["first_round_per_participant"]))
    if main_job["deposit"] is not None:
        print(f"deposit (once per participant per run): {main_job['deposit']:,.0f}")
    print()
    print(f"per call by registry size (gas; commits and reveals: first in the run unless noted; "
          f"<= {args.play} of k played)")  # fmt: skip
    print(f"{'registered':>10} {'rate':>5} {'k':>6} {'openRound':>10} {'commit':>9} {'reveal':>9} {'attest':>9} "
          f"{'finalize':>9} {'round (all k)':>14} {'per particip.':>13}")  # fmt: skip
    for r in registry:
        c = r["calls"]
        commit = c["first_commit"] if c["first_commit"] is not None else c["commit"]
        reveal = c["first_reveal"] if c["first_reveal"] is not None else c["reveal"]
        print(f"{r['registered']:>10,} {r['sample_bps'] / 100:>4.0f}% {r['sampled']:>6,} {c['openRound']:>10,} "
              f"{commit:>9,.0f} {reveal:>9,.0f} {c['attest'] or 0:>9,.0f} {c['attest_finalizing']:>9,} "
              f"{r['round_gas_if_all_play']:>14,} {r['per_participant_if_all_play']:>13,}")  # fmt: skip
    setup = main_job["setup"]
    deploy = ", ".join(f"{part} {gas:,}" for part, gas in setup["deploy"].items())
    print(f"\nsetup: deploy {deploy}, register {setup['register_each']:,.0f} per participant, "
          f"createRun {setup['createRun']:,}")  # fmt: skip
    if anvil is not None:
        print(f"anvil, N=5: {anvil['steady_calls']} same as embedded: {anvil['same_as_embedded']}")
    print(f"wrote {args.out} ({summary['seconds']:.0f}s)")


if __name__ == "__main__":
    main()

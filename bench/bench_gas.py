"""Gas of the round contract: per participant per round, by call, and how it scales.

Drives the real bytecode on the embedded chain (py-evm; anvil charges the same gas,
``--anvil`` checks one point) with N registered participants who all commit and reveal,
and a committee of ``quorum`` attesters agreeing on the aggregate. Each configuration
runs two rounds and reports the second: the first round writes each participant's
storage slots for the first time, every later round rewrites them.

Gas per participant per round = (sum of commits + sum of reveals + sum of attests +
openRound) / revealers, split by call into commit, reveal, attest share and openRound
share. With full sampling the attestation that finalizes a round also opens the next
one, so ``openRound`` is paid only for a run's first round (and after a failed round):
in steady rounds its work is inside the finalizing attestation. With partial sampling
opening walks the registry and stays a separate ``openRound``. The break-even participant count for the
110k budget follows from the per-call costs, which do not depend on N with full
sampling (the scaling table shows it).

Prints tables and writes ``bench/results/gas.json``. Run from the repository root:
``python bench/bench_gas.py [--anvil] [--quick] [--artifact PATH]`` (``--artifact``
measures another build of the contract, e.g. an earlier release, with the same calls).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from deai_flower.chain import ChainNode, DpParams, RoundsContract, commitment_of, connect_embedded, simulation_key
from deai_flower.chain import contract as contract_module
from deai_flower.protocol.encoding import to_wad

RESULTS = Path(__file__).resolve().parent / "results" / "gas.json"
BUDGET = 110_000
SEED = 2024
DP = DpParams.from_floats(noise_multiplier=1.1, sample_rate=0.05, steps=30, delta=1e-5, epsilon=2.0, accountant="rdp")


@dataclass
class RoundGas:
    """One measured round. ``commit``/``reveal`` hold the calls of participants who had
    already taken part in the run (their slots exist); ``first_*`` the others'."""

    participants: int  # registered
    revealers: int
    quorum: int
    sample_bps: int
    open_round: int
    commit: list[int]
    reveal: list[int]
    attest: list[int]  # in order; the last one finalized the round
    first_commit: list[int]
    first_reveal: list[int]

    @property
    def per_participant(self) -> dict[str, float]:
        """Gas per revealer, commits and reveals at the rate of returning participants."""
        n = self.revealers
        commits = self.commit or self.first_commit
        reveals = self.reveal or self.first_reveal
        split = {
            "commit": statistics.mean(commits),
            "reveal": statistics.mean(reveals),
            "attest_share": sum(self.attest) / n,
            "open_round_share": self.open_round / n,
        }
        split["total"] = sum(split.values())
        return split


def _cid(tag: bytes) -> bytes:
    """A binary CIDv1 (raw, sha2-256) of some content."""
    return bytes([0x01, 0x55, 0x12, 0x20]) + keccak(tag)


class Bench:
    """A deployment with ``n`` registered participants on a fresh chain."""

    def __init__(self, node: ChainNode, n: int) -> None:
        self.node = node
        self.admin_key = simulation_key(seed=SEED, role="coordinator")
        self.keys: list[LocalAccount] = [simulation_key(seed=SEED, role=f"client-{i}") for i in range(n)]
        node.fund([self.admin_key.address] + [k.address for k in self.keys])
        self.admin, deploy = RoundsContract.deploy(node, self.admin_key)
        self.deploy_gas = deploy.gas_used
        self.register_gas = [
            self.admin.register(k.address, keccak(f"node-{i}".encode())).gas_used for i, k in enumerate(self.keys)
        ]
        self.handles = [self.admin.as_account(k) for k in self.keys]
        self.took_part: set[str] = set()

    def create_run(self, *, quorum: int, sample_bps: int, rounds: int) -> tuple[int, int]:
        run_id, tx = self.admin.create_run({
            "specHash": keccak(b"bench config"), "codeHash": keccak(b"bench code"),
            "initialModelCid": _cid(b"initial model"), "epsilonBudgetWad": to_wad(8.0), "deltaWad": DP.delta_wad,
            "numRounds": rounds, "commitDuration": 3600, "revealDuration": 3600, "attestDuration": 3600,
            "sampleBps": sample_bps, "quorum": quorum, "minReveals": quorum,
        })  # fmt: skip
        return run_id, tx.gas_used

    def round(self, run_id: int, *, quorum: int, sample_bps: int, index: int) -> RoundGas:
        current = int(self.admin.get_run(run_id)["currentRound"])
        if current and self.admin.phase(run_id, current) == "commit":
            # with full sampling, the attestation that finalized the previous round opened this one
            round_id, open_gas = current, 0
        else:
            round_id, opened = self.admin.open_round(run_id)
            open_gas = opened.gas_used
        sampled = [h for h in self.handles if h.is_sampled(run_id, round_id, h.account.address)]
        assert len(sampled) == self.admin.get_round(run_id, round_id)["sampledCount"] and len(sampled) >= quorum
        gas = RoundGas(len(self.keys), len(sampled), quorum, sample_bps, open_gas, [], [], [], [], [])
        reveals = []
        for i, h in enumerate(sampled):
            cid, salt = _cid(f"update {index} {i}".encode()), keccak(f"salt {index} {i}".encode())
            commitment = commitment_of(chain_id=self.node.chain_id, contract=h.address, run_id=run_id,
                                       round_id=round_id, participant=h.account.address, cid=cid,
                                       num_examples=300 + i, dp=DP, salt=salt)  # fmt: skip
            returning = h.account.address in self.took_part
            (gas.commit if returning else gas.first_commit).append(h.commit(run_id, round_id, commitment).gas_used)
            reveals.append((h, cid, 300 + i, salt, returning))
        for h, cid, k, salt, returning in reveals:
            used = h.reveal(run_id, round_id, cid=cid, num_examples=k, dp=DP, salt=salt).gas_used
            (gas.reveal if returning else gas.first_reveal).append(used)
            self.took_part.add(h.account.address)
        result = bytes([0x01, 0x70, 0x12, 0x20]) + keccak(f"aggregate {index}".encode())
        gas.attest = [h.attest(run_id, round_id, result).gas_used for h in sampled[:quorum]]
        return gas


def measure(node_factory: Any, n: int, *, quorum: int, sample_bps: int = 10_000) -> dict[str, Any]:
    """Setup costs, the first round and a steady one with ``n`` registered participants.

    With full sampling the second round is steady. With partial sampling, rounds run
    until most registered participants have taken part once, and the last is reported.
    """
    bench = Bench(node_factory(), n)
    warmup = 1 if sample_bps >= 10_000 else 4
    # one round more than played, so that the steady round's finalization opens the next one
    run_id, create_gas = bench.create_run(quorum=quorum, sample_bps=sample_bps, rounds=warmup + 2)
    first = bench.round(run_id, quorum=quorum, sample_bps=sample_bps, index=1)
    for index in range(2, warmup + 1):
        bench.round(run_id, quorum=quorum, sample_bps=sample_bps, index=index)
    steady = bench.round(run_id, quorum=quorum, sample_bps=sample_bps, index=warmup + 1)
    return {
        "participants": n,
        "quorum": quorum,
        "sample_bps": sample_bps,
        "revealers": steady.revealers,
        "setup": {"deploy": bench.deploy_gas, "register_each": statistics.mean(bench.register_gas),
                  "createRun": create_gas},  # fmt: skip
        "first_round_per_participant": first.per_participant,
        "steady_round": warmup + 1,
        "steady": asdict(steady),
        "steady_per_participant": steady.per_participant,
        "steady_calls": {
            "openRound": steady.open_round,
            "commit_mean": statistics.mean(steady.commit),
            "reveal_mean": statistics.mean(steady.reveal),
            "first_commit_mean": statistics.mean(steady.first_commit) if steady.first_commit else None,
            "first_reveal_mean": statistics.mean(steady.first_reveal) if steady.first_reveal else None,
            "attest_not_final": steady.attest[0] if quorum > 1 else None,
            "attest_finalizing": steady.attest[-1],
        },
    }


def break_even(point: dict[str, Any], quorum: int) -> dict[str, Any]:
    """Per-participant gas predicted for N revealers from the per-call costs of ``point``.

    Commits of the previous round's attesters settle their attestation (one extra read),
    so their commits cost more; the prediction keeps that split.
    """
    s = point["steady"]
    n0 = s["revealers"]
    attesters = quorum
    attester_commit = statistics.mean(s["commit"][:attesters])
    other_commit = statistics.mean(s["commit"][attesters:]) if n0 > attesters else attester_commit
    reveal = statistics.mean(s["reveal"])
    per_round = s["open_round"] + sum(s["attest"]) + attesters * attester_commit
    predicted = {n: other_commit * (n - attesters) / n + reveal + per_round / n for n in range(max(quorum, 2), 201)}
    within = [n for n, gas in predicted.items() if gas <= BUDGET]
    return {
        "quorum": quorum,
        "from_measured_participants": n0,
        "predicted_per_participant": {str(n): round(g) for n, g in predicted.items() if n <= 20 or n % 10 == 0},
        "smallest_n_within_budget": within[0] if within else None,
        "limit_as_n_grows": round(other_commit + reveal),
    }


def _row(label: str, split: dict[str, float]) -> str:
    return (f"{label:<28} {split['commit']:>9,.0f} {split['reveal']:>9,.0f} {split['attest_share']:>9,.0f} "
            f"{split['open_round_share']:>9,.0f} {split['total']:>10,.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anvil", action="store_true", help="also measure the main-job point on a local anvil")
    parser.add_argument("--quick", action="store_true", help="skip the 50 and 100 participant points")
    parser.add_argument("--artifact", type=Path, help="measure this contract artifact instead of the packaged one")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args()
    if args.artifact is not None:
        other = json.loads(args.artifact.read_text())
        contract_module.load_artifact = lambda: other  # type: ignore[assignment]
    artifact = contract_module.load_artifact()
    started = time.perf_counter()

    main_job = measure(connect_embedded, 5, quorum=2)
    points = [main_job]
    scaling = []
    # 50 % sampling: N registered, about N/2 sampled and revealing (openRound counts them)
    plan = [(10_000, n) for n in (10, 50, 100)] + [(5_000, n) for n in (20, 50, 100)]
    for bps, n in plan:
        if args.quick and n > 20:
            continue
        point = measure(connect_embedded, n, quorum=3, sample_bps=bps)
        points.append(point)
        scaling.append(point)
    three = next(p for p in points if p["participants"] == 10 and p["sample_bps"] == 10_000)
    thresholds = [break_even(main_job, 2), break_even(three, 3)]

    anvil = None
    if args.anvil:
        from deai_flower.chain.devnode import AnvilNode, find_anvil, install_anvil

        binary = find_anvil() or install_anvil()
        with AnvilNode(binary) as node:
            on_anvil = measure(node.connect, 5, quorum=2)
        anvil = {
            "steady_calls": on_anvil["steady_calls"],
            "same_as_embedded": {
                k: on_anvil["steady_calls"][k] == main_job["steady_calls"][k]
                for k in ("openRound", "reveal_mean", "attest_not_final", "attest_finalizing")
            },
            "note": "commit calldata holds a chain-specific commitment, so commits may differ by a few gas",
        }

    summary = {
        "contract": {"compiler": artifact["compiler"]["version"], "source_sha256": artifact.get("sourceSha256"),
                     "artifact": str(args.artifact) if args.artifact else "packaged"},  # fmt: skip
        "chain": "embedded (py-evm through eth-tester)",
        "budget_per_participant": BUDGET,
        "main_job": main_job,
        "scaling": scaling,
        "break_even": thresholds,
        "anvil": anvil,
        "machine": {"python": platform.python_version()},
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")

    header = f"{'configuration':<28} {'commit':>9} {'reveal':>9} {'attest':>9} {'open':>9} {'total':>10}"
    print("steady-state gas per participant per round (attest and open: that participant's share)")
    print(header)
    for p in points:
        label = f"N={p['participants']} q={p['quorum']} sample={p['sample_bps'] / 100:.0f}%"
        if p["revealers"] != p["participants"]:
            label += f" ({p['revealers']} rev)"
        print(_row(label, p["steady_per_participant"]))
    print(_row("N=5 q=2, first round", main_job["first_round_per_participant"]))
    print()
    print("per call, steady state (gas)")
    print(f"{'configuration':<28} {'openRound':>10} {'commit':>9} {'reveal':>9} {'attest':>9} {'finalize':>9}")
    for p in points:
        c = p["steady_calls"]
        label = f"N={p['participants']} q={p['quorum']} sample={p['sample_bps'] / 100:.0f}%"
        print(f"{label:<28} {c['openRound']:>10,} {c['commit_mean']:>9,.0f} {c['reveal_mean']:>9,.0f} "
              f"{c['attest_not_final'] or 0:>9,} {c['attest_finalizing']:>9,}")  # fmt: skip
    print()
    setup = main_job["setup"]
    print(f"setup: deploy {setup['deploy']:,}, register {setup['register_each']:,.0f} per participant, "
          f"createRun {setup['createRun']:,}")  # fmt: skip
    for t in thresholds:
        print(f"quorum {t['quorum']}: <= {BUDGET:,} gas per participant from N = {t['smallest_n_within_budget']} "
              f"revealers (tends to {t['limit_as_n_grows']:,} as N grows)")  # fmt: skip
    if anvil is not None:
        print(f"anvil, N=5 q=2: {anvil['steady_calls']} same as embedded: {anvil['same_as_embedded']}")
    print(f"wrote {args.out} ({summary['seconds']:.0f}s)")


if __name__ == "__main__":
    main()

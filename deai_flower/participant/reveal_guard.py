"""The reveal guard: a participant that committed makes sure its reveal lands.

Where the coordinator relays commits too (protocol §2.3), the node hands it a signed
commitment instead of committing, and the guard first makes sure the commitment lands:
if it is not on chain by the *commit fallback point* (seven eighths into the commit
phase), the node sends its own ``commit``.

A relaying coordinator (protocol §2.4) publishes the reveal records its nodes hand over;
one that withholds a record, or never asks for it, would get that node slashed for a
missing reveal, its update already published. So once a node has committed in a round
asked for by phase messages, a guard watches the chain for it: when the round's record
is not on chain by the *fallback point* (seven eighths into the reveal phase, after the
relayer's window of three quarters) it puts the blob into the node's store and sends the
node's own ``reveal``; it ends as soon as the record is on chain, the round has left its
reveal phase, or the reveal deadline has passed. A record the relayer published
meanwhile is never sent again (the chain is asked first, and a refusal is checked
against it).

Every message starts a fresh ClientApp process in a deployment, and a withholding
coordinator may never send another one: there the guard is a detached process
(``python -m deai_flower.participant.reveal_guard JOB``) whose job file, in the silo's
ledger directory, holds the pending reveal and where to find the silo's keystore,
password file, chain and store; it logs to ``reveal-guard.log`` beside it and removes
the job when it ends. A simulated participant, which lives as long as its engine, runs
the same watch in a thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..chain import DpParams, RoundsContract
from ..errors import ChainError, ChainUnavailableError, ConfigError, ContractRevertError, DeaiError
from ..protocol.encoding import STAGES
from ..storage import ContentStore, cid_to_bytes

__all__ = ["GuardOutcome", "PendingReveal", "fallback_point", "guard_in_thread", "spawn_guard", "watch"]

#: Where, in a silo's ledger directory, the detached guards' jobs and log live.
JOBS_DIR = "pending-reveals"
LOG_FILE = "reveal-guard.log"
#: The node-config entries a detached guard needs to act as the silo.
_SILO_KEYS = ("keystore", "password-file", "chain-url", "store")
#: How often a guard asks the chain whether its record landed, near the fallback point,
#: and the longest it waits between two questions far from it.
POLL_S = 1.0
_MAX_PAUSE_S = 10.0
#: How long a guard keeps trying to reach a chain that stays out of reach.
_UNREACHABLE_BUDGET_S = 60.0
#: A job file is the silo's own, but read back as untrusted: bounded.
_MAX_JOB_BYTES = 64 * 1024


def fallback_point(commit_deadline: int, reveal_deadline: int) -> int:
    """The chain time from which a node reveals on its own: seven eighths into the reveal
    phase, after the relayer's three quarters, leaving an eighth for its transaction."""
    return reveal_deadline - (reveal_deadline - commit_deadline) // 8


@dataclass(frozen=True)
class GuardOutcome:
    """How a guard ended: whether it sent the node's own reveal (or failed), and what it
    saw, in words."""

    revealed_itself: bool
    detail: str
    failed: bool = False

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True)
class PendingReveal:
    """What a participant committed to in one round, enough to reveal it."""

    chain_id: int
    contract: str
    run_id: int
    round: int
    participant: str
    cid: str
    num_examples: int
    dp: DpParams
    salt: bytes
    blob: bytes
    #: Handed to a relaying coordinator, not sent yet (empty: the node committed itself).
    commitment: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {"chain-id": self.chain_id, "contract": self.contract, "run-id": self.run_id, "round": self.round,
                "participant": self.participant, "cid": self.cid, "num-examples": self.num_examples,
                "dp": [str(v) for v in self.dp.as_tuple()], "salt": self.salt.hex(),
                "commitment": self.commitment.hex()}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any], blob: bytes) -> PendingReveal:
        try:
            return cls(chain_id=int(data["chain-id"]), contract=str(data["contract"]), run_id=int(data["run-id"]),
                       round=int(data["round"]), participant=str(data["participant"]), cid=str(data["cid"]),
                       num_examples=int(data["num-examples"]), dp=DpParams(*(int(v) for v in data["dp"])),
                       salt=bytes.fromhex(str(data["salt"])), blob=blob,
                       commitment=bytes.fromhex(str(data.get("commitment", ""))))  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"pending reveal is malformed: {exc!r}") from None

    @property
    def label(self) -> str:
        return f"round {self.round} of run {self.run_id}"


def watch(contract: RoundsContract, store: ContentStore, pending: PendingReveal, *, poll_s: float = POLL_S,
          note: Callable[[str], None] = lambda _line: None) -> GuardOutcome:  # fmt: skip
    """Guard ``pending`` until its reveal is settled; return what happened (``note`` hears
    of the chain going out of reach meanwhile).

    Raises:
        ChainError: the chain could not be read, or refused the node's own reveal.
    """
    run_id, round_id = pending.run_id, pending.round
    unreachable_since: float | None = None  # the chain out of reach for a moment must not cost the reveal

    def out_of_reach(exc: ChainUnavailableError) -> None:
        nonlocal unreachable_since
        if unreachable_since is None:
            unreachable_since = time.monotonic()
            note(f"{exc}; trying again")
        elif time.monotonic() - unreachable_since > _UNREACHABLE_BUDGET_S:
            raise exc
        time.sleep(poll_s)

    while True:
        try:
            state = contract.get_round(run_id, round_id)
            clock = _ChainClock(contract)
            break
        except ContractRevertError:  # no longer the run's current round: it ended
            return GuardOutcome(False, f"{pending.label} is over: nothing to reveal")
        except ChainUnavailableError as exc:
            out_of_reach(exc)
    commit_deadline, reveal_deadline = int(state["commitDeadline"]), int(state["revealDeadline"])
    if pending.commitment:
        landed = _guard_commit(contract, pending, clock, commit_deadline, poll_s=poll_s, note=note)
        if landed is not None:
            return landed
    fallback = fallback_point(commit_deadline, reveal_deadline)
    while True:
        try:
            if _revealed(contract, pending):
                return GuardOutcome(False, f"{pending.label}: the record is on chain")
            phase = contract.phase(run_id, round_id)
            now = clock.now()
            if phase not in ("commit", "reveal") or now >= reveal_deadline:
                return GuardOutcome(False, f"{pending.label} left its reveal phase (phase {phase}, chain time {now}, "
                                           f"deadline {reveal_deadline}): nothing to do")  # fmt: skip
            if now >= fallback:
                return _reveal_itself(contract, store, pending, commit_deadline)
            unreachable_since = None
        except ChainUnavailableError as exc:
            if clock.guess() >= reveal_deadline:
                raise
            out_of_reach(exc)
            continue
        time.sleep(_pause(fallback - now, poll_s))


def _guard_commit(contract: RoundsContract, pending: PendingReveal, clock: _ChainClock, commit_deadline: int, *,
                  poll_s: float, note: Callable[[str], None]) -> GuardOutcome | None:  # fmt: skip
    """Wait for the handed commitment to land; send it at the commit fallback point if it
    has not. None: it is on chain, go on guarding the reveal; else how the guard ended."""
    run_id, round_id = pending.run_id, pending.round
    duration = int(contract.get_run(run_id)["commitDuration"])
    fallback = commit_deadline - duration // 8
    while True:
        # the phase before the member: a batch landing between the two reads (and ending
        # the phase: every sampled participant committed) is then seen as landed
        phase, now = contract.phase(run_id, round_id), clock.now()
        member = contract.get_member(run_id, pending.participant)
        if int(member["round"]) > round_id:  # it has committed since: this round is over
            return None
        if int(member["round"]) == round_id:
            if STAGES[int(member["stage"])] == "declined":
                return GuardOutcome(False, f"{pending.label}: declined, nothing to reveal")
            return None
        if phase != "commit" or now >= commit_deadline:
            return GuardOutcome(False, f"{pending.label}: its commitment was never recorded (phase {phase}); "
                                       "nothing to reveal", failed=True)  # fmt: skip
        if now >= fallback:
            try:
                tx = contract.commit(run_id, round_id, pending.commitment)
            except ContractRevertError:
                if int(contract.get_member(run_id, pending.participant)["round"]) == round_id:
                    return None  # the relayer's batch landed first
                raise
            note(f"{pending.label}: its commitment was not on chain by the commit fallback point; committed with "
                 f"its own transaction {tx.tx_hash}")  # fmt: skip
            return None
        time.sleep(_pause(fallback - now, poll_s))


def _pause(to_fallback: float, poll_s: float) -> float:
    """How long to wait before asking the chain again: every ``poll_s`` near the fallback
    point, more seldom far from it (a tenth of the time left, at most
    :data:`_MAX_PAUSE_S`), so that a hundred simulated guards cost the chain little."""
    return max(0.05, min(to_fallback, max(poll_s, min(to_fallback / 10, _MAX_PAUSE_S))))


def _reveal_itself(contract: RoundsContract, store: ContentStore, pending: PendingReveal,
                   commit_deadline: int) -> GuardOutcome:  # fmt: skip
    if contract.phase(pending.run_id, pending.round) == "commit":
        # a sampled node never committed and no block has passed the deadline since
        contract.node.advance_to(commit_deadline, timeout=float(POLL_S * 10))
    store.put(pending.blob, cid=pending.cid)  # hashed at commit; a no-op if the relay published it
    try:
        tx = contract.reveal(pending.run_id, pending.round, cid=cid_to_bytes(pending.cid),
                             num_examples=pending.num_examples, dp=pending.dp, salt=pending.salt)  # fmt: skip
    except ContractRevertError:
        if _revealed(contract, pending):  # the relayer's batch landed first
            return GuardOutcome(False, f"{pending.label}: the record is on chain")
        raise
    return GuardOutcome(True, f"{pending.label}: its record was not on chain by the fallback point; revealed "
                              f"with its own transaction {tx.tx_hash}")  # fmt: skip


def _revealed(contract: RoundsContract, pending: PendingReveal) -> bool:
    member = contract.get_member(pending.run_id, pending.participant)
    return int(member["round"]) == pending.round and STAGES[int(member["stage"])] in ("revealed", "attested")


class _ChainClock:
    """The chain's time as a lower bound that moves with the wall's between blocks.

    A chain's clock is its latest block's timestamp, which stands still while no block
    is mined (a development chain mines only on demand): between two blocks the time the
    next one may carry grows with the wall clock.
    """

    def __init__(self, contract: RoundsContract) -> None:
        self._node = contract.node
        self._chain, self._wall = self._node.now(), time.monotonic()

    def now(self) -> int:
        seen, wall = self._node.now(), time.monotonic()
        estimate = self._chain + (wall - self._wall)
        if seen > estimate:
            self._chain, self._wall, estimate = seen, wall, seen
        return int(estimate)

    def guess(self) -> int:
        """The estimate without asking the chain (it may be out of reach)."""
        return int(self._chain + (time.monotonic() - self._wall))


# ------------------------------------------------------------------ a simulated node: a thread


def guard_in_thread(contract: RoundsContract, store: ContentStore, pending: PendingReveal,
                    report: Callable[[GuardOutcome], None]) -> threading.Thread:  # fmt: skip
    """Watch ``pending`` in a daemon thread of this process; ``report`` gets how it ended."""

    def run() -> None:
        try:
            report(watch(contract, store, pending))
        except (DeaiError, OSError) as exc:
            report(GuardOutcome(False, f"{pending.label}: the guard failed: {exc}", failed=True))

    thread = threading.Thread(target=run, name=f"reveal-guard-{pending.participant[:10]}-{pending.round}",
                              daemon=True)  # fmt: skip
    thread.start()
    return thread


# ------------------------------------------------------------------ a deployed node: a process


def spawn_guard(pending: PendingReveal, node_config: Mapping[str, Any], ledger_dir: Path) -> Path:
    """Write ``pending``'s job into ``ledger_dir`` and start a detached guard process for it
    (its own session: it outlives the ClientApp process and its process group). Returns
    the job file.

    Raises:
        ConfigError: the job could not be written, or the guard not started.
    """
    jobs = ledger_dir / JOBS_DIR
    name = f"{pending.chain_id}-{pending.contract}-{pending.run_id}-{pending.round}-{pending.participant}"
    job, blob = jobs / f"{name}.json", jobs / f"{name}.blob"
    document = {**pending.to_json(), "silo": {key: str(node_config[key]) for key in _SILO_KEYS}}
    try:
        jobs.mkdir(mode=0o700, exist_ok=True)
        _write_private(blob, pending.blob)
        _write_private(job, json.dumps(document).encode())
        with (ledger_dir / LOG_FILE).open("ab") as log:
            # cwd: the ledger directory, so that `-m` imports the silo's installed release,
            # never code from wherever the ClientApp was started (a FAB's folder)
            subprocess.Popen([sys.executable, "-m", __name__, str(job)], cwd=ledger_dir, stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    except OSError as exc:
        raise ConfigError(f"cannot start the reveal guard in {ledger_dir}: {exc}") from exc
    return job


def _write_private(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def run_job(job: Path) -> GuardOutcome:
    """Act as the silo the job names and guard its pending reveal; the job's files are
    removed once it ends, whatever happened."""
    from ..chain.keys import keystore_key
    from ..chain.node import connect_url
    from ..storage.location import open_store

    blob_path = job.with_suffix(".blob")
    try:
        if job.stat().st_size > _MAX_JOB_BYTES:
            raise ConfigError(f"{job} is larger than {_MAX_JOB_BYTES} bytes")
        document = json.loads(job.read_text(encoding="utf-8"))
        pending = PendingReveal.from_json(document, blob_path.read_bytes())
        silo = document["silo"]
        account = keystore_key(silo["keystore"], password_file=silo["password-file"])
        if account.address != pending.participant:
            raise ConfigError(f"the keystore holds {account.address}, not the committer {pending.participant}")
        node = connect_url(silo["chain-url"])
        if node.chain_id != pending.chain_id:
            raise ConfigError(f"{silo['chain-url']} is chain {node.chain_id}, the commit was on {pending.chain_id}")
        contract = RoundsContract(node, pending.contract, account)
        return watch(contract, open_store(silo["store"]), pending, note=lambda line: _print(f"{job.name}: {line}"))
    finally:
        job.unlink(missing_ok=True)
        blob_path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m deai_flower.participant.reveal_guard JOB_FILE", file=sys.stderr)
        return 2
    name = Path(args[0]).name
    try:
        _print(f"{name}: {run_job(Path(args[0]))}")
    except (DeaiError, ChainError, OSError, KeyError, ValueError) as exc:
        cause = f" ({exc.__cause__!r})" if exc.__cause__ is not None else ""
        _print(f"{name} failed: {exc}{cause}")
        return 1
    return 0


def _print(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} reveal guard {line}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

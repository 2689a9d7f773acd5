"""A round's result recomputed from the chain and the store, by whoever needs it.

A finalized result is deterministic: it is the spec's aggregation rule applied to the
round's reveals that the finalized outcome marks aggregated (verdict 0), and the rules
are bit-exact on every machine (:mod:`.protocol.rules`). Attesters compute it
(:func:`~deai_flower.protocol.outcome.result_blob`), ``deai verify`` recomputes it, and when the store has lost a
finalized result's blob (an IPFS node collected it, a directory was wiped) the
coordinator and the participants rebuild it (:func:`fetch_result`): the round's
``Attested`` events give the finalized outcome (attesters vote for the result CID and
the outcome together; the finalizing vote is the round's last for that CID), its
``Revealed`` events the aggregated updates' CIDs. The rebuilt bytes are used only when
they hash to the finalized CID, so they *are* the finalized result, and they are put
back in the store for the others.

The same holds for a stored copy that no longer hashes to its CID (tampered, or a
damaged disk): it is never used, and the result is rebuilt as if it were missing. A
local store keeps a damaged copy of the right size (its ``put`` is idempotent by size),
so there every reader rebuilds it again; an IPFS store cannot hold one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import (
    BlobNotFoundError,
    ChainError,
    ResultUnrecoverableError,
    StoreError,
    StoreUnavailableError,
    TamperedBlobError,
)
from .protocol.judgment import judge_blob
from .protocol.outcome import Refusal, decode_outcome, result_blob
from .protocol.rules import RevealedUpdate
from .protocol.spec import RunSpec
from .storage import ContentStore, cid_from_bytes, compute_cid, decode_arrays

if TYPE_CHECKING:
    from .chain import RoundsContract

__all__ = ["RebuiltResult", "fetch_result", "fetch_update", "rebuild_result"]


def fetch_update(store: ContentStore, cid: str, *, max_bytes: int,
                 expected: dict[str, Any] | None) -> dict[str, np.ndarray] | Refusal:  # fmt: skip
    """The arrays stored under ``cid``, or why they cannot be aggregated, as reveal
    judgment rules (:func:`~deai_flower.protocol.judgment.judge_blob`)."""
    return judge_blob(lambda: store.get(cid), max_bytes=max_bytes, expected=expected)


@dataclass(frozen=True)
class RebuiltResult:
    """A finalized result rebuilt from its round's reveals."""

    round: int
    cid: str
    arrays: dict[str, np.ndarray]
    aggregated: tuple[str, ...]  # the participants whose updates it aggregates
    lost: str  # why the store's copy could not be used
    stored: str = ""  # why it could not be put back in the store ('' when it was)

    def describe(self) -> str:
        """One line for logs and round reports."""
        back = f"could not be stored again ({self.stored})" if self.stored else "stored again"
        return (f"finalized result {self.cid} of round {self.round} was unusable ({self.lost}); rebuilt from the "
                f"{len(self.aggregated)} aggregated reveals and {back}")  # fmt: skip


def rebuild_result(contract: RoundsContract, run_id: int, result_cid: str, *, spec: RunSpec, store: ContentStore,
                   expected: dict[str, Any] | None, lost: str = "") -> RebuiltResult:  # fmt: skip
    """Rebuild the finalized result ``result_cid`` of run ``run_id`` and put it in ``store``.

    ``lost``: why the store's copy could not be used (for the report). Raises
    :class:`ResultUnrecoverableError`, with one reason naming the CID and what is
    missing, when no round of the run finalized ``result_cid`` (an initial model cannot
    be rebuilt), an aggregated update's blob cannot be read either, or the rule's result
    over the aggregated updates does not hash to ``result_cid`` (never used then).
    """
    prefix = f"finalized model {result_cid} is unusable" + (f" ({lost})" if lost else "")
    try:
        rounds = [int(e["round"]) for e in contract.finalized_rounds(run_id)
                  if cid_from_bytes(bytes(e["resultCid"])) == result_cid]  # fmt: skip
        if not rounds:
            raise ResultUnrecoverableError(f"{prefix} and cannot be rebuilt: no round of run {run_id} finalized it "
                                           "(the run's initial model has no reveals to rebuild it from)")  # fmt: skip
        round_id = rounds[-1]
        votes = [bytes(e["outcome"]) for e in contract.attestations(run_id, round_id)
                 if cid_from_bytes(bytes(e["resultCid"])) == result_cid]  # fmt: skip
        reveals = {str(r["participant"]): r for r in contract.final_reveals(run_id, round_id)}
    except ChainError as exc:
        raise ResultUnrecoverableError(f"{prefix} and cannot be rebuilt: reading the chain failed ({exc})") from exc
    prefix = f"{prefix} and round {round_id}'s result cannot be rebuilt"
    if not votes:
        raise ResultUnrecoverableError(f"{prefix}: no attestation of it is on chain")
    try:  # the finalizing vote is the round's last for the CID
        outcome = decode_outcome(votes[-1])
    except ValueError as exc:
        raise ResultUnrecoverableError(f"{prefix}: its finalized outcome does not parse ({exc})") from exc
    updates, missing = [], []
    for entry in (e for e in outcome if e.verdict == "aggregated"):
        reveal = reveals.get(entry.participant)
        if reveal is None:
            missing.append(f"{entry.participant}'s update has no reveal on chain")
            continue
        cid = cid_from_bytes(bytes(reveal["cid"]))
        arrays = fetch_update(store, cid, max_bytes=spec.max_blob_bytes, expected=expected)
        if isinstance(arrays, Refusal):
            missing.append(f"{entry.participant}'s update {cid} is {arrays.verdict} ({arrays.reason})")
        else:
            updates.append(RevealedUpdate(entry.participant, int(reveal["numExamples"]), arrays))
    if missing:
        raise ResultUnrecoverableError(f"{prefix}: " + "; ".join(missing))
    try:
        blob = result_blob(spec, updates)
    except ValueError as exc:
        raise ResultUnrecoverableError(f"{prefix}: {spec.rule.name} refuses its aggregated updates ({exc})") from exc
    rebuilt = compute_cid(blob)
    if rebuilt != result_cid:
        raise ResultUnrecoverableError(f"{prefix}: {spec.rule.name} of its {len(updates)} aggregated updates is "
                                       f"{rebuilt}, not the finalized CID; refused")  # fmt: skip
    arrays = decode_arrays(blob, max_bytes=spec.max_blob_bytes, expected=expected)
    try:
        store.put(blob, cid=rebuilt)
        stored = ""
    except StoreError as exc:
        stored = str(exc)
    return RebuiltResult(round=round_id, cid=result_cid, arrays=arrays,
                         aggregated=tuple(u.participant for u in updates), lost=lost, stored=stored)  # fmt: skip


def fetch_result(contract: RoundsContract, run_id: int, result_cid: str, *, spec: RunSpec, store: ContentStore,
                 expected: dict[str, Any] | None) -> tuple[dict[str, np.ndarray], RebuiltResult | None]:  # fmt: skip
    """The arrays of the finalized result (or initial model) ``result_cid``: from the store,
    or rebuilt (:func:`rebuild_result`, returned too) when the store has no usable copy.

    Raises:
        ResultUnrecoverableError: the store has no usable copy and it cannot be rebuilt.
        StoreError, BlobFormatError: the store's copy is over the size limit or not a blob
            of the expected layout: rebuilding would give the same bytes.
    """
    try:
        return decode_arrays(store.get(result_cid), max_bytes=spec.max_blob_bytes, expected=expected), None
    except (BlobNotFoundError, StoreUnavailableError, TamperedBlobError) as exc:
        lost = str(exc)
    rebuilt = rebuild_result(contract, run_id, result_cid, spec=spec, store=store, expected=expected, lost=lost)
    return rebuilt.arrays, rebuilt

"""A round's outcome: the aggregate every attester computes, and what they agree on
besides it.

:func:`round_outcome` assembles both from the judged reveals
(:mod:`.judgment`): the attester votes for them and ``deai verify`` recomputes them with
the same call. For every revealer of the round, in ascending address order, one 25-byte entry:
address (20 bytes), contribution score (uint32, big-endian) and verdict (uint8). The
attestation carries the outcome with the result CID and the contract counts votes for
the pair, so the majority that fixes the model also fixes who was refused, why, and
what each contribution scored; the finalizing attestation pays and slashes by it
(docs/protocol.md §2.7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from eth_utils import to_checksum_address

from deai_flower.protocol.blob import encode_arrays
from deai_flower.protocol.rules import RevealedUpdate, aggregate
from deai_flower.protocol.contribution import ValidationLosses, contribution_scores
from deai_flower.protocol.spec import RunSpec

__all__ = [
    "OUTCOME_ENTRY_BYTES",
    "VERDICTS",
    "OutcomeEntry",
    "Refusal",
    "RoundOutcome",
    "decode_outcome",
    "encode_outcome",
    "result_blob",
    "round_outcome",
]

OUTCOME_ENTRY_BYTES = 25
#: Verdict codes: 0 aggregated; the others refuse the update (and slash its author).
VERDICTS = ("aggregated", "unavailable", "invalid", "dp-claims")
_MAX_SCORE = 2**32 - 1


@dataclass(frozen=True)
class OutcomeEntry:
    """One revealer's line in a round's outcome."""

    participant: str  # checksummed address
    score: int
    verdict: str  # one of VERDICTS


@dataclass(frozen=True)
class Refusal:
    """Why attesters refused a revealed update: a verdict (one of VERDICTS but the first)
    and a readable reason."""

    verdict: str
    reason: str

    def __str__(self) -> str:
        return self.reason


def encode_outcome(scores: Mapping[str, int], refused: Mapping[str, str]) -> bytes:
    """The outcome bytes for the aggregated revealers' ``scores`` and the ``refused``
    revealers' verdicts (address -> one of VERDICTS other than "aggregated")."""
    entries: dict[int, bytes] = {}
    for address, score in scores.items():
        if not 0 <= int(score) <= _MAX_SCORE:
            raise ValueError(f"score {score} of {address} is not a uint32")
        entries[int(address, 16)] = int(score).to_bytes(4, "big") + b"\x00"
    for address, verdict in refused.items():
        key = int(address, 16)
        if key in entries:
            raise ValueError(f"{address} is both aggregated and refused")
        code = VERDICTS.index(verdict)
        if code == 0:
            raise ValueError(f"{address}: a refused update needs a refusing verdict, not {verdict!r}")
        entries[key] = b"\x00\x00\x00\x00" + bytes([code])
    return b"".join(key.to_bytes(20, "big") + entries[key] for key in sorted(entries))


def decode_outcome(outcome: bytes) -> list[OutcomeEntry]:
    """Parse outcome bytes (as an ``Attested`` event carries them).

    Raises:
        ValueError: the length is not a whole number of entries, addresses are not
            strictly ascending, a verdict code is unknown, or a refused entry has a score.
    """
    if len(outcome) % OUTCOME_ENTRY_BYTES:
        raise ValueError(f"an outcome of {len(outcome)} bytes is not made of {OUTCOME_ENTRY_BYTES}-byte entries")
    entries, previous = [], -1
    for start in range(0, len(outcome), OUTCOME_ENTRY_BYTES):
        raw = outcome[start : start + OUTCOME_ENTRY_BYTES]
        key = int.from_bytes(raw[:20], "big")
        if key <= previous:
            raise ValueError("outcome entries are not in strictly ascending address order")
        previous = key
        score, code = int.from_bytes(raw[20:24], "big"), raw[24]
        if code >= len(VERDICTS):
            raise ValueError(f"unknown verdict code {code}")
        if code != 0 and score != 0:
            raise ValueError("a refused update has a non-zero score")
        entries.append(OutcomeEntry(to_checksum_address(raw[:20]), score, VERDICTS[code]))
    return entries


def result_blob(spec: RunSpec, updates: Sequence[RevealedUpdate]) -> bytes:
    """The result of aggregating ``updates`` (in any order) with the spec's rule, encoded:
    the same bytes on every machine."""
    return encode_arrays(aggregate(spec.rule.name, updates, dict(spec.rule.params)))


@dataclass(frozen=True)
class RoundOutcome:
    """What a round's attesters vote for: the aggregate's bytes and the outcome.

    ``scores`` is None where they were not computed (:func:`round_outcome`).
    """

    result: bytes
    scores: Mapping[str, int] | None
    refused: Mapping[str, Refusal]

    @property
    def outcome(self) -> bytes:
        """The outcome bytes an attestation carries."""
        if self.scores is None:
            raise ValueError("an outcome needs the aggregated updates' scores")
        return encode_outcome(self.scores, {address: refusal.verdict for address, refusal in self.refused.items()})


def round_outcome(spec: RunSpec, updates: Sequence[RevealedUpdate], refused: Mapping[str, Refusal], *,
                  global_arrays: Mapping[str, np.ndarray] | None,
                  validation_losses: ValidationLosses | None = None,
                  previous_global: Mapping[str, np.ndarray] | None = None) -> RoundOutcome:  # fmt: skip
    """The round's result and outcome from its judged reveals: the aggregated ``updates``
    and the ``refused`` ones (address -> refusal).

    ``global_arrays``: the round's global model, which contribution scores are measured
    from (:func:`~deai_flower.protocol.contribution.contribution_scores`); None leaves the
    scores out (a verifier still checks the aggregate of a round whose scores it cannot
    recompute). ``validation_losses``: for a loss-scored run. ``previous_global``: for a
    shares-scored run, the model before the round's (its public step is removed before scoring).
    """
    result = result_blob(spec, updates)
    scores = None
    if global_arrays is not None:
        scores = contribution_scores(spec, updates, global_arrays, validation_losses=validation_losses,
                                     previous_global=previous_global)  # fmt: skip
    return RoundOutcome(result=result, scores=scores, refused=dict(refused))

"""A round's outcome: what attesters agree on besides the model.

For every revealer of the round, in ascending address order, one 25-byte entry:
address (20 bytes), contribution score (uint32, big-endian) and verdict (uint8). The
attestation carries the outcome with the result CID and the contract counts votes for
the pair, so the majority that fixes the model also fixes who was refused, why, and
what each contribution scored; the finalizing attestation pays and slashes by it
(docs/protocol.md §2.7).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from eth_utils import to_checksum_address

__all__ = ["OUTCOME_ENTRY_BYTES", "VERDICTS", "OutcomeEntry", "Refusal", "decode_outcome", "encode_outcome"]

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

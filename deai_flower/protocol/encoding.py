"""Pure encodings shared by the contract and every participant (no I/O).

Fixed-point conversions, the DP parameter record, the reveal commitment, the
participant sampling rule (a keyed permutation of registry indices) and the attestation
majority. The contract is the authority; these functions reproduce its
arithmetic byte for byte so that clients can build commitments offline and verifiers
can replay a run (tests check both sides agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from eth_abi import encode
from eth_utils import keccak, to_canonical_address

from ..errors import ConfigError

WAD = 10**18
#: ``type(uint128).max`` encodes an infinite epsilon or budget (non-private training).
UINT128_MAX = 2**128 - 1
BPS = 10_000

#: Accountant ids recorded on chain.
ACCOUNTANT_IDS = {"none": 0, "rdp": 1, "prv": 2}
ACCOUNTANT_NAMES = {v: k for k, v in ACCOUNTANT_IDS.items()}

#: Contract ``Phase`` enum, in declaration order.
PHASES = ("none", "commit", "reveal", "attest", "finalized", "failed")
#: Contract ``Stage`` enum (a participant's progress in its last round), in order.
STAGES = ("none", "committed", "revealed", "attested", "declined")
#: Contract ``PenaltyReason`` enum, in order.
PENALTY_REASONS = ("missing-reveal", "minority-attestation", "refused-update")
#: The zero address: a run with it as ``stakeToken`` stakes and pays in native currency.
ZERO_ADDRESS = "0x" + "00" * 20

#: Bytes of a commitment the contract stores (the event carries all 32).
STORED_COMMITMENT_BYTES = 26
#: Rounds of the swap-or-not permutation that orders registry indices (``permutedPosition``).
SHUFFLE_ROUNDS = 90
#: The most participants sampled in one round (the contract's counts are 16-bit).
MAX_SAMPLED = 2**16 - 1
#: ``maxExamples`` of a participant registered without a bound.
NO_EXAMPLE_BOUND = 2**64 - 1


def to_wad(value: float) -> int:
    """Real number to 18-decimal fixed point; ``inf`` saturates to ``UINT128_MAX``.

    The float's exact binary value times 10**18, rounded to the nearest integer (ties to
    even): computing ``value * 1e18`` in floating point first would lose the low digits
    (σ = 1.38916015625 would become 1389160156249999872).
    """
    if math.isinf(value) and value > 0:
        return UINT128_MAX
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"cannot encode {value!r} as unsigned fixed point")
    wad = round(Fraction(value) * WAD)
    return min(wad, UINT128_MAX)


def from_wad(wad: int) -> float:
    """Inverse of :func:`to_wad` (``UINT128_MAX`` back to ``inf``)."""
    return math.inf if wad >= UINT128_MAX else wad / WAD


@dataclass(frozen=True)
class DpParams:
    """One round of local DP-SGD training as recorded in a reveal (all fixed point)."""

    noise_multiplier_wad: int
    sample_rate_wad: int
    steps: int
    delta_wad: int
    epsilon_wad: int  # cumulative epsilon after this round
    accountant: int  # ACCOUNTANT_IDS

    @classmethod
    def from_floats(
        cls,
        *,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        delta: float,
        epsilon: float,
        accountant: str,
    ) -> DpParams:
        """Build the on-chain record from the trainer's real-valued report."""
        if accountant not in ACCOUNTANT_IDS:
            raise ConfigError(f"unknown accountant {accountant!r}; choose one of {sorted(ACCOUNTANT_IDS)}")
        return cls(
            noise_multiplier_wad=to_wad(noise_multiplier),
            sample_rate_wad=to_wad(sample_rate),
            steps=int(steps),
            delta_wad=to_wad(delta),
            epsilon_wad=to_wad(epsilon),
            accountant=ACCOUNTANT_IDS[accountant],
        )

    def as_tuple(self) -> tuple[int, int, int, int, int, int]:
        """The fields in reveal-record order (see :func:`reveal_record`)."""
        return (
            self.noise_multiplier_wad,
            self.sample_rate_wad,
            self.steps,
            self.delta_wad,
            self.epsilon_wad,
            self.accountant,
        )

    @property
    def epsilon(self) -> float:
        """Cumulative epsilon as a real number."""
        return from_wad(self.epsilon_wad)


#: Byte length of a reveal record (the contract's ``_RECORD_BYTES``).
REVEAL_RECORD_BYTES = 145
_CID_BYTES = 36
#: Big-endian byte widths of the integers between the CID and the salt, in record order:
#: numExamples, then the DpParams fields.
_RECORD_INT_BYTES = (8, 16, 16, 4, 16, 16, 1)


def reveal_record(*, cid: bytes, num_examples: int, dp: DpParams, salt: bytes) -> bytes:
    """The 145-byte reveal record a participant commits to, reveals and the chain logs.

    ``abi.encodePacked(cid, uint64 numExamples, uint128 noiseMultiplierWad, uint128
    sampleRateWad, uint32 steps, uint128 deltaWad, uint128 epsilonWad, uint8 accountant,
    bytes32 salt)``: big-endian fields back to back (protocol §2.3).
    """
    if len(cid) != _CID_BYTES:
        raise ValueError(f"cid must be a {_CID_BYTES}-byte binary CIDv1")
    if len(salt) != 32:
        raise ValueError("salt must be 32 bytes")
    values = (num_examples, *dp.as_tuple())
    return cid + b"".join(int(v).to_bytes(size, "big") for v, size in zip(values, _RECORD_INT_BYTES, strict=True)) + salt


@dataclass(frozen=True)
class RevealRecord:
    """A decoded reveal record."""

    cid: bytes
    num_examples: int
    dp: DpParams
    salt: bytes


def parse_reveal_record(record: bytes) -> RevealRecord:
    """Inverse of :func:`reveal_record`; refuses any other length."""
    if len(record) != REVEAL_RECORD_BYTES:
        raise ValueError(f"a reveal record is {REVEAL_RECORD_BYTES} bytes, got {len(record)}")
    offset = _CID_BYTES
    values = []
    for size in _RECORD_INT_BYTES:
        values.append(int.from_bytes(record[offset : offset + size], "big"))
        offset += size
    num_examples, *dp = values
    return RevealRecord(cid=record[:_CID_BYTES], num_examples=num_examples, dp=DpParams(*dp), salt=record[offset:])


def commitment_of(
    *,
    chain_id: int,
    contract: str,
    run_id: int,
    round_id: int,
    participant: str,
    cid: bytes,
    num_examples: int,
    dp: DpParams,
    salt: bytes,
) -> bytes:
    """The commitment a participant sends before revealing (``commitmentOf`` on chain).

    ``keccak256(abi.encode(chainId, contract, runId, round, participant, record))`` with
    ``record`` the :func:`reveal_record` of the other arguments.
    """
    preimage = encode(
        ["uint256", "address", "uint256", "uint32", "address", "bytes"],
        [
            chain_id,
            to_canonical_address(contract),
            run_id,
            round_id,
            to_canonical_address(participant),
            reveal_record(cid=cid, num_examples=num_examples, dp=dp, salt=salt),
        ],
    )
    return keccak(preimage)


#: Domain tag of a signed vote (``keccak256("deai-flower vote")``, protocol §2.5).
VOTE_TAG = keccak(b"deai-flower vote")


def vote_key(result_cid: bytes, outcome: bytes) -> bytes:
    """The pair an attestation votes for: ``keccak256(resultCid ‖ outcome)`` (protocol §2.5)."""
    return keccak(bytes(result_cid) + bytes(outcome))


COMMIT_TAG = keccak(b"deai-flower commit")


def vote_message(*, chain_id: int, contract: str, run_id: int, round_id: int, key: bytes,
                 tag: bytes = VOTE_TAG) -> bytes:  # fmt: skip
    """The 32 bytes an attester signs as an EIP-191 message (``personal_sign``) so that a
    relayer may cast its vote: ``keccak256(abi.encode(VOTE_TAG, chainId, contract, runId,
    round, voteKey))``. The chain's ``voteDigest`` is their signed-message hash. With
    ``tag=COMMIT_TAG`` and the commitment as ``key`` (zero: a decline), what a participant
    signs so that a relayer may record its commitment (``commitDigest``, protocol §2.3)."""
    return keccak(encode(["bytes32", "uint256", "address", "uint256", "uint32", "bytes32"],
                         [tag, chain_id, to_canonical_address(contract), run_id, round_id, key]))  # fmt: skip


def sampled_count(*, registry_size: int, sample_bps: int) -> int:
    """k, the participants a round samples: ``ceil(registry_size * sample_bps / 10000)``, at
    most :data:`MAX_SAMPLED` (the ``sampledCount`` the contract fixes when a round opens)."""
    return min(-(-registry_size * sample_bps // BPS), MAX_SAMPLED)


def committee_size_of(*, sampled: int, committee_size: int) -> int:
    """Sampled positions whose revealers may attest: ``committee_size`` if it is set and below
    ``sampled`` (the round's k), else all of them (``getRound().committeeSize``)."""
    return committee_size if 0 < committee_size < sampled else sampled


def votes_needed(*, eligible: int, quorum: int) -> int:
    """Matching attestations that finalize a round: a strict majority of the ``eligible``
    attesters (committee members that committed, protocol 0.6), and at least ``quorum``."""
    return max(quorum, eligible // 2 + 1)


class _Shuffle:
    """The swap-or-not permutation of ``range(size)`` keyed by a beacon (``permutedPosition``).

    Round r: ``pivot = keccak256(abi.encode(beacon, r)) % size``, ``flip = (pivot + size -
    x) % size``; ``x`` becomes ``flip`` iff ``keccak256(abi.encode(beacon, r, max(x, flip)))``
    is odd. Each round is an involution, so running the rounds backwards inverts it.
    """

    def __init__(self, beacon: bytes, size: int) -> None:
        if len(beacon) != 32:
            raise ValueError("beacon must be 32 bytes")
        self.beacon, self.size = bytes(beacon), size
        self.pivots = [int.from_bytes(keccak(self.beacon + r.to_bytes(32, "big")), "big") % size
                       for r in range(SHUFFLE_ROUNDS)] if size >= 2 else []  # fmt: skip

    def _round(self, r: int, x: int) -> int:
        flip = (self.pivots[r] + self.size - x) % self.size
        high = max(x, flip)
        bit = keccak(self.beacon + r.to_bytes(32, "big") + high.to_bytes(32, "big"))[-1] & 1
        return flip if bit else x

    def position(self, index: int) -> int:
        for r in range(len(self.pivots)):
            index = self._round(r, index)
        return index

    def index(self, position: int) -> int:
        for r in reversed(range(len(self.pivots))):
            position = self._round(r, position)
        return position


def _check_index(index: int, registry_size: int) -> None:
    if not 0 <= index < registry_size:
        raise ValueError(f"registry index {index} is outside a registry of {registry_size}")


def permuted_position(*, beacon: bytes, index: int, registry_size: int) -> int:
    """The position of registry index ``index`` in the round's permutation (``permutedPosition``)."""
    _check_index(index, registry_size)
    return _Shuffle(beacon, registry_size).position(index)


def index_at_position(*, beacon: bytes, position: int, registry_size: int) -> int:
    """The registry index at ``position`` of the round's permutation (its inverse)."""
    _check_index(position, registry_size)
    return _Shuffle(beacon, registry_size).index(position)


def sampled_indices(*, beacon: bytes, registry_size: int, sample_bps: int) -> list[int]:
    """The registry indices a round samples, in position order: the first
    :func:`committee_size_of` of them form the committee. k inverse evaluations, not a walk
    of the registry. Indices whose holder was (re)assigned after the round opened (registry
    epoch above the round's) sit the round out: see :func:`is_sampled`."""
    shuffle = _Shuffle(beacon, registry_size)
    return [shuffle.index(p) for p in range(sampled_count(registry_size=registry_size, sample_bps=sample_bps))]


def is_sampled(
    *,
    beacon: bytes,
    sample_bps: int,
    index: int | None = None,
    registry_size: int | None = None,
    participant: str | None = None,
) -> bool:
    """The contract's sampling rule: the participant at registry ``index`` of a registry of
    ``registry_size`` (both as when the round opened: ``RoundOpened.registrySize``, and an
    index assigned in an epoch up to ``RoundOpened.registryEpoch``) is sampled iff its
    :func:`permuted_position` is below :func:`sampled_count`.

    ``participant`` (the rule before protocol 0.3) is accepted only where the answer does
    not depend on the index: with full sampling everyone registered is sampled (up to
    :data:`MAX_SAMPLED`); otherwise the index and size are required.
    """
    if index is None or registry_size is None:
        if sample_bps >= BPS and (registry_size is None or registry_size <= MAX_SAMPLED):
            return True
        raise ValueError(f"sampling at {sample_bps} bps needs the participant's registry index and the "
                         f"registry size when the round opened (protocol §2.2)")  # fmt: skip
    _check_index(index, registry_size)
    k = sampled_count(registry_size=registry_size, sample_bps=sample_bps)
    if k >= registry_size:
        return True
    return permuted_position(beacon=beacon, index=index, registry_size=registry_size) < k


def in_committee(*, beacon: bytes, sample_bps: int, committee_size: int, index: int, registry_size: int) -> bool:
    """Whether the participant at ``index`` is sampled and in the round's committee (its
    reveal makes it an eligible attester: the contract's ``inCommittee``)."""
    _check_index(index, registry_size)
    k = sampled_count(registry_size=registry_size, sample_bps=sample_bps)
    c = committee_size_of(sampled=k, committee_size=committee_size)
    if c >= registry_size:
        return True
    return permuted_position(beacon=beacon, index=index, registry_size=registry_size) < c


def beacon_of(*, chain_id: int, contract: str, run_id: int, round_id: int, model_cid: bytes) -> bytes:
    """Sampling seed of round ``round_id`` played on the global model ``model_cid`` (``beaconOf``).

    ``keccak256(abi.encode(chainId, contract, runId, round, modelDigest))`` with
    ``modelDigest`` the sha2-256 digest inside the binary CIDv1 (its bytes 4..36).
    """
    if len(model_cid) != 36:
        raise ValueError("model_cid must be a 36-byte binary CIDv1 with a sha2-256 multihash")
    return keccak(
        encode(
            ["uint256", "address", "uint256", "uint32", "bytes32"],
            [chain_id, to_canonical_address(contract), run_id, round_id, model_cid[4:36]],
        )
    )

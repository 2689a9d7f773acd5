"""Pure encodings shared by the contract and every participant (no I/O).

Fixed-point conversions, the DP parameter record, the reveal commitment and the
participant sampling rule. The contract is the authority; these functions reproduce its
arithmetic byte for byte so that clients can build commitments offline and verifiers
can replay a run (tests check both sides agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
STAGES = ("none", "committed", "revealed", "attested")
#: Contract ``PenaltyReason`` enum, in order.
PENALTY_REASONS = ("missing-reveal", "minority-attestation")

DP_PARAMS_ABI = "(uint128,uint128,uint32,uint128,uint128,uint8)"

#: Bytes of each salt the contract folds into the next beacon.
SALT_XOR_BYTES = 24
#: Bytes of a commitment the contract stores (the event carries all 32).
STORED_COMMITMENT_BYTES = 27


def to_wad(value: float) -> int:
    """Real number to 18-decimal fixed point; ``inf`` saturates to ``UINT128_MAX``."""
    if math.isinf(value) and value > 0:
        return UINT128_MAX
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"cannot encode {value!r} as unsigned fixed point")
    wad = round(value * WAD)
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
        """The ABI tuple, in the contract's field order."""
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

    ``keccak256(abi.encode(chainId, contract, runId, round, participant, cid,
    numExamples, dp, salt))``.
    """
    if len(salt) != 32:
        raise ValueError("salt must be 32 bytes")
    preimage = encode(
        ["uint256", "address", "uint256", "uint32", "address", "bytes", "uint64", DP_PARAMS_ABI, "bytes32"],
        [
            chain_id,
            to_canonical_address(contract),
            run_id,
            round_id,
            to_canonical_address(participant),
            cid,
            num_examples,
            dp.as_tuple(),
            salt,
        ],
    )
    return keccak(preimage)


def is_sampled(*, beacon: bytes, sample_bps: int, participant: str) -> bool:
    """The contract's Bernoulli sampling rule, for verifiers."""
    if sample_bps >= BPS:
        return True
    digest = keccak(encode(["bytes32", "address"], [beacon, to_canonical_address(participant)]))
    return int.from_bytes(digest, "big") % BPS < sample_bps


def next_beacon(*, beacon: bytes, salt_xor: bytes) -> bytes:
    """Sampling seed of the round after one with ``beacon`` and revealed ``salt_xor``.

    ``keccak256(abi.encode(bytes32 beacon, bytes24 saltXor))``; ``salt_xor`` is the
    24-byte value :func:`xor_salts` returns (all zero when nobody revealed).
    """
    if len(salt_xor) != SALT_XOR_BYTES:
        raise ValueError(f"salt_xor must be {SALT_XOR_BYTES} bytes (see xor_salts)")
    return keccak(encode(["bytes32", "bytes24"], [beacon, salt_xor]))


def xor_salts(salts: list[bytes]) -> bytes:
    """The round's ``saltXor``: XOR of the first 24 bytes of each revealed 32-byte salt.

    The contract keeps 24 bytes so that the XOR shares one storage word with the round's
    reveal count; 192 bits of the salts still feed every beacon.
    """
    acc = 0
    for salt in salts:
        if len(salt) != 32:
            raise ValueError("salts are 32 bytes")
        acc ^= int.from_bytes(salt[:SALT_XOR_BYTES], "big")
    return acc.to_bytes(SALT_XOR_BYTES, "big")

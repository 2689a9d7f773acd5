// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title Sampling
/// @notice Who takes part in a round and how many votes decide it (docs/protocol.md §2.2,
/// §2.5): pure rules, inlined into the rounds contract.
library Sampling {
    /// @dev Basis points of a whole: `sampleBps` is at most this.
    uint16 internal constant BPS = 10_000;
    /// @dev The most participants sampled in one round (the round's counts are 16-bit).
    uint256 internal constant MAX_SAMPLED = type(uint16).max;
    /// @dev Rounds of the swap-or-not permutation (as Ethereum's committee shuffle).
    uint256 private constant _SHUFFLE_ROUNDS = 90;

    /// @dev The position of registry index `index` in the permutation of `size` indices
    /// keyed by `beacon`: swap-or-not with 90 rounds (Ethereum's committee shuffle, with
    /// keccak256). Round r: pivot = keccak256(abi.encode(beacon, r)) mod size, flip =
    /// (pivot + size - index) mod size, and index becomes flip iff the lowest bit of
    /// keccak256(abi.encode(beacon, r, max(index, flip))) is 1. Each round is an involution,
    /// so the rounds in reverse order give the inverse (which index holds a position).
    function permutedPosition(bytes32 beacon, uint256 index, uint256 size) internal pure returns (uint256 position) {
        position = index;
        if (size < 2) return position;
        assembly ("memory-safe") {
            // scratch space past the free memory pointer: (beacon, r, max(index, flip))
            let buffer := mload(0x40)
            mstore(buffer, beacon)
            let roundWord := add(buffer, 0x20)
            let positionWord := add(buffer, 0x40)
            for { let r := 0 } lt(r, _SHUFFLE_ROUNDS) { r := add(r, 1) } {
                mstore(roundWord, r)
                let pivot := mod(keccak256(buffer, 0x40), size)
                let flip := mod(sub(add(pivot, size), position), size)
                let high := position
                if gt(flip, high) { high := flip }
                mstore(positionWord, high)
                if and(keccak256(buffer, 0x60), 1) { position := flip }
            }
        }
    }

    /// @dev k = ceil(size * sampleBps / 10000), at most `MAX_SAMPLED`.
    function sampledCount(uint256 size, uint16 sampleBps) internal pure returns (uint256 k) {
        k = (size * sampleBps + (BPS - 1)) / BPS;
        if (k > MAX_SAMPLED) k = MAX_SAMPLED;
    }

    /// @dev Votes one (result CID, outcome) pair needs: a strict majority of the committee
    /// members that committed, and `quorum`.
    function votesNeeded(uint16 quorum, uint16 committeeCommits) internal pure returns (uint16) {
        uint16 majority = committeeCommits / 2 + 1;
        return majority > quorum ? majority : quorum;
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ICommitRevealRounds} from "../ICommitRevealRounds.sol";

/// @title Cid
/// @notice Binary CIDv1 with a sha2-256 multihash (docs/protocol.md §5): 36 bytes,
/// `0x01 codec 0x12 0x20 digest`, codec raw (0x55) or dag-pb (0x70).
library Cid {
    uint256 internal constant BYTES = 36;

    /// @dev The CID of the sha2-256 digest `sha256Digest` with multicodec `multicodec`.
    function encode(uint8 multicodec, bytes32 sha256Digest) internal pure returns (bytes memory) {
        return abi.encodePacked(uint8(0x01), multicodec, uint16(0x1220), sha256Digest);
    }

    /// @dev Reverts `InvalidCid` unless `cid` is a CIDv1, sha2-256, raw or dag-pb.
    function check(bytes calldata cid) internal pure {
        bytes4 prefix = cid.length >= 4 ? bytes4(cid[:4]) : bytes4(0);
        if (cid.length != BYTES || (prefix != 0x01551220 && prefix != 0x01701220)) {
            revert ICommitRevealRounds.InvalidCid(prefix, cid.length);
        }
    }

    /// @dev The multicodec of a checked CID.
    function codec(bytes calldata cid) internal pure returns (uint8) {
        return uint8(cid[1]);
    }

    /// @dev The sha2-256 digest of a checked CID.
    function digest(bytes calldata cid) internal pure returns (bytes32) {
        return bytes32(cid[4:36]);
    }
}

/// @title RevealRecord
/// @notice What a participant commits to and reveals, 145 bytes, big-endian, fields back
/// to back (abi.encodePacked of):
///   [0:36)    bytes   cid                 binary CIDv1 of the update blob
///   [36:44)   uint64  numExamples         training examples behind it (aggregation weight)
///   [44:60)   uint128 noiseMultiplierWad  DP-SGD parameters of the round's local
///   [60:76)   uint128 sampleRateWad         training, fixed point with 18 decimals
///   [76:80)   uint32  steps
///   [80:96)   uint128 deltaWad
///   [96:112)  uint128 epsilonWad          cumulative epsilon after this round
///   [112:113) uint8   accountant          0 none (non-private), 1 RDP, 2 PRV
///   [113:145) bytes32 salt                the secret that hides the rest until revealed
/// `type(uint128).max` encodes an infinite epsilon (non-private training). The record is
/// emitted verbatim in `Revealed`: packed, it costs a third less log data than the
/// ABI-encoded fields.
library RevealRecord {
    uint256 internal constant BYTES = 145;

    function cid(bytes calldata record) internal pure returns (bytes calldata) {
        return record[0:36];
    }

    function numExamples(bytes calldata record) internal pure returns (uint64) {
        return uint64(bytes8(record[36:44]));
    }

    function deltaWad(bytes calldata record) internal pure returns (uint128) {
        return uint128(bytes16(record[80:96]));
    }

    function epsilonWad(bytes calldata record) internal pure returns (uint128) {
        return uint128(bytes16(record[96:112]));
    }
}

/// @title RoundOutcome
/// @notice A round's outcome: one 25-byte entry per revealer of the round, in ascending
/// address order, each (abi.encodePacked of):
///   [0:20)   address participant  a revealer of the round
///   [20:24)  uint32  score        its contribution score (docs/protocol.md); 0 if refused
///   [24:25)  uint8   verdict      0 aggregated; 1 blob unavailable; 2 blob invalid
///                                 (tampered, malformed or not the spec's layout);
///                                 3 DP claims contradict the spec or its history
/// Attesters vote for (result CID, outcome) together: the pair with a majority finalizes.
library RoundOutcome {
    uint256 internal constant ENTRY_BYTES = 25;

    /// @dev Entry `i` of `outcome`: its participant, score and verdict.
    function entry(bytes calldata outcome, uint256 i)
        internal
        pure
        returns (address participant, uint32 score, uint8 verdict)
    {
        bytes calldata e = outcome[i * ENTRY_BYTES:(i + 1) * ENTRY_BYTES];
        return (address(bytes20(e[0:20])), uint32(bytes4(e[20:24])), uint8(e[24]));
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title IParticipantRegistry
/// @notice The errors and the events (a verifier replays them, docs/protocol.md §2.2, §2.8)
/// of the consortium's participant registry and of its admin role, which
/// `CommitRevealRounds` keeps (`RegistryModule`).
interface IParticipantRegistry {
    // ------------------------------------------------------------------ errors

    error NotAdmin(address caller);
    error NotPendingAdmin(address caller);
    error RegistryFull(uint256 size);
    error RegistryEpochsExhausted(uint256 epoch);
    error BatchLengthMismatch(uint256 participants, uint256 identities, uint256 maxExamples);
    error ZeroExampleBound(address participant);
    error AlreadyRegistered(address participant);
    error NotRegistered(address participant);

    // ------------------------------------------------------------------ events

    /// @dev `index` and `epoch`: the registry index assigned and the registry epoch it was
    /// assigned in (what sampling reads, see `permutedPosition`).
    event ParticipantRegistered(
        address indexed participant, bytes32 identity, uint64 maxExamples, uint32 index, uint32 epoch
    );
    /// @dev The last member `moved` (zero if the revoked one was last) now holds the revoked
    /// one's index, assigned in `epoch`.
    event ParticipantRevoked(address indexed participant, uint32 epoch, address moved);
    /// @dev Two steps (as OpenZeppelin's Ownable2Step): a typo in the new address cannot
    /// lose the role; there is no renouncing it (a consortium without an admin could never
    /// register a silo or create a run again).
    event AdminTransferStarted(address indexed admin, address indexed pendingAdmin);
    event AdminTransferred(address indexed previousAdmin, address indexed admin);
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {RoundsStorage} from "../RoundsStorage.sol";

/// @title RegistryModule
/// @notice The consortium's participants and its admin role (docs/protocol.md §2, §2.2):
/// each registered address is bound to an off-chain identity and a bound on the examples
/// its reveals may claim, and holds an index that sampling permutes. The admin (the
/// deployer, then whoever accepted a transfer) registers and revokes participants and
/// creates runs.
/// @dev Part of `RoundsExtension`: its storage is `CommitRevealRounds`'s, so the registry
/// words that commits, reveals and round openings read cost no call to another contract.
abstract contract RegistryModule is RoundsStorage {
    /// @dev The most participants and registry epochs (indices and epochs are 24-bit).
    uint24 private constant _MAX_COUNT = type(uint24).max;

    // ------------------------------------------------------------------ admin

    /// @notice Starts handing the admin role to `newAdmin`, who must accept it; a later
    /// call replaces the pending address (zero cancels).
    /// @param newAdmin the next admin
    function transferAdmin(address newAdmin) external onlyAdmin {
        pendingAdmin = newAdmin;
        emit AdminTransferStarted(msg.sender, newAdmin);
    }

    /// @notice Takes the admin role offered to the sender by `transferAdmin`.
    function acceptAdmin() external {
        if (msg.sender != pendingAdmin) revert NotPendingAdmin(msg.sender);
        emit AdminTransferred(admin, msg.sender);
        admin = msg.sender;
        pendingAdmin = address(0);
    }

    // ------------------------------------------------------------------ registry

    /// @notice Adds `participant` to the consortium, bound to an off-chain identity. Its
    /// reveals may claim at most `maxExamples` training examples (its aggregation weight).
    /// @dev Registry changes take effect for sampling in rounds opened after them (§2.2).
    /// @param participant the participant's signing address
    /// @param identity hash binding the address to its node (e.g. SuperNode public key)
    /// @param maxExamples the largest `numExamples` its reveals may claim (at least 1)
    function register(address participant, bytes32 identity, uint64 maxExamples) external onlyAdmin {
        _register(participant, identity, maxExamples);
    }

    /// @notice Registers many participants in one transaction (same rules as `register`).
    /// @param participants the addresses
    /// @param identities their identity hashes, in the same order
    /// @param maxExamples their example-count bounds, in the same order
    function registerMany(
        address[] calldata participants,
        bytes32[] calldata identities,
        uint64[] calldata maxExamples
    ) external onlyAdmin {
        uint256 n = participants.length;
        if (identities.length != n || maxExamples.length != n) {
            revert BatchLengthMismatch(n, identities.length, maxExamples.length);
        }
        for (uint256 i = 0; i < n; ++i) {
            _register(participants[i], identities[i], maxExamples[i]);
        }
    }

    function _register(address participant, bytes32 identity, uint64 maxExamples) private {
        if (_participants[participant].active) revert AlreadyRegistered(participant);
        if (maxExamples == 0) revert ZeroExampleBound(participant);
        Registry memory r = _registry;
        if (r.size >= _MAX_COUNT) revert RegistryFull(r.size);
        if (r.epoch >= _MAX_COUNT) revert RegistryEpochsExhausted(r.epoch);
        uint24 epoch = r.epoch + 1;
        _participants[participant] = Participant(true, r.size, epoch, maxExamples, identity);
        _memberAt[r.size] = participant;
        _registry = Registry(r.size + 1, epoch);
        emit ParticipantRegistered(participant, identity, maxExamples, r.size, epoch);
    }

    /// @notice Removes `participant`; it can no longer be sampled or commit. A reveal or an
    /// attestation for a commitment made before the revocation is still accepted (within
    /// the example bound it was registered with). The last member takes its index.
    /// @param participant the address to revoke
    function revoke(address participant) external onlyAdmin {
        Participant storage p = _participants[participant];
        if (!p.active) revert NotRegistered(participant);
        Registry memory r = _registry;
        if (r.epoch >= _MAX_COUNT) revert RegistryEpochsExhausted(r.epoch);
        uint24 epoch = r.epoch + 1;
        uint24 index = p.index;
        uint24 lastIndex = r.size - 1;
        address moved;
        if (index != lastIndex) {
            moved = _memberAt[lastIndex];
            _memberAt[index] = moved;
            Participant storage m = _participants[moved];
            (m.index, m.epoch) = (index, epoch);
        }
        delete _memberAt[lastIndex];
        _participants[participant] = Participant(false, 0, 0, p.maxExamples, bytes32(0));
        _registry = Registry(lastIndex, epoch);
        emit ParticipantRevoked(participant, epoch, moved);
    }

    // ------------------------------------------------------------------ views

    /// @notice Whether `participant` is registered, and its identity hash.
    /// @param participant the address to look up
    /// @return active whether it is registered
    /// @return identity its identity hash
    function participantInfo(address participant) external view returns (bool active, bytes32 identity) {
        Participant storage p = _participants[participant];
        return (p.active, p.identity);
    }

    /// @notice A participant's registry entry (what sampling and reveals read).
    /// @param participant the address to look up
    /// @return active whether it is registered
    /// @return index its registry index
    /// @return epoch the registry epoch in which `index` was assigned
    /// @return maxExamples the bound on its reveals' example counts (kept after revocation)
    function registryEntry(address participant)
        external
        view
        returns (bool active, uint32 index, uint32 epoch, uint64 maxExamples)
    {
        Participant storage p = _participants[participant];
        return (p.active, p.index, p.epoch, p.maxExamples);
    }

    /// @notice The registry's size and epoch (the count of registrations and revocations).
    /// @return size registered participants
    /// @return epoch the current registry epoch
    function registry() external view returns (uint32 size, uint32 epoch) {
        Registry memory r = _registry;
        return (r.size, r.epoch);
    }

    /// @notice The registered participants, in registry order (index 0 first).
    /// @return list the addresses
    function members() external view returns (address[] memory list) {
        uint256 n = _registry.size;
        list = new address[](n);
        for (uint256 i = 0; i < n; ++i) {
            list[i] = _memberAt[i];
        }
    }
}

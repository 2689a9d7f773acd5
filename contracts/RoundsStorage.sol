// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";
import {ICommitRevealRounds} from "./ICommitRevealRounds.sol";

/// @title RoundsStorage
/// @notice The state of `CommitRevealRounds` and the rules that both of its code parts
/// apply: `CommitRevealRounds` itself (the calls of every round) and `RoundsExtension`
/// (the registry, creating, settling and cancelling runs, stakes and rewards, the views),
/// which runs on the same storage through the rounds contract's fallback. Both inherit
/// this contract and nothing else with storage, so their storage layouts are one.
abstract contract RoundsStorage is ICommitRevealRounds {
    // ------------------------------------------------------------------ types
    // (the public ones, the errors and the events are in ICommitRevealRounds)

    // The reveal record's and the round outcome's byte layouts are in lib/Codecs.sol
    // (`RevealRecord`, `RoundOutcome`).

    /// @dev Run slot 0: fixed parameters, counters, the model CID's codec and what the
    /// permutation of the current round needs besides the clock.
    struct RunConfig {
        uint32 numRounds;
        uint32 finalizedRounds;
        uint24 commitDuration;
        uint16 sampleBps;
        uint16 quorum;
        uint16 minReveals;
        uint16 committeeSize;
        uint8 modelCodec; // multicodec of the model CID: 0x55 raw or 0x70 dag-pb
        uint40 openedBlock; // block in which the current round was opened
        uint24 registrySize; // registry size when the current round opened
        bool cancelled; // `cancelRun`: no round opens again, the pool goes back to the creator
        uint16 attesterShareBps; // the budget's share paid to the finalized pair's voters
    }

    /// @dev Run slot 1: the current round's clock and counts, all that `phase` reads and
    /// all that a commit needs to know whether it must evaluate the permutation. Durations
    /// are 24-bit (194 days), counts 16-bit (at most `Sampling.MAX_SAMPLED` sampled per round).
    /// The sampled count k itself follows from the run's configuration (`registrySize`,
    /// `sampleBps`); the clock keeps what the commit phase still awaits.
    struct RoundClock {
        uint32 round; // current round id, 0 before the first
        uint40 commitDeadline;
        uint24 revealDuration; // revealDeadline = commitDeadline + revealDuration
        uint24 attestDuration; // attestDeadline = revealDeadline + attestDuration
        uint16 expectedCommits; // k less the declines: the commit phase ends when commitCount reaches it
        uint16 commitCount;
        uint16 revealCount;
        uint16 committeeCommits; // committee members that committed: the base of the majority
        uint16 minReveals;
        uint24 registryEpoch; // registry epoch at opening: later (re)assigned indices sit out
        bool finalized; // a finalized round stays current only if it did not open the next
        bool previousRecorded; // the previous round wrote its `RoundResult` (disputed, or attesters owed pay)
        bool partialSample; // k < registry size: a commit checks the sender's position
        bool committee; // committee smaller than the sample: a commit records membership
    }

    /// @dev Run slot 2: the first CID attested in round `round`, its votes and the votes
    /// any CID needs (fixed by the first attestation: the commit phase is over then).
    struct VoteTally {
        uint32 round;
        uint16 votes;
        uint16 needed;
        bool disputed;
        bytes23 cidHash; // first 23 bytes of keccak256(cid)
    }

    /// @dev A run's reward pool and required stake (one slot, read by every commit).
    struct Funds {
        uint128 pool;
        uint128 stake;
    }

    /// @dev What a run slashes, and in which token it pays.
    struct Terms {
        uint128 slashMissingReveal;
        uint128 slashRefused;
        address token; // zero: native currency
        uint96 slashMinority;
    }

    struct Run {
        RunConfig config;
        RoundClock clock;
        VoteTally votes;
        bytes32 modelDigest; // sha2-256 digest of the model CID
        uint128 epsilonBudgetWad;
        uint128 deltaWad;
        address creator;
        Funds funds;
        Terms terms;
    }

    /// @dev A participant's funds in a run.
    struct Account {
        uint128 stake;
        uint128 rewards;
    }

    /// @dev A participant's round record: while committed, the commitment's first 26
    /// bytes; once attested, the attested CID hash's first 26 bytes. The stored stage is
    /// never `Revealed`: a reveal is recorded in the ledger (`revealedRound`), which a
    /// reveal writes anyway, so a reveal rewrites one member slot instead of two.
    /// `committee`: its sampled position is in the round's committee (decided at commit).
    struct MemberRound {
        uint32 round;
        Stage stage;
        bool committee;
        bytes26 hash;
    }

    struct MemberLedger {
        uint32 revealedRound; // the last round this participant revealed in
        uint64 rewardPoints;
        uint32 penalties;
        uint112 epsilonWad;
    }

    struct Member {
        MemberRound current;
        MemberLedger ledger;
    }

    /// @dev What settling a vote in a finalized round needs, written only when it matters:
    /// the round finalized while another pair had votes, or its attesters were not all paid
    /// at finalization. `voteKey`: the finalized pair's key, first 16 bytes; `attesterPay`:
    /// what each vote for it is owed (zero once paid at finalization).
    struct RoundResult {
        bytes16 voteKey;
        uint128 attesterPay;
    }

    /// @dev A registered participant: one slot read by commit and reveal, then the identity
    /// (read by views only).
    struct Participant {
        bool active;
        uint24 index; // registry index (position in `_memberAt`)
        uint24 epoch; // registry epoch in which `index` was assigned (registration or move)
        uint64 maxExamples; // bound on a reveal's numExamples; kept after revocation
        bytes32 identity; // e.g. hash of the silo's Flower SuperNode public key
    }

    /// @dev The registry's size and epoch (one slot, read when a round opens).
    struct Registry {
        uint24 size;
        uint24 epoch; // counts registrations and revocations
    }

    // ------------------------------------------------------------------ storage

    /// @dev Attempts failed in a row, the current one included, after which anyone may
    /// cancel the run (`cancelRun`).
    uint32 internal constant _CANCEL_AFTER_FAILED_ATTEMPTS = 3;
    /// @dev Domain tags of a signed vote (`voteDigest`) and a signed commitment
    /// (`commitDigest`), so no other signed message is one of them.
    bytes32 internal constant _VOTE_TAG = keccak256("deai-flower vote");
    bytes32 internal constant _COMMIT_TAG = keccak256("deai-flower commit");

    /// @notice The consortium admin (the deployer, then whoever accepted a transfer):
    /// registers participants, creates runs.
    address public admin;
    /// @notice The address a transfer of the admin role awaits (zero: none).
    address public pendingAdmin;
    /// @dev Runs created so far; the last run's id (`runCount`).
    uint256 internal _runCount;

    Registry internal _registry;
    mapping(uint256 => address) internal _memberAt;
    mapping(address => Participant) internal _participants;
    mapping(uint256 => Run) internal _runs;
    mapping(uint256 => mapping(address => Member)) internal _memberOf;
    mapping(uint256 => mapping(address => Account)) internal _accounts;
    /// @dev Bit `round % 256` of word `round / 256` is set once round `round` failed.
    mapping(uint256 => mapping(uint256 => uint256)) internal _failedRounds;
    /// @dev The result of a finalized round, where `RoundResult` says one is written.
    mapping(uint256 => mapping(uint32 => RoundResult)) internal _results;
    /// @dev Votes for CIDs other than the first one attested in a round.
    mapping(uint256 => mapping(uint32 => mapping(bytes32 => uint256))) internal _otherVotes;

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        _;
    }

    // ------------------------------------------------------------------ shared rules

    /// @dev `commitmentOf`: keccak256(abi.encode(chainId, contract, runId, round,
    /// participant, record)).
    function _commitmentOf(uint256 runId, uint32 round, address participant, bytes calldata record)
        internal
        view
        returns (bytes32)
    {
        return keccak256(abi.encode(block.chainid, address(this), runId, round, participant, record));
    }

    /// @dev `voteDigest` (tag `_VOTE_TAG`, key the vote key) and `commitDigest` (tag
    /// `_COMMIT_TAG`, key the commitment): the EIP-191 hash of keccak256(abi.encode(tag,
    /// chainId, contract, runId, round, key)).
    function _signedDigest(bytes32 tag, uint256 runId, uint32 round, bytes32 key) internal view returns (bytes32) {
        return MessageHashUtils.toEthSignedMessageHash(
            keccak256(abi.encode(tag, block.chainid, address(this), runId, round, key))
        );
    }

    /// @dev `beaconOf`: keccak256(abi.encode(chainId, contract, runId, round, modelDigest)).
    function _beaconOf(uint256 runId, uint32 round, bytes32 modelDigest) internal view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this), runId, round, modelDigest));
    }

    /// @dev Phase of `round` given the run's clock `c`.
    function _phase(uint256 runId, RoundClock memory c, uint32 round) internal view returns (Phase) {
        if (round == 0 || round > c.round) return Phase.None;
        if (round < c.round) {
            return (_failedRounds[runId][round >> 8] >> (round & 0xff)) & 1 == 1 ? Phase.Failed : Phase.Finalized;
        }
        if (c.finalized) return Phase.Finalized;
        uint256 commitDeadline = c.commitDeadline;
        if (block.timestamp < commitDeadline && c.commitCount < c.expectedCommits) return Phase.Commit;
        uint256 revealDeadline = commitDeadline + c.revealDuration;
        if (block.timestamp < revealDeadline && c.revealCount < c.commitCount) return Phase.Reveal;
        if (block.timestamp < revealDeadline + c.attestDuration && c.revealCount >= c.minReveals) return Phase.Attest;
        return Phase.Failed;
    }

    /// @dev Records the penalty the participant's last round earned, if that round is
    /// closed; returns whether the round is settled.
    function _settle(
        uint256 runId,
        RoundClock memory c,
        address participant,
        Member storage m,
        MemberRound memory last
    ) internal returns (bool) {
        uint32 round = last.round;
        if (last.stage == Stage.Committed) {
            if (round == c.round) {
                Phase p = _phase(runId, c, round);
                if (p == Phase.Commit || p == Phase.Reveal) return false;
            }
            MemberLedger storage ledger = m.ledger;
            if (ledger.revealedRound == round) return false; // revealed, did not attest: nothing owed
            ledger.penalties += 1;
            uint128 slashed = _slash(runId, participant, _runs[runId].terms.slashMissingReveal);
            emit PenaltyRecorded(runId, round, participant, PenaltyReason.MissingReveal, slashed);
            return true;
        }
        if (last.stage == Stage.Attested) {
            if (round == c.round && !c.finalized) {
                // not finalized: still attesting (pending) or failed (no result, no penalty)
                return _phase(runId, c, round) != Phase.Attest;
            }
            // The round is closed: finalized (pay owed for a vote for the finalized pair, a
            // penalty for one against it) or failed (neither). Only a round finalized
            // disputed, or whose voters were not all paid at once, recorded its result, and
            // the clock tells whether the round just before the current one did.
            if (round + 1 == c.round && !c.previousRecorded) return true;
            RoundResult memory result = _results[runId][round];
            if (result.voteKey == 0) return true;
            if (result.voteKey == bytes16(last.hash)) {
                if (result.attesterPay != 0) _payAttester(runId, round, participant, result.attesterPay);
            } else {
                m.ledger.penalties += 1;
                uint128 slashed = _slash(runId, participant, _runs[runId].terms.slashMinority);
                emit PenaltyRecorded(runId, round, participant, PenaltyReason.MinorityAttestation, slashed);
            }
            return true;
        }
        return false;
    }

    /// @dev A participant's stage in round `r.round`: a committed participant whose ledger
    /// records a reveal in that round has revealed.
    function _stageOf(MemberRound memory r, MemberLedger memory l) internal pure returns (Stage) {
        return r.stage == Stage.Committed && l.revealedRound == r.round ? Stage.Revealed : r.stage;
    }

    /// @dev Credits an attester's pay for its vote for round `round`'s finalized pair.
    function _payAttester(uint256 runId, uint32 round, address attester, uint128 amount) internal {
        _accounts[runId][attester].rewards += amount;
        emit AttesterRewardCredited(runId, round, attester, amount);
    }

    /// @dev Moves up to `amount` of `participant`'s stake into the pool; returns what moved.
    function _slash(uint256 runId, address participant, uint128 amount) internal returns (uint128 slashed) {
        if (amount == 0) return 0;
        Account storage account = _accounts[runId][participant];
        uint128 stake = account.stake;
        slashed = amount < stake ? amount : stake;
        if (slashed == 0) return 0;
        account.stake = stake - slashed;
        _runs[runId].funds.pool += slashed;
    }
}

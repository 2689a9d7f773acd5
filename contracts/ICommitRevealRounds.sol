// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IParticipantRegistry} from "./IParticipantRegistry.sol";

/// @title ICommitRevealRounds
/// @notice What `CommitRevealRounds` shows the world besides its functions: the types its
/// views return, its custom errors and the events a verifier replays (docs/protocol.md §2,
/// §2.8). Kept apart so that a client or another contract can use them without the
/// implementation. The registry's errors and events are in `IParticipantRegistry`.
interface ICommitRevealRounds is IParticipantRegistry {
    // ------------------------------------------------------------------ types

    /// @notice A round's phase, derived by `phase`.
    enum Phase {
        None, // not opened
        Commit,
        Reveal,
        Attest,
        Finalized,
        Failed // attest deadline passed without a majority for one CID, or too few reveals
    }

    /// @notice Where a participant stands in the round it last committed to.
    enum Stage {
        None,
        Committed,
        Revealed,
        Attested,
        Declined // sampled, it declined the round (`decline`): not awaited, never slashed for it
    }

    /// @notice Why a penalty was recorded.
    enum PenaltyReason {
        MissingReveal,
        MinorityAttestation,
        RefusedUpdate // the finalized outcome refused the revealed update (verdict != 0)
    }

    /// @notice Parameters fixed when a run is created.
    struct RunParams {
        // sha-256 digest of the run spec's canonical bytes (docs/protocol.md); the spec is
        // stored as one raw IPFS block, so its CIDv1 (raw, sha2-256) follows from this digest
        bytes32 specHash;
        bytes32 codeHash; // keccak256 of the code release
        bytes initialModelCid; // binary CIDv1 of the round-1 global model
        uint128 epsilonBudgetWad; // per-participant budget; uint128 max = no budget
        uint128 deltaWad;
        uint32 numRounds; // finalized rounds after which the run is complete
        uint32 commitDuration; // seconds
        uint32 revealDuration; // seconds
        uint32 attestDuration; // seconds
        uint16 sampleBps; // sampled fraction of the registry, basis points (k = ceil(N * sampleBps / 10000))
        uint16 quorum; // the fewest matching attestations that finalize a round
        uint16 minReveals; // valid reveals needed for a round to be aggregated
        uint16 committeeSize; // sampled positions below it may attest; 0: every revealer may
        address stakeToken; // ERC-20 token of stakes and rewards; zero: the native currency
        uint128 stake; // deposit a participant needs (after slashing) to commit; 0: none
        uint128 rewardPool; // paid by the creator with `createRun`, shared over the rounds
        uint128 slashMissingReveal; // slashed for committing without revealing
        uint128 slashRefused; // slashed for an update the finalized outcome refused
        uint96 slashMinority; // slashed for attesting against the finalized outcome
        // share of each finalized round's budget paid to the attesters that voted for the
        // finalized pair, equally (basis points, at most 10000); the rest is paid by score
        uint16 attesterShareBps;
    }

    /// @notice A run's incentives as `getIncentives` reports them.
    struct IncentivesView {
        address stakeToken;
        uint128 stake;
        uint128 pool; // what the pool holds now: funding + slashed - credited - withdrawn
        uint128 slashMissingReveal;
        uint128 slashRefused;
        uint96 slashMinority;
    }

    /// @notice A participant's funds in a run.
    struct AccountView {
        uint128 stake; // deposited, less slashed and withdrawn
        uint128 rewards; // credited (or owed for a matching vote, credited at settlement), not yet withdrawn
    }

    /// @notice A run as `getRun` reports it.
    struct RunView {
        address creator;
        uint32 numRounds;
        uint32 finalizedRounds;
        uint32 currentRound; // last opened round id (attempts count, failed ones too)
        uint32 commitDuration;
        uint32 revealDuration;
        uint32 attestDuration;
        uint16 sampleBps;
        uint16 quorum;
        uint16 minReveals;
        uint16 committeeSize;
        uint128 epsilonBudgetWad;
        uint128 deltaWad;
        bytes32 beacon; // sampling seed of the current round (of round 1 before it opens)
        bytes modelCid; // current global model
        bool cancelled; // cancelled by `cancelRun`
        uint16 attesterShareBps;
    }

    /// @notice The current round as `getRound` reports it.
    struct RoundView {
        uint32 round;
        bytes32 beacon; // sampling seed of this round (zero once the run's last round is finalized)
        uint64 commitDeadline;
        uint64 revealDeadline;
        uint64 attestDeadline;
        uint32 sampledCount;
        uint32 commitCount;
        uint32 revealCount;
        uint16 leadingVotes; // votes for the first CID attested in this round
        bool disputed; // a different CID was attested too
        bool finalized;
        uint64 openedBlock; // where to start reading the round's events
        uint32 registrySize; // registry size N when the round opened (the permutation's domain)
        uint32 registryEpoch; // registry epoch when the round opened
        uint32 committeeSize; // sampled positions whose revealers may attest (sampledCount: all)
        uint32 committeeCommits; // committee members that committed (only revealers among them may attest)
        uint32 votesNeeded; // max(quorum, committeeCommits / 2 + 1)
        uint32 declineCount; // sampled participants that declined (the commit phase awaits sampledCount - declineCount)
    }

    /// @notice A participant's record in a run as `getMember` reports it.
    struct MemberView {
        uint32 round; // the round `stage` refers to
        Stage stage;
        uint64 rewardPoints; // examples contributed by valid reveals
        uint32 penalties;
        uint112 epsilonWad; // cumulative epsilon revealed so far (saturating)
    }

    // ------------------------------------------------------------------ errors

    error ZeroRounds();
    error InvalidQuorum(uint16 quorum, uint16 minReveals);
    error InvalidCommitteeSize(uint16 committeeSize, uint16 quorum);
    error InvalidSampleRate(uint16 sampleBps);
    error InvalidPhaseDurations(uint32 commitDuration, uint32 revealDuration, uint32 attestDuration);
    error UnknownRun(uint256 runId);
    error RunComplete(uint256 runId, uint32 finalizedRounds);
    error PreviousRoundOpen(uint256 runId, uint32 round, Phase current);
    error RoundNotCurrent(uint256 runId, uint32 round, uint32 currentRound);
    error UnexpectedPhase(uint256 runId, uint32 round, Phase current, Phase expected);
    error NotSampled(uint256 runId, uint32 round, address participant);
    error AlreadyCommitted(uint256 runId, uint32 round, address participant);
    error NotCommitted(uint256 runId, uint32 round, address participant);
    error CommitmentMismatch(uint256 runId, uint32 round, address participant, bytes26 committed, bytes32 revealed);
    error InvalidCid(bytes4 prefix, uint256 length);
    error InvalidRevealRecord(uint256 length);
    error ZeroExamples(uint256 runId, uint32 round, address participant);
    error ExampleCountAboveBound(uint256 runId, uint32 round, address participant, uint64 numExamples, uint64 maxExamples);
    error DeltaMismatch(uint256 runId, uint128 expectedWad, uint128 revealedWad);
    error EpsilonDecreased(uint256 runId, address participant, uint256 previousWad, uint256 revealedWad);
    error PrivacyBudgetExceeded(uint256 runId, address participant, uint256 epsilonWad, uint256 budgetWad);
    error NotEligibleAttester(uint256 runId, uint32 round, address attester, Stage stage);
    error NotInCommittee(uint256 runId, uint32 round, address attester);
    error InvalidSlashAmount(uint128 stake, uint128 slashMissingReveal, uint128 slashRefused, uint96 slashMinority);
    error WrongPayment(uint256 expectedWei, uint256 sentWei);
    error InsufficientStake(uint256 runId, address participant, uint128 stake, uint128 required);
    error StakeLocked(uint256 runId, address participant, uint32 round);
    error NothingToWithdraw(uint256 runId, address account);
    error NotRunCreator(uint256 runId, address caller);
    error RunNotComplete(uint256 runId, uint32 finalizedRounds, uint32 numRounds);
    error RunIsCancelled(uint256 runId);
    error CancelTooEarly(uint256 runId, uint32 round, uint32 failedAttempts, uint32 required);
    error TransferFailed(address to, uint256 amount);
    error InvalidOutcome(uint256 runId, uint32 round, uint256 length, uint32 revealCount);
    error OutcomeNotSorted(uint256 runId, uint32 round, uint256 entry);
    error OutcomeNotRevealer(uint256 runId, uint32 round, address participant);
    error OutcomeRefusedWithScore(uint256 runId, uint32 round, address participant);
    error InvalidSignatures(uint256 length);
    error InvalidAttesterShare(uint16 attesterShareBps);
    error CommitSignerMismatch(uint256 runId, uint32 round, address participant, address signer);
    error NoExtensionCode(address extension);

    // ------------------------------------------------------------------ events

    event RunCreated(uint256 indexed runId, address indexed creator, RunParams params, bytes32 beacon);
    /// @dev The round's model is the last `RoundFinalized.resultCid` (the run's initial
    /// model before any); its reveal and attest deadlines follow from `commitDeadline`
    /// and the run's durations.
    event RoundOpened(
        uint256 indexed runId,
        uint32 indexed round,
        bytes32 beacon,
        uint32 sampledCount,
        uint64 commitDeadline,
        uint32 registrySize,
        uint32 registryEpoch,
        uint32 committeeSize
    );
    event Committed(uint256 indexed runId, uint32 indexed round, address indexed participant, bytes32 commitment);
    /// @dev A sampled participant declined the round: the commit phase no longer awaits it.
    event Declined(uint256 indexed runId, uint32 indexed round, address indexed participant);
    event Revealed(uint256 indexed runId, uint32 indexed round, address indexed participant, bytes record);
    /// @dev A CID's votes are its `Attested` events in the round; it finalizes at
    /// max(quorum, committeeCommits / 2 + 1).
    event Attested(uint256 indexed runId, uint32 indexed round, address indexed attester, bytes resultCid, bytes outcome);
    event RoundFinalized(uint256 indexed runId, uint32 indexed round, bytes resultCid);
    /// @dev `slashed`: what was taken from its stake into the reward pool (at most its stake).
    event PenaltyRecorded(
        uint256 indexed runId, uint32 indexed round, address indexed participant, PenaltyReason reason, uint128 slashed
    );
    /// @dev The finalized round's share of the pool, `budget`, went to its aggregated
    /// revealers by score: `amount = budget * score / totalScore`, rounded down.
    event RewardCredited(
        uint256 indexed runId, uint32 indexed round, address indexed participant, uint32 score, uint128 amount
    );
    /// @dev An attester that voted for the round's finalized pair got `amount`, the round's
    /// attester share over the pair's votes (at finalization, or when its vote is settled).
    event AttesterRewardCredited(uint256 indexed runId, uint32 indexed round, address indexed attester, uint128 amount);
    /// @dev After the round's payouts and slashes; `budget` = pool / rounds left before them;
    /// `paid`: credited by score; `attesterPay` is owed to each of the `attesters` votes for
    /// the finalized pair; `pool` = pool - paid - attesterPay * attesters.
    event RoundSettled(
        uint256 indexed runId,
        uint32 indexed round,
        uint128 budget,
        uint128 paid,
        uint128 attesterPay,
        uint32 attesters,
        uint128 pool
    );
    event StakeDeposited(uint256 indexed runId, address indexed participant, uint128 amount, uint128 stake);
    event StakeWithdrawn(uint256 indexed runId, address indexed participant, uint128 amount);
    event RewardsWithdrawn(uint256 indexed runId, address indexed participant, uint128 amount);
    event PoolWithdrawn(uint256 indexed runId, address indexed creator, uint128 amount);
    /// @dev `round`: the last attempt, failed; `pool`: what the creator may now withdraw.
    event RunCancelled(uint256 indexed runId, uint32 round, uint32 finalizedRounds, uint128 pool);
}

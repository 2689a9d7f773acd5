// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title CommitRevealRounds
/// @notice Trust-free federated-learning rounds: sampled participants commit to a hash of
/// their model update, reveal it (content id, example count, DP-SGD parameters, salt)
/// after the commit phase, and a quorum of revealers attests the aggregate's content id,
/// which becomes the next round's global model. One deployment hosts many runs; the
/// participant registry is shared by them and managed by the consortium admin.
/// @dev Phases are derived from the clock and the counters, never stored twice. Per
/// participant state lives in two storage slots per run that are reused round after
/// round, so steady-state rounds only rewrite warm, non-zero slots. Penalties for
/// missing reveals and minority attestations are settled lazily (on the participant's
/// next commit, or by anyone through `settle`), keeping every call O(1) in the number
/// of participants; only `openRound` walks the registry, to count the sampled set.
contract CommitRevealRounds {
    // ------------------------------------------------------------------ types

    /// @notice A round's phase, derived by `phase`.
    enum Phase {
        None, // not opened
        Commit,
        Reveal,
        Attest,
        Finalized,
        Failed // attest deadline passed without quorum, or too few reveals
    }

    /// @notice Where a participant stands in the round it last committed to.
    enum Stage {
        None,
        Committed,
        Revealed,
        Attested
    }

    /// @notice Why a penalty was recorded.
    enum PenaltyReason {
        MissingReveal,
        MinorityAttestation
    }

    /// @notice DP-SGD parameters of one round of local training. Real numbers are fixed
    /// point with 18 decimals (WAD). `epsilonWad` is the participant's cumulative epsilon
    /// after this round; `type(uint128).max` encodes infinity (non-private training).
    struct DpParams {
        uint128 noiseMultiplierWad;
        uint128 sampleRateWad;
        uint32 steps;
        uint128 deltaWad;
        uint128 epsilonWad;
        uint8 accountant; // 0 none (non-private), 1 RDP, 2 PRV
    }

    /// @notice Parameters fixed when a run is created.
    struct RunParams {
        bytes32 configHash; // keccak256 of the resolved experiment config
        bytes32 codeHash; // keccak256 of the code release
        bytes initialModelCid; // binary CIDv1 of the round-1 global model
        uint128 epsilonBudgetWad; // per-participant budget; uint128 max = no budget
        uint128 deltaWad;
        uint32 numRounds; // finalized rounds after which the run is complete
        uint32 commitDuration; // seconds
        uint32 revealDuration; // seconds
        uint32 attestDuration; // seconds
        uint16 sampleBps; // per-participant sampling probability, basis points
        uint16 quorum; // matching attestations that finalize a round
        uint16 minReveals; // valid reveals needed for a round to be aggregated
    }

    struct Run {
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
        uint128 epsilonBudgetWad;
        uint128 deltaWad;
        bytes32 beacon; // sampling seed of round 1
        bytes modelCid; // current global model
    }

    struct Round {
        bytes32 beacon; // sampling seed of this round
        bytes32 saltXor; // XOR of revealed salts; seeds the next round
        bytes32 finalCidHash; // keccak256 of the finalized aggregate's CID
        uint64 commitDeadline;
        uint64 revealDeadline;
        uint64 attestDeadline;
        uint32 sampledCount;
        uint32 commitCount;
        uint32 revealCount;
        uint32 attestCount;
        bool finalized;
        uint64 openedBlock; // where to start reading the round's events
    }

    /// @dev One slot per (run, participant), rewritten every round.
    struct Member {
        uint32 round; // the round `stage` refers to
        Stage stage;
        uint64 rewardPoints; // examples contributed by valid reveals
        uint32 penalties;
        uint112 epsilonWad; // cumulative epsilon revealed so far (saturating)
    }

    struct Participant {
        bool active;
        uint32 index; // position in `_members`
        bytes32 identity; // e.g. hash of the silo's Flower SuperNode public key
    }

    // ------------------------------------------------------------------ errors

    error NotAdmin(address caller);
    error AlreadyRegistered(address participant);
    error NotRegistered(address participant);
    error ZeroRounds();
    error InvalidQuorum(uint16 quorum, uint16 minReveals);
    error InvalidSampleRate(uint16 sampleBps);
    error InvalidPhaseDurations(uint32 commitDuration, uint32 revealDuration, uint32 attestDuration);
    error UnknownRun(uint256 runId);
    error RunComplete(uint256 runId, uint32 finalizedRounds);
    error PreviousRoundOpen(uint256 runId, uint32 round, Phase current);
    error UnexpectedPhase(uint256 runId, uint32 round, Phase current, Phase expected);
    error NotSampled(uint256 runId, uint32 round, address participant);
    error AlreadyCommitted(uint256 runId, uint32 round, address participant);
    error NotCommitted(uint256 runId, uint32 round, address participant);
    error CommitmentMismatch(uint256 runId, uint32 round, address participant, bytes32 committed, bytes32 revealed);
    error InvalidCid(bytes4 prefix, uint256 length);
    error ZeroExamples(uint256 runId, uint32 round, address participant);
    error DeltaMismatch(uint256 runId, uint128 expectedWad, uint128 revealedWad);
    error EpsilonDecreased(uint256 runId, address participant, uint256 previousWad, uint256 revealedWad);
    error PrivacyBudgetExceeded(uint256 runId, address participant, uint256 epsilonWad, uint256 budgetWad);
    error NotEligibleAttester(uint256 runId, uint32 round, address attester, Stage stage);

    // ------------------------------------------------------------------ events

    event ParticipantRegistered(address indexed participant, bytes32 identity);
    event ParticipantRevoked(address indexed participant);
    event RunCreated(uint256 indexed runId, address indexed creator, RunParams params, bytes32 beacon);
    event RoundOpened(
        uint256 indexed runId,
        uint32 indexed round,
        bytes32 beacon,
        bytes modelCid,
        uint32 sampledCount,
        uint64 commitDeadline,
        uint64 revealDeadline,
        uint64 attestDeadline
    );
    event Committed(uint256 indexed runId, uint32 indexed round, address indexed participant, bytes32 commitment);
    event Revealed(
        uint256 indexed runId,
        uint32 indexed round,
        address indexed participant,
        bytes cid,
        uint64 numExamples,
        DpParams dp,
        bytes32 salt
    );
    event Attested(uint256 indexed runId, uint32 indexed round, address indexed attester, bytes resultCid, uint32 votes);
    event RoundFinalized(uint256 indexed runId, uint32 indexed round, bytes resultCid, uint32 votes);
    event PenaltyRecorded(uint256 indexed runId, uint32 indexed round, address indexed participant, PenaltyReason reason);

    // ------------------------------------------------------------------ storage

    uint16 private constant _BPS = 10_000;
    uint112 private constant _EPSILON_SATURATED = type(uint112).max;

    address public immutable admin;
    uint256 public runCount;

    address[] private _members;
    mapping(address => Participant) private _participants;
    mapping(uint256 => Run) private _runs;
    mapping(uint256 => mapping(uint32 => Round)) private _rounds;
    mapping(uint256 => mapping(address => Member)) private _memberState;
    /// @dev While committed: the commitment. While attested: keccak256 of the attested CID.
    mapping(uint256 => mapping(address => bytes32)) private _memberHash;
    mapping(uint256 => mapping(uint32 => mapping(bytes32 => uint32))) private _votes;

    constructor() {
        admin = msg.sender;
    }

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        _;
    }

    // ------------------------------------------------------------------ registry

    /// @notice Adds `participant` to the consortium, bound to an off-chain identity.
    /// @param participant the participant's signing address
    /// @param identity hash binding the address to its node (e.g. SuperNode public key)
    function register(address participant, bytes32 identity) external onlyAdmin {
        if (_participants[participant].active) revert AlreadyRegistered(participant);
        _participants[participant] = Participant(true, uint32(_members.length), identity);
        _members.push(participant);
        emit ParticipantRegistered(participant, identity);
    }

    /// @notice Removes `participant`; it can no longer be sampled, commit or reveal.
    /// @param participant the address to revoke
    function revoke(address participant) external onlyAdmin {
        Participant storage p = _participants[participant];
        if (!p.active) revert NotRegistered(participant);
        address last = _members[_members.length - 1];
        _members[p.index] = last;
        _participants[last].index = p.index;
        _members.pop();
        delete _participants[participant];
        emit ParticipantRevoked(participant);
    }

    /// @notice Whether `participant` is registered, and its identity hash.
    /// @param participant the address to look up
    /// @return active whether it is registered
    /// @return identity its identity hash
    function participantInfo(address participant) external view returns (bool active, bytes32 identity) {
        Participant storage p = _participants[participant];
        return (p.active, p.identity);
    }

    /// @notice The registered participants, in registry order.
    /// @return the addresses
    function members() external view returns (address[] memory) {
        return _members;
    }

    // ------------------------------------------------------------------ runs and rounds

    /// @notice Creates a run; its first round can then be opened by anyone.
    /// @param params the run's parameters, fixed for its lifetime
    /// @return runId the new run's id (1-based)
    function createRun(RunParams calldata params) external onlyAdmin returns (uint256 runId) {
        if (params.numRounds == 0) revert ZeroRounds();
        if (params.quorum == 0 || params.minReveals < params.quorum) {
            revert InvalidQuorum(params.quorum, params.minReveals);
        }
        if (params.sampleBps == 0 || params.sampleBps > _BPS) revert InvalidSampleRate(params.sampleBps);
        if (params.commitDuration == 0 || params.revealDuration == 0 || params.attestDuration == 0) {
            revert InvalidPhaseDurations(params.commitDuration, params.revealDuration, params.attestDuration);
        }
        _checkCid(params.initialModelCid);
        runId = ++runCount;
        bytes32 beacon = keccak256(abi.encode(block.chainid, address(this), runId, params.configHash));
        Run storage run = _runs[runId];
        run.creator = msg.sender;
        run.numRounds = params.numRounds;
        run.commitDuration = params.commitDuration;
        run.revealDuration = params.revealDuration;
        run.attestDuration = params.attestDuration;
        run.sampleBps = params.sampleBps;
        run.quorum = params.quorum;
        run.minReveals = params.minReveals;
        run.epsilonBudgetWad = params.epsilonBudgetWad;
        run.deltaWad = params.deltaWad;
        run.beacon = beacon;
        run.modelCid = params.initialModelCid;
        emit RunCreated(runId, msg.sender, params, beacon);
    }

    /// @notice Opens the run's next round once the previous one is finalized or failed.
    /// Anyone may call it: the model (last finalized CID) and the sampled set (from the
    /// previous round's beacon) are fixed by the chain, not by the caller.
    /// @param runId the run
    /// @return round the opened round's id
    function openRound(uint256 runId) external returns (uint32 round) {
        Run storage run = _existingRun(runId);
        if (run.finalizedRounds >= run.numRounds) revert RunComplete(runId, run.finalizedRounds);
        bytes32 beacon = run.beacon;
        uint32 previous = run.currentRound;
        if (previous != 0) {
            Phase p = phase(runId, previous);
            if (p != Phase.Finalized && p != Phase.Failed) revert PreviousRoundOpen(runId, previous, p);
            Round storage prev = _rounds[runId][previous];
            beacon = keccak256(abi.encode(prev.beacon, prev.saltXor));
        }
        round = previous + 1;
        run.currentRound = round;
        uint32 sampled = 0;
        uint256 n = _members.length;
        for (uint256 i = 0; i < n; ++i) {
            if (_sampled(beacon, run.sampleBps, _members[i])) ++sampled;
        }
        Round storage r = _rounds[runId][round];
        r.beacon = beacon;
        r.sampledCount = sampled;
        r.openedBlock = uint64(block.number);
        uint64 commitDeadline = uint64(block.timestamp) + run.commitDuration;
        r.commitDeadline = commitDeadline;
        r.revealDeadline = commitDeadline + run.revealDuration;
        r.attestDeadline = commitDeadline + run.revealDuration + run.attestDuration;
        emit RoundOpened(
            runId, round, beacon, run.modelCid, sampled, r.commitDeadline, r.revealDeadline, r.attestDeadline
        );
    }

    /// @notice Commits to an update: `commitment` must equal `commitmentOf(...)` of the
    /// values revealed later.
    /// @param runId the run
    /// @param round the open round
    /// @param commitment keccak256 of the ABI-encoded reveal preimage
    function commit(uint256 runId, uint32 round, bytes32 commitment) external {
        _expectPhase(runId, round, Phase.Commit);
        if (!_participants[msg.sender].active) revert NotRegistered(msg.sender);
        Round storage r = _rounds[runId][round];
        if (!_sampled(r.beacon, _runs[runId].sampleBps, msg.sender)) revert NotSampled(runId, round, msg.sender);
        Member storage m = _memberState[runId][msg.sender];
        if (m.round == round) revert AlreadyCommitted(runId, round, msg.sender);
        _settle(runId, msg.sender, m);
        m.round = round;
        m.stage = Stage.Committed;
        _memberHash[runId][msg.sender] = commitment;
        ++r.commitCount;
        emit Committed(runId, round, msg.sender, commitment);
    }

    /// @notice Reveals the committed update. The contract checks the preimage, the CID's
    /// form, the privacy ledger (delta, monotone cumulative epsilon within budget), then
    /// records the reveal and folds `salt` into the round's beacon.
    /// @param runId the run
    /// @param round the round being revealed
    /// @param cid binary CIDv1 of the update blob
    /// @param numExamples training examples behind the update (aggregation weight)
    /// @param dp the round's DP-SGD parameters and the cumulative epsilon
    /// @param salt the secret committed together with the update
    function reveal(
        uint256 runId,
        uint32 round,
        bytes calldata cid,
        uint64 numExamples,
        DpParams calldata dp,
        bytes32 salt
    ) external {
        _expectPhase(runId, round, Phase.Reveal);
        if (!_participants[msg.sender].active) revert NotRegistered(msg.sender);
        Member storage m = _memberState[runId][msg.sender];
        if (m.round != round || m.stage != Stage.Committed) revert NotCommitted(runId, round, msg.sender);
        bytes32 committed = _memberHash[runId][msg.sender];
        bytes32 computed = commitmentOf(runId, round, msg.sender, cid, numExamples, dp, salt);
        if (committed != computed) revert CommitmentMismatch(runId, round, msg.sender, committed, computed);
        _checkCid(cid);
        if (numExamples == 0) revert ZeroExamples(runId, round, msg.sender);
        Run storage run = _runs[runId];
        if (dp.deltaWad != run.deltaWad) revert DeltaMismatch(runId, run.deltaWad, dp.deltaWad);
        if (dp.epsilonWad > run.epsilonBudgetWad) {
            revert PrivacyBudgetExceeded(runId, msg.sender, dp.epsilonWad, run.epsilonBudgetWad);
        }
        uint112 epsilon = dp.epsilonWad >= _EPSILON_SATURATED ? _EPSILON_SATURATED : uint112(dp.epsilonWad);
        if (epsilon < m.epsilonWad) revert EpsilonDecreased(runId, msg.sender, m.epsilonWad, epsilon);

        m.stage = Stage.Revealed;
        m.epsilonWad = epsilon;
        m.rewardPoints += numExamples;
        Round storage r = _rounds[runId][round];
        r.saltXor ^= salt;
        ++r.revealCount;
        emit Revealed(runId, round, msg.sender, cid, numExamples, dp, salt);
    }

    /// @notice Attests the aggregate of the round's valid reveals. Every revealer of the
    /// round may attest once; `quorum` matching attestations finalize the round and make
    /// `resultCid` the run's next global model.
    /// @param runId the run
    /// @param round the round in its attest phase
    /// @param resultCid binary CIDv1 of the aggregate blob
    function attest(uint256 runId, uint32 round, bytes calldata resultCid) external {
        _expectPhase(runId, round, Phase.Attest);
        Member storage m = _memberState[runId][msg.sender];
        if (m.round != round || m.stage != Stage.Revealed) {
            revert NotEligibleAttester(runId, round, msg.sender, m.round == round ? m.stage : Stage.None);
        }
        _checkCid(resultCid);
        bytes32 cidHash = keccak256(resultCid);
        m.stage = Stage.Attested;
        _memberHash[runId][msg.sender] = cidHash;
        Round storage r = _rounds[runId][round];
        ++r.attestCount;
        uint32 votes = ++_votes[runId][round][cidHash];
        emit Attested(runId, round, msg.sender, resultCid, votes);
        Run storage run = _runs[runId];
        if (votes >= run.quorum) {
            r.finalized = true;
            r.finalCidHash = cidHash;
            run.modelCid = resultCid;
            ++run.finalizedRounds;
            emit RoundFinalized(runId, round, resultCid, votes);
        }
    }

    /// @notice Records pending penalties of `participant` (a missing reveal or a minority
    /// attestation in a closed round). Anyone may call it; commits call it implicitly.
    /// @param runId the run
    /// @param participant the participant to settle
    function settle(uint256 runId, address participant) external {
        _existingRun(runId);
        _settle(runId, participant, _memberState[runId][participant]);
    }

    // ------------------------------------------------------------------ views

    /// @notice The commitment a participant must send for the given reveal values.
    /// @dev keccak256(abi.encode(chainId, contract, runId, round, participant, cid,
    /// numExamples, dp, salt)): bound to chain, contract, run, round and sender, so a
    /// commitment can neither be replayed elsewhere nor copied by another participant.
    /// @return the commitment hash
    function commitmentOf(
        uint256 runId,
        uint32 round,
        address participant,
        bytes calldata cid,
        uint64 numExamples,
        DpParams calldata dp,
        bytes32 salt
    ) public view returns (bytes32) {
        return keccak256(
            abi.encode(block.chainid, address(this), runId, round, participant, cid, numExamples, dp, salt)
        );
    }

    /// @notice The phase of `round` of `runId` now.
    /// @param runId the run
    /// @param round the round
    /// @return the phase
    function phase(uint256 runId, uint32 round) public view returns (Phase) {
        Round storage r = _rounds[runId][round];
        if (r.finalized) return Phase.Finalized;
        if (r.commitDeadline == 0) return Phase.None;
        if (block.timestamp < r.commitDeadline && r.commitCount < r.sampledCount) return Phase.Commit;
        if (block.timestamp < r.revealDeadline && r.revealCount < r.commitCount) return Phase.Reveal;
        if (block.timestamp < r.attestDeadline && r.revealCount >= _runs[runId].minReveals) return Phase.Attest;
        return Phase.Failed;
    }

    /// @notice Whether `participant` is in the sampled set of `round`.
    /// @param runId the run
    /// @param round the round
    /// @param participant the address
    /// @return whether it is sampled (and registered)
    function isSampled(uint256 runId, uint32 round, address participant) external view returns (bool) {
        return _participants[participant].active
            && _sampled(_rounds[runId][round].beacon, _runs[runId].sampleBps, participant);
    }

    /// @notice A run's state.
    /// @param runId the run
    /// @return the run
    function getRun(uint256 runId) external view returns (Run memory) {
        return _runs[runId];
    }

    /// @notice A round's state.
    /// @param runId the run
    /// @param round the round
    /// @return the round
    function getRound(uint256 runId, uint32 round) external view returns (Round memory) {
        return _rounds[runId][round];
    }

    /// @notice A participant's ledger in a run: last round, stage, rewards, penalties, epsilon.
    /// @param runId the run
    /// @param participant the address
    /// @return the member record
    function getMember(uint256 runId, address participant) external view returns (Member memory) {
        return _memberState[runId][participant];
    }

    // ------------------------------------------------------------------ internals

    function _existingRun(uint256 runId) private view returns (Run storage run) {
        run = _runs[runId];
        if (run.creator == address(0)) revert UnknownRun(runId);
    }

    function _expectPhase(uint256 runId, uint32 round, Phase expected) private view {
        _existingRun(runId);
        Phase current = phase(runId, round);
        if (current != expected) revert UnexpectedPhase(runId, round, current, expected);
    }

    /// @dev Bernoulli sampling keyed by the round's beacon: O(1) to check per participant,
    /// and nobody chooses the set.
    function _sampled(bytes32 beacon, uint16 sampleBps, address participant) private pure returns (bool) {
        if (sampleBps >= _BPS) return true;
        return uint256(keccak256(abi.encode(beacon, participant))) % _BPS < sampleBps;
    }

    function _settle(uint256 runId, address participant, Member storage m) private {
        uint32 round = m.round;
        if (round == 0) return;
        Stage stage = m.stage;
        if (stage == Stage.Committed) {
            Phase p = phase(runId, round);
            if (p == Phase.Commit || p == Phase.Reveal) return;
            m.stage = Stage.None;
            ++m.penalties;
            emit PenaltyRecorded(runId, round, participant, PenaltyReason.MissingReveal);
        } else if (stage == Stage.Attested) {
            Round storage r = _rounds[runId][round];
            if (!r.finalized) return;
            m.stage = Stage.None;
            if (_memberHash[runId][participant] != r.finalCidHash) {
                ++m.penalties;
                emit PenaltyRecorded(runId, round, participant, PenaltyReason.MinorityAttestation);
            }
        }
    }

    /// @dev Accepts CIDv1 with a sha2-256 multihash and codec raw (0x55) or dag-pb (0x70).
    function _checkCid(bytes calldata cid) private pure {
        bytes4 prefix = cid.length >= 4 ? bytes4(cid[:4]) : bytes4(0);
        if (cid.length != 36 || (prefix != 0x01551220 && prefix != 0x01701220)) revert InvalidCid(prefix, cid.length);
    }
}

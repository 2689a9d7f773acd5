// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title CommitRevealRounds
/// @notice Trust-free federated-learning rounds: sampled participants commit to a hash of
/// their model update, reveal it (content id, example count, DP-SGD parameters, salt)
/// after the commit phase, and a quorum of revealers attests the aggregate's content id,
/// which becomes the next round's global model. One deployment hosts many runs; the
/// participant registry is shared by them and managed by the consortium admin.
/// @dev Gas layout. A run keeps only its current round in storage, in a fixed set of slots
/// that every round rewrites (never fresh slots): the clock (everything `phase` needs,
/// commit and reveal counts included, packed in one word), the vote tally (the first
/// attested CID and its votes) and the model's digest. Each participant has two slots per
/// run, also rewritten round after round: its round record (round, stage, truncated
/// commitment or attested CID hash) and its ledger (rewards, penalties, cumulative
/// epsilon). Once a run and a participant have had their first round, the only slots
/// written fresh are for rare events: a failed round (one bit), a disputed finalization
/// (its result hash) and votes for CIDs other than the first attested one. Past rounds
/// live in the events.
/// With full sampling the attestation that finalizes a round also opens the next one (in
/// O(1): everyone registered is sampled), so a run calls `openRound` only for its first
/// round and after a failed one; with partial sampling opening walks the registry, so it
/// stays a call of its own and finalization stays O(1). The sampling beacon is
/// not stored: it is a hash of the run, the round and the round's global model (itself
/// the hash of the previous round's aggregate), see `beaconOf`.
/// Penalties for missing reveals and minority attestations are settled lazily (on the
/// participant's next commit, or by anyone through `settle`), so every call is O(1) in the
/// number of participants except opening a round with a sampling rate below 100 %, which
/// walks the registry once to count the sampled set.
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

    // A reveal record: what a participant commits to and reveals, 145 bytes, big-endian,
    // fields back to back (abi.encodePacked of):
    //   [0:36)    bytes   cid                 binary CIDv1 of the update blob
    //   [36:44)   uint64  numExamples         training examples behind it (aggregation weight)
    //   [44:60)   uint128 noiseMultiplierWad  DP-SGD parameters of the round's local
    //   [60:76)   uint128 sampleRateWad         training, fixed point with 18 decimals
    //   [76:80)   uint32  steps
    //   [80:96)   uint128 deltaWad
    //   [96:112)  uint128 epsilonWad          cumulative epsilon after this round
    //   [112:113) uint8   accountant          0 none (non-private), 1 RDP, 2 PRV
    //   [113:145) bytes32 salt                the secret that hides the rest until revealed
    // `type(uint128).max` encodes an infinite epsilon (non-private training). The record
    // is emitted verbatim in `Revealed`: packed, it costs a third less log data than the
    // ABI-encoded fields.
    uint256 private constant _RECORD_BYTES = 145;

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
        uint16 sampleBps; // per-participant sampling probability, basis points
        uint16 quorum; // matching attestations that finalize a round
        uint16 minReveals; // valid reveals needed for a round to be aggregated
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
        uint128 epsilonBudgetWad;
        uint128 deltaWad;
        bytes32 beacon; // sampling seed of the current round (of round 1 before it opens)
        bytes modelCid; // current global model
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
    }

    /// @notice A participant's record in a run as `getMember` reports it.
    struct MemberView {
        uint32 round; // the round `stage` refers to
        Stage stage;
        uint64 rewardPoints; // examples contributed by valid reveals
        uint32 penalties;
        uint112 epsilonWad; // cumulative epsilon revealed so far (saturating)
    }

    /// @dev Run slot 0: fixed parameters, counters and the model CID's codec.
    struct RunConfig {
        uint32 numRounds;
        uint32 finalizedRounds;
        uint32 commitDuration;
        uint32 revealDuration;
        uint32 attestDuration;
        uint16 sampleBps;
        uint16 quorum;
        uint16 minReveals;
        uint8 modelCodec; // multicodec of the model CID: 0x55 raw or 0x70 dag-pb
        uint40 openedBlock; // block in which the current round was opened
    }

    /// @dev Run slot 1: the current round's clock and counts, all that `phase` reads.
    /// Durations and counts are 24-bit (194 days; 16.7M participants, see `register`).
    struct RoundClock {
        uint32 round; // current round id, 0 before the first
        uint40 commitDeadline;
        uint24 revealDuration; // revealDeadline = commitDeadline + revealDuration
        uint24 attestDuration; // attestDeadline = revealDeadline + attestDuration
        uint24 sampledCount;
        uint24 commitCount;
        uint24 revealCount;
        uint16 sampleBps;
        uint16 quorum;
        uint16 minReveals;
        bool finalized; // a finalized round stays current only if it did not open the next
        bool previousDisputed; // the previous round finalized while another CID had votes
    }

    /// @dev Run slot 2: the first CID attested in round `round` and its votes.
    struct VoteTally {
        uint32 round;
        uint16 votes;
        bool disputed;
        bytes24 cidHash; // first 24 bytes of keccak256(cid)
    }

    struct Run {
        RunConfig config;
        RoundClock clock;
        VoteTally votes;
        bytes32 modelDigest; // sha2-256 digest of the model CID
        uint128 epsilonBudgetWad;
        uint128 deltaWad;
        address creator;
    }

    /// @dev A participant's round record: while committed, the commitment's first 27
    /// bytes; once attested, the attested CID hash's first 27 bytes. The stored stage is
    /// never `Revealed`: a reveal is recorded in the ledger (`revealedRound`), which a
    /// reveal writes anyway, so a reveal rewrites one member slot instead of two.
    struct MemberRound {
        uint32 round;
        Stage stage;
        bytes27 hash;
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

    struct Participant {
        bool active;
        uint32 index; // position in `_members`
        bytes32 identity; // e.g. hash of the silo's Flower SuperNode public key
    }

    // ------------------------------------------------------------------ errors

    error NotAdmin(address caller);
    error RegistryFull(uint256 size);
    error AlreadyRegistered(address participant);
    error NotRegistered(address participant);
    error ZeroRounds();
    error InvalidQuorum(uint16 quorum, uint16 minReveals);
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
    error CommitmentMismatch(uint256 runId, uint32 round, address participant, bytes27 committed, bytes32 revealed);
    error InvalidCid(bytes4 prefix, uint256 length);
    error InvalidRevealRecord(uint256 length);
    error ZeroExamples(uint256 runId, uint32 round, address participant);
    error DeltaMismatch(uint256 runId, uint128 expectedWad, uint128 revealedWad);
    error EpsilonDecreased(uint256 runId, address participant, uint256 previousWad, uint256 revealedWad);
    error PrivacyBudgetExceeded(uint256 runId, address participant, uint256 epsilonWad, uint256 budgetWad);
    error NotEligibleAttester(uint256 runId, uint32 round, address attester, Stage stage);

    // ------------------------------------------------------------------ events

    event ParticipantRegistered(address indexed participant, bytes32 identity);
    event ParticipantRevoked(address indexed participant);
    event RunCreated(uint256 indexed runId, address indexed creator, RunParams params, bytes32 beacon);
    /// @dev The round's model is the last `RoundFinalized.resultCid` (the run's initial
    /// model before any); its reveal and attest deadlines follow from `commitDeadline`
    /// and the run's durations.
    event RoundOpened(
        uint256 indexed runId, uint32 indexed round, bytes32 beacon, uint32 sampledCount, uint64 commitDeadline
    );
    event Committed(uint256 indexed runId, uint32 indexed round, address indexed participant, bytes32 commitment);
    event Revealed(uint256 indexed runId, uint32 indexed round, address indexed participant, bytes record);
    /// @dev A CID's votes are its `Attested` events in the round; it finalizes at `quorum`.
    event Attested(uint256 indexed runId, uint32 indexed round, address indexed attester, bytes resultCid);
    event RoundFinalized(uint256 indexed runId, uint32 indexed round, bytes resultCid);
    event PenaltyRecorded(uint256 indexed runId, uint32 indexed round, address indexed participant, PenaltyReason reason);

    // ------------------------------------------------------------------ storage

    uint16 private constant _BPS = 10_000;
    uint24 private constant _MAX_COUNT = type(uint24).max;
    uint112 private constant _EPSILON_SATURATED = type(uint112).max;

    /// @notice The consortium admin (the deployer): registers participants, creates runs.
    address public immutable admin;
    /// @notice Runs created so far; the last run's id.
    uint256 public runCount;

    address[] private _members;
    mapping(address => Participant) private _participants;
    mapping(uint256 => Run) private _runs;
    mapping(uint256 => mapping(address => Member)) private _memberOf;
    /// @dev Bit `round % 256` of word `round / 256` is set once round `round` failed.
    mapping(uint256 => mapping(uint256 => uint256)) private _failedRounds;
    /// @dev keccak256 of the result CID of a round finalized while another CID had votes.
    mapping(uint256 => mapping(uint32 => bytes32)) private _disputedResult;
    /// @dev Votes for CIDs other than the first one attested in a round.
    mapping(uint256 => mapping(uint32 => mapping(bytes32 => uint256))) private _otherVotes;

    constructor() {
        admin = msg.sender;
    }

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin(msg.sender);
        _;
    }

    // ------------------------------------------------------------------ registry

    /// @notice Adds `participant` to the consortium, bound to an off-chain identity.
    /// @dev Register and revoke between rounds: a round's sampled count is fixed when it opens.
    /// @param participant the participant's signing address
    /// @param identity hash binding the address to its node (e.g. SuperNode public key)
    function register(address participant, bytes32 identity) external onlyAdmin {
        if (_participants[participant].active) revert AlreadyRegistered(participant);
        if (_members.length >= _MAX_COUNT) revert RegistryFull(_members.length);
        _participants[participant] = Participant(true, uint32(_members.length), identity);
        _members.push(participant);
        emit ParticipantRegistered(participant, identity);
    }

    /// @notice Removes `participant`; it can no longer be sampled or commit. A reveal or an
    /// attestation for a commitment made before the revocation is still accepted.
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
        if (
            params.commitDuration == 0 || params.revealDuration == 0 || params.attestDuration == 0
                || params.commitDuration > _MAX_COUNT || params.revealDuration > _MAX_COUNT
                || params.attestDuration > _MAX_COUNT
        ) {
            revert InvalidPhaseDurations(params.commitDuration, params.revealDuration, params.attestDuration);
        }
        bytes calldata cid = params.initialModelCid;
        _checkCid(cid);
        runId = ++runCount;
        Run storage run = _runs[runId];
        run.config = RunConfig({
            numRounds: params.numRounds,
            finalizedRounds: 0,
            commitDuration: params.commitDuration,
            revealDuration: params.revealDuration,
            attestDuration: params.attestDuration,
            sampleBps: params.sampleBps,
            quorum: params.quorum,
            minReveals: params.minReveals,
            modelCodec: uint8(cid[1]),
            openedBlock: 0
        });
        bytes32 modelDigest = bytes32(cid[4:36]);
        run.modelDigest = modelDigest;
        run.epsilonBudgetWad = params.epsilonBudgetWad;
        run.deltaWad = params.deltaWad;
        run.creator = msg.sender;
        emit RunCreated(runId, msg.sender, params, beaconOf(runId, 1, modelDigest));
    }

    /// @notice Opens the run's first round, the round after a failed one, or (with partial
    /// sampling) the round after a finalized one; with full sampling the attestation that
    /// finalizes a round opens the next itself. Anyone may call it: the model (last
    /// finalized CID) and the sampled set (from the round's beacon) are fixed by the
    /// chain, not by the caller.
    /// @param runId the run
    /// @return round the opened round's id
    function openRound(uint256 runId) external returns (uint32 round) {
        Run storage run = _runs[runId];
        RunConfig memory cfg = run.config;
        if (cfg.numRounds == 0) revert UnknownRun(runId);
        if (cfg.finalizedRounds >= cfg.numRounds) revert RunComplete(runId, cfg.finalizedRounds);
        RoundClock memory c = run.clock;
        uint32 previous = c.round;
        bool previousDisputed;
        if (previous != 0) {
            Phase p = _phase(runId, c, previous);
            if (p == Phase.Failed) {
                _failedRounds[runId][previous >> 8] |= 1 << (previous & 0xff);
            } else if (p == Phase.Finalized) {
                VoteTally memory v = run.votes;
                previousDisputed = v.round == previous && v.disputed;
            } else {
                revert PreviousRoundOpen(runId, previous, p);
            }
        }
        round = previous + 1;
        _open(runId, run, cfg, round, run.modelDigest, previousDisputed);
    }

    /// @dev Opens round `round` on model `modelDigest`: writes the clock and `cfg` (with
    /// the round's opening block) and announces the round.
    function _open(
        uint256 runId,
        Run storage run,
        RunConfig memory cfg,
        uint32 round,
        bytes32 modelDigest,
        bool previousDisputed
    ) private {
        bytes32 beacon = beaconOf(runId, round, modelDigest);
        uint24 sampled = cfg.sampleBps >= _BPS ? uint24(_members.length) : _countSampled(beacon, cfg.sampleBps);
        uint40 commitDeadline = uint40(block.timestamp) + uint40(cfg.commitDuration);
        run.clock = RoundClock({
            round: round,
            commitDeadline: commitDeadline,
            revealDuration: uint24(cfg.revealDuration),
            attestDuration: uint24(cfg.attestDuration),
            sampledCount: sampled,
            commitCount: 0,
            revealCount: 0,
            sampleBps: cfg.sampleBps,
            quorum: cfg.quorum,
            minReveals: cfg.minReveals,
            finalized: false,
            previousDisputed: previousDisputed
        });
        cfg.openedBlock = uint40(block.number);
        run.config = cfg;
        emit RoundOpened(runId, round, beacon, sampled, commitDeadline);
    }

    /// @notice Commits to an update: `commitment` must equal `commitmentOf(...)` of the
    /// values revealed later. Settles the sender's previous round first.
    /// @param runId the run
    /// @param round the open round
    /// @param commitment keccak256 of the ABI-encoded reveal preimage
    function commit(uint256 runId, uint32 round, bytes32 commitment) external {
        Run storage run = _runs[runId];
        RoundClock memory c = run.clock;
        Phase p = _phase(runId, c, round);
        if (p != Phase.Commit) revert UnexpectedPhase(runId, round, p, Phase.Commit);
        if (!_participants[msg.sender].active) revert NotRegistered(msg.sender);
        if (c.sampleBps < _BPS && !_sampled(beaconOf(runId, round, run.modelDigest), c.sampleBps, msg.sender)) {
            revert NotSampled(runId, round, msg.sender);
        }
        Member storage m = _memberOf[runId][msg.sender];
        MemberRound memory last = m.current;
        if (last.round == round) revert AlreadyCommitted(runId, round, msg.sender);
        _settle(runId, c, msg.sender, m, last);
        m.current = MemberRound(round, Stage.Committed, bytes27(commitment));
        run.clock.commitCount = c.commitCount + 1;
        emit Committed(runId, round, msg.sender, commitment);
    }

    /// @notice Reveals the committed update. The contract checks the preimage, the CID's
    /// form, the privacy ledger (delta, monotone cumulative epsilon within budget), then
    /// records the reveal.
    /// @param runId the run
    /// @param round the round being revealed
    /// @param record the reveal record (layout above) committed to in this round
    function reveal(uint256 runId, uint32 round, bytes calldata record) external {
        Run storage run = _runs[runId];
        RoundClock memory c = run.clock;
        Phase p = _phase(runId, c, round);
        if (p != Phase.Reveal) revert UnexpectedPhase(runId, round, p, Phase.Reveal);
        Member storage m = _memberOf[runId][msg.sender];
        MemberRound memory last = m.current;
        MemberLedger memory ledger = m.ledger;
        if (last.round != round || last.stage != Stage.Committed || ledger.revealedRound == round) {
            revert NotCommitted(runId, round, msg.sender);
        }
        if (record.length != _RECORD_BYTES) revert InvalidRevealRecord(record.length);
        bytes32 computed = commitmentOf(runId, round, msg.sender, record);
        if (bytes27(computed) != last.hash) revert CommitmentMismatch(runId, round, msg.sender, last.hash, computed);
        _checkCid(record[0:36]);
        uint64 numExamples = uint64(bytes8(record[36:44]));
        if (numExamples == 0) revert ZeroExamples(runId, round, msg.sender);
        uint128 revealedDelta = uint128(bytes16(record[80:96]));
        uint128 revealedEpsilon = uint128(bytes16(record[96:112]));
        uint128 deltaWad = run.deltaWad;
        uint128 budgetWad = run.epsilonBudgetWad;
        if (revealedDelta != deltaWad) revert DeltaMismatch(runId, deltaWad, revealedDelta);
        if (revealedEpsilon > budgetWad) {
            revert PrivacyBudgetExceeded(runId, msg.sender, revealedEpsilon, budgetWad);
        }
        uint112 epsilon = revealedEpsilon >= _EPSILON_SATURATED ? _EPSILON_SATURATED : uint112(revealedEpsilon);
        if (epsilon < ledger.epsilonWad) revert EpsilonDecreased(runId, msg.sender, ledger.epsilonWad, epsilon);

        m.ledger = MemberLedger(round, ledger.rewardPoints + numExamples, ledger.penalties, epsilon);
        run.clock.revealCount = c.revealCount + 1;
        emit Revealed(runId, round, msg.sender, record);
    }

    /// @notice Attests the aggregate of the round's valid reveals. Every revealer of the
    /// round may attest once; `quorum` matching attestations finalize the round, make
    /// `resultCid` the run's next global model and open the next round (unless the run is
    /// complete).
    /// @param runId the run
    /// @param round the round in its attest phase
    /// @param resultCid binary CIDv1 of the aggregate blob
    function attest(uint256 runId, uint32 round, bytes calldata resultCid) external {
        Run storage run = _runs[runId];
        RoundClock memory c = run.clock;
        Phase p = _phase(runId, c, round);
        if (p != Phase.Attest) revert UnexpectedPhase(runId, round, p, Phase.Attest);
        Member storage m = _memberOf[runId][msg.sender];
        MemberRound memory last = m.current;
        if (last.round != round || last.stage != Stage.Committed || m.ledger.revealedRound != round) {
            Stage stage = last.round == round ? _stageOf(last, m.ledger) : Stage.None;
            revert NotEligibleAttester(runId, round, msg.sender, stage);
        }
        _checkCid(resultCid);
        bytes32 cidHash = keccak256(resultCid);
        m.current = MemberRound(round, Stage.Attested, bytes27(cidHash));

        VoteTally memory v = run.votes;
        if (v.round != round) v = VoteTally(round, 0, false, bytes24(cidHash));
        uint256 votes;
        if (v.cidHash == bytes24(cidHash)) {
            votes = ++v.votes; // never past quorum (uint16): the round finalizes there
        } else {
            v.disputed = true;
            votes = ++_otherVotes[runId][round][cidHash];
        }
        run.votes = v;
        emit Attested(runId, round, msg.sender, resultCid);

        if (votes >= c.quorum) {
            RunConfig memory cfg = run.config;
            cfg.finalizedRounds += 1;
            cfg.modelCodec = uint8(resultCid[1]);
            bytes32 modelDigest = bytes32(resultCid[4:36]);
            run.modelDigest = modelDigest;
            if (v.disputed) _disputedResult[runId][round] = cidHash;
            emit RoundFinalized(runId, round, resultCid);
            if (cfg.finalizedRounds < cfg.numRounds && cfg.sampleBps >= _BPS) {
                _open(runId, run, cfg, round + 1, modelDigest, v.disputed);
            } else {
                run.config = cfg;
                run.clock.finalized = true;
            }
        }
    }

    /// @notice Records pending penalties of `participant` (a missing reveal or a minority
    /// attestation in a closed round). Anyone may call it; commits call it implicitly.
    /// @param runId the run
    /// @param participant the participant to settle
    function settle(uint256 runId, address participant) external {
        Run storage run = _runs[runId];
        if (run.config.numRounds == 0) revert UnknownRun(runId);
        Member storage m = _memberOf[runId][participant];
        if (_settle(runId, run.clock, participant, m, m.current)) m.current.stage = Stage.None;
    }

    // ------------------------------------------------------------------ views

    /// @notice The commitment a participant must send for a reveal record.
    /// @dev keccak256(abi.encode(chainId, contract, runId, round, participant, record)):
    /// bound to chain, contract, run, round and sender, so a commitment can neither be
    /// replayed elsewhere nor copied by another participant.
    /// @param runId the run
    /// @param round the round
    /// @param participant the committing address
    /// @param record the reveal record (layout at the top of the contract)
    /// @return the commitment hash
    function commitmentOf(uint256 runId, uint32 round, address participant, bytes calldata record)
        public
        view
        returns (bytes32)
    {
        return keccak256(abi.encode(block.chainid, address(this), runId, round, participant, record));
    }

    /// @notice The sampling seed of round `round` of `runId` when its global model has the
    /// sha2-256 digest `modelDigest`: the model of every round after the first is the
    /// previous round's aggregate, a hash of the updates revealed there, so nobody chooses
    /// the seed (a revealer can only withhold, as with any commit-reveal beacon).
    /// @param runId the run
    /// @param round the round
    /// @param modelDigest the digest in the round's global model CID
    /// @return the beacon
    function beaconOf(uint256 runId, uint32 round, bytes32 modelDigest) public view returns (bytes32) {
        return keccak256(abi.encode(block.chainid, address(this), runId, round, modelDigest));
    }

    /// @notice The phase of `round` of `runId` now. Rounds before the current one are
    /// `Finalized` or `Failed`.
    /// @param runId the run
    /// @param round the round
    /// @return the phase
    function phase(uint256 runId, uint32 round) external view returns (Phase) {
        return _phase(runId, _runs[runId].clock, round);
    }

    /// @notice Whether `participant` is in the sampled set of the current round `round`.
    /// @param runId the run
    /// @param round the run's current round, not finalized
    /// @param participant the address
    /// @return whether it is sampled (and registered)
    function isSampled(uint256 runId, uint32 round, address participant) external view returns (bool) {
        Run storage run = _runs[runId];
        RoundClock memory c = run.clock;
        if (round == 0 || round != c.round) revert RoundNotCurrent(runId, round, c.round);
        if (c.finalized) revert UnexpectedPhase(runId, round, Phase.Finalized, Phase.Commit);
        return _participants[participant].active
            && _sampled(beaconOf(runId, round, run.modelDigest), c.sampleBps, participant);
    }

    /// @dev The beacon of the run's current round (of round 1 before it opens); zero once
    /// it is finalized (the model digest is then the next model's).
    function _currentBeacon(uint256 runId, Run storage run, RoundClock memory c) private view returns (bytes32) {
        if (c.finalized) return bytes32(0);
        return beaconOf(runId, c.round == 0 ? 1 : c.round, run.modelDigest);
    }

    /// @notice A run's state.
    /// @param runId the run
    /// @return v the run (all zero for an unknown run)
    function getRun(uint256 runId) external view returns (RunView memory v) {
        Run storage run = _runs[runId];
        RunConfig memory cfg = run.config;
        if (cfg.numRounds == 0) return v;
        v = RunView({
            creator: run.creator,
            numRounds: cfg.numRounds,
            finalizedRounds: cfg.finalizedRounds,
            currentRound: run.clock.round,
            commitDuration: cfg.commitDuration,
            revealDuration: cfg.revealDuration,
            attestDuration: cfg.attestDuration,
            sampleBps: cfg.sampleBps,
            quorum: cfg.quorum,
            minReveals: cfg.minReveals,
            epsilonBudgetWad: run.epsilonBudgetWad,
            deltaWad: run.deltaWad,
            beacon: _currentBeacon(runId, run, run.clock),
            modelCid: _cidOf(cfg.modelCodec, run.modelDigest)
        });
    }

    /// @notice The state of the run's current round (earlier rounds are in the events).
    /// @param runId the run
    /// @param round the run's current round
    /// @return v the round
    function getRound(uint256 runId, uint32 round) external view returns (RoundView memory v) {
        Run storage run = _runs[runId];
        RoundClock memory c = run.clock;
        if (round == 0 || round != c.round) revert RoundNotCurrent(runId, round, c.round);
        VoteTally memory votes = run.votes;
        uint64 revealDeadline = uint64(c.commitDeadline) + c.revealDuration;
        v = RoundView({
            round: round,
            beacon: _currentBeacon(runId, run, c),
            commitDeadline: c.commitDeadline,
            revealDeadline: revealDeadline,
            attestDeadline: revealDeadline + c.attestDuration,
            sampledCount: c.sampledCount,
            commitCount: c.commitCount,
            revealCount: c.revealCount,
            leadingVotes: votes.round == round ? votes.votes : 0,
            disputed: votes.round == round && votes.disputed,
            finalized: c.finalized,
            openedBlock: run.config.openedBlock
        });
    }

    /// @notice A participant's ledger in a run: last round, stage, rewards, penalties, epsilon.
    /// @param runId the run
    /// @param participant the address
    /// @return the member record
    function getMember(uint256 runId, address participant) external view returns (MemberView memory) {
        Member storage m = _memberOf[runId][participant];
        MemberRound memory r = m.current;
        MemberLedger memory l = m.ledger;
        return MemberView(r.round, _stageOf(r, l), l.rewardPoints, l.penalties, l.epsilonWad);
    }

    /// @dev A participant's stage in round `r.round`: a committed participant whose ledger
    /// records a reveal in that round has revealed.
    function _stageOf(MemberRound memory r, MemberLedger memory l) private pure returns (Stage) {
        return r.stage == Stage.Committed && l.revealedRound == r.round ? Stage.Revealed : r.stage;
    }

    // ------------------------------------------------------------------ internals

    /// @dev Phase of `round` given the run's clock `c`.
    function _phase(uint256 runId, RoundClock memory c, uint32 round) private view returns (Phase) {
        if (round == 0 || round > c.round) return Phase.None;
        if (round < c.round) {
            return (_failedRounds[runId][round >> 8] >> (round & 0xff)) & 1 == 1 ? Phase.Failed : Phase.Finalized;
        }
        if (c.finalized) return Phase.Finalized;
        uint256 commitDeadline = c.commitDeadline;
        if (block.timestamp < commitDeadline && c.commitCount < c.sampledCount) return Phase.Commit;
        uint256 revealDeadline = commitDeadline + c.revealDuration;
        if (block.timestamp < revealDeadline && c.revealCount < c.commitCount) return Phase.Reveal;
        if (block.timestamp < revealDeadline + c.attestDuration && c.revealCount >= c.minReveals) return Phase.Attest;
        return Phase.Failed;
    }

    /// @dev Bernoulli sampling keyed by the round's beacon: O(1) to check per participant,
    /// and nobody chooses the set.
    function _sampled(bytes32 beacon, uint16 sampleBps, address participant) private pure returns (bool) {
        if (sampleBps >= _BPS) return true;
        return uint256(keccak256(abi.encode(beacon, participant))) % _BPS < sampleBps;
    }

    function _countSampled(bytes32 beacon, uint16 sampleBps) private view returns (uint24 sampled) {
        uint256 n = _members.length;
        for (uint256 i = 0; i < n; ++i) {
            if (_sampled(beacon, sampleBps, _members[i])) ++sampled;
        }
    }

    /// @dev Records the penalty the participant's last round earned, if that round is
    /// closed; returns whether the round is settled.
    function _settle(
        uint256 runId,
        RoundClock memory c,
        address participant,
        Member storage m,
        MemberRound memory last
    ) private returns (bool) {
        uint32 round = last.round;
        if (last.stage == Stage.Committed) {
            if (round == c.round) {
                Phase p = _phase(runId, c, round);
                if (p == Phase.Commit || p == Phase.Reveal) return false;
            }
            MemberLedger storage ledger = m.ledger;
            if (ledger.revealedRound == round) return false; // revealed, did not attest: nothing owed
            ledger.penalties += 1;
            emit PenaltyRecorded(runId, round, participant, PenaltyReason.MissingReveal);
            return true;
        }
        if (last.stage == Stage.Attested) {
            if (round == c.round && !c.finalized) {
                // not finalized: still attesting (pending) or failed (no result, no penalty)
                return _phase(runId, c, round) != Phase.Attest;
            }
            // The round is closed: finalized (a penalty if another CID won) or failed (none).
            // Only a round finalized while another CID had votes recorded its result, and
            // the clock tells whether the round just before the current one did.
            if (round + 1 == c.round && !c.previousDisputed) return true;
            bytes32 result = _disputedResult[runId][round];
            if (result != 0 && bytes27(result) != last.hash) {
                m.ledger.penalties += 1;
                emit PenaltyRecorded(runId, round, participant, PenaltyReason.MinorityAttestation);
            }
            return true;
        }
        return false;
    }

    /// @dev The 36-byte binary CIDv1 with a sha2-256 multihash.
    function _cidOf(uint8 codec, bytes32 digest) private pure returns (bytes memory) {
        return abi.encodePacked(uint8(0x01), codec, uint16(0x1220), digest);
    }

    /// @dev Accepts CIDv1 with a sha2-256 multihash and codec raw (0x55) or dag-pb (0x70).
    function _checkCid(bytes calldata cid) private pure {
        bytes4 prefix = cid.length >= 4 ? bytes4(cid[:4]) : bytes4(0);
        if (cid.length != 36 || (prefix != 0x01551220 && prefix != 0x01701220)) revert InvalidCid(prefix, cid.length);
    }
}

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";
import {ICommitRevealRounds} from "./ICommitRevealRounds.sol";

/// @title CommitRevealRounds
/// @notice Trust-free federated-learning rounds: sampled participants commit to a hash of
/// their model update, reveal it (content id, example count, DP-SGD parameters, salt)
/// after the commit phase, and a majority of the round's eligible attesters attests the
/// aggregate's content id, which becomes the next round's global model. One deployment
/// hosts many runs; the participant registry is shared by them and managed by the
/// consortium admin.
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
/// Sampling is a keyed permutation of registry indices (swap-or-not, `permutedPosition`):
/// the participant at index i is sampled iff its position is below k = ceil(N * rate),
/// so the sampled count is known without walking the registry and every call is O(1) in
/// its size. The attestation that finalizes a round also opens the next one, so a run
/// calls `openRound` only for its first round and after a failed one. The sampling beacon
/// is not stored: it is a hash of the run, the round and the round's global model (itself
/// the hash of the previous round's aggregate), see `beaconOf`.
/// A round finalizes when one CID has the votes of a strict majority of the round's
/// committee members that committed (the committee: the first `committeeSize` sampled
/// positions, or every sampled participant), and never fewer than the run's `quorum`;
/// only those that revealed may vote. Counting commits, not reveals, is what keeps a
/// relayer that withholds reveals from lowering the bar: withholding can make a round
/// fail, never change who decides it.
/// Reveals and votes may also come in a relayer's batch (`revealMany`, `attestMany`,
/// sent by anyone): a reveal is authenticated by the commitment, which binds its
/// participant, and a vote by its attester's signature of `voteDigest`; each is recorded
/// as the participant's own call would be, so a relayer can withhold, never forge.
/// Penalties for missing reveals and minority attestations are settled lazily (on the
/// participant's next commit, or by anyone through `settle`).
/// Incentives: a run may require a stake (native currency, or the ERC-20 token the run
/// names) before a participant commits, and carries a reward pool funded when it is
/// created. The attestation that finalizes a round carries the round's outcome (each
/// revealer's contribution score and verdict, agreed by the same majority as the model):
/// the round's share of the pool is credited in proportion to the scores, and each
/// refused update is slashed. Missing reveals and minority attestations are slashed when
/// they are settled. Slashed stake goes to the run's reward pool, so it is paid to later
/// contributors; what the pool holds once the run is complete goes back to its creator.
/// All payments are pulled (`withdrawRewards`, `withdrawStake`, `withdrawPool`).
contract CommitRevealRounds is ICommitRevealRounds, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    // ------------------------------------------------------------------ types
    // (the public ones, the errors and the events are in ICommitRevealRounds)

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

    // A round outcome: one 25-byte entry per revealer of the round, in ascending address
    // order, each (abi.encodePacked of):
    //   [0:20)   address participant  a revealer of the round
    //   [20:24)  uint32  score        its contribution score (docs/protocol.md); 0 if refused
    //   [24:25)  uint8   verdict      0 aggregated; 1 blob unavailable; 2 blob invalid
    //                                 (tampered, malformed or not the spec's layout);
    //                                 3 DP claims contradict the spec or its history
    // Attesters vote for (result CID, outcome) together: the pair with a majority finalizes.
    uint256 private constant _OUTCOME_ENTRY_BYTES = 25;

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
    }

    /// @dev Run slot 1: the current round's clock and counts, all that `phase` reads and
    /// all that a commit needs to know whether it must evaluate the permutation. Durations
    /// are 24-bit (194 days), counts 16-bit (at most `_MAX_SAMPLED` sampled per round).
    struct RoundClock {
        uint32 round; // current round id, 0 before the first
        uint40 commitDeadline;
        uint24 revealDuration; // revealDeadline = commitDeadline + revealDuration
        uint24 attestDuration; // attestDeadline = revealDeadline + attestDuration
        uint16 sampledCount; // k: positions below it are sampled
        uint16 commitCount;
        uint16 revealCount;
        uint16 committeeCommits; // committee members that committed: the base of the majority
        uint16 minReveals;
        uint24 registryEpoch; // registry epoch at opening: later (re)assigned indices sit out
        bool finalized; // a finalized round stays current only if it did not open the next
        bool previousDisputed; // the previous round finalized while another CID had votes
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

    /// @dev One slot read by commit and reveal, then the identity (read by views only).
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

    uint16 private constant _BPS = 10_000;
    uint24 private constant _MAX_COUNT = type(uint24).max;
    /// @dev The most participants sampled in one round (counts are 16-bit).
    uint256 private constant _MAX_SAMPLED = type(uint16).max;
    /// @dev Attempts failed in a row, the current one included, after which anyone may
    /// cancel the run (`cancelRun`).
    uint32 private constant _CANCEL_AFTER_FAILED_ATTEMPTS = 3;
    /// @dev Rounds of the swap-or-not permutation (as Ethereum's committee shuffle).
    uint256 private constant _SHUFFLE_ROUNDS = 90;
    uint112 private constant _EPSILON_SATURATED = type(uint112).max;
    /// @dev Domain tag of a signed vote (`voteDigest`), so no other signed message is one.
    bytes32 private constant _VOTE_TAG = keccak256("deai-flower vote");

    /// @notice The consortium admin (the deployer, then whoever accepted a transfer):
    /// registers participants, creates runs.
    address public admin;
    /// @notice The address a transfer of the admin role awaits (zero: none).
    address public pendingAdmin;
    /// @notice Runs created so far; the last run's id.
    uint256 public runCount;

    Registry private _registry;
    mapping(uint256 => address) private _memberAt;
    mapping(address => Participant) private _participants;
    mapping(uint256 => Run) private _runs;
    mapping(uint256 => mapping(address => Member)) private _memberOf;
    mapping(uint256 => mapping(address => Account)) private _accounts;
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

    // ------------------------------------------------------------------ runs and rounds

    /// @notice Creates a run; its first round can then be opened by anyone. The creator
    /// funds the run's reward pool now: `msg.value` must equal `params.rewardPool` in the
    /// native currency, or the contract pulls it in `params.stakeToken` (approve first).
    /// @param params the run's parameters, fixed for its lifetime
    /// @return runId the new run's id (1-based)
    function createRun(RunParams calldata params) external payable onlyAdmin returns (uint256 runId) {
        if (params.numRounds == 0) revert ZeroRounds();
        if (params.quorum == 0 || params.minReveals < params.quorum) {
            revert InvalidQuorum(params.quorum, params.minReveals);
        }
        if (params.committeeSize != 0 && params.committeeSize < params.quorum) {
            revert InvalidCommitteeSize(params.committeeSize, params.quorum);
        }
        if (params.sampleBps == 0 || params.sampleBps > _BPS) revert InvalidSampleRate(params.sampleBps);
        if (
            params.commitDuration == 0 || params.revealDuration == 0 || params.attestDuration == 0
                || params.commitDuration > _MAX_COUNT || params.revealDuration > _MAX_COUNT
                || params.attestDuration > _MAX_COUNT
        ) {
            revert InvalidPhaseDurations(params.commitDuration, params.revealDuration, params.attestDuration);
        }
        if (
            params.slashMissingReveal > params.stake || params.slashRefused > params.stake
                || params.slashMinority > params.stake
        ) {
            revert InvalidSlashAmount(params.stake, params.slashMissingReveal, params.slashRefused, params.slashMinority);
        }
        bytes calldata cid = params.initialModelCid;
        _checkCid(cid);
        runId = ++runCount;
        Run storage run = _runs[runId];
        run.config = RunConfig({
            numRounds: params.numRounds,
            finalizedRounds: 0,
            commitDuration: uint24(params.commitDuration),
            sampleBps: params.sampleBps,
            quorum: params.quorum,
            minReveals: params.minReveals,
            committeeSize: params.committeeSize,
            modelCodec: uint8(cid[1]),
            openedBlock: 0,
            registrySize: 0,
            cancelled: false
        });
        // the clock keeps the reveal and attest durations from the start (round 0: not opened)
        RoundClock memory c;
        c.revealDuration = uint24(params.revealDuration);
        c.attestDuration = uint24(params.attestDuration);
        c.minReveals = params.minReveals;
        run.clock = c;
        bytes32 modelDigest = bytes32(cid[4:36]);
        run.modelDigest = modelDigest;
        run.epsilonBudgetWad = params.epsilonBudgetWad;
        run.deltaWad = params.deltaWad;
        run.creator = msg.sender;
        run.funds = Funds(params.rewardPool, params.stake);
        run.terms = Terms(params.slashMissingReveal, params.slashRefused, params.stakeToken, params.slashMinority);
        emit RunCreated(runId, msg.sender, params, beaconOf(runId, 1, modelDigest));
        _receive(params.stakeToken, params.rewardPool);
    }

    // ------------------------------------------------------------------ stakes and rewards

    /// @notice Deposits `amount` of stake for `runId` (native: send it as `msg.value`;
    /// token: approve it first). A commit needs the run's stake, less what was slashed.
    /// @param runId the run
    /// @param amount what to add to the sender's stake
    function deposit(uint256 runId, uint128 amount) external payable nonReentrant {
        Run storage run = _runs[runId];
        if (run.config.numRounds == 0) revert UnknownRun(runId);
        Account storage account = _accounts[runId][msg.sender];
        uint128 stake = account.stake + amount;
        account.stake = stake;
        emit StakeDeposited(runId, msg.sender, amount, stake);
        _receive(run.terms.token, amount);
    }

    /// @notice Withdraws the sender's whole stake in `runId`, once nothing is pending: its
    /// last round is closed (its penalties, if any, are settled here first).
    /// @param runId the run
    function withdrawStake(uint256 runId) external nonReentrant {
        Run storage run = _runs[runId];
        RoundClock memory c = run.clock;
        Member storage m = _memberOf[runId][msg.sender];
        MemberRound memory last = m.current;
        if (_settle(runId, c, msg.sender, m, last)) m.current.stage = Stage.None;
        // a commitment in the current round can still be slashed (missing reveal, refused
        // update, minority attestation) until the round closes
        if (last.round == c.round && last.stage != Stage.None && !c.finalized) {
            Phase p = _phase(runId, c, last.round);
            if (p != Phase.Failed) revert StakeLocked(runId, msg.sender, last.round);
        }
        Account storage account = _accounts[runId][msg.sender];
        uint128 amount = account.stake;
        if (amount == 0) revert NothingToWithdraw(runId, msg.sender);
        account.stake = 0;
        emit StakeWithdrawn(runId, msg.sender, amount);
        _pay(run.terms.token, msg.sender, amount);
    }

    /// @notice Withdraws the rewards credited to the sender in `runId`.
    /// @param runId the run
    function withdrawRewards(uint256 runId) external nonReentrant {
        Account storage account = _accounts[runId][msg.sender];
        uint128 amount = account.rewards;
        if (amount == 0) revert NothingToWithdraw(runId, msg.sender);
        account.rewards = 0;
        emit RewardsWithdrawn(runId, msg.sender, amount);
        _pay(_runs[runId].terms.token, msg.sender, amount);
    }

    /// @notice Returns what the reward pool holds to the run's creator once the run is
    /// complete (rounding remainders, rounds nobody scored in, stake slashed late) or
    /// cancelled (the rounds' unspent shares too).
    /// @param runId the run
    function withdrawPool(uint256 runId) external nonReentrant {
        Run storage run = _runs[runId];
        if (msg.sender != run.creator) revert NotRunCreator(runId, msg.sender);
        RunConfig memory cfg = run.config;
        if (cfg.finalizedRounds < cfg.numRounds && !cfg.cancelled) {
            revert RunNotComplete(runId, cfg.finalizedRounds, cfg.numRounds);
        }
        uint128 amount = run.funds.pool;
        if (amount == 0) revert NothingToWithdraw(runId, msg.sender);
        run.funds.pool = 0;
        emit PoolWithdrawn(runId, msg.sender, amount);
        _pay(run.terms.token, msg.sender, amount);
    }

    /// @notice A run's stake, slashing amounts, token and what its pool holds now.
    /// @param runId the run
    /// @return v the incentives (all zero for an unknown run)
    function getIncentives(uint256 runId) external view returns (IncentivesView memory v) {
        Run storage run = _runs[runId];
        Terms memory t = run.terms;
        Funds memory f = run.funds;
        return IncentivesView(t.token, f.stake, f.pool, t.slashMissingReveal, t.slashRefused, t.slashMinority);
    }

    /// @notice A participant's stake and unwithdrawn rewards in a run.
    /// @param runId the run
    /// @param participant the address
    /// @return the account
    function getAccount(uint256 runId, address participant) external view returns (AccountView memory) {
        Account memory a = _accounts[runId][participant];
        return AccountView(a.stake, a.rewards);
    }

    /// @dev Takes `amount` in: native (must be exactly `msg.value`) or pulled in `token`.
    function _receive(address token, uint256 amount) private {
        if (token == address(0)) {
            if (msg.value != amount) revert WrongPayment(amount, msg.value);
        } else {
            if (msg.value != 0) revert WrongPayment(0, msg.value);
            if (amount != 0) IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        }
    }

    /// @dev Pays `amount` out, after every state change (checks-effects-interactions, and
    /// the callers are `nonReentrant`).
    function _pay(address token, address to, uint256 amount) private {
        if (token == address(0)) {
            (bool ok,) = payable(to).call{value: amount}("");
            if (!ok) revert TransferFailed(to, amount);
        } else {
            IERC20(token).safeTransfer(to, amount);
        }
    }

    /// @dev Moves up to `amount` of `participant`'s stake into the pool; returns what moved.
    function _slash(uint256 runId, address participant, uint128 amount) private returns (uint128 slashed) {
        if (amount == 0) return 0;
        Account storage account = _accounts[runId][participant];
        uint128 stake = account.stake;
        slashed = amount < stake ? amount : stake;
        if (slashed == 0) return 0;
        account.stake = stake - slashed;
        _runs[runId].funds.pool += slashed;
    }

    /// @notice Opens the run's first round or the round after a failed one (the
    /// attestation that finalizes a round opens the next itself). Anyone may call it: the
    /// model (last finalized CID) and the sampled set (from the round's beacon) are fixed
    /// by the chain, not by the caller. Its cost does not depend on the registry's size.
    /// @param runId the run
    /// @return round the opened round's id
    function openRound(uint256 runId) external returns (uint32 round) {
        Run storage run = _runs[runId];
        RunConfig memory cfg = run.config;
        if (cfg.numRounds == 0) revert UnknownRun(runId);
        if (cfg.finalizedRounds >= cfg.numRounds) revert RunComplete(runId, cfg.finalizedRounds);
        if (cfg.cancelled) revert RunIsCancelled(runId);
        RoundClock memory c = run.clock;
        uint32 previous = c.round;
        if (previous != 0) {
            Phase p = _phase(runId, c, previous);
            // a finalized round opened its successor (or completed the run): only a failed
            // one leaves the next to this call
            if (p != Phase.Failed) revert PreviousRoundOpen(runId, previous, p);
            _failedRounds[runId][previous >> 8] |= 1 << (previous & 0xff);
        }
        round = previous + 1;
        _open(runId, run, cfg, c, round, run.modelDigest, false);
    }

    /// @notice Ends a run that cannot go on: once `_CANCEL_AFTER_FAILED_ATTEMPTS` (3)
    /// attempts in a row have failed, the last one included (say, the global model is gone
    /// from every store, so nobody can train on it), anyone may cancel it. No round opens
    /// again; stakes are withdrawable as after any failed round, rewards already credited
    /// stay withdrawable, penalties already earned are still settled, and the creator may
    /// withdraw what the pool holds (`withdrawPool`).
    /// @param runId the run, whose current attempt has failed
    function cancelRun(uint256 runId) external {
        Run storage run = _runs[runId];
        RunConfig memory cfg = run.config;
        if (cfg.numRounds == 0) revert UnknownRun(runId);
        if (cfg.cancelled) revert RunIsCancelled(runId);
        RoundClock memory c = run.clock;
        // the failed-round bits of the attempts before the current one tell the streak
        for (uint32 back = 0; back < _CANCEL_AFTER_FAILED_ATTEMPTS; ++back) {
            if (_phase(runId, c, c.round - back) != Phase.Failed) {
                revert CancelTooEarly(runId, c.round, back, _CANCEL_AFTER_FAILED_ATTEMPTS);
            }
        }
        cfg.cancelled = true;
        run.config = cfg;
        emit RunCancelled(runId, c.round, cfg.finalizedRounds, run.funds.pool);
    }

    /// @dev Opens round `round` on model `modelDigest`: fixes the registry's size and epoch
    /// for the round's sampling, writes the clock and `cfg` (with the round's opening block)
    /// and announces the round. O(1): the sampled count follows from the registry's size.
    function _open(
        uint256 runId,
        Run storage run,
        RunConfig memory cfg,
        RoundClock memory previous,
        uint32 round,
        bytes32 modelDigest,
        bool previousDisputed
    ) private {
        bytes32 beacon = beaconOf(runId, round, modelDigest);
        Registry memory r = _registry;
        uint256 sampled = _sampledCount(r.size, cfg.sampleBps);
        bool committee = cfg.committeeSize != 0 && cfg.committeeSize < sampled;
        uint40 commitDeadline = uint40(block.timestamp) + uint40(cfg.commitDuration);
        run.clock = RoundClock({
            round: round,
            commitDeadline: commitDeadline,
            revealDuration: previous.revealDuration,
            attestDuration: previous.attestDuration,
            sampledCount: uint16(sampled),
            commitCount: 0,
            revealCount: 0,
            committeeCommits: 0,
            minReveals: cfg.minReveals,
            registryEpoch: r.epoch,
            finalized: false,
            previousDisputed: previousDisputed,
            partialSample: sampled < r.size,
            committee: committee
        });
        cfg.openedBlock = uint40(block.number);
        cfg.registrySize = r.size;
        run.config = cfg;
        emit RoundOpened(
            runId, round, beacon, uint32(sampled), commitDeadline, r.size, r.epoch,
            uint32(committee ? cfg.committeeSize : sampled)
        );
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
        Participant storage entry = _participants[msg.sender];
        if (!entry.active) revert NotRegistered(msg.sender);
        // an index (re)assigned after the round opened is not the one the round sampled
        if (entry.epoch > c.registryEpoch) revert NotSampled(runId, round, msg.sender);
        bool committeeMember = true;
        if (c.partialSample || c.committee) {
            RunConfig memory cfg = run.config;
            uint256 position = permutedPosition(beaconOf(runId, round, run.modelDigest), entry.index, cfg.registrySize);
            if (position >= c.sampledCount) revert NotSampled(runId, round, msg.sender);
            committeeMember = !c.committee || position < cfg.committeeSize;
        }
        Member storage m = _memberOf[runId][msg.sender];
        MemberRound memory last = m.current;
        if (last.round == round) revert AlreadyCommitted(runId, round, msg.sender);
        _settle(runId, c, msg.sender, m, last);
        uint128 required = run.funds.stake;
        if (required != 0) {
            uint128 stake = _accounts[runId][msg.sender].stake;
            if (stake < required) revert InsufficientStake(runId, msg.sender, stake, required);
        }
        m.current = MemberRound(round, Stage.Committed, committeeMember, bytes26(commitment));
        RoundClock storage clock = run.clock;
        clock.commitCount = c.commitCount + 1;
        // the majority is counted over the committee's commits, which no relayer can withhold
        if (committeeMember) clock.committeeCommits = c.committeeCommits + 1;
        emit Committed(runId, round, msg.sender, commitment);
    }

    /// @notice Reveals the committed update. The contract checks the preimage, the CID's
    /// form, the example count against the participant's registered bound, the privacy
    /// ledger (delta, monotone cumulative epsilon within budget), then records the reveal.
    /// @param runId the run
    /// @param round the round being revealed
    /// @param record the reveal record (layout above) committed to in this round
    function reveal(uint256 runId, uint32 round, bytes calldata record) external {
        Run storage run = _runs[runId];
        RoundClock memory c = _clockIn(runId, run, round, Phase.Reveal);
        if (record.length != _RECORD_BYTES) revert InvalidRevealRecord(record.length);
        _reveal(runId, round, run, c, msg.sender, record);
        run.clock = c;
    }

    /// @notice Reveals several participants' committed updates in one transaction: a
    /// relayer's batch, which spares each participant a transaction. Anyone may send it:
    /// a record must reproduce its participant's commitment, which binds the participant,
    /// so a relayer can publish only what each participant committed to and gave it. Each
    /// reveal is checked and recorded as `reveal` does; a participant that has already
    /// revealed in the round is skipped, so revealing on one's own never blocks a batch.
    /// @param runId the run
    /// @param round the round being revealed
    /// @param revealers the participants, one per record
    /// @param records their reveal records (layout above), back to back
    function revealMany(uint256 runId, uint32 round, address[] calldata revealers, bytes calldata records) external {
        if (records.length != revealers.length * _RECORD_BYTES) revert InvalidRevealRecord(records.length);
        Run storage run = _runs[runId];
        RoundClock memory c = _clockIn(runId, run, round, Phase.Reveal);
        for (uint256 i = 0; i < revealers.length; ++i) {
            if (_memberOf[runId][revealers[i]].ledger.revealedRound == round) continue;
            _reveal(runId, round, run, c, revealers[i], records[i * _RECORD_BYTES:(i + 1) * _RECORD_BYTES]);
        }
        run.clock = c;
    }

    /// @dev The run's clock, once round `round` is current and in phase `expected`.
    function _clockIn(uint256 runId, Run storage run, uint32 round, Phase expected)
        private
        view
        returns (RoundClock memory c)
    {
        c = run.clock;
        Phase p = _phase(runId, c, round);
        if (p != expected) revert UnexpectedPhase(runId, round, p, expected);
    }

    /// @dev Checks and records `participant`'s reveal of a 145-byte `record`, counting it
    /// in `c` (the caller writes the clock back).
    function _reveal(
        uint256 runId,
        uint32 round,
        Run storage run,
        RoundClock memory c,
        address participant,
        bytes calldata record
    ) private {
        Member storage m = _memberOf[runId][participant];
        MemberRound memory last = m.current;
        MemberLedger memory ledger = m.ledger;
        if (last.round != round || last.stage != Stage.Committed || ledger.revealedRound == round) {
            revert NotCommitted(runId, round, participant);
        }
        bytes32 computed = commitmentOf(runId, round, participant, record);
        if (bytes26(computed) != last.hash) revert CommitmentMismatch(runId, round, participant, last.hash, computed);
        _checkCid(record[0:36]);
        uint64 numExamples = uint64(bytes8(record[36:44]));
        if (numExamples == 0) revert ZeroExamples(runId, round, participant);
        uint64 maxExamples = _participants[participant].maxExamples;
        if (numExamples > maxExamples) {
            revert ExampleCountAboveBound(runId, round, participant, numExamples, maxExamples);
        }
        uint128 revealedDelta = uint128(bytes16(record[80:96]));
        uint128 revealedEpsilon = uint128(bytes16(record[96:112]));
        uint128 deltaWad = run.deltaWad;
        uint128 budgetWad = run.epsilonBudgetWad;
        if (revealedDelta != deltaWad) revert DeltaMismatch(runId, deltaWad, revealedDelta);
        if (revealedEpsilon > budgetWad) {
            revert PrivacyBudgetExceeded(runId, participant, revealedEpsilon, budgetWad);
        }
        uint112 epsilon = revealedEpsilon >= _EPSILON_SATURATED ? _EPSILON_SATURATED : uint112(revealedEpsilon);
        if (epsilon < ledger.epsilonWad) revert EpsilonDecreased(runId, participant, ledger.epsilonWad, epsilon);

        m.ledger = MemberLedger(round, ledger.rewardPoints + numExamples, ledger.penalties, epsilon);
        c.revealCount += 1;
        emit Revealed(runId, round, participant, record);
    }

    /// @notice Attests the aggregate of the round's valid reveals. Every revealer in the
    /// round's committee (every revealer, without one) may attest once; a CID finalizes
    /// the round when it has a strict majority of them, and at least `quorum`, votes: it
    /// becomes the run's next global model and the next round opens (unless the run is
    /// complete).
    /// @param runId the run
    /// @param round the round in its attest phase
    /// @param resultCid binary CIDv1 of the aggregate blob
    /// @param outcome the round's outcome: every revealer's score and verdict (layout above)
    function attest(uint256 runId, uint32 round, bytes calldata resultCid, bytes calldata outcome) external {
        address[] memory attester = new address[](1);
        attester[0] = msg.sender;
        _attest(runId, round, resultCid, outcome, attester);
    }

    /// @notice Records several attesters' votes for one (result CID, outcome) pair in one
    /// transaction: a relayer's batch, which spares each attester a transaction. Anyone may
    /// send it; each vote is its attester's signature of `voteDigest(runId, round,
    /// keccak256(resultCid ++ outcome))` and counts exactly as that attester's own `attest`.
    /// @param runId the run
    /// @param round the round in its attest phase
    /// @param resultCid binary CIDv1 of the aggregate blob
    /// @param outcome the round's outcome (layout above)
    /// @param signatures 65-byte secp256k1 signatures (r, s, v), back to back, one per attester
    function attestMany(
        uint256 runId,
        uint32 round,
        bytes calldata resultCid,
        bytes calldata outcome,
        bytes calldata signatures
    ) external {
        if (signatures.length == 0 || signatures.length % 65 != 0) revert InvalidSignatures(signatures.length);
        bytes32 digest = voteDigest(runId, round, keccak256(abi.encodePacked(resultCid, outcome)));
        address[] memory attesters = new address[](signatures.length / 65);
        for (uint256 i = 0; i < attesters.length; ++i) {
            bytes calldata sig = signatures[i * 65:(i + 1) * 65];
            attesters[i] = ECDSA.recover(digest, uint8(sig[64]), bytes32(sig[0:32]), bytes32(sig[32:64]));
        }
        _attest(runId, round, resultCid, outcome, attesters);
    }

    /// @dev Counts the votes of `attesters` for (resultCid, outcome) and finalizes the round
    /// when the pair reaches the votes it needs.
    function _attest(
        uint256 runId,
        uint32 round,
        bytes calldata resultCid,
        bytes calldata outcome,
        address[] memory attesters
    ) private {
        Run storage run = _runs[runId];
        RoundClock memory c = _clockIn(runId, run, round, Phase.Attest);
        _checkCid(resultCid);
        if (outcome.length != uint256(c.revealCount) * _OUTCOME_ENTRY_BYTES) {
            revert InvalidOutcome(runId, round, outcome.length, c.revealCount);
        }
        // the vote is for the model and the outcome together
        bytes32 cidHash = keccak256(abi.encodePacked(resultCid, outcome));
        for (uint256 i = 0; i < attesters.length; ++i) {
            address attester = attesters[i];
            Member storage m = _memberOf[runId][attester];
            MemberRound memory last = m.current;
            if (last.round != round || last.stage != Stage.Committed || m.ledger.revealedRound != round) {
                Stage stage = last.round == round ? _stageOf(last, m.ledger) : Stage.None;
                revert NotEligibleAttester(runId, round, attester, stage);
            }
            if (!last.committee) revert NotInCommittee(runId, round, attester);
            m.current = MemberRound(round, Stage.Attested, true, bytes26(cidHash));
            emit Attested(runId, round, attester, resultCid, outcome);
        }

        VoteTally memory v = run.votes;
        if (v.round != round) {
            // the first attestation: the committee's commits are final (the commit phase is over)
            v = VoteTally(round, 0, _votesNeeded(run.config.quorum, c.committeeCommits), false, bytes23(cidHash));
        }
        uint256 votes;
        if (v.cidHash == bytes23(cidHash)) {
            // at most the committee's commits (< 2^16): each eligible attester votes once
            votes = v.votes += uint16(attesters.length);
        } else {
            v.disputed = true;
            votes = _otherVotes[runId][round][cidHash] += attesters.length;
        }
        run.votes = v;

        if (votes >= v.needed) {
            RunConfig memory cfg = run.config;
            _settleOutcome(runId, round, run, cfg.numRounds - cfg.finalizedRounds, outcome);
            cfg.finalizedRounds += 1;
            cfg.modelCodec = uint8(resultCid[1]);
            bytes32 modelDigest = bytes32(resultCid[4:36]);
            run.modelDigest = modelDigest;
            if (v.disputed) _disputedResult[runId][round] = cidHash;
            emit RoundFinalized(runId, round, resultCid);
            if (cfg.finalizedRounds < cfg.numRounds) {
                _open(runId, run, cfg, c, round + 1, modelDigest, v.disputed);
            } else {
                run.config = cfg;
                run.clock.finalized = true;
            }
        }
    }

    /// @dev Applies a finalized outcome: slashes each refused update, then credits the
    /// round's budget (the pool shared over the rounds left, this one included) to the
    /// aggregated revealers in proportion to their scores. Checked here, once: entries in
    /// ascending address order (so none twice), each a revealer of the round, refused
    /// ones scored 0. The count was checked with every attestation.
    function _settleOutcome(uint256 runId, uint32 round, Run storage run, uint32 roundsLeft, bytes calldata outcome)
        private
    {
        uint256 n = outcome.length / _OUTCOME_ENTRY_BYTES;
        uint256 totalScore;
        uint160 previous;
        uint128 slashRefused = run.terms.slashRefused;
        for (uint256 i = 0; i < n; ++i) {
            bytes calldata entry = outcome[i * _OUTCOME_ENTRY_BYTES:(i + 1) * _OUTCOME_ENTRY_BYTES];
            address participant = address(bytes20(entry[0:20]));
            if (uint160(participant) <= previous) revert OutcomeNotSorted(runId, round, i);
            previous = uint160(participant);
            if (_memberOf[runId][participant].ledger.revealedRound != round) {
                revert OutcomeNotRevealer(runId, round, participant);
            }
            uint32 score = uint32(bytes4(entry[20:24]));
            if (uint8(entry[24]) != 0) {
                if (score != 0) revert OutcomeRefusedWithScore(runId, round, participant);
                _memberOf[runId][participant].ledger.penalties += 1;
                uint128 slashed = _slash(runId, participant, slashRefused);
                emit PenaltyRecorded(runId, round, participant, PenaltyReason.RefusedUpdate, slashed);
            } else {
                totalScore += score;
            }
        }
        Funds memory funds = run.funds;
        uint128 budget = funds.pool / roundsLeft;
        uint128 paid;
        if (totalScore != 0 && budget != 0) {
            for (uint256 i = 0; i < n; ++i) {
                bytes calldata entry = outcome[i * _OUTCOME_ENTRY_BYTES:(i + 1) * _OUTCOME_ENTRY_BYTES];
                uint32 score = uint32(bytes4(entry[20:24]));
                if (score == 0) continue;
                address participant = address(bytes20(entry[0:20]));
                // budget < 2^128 and score < 2^32: the product cannot overflow
                uint128 amount = uint128((uint256(budget) * score) / totalScore);
                _accounts[runId][participant].rewards += amount;
                paid += amount;
                emit RewardCredited(runId, round, participant, score, amount);
            }
        }
        funds.pool -= paid;
        run.funds.pool = funds.pool;
        emit RoundSettled(runId, round, budget, paid, funds.pool);
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

    /// @notice What an attester signs so that a relayer may cast its vote (`attestMany`):
    /// the EIP-191 signed-message hash of keccak256(abi.encode(keccak256("deai-flower
    /// vote"), chainId, contract, runId, round, voteKey)), bound to chain, contract, run
    /// and round, so a vote is never replayed elsewhere.
    /// @param runId the run
    /// @param round the round
    /// @param voteKey keccak256(resultCid ++ outcome), the pair voted for
    /// @return the digest the attester signs
    function voteDigest(uint256 runId, uint32 round, bytes32 voteKey) public view returns (bytes32) {
        return MessageHashUtils.toEthSignedMessageHash(
            keccak256(abi.encode(_VOTE_TAG, block.chainid, address(this), runId, round, voteKey))
        );
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

    /// @notice Whether `participant` is in the sampled set of the current round `round`:
    /// registered with an index assigned before the round opened, and at a position below
    /// `sampledCount` in the round's permutation of the registry.
    /// @param runId the run
    /// @param round the run's current round, not finalized
    /// @param participant the address
    /// @return whether it is sampled (and registered)
    function isSampled(uint256 runId, uint32 round, address participant) external view returns (bool) {
        (bool sampled,) = _sampledAndCommittee(runId, round, participant);
        return sampled;
    }

    /// @notice Whether `participant` is sampled in the current round `round` and in its
    /// committee (its revealers are the round's eligible attesters).
    /// @param runId the run
    /// @param round the run's current round, not finalized
    /// @param participant the address
    /// @return whether it may attest once it has revealed
    function inCommittee(uint256 runId, uint32 round, address participant) external view returns (bool) {
        (bool sampled, bool committee) = _sampledAndCommittee(runId, round, participant);
        return sampled && committee;
    }

    function _sampledAndCommittee(uint256 runId, uint32 round, address participant)
        private
        view
        returns (bool sampled, bool committee)
    {
        Run storage run = _runs[runId];
        RoundClock memory c = run.clock;
        if (round == 0 || round != c.round) revert RoundNotCurrent(runId, round, c.round);
        if (c.finalized) revert UnexpectedPhase(runId, round, Phase.Finalized, Phase.Commit);
        Participant storage entry = _participants[participant];
        if (!entry.active || entry.epoch > c.registryEpoch) return (false, false);
        if (!c.partialSample && !c.committee) return (true, true);
        RunConfig memory cfg = run.config;
        uint256 position = permutedPosition(beaconOf(runId, round, run.modelDigest), entry.index, cfg.registrySize);
        return (position < c.sampledCount, !c.committee || position < cfg.committeeSize);
    }

    /// @notice The position of registry index `index` in the permutation of `size` indices
    /// keyed by `beacon`: swap-or-not with 90 rounds (Ethereum's committee shuffle, with
    /// keccak256). Round r: pivot = keccak256(abi.encode(beacon, r)) mod size, flip =
    /// (pivot + size - index) mod size, and index becomes flip iff the lowest bit of
    /// keccak256(abi.encode(beacon, r, max(index, flip))) is 1. Each round is an involution,
    /// so the rounds in reverse order give the inverse (which index holds a position).
    /// @param beacon the round's beacon
    /// @param index a registry index, below `size`
    /// @param size the registry size when the round opened
    /// @return position the index's position; sampled iff below `sampledCount`
    function permutedPosition(bytes32 beacon, uint256 index, uint256 size) public pure returns (uint256 position) {
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
            revealDuration: run.clock.revealDuration,
            attestDuration: run.clock.attestDuration,
            sampleBps: cfg.sampleBps,
            quorum: cfg.quorum,
            minReveals: cfg.minReveals,
            committeeSize: cfg.committeeSize,
            epsilonBudgetWad: run.epsilonBudgetWad,
            deltaWad: run.deltaWad,
            beacon: _currentBeacon(runId, run, run.clock),
            modelCid: _cidOf(cfg.modelCodec, run.modelDigest),
            cancelled: cfg.cancelled
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
        uint64 revealDeadline = uint64(c.commitDeadline) + c.revealDuration;
        v.round = round;
        v.beacon = _currentBeacon(runId, run, c);
        v.commitDeadline = c.commitDeadline;
        v.revealDeadline = revealDeadline;
        v.attestDeadline = revealDeadline + c.attestDuration;
        v.sampledCount = c.sampledCount;
        v.commitCount = c.commitCount;
        v.revealCount = c.revealCount;
        v.finalized = c.finalized;
        v.registryEpoch = c.registryEpoch;
        v.committeeCommits = c.committeeCommits;
        RunConfig memory cfg = run.config;
        v.openedBlock = cfg.openedBlock;
        v.registrySize = cfg.registrySize;
        v.committeeSize = c.committee ? cfg.committeeSize : c.sampledCount;
        VoteTally memory votes = run.votes;
        if (votes.round == round) {
            (v.leadingVotes, v.disputed, v.votesNeeded) = (votes.votes, votes.disputed, votes.needed);
        } else {
            v.votesNeeded = _votesNeeded(cfg.quorum, c.committeeCommits);
        }
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

    /// @dev k = ceil(size * sampleBps / 10000), at most `_MAX_SAMPLED`.
    function _sampledCount(uint256 size, uint16 sampleBps) private pure returns (uint256 k) {
        k = (size * sampleBps + (_BPS - 1)) / _BPS;
        if (k > _MAX_SAMPLED) k = _MAX_SAMPLED;
    }

    /// @dev Votes one CID needs: a strict majority of the committee members that
    /// committed, and `quorum`.
    function _votesNeeded(uint16 quorum, uint16 committeeCommits) private pure returns (uint16) {
        uint16 majority = committeeCommits / 2 + 1;
        return majority > quorum ? majority : quorum;
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
            uint128 slashed = _slash(runId, participant, _runs[runId].terms.slashMissingReveal);
            emit PenaltyRecorded(runId, round, participant, PenaltyReason.MissingReveal, slashed);
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
            if (result != 0 && bytes26(result) != last.hash) {
                m.ledger.penalties += 1;
                uint128 slashed = _slash(runId, participant, _runs[runId].terms.slashMinority);
                emit PenaltyRecorded(runId, round, participant, PenaltyReason.MinorityAttestation, slashed);
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

// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IncentivesModule} from "./modules/IncentivesModule.sol";
import {RegistryModule} from "./modules/RegistryModule.sol";
import {Cid} from "./lib/Codecs.sol";
import {Sampling} from "./lib/Sampling.sol";

/// @title RoundsExtension
/// @notice The part of `CommitRevealRounds` that no round's calls need: the registry and
/// the admin role (`RegistryModule`), stakes and rewards (`IncentivesModule`), creating,
/// settling and cancelling runs, and the views. It holds no state of its own: a rounds
/// contract runs it on its own storage through its fallback (`delegatecall`), so its
/// events are the rounds contract's and its functions are called at the rounds contract's
/// address. Called directly, it reads and writes only its own, unused storage.
contract RoundsExtension is RegistryModule, IncentivesModule {
    /// @dev Longest phase (the clock's durations are 24-bit).
    uint256 private constant _MAX_DURATION = type(uint24).max;

    // ------------------------------------------------------------------ runs

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
        if (params.sampleBps == 0 || params.sampleBps > Sampling.BPS) revert InvalidSampleRate(params.sampleBps);
        if (
            params.commitDuration == 0 || params.revealDuration == 0 || params.attestDuration == 0
                || params.commitDuration > _MAX_DURATION || params.revealDuration > _MAX_DURATION
                || params.attestDuration > _MAX_DURATION
        ) {
            revert InvalidPhaseDurations(params.commitDuration, params.revealDuration, params.attestDuration);
        }
        if (
            params.slashMissingReveal > params.stake || params.slashRefused > params.stake
                || params.slashMinority > params.stake
        ) {
            revert InvalidSlashAmount(params.stake, params.slashMissingReveal, params.slashRefused, params.slashMinority);
        }
        if (params.attesterShareBps > Sampling.BPS) revert InvalidAttesterShare(params.attesterShareBps);
        bytes calldata cid = params.initialModelCid;
        Cid.check(cid);
        runId = ++_runCount;
        Run storage run = _runs[runId];
        run.config = RunConfig({
            numRounds: params.numRounds,
            finalizedRounds: 0,
            commitDuration: uint24(params.commitDuration),
            sampleBps: params.sampleBps,
            quorum: params.quorum,
            minReveals: params.minReveals,
            committeeSize: params.committeeSize,
            modelCodec: Cid.codec(cid),
            openedBlock: 0,
            registrySize: 0,
            cancelled: false,
            attesterShareBps: params.attesterShareBps
        });
        // the clock keeps the reveal and attest durations from the start (round 0: not opened)
        RoundClock memory c;
        c.revealDuration = uint24(params.revealDuration);
        c.attestDuration = uint24(params.attestDuration);
        c.minReveals = params.minReveals;
        run.clock = c;
        bytes32 modelDigest = Cid.digest(cid);
        run.modelDigest = modelDigest;
        run.epsilonBudgetWad = params.epsilonBudgetWad;
        run.deltaWad = params.deltaWad;
        run.creator = msg.sender;
        run.funds = Funds(params.rewardPool, params.stake);
        run.terms = Terms(params.slashMissingReveal, params.slashRefused, params.stakeToken, params.slashMinority);
        emit RunCreated(runId, msg.sender, params, _beaconOf(runId, 1, modelDigest));
        _receive(params.stakeToken, params.rewardPool);
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

    /// @notice Runs created so far; the last run's id.
    function runCount() external view returns (uint256) {
        return _runCount;
    }

    /// @notice The commitment a participant must send for a reveal record.
    /// @dev keccak256(abi.encode(chainId, contract, runId, round, participant, record)):
    /// bound to chain, contract, run, round and sender, so a commitment can neither be
    /// replayed elsewhere nor copied by another participant.
    /// @param runId the run
    /// @param round the round
    /// @param participant the committing address
    /// @param record the reveal record (`RevealRecord`, lib/Codecs.sol)
    /// @return the commitment hash
    function commitmentOf(uint256 runId, uint32 round, address participant, bytes calldata record)
        external
        view
        returns (bytes32)
    {
        return _commitmentOf(runId, round, participant, record);
    }

    /// @notice What an attester signs so that a relayer may cast its vote (`attestMany`):
    /// the EIP-191 signed-message hash of keccak256(abi.encode(keccak256("deai-flower
    /// vote"), chainId, contract, runId, round, voteKey)), bound to chain, contract, run
    /// and round, so a vote is never replayed elsewhere.
    /// @param runId the run
    /// @param round the round
    /// @param voteKey keccak256(resultCid ++ outcome), the pair voted for
    /// @return the digest the attester signs
    function voteDigest(uint256 runId, uint32 round, bytes32 voteKey) external view returns (bytes32) {
        return _signedDigest(_VOTE_TAG, runId, round, voteKey);
    }

    /// @notice What a participant signs so that a relayer may record its commitment
    /// (`commitMany`): the EIP-191 signed-message hash of keccak256(abi.encode(
    /// keccak256("deai-flower commit"), chainId, contract, runId, round, commitment)); a
    /// zero commitment is a decline.
    /// @param runId the run
    /// @param round the round
    /// @param commitment the commitment (`commitmentOf`), or zero to decline
    /// @return the digest the participant signs
    function commitDigest(uint256 runId, uint32 round, bytes32 commitment) external view returns (bytes32) {
        return _signedDigest(_COMMIT_TAG, runId, round, commitment);
    }

    /// @notice The sampling seed of round `round` of `runId` when its global model has the
    /// sha2-256 digest `modelDigest`: the model of every round after the first is the
    /// previous round's aggregate, a hash of the updates revealed there, so nobody chooses
    /// the seed (a revealer can only withhold, as with any commit-reveal beacon).
    /// @param runId the run
    /// @param round the round
    /// @param modelDigest the digest in the round's global model CID
    /// @return the beacon
    function beaconOf(uint256 runId, uint32 round, bytes32 modelDigest) external view returns (bytes32) {
        return _beaconOf(runId, round, modelDigest);
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
        uint256 position =
            Sampling.permutedPosition(_beaconOf(runId, round, run.modelDigest), entry.index, cfg.registrySize);
        return (position < Sampling.sampledCount(cfg.registrySize, cfg.sampleBps), !c.committee || position < cfg.committeeSize);
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
    function permutedPosition(bytes32 beacon, uint256 index, uint256 size) external pure returns (uint256 position) {
        return Sampling.permutedPosition(beacon, index, size);
    }

    /// @dev The beacon of the run's current round (of round 1 before it opens); zero once
    /// it is finalized (the model digest is then the next model's).
    function _currentBeacon(uint256 runId, Run storage run, RoundClock memory c) private view returns (bytes32) {
        if (c.finalized) return bytes32(0);
        return _beaconOf(runId, c.round == 0 ? 1 : c.round, run.modelDigest);
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
            modelCid: Cid.encode(cfg.modelCodec, run.modelDigest),
            cancelled: cfg.cancelled,
            attesterShareBps: cfg.attesterShareBps
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
        RunConfig memory cfg = run.config;
        uint32 sampled = uint32(Sampling.sampledCount(cfg.registrySize, cfg.sampleBps));
        v.sampledCount = sampled;
        v.declineCount = sampled - c.expectedCommits;
        v.commitCount = c.commitCount;
        v.revealCount = c.revealCount;
        v.finalized = c.finalized;
        v.registryEpoch = c.registryEpoch;
        v.committeeCommits = c.committeeCommits;
        v.openedBlock = cfg.openedBlock;
        v.registrySize = cfg.registrySize;
        v.committeeSize = c.committee ? cfg.committeeSize : sampled;
        VoteTally memory votes = run.votes;
        if (votes.round == round) {
            (v.leadingVotes, v.disputed, v.votesNeeded) = (votes.votes, votes.disputed, votes.needed);
        } else {
            v.votesNeeded = Sampling.votesNeeded(cfg.quorum, c.committeeCommits);
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
}

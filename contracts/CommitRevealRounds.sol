// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {RoundsStorage} from "./RoundsStorage.sol";
import {Cid, RevealRecord, RoundOutcome} from "./lib/Codecs.sol";
import {Sampling} from "./lib/Sampling.sol";

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
/// Commits, reveals and votes may also come in a relayer's batch (`commitMany`,
/// `revealMany`, `attestMany`, sent by anyone): a commitment is authenticated by its
/// participant's signature of `commitDigest`, a reveal by the commitment, which binds its
/// participant, and a vote by its attester's signature of `voteDigest`; each is recorded
/// as the participant's own call would be, so a relayer can withhold, never forge.
/// A sampled participant that will not take part in a round says so (`decline`, or a
/// signed zero commitment in a batch): the commit phase then no longer waits for it.
/// Penalties for missing reveals and minority attestations are settled lazily (on the
/// participant's next commit, or by anyone through `settle`).
/// Incentives: a run may require a stake (native currency, or the ERC-20 token the run
/// names) before a participant commits, and carries a reward pool funded when it is
/// created. The attestation that finalizes a round carries the round's outcome (each
/// revealer's contribution score and verdict, agreed by the same majority as the model):
/// the round's share of the pool is credited, the run's attester share of it equally to
/// the votes for the finalized pair and the rest in proportion to the scores, and each
/// refused update is slashed. Missing reveals and minority attestations are slashed when
/// they are settled. Slashed stake goes to the run's reward pool, so it is paid to later
/// contributors; what the pool holds once the run is complete goes back to its creator.
/// All payments are pulled (`withdrawRewards`, `withdrawStake`, `withdrawPool`).
/// Code layout: the state and the rules shared with the extension are in `RoundsStorage`;
/// the calls every round makes are here; every other function (the registry, creating,
/// settling and cancelling runs, stakes and rewards, the views) is `RoundsExtension`'s
/// code, which the fallback runs on this contract's storage (`delegatecall`). So this
/// contract has room to grow, and no round call pays for reaching another contract: the
/// registry words that commits, reveals and openings read are this contract's storage.
contract CommitRevealRounds is RoundsStorage {
    uint112 private constant _EPSILON_SATURATED = type(uint112).max;

    /// @notice The code of every function this contract does not define itself (see the
    /// contract's notes), fixed at deployment.
    address public immutable extension;

    /// @param extension_ a `RoundsExtension` deployment (stateless: any number of rounds
    /// contracts may share one)
    constructor(address extension_) {
        // a delegatecall to an address without code succeeds doing nothing: the fallback
        // would then accept any call, payments included
        if (extension_.code.length == 0) revert NoExtensionCode(extension_);
        admin = msg.sender;
        extension = extension_;
    }

    /// @notice Runs `RoundsExtension`'s function of the same selector on this contract's
    /// storage; a selector neither defines reverts. Payable for `createRun` and `deposit`;
    /// there is no `receive`: a payment without calldata comes here and reverts in the
    /// extension, which has no fallback (solc's warning about it is expected).
    fallback() external payable {
        address target = extension;
        assembly ("memory-safe") {
            let buffer := mload(0x40)
            calldatacopy(buffer, 0, calldatasize())
            let ok := delegatecall(gas(), target, buffer, calldatasize(), 0, 0)
            returndatacopy(buffer, 0, returndatasize())
            if iszero(ok) { revert(buffer, returndatasize()) }
            return(buffer, returndatasize())
        }
    }

    // ------------------------------------------------------------------ runs and rounds

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
        bool previousRecorded
    ) private {
        bytes32 beacon = _beaconOf(runId, round, modelDigest);
        Registry memory r = _registry;
        uint256 sampled = Sampling.sampledCount(r.size, cfg.sampleBps);
        bool committee = cfg.committeeSize != 0 && cfg.committeeSize < sampled;
        uint40 commitDeadline = uint40(block.timestamp) + uint40(cfg.commitDuration);
        run.clock = RoundClock({
            round: round,
            commitDeadline: commitDeadline,
            revealDuration: previous.revealDuration,
            attestDuration: previous.attestDuration,
            expectedCommits: uint16(sampled),
            commitCount: 0,
            revealCount: 0,
            committeeCommits: 0,
            minReveals: cfg.minReveals,
            registryEpoch: r.epoch,
            finalized: false,
            previousRecorded: previousRecorded,
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

    /// @notice Commits to an update: `commitment` must equal `_commitmentOf(...)` of the
    /// values revealed later. Settles the sender's previous round first. A zero
    /// `commitment` declines the round (as `decline`).
    /// @param runId the run
    /// @param round the open round
    /// @param commitment keccak256 of the ABI-encoded reveal preimage
    function commit(uint256 runId, uint32 round, bytes32 commitment) external {
        Run storage run = _runs[runId];
        RoundClock memory c = _clockIn(runId, run, round, Phase.Commit);
        _commit(runId, round, run, c, msg.sender, commitment);
        _writeCommitCounts(run, c);
    }

    /// @notice Declines the open round: a sampled participant that will not take part (its
    /// terms refuse the run, its budget is spent, it cannot serve) says so, and the commit
    /// phase no longer waits for it; it then cannot commit in this round. Not a penalty.
    /// Settles the sender's previous round first.
    /// @param runId the run
    /// @param round the open round
    function decline(uint256 runId, uint32 round) external {
        Run storage run = _runs[runId];
        RoundClock memory c = _clockIn(runId, run, round, Phase.Commit);
        _commit(runId, round, run, c, msg.sender, 0);
        _writeCommitCounts(run, c);
    }

    /// @notice Records several participants' commitments (or declines: a zero commitment)
    /// in one transaction: a relayer's batch, which spares each participant a transaction.
    /// Anyone may send it; each commitment is its participant's signature of
    /// `commitDigest(runId, round, commitment)` and is checked and recorded exactly as that
    /// participant's own `commit`. A participant that has committed or declined in the
    /// round already is skipped, so committing on one's own never blocks a batch.
    /// @param runId the run
    /// @param round the open round
    /// @param participants the committing participants, one per commitment
    /// @param commitments their commitments (zero: a decline)
    /// @param signatures 65-byte secp256k1 signatures (r, s, v), back to back, one per participant
    function commitMany(
        uint256 runId,
        uint32 round,
        address[] calldata participants,
        bytes32[] calldata commitments,
        bytes calldata signatures
    ) external {
        uint256 n = participants.length;
        if (n == 0 || commitments.length != n || signatures.length != n * 65) {
            revert InvalidSignatures(signatures.length);
        }
        Run storage run = _runs[runId];
        RoundClock memory c = _clockIn(runId, run, round, Phase.Commit);
        for (uint256 i = 0; i < n; ++i) {
            address participant = participants[i];
            if (_memberOf[runId][participant].current.round == round) continue;
            bytes calldata sig = signatures[i * 65:(i + 1) * 65];
            address signer = ECDSA.recover(
                _signedDigest(_COMMIT_TAG, runId, round, commitments[i]),
                uint8(sig[64]),
                bytes32(sig[0:32]),
                bytes32(sig[32:64])
            );
            if (signer != participant) revert CommitSignerMismatch(runId, round, participant, signer);
            _commit(runId, round, run, c, participant, commitments[i]);
        }
        _writeCommitCounts(run, c);
    }

    /// @dev Checks and records `participant`'s commitment (zero: its decline) in the open
    /// round, counting it in `c` (the caller writes the counts back).
    function _commit(
        uint256 runId,
        uint32 round,
        Run storage run,
        RoundClock memory c,
        address participant,
        bytes32 commitment
    ) private {
        Participant storage entry = _participants[participant];
        if (!entry.active) revert NotRegistered(participant);
        // an index (re)assigned after the round opened is not the one the round sampled
        if (entry.epoch > c.registryEpoch) revert NotSampled(runId, round, participant);
        bool committeeMember = true;
        if (c.partialSample || c.committee) {
            RunConfig memory cfg = run.config;
            uint256 position =
                Sampling.permutedPosition(_beaconOf(runId, round, run.modelDigest), entry.index, cfg.registrySize);
            if (position >= Sampling.sampledCount(cfg.registrySize, cfg.sampleBps)) {
                revert NotSampled(runId, round, participant);
            }
            committeeMember = !c.committee || position < cfg.committeeSize;
        }
        Member storage m = _memberOf[runId][participant];
        MemberRound memory last = m.current;
        if (last.round == round) revert AlreadyCommitted(runId, round, participant);
        _settle(runId, c, participant, m, last);
        if (commitment == 0) {
            // no record hashes to zero: a zero commitment could never be revealed
            m.current = MemberRound(round, Stage.Declined, false, 0);
            c.expectedCommits -= 1;
            emit Declined(runId, round, participant);
            return;
        }
        uint128 required = run.funds.stake;
        if (required != 0) {
            uint128 stake = _accounts[runId][participant].stake;
            if (stake < required) revert InsufficientStake(runId, participant, stake, required);
        }
        m.current = MemberRound(round, Stage.Committed, committeeMember, bytes26(commitment));
        c.commitCount += 1;
        // the majority is counted over the committee's commits, which no relayer can withhold
        if (committeeMember) c.committeeCommits += 1;
        emit Committed(runId, round, participant, commitment);
    }

    /// @dev Writes back what commits and declines change in the clock.
    function _writeCommitCounts(Run storage run, RoundClock memory c) private {
        RoundClock storage clock = run.clock;
        clock.commitCount = c.commitCount;
        clock.committeeCommits = c.committeeCommits;
        clock.expectedCommits = c.expectedCommits;
    }

    /// @notice Reveals the committed update. The contract checks the preimage, the CID's
    /// form, the example count against the participant's registered bound, the privacy
    /// ledger (delta, monotone cumulative epsilon within budget), then records the reveal.
    /// @param runId the run
    /// @param round the round being revealed
    /// @param record the reveal record (`RevealRecord`, lib/Codecs.sol) committed to in this round
    function reveal(uint256 runId, uint32 round, bytes calldata record) external {
        Run storage run = _runs[runId];
        RoundClock memory c = _clockIn(runId, run, round, Phase.Reveal);
        if (record.length != RevealRecord.BYTES) revert InvalidRevealRecord(record.length);
        _reveal(runId, round, run, c, msg.sender, record);
        run.clock.revealCount = c.revealCount; // a reveal changes no other field of the clock
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
    /// @param records their reveal records (`RevealRecord`), back to back
    function revealMany(uint256 runId, uint32 round, address[] calldata revealers, bytes calldata records) external {
        if (records.length != revealers.length * RevealRecord.BYTES) revert InvalidRevealRecord(records.length);
        Run storage run = _runs[runId];
        RoundClock memory c = _clockIn(runId, run, round, Phase.Reveal);
        for (uint256 i = 0; i < revealers.length; ++i) {
            if (_memberOf[runId][revealers[i]].ledger.revealedRound == round) continue;
            _reveal(runId, round, run, c, revealers[i], records[i * RevealRecord.BYTES:(i + 1) * RevealRecord.BYTES]);
        }
        run.clock.revealCount = c.revealCount;
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
    /// in `c.revealCount` (the caller writes the count back).
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
        bytes32 computed = _commitmentOf(runId, round, participant, record);
        if (bytes26(computed) != last.hash) revert CommitmentMismatch(runId, round, participant, last.hash, computed);
        Cid.check(RevealRecord.cid(record));
        uint64 numExamples = RevealRecord.numExamples(record);
        if (numExamples == 0) revert ZeroExamples(runId, round, participant);
        uint64 maxExamples = _participants[participant].maxExamples;
        if (numExamples > maxExamples) {
            revert ExampleCountAboveBound(runId, round, participant, numExamples, maxExamples);
        }
        uint128 revealedDelta = RevealRecord.deltaWad(record);
        uint128 revealedEpsilon = RevealRecord.epsilonWad(record);
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
    /// @param outcome the round's outcome: every revealer's score and verdict (`RoundOutcome`, lib/Codecs.sol)
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
    /// @param outcome the round's outcome (`RoundOutcome`)
    /// @param signatures 65-byte secp256k1 signatures (r, s, v), back to back, one per attester
    function attestMany(
        uint256 runId,
        uint32 round,
        bytes calldata resultCid,
        bytes calldata outcome,
        bytes calldata signatures
    ) external {
        if (signatures.length == 0 || signatures.length % 65 != 0) revert InvalidSignatures(signatures.length);
        bytes32 digest = _signedDigest(_VOTE_TAG, runId, round, keccak256(abi.encodePacked(resultCid, outcome)));
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
        Cid.check(resultCid);
        if (outcome.length != uint256(c.revealCount) * RoundOutcome.ENTRY_BYTES) {
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
            v = VoteTally(round, 0, Sampling.votesNeeded(run.config.quorum, c.committeeCommits), false, bytes23(cidHash));
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
            uint128 attesterPay = _settleOutcome(runId, round, run, cfg, outcome, votes);
            // when every vote for the pair came with this call, its voters are paid now;
            // otherwise each when its vote is settled, from the round's recorded result
            bool paidNow = votes == attesters.length;
            if (paidNow && attesterPay != 0) {
                for (uint256 i = 0; i < attesters.length; ++i) {
                    _payAttester(runId, round, attesters[i], attesterPay);
                }
            }
            bool recorded = v.disputed || (attesterPay != 0 && !paidNow);
            if (recorded) _results[runId][round] = RoundResult(bytes16(cidHash), paidNow ? 0 : attesterPay);
            cfg.finalizedRounds += 1;
            cfg.modelCodec = Cid.codec(resultCid);
            bytes32 modelDigest = Cid.digest(resultCid);
            run.modelDigest = modelDigest;
            emit RoundFinalized(runId, round, resultCid);
            if (cfg.finalizedRounds < cfg.numRounds) {
                _open(runId, run, cfg, c, round + 1, modelDigest, recorded);
            } else {
                run.config = cfg;
                run.clock.finalized = true;
            }
        }
    }

    /// @dev Applies a finalized outcome: slashes each refused update, then splits the
    /// round's budget (the pool shared over the rounds left, this one included): the run's
    /// attester share, equally over the `votes` for the finalized pair (returned: what each
    /// is owed, taken from the pool now), and the rest to the aggregated revealers in
    /// proportion to their scores. Checked here, once: entries in ascending address order
    /// (so none twice), each a revealer of the round, refused ones scored 0. The count was
    /// checked with every attestation.
    function _settleOutcome(
        uint256 runId,
        uint32 round,
        Run storage run,
        RunConfig memory cfg,
        bytes calldata outcome,
        uint256 votes
    ) private returns (uint128 attesterPay) {
        uint256 n = outcome.length / RoundOutcome.ENTRY_BYTES;
        uint256 totalScore;
        uint160 previous;
        uint128 slashRefused = run.terms.slashRefused;
        for (uint256 i = 0; i < n; ++i) {
            (address participant, uint32 score, uint8 verdict) = RoundOutcome.entry(outcome, i);
            if (uint160(participant) <= previous) revert OutcomeNotSorted(runId, round, i);
            previous = uint160(participant);
            if (_memberOf[runId][participant].ledger.revealedRound != round) {
                revert OutcomeNotRevealer(runId, round, participant);
            }
            if (verdict != 0) {
                if (score != 0) revert OutcomeRefusedWithScore(runId, round, participant);
                _memberOf[runId][participant].ledger.penalties += 1;
                uint128 slashed = _slash(runId, participant, slashRefused);
                emit PenaltyRecorded(runId, round, participant, PenaltyReason.RefusedUpdate, slashed);
            } else {
                totalScore += score;
            }
        }
        uint128 budget = run.funds.pool / (cfg.numRounds - cfg.finalizedRounds);
        // budget < 2^128, share <= 10^4, votes >= 1: no overflow, and attesterPay * votes <= budget
        attesterPay = uint128(uint256(budget) * cfg.attesterShareBps / Sampling.BPS / votes);
        uint128 scoreBudget = budget - uint128(attesterPay * votes);
        uint128 paid;
        if (totalScore != 0 && scoreBudget != 0) {
            for (uint256 i = 0; i < n; ++i) {
                (address participant, uint32 score,) = RoundOutcome.entry(outcome, i);
                if (score == 0) continue;
                // scoreBudget < 2^128 and score < 2^32: the product cannot overflow
                uint128 amount = uint128((uint256(scoreBudget) * score) / totalScore);
                _accounts[runId][participant].rewards += amount;
                paid += amount;
                emit RewardCredited(runId, round, participant, score, amount);
            }
        }
        uint128 pool = run.funds.pool - paid - uint128(attesterPay * votes);
        run.funds.pool = pool;
        emit RoundSettled(runId, round, budget, paid, attesterPay, uint32(votes), pool);
    }
}

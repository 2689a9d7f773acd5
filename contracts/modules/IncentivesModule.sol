// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {RoundsStorage} from "../RoundsStorage.sol";

/// @title IncentivesModule
/// @notice Stakes and rewards of a run (docs/protocol.md §2.7): deposits, the pulled
/// payments (`withdrawStake`, `withdrawRewards`, `withdrawPool`) and their views. The
/// round calls that credit and slash are `CommitRevealRounds`'s (`_settleOutcome`,
/// `_settle`); the rules they share are in `RoundsStorage`.
/// @dev Part of `RoundsExtension`, run on `CommitRevealRounds`'s storage.
abstract contract IncentivesModule is RoundsStorage, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

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

    /// @notice Withdraws the rewards credited to the sender in `runId`, after settling its
    /// last round (so pay owed for its vote there is credited first).
    /// @param runId the run
    function withdrawRewards(uint256 runId) external nonReentrant {
        Member storage m = _memberOf[runId][msg.sender];
        if (_settle(runId, _runs[runId].clock, msg.sender, m, m.current)) m.current.stage = Stage.None;
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

    /// @notice A participant's stake and unwithdrawn rewards in a run, the pay owed for a
    /// vote for a finalized pair not yet settled included.
    /// @param runId the run
    /// @param participant the address
    /// @return the account
    function getAccount(uint256 runId, address participant) external view returns (AccountView memory) {
        Account memory a = _accounts[runId][participant];
        MemberRound memory last = _memberOf[runId][participant].current;
        RoundClock memory c = _runs[runId].clock;
        if (last.stage == Stage.Attested && (last.round < c.round || c.finalized)) {
            RoundResult memory result = _results[runId][last.round];
            if (result.voteKey != 0 && result.voteKey == bytes16(last.hash)) a.rewards += result.attesterPay;
        }
        return AccountView(a.stake, a.rewards);
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

    /// @dev Takes `amount` in: native (must be exactly `msg.value`) or pulled in `token`.
    function _receive(address token, uint256 amount) internal {
        if (token == address(0)) {
            if (msg.value != amount) revert WrongPayment(amount, msg.value);
        } else {
            if (msg.value != 0) revert WrongPayment(0, msg.value);
            if (amount != 0) IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        }
    }
}

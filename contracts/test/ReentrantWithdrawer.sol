// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

interface IRounds {
    function deposit(uint256 runId, uint128 amount) external payable;
    function withdrawStake(uint256 runId) external;
    function withdrawRewards(uint256 runId) external;
    function commit(uint256 runId, uint32 round, bytes32 commitment) external;
    function reveal(uint256 runId, uint32 round, bytes calldata record) external;
    function attest(uint256 runId, uint32 round, bytes calldata resultCid, bytes calldata outcome) external;
}

/// @title ReentrantWithdrawer
/// @notice Tests only: a participant contract whose `receive` calls back into the rounds
/// contract to withdraw again while a payment to it is in flight.
contract ReentrantWithdrawer {
    IRounds public immutable rounds;
    /// @notice Re-entries attempted, and how many the rounds contract accepted.
    uint256 public attempts;
    uint256 public accepted;
    bytes4 private _reenter; // selector to call again from `receive`; 0: none

    constructor(IRounds rounds_) {
        rounds = rounds_;
    }

    /// @notice Forwards a call from the test (as this contract) to the rounds contract.
    /// @param data the calldata
    function act(bytes calldata data) external payable {
        (bool ok, bytes memory ret) = address(rounds).call{value: msg.value}(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 0x20), mload(ret))
            }
        }
    }

    /// @notice Which withdrawal `receive` repeats: 1 stake, 2 rewards.
    /// @param which the withdrawal
    function arm(uint8 which) external {
        _reenter = which == 1 ? IRounds.withdrawStake.selector : IRounds.withdrawRewards.selector;
    }

    receive() external payable {
        if (_reenter == bytes4(0)) return;
        attempts += 1;
        // the same run id as the withdrawal being paid (the test uses run 1)
        (bool ok,) = address(rounds).call(abi.encodeWithSelector(_reenter, uint256(1)));
        if (ok) accepted += 1;
    }
}

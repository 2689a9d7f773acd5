// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title TestToken
/// @notice Tests only: an ERC-20 anyone can mint, to stake and fund runs in a token.
contract TestToken is ERC20 {
    constructor() ERC20("deai-flower test token", "DFT") {}

    /// @notice Mints `amount` to `to` (tests only: no access control).
    /// @param to the receiver
    /// @param amount the amount
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}

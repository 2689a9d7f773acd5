"""The contract suite of ``tests/unit/chain/test_contract.py``, unchanged, on a real anvil.

Every ``test_*`` function of the unit module is collected here as well; the
``chain_node`` fixture of this folder's conftest puts their ``deployment`` on anvil, so
every rule and revert path is also checked through JSON-RPC, with anvil's own gas
accounting, nonces and time travel.
"""

from __future__ import annotations

from unit.chain import test_contract as _suite

globals().update({name: test for name, test in vars(_suite).items() if name.startswith("test_")})

# Protocol 0.7's rules (attester pay, commitMany, decline), on anvil too.
from unit.chain import test_contract_07 as _v07  # noqa: E402

globals().update({name: item for name, item in vars(_v07).items() if name.startswith("test_")})

# The relayer's attacks on the contract (revealMany, attestMany), on anvil too; the
# attack through the apps stays on the embedded chain.
from adversarial import test_relayed_batches as _relayed  # noqa: E402

_THROUGH_THE_APPS = "test_tampered_hand_overs_are_left_out_and_the_round_goes_on"
globals().update({name: item for name, item in vars(_relayed).items()
                  if name == "five" or (name.startswith("test_") and name != _THROUGH_THE_APPS)})  # fmt: skip

"""The contract suite of ``tests/unit/chain/test_contract.py``, unchanged, on a real anvil.

Every ``test_*`` function of the unit module is collected here as well; the
``chain_node`` fixture of this folder's conftest puts their ``deployment`` on anvil, so
every rule and revert path is also checked through JSON-RPC, with anvil's own gas
accounting, nonces and time travel.
"""

from __future__ import annotations

from unit.chain import test_contract as _suite

globals().update({name: test for name, test in vars(_suite).items() if name.startswith("test_")})

"""The chain layer: the round contract's artifact, connections, keys and encodings.

Names are imported on first use (PEP 562): a silo's ClientApp process that only signs
(an identity query) reads its keystore through :mod:`.keys` without loading web3.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from ..protocol.encoding import DpParams, beacon_of, commitment_of, from_wad, is_sampled, to_wad
    from .contract import RoundsContract, TxResult
    from .keys import keystore_key, simulation_key
    from .node import ChainNode, connect_embedded, connect_rpc

_WHERE = {
    "RoundsContract": ".contract", "TxResult": ".contract",
    "keystore_key": ".keys", "simulation_key": ".keys",
    "ChainNode": ".node", "connect_embedded": ".node", "connect_rpc": ".node",
    "DpParams": "..protocol.encoding", "beacon_of": "..protocol.encoding", "commitment_of": "..protocol.encoding",
    "from_wad": "..protocol.encoding", "is_sampled": "..protocol.encoding", "to_wad": "..protocol.encoding",
}  # fmt: skip

__all__ = sorted(_WHERE)

__getattr__ = lazy_exports(globals(), _WHERE)

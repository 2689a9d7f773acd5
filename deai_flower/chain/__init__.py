"""The chain layer: the round contract's artifact, connections, keys and encodings."""

from .contract import RoundsContract, TxResult
from .keys import keystore_key, simulation_key
from .node import ChainNode, connect_embedded, connect_rpc
from ..protocol.encoding import DpParams, beacon_of, commitment_of, from_wad, is_sampled, to_wad

__all__ = [
    "ChainNode",
    "DpParams",
    "RoundsContract",
    "TxResult",
    "beacon_of",
    "commitment_of",
    "connect_embedded",
    "connect_rpc",
    "from_wad",
    "is_sampled",
    "keystore_key",
    "simulation_key",
    "to_wad",
]

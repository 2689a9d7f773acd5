"""The run a message is about: its locator.

Every message from the coordinator names the run it is about (:class:`RunLocator`):
the contract, the run id, and where the coordinator reaches the chain (a JSON-RPC URL,
or ``embedded://…`` within one process) and the store (``local:DIR`` or
``ipfs:MULTIADDR``). A deployed participant keeps only the first two and reaches chain
and store through its own endpoints; a simulated one uses all four.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eth_utils import is_address, to_checksum_address

from ..errors import ProtocolError

__all__ = ["RunLocator"]


@dataclass(frozen=True)
class RunLocator:
    """Which run a message is about, and where its sender reaches chain and store."""

    contract: str
    run_id: int
    chain_url: str
    store: str

    def __post_init__(self) -> None:
        if not is_address(self.contract):
            raise ProtocolError(f"message names contract {self.contract!r}, which is not an address")
        object.__setattr__(self, "contract", to_checksum_address(self.contract))
        if self.run_id < 1:
            raise ProtocolError(f"message names run id {self.run_id} (runs are numbered from 1)")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RunLocator:
        """The locator a message's config record carries (``contract``, ``run-id``,
        ``chain-url``, ``store``)."""
        missing = [key for key in ("contract", "run-id", "chain-url", "store") if key not in config]
        if missing:
            raise ProtocolError(f"message config lacks {', '.join(missing)}: it does not say which run it is about")
        try:
            run_id = int(config["run-id"])
        except (TypeError, ValueError):
            raise ProtocolError(f"message config run-id {config['run-id']!r} is not an integer") from None
        return cls(contract=str(config["contract"]), run_id=run_id, chain_url=str(config["chain-url"]),
                   store=str(config["store"]))  # fmt: skip

    def to_config(self) -> dict[str, Any]:
        """The locator's entries for a message's config record."""
        return {"contract": self.contract, "run-id": self.run_id, "chain-url": self.chain_url, "store": self.store}

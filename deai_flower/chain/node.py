"""Connections to an EVM: the embedded in-process chain or any JSON-RPC node.

Both give a :class:`ChainNode` with the same interface; only funding of fresh keys
and fast-forwarding the clock differ (a simulation may skip time, a real node waits).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from web3 import Web3
from web3.exceptions import Web3Exception

from ..errors import ChainError, ChainUnavailableError

#: Ether given to each simulated participant key on development chains.
DEV_FUNDING_WEI = 10**20
#: Seconds a fee quote serves transactions before it is read again.
FEE_QUOTE_TTL_S = 6.0


@dataclass
class ChainNode:
    """A connected chain: ``kind`` is ``embedded`` or ``rpc``."""

    w3: Web3
    kind: str
    url: str
    _tester: Any = field(default=None, repr=False)
    _chain_id: int | None = field(default=None, repr=False)
    _fee_quote: tuple[float, dict[str, int]] | None = field(default=None, repr=False)

    @property
    def chain_id(self) -> int:
        """The chain's id, read once: a connection's chain does not change."""
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def fee_fields(self) -> dict[str, int]:
        """EIP-1559 fee fields for a transaction, by web3's own rule (max fee = twice the
        latest base fee plus the node's suggested tip), quoted at most every
        ``FEE_QUOTE_TTL_S`` seconds instead of two extra requests per transaction."""
        now = time.monotonic()
        if self._fee_quote is None or now - self._fee_quote[0] > FEE_QUOTE_TTL_S:
            try:
                tip = int(self.w3.eth.max_priority_fee)
                base = int(self.w3.eth.get_block("latest").get("baseFeePerGas") or 0)
            except (Web3Exception, OSError) as exc:
                raise ChainError(f"reading the chain's fees failed: {exc}") from exc
            self._fee_quote = (now, {"maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * base + tip})
        return dict(self._fee_quote[1])

    def describe(self) -> dict[str, Any]:
        """What ``results.json`` records about the chain."""
        return {"kind": self.kind, "url": self.url, "chain_id": self.chain_id}

    def now(self) -> int:
        """The timestamp the next block will carry at the earliest."""
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def fund(self, addresses: list[str], *, wei: int = DEV_FUNDING_WEI) -> None:
        """Give development ether to fresh keys from the node's first unlocked account.

        Works on the embedded chain and on development nodes (anvil, hardhat); on a
        public network keys must be funded by their owners.
        """
        try:
            sources = self.w3.eth.accounts
        except Web3Exception as exc:
            raise ChainError(f"cannot list the node's unlocked accounts to fund keys: {exc}") from exc
        if not sources:
            raise ChainError("the chain node has no unlocked account to fund participant keys; fund them yourself")
        source = sources[0]
        hashes = []
        for address in addresses:
            if self.w3.eth.get_balance(address) >= wei // 2:
                continue
            hashes.append(self.w3.eth.send_transaction({"from": source, "to": address, "value": wei}))
        for tx_hash in hashes:
            self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)

    def advance_to(self, timestamp: int, *, timeout: float) -> None:
        """Make the chain's clock reach ``timestamp``.

        The embedded chain and development nodes jump there (simulated time); other
        nodes are waited for, at most ``timeout`` seconds of wall time.
        """
        if self.now() >= timestamp:
            return
        if self._tester is not None:
            self._tester.time_travel(timestamp)
            self._tester.mine_blocks(1)  # calls then see the new time, as on a real node
            return
        try:
            self.w3.provider.make_request("evm_setNextBlockTimestamp", [timestamp])
            self.w3.provider.make_request("evm_mine", [])
            if self.now() >= timestamp:
                return
        except Exception:  # noqa: BLE001 - a production node refuses dev methods: wait instead
            pass
        deadline = time.monotonic() + timeout
        while self.now() < timestamp:
            if time.monotonic() > deadline:
                raise ChainError(f"chain clock did not reach {timestamp} within {timeout:.0f}s")
            time.sleep(1.0)


def connect_embedded() -> ChainNode:
    """A fresh in-process EVM (py-evm through web3's tester provider)."""
    from eth_tester import EthereumTester, PyEVMBackend
    from web3.providers.eth_tester import EthereumTesterProvider

    tester = EthereumTester(PyEVMBackend())
    w3 = Web3(EthereumTesterProvider(tester))
    return ChainNode(w3=w3, kind="embedded", url="embedded://py-evm", _tester=tester)


def connect_rpc(url: str, *, timeout: float = 30.0) -> ChainNode:
    """A JSON-RPC node at ``url`` (http(s)://...), checked to answer."""
    if not url.startswith(("http://", "https://")):
        raise ChainUnavailableError(f"chain RPC URL must start with http:// or https:// (got {url!r})")
    # eth_chainId is cached: web3 re-reads it to validate every transaction otherwise
    provider = Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}, cache_allowed_requests=True,
                                 cacheable_requests={"eth_chainId"})  # fmt: skip
    w3 = Web3(provider)
    try:
        w3.eth.chain_id  # noqa: B018 - a cheap call that proves the node answers
    except Exception as exc:  # requests/OS errors surface in many shapes
        hint = "is the node running? A local one: npx --yes @foundry-rs/anvil"
        try:
            port = urlsplit(url).port if url.startswith("http://") else None
        except ValueError:  # a malformed port: the hint stays generic
            port = None
        hint += f" --port {port}" if port else ""
        raise ChainUnavailableError(f"chain node at {url} is unreachable ({exc.__class__.__name__}); {hint}") from exc
    return ChainNode(w3=w3, kind="rpc", url=url)

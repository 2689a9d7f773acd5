"""The embedded chain: py-evm through eth-tester, with lookups that do not walk the chain.

eth-tester finds a transaction by walking back from the head, block by block, and
answers ``eth_getLogs`` by reading every block of the range and the receipt of each of
its transactions (finding each of those by that walk again). The embedded chain mines a
block per transaction, so a receipt cost time in proportion to the blocks mined, and a
log query from block 0 their square: 1,000 registered silos (2,000 set-up blocks) kept
the coordinator's first log query running for minutes.

So the embedded chain keeps two indexes, both answering exactly what eth-tester would:

* **Transactions:** py-evm's own database maps a mined transaction's hash to its block
  and position (:class:`IndexedPyEVMBackend`); receipts and transactions are found there.
* **Logs:** :class:`LogIndex` holds every mined block's logs, exactly as eth-tester
  answers a query of that one block, filed by address and topic prefix; a query is
  answered from the smallest list that covers it, filtered as eth-tester filters. It
  catches up with the chain before every query, and drops blocks that a snapshot revert
  took out of the canonical chain. Queries of a shape the index does not know (a block
  hash, ``pending``, nested topic alternatives, a range past the head) go to eth-tester,
  so their answers and errors are its own.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Mapping
from typing import Any

from eth.exceptions import HeaderNotFound
from eth.exceptions import TransactionNotFound as EvmTransactionNotFound
from eth.vm.spoof import SpoofTransaction
from eth_tester import PyEVMBackend
from eth_tester.backends.pyevm.main import _get_transaction_by_hash
from eth_tester.backends.pyevm.serializers import serialize_transaction, serialize_transaction_receipt

_HEX32 = re.compile(r"^0x[0-9a-fA-F]{64}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_BLOCK_NUMBER = re.compile(r"^0x[0-9a-fA-F]+$")
#: The filter keys the index answers; any other key (``blockHash``, ...) goes to eth-tester.
_INDEXED_KEYS = frozenset({"fromBlock", "toBlock", "address", "topics"})


#: py-evm's default estimator (``binary_gas_search_intrinsic_tolerance``) stops once the
#: range it searches is narrower than this.
_ESTIMATE_TOLERANCE = 21_000


def _consumed(state: Any, transaction: Any) -> int | None:
    """The gas ``transaction`` consumes (before refunds) run on ``state``, or ``None`` if it fails."""
    snapshot = state.snapshot()
    try:
        computation = state.apply_transaction(transaction)
        return None if computation.is_error else int(transaction.gas - computation.get_gas_remaining())
    finally:
        state.revert(snapshot)


def estimate_gas(state: Any, transaction: Any) -> int:
    """py-evm's gas estimate, the same number, from about 4 EVM runs instead of 7 to 12.

    py-evm bisects between the intrinsic gas and the block's gas limit, running the EVM at
    every midpoint until the range is narrower than 21,000. Here the search visits the same
    midpoints but runs only those whose outcome is not known yet: a run that succeeds
    consumes ``c``, so any limit below ``c`` fails, and once a limit succeeds every larger
    one does. One extra run at ``c`` itself then settles nearly every midpoint. This holds
    for code whose path depends on its gas only by running out (the project's contract
    never reads ``gasleft``); the first midpoint runs as in py-evm, so a sender who cannot
    pay for that much gas is refused as before.
    """
    if not hasattr(transaction, "sender"):
        raise TypeError("Transaction is missing attribute sender.")
    if _consumed(state, SpoofTransaction(transaction, gas=transaction.intrinsic_gas, gas_price=0)) is not None:
        return int(transaction.intrinsic_gas)
    snapshot = state.snapshot()
    try:
        computation = state.apply_transaction(SpoofTransaction(transaction, gas=state.gas_limit, gas_price=0))
        if computation.is_error:
            raise computation.error
    finally:
        state.revert(snapshot)
    viable, out_of_gas = int(state.gas_limit), int(transaction.intrinsic_gas)
    known_viable, known_short = viable, out_of_gas  # limits known to succeed and fail
    probed = False
    while viable - out_of_gas > _ESTIMATE_TOLERANCE:
        midpoint = (viable + out_of_gas) // 2
        if midpoint >= known_viable:
            succeeds = True
        elif midpoint <= known_short:
            succeeds = False
        else:
            consumed = _consumed(state, SpoofTransaction(transaction, gas=midpoint))
            succeeds = consumed is not None
            if consumed is not None and not probed:
                probed = True
                known_short = max(known_short, consumed - 1)
                if consumed < midpoint:  # does it succeed with exactly what it consumes?
                    if _consumed(state, SpoofTransaction(transaction, gas=consumed)) is not None:
                        known_viable = consumed
                    else:
                        known_short = consumed
        if succeeds:
            viable = midpoint
            known_viable = min(known_viable, midpoint)
        else:
            out_of_gas = midpoint
            known_short = max(known_short, midpoint)
    return viable


class IndexedPyEVMBackend(PyEVMBackend):
    """eth-tester's py-evm backend, finding mined transactions through py-evm's hash index
    instead of walking back from the head, and estimating gas with :func:`estimate_gas`."""

    def reset_to_genesis(self, *args: Any, **kwargs: Any) -> None:
        super().reset_to_genesis(*args, **kwargs)
        # on the chain's class (this backend's own), so the chains a revert builds keep it
        type(self.chain).gas_estimator = staticmethod(estimate_gas)
        self.chain.gas_estimator = estimate_gas

    def _locate(self, transaction_hash: bytes) -> tuple[Any, Any, int]:
        chain = self.chain
        pending = chain.get_block()
        for index, transaction in enumerate(pending.transactions):  # eth-tester looks at the pending block first
            if transaction.hash == transaction_hash:
                return pending, transaction, index
        try:
            number, index = chain.chaindb.get_transaction_index(transaction_hash)
            block = chain.get_canonical_block_by_number(number)
        except (EvmTransactionNotFound, HeaderNotFound):
            number, block = -1, None
        # A snapshot revert may leave a stale entry behind; then eth-tester's own walk decides.
        if block is not None and number < pending.number and index < len(block.transactions) \
                and block.transactions[index].hash == transaction_hash:  # fmt: skip
            return block, block.transactions[index], index
        return _get_transaction_by_hash(chain, transaction_hash)  # raises eth-tester's TransactionNotFound

    def get_transaction_by_hash(self, transaction_hash: bytes) -> Any:
        block, transaction, index = self._locate(transaction_hash)
        is_pending = block.number == self.chain.get_block().number
        return serialize_transaction(block, transaction, index, is_pending)

    def get_transaction_receipt(self, transaction_hash: bytes) -> Any:
        block, transaction, index = self._locate(transaction_hash)
        is_pending = block.number == self.chain.get_block().number
        receipts = block.get_receipts(self.chain.chaindb)
        return serialize_transaction_receipt(block, receipts, transaction, index, is_pending, self.chain.get_vm())


class _Log:
    """One indexed log: its place in chain order, its block, and its wire form."""

    __slots__ = ("block", "seq", "wire", "address", "topics")

    def __init__(self, seq: int, block: int, wire: dict[str, Any]) -> None:
        self.seq = seq
        self.block = block
        self.wire = wire
        self.address = str(wire["address"]).lower()
        self.topics = tuple(str(t).lower() for t in wire["topics"])


class _Posting:
    """The logs filed under one key, in chain order, with their block numbers for bisecting."""

    __slots__ = ("blocks", "logs")

    def __init__(self) -> None:
        self.blocks: list[int] = []
        self.logs: list[_Log] = []

    def between(self, low: int, high: int) -> list[_Log]:
        return self.logs[bisect.bisect_left(self.blocks, low) : bisect.bisect_right(self.blocks, high)]


class LogIndex:
    """Every mined block's logs, filed by address and topic prefix.

    ``block_logs(n)`` gives block ``n``'s logs in wire form as eth-tester answers a query
    of that block alone (called once a block); ``chain`` is the py-evm chain, read for
    the head and block hashes. Each log is filed under ``(address, topic0, ..., topic_k)``
    and ``(None, topic0, ..., topic_k)`` for every prefix, ``k = -1 .. len(topics) - 1``,
    so a query reads only the logs that share its address and its leading topics.
    """

    def __init__(self, chain: Callable[[], Any], block_logs: Callable[[int], list[dict[str, Any]]]) -> None:
        self._chain = chain
        self._block_logs = block_logs
        self._hashes: list[bytes] = []  # of the blocks indexed: 0 .. len - 1
        self._logs: list[list[_Log]] = []  # per block indexed
        self._postings: dict[tuple[Any, ...], _Posting] = {}
        self._seq = 0

    # ------------------------------------------------------------------ keeping up

    def _latest(self) -> int:
        """The latest mined block's number (the head block is the pending one)."""
        return int(self._chain().get_block().number) - 1

    def sync(self) -> int:
        """Index the blocks mined since the last call (after dropping any a revert took out
        of the canonical chain); return the latest block's number."""
        chaindb = self._chain().chaindb
        latest = self._latest()
        while self._hashes and (len(self._hashes) - 1 > latest
                                or chaindb.get_canonical_block_hash(len(self._hashes) - 1) != self._hashes[-1]):  # fmt: skip
            self._drop_last()
        for number in range(len(self._hashes), latest + 1):
            header = chaindb.get_canonical_block_header_by_number(number)
            # a block whose bloom is empty has no logs: not read
            wires = self._block_logs(number) if header.bloom else []
            self._add(number, header.hash, wires)
        return latest

    def _add(self, number: int, block_hash: bytes, wires: list[dict[str, Any]]) -> None:
        logs = []
        for wire in wires:
            log = _Log(self._seq, number, wire)
            self._seq += 1
            logs.append(log)
            for key in self._keys(log):
                posting = self._postings.get(key)
                if posting is None:
                    posting = self._postings[key] = _Posting()
                posting.blocks.append(number)
                posting.logs.append(log)
        self._hashes.append(block_hash)
        self._logs.append(logs)

    def _drop_last(self) -> None:
        self._hashes.pop()
        for log in reversed(self._logs.pop()):  # the last block's logs are the last of every posting
            for key in self._keys(log):
                posting = self._postings[key]
                posting.blocks.pop()
                posting.logs.pop()
                if not posting.logs:
                    del self._postings[key]

    @staticmethod
    def _keys(log: _Log) -> list[tuple[Any, ...]]:
        return [(owner, *log.topics[:k]) for owner in (log.address, None) for k in range(len(log.topics) + 1)]

    # ------------------------------------------------------------------ answering

    def get_logs(self, query: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """The answer to an ``eth_getLogs`` filter, or ``None`` for a filter this index
        leaves to eth-tester."""
        if not isinstance(query, Mapping) or not set(query) <= _INDEXED_KEYS:
            return None
        addresses = _addresses(query.get("address"))
        topics = _topics(query.get("topics"))
        if addresses is _UNKNOWN or topics is _UNKNOWN:
            return None
        latest = self.sync()
        low, high = _bound(query.get("fromBlock"), latest), _bound(query.get("toBlock"), latest)
        if low is None or high is None or high > latest:  # eth-tester answers (or refuses) those itself
            return None
        if low > high:
            return []
        assert isinstance(topics, tuple)
        prefix: list[str] = []
        for topic in topics:
            if topic is None:
                break
            prefix.append(topic)
        found: dict[int, _Log] = {}
        for owner in addresses if addresses is not None else (None,):
            posting = self._postings.get((owner, *prefix))
            if posting is None:
                continue
            for log in posting.between(low, high):
                if len(log.topics) >= len(topics) and all(t is None or t == lt for t, lt in zip(topics, log.topics)):
                    found[log.seq] = log
        return [{**found[seq].wire, "topics": list(found[seq].wire["topics"])} for seq in sorted(found)]


_UNKNOWN: Any = object()


def _addresses(value: Any) -> tuple[str, ...] | None:
    """A filter's addresses, lowercase (``None``: any address; :data:`_UNKNOWN`: not indexed)."""
    if value is None:
        return None
    # eth-tester decides what a single address (its formatter fails on one), an empty list
    # or a malformed address mean
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and _ADDRESS.match(v) for v in value):
        return _UNKNOWN
    return tuple(dict.fromkeys(v.lower() for v in value))


def _topics(value: Any) -> tuple[str | None, ...] | Any:
    """A flat topic filter, lowercase (:data:`_UNKNOWN` for nested alternatives or malformed topics)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(t is None or (isinstance(t, str) and _HEX32.match(t)) for t in value):
        return _UNKNOWN
    return tuple(t.lower() if t is not None else None for t in value)


def _bound(value: Any, latest: int) -> int | None:
    """A block bound as a number; ``None`` for a tag this index leaves to eth-tester."""
    if value is None or value == "latest":
        return latest
    if isinstance(value, str) and _BLOCK_NUMBER.match(value):
        return int(value, 16)
    return None

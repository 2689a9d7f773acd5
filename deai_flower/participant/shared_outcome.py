"""A round's outcome computed once per process, however many of its attesters live there.

A simulation plays every committee member in one process, and each computes the round's
outcome (the aggregate and the scores, protocol §2.5) from the same judged reveals and
the same models: a pure function of content, whose bits do not depend on who computes it.
At 100 clients and a committee of 25, the shares score's sums were most of the attest
phase, computed 25 times over. Here the first attester to ask computes it, and an
attester asking with byte-identical inputs (while it is computed, or after) gets that
same outcome. A deployed silo is a process of its own: its memo serves only itself.

The key is a SHA-256 over every input's bytes: the spec's digest, each judged update's
author, weight, DP record and arrays, each refusal's verdict and reason, the global
model and the model before it. A loss-scored run is never shared: its scores come from
each attester's own validation losses.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..protocol.outcome import Refusal, RoundOutcome
from ..protocol.rules import RevealedUpdate

__all__ = ["shared_outcome"]

#: Outcomes kept: a round's, while its attesters finish, and a few before it.
MAX_KEPT = 4


class _Entry:
    """One outcome being computed, or computed: waiters wait on ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: RoundOutcome | None = None


_lock = threading.Lock()
_kept: OrderedDict[bytes, _Entry] = OrderedDict()


def shared_outcome(spec_digest: bytes, updates: Sequence[RevealedUpdate], refused: Mapping[str, Refusal],
                   global_arrays: Mapping[str, np.ndarray], previous_global: Mapping[str, np.ndarray] | None,
                   compute: Callable[[], RoundOutcome]) -> RoundOutcome:  # fmt: skip
    """``compute()``'s outcome, computed once for byte-identical inputs in this process.

    A computation that raises is not kept: every attester waiting on it computes its own.
    """
    key = _key(spec_digest, updates, refused, global_arrays, previous_global)
    with _lock:
        entry = _kept.get(key)
        owner = entry is None
        if owner:
            entry = _kept[key] = _Entry()
            while len(_kept) > MAX_KEPT:
                _kept.popitem(last=False)
        else:
            _kept.move_to_end(key)
    assert entry is not None
    if not owner:
        entry.done.wait()
        return entry.outcome if entry.outcome is not None else compute()
    try:
        entry.outcome = compute()
    except BaseException:
        with _lock:
            if _kept.get(key) is entry:
                del _kept[key]
        raise
    finally:
        entry.done.set()
    return entry.outcome


def _key(spec_digest: bytes, updates: Sequence[RevealedUpdate], refused: Mapping[str, Refusal],
         global_arrays: Mapping[str, np.ndarray], previous_global: Mapping[str, np.ndarray] | None) -> bytes:  # fmt: skip
    digest = hashlib.sha256(b"deai-flower/shared-outcome/1")
    _field(digest, bytes(spec_digest))
    _field(digest, str(len(updates)).encode())
    for update in updates:
        dp = update.dp.as_tuple() if update.dp is not None else ()
        _field(digest, f"{update.participant}|{update.num_examples}|{dp}".encode())
        _arrays(digest, update.arrays)
    for address in sorted(refused):
        _field(digest, f"{address}|{refused[address].verdict}|{refused[address].reason}".encode())
    _arrays(digest, global_arrays)
    if previous_global is not None:
        _arrays(digest, previous_global)
    return digest.digest()


def _arrays(digest: hashlib._Hash, arrays: Mapping[str, np.ndarray]) -> None:
    _field(digest, str(len(arrays)).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        _field(digest, f"{name}|{array.dtype.str}|{array.shape}".encode())
        _field(digest, memoryview(array).cast("B"))


def _field(digest: hashlib._Hash, data: bytes | memoryview) -> None:
    """One length-prefixed field: no two different inputs run together into the same bytes."""
    digest.update(len(data).to_bytes(8, "big"))
    digest.update(data)

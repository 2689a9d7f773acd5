"""Deterministic aggregation rules that attesters run on revealed updates.

Every honest attester must produce the same bytes from the same revealed set, on any
machine. So: inputs are put in canonical order (ascending chain address, compared as
20-byte integers) whatever order they arrived in, arrays are accumulated in float64
in that order, and the result is cast back to the model's dtype only at the end.
The weighted average itself is Flower's own helper, fed float64 records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from deai_flower.errors import ConfigError

#: MetricRecord key carrying an update's weight, as Flower's strategies expect it.
WEIGHT_KEY = "num-examples"


@dataclass(frozen=True)
class RevealedUpdate:
    """One valid reveal: its author, its weight and its decoded arrays."""

    participant: str  # checksummed chain address
    num_examples: int
    arrays: dict[str, np.ndarray]


def canonical_order(updates: Sequence[RevealedUpdate]) -> list[RevealedUpdate]:
    """Updates sorted by chain address (as integers), the order every attester uses."""
    ordered = sorted(updates, key=lambda u: int(u.participant, 16))
    addresses = [u.participant.lower() for u in ordered]
    if len(set(addresses)) != len(addresses):
        raise ValueError("two updates from the same participant")
    return ordered


def fedavg(updates: Sequence[RevealedUpdate]) -> dict[str, np.ndarray]:
    """Example-weighted mean (FedAvg), float64 accumulation in canonical order."""
    if not updates:
        raise ValueError("cannot aggregate an empty set of updates")
    ordered = canonical_order(updates)
    records = [
        RecordDict(
            {
                "arrays": ArrayRecord({k: Array(np.asarray(v, dtype=np.float64)) for k, v in sorted(u.arrays.items())}),
                "metrics": MetricRecord({WEIGHT_KEY: int(u.num_examples)}),
            }
        )
        for u in ordered
    ]
    averaged = aggregate_arrayrecords(records, WEIGHT_KEY)
    reference = ordered[0].arrays
    return {name: averaged[name].numpy().astype(reference[name].dtype) for name in sorted(reference)}


AGGREGATION_RULES: dict[str, Callable[[Sequence[RevealedUpdate]], dict[str, np.ndarray]]] = {
    "fedavg": fedavg,
}


def aggregate(rule: str, updates: Sequence[RevealedUpdate]) -> dict[str, np.ndarray]:
    """Apply the named rule to ``updates`` (any order)."""
    try:
        fn = AGGREGATION_RULES[rule]
    except KeyError:
        raise ConfigError(f"unknown aggregation rule {rule!r}; choose one of: {', '.join(AGGREGATION_RULES)}") from None
    return fn(updates)

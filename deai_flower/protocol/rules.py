"""Aggregation rules that attesters run on revealed updates, bit-identical everywhere.

Every honest attester must turn the same revealed set into the same bytes on any
machine, so:

* inputs are put in canonical order (ascending chain address as a 160-bit integer),
  whatever order they were read in;
* arrays are widened to float64 and every accumulation has a fixed order of IEEE
  operations; the result is cast back to each tensor's dtype only at the end.

FedAvg and FedMedian perform exactly the operations of Flower's strategies, whose
arithmetic is already a function of the ordered inputs alone; a test checks the bytes
against Flower's own ``aggregate_train``. Flower's FedTrimmedAvg, Krum/MultiKrum and Bulyan are not: they sum the output of
``np.partition``/``np.argpartition``, whose internal order can differ between numpy
builds, and Krum computes distances with a BLAS matrix product, which differs between
BLAS libraries and thread counts. Those rules follow Flower's definitions here with
sorted summation and exactly rounded distance sums instead (see docs/protocol.md §4).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deai_flower.errors import ConfigError

#: MetricRecord key carrying an update's weight, as Flower's strategies expect it.
WEIGHT_KEY = "num-examples"


@dataclass(frozen=True)
class RevealedUpdate:
    """One valid reveal: its author, its weight and its decoded arrays."""

    participant: str  # chain address
    num_examples: int
    arrays: dict[str, np.ndarray]
    #: Its reveal's DP record (a DpParams), for scores calibrated to the noise (shares); None: not known.
    dp: Any = None


def canonical_order(updates: Sequence[RevealedUpdate]) -> list[RevealedUpdate]:
    """Updates sorted by chain address (as integers), the order every attester uses."""
    ordered = sorted(updates, key=lambda u: int(u.participant, 16))
    addresses = [int(u.participant, 16) for u in ordered]
    if len(set(addresses)) != len(addresses):
        raise ValueError("two updates from the same participant")
    return ordered


def _int(params: Mapping[str, Any], key: str, default: int) -> int:
    return int(params.get(key, default))


#: A rule: updates in canonical order and the rule's parameters -> float64 arrays.
Rule = Callable[[list[RevealedUpdate], Mapping[str, Any]], dict[str, np.ndarray]]


def _stack(ordered: list[RevealedUpdate], name: str) -> np.ndarray:
    # +0.0 turns -0.0 into +0.0: sorting cannot then order two zeros differently.
    return np.stack([u.arrays[name] for u in ordered]) + 0.0


def _sum_rows(rows: np.ndarray) -> np.ndarray:
    """Row 0 + row 1 + ... in that order, elementwise (IEEE, no reassociation)."""
    acc = rows[0].copy()
    for row in rows[1:]:
        acc += row
    return acc


def _weighted_mean(ordered: list[RevealedUpdate]) -> dict[str, np.ndarray]:
    """FedAvg over ``ordered`` (Flower's arithmetic: sum of w_i / W * x_i in order).

    Each product is rounded to float64 and added to the running sum in order, exactly as
    summing the stacked products row by row would, without holding them all at once.
    """
    total = sum(u.num_examples for u in ordered)
    factors = [u.num_examples / total for u in ordered]
    result = {}
    for name in ordered[0].arrays:
        # dtype=float64: each x_i is widened (exactly) before the product, as Flower does
        acc = np.multiply(ordered[0].arrays[name], factors[0], dtype=np.float64)
        product = np.empty_like(acc)
        for u, f in zip(ordered[1:], factors[1:], strict=True):
            np.multiply(u.arrays[name], f, out=product, dtype=np.float64)
            acc += product
        result[name] = acc
    return result


def _trimmed_mean(ordered: list[RevealedUpdate], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Coordinate-wise mean after dropping ``floor(beta * n)`` values at each end.

    Flower's FedTrimmedAvg sums a ``np.partition`` whose internal order may differ
    between numpy builds; sorting first makes the summation order a function of the
    values alone.
    """
    n = len(ordered)
    cut = int(float(params.get("beta", 0.2)) * n)
    return {name: _sum_rows(np.sort(_stack(ordered, name), axis=0)[cut : n - cut]) / (n - 2 * cut)
            for name in ordered[0].arrays}  # fmt: skip


def _krum_scores(ordered: list[RevealedUpdate], f: int) -> list[float]:
    """Krum score of each update: the sum of its n - f - 2 smallest squared distances.

    Distances are exactly rounded sums (math.fsum) of elementwise squared differences,
    tensors in name order: unlike a BLAS product, the same on every machine.
    """
    flat = [np.concatenate([u.arrays[k].ravel() for k in sorted(u.arrays)]) for u in ordered]
    n = len(flat)
    dist = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            diff = flat[i] - flat[j]
            dist[i][j] = dist[j][i] = math.fsum((diff * diff).tolist())
    closest = max(1, n - f - 2)
    return [math.fsum(sorted(dist[i][j] for j in range(n) if j != i)[:closest]) for i in range(n)]


def _krum_select(ordered: list[RevealedUpdate], f: int, m: int) -> list[RevealedUpdate]:
    """The ``m`` best-scored updates; equal scores go to the lower address."""
    scores = _krum_scores(ordered, f)
    best = sorted(range(len(ordered)), key=lambda i: (scores[i], i))[:m]
    return [ordered[i] for i in sorted(best)]  # keep canonical order for what follows


def _krum(ordered: list[RevealedUpdate], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Krum: the single update closest to its neighbours."""
    (chosen,) = _krum_select(ordered, _int(params, "num_malicious_nodes", 0), 1)
    return {k: v.copy() for k, v in chosen.arrays.items()}


def _multikrum(ordered: list[RevealedUpdate], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Multi-Krum: FedAvg of the ``num_nodes_to_select`` best Krum-scored updates."""
    m = _int(params, "num_nodes_to_select", 1)
    return _weighted_mean(_krum_select(ordered, _int(params, "num_malicious_nodes", 0), m))


def _bulyan(ordered: list[RevealedUpdate], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Bulyan: Multi-Krum keeps theta = n - 2f updates; per coordinate, the mean of the
    beta = theta - 2f values closest to their median.

    Ties in distance to the median go to the smaller value; the kept values are summed
    in ascending order.
    """
    f = _int(params, "num_malicious_nodes", 0)
    theta = len(ordered) - 2 * f
    beta = theta - 2 * f
    selected = _krum_select(ordered, f, theta)
    result = {}
    for name in ordered[0].arrays:
        values = np.sort(_stack(selected, name), axis=0)
        median = np.median(values, axis=0)
        order = np.lexsort((values, np.abs(values - median)), axis=0)[:beta]
        kept = np.sort(np.take_along_axis(values, order, axis=0), axis=0)
        result[name] = _sum_rows(kept) / beta
    return result


#: Rule name -> implementation. FedAvg and FedMedian perform exactly Flower's operations
#: (tests compare them bit for bit with Flower's strategies) without its per-array
#: serialization; the others follow Flower's definitions with machine-independent
#: arithmetic.
RULES: dict[str, Rule] = {
    "fedavg": lambda ordered, params: _weighted_mean(ordered),
    "fedmedian": lambda ordered, params: {name: np.median(_stack(ordered, name), axis=0) for name in ordered[0].arrays},
    "fedtrimmedavg": _trimmed_mean,
    "krum": _krum,
    "multikrum": _multikrum,
    "bulyan": _bulyan,
}


#: The parameters each rule reads: what a run spec records for it.
RULE_PARAMS: dict[str, tuple[str, ...]] = {
    "fedavg": (),
    "fedmedian": (),
    "fedtrimmedavg": ("beta",),
    "krum": ("num_malicious_nodes",),
    "multikrum": ("num_malicious_nodes", "num_nodes_to_select"),
    "bulyan": ("num_malicious_nodes",),
}


def minimum_updates(rule: str, params: Mapping[str, Any]) -> int:
    """Fewest updates the rule is defined for (Krum needs n > 2f + 2, Bulyan n > 4f + 2)."""
    f = _int(params, "num_malicious_nodes", 0)
    return {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}.get(rule, 1)


def aggregate(
    rule: str, updates: Sequence[RevealedUpdate], params: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Apply ``rule`` (with its ``params``) to ``updates``, given in any order."""
    params = params or {}
    try:
        implementation = RULES[rule]
    except KeyError:
        raise ConfigError(f"unknown aggregation rule {rule!r}; choose one of: {', '.join(RULES)}") from None
    if not updates:
        raise ValueError("cannot aggregate an empty set of updates")
    needed = minimum_updates(rule, params)
    if len(updates) < needed:
        raise ValueError(f"rule {rule!r} needs at least {needed} updates, got {len(updates)}")
    ordered = canonical_order(updates)
    if rule != "fedavg":  # FedAvg widens as it accumulates; the others work on float64 copies
        ordered = [RevealedUpdate(u.participant, u.num_examples,
                                  {k: np.asarray(v, dtype=np.float64) for k, v in u.arrays.items()}, u.dp)
                   for u in ordered]  # fmt: skip
    reference = canonical_order(updates)[0].arrays
    result = implementation(ordered, params)
    return {name: np.asarray(result[name]).astype(reference[name].dtype) for name in sorted(reference)}

"""The coordinator's round metrics: what the committers' training and the silos'
held-out scores come to, weighted by examples as Flower's strategies weight them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from deai_flower.messages import EvaluateReply, TrainingMetrics

__all__ = ["example_weighted", "federated_summary", "training_summary"]


def example_weighted(records: Iterable[Mapping[str, float]], weight: str, keys: tuple[str, ...]) -> dict[str, float]:
    """The ``keys`` of ``records`` averaged with the weights under ``weight`` (Flower's
    ``aggregate_metricrecords``); the records' weights must not all be zero."""
    weighted = aggregate_metricrecords(
        [RecordDict({"metrics": MetricRecord({**{k: float(r[k]) for k in keys}, weight: int(r[weight])})})
         for r in records], weight)  # fmt: skip
    return {k: float(weighted[k]) for k in keys}  # type: ignore[arg-type]


def training_summary(trainings: Iterable[TrainingMetrics]) -> tuple[float, float | None]:
    """The largest ε the committers spent and their example-weighted training loss (None
    when they trained on no examples)."""
    trainings = list(trainings)
    epsilon_max = max((t.epsilon for t in trainings), default=0.0)
    if not sum(t.num_examples for t in trainings):
        return epsilon_max, None
    loss = example_weighted([{"loss": t.train_loss, "num_examples": t.num_examples} for t in trainings],
                            "num_examples", ("loss",))["loss"]  # fmt: skip
    return epsilon_max, loss


def federated_summary(scores: Mapping[str, EvaluateReply], errors: Mapping[str, str]) -> dict[str, Any]:
    """The silos' scores of one model (by address) per silo and weighted by held-out
    examples: ``per_silo``, ``num_examples``, and ``loss`` and ``accuracy`` when any silo
    scored on some examples; ``errors`` when a silo failed to score."""
    per_silo = {address: {"loss": s.loss, "accuracy": s.accuracy, "num_examples": s.num_examples}
                for address, s in sorted(scores.items())}  # fmt: skip
    total = sum(s["num_examples"] for s in per_silo.values())
    summary: dict[str, Any] = {"per_silo": per_silo, "num_examples": total}
    if total:
        summary.update(example_weighted(per_silo.values(), "num_examples", ("loss", "accuracy")))
    if errors:
        summary["errors"] = dict(errors)
    return summary

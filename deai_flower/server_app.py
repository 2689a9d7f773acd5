"""The coordinator's ServerApp: Flower's round loop around :class:`CommitRevealStrategy`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from .strategies import CommitRevealStrategy


def build_server_app(
    *,
    strategy: CommitRevealStrategy,
    initial_arrays: dict[str, np.ndarray],
    num_rounds: int,
    evaluate: Callable[[int, dict[str, np.ndarray]], dict[str, float]],
) -> ServerApp:
    """A ServerApp that runs ``num_rounds`` rounds and evaluates each finalized model."""
    app = ServerApp()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        return MetricRecord(evaluate(server_round, {k: v.numpy() for k, v in arrays.items()}))

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord({k: Array(v) for k, v in initial_arrays.items()}),
            num_rounds=num_rounds,
            timeout=strategy.phase_timeout_s,
            evaluate_fn=evaluate_fn,
        )

    return app

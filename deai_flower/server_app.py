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
    first_round: int = 1,
) -> ServerApp:
    """A ServerApp that runs ``num_rounds`` rounds and evaluates each finalized model.

    ``first_round`` > 1 when a restarted coordinator resumes a run: Flower counts its
    rounds from 1 again, ``evaluate`` sees the run's round numbers.
    """
    app = ServerApp()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        run_round = server_round + first_round - 1
        return MetricRecord(evaluate(run_round, {k: v.numpy() for k, v in arrays.items()}))

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

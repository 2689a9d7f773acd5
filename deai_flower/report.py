"""What a person sees: a live progress display while a run goes, a table at the end."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .strategies import RoundReport


class ProgressMonitor:
    """Rich progress bar over finalized rounds, showing the round as the user counts it
    (with the chain's attempt id beside it where they differ: after a failed attempt or a
    resume), the current phase and the last accuracy."""

    def __init__(
        self, *, num_rounds: int, enabled: bool = True, completed: int = 0, console: Console | None = None
    ) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]round {task.fields[round]}[/bold]"),
            BarColumn(),
            TextColumn("{task.completed:.0f} of {task.total:.0f}"),
            TextColumn("{task.fields[phase]:<8}"),
            TextColumn("acc {task.fields[accuracy]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task("rounds", total=num_rounds, completed=completed, round=completed + 1,
                                             phase="setup", accuracy="-")  # fmt: skip

    def __enter__(self) -> ProgressMonitor:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def phase(self, server_round: int, phase: str) -> None:
        playing = int(self._progress.tasks[0].completed) + 1
        label = str(playing) if playing == server_round else f"{playing} (attempt {server_round})"
        self._progress.update(self._task, round=label, phase=phase)

    def round_done(self, report: RoundReport) -> None:
        self._progress.update(self._task, advance=1 if report.status == "finalized" else 0, phase=report.status)

    def evaluated(self, server_round: int, accuracy: float) -> None:
        self._progress.update(self._task, accuracy=f"{accuracy:.3f}")


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, str):
        return value
    return format(value, spec)


def results_table(results: dict[str, Any]) -> Table:
    """Per-round table: accuracy, loss, max epsilon over clients, gas, wall seconds.

    Rounds are numbered as the user counts them (a resumed run's go on from the rounds it
    had finalized), with the chain's attempt id beside them; an attempt that ended without
    a result is ``failed``, with the round it tried to finalize."""
    from .outputs import finalized_before, round_rows

    label = "private" if results["private"] else "NON-PRIVATE"
    eps = results["privacy"]["epsilon"]
    table = Table(title=f"deai-flower run {results['run_id']} ({label}, ε budget {eps}, δ {results['privacy']['delta']})")
    for column in ("round", "attempt", "status", "accuracy", "loss", "max ε", "gas used", "seconds"):
        table.add_column(column, justify="right")
    initial = results.get("initial") or {}
    before = finalized_before(results)
    if initial:
        table.add_row(str(before), "-", "resumed" if before else "initial", _fmt(initial.get("accuracy"), ".4f"),
                      _fmt(initial.get("loss"), ".4f"), "-", "-", "-")  # fmt: skip
    for row in round_rows(results):
        table.add_row(
            str(row["round"]),
            str(row["attempt"]),
            row["status"],
            _fmt(row["accuracy"], ".4f"),
            _fmt(row["loss"], ".4f"),
            _fmt(row["max_epsilon"], ".3f"),
            f"{row['gas_used']:,}",
            _fmt(row["seconds"], ".2f"),
        )
    return table


def round_line(results: dict[str, Any]) -> str:
    """The last round attempt of ``results`` in one line, as the table shows it (what
    ``flwr run`` logs after each round)."""
    from .outputs import round_rows

    rows = round_rows(results)
    if not rows:
        return "no round played yet"
    row = rows[-1]
    line = (f"round {row['round']} (attempt {row['attempt']}): {row['status']} · accuracy {_fmt(row['accuracy'], '.4f')}"
            f" · loss {_fmt(row['loss'], '.4f')} · max ε {_fmt(row['max_epsilon'], '.3f')} · gas {row['gas_used']:,}")
    if row["status"] != "finalized" and row["reason"]:
        line += f" · {row['reason']}"
    return line

"""Privacy sweeps: a Hydra callback that summarizes a multirun's final accuracies.

``deai-flower -m privacy.epsilon=1,3,8,inf seed=0,1,2`` runs one job per combination;
this callback (registered under ``hydra.callbacks`` in ``conf/config.yaml``) reads every
job's ``results.json`` and writes, into the sweep directory:

* ``summary.csv`` and ``summary.md``: final test accuracy, mean ± sample standard
  deviation over seeds, per ε (and per value of any other swept key);
* ``accuracy_vs_epsilon.png``: accuracy against ε on a log axis, with the non-private
  run (ε = ∞) as a labelled point on the right.

The summary is rewritten after every job, so an interrupted sweep still leaves one for
the jobs that finished. A job that stopped on a project error, or whose rounds all
failed, leaves ``failed.json`` (see ``deai_flower.cli.main``) and is counted as failed
even if it wrote ``results.json``; when any job failed the sweep exits with status 2
after writing the summary.

:func:`summarize` is the plain function behind the callback (usable on any directory of
job outputs).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

__all__ = ["FAILED_FILE", "SweepSummaryCallback", "SweepRow", "collect_jobs", "summarize"]

logger = logging.getLogger(__name__)

#: Written by a sweep job that stopped on a project error (instead of results.json).
FAILED_FILE = "failed.json"
RESULTS_FILE = "results.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_PNG = "accuracy_vs_epsilon.png"

_EPSILON_KEY = "privacy.epsilon"
# Keys that only repeat a run (averaged over) or only choose where outputs go.
_REPEAT_KEYS = ("seed",)
_IGNORED_PREFIXES = ("hydra.", "progress")


@dataclass
class _Job:
    directory: Path
    overrides: dict[str, str]
    epsilon: float
    accuracy: float | None  # None: the job failed or left no results
    error: str = ""


@dataclass
class SweepRow:
    """One summary line: every job sharing ε and the other swept values."""

    epsilon: float
    setting: tuple[tuple[str, str], ...]  # the other swept keys, sorted
    accuracies: list[float] = field(default_factory=list)
    seeds: list[str] = field(default_factory=list)
    failed: int = 0

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies) if self.accuracies else math.nan

    @property
    def std(self) -> float:
        # Sample standard deviation over seeds; 0 for a single run.
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0


def _parse_overrides(path: Path) -> dict[str, str]:
    overrides: dict[str, str] = {}
    if not path.exists():
        return overrides
    for line in path.read_text(encoding="utf-8").splitlines():
        # Hydra writes a YAML list of "key=value" strings.
        item = line.strip().removeprefix("- ").strip().strip("'\"")
        if "=" in item:
            key, value = item.split("=", 1)
            overrides[key.lstrip("+~")] = value
    return overrides


def _epsilon(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _final_accuracy(results: dict[str, Any]) -> float | None:
    """Accuracy of the last model the chain finalized (the last evaluated round)."""
    accuracies = [r.get("accuracy") for r in results.get("rounds", []) if r.get("status") == "finalized"]
    accuracies = [a for a in accuracies if isinstance(a, int | float)]
    if accuracies:
        return float(accuracies[-1])
    initial = results.get("initial", {}).get("accuracy")
    return float(initial) if isinstance(initial, int | float) else None


def collect_jobs(sweep_dir: Path) -> list[_Job]:
    """Every job directory under ``sweep_dir`` (those Hydra wrote ``.hydra/`` into)."""
    jobs = []
    for hydra_dir in sorted(sweep_dir.glob("**/.hydra")):
        directory = hydra_dir.parent
        overrides = _parse_overrides(hydra_dir / "overrides.yaml")
        results_path, failed_path = directory / RESULTS_FILE, directory / FAILED_FILE
        # A failed job may still have written results (every round failed): it failed.
        if failed_path.exists():
            try:
                error = str(json.loads(failed_path.read_text(encoding="utf-8")).get("error", "failed"))
            except ValueError:
                error = "failed"
            jobs.append(_Job(directory, overrides, _epsilon(overrides.get(_EPSILON_KEY)), None, error))
        elif results_path.exists():
            try:
                results = json.loads(results_path.read_text(encoding="utf-8"))
            except ValueError as exc:
                epsilon = _epsilon(overrides.get(_EPSILON_KEY))
                jobs.append(_Job(directory, overrides, epsilon, None, f"unreadable {RESULTS_FILE}: {exc}"))
                continue
            epsilon = _epsilon(results.get("privacy", {}).get("epsilon", overrides.get(_EPSILON_KEY)))
            jobs.append(_Job(directory, overrides, epsilon, _final_accuracy(results)))
    return jobs


def _group(jobs: list[_Job]) -> list[SweepRow]:
    rows: dict[tuple[float, tuple[tuple[str, str], ...]], SweepRow] = {}
    for job in jobs:
        setting = tuple(sorted(
            (k, v) for k, v in job.overrides.items()
            if k != _EPSILON_KEY and k not in _REPEAT_KEYS and not k.startswith(_IGNORED_PREFIXES)
        ))  # fmt: skip
        epsilon = job.epsilon
        row = rows.setdefault((epsilon, setting), SweepRow(epsilon=epsilon, setting=setting))
        if job.accuracy is None:
            row.failed += 1
        else:
            row.accuracies.append(job.accuracy)
            row.seeds.append(job.overrides.get("seed", ""))
    # Settings in first-seen order, then ε ascending with ∞ (and unknown) last.
    order = {s: i for i, s in enumerate(dict.fromkeys(r.setting for r in rows.values()))}
    return sorted(rows.values(), key=lambda r: (order[r.setting], math.isnan(r.epsilon), r.epsilon))


def _label_epsilon(epsilon: float) -> str:
    if math.isinf(epsilon):
        return "∞ (non-private)"
    return "?" if math.isnan(epsilon) else f"{epsilon:g}"


def _setting_label(setting: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting)


def _write_csv(rows: list[SweepRow], path: Path) -> None:
    keys = sorted({k for row in rows for k, _ in row.setting})
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["epsilon", *keys, "accuracy_mean", "accuracy_std", "runs", "failed", "seeds"])
        for row in rows:
            values = dict(row.setting)
            writer.writerow([
                "inf" if math.isinf(row.epsilon) else f"{row.epsilon:g}",
                *(values.get(k, "") for k in keys),
                "" if not row.accuracies else f"{row.mean:.6f}",
                "" if not row.accuracies else f"{row.std:.6f}",
                len(row.accuracies), row.failed, " ".join(row.seeds),
            ])  # fmt: skip


def _write_markdown(rows: list[SweepRow], path: Path, *, sweep_dir: Path) -> None:
    keys = sorted({k for row in rows for k, _ in row.setting})
    header = ["ε", *keys, "final accuracy (mean ± std)", "runs", "failed"]
    lines = [
        f"# Sweep summary: {sweep_dir.name}",
        "",
        "Final test accuracy of the last finalized global model; mean ± sample standard deviation over seeds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if h in ("runs", "failed") else "---" for h in header) + "|",
    ]
    for row in rows:
        values = dict(row.setting)
        accuracy = "—" if not row.accuracies else f"{100 * row.mean:.2f} % ± {100 * row.std:.2f}"
        cells = [_label_epsilon(row.epsilon), *(values.get(k, "") for k in keys), accuracy,
                 str(len(row.accuracies)), str(row.failed)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_plot(rows: list[SweepRow], path: Path, *, title: str) -> bool:
    """Accuracy vs ε; ∞ is drawn one step right of the largest finite ε, labelled."""
    plotted = [r for r in rows if r.accuracies and not math.isnan(r.epsilon)]
    if not plotted:
        return False
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, never a window
    import matplotlib.pyplot as plt

    finite = sorted({r.epsilon for r in plotted if math.isfinite(r.epsilon)})
    # Where ∞ goes on the log axis: a visible step beyond the largest finite ε.
    infinity_x = (finite[-1] if finite else 1.0) * 3.0
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for setting in dict.fromkeys(r.setting for r in plotted):
        series = [r for r in plotted if r.setting == setting]
        label = _setting_label(setting) or "final accuracy"
        private = [r for r in series if math.isfinite(r.epsilon)]
        line = None
        if private:
            (line, *_) = ax.errorbar([r.epsilon for r in private], [100 * r.mean for r in private],
                                     yerr=[100 * r.std for r in private], marker="o", capsize=4,
                                     label=label)  # fmt: skip
        for r in series:
            if math.isinf(r.epsilon):
                color = line.get_color() if line is not None else None
                ax.errorbar([infinity_x], [100 * r.mean], yerr=[100 * r.std], marker="s", markerfacecolor="white",
                            capsize=4, color=color, linestyle="none",
                            label=None if line is not None else f"{label} (non-private)")  # fmt: skip
                ax.annotate(f"{100 * r.mean:.1f} %", (infinity_x, 100 * r.mean), textcoords="offset points",
                            xytext=(0, 10), ha="center", fontsize=8)  # fmt: skip
                # The non-private level as a reference line across the private points.
                ax.axhline(100 * r.mean, color=color or "grey", linestyle=":", linewidth=1, alpha=0.6)
    ax.set_xscale("log")
    ax.margins(y=0.15)  # room for the labels above the points
    ticks = finite + ([infinity_x] if any(math.isinf(r.epsilon) for r in plotted) else [])
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{e:g}" for e in finite] + (["∞\n(non-private)"] if len(ticks) > len(finite) else []))
    ax.minorticks_off()
    if finite:
        ax.set_xlim(finite[0] / 1.6, (infinity_x if len(ticks) > len(finite) else finite[-1]) * 1.6)
    ax.set_xlabel("privacy budget ε per client (log scale)")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def summarize(sweep_dir: str | Path) -> list[SweepRow]:
    """Write ``summary.csv``, ``summary.md`` and the plot for the jobs in ``sweep_dir``.

    Returns the summary rows (an empty list, and no files, when no job finished yet).
    """
    directory = Path(sweep_dir)
    jobs = collect_jobs(directory)
    rows = _group(jobs)
    if not rows:
        return rows
    _write_csv(rows, directory / SUMMARY_CSV)
    _write_markdown(rows, directory / SUMMARY_MD, sweep_dir=directory)
    seeds = sorted({j.overrides.get("seed", "") for j in jobs} - {""})
    title = "Final accuracy vs privacy budget" + (f" (mean ± std over {len(seeds)} seeds)" if len(seeds) > 1 else "")
    _write_plot(rows, directory / SUMMARY_PNG, title=title)
    return rows


class SweepSummaryCallback(Callback):
    """Hydra callback: keep a sweep's summary up to date; exit 2 at the end if a job failed."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    @staticmethod
    def _sweep_dir(config: DictConfig) -> Path:
        return Path(str(config.hydra.sweep.dir))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not self.enabled or OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        try:
            summarize(self._sweep_dir(config))
        except Exception as exc:  # noqa: BLE001 - a summary problem must not stop the sweep
            logger.warning("could not update the sweep summary: %s", exc)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep_dir = self._sweep_dir(config)
        rows = summarize(sweep_dir)
        failed = sum(r.failed for r in rows)
        if rows:
            print(f"sweep summary: {sweep_dir / SUMMARY_MD} (+ {SUMMARY_CSV}, {SUMMARY_PNG})")
        if failed:
            print(f"error: {failed} sweep job(s) failed; see {FAILED_FILE} in their directories", file=sys.stderr)
            sys.exit(2)

"""``deai-flower``: the Hydra entry point that runs one experiment (or a sweep with -m)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console

from ..config import register_configs
from ..errors import DeaiError, ProtocolError
from ..sweep import FAILED_FILE

register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Run the composed experiment; a project error becomes one line and exit status 2."""
    from ..simulation.experiment import run_experiment  # heavy imports after Hydra parsed the overrides
    from ..report import results_table

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    console = Console()
    try:
        results = run_experiment(cfg, output_dir=output_dir)
        if not any(r["status"] == "finalized" for r in results["rounds"]):
            console.print(results_table(results))
            first = results["rounds"][0] if results["rounds"] else {"round": "-", "reason": "no round ran"}
            raise ProtocolError(f"no round finalized (round {first['round']}: {first['reason']})")
    except DeaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # Let the sweep go on: the failure is recorded for the sweep summary, which
            # exits with status 2 once every job ran (deai_flower.sweep).
            (output_dir / FAILED_FILE).write_text(json.dumps({"error": str(exc), "type": type(exc).__name__}) + "\n",
                                                  encoding="utf-8")  # fmt: skip
            return
        sys.exit(2)
    console.print(results_table(results))
    final = results["rounds"][-1] if results["rounds"] else {}
    console.print(
        f"final accuracy {final.get('accuracy', float('nan')):.4f} · contract {results['contract_address']} · "
        f"results {output_dir / 'results.json'} · {results['wall_seconds']:.1f}s",
        highlight=False,
    )

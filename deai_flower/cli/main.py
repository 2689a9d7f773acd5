"""``deai-flower``: the Hydra entry point that runs one experiment (or a sweep with -m).

It answers at once: the composed config's keys and values are checked, and a one-line
summary printed, before the ML stack, the chain and Flower are imported (seconds).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ..config import is_private, register_configs, validate
from ..errors import ConfigError, DeaiError, ProtocolError
from ..sweep import FAILED_FILE

register_configs()


def main() -> None:
    """The console script: Hydra's composition errors as one line, then the run."""
    error = composition_error(sys.argv[1:])
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    run_main()


def composition_error(overrides: list[str]) -> str | None:
    """Why Hydra cannot compose the config with ``overrides``, in one line; None if it can.

    Only plain ``key=value`` overrides are checked here: with a flag (``-m`` and its
    sweep syntax, ``--cfg``, ``--help``) Hydra itself reports, in its own format.
    """
    if any(arg.startswith("-") for arg in overrides):
        return None
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException, MissingConfigException

    try:
        with initialize_config_module(config_module="deai_flower.conf", version_base=None):
            compose(config_name="config", overrides=overrides)
    except MissingConfigException as exc:
        first = str(exc).strip().splitlines()[0]
        return f"{first} (available: {', '.join(exc.options)})" if exc.options else first
    except HydraException as exc:
        first, *rest = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
        cause = exc.__cause__
        detail = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
        return " ".join([first.rstrip("."), f"({detail})." if detail else ".", *rest]).replace(" .", ".")
    return None


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def run_main(cfg: DictConfig) -> None:
    """Run the composed experiment; a project error becomes one line and exit status 2."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg, targets=False)  # type: ignore[arg-type]
        for node, kind in ((cfg.model, "model"), (cfg.dataset.loader, "dataset loader")):
            _check_target_exists(node, kind)
        print(f"deai-flower: {summary(cfg)} — setting up chain, store and run…", flush=True)
        _run(cfg, output_dir)
    except DeaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # Let the sweep go on: the failure is recorded for the sweep summary, which
            # exits with status 2 once every job ran (deai_flower.sweep).
            (output_dir / FAILED_FILE).write_text(json.dumps({"error": str(exc), "type": type(exc).__name__}) + "\n",
                                                  encoding="utf-8")  # fmt: skip
            return
        sys.exit(2)


def _run(cfg: DictConfig, output_dir: Path) -> None:
    from rich.console import Console

    from ..logs import quiet_third_party

    quiet_third_party(verbose=bool(cfg.get("verbose", False)))
    from ..report import results_table  # the ML stack, Flower and the chain: after the summary line
    from ..simulation.experiment import run_experiment

    console = Console()
    results = run_experiment(cfg, output_dir=output_dir)
    if not any(r["status"] == "finalized" for r in results["rounds"]):
        console.print(results_table(results))
        first = results["rounds"][0] if results["rounds"] else {"round": "-", "reason": "no round ran"}
        raise ProtocolError(f"no round finalized (round {first['round']}: {first['reason']})")
    console.print(results_table(results))
    final = results["rounds"][-1] if results["rounds"] else {}
    console.print(
        f"final accuracy {final.get('accuracy', float('nan')):.4f} · contract {results['contract_address']} · "
        f"results {output_dir / 'results.json'} · {results['wall_seconds']:.1f}s",
        highlight=False,
    )


def summary(cfg: DictConfig) -> str:
    """The experiment in a few words: clients, rounds, rule, model, data, privacy, where."""
    model = str(cfg.model.get("_target_", "?")).rsplit(".", 1)[-1]
    loader = cfg.dataset.loader.get("name") or str(cfg.dataset.loader.get("_target_", "?")).rsplit(".", 1)[-1]
    loader = str(loader).removeprefix("load_")
    privacy = f"ε={float(cfg.privacy.epsilon):g}" if is_private(cfg) else "no DP"
    return (f"{cfg.num_clients} clients × {cfg.num_rounds} rounds, {cfg.strategy.name}, {model} on {loader}, "
            f"{privacy}, {cfg.engine.kind} engine, {cfg.chain.kind} chain, {cfg.storage.kind} store")  # fmt: skip


def _check_target_exists(node: Any, kind: str) -> None:
    """Refuse a ``_target_`` that certainly does not exist, without importing it.

    The full check (it imports the target and checks its arguments) runs later with the
    ML stack; this one catches a misspelt module or function name in seconds: the top
    module must be installed and, for this project's own modules, the name defined in
    the module's source.
    """
    target = node.get("_target_") if hasattr(node, "get") else None
    if not isinstance(target, str) or "." not in target.strip("."):
        return  # validate's target check gives the message
    parts = target.split(".")
    if importlib.util.find_spec(parts[0]) is None:
        raise ConfigError(f"{kind} {target}: cannot import it (no module named {parts[0]!r})")
    if parts[0] != "deai_flower" or len(parts) < 3:
        return
    module, name = ".".join(parts[:-1]), parts[-1]
    spec = importlib.util.find_spec(module) if len(parts) == 3 else None  # deai_flower.<module>.<name>
    if spec is None or not spec.origin or not spec.origin.endswith(".py") or spec.submodule_search_locations:
        return
    source = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    if name not in _top_level_names(source):
        raise ConfigError(f"{kind} {target}: cannot import it ({module} has no {name!r})")


def _top_level_names(tree: ast.Module) -> set[str] | frozenset[str]:
    names: set[str] = set()
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(stmt.name)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                if alias.name == "*":
                    return _ANY
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        else:  # conditional definitions (if/try): anything may be defined; leave it to the import
            if isinstance(stmt, (ast.If, ast.Try, ast.With)):
                return _ANY
    if "__getattr__" in names:
        return _ANY
    return names


class _Anything(frozenset[str]):
    def __contains__(self, item: object) -> bool:
        return True


_ANY = _Anything()

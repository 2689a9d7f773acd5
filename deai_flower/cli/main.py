"""``deai-flower``: the Hydra entry point that runs one experiment (or a sweep with -m).

It answers at once: the composed config's keys and values are checked, and a one-line
summary printed, before the ML stack, the chain and Flower are imported (seconds).

Each start gets an output directory of its own (``outputs/DATE/TIME-XXXXXX``, a random
suffix, unless ``hydra.run.dir`` names one; a directory that holds another run is
refused). Once the run is set up, one line names its contract, run id and the command
that resumes it, which ``run.json`` in the output directory also records. Ctrl-C or
SIGTERM stops it with one line saying what was kept and how to resume, exit status 130
(SIGINT) or 143 (SIGTERM): ``results.json`` holds every round finished before the stop.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import secrets
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ..compose import composition_error
from ..config import is_private, register_configs, validate
from ..errors import ConfigError, DeaiError, ProtocolError
from ..sweep import FAILED_FILE

register_configs()


def main() -> None:
    """The console script: Hydra's composition errors as one line, then the run."""
    _stop_on_sigterm()
    working_directory_importable()
    try:
        error = composition_error(sys.argv[1:])
        if error is not None:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        sys.argv[1:] = with_unique_output_dirs(sys.argv[1:])
        taken = taken_output_dir(sys.argv[1:])
        if taken is not None:  # refused before Hydra writes its own files there
            print(f"error: {taken}", file=sys.stderr)
            sys.exit(2)
        run_main()
    except KeyboardInterrupt as stop:  # before the job, or between a sweep's jobs
        _stopped(stop, None)


def working_directory_importable(cwd: str | None = None) -> None:
    """Make modules beside where ``deai-flower`` runs (``my_pkg/``) importable for a
    ``_target_``, as ``python -m`` would: first on this process's path, and through
    ``PYTHONPATH`` for the processes it starts (Ray's workers)."""
    cwd = os.path.abspath(cwd or os.getcwd())
    if cwd not in (os.path.abspath(p or ".") for p in sys.path):
        sys.path.insert(0, cwd)
    entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if cwd not in (os.path.abspath(p) for p in entries):
        os.environ["PYTHONPATH"] = os.pathsep.join([cwd, *entries])


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (a supervisor's or ``kill``'s polite stop)."""


def _stop_on_sigterm() -> None:
    def terminate(signum: int, frame: Any) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)


#: Flags with which Hydra answers without running a job: no output directory to make unique.
_NO_JOB_FLAGS = ("-h", "--help", "--hydra-help", "-i", "--info", "-sc", "--shell-completion", "--version")


def with_unique_output_dirs(overrides: list[str], *, now: datetime | None = None) -> list[str]:
    """``overrides`` plus an output directory unique to this start.

    Hydra's default, ``outputs/DATE/TIME`` (``multirun/DATE/TIME`` for a sweep), is the
    same for two runs started in the same second, which then share it. Unless the
    overrides set it, each start gets ``outputs/DATE/TIME-XXXXXX``, XXXXXX random.
    """
    if any(arg.split("=", 1)[0] in _NO_JOB_FLAGS for arg in overrides):
        return list(overrides)
    now = now or datetime.now()
    stamp = f"{now:%Y-%m-%d}/{now:%H-%M-%S}-{secrets.token_hex(3)}"
    given = {arg.lstrip("+").split("=", 1)[0] for arg in overrides}
    extra = [f"{key}={root}/{stamp}" for key, root in (("hydra.run.dir", "outputs"), ("hydra.sweep.dir", "multirun"))
             if key not in given]  # fmt: skip
    return [*overrides, *extra]


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def run_main(cfg: DictConfig) -> None:
    """Run the composed experiment; a project error becomes one line and exit status 2."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg, targets=False)  # type: ignore[arg-type]
        for node, kind in ((cfg.model, "model"), (cfg.dataset.loader, "dataset loader")):
            _check_target_exists(node, kind)
        try:
            claim_output_dir(output_dir)
        except ConfigError as exc:  # another run's directory: nothing of this run may go there
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        print(f"deai-flower: {summary(cfg)} — setting up chain, store and run…", flush=True)
        _run(cfg, output_dir)
    except KeyboardInterrupt as stop:
        _stopped(stop, output_dir)
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

    from ..logs import flower_lines_once, quiet_third_party

    quiet_third_party(verbose=bool(cfg.get("verbose", False)))
    flower_lines_once()
    from ..outputs import CLIENTS_CSV, CURVE_PNG, MODEL_FILE, ROUNDS_CSV, clients_table
    from ..report import results_table  # the ML stack, Flower and the chain: after the summary line
    from ..experiment import run_experiment

    console = Console()
    if not console.is_terminal:  # piped: rich's 80 columns would cut the tables' numbers short
        console = Console(width=200)
    results = run_experiment(cfg, output_dir=output_dir, overrides=list(HydraConfig.get().overrides.task),
                             on_start=lambda record: print(run_line(record), flush=True))  # fmt: skip
    finalized = [r for r in results["rounds"] if r["status"] == "finalized"]
    console.print(results_table(results))
    console.print(clients_table(results))
    if not finalized:
        first = results["rounds"][0] if results["rounds"] else {"round": "-", "reason": "no round ran"}
        raise ProtocolError(f"no round finalized (round {first['round']}: {first['reason']})")
    accuracy = finalized[-1].get("accuracy")
    written = [name for name in (MODEL_FILE, ROUNDS_CSV, CLIENTS_CSV, CURVE_PNG) if (output_dir / name).exists()]
    # soft_wrap: one line however narrow the terminal (or a pipe's 80 columns), so paths stay whole
    console.print(
        f"final accuracy {'-' if accuracy is None else format(accuracy, '.4f')} · contract "
        f"{results['contract_address']} · results {output_dir / 'results.json'} (and {', '.join(written)}) · "
        f"{results['wall_seconds']:.1f}s",
        highlight=False,
        soft_wrap=True,
    )


def run_line(record: dict[str, Any]) -> str:
    """The line that says where a run is and how to resume it (``run.json`` in one line)."""
    chain = record["chain"]
    where = f"run {record['run_id']} on contract {record['contract_address']} ({chain['kind']} chain"
    where += f" {chain['url']}, chain id {chain['chain_id']})" if chain["kind"] != "embedded" else ")"
    saved = str(Path(record["output_dir"]) / RUN_FILE)
    if not record["resumable"]:
        return f"{where} · not resumable: {record['not_resumable_because']} · {saved}"
    return f"{where} · resume with: {record['resume_command']} · {saved}"


#: Where a run is and how to resume it (written by the experiment), and what it did.
RUN_FILE, RESULTS_FILE = "run.json", "results.json"


def taken_output_dir(overrides: list[str]) -> str | None:
    """Why the output directory ``overrides`` name (``hydra.run.dir``, or a sweep's jobs
    under ``hydra.sweep.dir``) cannot take this run, or None; an interpolated one is
    checked by :func:`claim_output_dir` once Hydra made it."""
    sweep = any(arg in ("-m", "--multirun") for arg in overrides)
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    values = [arg.split("=", 1)[1] for arg in overrides if arg.lstrip("+").split("=", 1)[0] == key and "=" in arg]
    if not values or "${" in values[-1]:
        return None
    where = Path(values[-1].strip("'\""))
    for job in sorted(where.glob("*")) if sweep else [where]:
        problem = _holds_run(job)
        if problem is not None:
            return problem
    return None


def _holds_run(output_dir: Path) -> str | None:
    for name in (RUN_FILE, RESULTS_FILE):
        if (output_dir / name).exists():
            return f"output directory {output_dir} already holds a run ({name}); give the new run another hydra.run.dir"
    return None


def claim_output_dir(output_dir: Path) -> None:
    """Take ``output_dir`` for this run, or refuse it: no two runs share an output directory.

    The claim is ``run.json``, created exclusively (of two runs started on the same
    directory at once, one gets it; the experiment then fills it in); a directory holding
    another run's ``run.json`` or ``results.json`` is refused.

    Raises:
        ConfigError: the directory holds another run.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    if (output_dir / RESULTS_FILE).exists():
        raise ConfigError(_holds_run(output_dir))
    try:
        handle = os.open(output_dir / RUN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ConfigError(_holds_run(output_dir)) from None
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(json.dumps({"status": "setting up", "output_dir": str(output_dir.resolve())}) + "\n")


def _stopped(stop: KeyboardInterrupt, output_dir: Path | None) -> NoReturn:
    """End a run stopped by Ctrl-C or SIGTERM with one line: what was kept, how to resume."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C changes nothing now
        signal.signal(signum, signal.SIG_IGN)
    terminated = isinstance(stop, Terminated)
    print(f"{'terminated' if terminated else 'interrupted'}: {stop_summary(output_dir)}", file=sys.stderr, flush=True)
    sys.exit(143 if terminated else 130)


def stop_summary(output_dir: Path | None) -> str:
    """What a stopped run left in ``output_dir`` and how to resume it, in one line."""
    if output_dir is None:
        return "stopped outside a run; nothing to resume"
    record = _read_json(output_dir / RUN_FILE) or {}
    if "contract_address" not in record:
        return f"stopped while setting the run up ({output_dir}); nothing to resume"
    results = _read_json(output_dir / RESULTS_FILE)
    rounds = results.get("rounds", []) if isinstance(results, dict) else []
    finalized = sum(1 for r in rounds if r.get("status") == "finalized")
    failed = len(rounds) - finalized
    kept = f"{finalized} finalized round{'' if finalized == 1 else 's'}"
    if failed:
        kept += f" and {failed} failed attempt{'' if failed == 1 else 's'}"
    kept += f" saved in {output_dir / RESULTS_FILE}" if results is not None else f" ({output_dir})"
    if not record.get("resumable"):
        return f"{kept}; not resumable: {record.get('not_resumable_because')}"
    return f"{kept}; resume (the round in flight is played again) with: {record['resume_command']}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
    if isinstance(node, DictConfig) and "_target_" in node.keys() and OmegaConf.is_missing(node, "_target_"):
        key = "model" if kind == "model" else "dataset.loader"
        raise ConfigError(f"{kind}: name its callable with {key}._target_=my_pkg.MyNet (a module in the working "
                          "directory or installed)")  # fmt: skip
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

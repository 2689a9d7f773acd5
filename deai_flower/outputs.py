"""What a finished run leaves beside ``results.json``, for a person to use at once.

* ``model.safetensors``: the final global model (the last finalized round's aggregate,
  fetched from the store by its CID and checked against it), with the model's
  ``_target_``, arguments and data schema in the file's metadata, so that
  :func:`load_model` rebuilds the ``nn.Module`` in one call::

      from deai_flower import load_model
      model = load_model("outputs/2026-01-01/12-00-00-abc123/model.safetensors")

  No pickle: safetensors holds only tensors and strings. Only an allowed target is
  imported (the bundled models; a model of your own with ``allowed=["my_pkg.MyNet"]``).
* ``rounds.csv``: one row per round attempt (round, attempt, status, accuracy, loss,
  max ε, gas used).
* ``curve.png``: accuracy, loss and max ε per finalized round.
* ``clients.csv``: one row per participant (client, address, role, ε spent, score,
  payout, slashed, refused rounds), also printed as a table on screen by ``deai-flower``.

Rounds are numbered as the user counts them (the run's 1st, 2nd, … finalized round,
continuing after the rounds a resumed run had already finalized), not by the chain's
attempt ids; a failed attempt is labelled with the round it tried to finalize.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

MODEL_FILE = "model.safetensors"
ROUNDS_CSV = "rounds.csv"
CLIENTS_CSV = "clients.csv"
CURVE_PNG = "curve.png"
#: The ``format`` entry of a model file's metadata.
MODEL_FORMAT = "deai-flower/model/1"

__all__ = ["CLIENTS_CSV", "CURVE_PNG", "MODEL_FILE", "ROUNDS_CSV", "client_rows", "clients_table", "load_model",
           "round_rows", "save_model", "write_run_outputs"]  # fmt: skip


# ---------------------------------------------------------------------------- rows


def _number(value: Any) -> float | None:
    """A finite float, or None (missing, NaN, ``"inf"``)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def finalized_before(results: Mapping[str, Any]) -> int:
    """How many rounds the run had finalized before this process played (0 unless resumed)."""
    return int(results.get("finalized_before") or 0)


def round_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per round attempt: ``round`` as the user counts rounds, ``attempt`` the
    chain's round id, status (``finalized``, or ``failed`` for an attempt that ended
    without a result, labelled with the round it tried to finalize), accuracy, loss, max ε over the participants, gas used."""
    rows, done = [], finalized_before(results)
    for entry in results.get("rounds", []):
        finalized = entry.get("status") == "finalized"
        if finalized:
            done += 1
        rows.append({
            "round": done if finalized else done + 1,
            "attempt": entry.get("round"),
            "status": entry.get("status"),
            "accuracy": _number(entry.get("accuracy")),
            "loss": _number(entry.get("loss")),
            "max_epsilon": _number(entry.get("epsilon")) if entry.get("revealed") or finalized else None,
            "gas_used": entry.get("gas_used"),
            "seconds": _number(entry.get("seconds")),
            "reason": entry.get("reason") or "",
        })  # fmt: skip
    return rows


def _roles(results: Mapping[str, Any]) -> dict[int, str]:
    """Simulated clients an adversary plays, by index (``freerider``, ``scaled``)."""
    adversary = ((results.get("config") or {}).get("adversary")) or {}
    kind = adversary.get("kind")
    if not kind or kind == "none":
        return {}
    return {int(i): str(kind) for i in adversary.get("poisoned_clients") or []}


def client_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per participant: simulated client index (if any), address, role (honest,
    or the adversary it plays), ε spent (its last revealed ε), total score, payout and
    slashed stake in wei, and the rounds its update was refused in with the verdict."""
    incentives = (results.get("incentives") or {}).get("participants") or {}
    ledger = results.get("privacy_ledger") or {}
    roles = _roles(results)
    rows = []
    for address in sorted(set(incentives) | set(ledger)):
        entry, spent = incentives.get(address, {}), ledger.get(address, {})
        client = entry.get("client", spent.get("client"))
        epsilons = [e for e in (_number(r.get("epsilon")) for r in spent.get("rounds", [])) if e is not None]
        scores = entry.get("score") or {}
        refused = entry.get("refused") or {}
        rows.append({
            "client": client,
            "address": address,
            "role": roles.get(client, "honest") if client is not None else "",
            "epsilon_spent": max(epsilons) if epsilons else None,
            "score": sum(int(s) for s in scores.values()) if scores else None,
            "payout_wei": int(entry.get("payout", 0)),
            "attester_pay_wei": int(entry.get("attester_pay", 0)),
            "slashed_wei": int(entry.get("slashed", 0)),
            "refused": "; ".join(f"round {r}: {v}" for r, v in sorted(refused.items(), key=lambda kv: int(kv[0]))),
        })  # fmt: skip
    rows.sort(key=lambda row: (row["client"] is None, row["client"] if row["client"] is not None else 0,
                               row["address"]))  # fmt: skip
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})


ROUND_COLUMNS = ["round", "attempt", "status", "accuracy", "loss", "max_epsilon", "gas_used", "seconds", "reason"]
CLIENT_COLUMNS = ["client", "address", "role", "epsilon_spent", "score", "payout_wei", "attester_pay_wei", "slashed_wei",
                  "refused"]


# ---------------------------------------------------------------------------- screen


def _ether(wei: int) -> str:
    return f"{wei / 10**18:.4f}"


def clients_table(results: Mapping[str, Any]) -> Any:
    """The per-client table as a rich :class:`~rich.table.Table` (payouts in ether or
    the stake token's whole units, 10^18 base units)."""
    from rich.table import Table

    table = Table(title="participants (ε spent, score summed over rounds, payout and slashed stake in 10^18 units)")
    for column in ("client", "address", "role", "ε spent", "score", "payout", "attester pay", "slashed",
                   "refused"):
        table.add_column(column, justify="left" if column in ("address", "role", "refused") else "right",
                         no_wrap=column in ("address", "role"))  # fmt: skip
    for row in client_rows(results):
        table.add_row(
            "-" if row["client"] is None else str(row["client"]),
            f"{row['address'][:6]}…{row['address'][-4:]}",  # whole in clients.csv
            row["role"] or "-",
            "-" if row["epsilon_spent"] is None else f"{row['epsilon_spent']:.3f}",
            "-" if row["score"] is None else f"{row['score']:,}",
            _ether(row["payout_wei"]),
            _ether(row["attester_pay_wei"]),
            _ether(row["slashed_wei"]),
            row["refused"] or "-",
        )
    return table


# ---------------------------------------------------------------------------- curve


def plot_curve(results: Mapping[str, Any], path: Path) -> None:
    """Accuracy, loss and max ε per finalized round (round 0: the starting model)."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only, never a window
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [row for row in round_rows(results) if row["status"] == "finalized"]
    start = results.get("initial") or {}
    first = finalized_before(results)
    rounds = [first, *(row["round"] for row in rows)]
    accuracy = [_number(start.get("accuracy")), *(row["accuracy"] for row in rows)]
    loss = [_number(start.get("loss")), *(row["loss"] for row in rows)]
    epsilon = [0.0 if first == 0 else None, *(row["max_epsilon"] for row in rows)]

    def nan(values: list[float | None]) -> list[float]:
        return [math.nan if v is None else v for v in values]

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for axis, values, label in zip(axes, (accuracy, loss, epsilon), ("accuracy", "loss", "max ε"), strict=True):
        axis.plot(rounds, nan(values), marker="o")
        axis.set_xlabel("round")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    budget = _number((results.get("privacy") or {}).get("epsilon"))
    if budget is not None:
        axes[2].axhline(budget, linestyle="--", color="grey", label=f"budget ε = {budget:g}")
        axes[2].legend(loc="lower right")
    figure.suptitle(f"deai-flower run {results.get('run_id')}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ---------------------------------------------------------------------------- model file


def save_model(path: str | Path, arrays: Mapping[str, Any], *, spec: Any, cid: str = "",
               round_number: int | None = None) -> None:
    """Write ``arrays`` (the model's state, unwrapped names) as safetensors, with the
    model's target, arguments and data schema from ``spec`` (a :class:`RunSpec`) in the
    metadata."""
    import numpy as np
    from safetensors.numpy import save_file

    metadata = {
        "format": MODEL_FORMAT,
        "model": json.dumps({"target": spec.model.target, "args": spec.model.args}, sort_keys=True),
        "data": json.dumps({"num_features": spec.data.num_features, "num_classes": spec.data.num_classes,
                            "input_shape": list(spec.data.input_shape)}),  # fmt: skip
        "cid": cid,
        "round": "" if round_number is None else str(round_number),
    }
    save_file({name: np.ascontiguousarray(value) for name, value in arrays.items()}, str(path), metadata=metadata)


def load_model(path: str | Path, *, allowed: Collection[str] = ()) -> Any:
    """The ``nn.Module`` a model file of a run holds, with its final weights, in eval mode.

    ``allowed``: model targets to import beyond the bundled ones (your own model,
    ``["my_pkg.MyNet"]``); a file naming any other target is refused unimported.

    Raises:
        ConfigError: not a deai-flower model file, or its target cannot be built.
        SpecError: its target is neither bundled nor in ``allowed``.
    """
    from safetensors import safe_open

    from .errors import ConfigError
    from .models import instantiate_model, set_arrays
    from .protocol.spec import DataSchema, ModelSpec, allowed_models

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable safetensors model file ({exc})") from None
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ConfigError(f"{path}: not a readable safetensors model file ({exc})") from None
    if metadata.get("format") != MODEL_FORMAT:
        raise ConfigError(f"{path}: not a deai-flower model file (metadata format {metadata.get('format')!r})")
    model_entry, data = json.loads(metadata["model"]), json.loads(metadata["data"])
    schema = DataSchema(num_features=int(data["num_features"]), num_classes=int(data["num_classes"]),
                        input_shape=tuple(int(d) for d in data["input_shape"]))  # fmt: skip
    model = instantiate_model(ModelSpec(target=model_entry["target"], args=model_entry["args"]), schema,
                              allowed=allowed_models(list(allowed)))  # fmt: skip
    set_arrays(model, arrays)
    return model.eval()


def _final_model(results: Mapping[str, Any], output_dir: Path, store: Any) -> tuple[dict[str, Any], str] | None:
    """The final global model's arrays and CID, or None if no round was finalized."""
    from .protocol.blob import decode_arrays
    from .protocol.spec import RunSpec

    if not any(r.get("status") == "finalized" for r in results.get("rounds", [])):
        return None
    cid = results["global_model_cids"][-1]
    spec = RunSpec.from_json(results["spec"])
    if store is None:
        from .storage.location import open_store

        entry = results["store"]
        if entry.get("kind") == "local":
            store = open_store(f"local:{(output_dir / entry['root']).resolve()}")
        else:
            store = open_store(f"{entry['kind']}:{entry['location']}")
    return decode_arrays(store.get(cid), max_bytes=spec.max_blob_bytes), cid


def write_run_outputs(output_dir: str | Path, results: Mapping[str, Any], *, store: Any = None) -> dict[str, Path]:
    """Write the model file, ``rounds.csv``, ``clients.csv`` and ``curve.png`` of a run
    into ``output_dir``; return what was written, by name. ``store``: the run's store
    (opened from ``results`` when None)."""
    from .protocol.spec import RunSpec

    output_dir = Path(output_dir)
    written: dict[str, Path] = {}
    final = _final_model(results, output_dir, store)
    if final is not None:
        arrays, cid = final
        rounds = round_rows(results)
        last = max((r["round"] for r in rounds if r["status"] == "finalized"), default=None)
        save_model(output_dir / MODEL_FILE, arrays, spec=RunSpec.from_json(results["spec"]), cid=cid,
                   round_number=last)
        written["model"] = output_dir / MODEL_FILE
    _write_csv(output_dir / ROUNDS_CSV, round_rows(results), ROUND_COLUMNS)
    written["rounds"] = output_dir / ROUNDS_CSV
    _write_csv(output_dir / CLIENTS_CSV, client_rows(results), CLIENT_COLUMNS)
    written["clients"] = output_dir / CLIENTS_CSV
    plot_curve(results, output_dir / CURVE_PNG)
    written["curve"] = output_dir / CURVE_PNG
    return written

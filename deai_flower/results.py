"""``results.json``: what a run did, from the coordinator's reports and the chain's events."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .chain import simulation_key
from .incentives import replay_incentives
from .protocol.encoding import ACCOUNTANT_NAMES, from_wad
from .protocol.spec import spec_cid


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _store_entry(store: Any, output_dir: Path | None) -> dict[str, Any]:
    """The store's description; a local store's ``root`` is relative to the output
    directory when it lies inside it, so a copied output directory is verified against
    its own blobs."""
    entry = dict(store.describe())
    if entry.get("kind") != "local":
        return entry
    root = Path(entry["location"]).resolve()
    entry["root"] = str(root)
    if output_dir is not None and root.is_relative_to(output_dir.resolve()):
        entry["root"] = os.path.relpath(root, output_dir.resolve())
    return entry


#: How a run's DP noise was drawn, as ``results.json`` says it.
SECRET_NOISE = "secret"
SEEDED_NOISE = "reproducible (seeded: not private against anyone who knows the seed)"


def noise_label(cfg: Any) -> str:
    """``privacy.noise`` of ``results.json``: secret unless the config asked for seeded noise."""
    seeded = cfg is not None and bool(cfg.privacy.get("reproducible_noise", False))
    return SEEDED_NOISE if seeded else SECRET_NOISE


def results_document(strategy: Any, *, node: Any, store: Any, first_block: int, setup: dict[str, Any],
                     wall_seconds: float, cfg: Any = None, output_dir: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """The run's results: per round what happened, and everything needed to verify it."""
    evaluation = {r.round: r.metrics for r in strategy.reports}
    rounds = []
    for report in strategy.reports:
        metrics = evaluation.get(report.round, {})
        rounds.append(
            {
                "round": report.round,
                "attempt": report.attempt,
                "status": report.status,
                "reason": report.reason,
                "recovered": report.recovered,
                "accuracy": metrics.get("accuracy"),
                "loss": metrics.get("loss"),
                "epsilon": _finite(report.epsilon_max),
                "train_loss": _finite(report.train_loss),
                "gas_used": report.gas_used,
                "gas_by_call": report.gas_by_call,
                "seconds": sum(report.phase_seconds.values()),
                "phase_seconds": report.phase_seconds,
                "model_cid": report.model_cid,
                "result_cid": report.result_cid,
                "sampled": report.sampled,
                "committed": report.committed,
                "revealed": report.revealed,
                "attested": report.attested,
                "declined": report.declined,
                "excluded": report.excluded,
                "errors": report.errors,
            }
        )
    spec = strategy.spec
    contract = strategy.contract
    events = contract.event_log(from_block=first_block)
    num_clients = int(setup.get("num_clients", cfg.num_clients if cfg is not None else 0))
    seed = int(cfg.seed) if cfg is not None else None
    initial_cid = setup.get("initial_cid") or (strategy.reports[0].model_cid if strategy.reports else "")
    return {
        "private": spec.private,
        "privacy": {"epsilon": _finite(spec.privacy.epsilon), "delta": spec.privacy.delta,
                    "accountant": spec.privacy.accountant, "noise": noise_label(cfg)},  # fmt: skip
        "initial": strategy.initial_metrics,
        "rounds": rounds,
        "contract_address": contract.address,
        "run_id": strategy.run_id,
        "spec_cid": spec_cid(spec.digest()),
        "spec": spec.to_json(),
        "chain": setup.get("chain") or node.describe(),  # the harness's node, not a bridge to it
        "store": _store_entry(store, output_dir),
        "global_model_cids": [initial_cid] + [r.result_cid for r in strategy.reports if r.status == "finalized"],
        "setup_gas": setup.get("setup_gas", {}),
        "wall_seconds": wall_seconds,
        "config": OmegaConf.to_container(cfg, resolve=True) if cfg is not None else None,
        "events": events,
        "privacy_ledger": privacy_ledger(events, seed=seed, num_clients=num_clients),
        "incentives": incentives_section(events, run_id=strategy.run_id, spec=spec, seed=seed,
                                         num_clients=num_clients),  # fmt: skip
    }


def incentives_section(events: list[dict[str, Any]], *, run_id: int, spec: Any, seed: int | None,
                       num_clients: int) -> dict[str, Any]:  # fmt: skip
    """Stakes, slashes, scores per round and payouts (wei) per participant, replayed from
    the chain's events (:mod:`deai_flower.incentives`); ``client`` is a simulated
    participant's index."""
    replay = replay_incentives(events, run_id)
    section = {"score": spec.incentives.score, **replay.to_json(), "conserved": replay.conserved}
    index = {} if seed is None else {
        simulation_key(seed=seed, role=f"client-{i}").address: i for i in range(num_clients)}  # fmt: skip
    for who, entry in section["participants"].items():
        entry["client"] = index.get(who)
    return section


def privacy_ledger(events: list[dict[str, Any]], *, seed: int | None, num_clients: int) -> dict[str, Any]:
    """Each participant's DP-SGD record per round, decoded from the chain's ``Revealed`` events.

    Keyed by participant address; in a simulation ``client`` is the simulated client's
    index. Values are the revealed fixed-point numbers converted back to floats (protocol
    §2.4); anyone can recompute ``epsilon`` from the (σ, q, steps) history at δ.
    """
    index = {} if seed is None else {
        simulation_key(seed=seed, role=f"client-{i}").address: i for i in range(num_clients)}  # fmt: skip
    ledger: dict[str, Any] = {}
    for event in events:
        if event["event"] != "Revealed":
            continue
        args, dp = event["args"], event["args"]["dp"]
        entry = ledger.setdefault(args["participant"], {"client": index.get(args["participant"]), "rounds": []})
        entry["rounds"].append(
            {
                "round": args["round"],
                "noise_multiplier": from_wad(int(dp["noiseMultiplierWad"])),
                "sample_rate": from_wad(int(dp["sampleRateWad"])),
                "steps": int(dp["steps"]),
                "delta": from_wad(int(dp["deltaWad"])),
                "accountant": ACCOUNTANT_NAMES.get(int(dp["accountant"]), str(dp["accountant"])),
                "epsilon": _finite(from_wad(int(dp["epsilonWad"]))),
            }
        )
    return ledger


def write_json_atomic(path: Path, document: Any) -> None:
    """Write ``document`` as JSON to ``path`` atomically: a reader (or a stop at any
    moment) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(document, indent=2, allow_nan=True) + "\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise

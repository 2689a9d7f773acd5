"""One federated experiment, end to end, from a composed config to ``results.json``.

Set-up (deploying the contract, registering the simulated participants, creating the
run, storing the initial model) is done here with the admin's key, as a consortium
would before its silos start; then Flower's ServerApp and ClientApp run on the chosen
engine and everything that happened is read back from the chain.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from pathlib import Path
from typing import Any

from eth_utils import keccak
from omegaconf import DictConfig, OmegaConf

from . import __version__
from .chain import RoundsContract, connect_embedded, connect_rpc, simulation_key, to_wad
from .chain.artifact import load_artifact
from .client_app import build_client_app
from .config import validate
from .data import load_dataset
from .federation import client_role, forget_runtimes, open_store, register_embedded_node, unregister_embedded_node
from .models import build_model, evaluate, get_arrays, select_device, set_arrays
from .privacy import PrivacySettings
from .report import ProgressMonitor
from .server_app import build_server_app
from .settings import RunSettings, TrainingSettings
from .storage import array_spec, cid_to_bytes, encode_arrays
from .strategies import CommitRevealStrategy, RoundReport


def config_hash(cfg: DictConfig) -> bytes:
    """keccak256 of the resolved config as canonical JSON (recorded on chain)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return keccak(json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str).encode())


def code_hash() -> bytes:
    """keccak256 identifying the code release: package version and contract bytecode."""
    return keccak(f"deai-flower {__version__}\n{load_artifact()['deployedBytecode']}".encode())


def run_experiment(cfg: DictConfig, *, output_dir: Path) -> dict[str, Any]:
    """Run the experiment ``cfg`` describes; write and return its results."""
    validate(cfg)  # type: ignore[arg-type]
    started = time.perf_counter()
    privacy = PrivacySettings(
        epsilon=float(cfg.privacy.epsilon),
        delta=float(cfg.privacy.delta),
        max_grad_norm=float(cfg.privacy.max_grad_norm),
        accountant=str(cfg.privacy.accountant),
        secure_mode=bool(cfg.privacy.secure_mode),
    )
    split = load_dataset(cfg.dataset.name, seed=cfg.seed, test_fraction=cfg.dataset.test_fraction)
    if cfg.num_clients > len(split.x_train):
        from .errors import ConfigError

        raise ConfigError(f"num_clients ({cfg.num_clients}) exceeds the {len(split.x_train)} training samples")
    model = build_model(cfg.model.name, num_features=split.num_features, num_classes=split.num_classes,
                        hidden=tuple(cfg.model.hidden), seed=cfg.seed)  # fmt: skip
    initial = get_arrays(model)
    device = select_device(cfg.device)

    store_root = Path(cfg.storage.root)
    if not store_root.is_absolute():
        store_root = output_dir / store_root
    store = open_store(cfg.storage.kind, str(store_root))
    initial_cid = store.put(encode_arrays(initial))

    node = connect_embedded() if cfg.chain.kind == "embedded" else connect_rpc(
        cfg.chain.rpc_url, timeout=cfg.chain.request_timeout_s)  # fmt: skip
    admin = simulation_key(seed=cfg.seed, role="coordinator")
    clients = [simulation_key(seed=cfg.seed, role=client_role(i)) for i in range(cfg.num_clients)]
    node.fund([admin.address] + [c.address for c in clients])
    first_block = int(node.w3.eth.block_number) + 1
    contract, deploy_tx = RoundsContract.deploy(node, admin)
    setup_gas = {"deploy": deploy_tx.gas_used, "register": 0}
    for i, client in enumerate(clients):
        setup_gas["register"] += contract.register(client.address, keccak(f"simulated-node/{i}".encode())).gas_used
    s = cfg.strategy
    run_id, run_tx = contract.create_run(
        {
            "configHash": config_hash(cfg),
            "codeHash": code_hash(),
            "initialModelCid": cid_to_bytes(initial_cid),
            "epsilonBudgetWad": to_wad(privacy.epsilon),
            "deltaWad": to_wad(privacy.delta),
            "numRounds": cfg.num_rounds,
            "commitDuration": s.commit_timeout_s,
            "revealDuration": s.reveal_timeout_s,
            "attestDuration": s.attest_timeout_s,
            "sampleBps": round(s.sample_fraction * 10_000),
            "quorum": s.quorum,
            "minReveals": s.min_reveals,
        }
    )
    setup_gas["createRun"] = run_tx.gas_used

    chain_url = node.url
    bridge = None
    if node.kind == "embedded":
        if cfg.engine.kind == "ray":
            from .chain.bridge import JsonRpcBridge

            bridge = JsonRpcBridge(node)
            chain_url = bridge.start()
        else:
            chain_url = register_embedded_node(node)
    settings = RunSettings(
        seed=cfg.seed,
        num_clients=cfg.num_clients,
        num_rounds=cfg.num_rounds,
        dataset=cfg.dataset.name,
        partitioner=cfg.dataset.partitioner,
        dirichlet_alpha=float(cfg.dataset.dirichlet_alpha),
        test_fraction=float(cfg.dataset.test_fraction),
        model=cfg.model.name,
        hidden=tuple(cfg.model.hidden),
        privacy=privacy,
        training=TrainingSettings(cfg.training.local_epochs, cfg.training.batch_size, float(cfg.training.learning_rate)),
        device=cfg.device,
        rule=s.name,
        chain_url=chain_url,
        contract_address=contract.address,
        run_id=run_id,
        store_kind=cfg.storage.kind,
        store_location=str(store_root),
        max_blob_bytes=cfg.storage.max_blob_bytes,
        session=uuid.uuid4().hex,
    )

    evaluation: dict[int, dict[str, float]] = {}

    def evaluate_global(server_round: int, arrays: dict[str, Any]) -> dict[str, float]:
        set_arrays(model, arrays)
        loss, accuracy = evaluate(model, split.x_test, split.y_test, device=device)
        evaluation[server_round] = {"loss": loss, "accuracy": accuracy}
        monitor.evaluated(server_round, accuracy)
        return {"loss": loss, "accuracy": accuracy}

    monitor = ProgressMonitor(num_rounds=cfg.num_rounds, enabled=bool(cfg.progress))
    strategy = CommitRevealStrategy(
        contract=contract,
        run_id=run_id,
        store=store,
        expected_spec=array_spec(initial),
        max_blob_bytes=cfg.storage.max_blob_bytes,
        committee_size=s.committee_size,
        phase_timeout_s=float(max(s.commit_timeout_s, s.reveal_timeout_s, s.attest_timeout_s)),
        on_phase=monitor.phase,
        on_round=monitor.round_done,
    )
    server_app = build_server_app(strategy=strategy, initial_arrays=initial, num_rounds=cfg.num_rounds,
                                  evaluate=evaluate_global)  # fmt: skip
    client_app = build_client_app(settings)

    flwr_logger = logging.getLogger("flwr")
    previous_level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)
    try:
        with monitor:
            if cfg.engine.kind == "ray":
                from .engine.ray import run_ray

                run_ray(server_app=server_app, client_app=client_app, num_nodes=cfg.num_clients,
                        num_cpus=cfg.engine.num_cpus_per_client, num_gpus=cfg.engine.num_gpus_per_client)  # fmt: skip
            else:
                from .engine.inprocess import run_inprocess

                run_inprocess(server_app=server_app, client_app=client_app, num_nodes=cfg.num_clients, seed=cfg.seed)
    finally:
        flwr_logger.setLevel(previous_level)
        if bridge is not None:
            bridge.stop()
        elif node.kind == "embedded":
            unregister_embedded_node(chain_url)
        forget_runtimes(settings.session)

    results = _results(cfg, strategy.reports, evaluation, contract=contract, run_id=run_id, node=node, store=store,
                       initial_cid=initial_cid, setup_gas=setup_gas, first_block=first_block,
                       wall_seconds=time.perf_counter() - started, private=privacy.private)  # fmt: skip
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return results


def _finite(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _results(
    cfg: DictConfig,
    reports: list[RoundReport],
    evaluation: dict[int, dict[str, float]],
    *,
    contract: RoundsContract,
    run_id: int,
    node: Any,
    store: Any,
    initial_cid: str,
    setup_gas: dict[str, int],
    first_block: int,
    wall_seconds: float,
    private: bool,
) -> dict[str, Any]:
    rounds = []
    for report in reports:
        metrics = evaluation.get(report.server_round, {})
        rounds.append(
            {
                "round": report.server_round,
                "chain_round": report.chain_round,
                "status": report.status,
                "reason": report.reason,
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
                "errors": report.errors,
            }
        )
    return {
        "private": private,
        "privacy": {"epsilon": _finite(float(cfg.privacy.epsilon)), "delta": float(cfg.privacy.delta),
                    "accountant": str(cfg.privacy.accountant)},  # fmt: skip
        "initial": evaluation.get(0, {}),
        "rounds": rounds,
        "contract_address": contract.address,
        "run_id": run_id,
        "chain": node.describe(),
        "store": store.describe(),
        "global_model_cids": [initial_cid] + [r.result_cid for r in reports if r.status == "finalized"],
        "setup_gas": setup_gas,
        "wall_seconds": wall_seconds,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "events": contract.event_log(from_block=first_block),
    }

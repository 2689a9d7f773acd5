"""One federated experiment, end to end, from a composed config to ``results.json``.

Set-up (deploying the contract, registering the simulated participants, creating the
run, storing the initial model) is done here with the admin's key, as a consortium
would before its silos start; then Flower's ServerApp and ClientApp run on the chosen
engine and everything that happened is read back from the chain.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import keccak
from omegaconf import DictConfig, OmegaConf

from . import __version__
from .chain import RoundsContract, connect_embedded, connect_rpc, simulation_key, to_wad
from .chain.artifact import load_artifact
from .protocol.encoding import ACCOUNTANT_NAMES, from_wad
from .client_app import build_client_app
from .config import validate
from .data import client_partitions, load_dataset
from .federation import client_role, forget_runtimes, open_store, register_embedded_node, unregister_embedded_node
from .models import build_model, check_engine_devices, evaluate, get_arrays, select_device, set_arrays
from .privacy import PrivacySettings
from .report import ProgressMonitor
from .server_app import build_server_app
from .settings import RunSettings, TrainingSettings
from .errors import ConfigError
from .storage import array_spec, cid_from_bytes, cid_to_bytes, decode_arrays, encode_arrays
from .strategies import CommitRevealStrategy, RoundReport


#: Keys that steer a process, not the experiment: left out of the on-chain config hash,
#: so a coordinator resuming a run presents the same hash.
_RUN_CONTROL_KEYS = ("resume", "progress")


def config_hash(cfg: DictConfig) -> bytes:
    """keccak256 of the resolved config as canonical JSON (recorded on chain)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    for key in _RUN_CONTROL_KEYS:
        resolved.pop(key, None)
    return keccak(json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str).encode())


def code_hash() -> bytes:
    """keccak256 identifying the code release: package version and contract bytecode."""
    return keccak(f"deai-flower {__version__}\n{load_artifact()['deployedBytecode']}".encode())


def run_experiment(cfg: DictConfig, *, output_dir: Path) -> dict[str, Any]:
    """Run the experiment ``cfg`` describes; write and return its results."""
    validate(cfg)  # type: ignore[arg-type]
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # The chain first: an unreachable node stops the run before any data is loaded.
    node = connect_embedded() if cfg.chain.kind == "embedded" else connect_rpc(
        cfg.chain.rpc_url, timeout=cfg.chain.request_timeout_s)  # fmt: skip
    privacy = _privacy_settings(cfg, output_dir)
    split, model = _data_and_model(cfg)
    initial = get_arrays(model)
    device = select_device(cfg.device)
    check_engine_devices(cfg.engine.kind, cfg.device, float(cfg.engine.num_gpus_per_client))

    store_location = _store_location(cfg, output_dir)
    store = open_store(cfg.storage.kind, store_location, timeout_s=float(cfg.storage.timeout_s),
                       retries=int(cfg.storage.retries), max_bytes=int(cfg.storage.max_blob_bytes))  # fmt: skip
    initial_cid = store.put(encode_arrays(initial))

    admin = simulation_key(seed=cfg.seed, role="coordinator")
    clients = [simulation_key(seed=cfg.seed, role=client_role(i)) for i in range(cfg.num_clients)]
    node.fund([admin.address] + [c.address for c in clients])
    if cfg.resume.contract_address:
        chain_run = _resume_run(cfg, node, admin, store, spec=array_spec(initial))
        initial = chain_run.model
        initial_cid = store.put(encode_arrays(initial))  # canonical bytes: the chain's model CID
    else:
        chain_run = _create_run(cfg, node, admin, clients, initial_cid=initial_cid, privacy=privacy)

    evaluation: dict[int, dict[str, float]] = {}

    def evaluate_global(server_round: int, arrays: dict[str, Any]) -> dict[str, float]:
        set_arrays(model, arrays)
        loss, accuracy = evaluate(model, split.x_test, split.y_test, device=device)
        evaluation[server_round] = {"loss": loss, "accuracy": accuracy}
        monitor.evaluated(server_round, accuracy)
        return {"loss": loss, "accuracy": accuracy}

    s, done = cfg.strategy, chain_run.finalized_rounds
    monitor = ProgressMonitor(num_rounds=cfg.num_rounds, enabled=bool(cfg.progress), completed=done)
    strategy = CommitRevealStrategy(
        contract=chain_run.contract,
        run_id=chain_run.run_id,
        store=store,
        expected_spec=array_spec(initial),
        max_blob_bytes=cfg.storage.max_blob_bytes,
        committee_size=s.committee_size,
        phase_timeout_s=float(max(s.commit_timeout_s, s.reveal_timeout_s, s.attest_timeout_s)),
        on_phase=monitor.phase,
        on_round=monitor.round_done,
        first_round=done + 1,
    )
    server_app = build_server_app(strategy=strategy, initial_arrays=initial, num_rounds=cfg.num_rounds - done,
                                  evaluate=evaluate_global, first_round=done + 1)  # fmt: skip
    with _chain_for_clients(node, cfg.engine.kind) as chain_url:
        settings = _run_settings(cfg, privacy=privacy, chain_url=chain_url, contract_address=chain_run.contract.address,
                                 run_id=chain_run.run_id, store_location=store_location)  # fmt: skip
        try:
            with monitor:
                _run_engine(cfg, server_app=server_app, client_app=build_client_app(settings))
        finally:
            forget_runtimes(settings.session)

    results = _results(cfg, strategy.reports, evaluation, contract=chain_run.contract, run_id=chain_run.run_id,
                       node=node, store=store, initial_cid=initial_cid, setup_gas=chain_run.setup_gas,
                       first_block=chain_run.first_block, wall_seconds=time.perf_counter() - started,
                       private=privacy.private)  # fmt: skip
    (output_dir / "results.json").write_text(json.dumps(results, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return results


def _privacy_settings(cfg: DictConfig, output_dir: Path) -> PrivacySettings:
    return PrivacySettings(
        epsilon=float(cfg.privacy.epsilon),
        delta=float(cfg.privacy.delta),
        max_grad_norm=float(cfg.privacy.max_grad_norm),
        accountant=str(cfg.privacy.accountant),
        secure_mode=bool(cfg.privacy.secure_mode),
        grad_sample_mode=str(cfg.privacy.grad_sample_mode),
        # Relative to the run's output directory, like storage.root.
        state_dir=None if cfg.privacy.state_dir is None else str(output_dir / Path(cfg.privacy.state_dir)),
    )


def _data_and_model(cfg: DictConfig) -> tuple[Any, Any]:
    """The dataset split and the initial model, after checking that the data can be
    partitioned as configured (before anything is deployed)."""
    split = load_dataset(cfg.dataset.name, seed=cfg.seed, test_fraction=cfg.dataset.test_fraction,
                         max_groups=cfg.dataset.max_groups)  # fmt: skip
    if cfg.num_clients > len(split.x_train):
        raise ConfigError(f"num_clients ({cfg.num_clients}) exceeds the {len(split.x_train)} training samples")
    # Partition once here so an impossible split (e.g. num_clients differing from a natural
    # split's institutions) stops the run before anything is deployed.
    client_partitions(split, num_partitions=cfg.num_clients, partitioner=cfg.dataset.partitioner, seed=cfg.seed,
                      alpha=float(cfg.dataset.dirichlet_alpha),
                      classes_per_partition=cfg.dataset.classes_per_partition)  # fmt: skip
    model = build_model(cfg.model.name, num_features=split.num_features, num_classes=split.num_classes,
                        hidden=tuple(cfg.model.hidden), seed=cfg.seed, input_shape=split.input_shape,
                        channels=tuple(cfg.model.channels), activation=cfg.model.activation,
                        norm=cfg.model.norm, pool=cfg.model.pool)  # fmt: skip
    return split, model


def _store_location(cfg: DictConfig, output_dir: Path) -> str:
    """The IPFS API address, or the local store's directory (relative to the output)."""
    if cfg.storage.kind == "ipfs":
        return str(cfg.storage.api_addr)
    root = Path(cfg.storage.root)
    return str(root if root.is_absolute() else output_dir / root)


@contextlib.contextmanager
def _chain_for_clients(node: Any, engine_kind: str) -> Iterator[str]:
    """The URL clients reach the chain at for the duration of the block.

    A JSON-RPC node's own URL; the embedded chain is registered for clients in this
    process, or served over loopback JSON-RPC for Ray's worker processes.
    """
    if node.kind != "embedded":
        yield node.url
    elif engine_kind == "ray":
        from .chain.bridge import JsonRpcBridge

        bridge = JsonRpcBridge(node)
        try:
            yield bridge.start()
        finally:
            bridge.stop()
    else:
        url = register_embedded_node(node)
        try:
            yield url
        finally:
            unregister_embedded_node(url)


def _run_settings(cfg: DictConfig, *, privacy: PrivacySettings, chain_url: str, contract_address: str, run_id: int,
                  store_location: str) -> RunSettings:  # fmt: skip
    """What every client needs to rebuild its side of the run, in any process."""
    s = cfg.strategy
    return RunSettings(
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
        training=TrainingSettings(cfg.training.local_epochs, cfg.training.batch_size, float(cfg.training.learning_rate),
                                  num_threads=max(1, int(cfg.engine.num_cpus_per_client))),  # fmt: skip
        device=cfg.device,
        rule=s.name,
        chain_url=chain_url,
        contract_address=contract_address,
        run_id=run_id,
        store_kind=cfg.storage.kind,
        store_location=store_location,
        store_timeout_s=float(cfg.storage.timeout_s),
        store_retries=int(cfg.storage.retries),
        max_blob_bytes=cfg.storage.max_blob_bytes,
        session=uuid.uuid4().hex,
        rule_params=(("num_malicious_nodes", s.num_malicious_nodes), ("num_nodes_to_select", s.num_nodes_to_select),
                     ("beta", float(s.beta))),  # fmt: skip
        poisoned_clients=tuple(cfg.adversary.poisoned_clients),
        poison_scale=float(cfg.adversary.scale),
        classes_per_partition=int(cfg.dataset.classes_per_partition),
        max_groups=cfg.dataset.max_groups,
        channels=tuple(cfg.model.channels),
        activation=str(cfg.model.activation),
        norm=str(cfg.model.norm),
        pool=int(cfg.model.pool),
    )


def _run_engine(cfg: DictConfig, *, server_app: Any, client_app: Any) -> None:
    """Run the apps on the configured engine, with Flower's own logging quietened."""
    flwr_logger = logging.getLogger("flwr")
    previous_level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)
    try:
        if cfg.engine.kind == "ray":
            from .engine.ray import run_ray

            run_ray(server_app=server_app, client_app=client_app, num_nodes=cfg.num_clients,
                    num_cpus=cfg.engine.num_cpus_per_client, num_gpus=cfg.engine.num_gpus_per_client)  # fmt: skip
        else:
            from .engine.inprocess import run_inprocess

            run_inprocess(server_app=server_app, client_app=client_app, num_nodes=cfg.num_clients, seed=cfg.seed)
    finally:
        flwr_logger.setLevel(previous_level)


@dataclass
class ChainRun:
    """The run on chain this process drives: new, or resumed after a coordinator restart."""

    contract: RoundsContract
    run_id: int
    setup_gas: dict[str, int]
    first_block: int
    finalized_rounds: int = 0
    model: dict[str, Any] = field(default_factory=dict)


def _create_run(cfg: DictConfig, node: Any, admin: Any, clients: list[Any], *, initial_cid: str,
                privacy: PrivacySettings) -> ChainRun:  # fmt: skip
    """Deploy the contract, register the simulated participants and create the run."""
    first_block = int(node.w3.eth.block_number) + 1
    contract, deploy_tx = RoundsContract.deploy(node, admin)
    setup_gas = {"deploy": deploy_tx.gas_used, "register": 0}
    for i, client in enumerate(clients):
        setup_gas["register"] += contract.register(client.address, keccak(f"simulated-node/{i}".encode())).gas_used
    s = cfg.strategy
    run_id, run_tx = contract.create_run(
        {
            "specHash": config_hash(cfg),
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
    return ChainRun(contract=contract, run_id=run_id, setup_gas=setup_gas, first_block=first_block)


def _resume_run(cfg: DictConfig, node: Any, admin: Any, store: Any, *, spec: dict[str, Any]) -> ChainRun:
    """Take over a run a previous coordinator created: same config, the chain's model.

    Finalized rounds stay done; the Flower loop runs only the rounds still missing, from
    the model the chain finalized last. A round left in flight is let lapse first by
    the strategy (its deadlines pass; a new attempt opens).
    """
    contract = RoundsContract(node, cfg.resume.contract_address, admin)
    run_id = int(cfg.resume.run_id)
    run = contract.get_run(run_id)
    if int(run["numRounds"]) == 0:
        raise ConfigError(f"resume: contract {contract.address} has no run {run_id}")
    created = [e for e in contract.event_log() if e["event"] == "RunCreated" and e["args"]["runId"] == run_id]
    recorded = created[0]["args"]["params"]["specHash"] if created else ""
    if recorded != "0x" + config_hash(cfg).hex():
        raise ConfigError(f"resume: run {run_id} was created with a different config (hash {recorded}); "
                          "resume it with the same overrides")  # fmt: skip
    model_cid = cid_from_bytes(bytes(run["modelCid"]))
    model = decode_arrays(store.get(model_cid), max_bytes=int(cfg.storage.max_blob_bytes), expected=spec)
    return ChainRun(contract=contract, run_id=run_id, setup_gas={}, first_block=0,
                    finalized_rounds=int(run["finalizedRounds"]), model=model)  # fmt: skip


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
                "excluded": report.excluded,
                "errors": report.errors,
            }
        )
    events = contract.event_log(from_block=first_block)
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
        "events": events,
        "privacy_ledger": _privacy_ledger(events, seed=cfg.seed, num_clients=cfg.num_clients),
    }


def _privacy_ledger(events: list[dict[str, Any]], *, seed: int, num_clients: int) -> dict[str, Any]:
    """Each client's DP-SGD record per round, decoded from the chain's ``Revealed`` events.

    Keyed by participant address; ``client`` is the simulated client's index. Values are
    the revealed fixed-point numbers converted back to floats (protocol §2.4); anyone
    can recompute ``epsilon`` from the (σ, q, steps) history at δ with the accountant.
    """
    index = {simulation_key(seed=seed, role=client_role(i)).address: i for i in range(num_clients)}
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

"""A consortium's on-chain steps: deploy the contract, register silos, create runs.

Each step signs with the consortium admin's keystore on a JSON-RPC node and returns
what it did; a step that cannot be done (a silo registered already, a key that is not
the admin's, a run config that does not compose) is a :class:`ConsortiumError` with one
reason, raised before anything is sent where the chain lets it be checked first.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import is_address, to_checksum_address

from ..chain import RoundsContract
from ..chain.keys import keystore_key
from ..chain.node import ChainNode, connect_rpc
from ..errors import ChainError, ContractRevertError
from ..protocol.identity import supernode_identity
from .errors import ConsortiumError

__all__ = ["CreatedRun", "create_run", "deploy", "fund", "register", "open_contract", "withdraw"]


def admin_key(keystore: Path, password_file: Path) -> LocalAccount:
    return keystore_key(keystore, password_file=password_file)


def _contract(node: ChainNode, address: str, account: LocalAccount) -> RoundsContract:
    if not is_address(address):
        raise ConsortiumError(f"--contract {address!r} is not an address")
    if len(node.w3.eth.get_code(to_checksum_address(address))) == 0:
        raise ConsortiumError(f"no contract at {address} on {node.url} (deployed on another chain?)")
    return RoundsContract(node, address, account)


def open_contract(rpc_url: str, address: str, account: LocalAccount) -> RoundsContract:
    """The deployed contract at ``address`` on the node at ``rpc_url``, signing with ``account``."""
    return _contract(connect_rpc(rpc_url), address, account)


def fund(rpc_url: str, addresses: list[str]) -> None:
    """Give development ether to ``addresses`` (anvil, hardhat: nodes with unlocked accounts)."""
    for address in addresses:
        if not is_address(address):
            raise ConsortiumError(f"{address!r} is not an address")
    connect_rpc(rpc_url).fund([to_checksum_address(a) for a in addresses])


def _require_funds(node: ChainNode, account: LocalAccount) -> None:
    if node.w3.eth.get_balance(account.address) == 0:
        raise ConsortiumError(f"{account.address} has no ether on {node.url} to pay for gas "
                              f"(fund it; on a development node: deai consortium fund --rpc {node.url} "
                              f"{account.address})")  # fmt: skip


def deploy(rpc_url: str, account: LocalAccount) -> tuple[str, int]:
    """Deploy the contract with ``account`` as its admin; its address and the gas used."""
    node = connect_rpc(rpc_url)
    _require_funds(node, account)
    contract, tx = RoundsContract.deploy(node, account)
    return contract.address, tx.gas_used


def register(rpc_url: str, address: str, account: LocalAccount, *, silo: str, supernode_key: bytes) -> bytes:
    """Register ``silo`` bound to the hash of its SuperNode public key; return that hash.

    Refused before sending: an address that is not one, a silo registered already, a
    SuperNode key another silo is bound to, a key that is not the contract's admin.
    """
    if not is_address(silo):
        raise ConsortiumError(f"silo address {silo!r} is not an address")
    silo = to_checksum_address(silo)
    identity = supernode_identity(supernode_key)
    contract = open_contract(rpc_url, address, account)
    active, bound = contract.participant_info(silo)
    if active:
        same = " (to this SuperNode key)" if bound == identity else f" (to SuperNode identity 0x{bound.hex()})"
        raise ConsortiumError(f"silo {silo} is registered already{same}")
    for member in contract.members():
        if contract.participant_info(member)[1] == identity:
            raise ConsortiumError(f"this SuperNode key is bound to silo {member} already; each silo needs its own")
    _require_funds(contract.node, account)
    try:
        contract.register(silo, identity)
    except ContractRevertError as exc:
        if exc.error_name == "NotAdmin":
            raise ConsortiumError(f"{account.address} is not the admin of contract {contract.address}; "
                                  "register with the key that deployed it") from None  # fmt: skip
        raise
    return identity


@dataclass(frozen=True)
class CreatedRun:
    contract: str
    run_id: int
    spec_cid: str
    initial_cid: str
    num_rounds: int
    rule: str


def compose_run_config(overrides: list[str]) -> Any:
    """The experiment config of ``overrides`` (Hydra syntax, as for ``deai-flower``),
    checked without importing its dataset loader."""
    from ..compose import compose_overrides

    return compose_overrides(" ".join(shlex.quote(o) for o in overrides), check_loader=False)


def create_run(rpc_url: str, address: str, account: LocalAccount, *, store_location: str, overrides: list[str],
               validation_set: Path | None = None) -> CreatedRun:  # fmt: skip
    """Create a run of the experiment ``overrides`` describe: its spec (model, data schema,
    rule, DP settings, rounds) and initial model go into the store, the chain records them.

    No dataset is loaded: the data schema is the one ``dataset.schema`` declares (silos
    train on their own files, checked against it), and a loss-scored run's validation set
    is the creator's own ``validation_set`` file (``.npz``, ``.csv`` or ``.parquet``, as a
    silo's). The creator's key pays the reward pool.
    """
    from ..config import declared_schema, spec_from_config
    from ..protocol.spec import spec_cid
    from ..silo_data import load_silo_data
    from ..storage.location import open_store
    from .runs import create_run as create_on_chain
    from .runs import publish_run, publish_validation_set

    cfg = compose_run_config(overrides)
    schema = declared_schema(cfg)
    if schema is None:
        raise ConsortiumError("the run's data schema is not declared: name a dataset that declares one or give "
                              "dataset.schema.num_features=N dataset.schema.num_classes=K "
                              "(and dataset.schema.input_shape=[C,H,W] for images)")  # fmt: skip
    loss_scored = str(cfg.incentives.score) == "loss"
    if loss_scored and validation_set is None:
        raise ConsortiumError("a loss-scored run (incentives.score=loss) needs its validation set: --validation-set FILE")
    if not loss_scored and validation_set is not None:
        raise ConsortiumError("--validation-set is for loss-scored runs (incentives.score=loss)")
    contract = open_contract(rpc_url, address, account)
    if contract.contract.functions.admin().call() != account.address:
        raise ConsortiumError(f"{account.address} is not the admin of contract {contract.address}; "
                              "create runs with the key that deployed it")  # fmt: skip
    _require_funds(contract.node, account)
    store = open_store(store_location, max_bytes=int(cfg.storage.max_blob_bytes))
    validation_cid = ""
    if validation_set is not None:
        validation_cid = publish_validation_set(store, *load_silo_data(validation_set, schema))
    spec = spec_from_config(cfg, schema, validation_cid=validation_cid)
    spec.check_supported()
    initial_cid, _ = publish_run(spec, store, seed=int(cfg.seed))
    try:
        run_id, _ = create_on_chain(contract, spec, initial_cid)
    except ChainError as exc:
        raise ConsortiumError(f"createRun failed: {exc}") from None
    return CreatedRun(contract=contract.address, run_id=run_id, spec_cid=spec_cid(spec.digest()),
                      initial_cid=initial_cid, num_rounds=spec.rounds.num_rounds, rule=spec.rule.name)  # fmt: skip


def withdraw(rpc_url: str, address: str, account: LocalAccount, *, run_id: int, pool: bool = False) -> dict[str, int]:
    """Pull what ``account`` is owed in run ``run_id``: its rewards, then its stake (once
    its last round is closed), and with ``pool`` what the run's pool holds (its creator,
    once the run is complete). Returns the amounts withdrawn (wei or token units), by kind.

    Raises:
        ConsortiumError: nothing to withdraw, or the stake is still locked by an open round.
    """
    contract = open_contract(rpc_url, address, account)
    if int(contract.get_run(run_id)["numRounds"]) == 0:
        raise ConsortiumError(f"contract {contract.address} has no run {run_id}")
    _require_funds(contract.node, account)
    owed = contract.get_account(run_id, account.address)
    withdrawn: dict[str, int] = {}
    if int(owed["rewards"]):
        contract.withdraw_rewards(run_id)
        withdrawn["rewards"] = int(owed["rewards"])
    if int(owed["stake"]):
        try:
            tx = contract.withdraw_stake(run_id)
        except ContractRevertError as exc:
            if exc.error_name != "StakeLocked":
                raise
            until = exc.error_args[2]
            raise ConsortiumError(f"{account.address}'s stake in run {run_id} is locked until round {until} "
                                  "closes (a penalty may still apply); withdraw after it") from None  # fmt: skip
        # the stake less any penalty settled on the way out
        withdrawn["stake"] = sum(int(e["args"]["amount"]) for e in tx.events if e["event"] == "StakeWithdrawn")
    if pool:
        held = int(contract.get_incentives(run_id)["pool"])
        if held:
            try:
                contract.withdraw_pool(run_id)
            except ContractRevertError as exc:
                raise ConsortiumError(f"the pool of run {run_id} cannot be withdrawn: {exc}") from None
            withdrawn["pool"] = held
    if not withdrawn:
        raise ConsortiumError(f"{account.address} has nothing to withdraw in run {run_id}")
    return withdrawn


def cancel_run(rpc_url: str, address: str, account: LocalAccount, *, run_id: int) -> dict[str, int]:
    """Cancel run ``run_id`` once its last three attempts have failed (``cancelRun``,
    protocol §2.8; anyone may send it): no round opens again, stakes and earned rewards
    stay withdrawable, and the creator may take back the pool. Returns the run's round,
    finalized rounds and pool at cancellation, from the ``RunCancelled`` event.

    Raises:
        ConsortiumError: no such run, cancelled already, or too few failed attempts yet.
    """
    contract = open_contract(rpc_url, address, account)
    if int(contract.get_run(run_id)["numRounds"]) == 0:
        raise ConsortiumError(f"contract {contract.address} has no run {run_id}")
    _require_funds(contract.node, account)
    try:
        tx = contract.cancel_run(run_id)
    except ContractRevertError as exc:
        if exc.error_name == "CancelTooEarly":
            _, round_id, failed, required = exc.error_args[:4]
            raise ConsortiumError(f"run {run_id} cannot be cancelled yet: round {round_id} has {failed} failed "
                                  f"attempts in a row, {required} are needed") from None  # fmt: skip
        raise ConsortiumError(f"run {run_id} cannot be cancelled: {exc}") from None
    (event,) = (e["args"] for e in tx.events if e["event"] == "RunCancelled")
    return {"round": int(event["round"]), "finalized_rounds": int(event["finalizedRounds"]),
            "pool": int(event["pool"])}  # fmt: skip

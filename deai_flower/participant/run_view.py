"""A participant's view of one run, built from what the chain records.

The contract handle signs with the participant's key; the spec is the one whose digest
the chain recorded at ``createRun``, fetched from the participant's own store; the model
is built from the spec's target for the spec's data schema; the participant's data is
checked against that schema. A run any of these fails for is refused with one reason,
before anything is trained or signed. Views are cached per (participant, chain, store,
contract, run) within a process: a Flower worker serves many messages of one run.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from eth_utils import to_checksum_address

from ..chain import RoundsContract
from ..chain.node import ChainNode, connect_url
from ..chain.runs import fetch_spec
from ..errors import ConfigError, ProtocolError
from ..models import get_arrays, instantiate_model, select_device
from ..privacy import PrivacySettings
from ..protocol.spec import MAX_SPEC_BYTES, RunSpec, SpecError
from ..storage import ContentStore, array_spec
from ..storage.location import open_store
from .participant import LocalData, Participant

__all__ = ["RunView", "forget_run_views", "run_view"]


@dataclass
class RunView:
    """Everything a participant reuses across the messages of one run."""

    participant: Participant
    contract: RoundsContract
    run_id: int
    spec: RunSpec
    #: The spec's digest as the chain recorded it (what the view was built from).
    spec_digest: bytes
    store: ContentStore
    model: torch.nn.Module
    #: Names, shapes and dtypes every blob of this run must have.
    array_spec: dict[str, Any]
    data: LocalData
    device: torch.device

    @property
    def account(self) -> Any:
        return self.participant.account

    def privacy_settings(self) -> PrivacySettings:
        """The spec's DP settings with this node's own choices (secure RNG, per-sample
        gradients, ledger directory)."""
        p = self.spec.privacy
        ledger_dir = self.participant.ledger_dir
        return PrivacySettings(epsilon=p.epsilon, delta=p.delta, max_grad_norm=p.max_grad_norm,
                               accountant=p.accountant, secure_mode=self.participant.secure_mode,
                               grad_sample_mode=self.participant.grad_sample_mode,
                               state_dir=None if ledger_dir is None else str(ledger_dir))  # fmt: skip


_VIEWS: weakref.WeakKeyDictionary[Participant, dict[tuple[str, str, str, int], RunView]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def run_view(participant: Participant, contract_address: str, run_id: int) -> RunView:
    """The (cached) view of run ``run_id`` of ``contract_address`` for ``participant``,
    through its own chain endpoint and store.

    Raises:
        SpecError: the spec cannot be fetched, parsed or supported, or its model cannot
            be built here.
        ProtocolError: the participant's data does not fit the spec's schema.
    """
    contract_address = to_checksum_address(contract_address)
    key = (participant.chain_url, participant.store_location, contract_address, int(run_id))
    with _LOCK:
        views = _VIEWS.setdefault(participant, {})
        view = views.get(key)
        if view is None or _stale(view, participant.chain_url):
            node = connect_url(participant.chain_url)
            view = views[key] = _build(participant, node, contract_address, int(run_id))
        return view


def _stale(view: RunView, chain_url: str) -> bool:
    # An embedded URL names an object of this process: a later chain may reuse the name.
    return chain_url.startswith("embedded://") and connect_url(chain_url) is not view.contract.node


def forget_run_views(participant: Participant | None = None) -> None:
    """Drop cached views (of one participant, or all): a finished experiment's chain,
    store and model are then freed."""
    with _LOCK:
        if participant is None:
            _VIEWS.clear()
        else:
            _VIEWS.pop(participant, None)


def _build(participant: Participant, node: ChainNode, address: str, run_id: int) -> RunView:
    contract = RoundsContract(node, address, participant.account)
    spec = fetch_spec(contract, run_id, open_store(participant.store_location, max_bytes=MAX_SPEC_BYTES))
    digest = spec.digest()
    try:
        model = instantiate_model(spec.model, spec.data, allowed=participant.model_targets)
    except SpecError as exc:
        raise SpecError(f"run {run_id}: {exc}; a silo lists more in its node config's 'model-targets'") from exc
    except ConfigError as exc:
        raise SpecError(f"run {run_id}: cannot build its model here ({exc})") from exc
    data = participant.local_data(spec.data)
    try:
        device = select_device(participant.device, index=participant.device_index)
    except ConfigError as exc:
        raise ProtocolError(f"participant {participant.label}: {exc}") from exc
    store = open_store(participant.store_location, max_bytes=spec.max_blob_bytes)
    return RunView(participant=participant, contract=contract, run_id=run_id, spec=spec, spec_digest=digest,
                   store=store, model=model, array_spec=array_spec(get_arrays(model)), data=data,
                   device=device)  # fmt: skip

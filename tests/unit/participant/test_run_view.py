"""A participant builds a run from what the chain records, and refuses one it cannot."""

from __future__ import annotations

import dataclasses

import pytest
from support import Deployment

from deai_flower.errors import ProtocolError
from deai_flower.participant import Participant, forget_run_views
from deai_flower.participant.run_view import run_view
from deai_flower.protocol.spec import DataSchema, ModelSpec, RuleSpec, SpecError, allowed_models
from deai_flower.storage import LocalStore, compute_cid
from unit.participant._support import create_run, small_spec


def test_a_view_is_built_from_the_recorded_spec_and_cached(
    deployment: Deployment, store: LocalStore, participants: list[Participant]
) -> None:
    spec = small_spec()
    run_id = create_run(deployment, store, spec)
    view = run_view(participants[0], deployment.admin.address, run_id)
    assert view.spec == spec and view.spec_digest == spec.digest()
    assert view.contract.account.address == participants[0].address  # it signs with its own key
    assert set(view.array_spec) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert view.data.x.shape == (40, 4) and str(view.device) == "cpu"
    settings = view.privacy_settings()
    assert (settings.epsilon, settings.delta, settings.max_grad_norm, settings.state_dir) == (8.0, 1e-5, 1.0, None)
    assert run_view(participants[0], deployment.admin.address.lower(), run_id) is view
    assert run_view(participants[1], deployment.admin.address, run_id) is not view
    forget_run_views(participants[0])
    assert run_view(participants[0], deployment.admin.address, run_id) is not view


def test_a_spec_other_than_the_one_the_chain_records_is_refused(
    deployment: Deployment, store: LocalStore, participants: list[Participant]
) -> None:
    """The store holds spec A, the chain records spec B's digest: the participant finds
    no spec under B's CID and takes nothing the store offers instead."""
    recorded = small_spec()
    offered = small_spec(rule=RuleSpec("fedmedian", {}))
    run_id = create_run(deployment, store, recorded, stored=offered)
    with pytest.raises(SpecError, match=f"cannot fetch its spec {compute_cid(recorded.to_bytes())}"):
        run_view(participants[0], deployment.admin.address, run_id)


def test_a_spec_with_an_unsupported_rule_is_refused(
    deployment: Deployment, store: LocalStore, participants: list[Participant]
) -> None:
    run_id = create_run(deployment, store, small_spec(rule=RuleSpec("mean-of-my-choice", {})))
    with pytest.raises(SpecError, match="aggregation rule 'mean-of-my-choice'"):
        run_view(participants[0], deployment.admin.address, run_id)


def test_no_such_run_is_refused(deployment: Deployment, participants: list[Participant]) -> None:
    with pytest.raises(SpecError, match="has no run 9"):
        run_view(participants[0], deployment.admin.address, 9)


def test_a_model_target_the_participant_does_not_build_is_refused(
    deployment: Deployment, store: LocalStore, participants: list[Participant]
) -> None:
    run_id = create_run(deployment, store, small_spec(model=ModelSpec("builtins.print", {})), initial_model=False)
    deployed = dataclasses.replace(participants[0], _data_cache={})  # the bundled targets only
    with pytest.raises(SpecError, match="model builtins.print is not one this party builds"):
        run_view(deployed, deployment.admin.address, run_id)
    anything = dataclasses.replace(participants[0], model_targets=allowed_models(["builtins.print"]), _data_cache={})
    with pytest.raises(SpecError, match="cannot build its model here .*returned a NoneType"):
        run_view(anything, deployment.admin.address, run_id)


def test_data_that_does_not_fit_the_schema_refuses_the_run(
    deployment: Deployment, store: LocalStore, participants: list[Participant]
) -> None:
    wider = DataSchema(num_features=6, num_classes=3, input_shape=(6,))
    run_id = create_run(deployment, store, small_spec(data=wider))
    with pytest.raises(ProtocolError, match="client-0's data .* wants 6 per example"):
        run_view(participants[0], deployment.admin.address, run_id)

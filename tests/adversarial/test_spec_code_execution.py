"""Attack: a run spec makes every party that builds its model run the launcher's code.

A spec names its model by a dotted target and gives its arguments. A launcher wrote
``{"_target_": "builtins.print", "file": {"_target_": "builtins.open", ...}}`` into the
arguments of a model the silo allows (Hydra instantiated it: text appended to a file of
the launcher's choosing), or named a target that merely starts like an allowed one
(``deai_flower.models.np.save`` walks into numpy and writes a file). Now a party builds
only targets its own configuration names exactly, and refuses any Hydra key in the
arguments before anything is imported: the silo (a deployed participant built from its
node config, handling a commit), the coordinator's ServerApp and ``deai verify``.

Each run is created on the embedded chain with the real contract, its spec stored in the
real local store; the silo reaches chain and store through its own endpoints.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from eth_account import Account
from torch import nn
from torch.nn import Linear

from deai_flower.chain import RoundsContract, connect_embedded, simulation_key
from deai_flower.chain.bridge import JsonRpcBridge
from deai_flower.cli.deai import main as deai_main
from deai_flower.consortium.runs import create_run
from deai_flower.errors import ConfigError, DeaiError
from deai_flower.models import get_arrays
from deai_flower.participant.app import client_app
from deai_flower.protocol.spec import IncentivesSpec, ModelSpec, SpecError
from deai_flower.server_app import coordinate
from deai_flower.storage import LocalStore, cid_from_bytes, encode_arrays
from unit.participant._support import call, context, local_data, message, small_spec


class SiloNet(nn.Module):
    """A model of the silo's own installed code, which its node config lists exactly."""

    def __init__(self, num_features: int, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(num_features, width), nn.Tanh(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


SILO_NET = f"{SiloNet.__module__}.{SiloNet.__qualname__}"
#: Imported here, defined in torch: listed under this module's name it is an attribute walk.
IMPORTED_LINEAR = f"{SiloNet.__module__}.{Linear.__name__}"


@dataclass
class Consortium:
    admin: RoundsContract
    store_root: Path
    store: LocalStore
    silo_config: dict[str, Any]
    coordinator_config: dict[str, Any]


@pytest.fixture
def consortium(tmp_path: Path) -> Iterator[Consortium]:
    """A contract with one registered silo (keystore, data file, its own chain endpoint and
    store directory) and a coordinator's keystore, over the chain's JSON-RPC bridge."""
    node = connect_embedded()
    admin_key, silo = simulation_key(seed=23, role="coordinator"), Account.create()
    node.fund([admin_key.address, silo.address])
    admin, _ = RoundsContract.deploy(node, admin_key)
    admin.register(silo.address, b"\x01" * 32)
    bridge = JsonRpcBridge(node)
    url = bridge.start()
    for name, account in (("silo", silo), ("coordinator", admin_key)):
        home = tmp_path / name
        home.mkdir()
        (home / "key.json").write_text(json.dumps(Account.encrypt(account.key, "pw", kdf="scrypt", iterations=2**4)))
        (home / "password").write_text("pw\n")
    data = local_data(0)
    np.savez(tmp_path / "silo" / "train.npz", x=data.x, y=data.y)
    store = f"local:{tmp_path / 'store'}"
    silo_config = {"keystore": str(tmp_path / "silo" / "key.json"), "password-file": str(tmp_path / "silo" / "password"),
                   "data-path": str(tmp_path / "silo" / "train.npz"), "chain-url": url, "store": store,
                   "ledger-dir": str(tmp_path / "silo" / "ledger"), "device": "cpu", "threads": 1,
                   "model-targets": SILO_NET}  # fmt: skip
    coordinator_config = {"keystore": str(tmp_path / "coordinator" / "key.json"), "chain-url": url, "store": store,
                          "password-file": str(tmp_path / "coordinator" / "password"), "contract": admin.address}  # fmt: skip
    yield Consortium(admin, tmp_path / "store", LocalStore(tmp_path / "store"), silo_config, coordinator_config)
    bridge.stop()


def _launch(c: Consortium, model: ModelSpec, initial: nn.Module, **changes: Any) -> int:
    """What a launcher does: store the spec (as written: nothing checks it here) and an
    initial model, and create the run on chain; the round opens."""
    spec = small_spec(model=model, **changes)
    c.store.put(spec.to_bytes())
    run_id, _ = create_run(c.admin, spec, c.store.put(encode_arrays(get_arrays(initial))))
    c.admin.open_round(run_id)
    return run_id


def _silo_commits(c: Consortium, run_id: int, node_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The silo's ClientApp, as its SuperNode runs it, handling the coordinator's commit."""
    run = {"contract": c.admin.address, "run-id": run_id}
    state = c.admin.get_run(run_id)
    # the coordinator's own chain and store: a deployed silo does not go there
    locator = {**run, "chain-url": "http://coordinator.invalid:1", "store": "ipfs:/ip4/192.0.2.1/tcp/5001",
               "round": int(state["currentRound"]), "model-cid": cid_from_bytes(bytes(state["modelCid"]))}  # fmt: skip
    reply = call(client_app, message("train.commit", locator, node_id=31), context(node_config or c.silo_config,
                 run, node_id=31), node_id=31)  # fmt: skip
    assert not reply.has_error(), reply.error
    return dict(reply.content["status"])


def _refusal(action: Any) -> str:
    """The one line a party refuses with (an exception here, or a refused reply)."""
    try:
        result = action()
    except DeaiError as exc:
        return str(exc)
    return str(result.get("reason") or result)


def _silo_refusal(c: Consortium, run_id: int) -> str:
    return _refusal(lambda: _silo_commits(c, run_id))


def _deai_verify(c: Consortium, run_id: int, *extra: str) -> tuple[int, str]:
    """``deai verify --rpc ... --store-root ...``: its exit status and what it printed to stderr."""
    err = io.StringIO()
    argv = ["verify", "--rpc", c.coordinator_config["chain-url"], "--contract", c.admin.address, "--run-id",
            str(run_id), "--store-root", str(c.store_root), *extra]  # fmt: skip
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            deai_main(argv)
        except SystemExit as exc:
            return int(exc.code or 0), err.getvalue()
    return 0, err.getvalue()


def _payload(target: Path) -> dict[str, Any]:
    """Hydra would call print("...", file=open(target, "a")): text appended to any file the
    silo's user can write (a ``.pth`` file in site-packages runs a shell command later)."""
    return {"_target_": "builtins.print", "_args_": ["import os; os.system('id')"],
            "file": {"_target_": "builtins.open", "file": str(target), "mode": "a"}}  # fmt: skip


def test_nested_targets_in_the_model_arguments_run_nowhere(consortium: Consortium, tmp_path: Path) -> None:
    c, target = consortium, tmp_path / "site-packages" / "evil.pth"
    target.parent.mkdir()
    # the silo's own, listed model: only its argument is the attacker's
    run_id = _launch(c, ModelSpec(SILO_NET, {"width": _payload(target)}), SiloNet(4, 3))

    silo = _silo_refusal(c, run_id)
    assert "model.args.width._args_: a model's arguments are plain values" in silo, silo
    with pytest.raises(SpecError, match=r"model.args.width._args_: a model's arguments are plain values"):
        coordinate(None, {**c.coordinator_config, "run-id": run_id})  # type: ignore[arg-type]
    status, printed = _deai_verify(c, run_id, "--allow-model", SILO_NET)
    assert status == 2 and printed.startswith("error: ") and "run spec: model.args.width._args_:" in printed, printed
    assert len(printed.strip().splitlines()) == 1
    assert not target.exists()


def test_a_target_that_only_starts_like_an_allowed_one_is_refused(consortium: Consortium, tmp_path: Path) -> None:
    """``deai_flower.models.np.save`` is numpy's ``save``, reached through the bundled
    models' module; ``deai_flower.models.nn.Module`` is torch's. Neither is a name the
    silo or the coordinator allowed, so neither is imported, let alone called."""
    c, written = consortium, tmp_path / "written.npy"
    for model in (ModelSpec("deai_flower.models.np.save", {"file": str(written), "arr": [1]}),
                  ModelSpec("deai_flower.models.nn.Module", {}), ModelSpec(SILO_NET + "Wide", {})):  # fmt: skip
        run_id = _launch(c, model, SiloNet(4, 3))
        refused = f"model {model.target} is not one this party builds"
        silo = _silo_refusal(c, run_id)
        assert refused in silo and "model-targets" in silo, silo
        with pytest.raises(SpecError, match=refused):
            coordinate(None, {**c.coordinator_config, "run-id": run_id})  # type: ignore[arg-type]
    assert not written.exists()


def test_an_exact_target_from_the_silos_node_config_is_built(consortium: Consortium) -> None:
    c = consortium
    run_id = _launch(c, ModelSpec(SILO_NET, {"width": 5}), SiloNet(4, 3, width=5))
    assert _silo_commits(c, run_id)["state"] == "committed"
    # a silo that does not list it builds only the bundled models
    unlisted = {**c.silo_config, "model-targets": ""}
    refusal = _refusal(lambda: _silo_commits(c, run_id, unlisted))
    assert f"model {SILO_NET} is not one this party builds" in refusal, refusal


def test_a_listed_name_must_be_where_its_code_is_defined(consortium: Consortium) -> None:
    """A node config lists exact names of module-level code: neither a prefix nor a name
    that reaches code of another module through an import."""
    c = consortium
    run_id = _launch(c, ModelSpec(IMPORTED_LINEAR, {"in_features": 4, "out_features": 3}), Linear(4, 3))
    with pytest.raises(ConfigError, match="node_config 'model-targets': model target 'my_lab.' is not an exact"):
        _silo_commits(c, run_id, {**c.silo_config, "model-targets": "my_lab."})
    refusal = _refusal(lambda: _silo_commits(c, run_id, {**c.silo_config, "model-targets": IMPORTED_LINEAR}))
    assert "not a function or class defined there (it is torch.nn.modules.linear.Linear)" in refusal, refusal


def test_deai_verify_builds_a_loss_scored_runs_model_only_when_told(consortium: Consortium) -> None:
    """A loss-scored run's scores are recomputed with its model: code the verifier runs."""
    c = consortium
    loss = IncentivesSpec(score="loss", validation_cid=c.store.put(b"the launcher's validation set"))
    run_id = _launch(c, ModelSpec(SILO_NET, {}), SiloNet(4, 3), incentives=loss)
    status, printed = _deai_verify(c, run_id)
    assert status == 2, printed
    assert printed.startswith(f"error: model {SILO_NET} is not one this party builds"), printed
    assert printed.rstrip().endswith("deai verify --allow-model NAME builds more"), printed
    status, printed = _deai_verify(c, run_id, "--allow-model", SILO_NET)
    assert "is not one this party builds" not in printed, printed
    status, printed = _deai_verify(c, run_id, "--allow-model", "my_lab.")
    assert status == 2 and printed.startswith("error: --allow-model: model target 'my_lab.' is not an exact"), printed

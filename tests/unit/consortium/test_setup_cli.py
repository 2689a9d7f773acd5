"""``deai consortium``: each step on a chain node over JSON-RPC (the embedded EVM behind a
loopback bridge), saying what it did; a repeated or wrong step is one line and exit 2."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from eth_account import Account

from deai_flower.chain import RoundsContract, connect_embedded
from deai_flower.chain.bridge import JsonRpcBridge
from deai_flower.chain.node import connect_rpc
from deai_flower.chain.runs import fetch_spec
from deai_flower.cli.deai import main
from deai_flower.protocol.identity import supernode_identity
from deai_flower.storage import LocalStore, decode_arrays


@pytest.fixture
def rpc() -> Iterator[str]:
    bridge = JsonRpcBridge(connect_embedded(), allow_dev_methods=True)
    yield bridge.start()
    bridge.stop()


def deai(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def address_in(text: str) -> str:
    return next(w for w in text.replace("(", " ").split() if w.startswith("0x") and len(w) == 42)


def test_a_consortium_is_set_up_step_by_step(rpc: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys, admin_args = tmp_path / "keys", ["--keystore", tmp_path / "keys/admin.keystore.json",
                                           "--password-file", tmp_path / "keys/admin.password"]  # fmt: skip
    code, out, _ = deai(capsys, "consortium", "keystore", "--out", keys, "--name", "admin", "--kdf", "pbkdf2")
    assert code == 0 and out.startswith("created chain key 0x")
    admin = address_in(out)
    code, out, _ = deai(capsys, "consortium", "keystore", "--out", keys, "--name", "silo-0", "--kdf", "pbkdf2")
    silo = address_in(out)
    code, out, _ = deai(capsys, "consortium", "supernode-key", "--out", tmp_path / "sn", "--name", "silo-0")
    assert code == 0 and "identity    0x" in out

    # the admin has no ether yet: refused before anything is sent
    code, out, err = deai(capsys, "consortium", "deploy", "--rpc", rpc, *admin_args)
    assert code == 2 and err.count("\n") == 1 and "has no ether" in err and "deai consortium fund" in err
    assert deai(capsys, "consortium", "fund", "--rpc", rpc, admin)[0] == 0
    code, out, _ = deai(capsys, "consortium", "deploy", "--rpc", rpc, *admin_args)
    assert code == 0 and out.startswith("deployed the round contract at 0x")
    contract = address_in(out)

    register = ["consortium", "register", "--rpc", rpc, "--contract", contract, *admin_args, "--silo", silo,
                "--supernode-key", tmp_path / "sn/silo-0.pub"]  # fmt: skip
    code, out, _ = deai(capsys, *register)
    assert code == 0 and f"registered silo {silo}" in out
    code, _, err = deai(capsys, *register)
    assert code == 2 and "is registered already (to this SuperNode key)" in err and err.count("\n") == 1
    other = Account.create().address
    code, _, err = deai(capsys, *[other if a == silo else a for a in register])
    assert code == 2 and f"bound to silo {silo} already" in err
    code, _, err = deai(capsys, *[("0x" + "00" * 19 + "01") if a == contract else a for a in register])
    assert code == 2 and "no contract at" in err

    # another key is not the admin
    code, out, _ = deai(capsys, "consortium", "keystore", "--out", keys, "--name", "intruder", "--kdf", "pbkdf2")
    deai(capsys, "consortium", "fund", "--rpc", rpc, address_in(out))
    intruder = ["--keystore", keys / "intruder.keystore.json", "--password-file", keys / "intruder.password"]
    code, _, err = deai(capsys, *register[:6], *intruder, "--silo", other, "--supernode-key",
                        tmp_path / "sn/silo-0.pub")  # fmt: skip
    assert code == 2 and "bound to silo" in err  # the key check comes first...
    deai(capsys, "consortium", "supernode-key", "--out", tmp_path / "sn", "--name", "silo-1")
    code, _, err = deai(capsys, *register[:6], *intruder, "--silo", other, "--supernode-key",
                        tmp_path / "sn/silo-1.pub")  # fmt: skip
    assert code == 2 and "is not the admin of contract" in err

    store = tmp_path / "store"
    code, out, err = deai(capsys, "consortium", "create-run", "--rpc", rpc, "--contract", contract, *admin_args,
                          "--store", f"local:{store}", "--output-dir", tmp_path / "out", "num_rounds=2",
                          "dataset=breast_cancer")  # fmt: skip
    assert code == 0, err
    assert f"created run 1 on contract {contract}: 2 rounds, rule fedavg" in out
    command = out.strip().splitlines()[-1].strip()
    argv = shlex.split(command)
    assert argv[:5] == ["flwr", "run", ".", "consortium", "--stream"] and argv[5] == "--run-config"
    assert f'contract="{contract}" run-id=1 chain-url="{rpc}" store="local:{store}"' in argv[6]

    reader = RoundsContract(connect_rpc(rpc), contract, Account.create())
    spec = fetch_spec(reader, 1, LocalStore(store))
    assert spec.rounds.num_rounds == 2 and spec.data.num_features == 30
    assert reader.participant_info(silo) == (True, supernode_identity((tmp_path / "sn/silo-0.pub").read_bytes()))
    code, _, err = deai(capsys, "consortium", "create-run", "--rpc", rpc, "--contract", contract, *admin_args,
                        "--store", f"local:{store}", "num_roundz=2")  # fmt: skip
    assert code == 2 and "num_roundz" in err and err.count("\n") == 1

    # the silo pulls its stake back; the creator cannot take the pool before the run is complete
    silo_args = ["--keystore", keys / "silo-0.keystore.json", "--password-file", keys / "silo-0.password"]
    withdraw = ["consortium", "withdraw", "--rpc", rpc, "--contract", contract, "--run-id", "1"]
    deai(capsys, "consortium", "fund", "--rpc", rpc, silo)
    code, _, err = deai(capsys, *withdraw, *silo_args)
    assert code == 2 and f"{silo} has nothing to withdraw in run 1" in err and err.count("\n") == 1
    stake = spec.incentives.stake
    assert stake > 0 and reader.get_incentives(1)["pool"] == spec.incentives.reward_pool > 0
    from deai_flower.chain.keys import keystore_key

    silo_key = keystore_key(keys / "silo-0.keystore.json", password_file=keys / "silo-0.password")
    reader.as_account(silo_key).deposit(1, stake)
    code, out, _ = deai(capsys, *withdraw, *silo_args)
    assert code == 0 and f"withdrew from run 1 to {silo}: stake {stake} wei" in out
    assert reader.get_account(1, silo)["stake"] == 0
    code, _, err = deai(capsys, *withdraw, *admin_args, "--pool")
    assert code == 2 and "RunNotComplete" in err and err.count("\n") == 1
    # nor cancel a run that has not failed three attempts in a row
    cancel = ["consortium", "cancel-run", "--rpc", rpc, "--contract", contract, "--run-id", "1", *admin_args]
    code, _, err = deai(capsys, *cancel)
    assert code == 2 and "run 1 cannot be cancelled yet" in err and err.count("\n") == 1


#: What loading a bundled dataset imports; a consortium creating a run has no dataset.
DATASET_MODULES = ("deai_flower.data", "datasets", "flwr_datasets", "sklearn.datasets", "lifelines", "mlxtend",
                   "pydataset")  # fmt: skip

CREATE_RUN_ALONE = """
import sys
from deai_flower.cli.deai import main

try:
    main(sys.argv[1:])
except SystemExit as exc:
    if exc.code:
        raise
print("imported:", sorted(m for m in sys.modules if m.startswith({modules!r})))
"""


def test_a_run_is_created_without_a_dataset(rpc: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The schema is the one the config declares and the validation set the creator's own
    file: no dataset loader runs, nor is any imported (a fresh process says what it loaded)."""
    admin_args = ["--keystore", tmp_path / "admin.keystore.json", "--password-file", tmp_path / "admin.password"]
    code, out, _ = deai(capsys, "consortium", "keystore", "--out", tmp_path, "--name", "admin", "--kdf", "pbkdf2")
    deai(capsys, "consortium", "fund", "--rpc", rpc, address_in(out))
    code, out, _ = deai(capsys, "consortium", "deploy", "--rpc", rpc, *admin_args)
    contract = address_in(out)
    rng = np.random.default_rng(0)
    x, y = rng.random((12, 4), dtype=np.float32), np.arange(12) % 3
    np.savez(tmp_path / "validation.npz", x=x, y=y)
    store = tmp_path / "store"
    argv = ["consortium", "create-run", "--rpc", rpc, "--contract", contract, *admin_args, "--store", f"local:{store}",
            "--validation-set", tmp_path / "validation.npz", "num_rounds=2", "incentives.score=loss",
            "dataset.loader._target_=no.such.loader", "dataset.schema.num_features=4",
            "dataset.schema.num_classes=3", "dataset.schema.input_shape=[]", "model.hidden=[8]"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", CREATE_RUN_ALONE.format(modules=DATASET_MODULES), *map(str, argv)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "created run 1" in done.stdout and "imported: []" in done.stdout, done.stdout
    spec = fetch_spec(RoundsContract(connect_rpc(rpc), contract, Account.create()), 1, LocalStore(store))
    assert (spec.data.num_features, spec.data.num_classes, spec.data.input_shape) == (4, 3, (4,))
    stored = decode_arrays(LocalStore(store).get(spec.incentives.validation_cid), max_bytes=spec.max_blob_bytes)
    assert np.array_equal(stored["x"], x) and np.array_equal(stored["y"], y)
    # a loss-scored run without its validation set, and a schema nobody declared, are refused first
    without = [a for a in argv if a not in ("--validation-set", tmp_path / "validation.npz")]
    code, _, err = deai(capsys, *without)
    assert code == 2 and "needs its validation set: --validation-set FILE" in err
    undeclared = [a for a in without if not str(a).startswith(("dataset.schema", "incentives"))]
    code, _, err = deai(capsys, *undeclared, "dataset.schema.num_features=0", "dataset.schema.num_classes=0")
    assert code == 2 and "data schema is not declared" in err


def test_demo_data_writes_each_silos_training_and_held_out_files(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = deai(capsys, "consortium", "demo-data", "--out", tmp_path, "--silos", "3", "dataset=breast_cancer")
    assert code == 0 and out.count("wrote ") == 3
    train, held = np.load(tmp_path / "silo-1/train.npz"), np.load(tmp_path / "silo-1/eval.npz")
    assert train["x"].shape[1] == held["x"].shape[1] == 30 and 0.2 < len(held["y"]) / len(train["y"]) < 0.4
    code, _, err = deai(capsys, "consortium", "demo-data", "--out", tmp_path, "--silos", "3", "dataset=breast_cancer")
    assert code == 2 and "already exists" in err


def test_a_wrong_rpc_url_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deai(capsys, "consortium", "keystore", "--out", tmp_path, "--name", "a", "--kdf", "pbkdf2")
    code, _, err = deai(capsys, "consortium", "deploy", "--rpc", "http://127.0.0.1:9", "--keystore",
                        tmp_path / "a.keystore.json", "--password-file", tmp_path / "a.password")  # fmt: skip
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1
    assert json.loads((tmp_path / "a.keystore.json").read_text())["crypto"]["kdf"] == "pbkdf2"

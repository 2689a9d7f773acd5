"""A deployed participant from its node config; local data checked against a run's schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eth_account import Account

from deai_flower.chain import keystore_key
from deai_flower.errors import ConfigError, ProtocolError
from deai_flower.participant import BUNDLED_MODEL_TARGETS, LocalData, Participant, SiloFiles
from deai_flower.protocol.spec import DataSchema
from unit.participant._support import SCHEMA, local_data

PASSWORD = "correct horse battery"


@pytest.fixture
def silo(tmp_path: Path) -> tuple[dict[str, Any], str]:
    """A silo's node config: a real encrypted keystore (scrypt, small work factor), its
    password file, a data file, a chain URL, a store and a ledger directory."""
    account = Account.create()
    keystore = tmp_path / "key.json"
    keystore.write_text(json.dumps(Account.encrypt(account.key, PASSWORD, kdf="scrypt", iterations=2**4)))
    (tmp_path / "password").write_text(PASSWORD + "\n")
    data = local_data(0)
    np.savez(tmp_path / "train.npz", x=data.x, y=data.y)
    node_config = {
        "keystore": str(keystore),
        "password-file": str(tmp_path / "password"),
        "data-path": str(tmp_path / "train.npz"),
        "chain-url": "http://127.0.0.1:8545",
        "store": f"local:{tmp_path / 'store'}",
        "ledger-dir": str(tmp_path / "ledger"),
    }
    return node_config, account.address


def test_a_silo_is_built_from_its_node_config(silo: tuple[dict[str, Any], str], tmp_path: Path) -> None:
    node_config, address = silo
    participant = Participant.from_node_config({**node_config, "device": "cpu", "threads": 2,
                                                "model-targets": "my_lab.nets.Net, other.mod.f"})  # fmt: skip
    assert participant.address == address
    assert participant.data == SiloFiles(tmp_path / "train.npz")
    assert participant.store_location == f"local:{tmp_path / 'store'}"
    assert participant.chain_url == "http://127.0.0.1:8545"
    assert participant.ledger_dir == tmp_path / "ledger" and participant.ledger_dir.is_dir()
    assert (participant.device, participant.num_threads, participant.secure_mode) == ("cpu", 2, False)
    assert participant.model_targets == (*BUNDLED_MODEL_TARGETS, "my_lab.nets.Net", "other.mod.f")
    # no simulation behaviour, and its noise cannot be predicted
    assert participant.behaviour is None and participant.noise_seed is None
    assert participant.round_seed(1) != participant.round_seed(1)


def test_keystore_unlocks_with_a_password_file(silo: tuple[dict[str, Any], str]) -> None:
    node_config, address = silo
    assert keystore_key(node_config["keystore"], password_file=node_config["password-file"]).address == address
    with pytest.raises(ConfigError, match="exactly one of"):
        keystore_key(node_config["keystore"])


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"keystore": None}, "lacks 'keystore'"),
        ({"keystore": "{tmp}/absent.json"}, "'keystore': .*absent.json does not exist"),
        ({"keystore": "{tmp}"}, "'keystore': "),
        ({"password-file": None}, "lacks 'password-file'"),
        ({"password-file": "{tmp}/absent"}, "'password-file': .*does not exist"),
        ({"password-file": "{tmp}/wrong"}, "'keystore': cannot decrypt keystore"),
        ({"data-path": None}, "lacks 'data-path'"),
        ({"data-path": "{tmp}/absent.npz"}, "'data-path': .*does not exist"),
        ({"eval-data-path": "{tmp}/absent.npz"}, "'eval-data-path': .*does not exist"),
        ({"chain-url": None}, "lacks 'chain-url'"),
        ({"chain-url": "embedded://1"}, "'chain-url' must be an http"),
        ({"store": None}, "lacks 'store'"),
        ({"store": "local:relative/dir"}, "'store' must be"),
        ({"store": "s3:bucket"}, "'store' must be"),
        ({"ledger-dir": None}, "lacks 'ledger-dir'"),
        ({"ledger-dir": "{tmp}/password/sub"}, "'ledger-dir': cannot create"),
        ({"threads": "two"}, "'threads' must be a positive integer"),
        ({"threads": 0}, "'threads' must be a positive integer"),
        ({"secure-mode": "maybe"}, "'secure-mode' must be true or false"),
        ({"grad-sample-mode": "fast"}, "'grad-sample-mode' must be one of"),
    ],
)
def test_each_unusable_node_config_item_is_one_config_error_naming_it(
    silo: tuple[dict[str, Any], str], tmp_path: Path, change: dict[str, Any], key: str
) -> None:
    node_config, _ = silo
    (tmp_path / "wrong").write_text("not the password\n")
    for name, value in change.items():
        if value is None:
            del node_config[name]
        else:
            node_config[name] = value.format(tmp=tmp_path) if isinstance(value, str) else value
    with pytest.raises(ConfigError, match=key) as caught:
        Participant.from_node_config(node_config)
    assert "\n" not in str(caught.value)


def test_data_is_checked_against_the_runs_schema() -> None:
    data = local_data(1)
    checked = data.checked(SCHEMA)
    assert checked.x.dtype == np.float32 and checked.y.dtype == np.int64
    wider = DataSchema(num_features=5, num_classes=3, input_shape=(5,))
    with pytest.raises(ProtocolError, match="wants 5 per example"):
        data.checked(wider)
    with pytest.raises(ProtocolError, match=r"classes 0..1"):
        data.checked(DataSchema(num_features=4, num_classes=2, input_shape=(4,)))
    bad = data.x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ProtocolError, match="non-finite"):
        LocalData(bad, data.y).checked(SCHEMA)
    with pytest.raises(ProtocolError, match="no examples"):
        LocalData(data.x[:0], data.y[:0]).checked(SCHEMA)
    with pytest.raises(ProtocolError, match="not integers"):
        LocalData(data.x, data.y.astype(np.float32)).checked(SCHEMA)

"""Participant keys: encrypted keystores unlocked by a password from the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eth_account import Account

from deai_flower.chain import keystore_key, simulation_key
from deai_flower.errors import ConfigError

PASSWORD_ENV = "DEAI_TEST_KEYSTORE_PASSWORD"


@pytest.fixture
def keystore(tmp_path: Path) -> tuple[Path, str]:
    """A standard keystore file (scrypt with a small work factor, to keep the test fast)."""
    account = Account.create()
    encrypted = Account.encrypt(account.key, "correct horse", kdf="scrypt", iterations=2**4)
    path = tmp_path / "silo.json"
    path.write_text(json.dumps(encrypted), encoding="utf-8")
    return path, account.address


def test_keystore_unlocks_with_the_password_from_the_environment(
    keystore: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, address = keystore
    monkeypatch.setenv(PASSWORD_ENV, "correct horse")
    assert keystore_key(path, password_env=PASSWORD_ENV).address == address
    assert keystore_key(str(path), password_env=PASSWORD_ENV).address == address


def test_wrong_password_is_a_config_error(keystore: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = keystore
    monkeypatch.setenv(PASSWORD_ENV, "battery staple")
    with pytest.raises(ConfigError, match=rf"cannot decrypt keystore {path}"):
        keystore_key(path, password_env=PASSWORD_ENV)


def test_missing_password_variable_is_a_config_error(
    keystore: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = keystore
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(ConfigError, match=rf"{PASSWORD_ENV} is not set"):
        keystore_key(path, password_env=PASSWORD_ENV)


def test_missing_or_malformed_keystore_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "correct horse")
    with pytest.raises(ConfigError, match="does not exist"):
        keystore_key(tmp_path / "absent.json", password_env=PASSWORD_ENV)
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot decrypt keystore"):
        keystore_key(tmp_path / "broken.json", password_env=PASSWORD_ENV)


def test_simulation_keys_are_deterministic_per_seed_and_role() -> None:
    assert simulation_key(seed=1, role="client-0").address == simulation_key(seed=1, role="client-0").address
    assert simulation_key(seed=1, role="client-0").address != simulation_key(seed=2, role="client-0").address
    assert simulation_key(seed=1, role="client-0").address != simulation_key(seed=1, role="client-1").address

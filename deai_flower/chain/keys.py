"""Participant keys: deterministic for simulations, encrypted keystores for real silos."""

from __future__ import annotations

import json
import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from ..errors import ConfigError


def simulation_key(*, seed: int, role: str) -> LocalAccount:
    """A deterministic key for a simulated party (``role`` like ``client-3``).

    Derived from the experiment seed so the same config gives the same addresses, and
    so the same canonical aggregation order. Never use these keys on a real network.
    """
    secret = keccak(f"deai-flower/simulation/{seed}/{role}".encode())
    return Account.from_key(secret)


def keystore_key(path: str | os.PathLike[str], *, password_env: str) -> LocalAccount:
    """Decrypt a standard encrypted keystore file with a password from the environment."""
    password = os.environ.get(password_env)
    if password is None:
        raise ConfigError(f"keystore password variable {password_env} is not set")
    try:
        blob = json.loads(Path(path).read_text(encoding="utf-8"))
        return Account.from_key(Account.decrypt(blob, password))
    except FileNotFoundError as exc:
        raise ConfigError(f"keystore file {path} does not exist") from exc
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"cannot decrypt keystore {path}: {exc}") from exc

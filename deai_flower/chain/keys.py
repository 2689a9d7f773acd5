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


def keystore_key(
    path: str | os.PathLike[str],
    *,
    password_env: str | None = None,
    password_file: str | os.PathLike[str] | None = None,
) -> LocalAccount:
    """Decrypt a standard encrypted keystore file.

    The password comes from the environment variable ``password_env`` or from the file
    ``password_file`` (its first line, as ``geth --password`` reads it); exactly one of
    the two must be given.
    """
    if (password_env is None) == (password_file is None):
        raise ConfigError("keystore_key needs exactly one of password_env, password_file")
    if password_env is not None:
        password = os.environ.get(password_env)
        if password is None:
            raise ConfigError(f"keystore password variable {password_env} is not set")
    else:
        password = _read_password(Path(password_file))  # type: ignore[arg-type]
    try:
        blob = json.loads(Path(path).read_text(encoding="utf-8"))
        return Account.from_key(Account.decrypt(blob, password))
    except FileNotFoundError as exc:
        raise ConfigError(f"keystore file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read keystore {path}: {exc.strerror or exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot decrypt keystore {path}: {exc}") from exc


def _read_password(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"password file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read password file {path}: {exc}") from exc
    lines = text.splitlines()
    return lines[0] if lines else ""

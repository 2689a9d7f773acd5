"""Is this silo able to serve? Its node config checked before its SuperNode starts.

A SuperNode starts whatever its ``--node-config`` holds: a misspelt data path or a wrong
password shows only when the first message fails, and by then the chain has sampled the
silo. :func:`check_node_config` checks what a silo needs, one line per thing, so that
``deai silo check`` (or a silo-side runner, before it serves) says what is wrong first:
its terms, its key and password, its data file, its chain and the pinned contract (and
that its address is registered there), its store, and finally that the participant the
ClientApp builds from this node config builds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeaiError, one_line
from .terms import TERMS_KEYS, SiloTerms

__all__ = ["KNOWN_KEYS", "SiloCheck", "check_node_config"]

#: The node-config keys a deployed participant reads; any other is ignored (and said so).
KNOWN_KEYS = ("keystore", "password-file", "data-path", "eval-data-path", "chain-url", "store", "ledger-dir",
              "device", "threads", "secure-mode", "grad-sample-mode", "model-targets", "relay") + TERMS_KEYS  # fmt: skip
#: What the store check writes and reads back (content-addressed: the same bytes every time).
_STORE_PROBE = b"deai silo check\n"


@dataclass(frozen=True)
class SiloCheck:
    """One thing checked: its name, whether it holds (None: not checked, as a check it
    needs failed), and what was found (or why not)."""

    name: str
    ok: bool | None
    detail: str

    def line(self) -> str:
        return f"{({True: 'ok', False: 'FAIL', None: '--'})[self.ok]:4} {self.name}: {self.detail}"


def check_node_config(node_config: Mapping[str, Any], *, timeout_s: float = 10.0) -> list[SiloCheck]:
    """Every check of ``node_config`` (a SuperNode's ``--node-config``, parsed), in order;
    a check whose input failed an earlier one is reported as not checked (``ok`` None).
    The node config is good when every ``ok`` is True.

    ``timeout_s`` bounds each request to the chain.
    """
    found: dict[str, Any] = {}
    checks = [
        _check("keys", lambda: _keys(node_config)),
        _check("terms", lambda: _terms(node_config, found)),
        _check("key", lambda: _key(node_config, found)),
        _check("data", lambda: _data(node_config)),
        _check("chain", lambda: _chain(node_config, found, timeout_s)),
        _check("contract", lambda: _contract(found)),
        _check("store", lambda: _store(node_config)),
    ]
    if all(check.ok for check in checks):  # else it fails on what an earlier line names
        checks.append(_check("participant", lambda: _participant(node_config)))
    return checks


class _Skipped(Exception):
    """A check that cannot run because one it depends on failed."""


def _check(name: str, run: Callable[[], str]) -> SiloCheck:
    try:
        return SiloCheck(name, True, run())
    except _Skipped as exc:
        return SiloCheck(name, None, f"not checked ({exc})")
    except (DeaiError, OSError, ValueError) as exc:
        return SiloCheck(name, False, one_line(exc))


def _keys(node_config: Mapping[str, Any]) -> str:
    unknown = sorted(set(node_config) - set(KNOWN_KEYS))
    if unknown:  # a misspelt optional key would fall back to its default without a word
        return f"{len(node_config)} keys; ignored, not known: {', '.join(unknown)}"
    return f"{len(node_config)} keys, all known"


def _required(node_config: Mapping[str, Any], key: str) -> str:
    value = node_config.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DeaiError(f"node_config lacks '{key}'" if value is None else
                        f"node_config '{key}' must be a non-empty string (got {value!r})")  # fmt: skip
    return value.strip()


def _terms(node_config: Mapping[str, Any], found: dict[str, Any]) -> str:
    terms = found["terms"] = SiloTerms.from_node_config(node_config)
    parts = [f"contract {terms.contract}" if terms.contract else "any contract (pin one: contract=...)",
             "runs " + ",".join(map(str, sorted(terms.runs))) if terms.runs is not None else "",
             f"{len(terms.spec_digests)} spec digest(s)" if terms.spec_digests is not None else "",
             f"ε ≤ {terms.max_epsilon:g}" + (" or none (no DP)" if terms.allow_no_dp else ""),
             f"δ ≤ {terms.max_delta:g}", f"stake ≤ {terms.max_stake}", f"each slash ≤ {terms.max_slash}",
             "rules " + ",".join(sorted(terms.rules)) if terms.rules is not None else ""]  # fmt: skip
    return "; ".join(part for part in parts if part)


def _key(node_config: Mapping[str, Any], found: dict[str, Any]) -> str:
    from ..chain.keys import keystore_key

    keystore, password_file = _required(node_config, "keystore"), _required(node_config, "password-file")
    account = found["account"] = keystore_key(Path(keystore).expanduser(), password_file=Path(password_file).expanduser())
    return f"{keystore} opens with {password_file}: address {account.address}"


def _data(node_config: Mapping[str, Any]) -> str:
    lines = [_data_file(node_config, "data-path")]
    if "eval-data-path" in node_config:
        lines.append("held-out " + _data_file(node_config, "eval-data-path"))
    return "; ".join(lines)


def _data_file(node_config: Mapping[str, Any], key: str) -> str:
    """The file's shape, read as the participant reads it (its schema comes with a run)."""
    from ..silo_data import SILO_FILE_TYPES, _read_silo_file

    path = Path(_required(node_config, key)).expanduser()
    if not path.is_file():
        raise DeaiError(f"node_config '{key}': {path} does not exist" if not path.exists() else
                        f"node_config '{key}': {path} is not a file")  # fmt: skip
    if path.suffix.lower() not in SILO_FILE_TYPES:
        raise DeaiError(f"node_config '{key}': {path} is not {', '.join(SILO_FILE_TYPES)}")
    try:
        x, y = _read_silo_file(path)
    except DeaiError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy, pandas and pyarrow parser errors
        raise DeaiError(f"node_config '{key}': {path} is not readable as {path.suffix} ({one_line(exc)})") from exc
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise DeaiError(f"node_config '{key}': {path} holds features {list(x.shape)} and labels {list(y.shape)}, "
                        "not one label per example")  # fmt: skip
    if not np.issubdtype(y.dtype, np.integer) or int(y.min()) < 0:
        raise DeaiError(f"node_config '{key}': {path} has labels that are not non-negative integers")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise DeaiError(f"node_config '{key}': {path} has non-numeric or non-finite features")
    return f"{path}: {len(y)} examples of {int(np.prod(x.shape[1:]))} features, labels 0..{int(y.max())}"


def _chain(node_config: Mapping[str, Any], found: dict[str, Any], timeout_s: float) -> str:
    from ..chain.node import connect_rpc

    url = _required(node_config, "chain-url")
    node = found["node"] = connect_rpc(url, timeout=timeout_s)
    return f"{url} answers: chain id {node.chain_id}, block {node.w3.eth.block_number}"


def _contract(found: dict[str, Any]) -> str:
    from ..chain import RoundsContract

    terms, node, account = found.get("terms"), found.get("node"), found.get("account")
    if terms is None or node is None:
        raise _Skipped("needs the terms and the chain")
    if terms.contract is None:
        return "none pinned: this silo serves any contract the coordinator names"
    if len(bytes(node.w3.eth.get_code(terms.contract))) == 0:
        raise DeaiError(f"no contract at {terms.contract} on this chain")
    if account is None:
        raise _Skipped(f"code at {terms.contract}; whether this silo is registered there needs the key")
    contract = RoundsContract(node, terms.contract, account)
    size, _ = contract.registry()  # a CommitRevealRounds answers; other code does not
    active, _ = contract.participant_info(account.address)
    if not active:
        raise DeaiError(f"{terms.contract} answers ({size} registered) but {account.address} is not registered there")
    return f"{terms.contract} answers; {account.address} is one of its {size} registered participants"


def _store(node_config: Mapping[str, Any]) -> str:
    from ..storage.location import open_store

    location = _required(node_config, "store")
    store = open_store(location, timeout_s=10.0, retries=0)
    cid = store.put(_STORE_PROBE)
    if store.get(cid) != _STORE_PROBE:
        raise DeaiError(f"store {location} returned other bytes for {cid}")
    return f"{location} stores and returns a blob"


def _participant(node_config: Mapping[str, Any]) -> str:
    from .participant import Participant

    participant = Participant.from_node_config(node_config)
    return f"builds as {participant.address} (ledger {participant.ledger_dir}, device {participant.device})"

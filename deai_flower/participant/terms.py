"""The terms a deployed silo accepts, pinned in its own node config.

Whoever launches a run (its creator, the coordinator) writes the spec and the run's
parameters on chain, and the coordinator writes the run config every message is checked
against: none of them may decide what a silo agrees to. A silo's SuperNode is started
with its terms (``--node-config``), and a run outside them is refused before the silo
trains, stakes or signs anything, with a one-line reason the coordinator records.

The limits always apply; the allowlists (contract, runs, spec digests) narrow what a silo
serves further. Defaults are those of a cautious silo: a finite ε of at most
:data:`DEFAULT_MAX_EPSILON`, δ at most :data:`DEFAULT_MAX_DELTA`, stake and each slash
at most :data:`DEFAULT_MAX_AMOUNT`, any aggregation rule this release implements.
Amounts are in the run's stake currency (wei of the native one, or the token's base
units).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from eth_utils import from_wei, is_address, to_checksum_address, to_wei

from ..errors import ConfigError
from ..protocol.encoding import from_wad
from ..protocol.spec import RunSpec

__all__ = ["DEFAULT_MAX_AMOUNT", "DEFAULT_MAX_DELTA", "DEFAULT_MAX_EPSILON", "TERMS_KEYS", "SiloTerms"]

DEFAULT_MAX_EPSILON = 10.0
DEFAULT_MAX_DELTA = 1e-4
#: One ether (10^18 wei): the project's default stake.
DEFAULT_MAX_AMOUNT = 10**18

#: The node-config keys read here (all optional).
TERMS_KEYS = ("contract", "runs", "spec-digests", "max-epsilon", "max-delta", "allow-no-dp", "max-stake",
              "max-slash", "rules")  # fmt: skip

#: The chain's run parameters that are amounts, with the spec's name for each.
_SLASHES = {"slashMissingReveal": "slash_missing_reveal", "slashRefused": "slash_refused",
            "slashMinority": "slash_minority"}  # fmt: skip


@dataclass(frozen=True)
class SiloTerms:
    """What one silo agrees to serve (see the module docstring)."""

    #: The contract it serves (checksummed); None: any.
    contract: str | None = None
    #: The run ids it agreed to; None: any.
    runs: frozenset[int] | None = None
    #: sha-256 digests of the specs it agreed to (the chain's ``specHash``); None: any.
    spec_digests: frozenset[bytes] | None = None
    max_epsilon: float = DEFAULT_MAX_EPSILON
    max_delta: float = DEFAULT_MAX_DELTA
    #: A non-private run (ε = ∞: no clipping, no noise) only when the silo says so.
    allow_no_dp: bool = False
    max_stake: int = DEFAULT_MAX_AMOUNT
    #: The most any one penalty (missing reveal, refused update, minority vote) may take.
    max_slash: int = DEFAULT_MAX_AMOUNT
    #: Aggregation rules it agrees to; None: any this release implements.
    rules: frozenset[str] | None = None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> SiloTerms:
        """The terms a SuperNode's ``--node-config`` sets (keys :data:`TERMS_KEYS`).

        Raises:
            ConfigError: one line naming the key whose value is unusable.
        """
        contract = node_config.get("contract")
        if contract is not None and not (isinstance(contract, str) and is_address(contract.strip())):
            raise ConfigError(f"node_config 'contract' must be the contract's 0x address (got {contract!r})")
        return cls(
            contract=None if contract is None else to_checksum_address(contract.strip()),
            runs=_optional_set(node_config, "runs", _run_id),
            spec_digests=_optional_set(node_config, "spec-digests", _digest),
            max_epsilon=_number(node_config, "max-epsilon", DEFAULT_MAX_EPSILON),
            max_delta=_number(node_config, "max-delta", DEFAULT_MAX_DELTA),
            allow_no_dp=_flag(node_config, "allow-no-dp"),
            max_stake=_amount(node_config, "max-stake"),
            max_slash=_amount(node_config, "max-slash"),
            rules=_optional_set(node_config, "rules", str),
        )

    def check(self, *, contract: str, run_id: int, spec: RunSpec, spec_digest: bytes,
              params: Mapping[str, Any]) -> str | None:  # fmt: skip
        """Why this silo refuses run ``run_id`` of ``contract`` (one line), or None.

        ``spec`` is the spec whose digest the chain records (``spec_digest``), ``params``
        the run's parameters on chain (``RunCreated``): the contract enforces the
        latter, the silo trains by the former, so every limit holds for both.
        """
        if self.contract is not None and to_checksum_address(contract) != self.contract:
            return f"contract {to_checksum_address(contract)} is not the one this silo serves ({self.contract})"
        if self.runs is not None and run_id not in self.runs:
            return f"run {run_id} is not one this silo agreed to (runs {', '.join(map(str, sorted(self.runs)))})"
        if self.spec_digests is not None and bytes(spec_digest) not in self.spec_digests:
            return f"spec 0x{bytes(spec_digest).hex()} is not one this silo agreed to (spec-digests)"
        epsilon = max(spec.privacy.epsilon, from_wad(int(params.get("epsilonBudgetWad", 0))))
        if math.isinf(epsilon):
            if not self.allow_no_dp:
                return "the run is not private (ε = ∞: no DP noise); this silo trains only with DP (allow-no-dp)"
        elif epsilon > self.max_epsilon:
            return f"the run's ε budget {epsilon:g} exceeds this silo's maximum {self.max_epsilon:g} (max-epsilon)"
        delta = max(spec.privacy.delta, from_wad(int(params.get("deltaWad", 0))))
        if math.isfinite(epsilon) and delta > self.max_delta:
            return f"the run's δ {delta:g} exceeds this silo's maximum {self.max_delta:g} (max-delta)"
        stake = max(spec.incentives.stake, int(params.get("stake", 0)))
        if stake > self.max_stake:
            return f"the run's stake {stake} exceeds this silo's maximum {self.max_stake} (max-stake)"
        for chain_key, spec_key in _SLASHES.items():
            amount = max(int(getattr(spec.incentives, spec_key)), int(params.get(chain_key, 0)))
            if amount > self.max_slash:
                return f"the run's {spec_key.replace('_', ' ')} of {amount} exceeds this silo's maximum {self.max_slash} (max-slash)"  # fmt: skip
        if self.rules is not None and spec.rule.name not in self.rules:
            return f"the run's aggregation rule {spec.rule.name} is not one this silo agreed to (rules {', '.join(sorted(self.rules))})"  # fmt: skip
        return None


def _items(node_config: Mapping[str, Any], key: str) -> list[str]:
    value = node_config[key]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigError(f"node_config '{key}' must be a comma-separated list (got {value!r})")
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    if not items:
        raise ConfigError(f"node_config '{key}' is empty: leave it out to accept any")
    return items


def _optional_set(node_config: Mapping[str, Any], key: str, parse: Any) -> frozenset[Any] | None:
    if key not in node_config:
        return None
    parsed = []
    for item in _items(node_config, key):
        try:
            parsed.append(parse(item))
        except ValueError as exc:
            raise ConfigError(f"node_config '{key}': {item!r} is not {exc}") from None
    return frozenset(parsed)


def _run_id(item: str) -> int:
    if not item.isdigit():
        raise ValueError("a run id")
    return int(item)


def _digest(item: str) -> bytes:
    try:
        digest = bytes.fromhex(item.removeprefix("0x"))
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise ValueError("a 32-byte hex digest")
    return digest


def _number(node_config: Mapping[str, Any], key: str, default: float) -> float:
    value = node_config.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number <= 0:
        raise ConfigError(f"node_config '{key}' must be a positive finite number (got {value!r})")
    return number


def _flag(node_config: Mapping[str, Any], key: str) -> bool:
    value = node_config.get(key, False)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(f"node_config '{key}' must be true or false (got {value!r})")
    return value


def _amount(node_config: Mapping[str, Any], key: str) -> int:
    """An amount: an integer of base units (wei), or a string such as ``"0.5 ether"``
    (TOML integers stop at 2^63, about 9.2 ether in wei)."""
    value = node_config.get(key, DEFAULT_MAX_AMOUNT)
    number, _, unit = str(value).strip().partition(" ")
    try:
        if isinstance(value, bool) or isinstance(value, float):
            raise ValueError
        amount = to_wei(Decimal(number), unit.strip() or "wei")  # refuses a negative number or unknown unit
        if from_wei(amount, unit.strip() or "wei") != Decimal(number):
            raise ValueError  # a fraction of a wei
    except (ValueError, InvalidOperation):
        raise ConfigError(f"node_config '{key}' must be a whole amount in wei or like \"0.5 ether\" (got {value!r})") from None  # fmt: skip
    return int(amount)

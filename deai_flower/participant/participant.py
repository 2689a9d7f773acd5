"""A participant: one silo's key, data, store, chain endpoint and privacy-ledger directory.

A deployed silo is built from Flower's ``context.node_config``
(:meth:`Participant.from_node_config`): an encrypted keystore and its password file,
data files on its own disk, its own chain endpoint and store. The simulation harness
builds participants too (:mod:`deai_flower.simulation.participants`), from a partition
of a named dataset and keys derived from the experiment seed; nothing here assumes
either. What a *run* asks of a participant comes from the run's spec, never from here.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from eth_account.signers.local import LocalAccount

from ..chain.keys import keystore_key
from ..errors import ConfigError, ProtocolError
from ..privacy.settings import GRAD_SAMPLE_MODES
from ..protocol.spec import BUNDLED_MODEL_TARGETS, DataSchema, allowed_models
from .terms import SiloTerms

__all__ = ["Behaviour", "LocalData", "Participant", "SiloFiles", "BUNDLED_MODEL_TARGETS"]

_STORE_KINDS = ("local", "ipfs")


@dataclass(frozen=True)
class LocalData:
    """A participant's examples: flat ``float32`` features and ``int64`` labels, and
    optionally a held-out set it evaluates global models on."""

    x: np.ndarray
    y: np.ndarray
    x_eval: np.ndarray | None = None
    y_eval: np.ndarray | None = None

    def checked(self, schema: DataSchema, *, source: str = "this participant's data") -> LocalData:
        """These arrays as the schema wants them (dtype), or :class:`ProtocolError`
        naming what does not fit."""
        x, y = _checked_pair(self.x, self.y, schema, f"{source} (training)")
        if self.x_eval is None or self.y_eval is None:
            return LocalData(x, y)
        x_eval, y_eval = _checked_pair(self.x_eval, self.y_eval, schema, f"{source} (held-out)", allow_empty=True)
        return LocalData(x, y, x_eval, y_eval)


def _checked_pair(
    x: np.ndarray, y: np.ndarray, schema: DataSchema, source: str, *, allow_empty: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != schema.num_features:
        raise ProtocolError(f"{source} has features of shape {list(x.shape[1:])}; the run's schema wants "
                            f"{schema.num_features} per example")  # fmt: skip
    if y.ndim != 1 or len(y) != len(x):
        raise ProtocolError(f"{source}: {len(x)} examples but labels of shape {list(y.shape)}")
    if len(x) == 0 and not allow_empty:
        raise ProtocolError(f"{source} has no examples")
    if not np.issubdtype(y.dtype, np.integer):
        raise ProtocolError(f"{source}: labels are {y.dtype}, not integers")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= schema.num_classes):
        raise ProtocolError(f"{source}: labels span {int(y.min())}..{int(y.max())}; the run's schema has "
                            f"classes 0..{schema.num_classes - 1}")  # fmt: skip
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ProtocolError(f"{source} has non-finite features")
    return x, np.ascontiguousarray(y, dtype=np.int64)


@dataclass(frozen=True)
class SiloFiles:
    """Data files on the silo's disk, read once the run's schema is known
    (``.npz`` with ``x`` and ``y``, or ``.csv``/``.parquet`` with a ``label`` column)."""

    path: Path
    eval_path: Path | None = None

    def load(self, schema: DataSchema) -> LocalData:
        from ..silo_data import load_silo_data

        try:
            x, y = load_silo_data(self.path, schema)
            if self.eval_path is None:
                return LocalData(x, y)
            x_eval, y_eval = load_silo_data(self.eval_path, schema)
        except ConfigError as exc:  # the files do not fit this run: refuse the run
            raise ProtocolError(str(exc)) from exc
        return LocalData(x, y, x_eval, y_eval)


class Behaviour(Protocol):
    """A simulated adversary (robustness experiments only): what it sends instead of
    its honestly trained update."""

    def poison(
        self, global_arrays: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        ...


@dataclass(eq=False)
class Participant:
    """One silo. Equality is identity: per-run views are cached per participant object."""

    account: LocalAccount
    #: Its examples (in memory), or files read once a run's schema is known.
    data: LocalData | SiloFiles
    #: Its content store: ``local:<absolute dir>`` or ``ipfs:<RPC API multiaddr>``.
    store_location: str
    #: Its chain endpoint: a JSON-RPC URL, or ``embedded://…`` in a simulation.
    chain_url: str
    #: Where it keeps its privacy ledgers, so accounting survives a restart; None: in memory.
    ledger_dir: Path | None = None
    #: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ``device_index`` spreads simulated
    #: participants over the visible GPUs.
    device: str = "auto"
    device_index: int | None = None
    #: PyTorch CPU threads while training; None: PyTorch's default.
    num_threads: int | None = None
    #: Node-local DP-SGD choices: cryptographically secure noise (needs torchcsprng) and
    #: Opacus' per-sample-gradient implementation.
    secure_mode: bool = False
    grad_sample_mode: str = "auto"
    #: The exact model targets it builds: a spec's target is code this silo runs, so the
    #: silo decides which code that may be (the bundled models unless its node config
    #: lists more; a simulated participant adds its experiment's own).
    model_targets: tuple[str, ...] = BUNDLED_MODEL_TARGETS
    #: The runs it serves and its limits (its node config's); None: a simulation's own
    #: participant, which serves the experiment it was built for.
    terms: SiloTerms | None = None
    #: Whether it lets a coordinator publish its reveal records and cast its signed votes
    #: (protocol §2.4, §2.5); False: it sends its own, whatever the coordinator asks.
    relay: bool = True
    #: Simulation only: a simulated adversary.
    behaviour: Behaviour | None = None
    #: Simulation only, for reproducible runs: round r draws its DP noise and batches from
    #: ``noise_seed + 1_009 * r``. None: fresh OS entropy every round.
    noise_seed: int | None = None
    #: For logs.
    name: str = ""
    _data_cache: dict[DataSchema, LocalData] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def address(self) -> str:
        return self.account.address

    @property
    def label(self) -> str:
        return self.name or self.account.address

    def local_data(self, schema: DataSchema) -> LocalData:
        """Its data for a run of ``schema``, checked against it (read once per schema).

        Raises:
            ProtocolError: the data does not fit the schema (one reason).
        """
        with self._lock:
            cached = self._data_cache.get(schema)
            if cached is None:
                raw = self.data.load(schema) if isinstance(self.data, SiloFiles) else self.data
                cached = self._data_cache[schema] = raw.checked(schema, source=f"participant {self.label}'s data")
            return cached

    def round_seed(self, round_id: int) -> int:
        """The seed of one round's batch sampling and DP noise.

        Reproducible only where a simulation asked for it (:attr:`noise_seed`); a
        deployed participant draws fresh entropy, so nobody can predict its noise.
        """
        if self.noise_seed is None:
            return secrets.randbits(63)
        return self.noise_seed + round_id * 1_009

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> Participant:
        """A deployed silo from a SuperNode's ``--node-config``.

        Keys: ``keystore`` (an encrypted key file) and ``password-file`` (its password,
        first line), ``data-path`` (the training data file), ``chain-url`` (a JSON-RPC
        URL), ``store`` (``local:<absolute dir>`` or ``ipfs:<multiaddr>``), ``ledger-dir``
        (created if absent). Optional: ``eval-data-path`` (held-out data), ``device``
        (default ``auto``), ``threads``, ``secure-mode`` (default false),
        ``grad-sample-mode`` (default ``auto``), ``model-targets`` (comma-separated
        exact names of module-level model functions or classes of its own installed code
        that it builds besides the bundled ones), and the terms it
        serves runs on (:class:`~deai_flower.participant.terms.SiloTerms`: ``contract``,
        ``runs``, ``spec-digests``, ``max-epsilon``, ``max-delta``, ``allow-no-dp``,
        ``max-stake``, ``max-slash``, ``rules``), ``relay`` (default true; false: it
        reveals and attests with its own transactions even when asked to hand over).

        Raises:
            ConfigError: one line naming the node_config key that is missing or unusable.
        """
        reader = _NodeConfig(node_config)
        keystore = reader.file("keystore")
        password_file = reader.file("password-file")
        try:
            account = keystore_key(keystore, password_file=password_file)
        except ConfigError as exc:
            raise ConfigError(f"node_config 'keystore': {exc} (is 'password-file' the right one?)") from None
        data_path = reader.file("data-path")
        eval_path = reader.file("eval-data-path") if "eval-data-path" in node_config else None
        chain_url = reader.text("chain-url")
        if not chain_url.startswith(("http://", "https://")):
            raise ConfigError(f"node_config 'chain-url' must be an http:// or https:// JSON-RPC URL "
                              f"(got {chain_url!r})")  # fmt: skip
        store = reader.text("store")
        kind, _, where = store.partition(":")
        if kind not in _STORE_KINDS or not where or (kind == "local" and not Path(where).is_absolute()):
            raise ConfigError(f"node_config 'store' must be 'local:<absolute directory>' or 'ipfs:<multiaddr>' "
                              f"(got {store!r})")  # fmt: skip
        ledger_dir = Path(reader.text("ledger-dir")).expanduser()
        try:
            ledger_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"node_config 'ledger-dir': cannot create {ledger_dir}: {exc.strerror or exc}") from None
        device = reader.text("device", default="auto")
        threads = reader.positive_int("threads") if "threads" in node_config else None
        grad_sample_mode = reader.text("grad-sample-mode", default="auto")
        if grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(f"node_config 'grad-sample-mode' must be one of {', '.join(GRAD_SAMPLE_MODES)} "
                              f"(got {grad_sample_mode!r})")  # fmt: skip
        try:
            model_targets = allowed_models(reader.text("model-targets", default=""))
        except ConfigError as exc:
            raise ConfigError(f"node_config 'model-targets': {exc}") from None
        return cls(
            account=account,
            data=SiloFiles(data_path, eval_path),
            store_location=store,
            chain_url=chain_url,
            ledger_dir=ledger_dir,
            device=device,
            num_threads=threads,
            secure_mode=reader.flag("secure-mode"),
            grad_sample_mode=grad_sample_mode,
            model_targets=model_targets,
            terms=SiloTerms.from_node_config(node_config),
            relay=reader.flag("relay", default=True),
        )


class _NodeConfig:
    """Typed reads of ``node_config``; every error names the key."""

    def __init__(self, node_config: Mapping[str, Any]) -> None:
        self._config = node_config

    def text(self, key: str, *, default: str | None = None) -> str:
        value = self._config.get(key, default)
        if value is None:
            raise ConfigError(f"node_config lacks '{key}'")
        if not isinstance(value, str) or (not value.strip() and default is None):
            raise ConfigError(f"node_config '{key}' must be a non-empty string (got {value!r})")
        return value.strip()

    def file(self, key: str) -> Path:
        path = Path(self.text(key)).expanduser()
        try:
            with path.open("rb"):
                pass
        except FileNotFoundError:
            raise ConfigError(f"node_config '{key}': {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"node_config '{key}': cannot read {path}: {exc.strerror or exc}") from None
        if not path.is_file():
            raise ConfigError(f"node_config '{key}': {path} is not a file")
        return path

    def positive_int(self, key: str) -> int:
        value = self._config[key]
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if isinstance(value, bool) or number < 1 or str(number) != str(value).strip():
            raise ConfigError(f"node_config '{key}' must be a positive integer (got {value!r})")
        return number

    def flag(self, key: str, *, default: bool = False) -> bool:
        value = self._config.get(key, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ConfigError(f"node_config '{key}' must be true or false (got {value!r})")

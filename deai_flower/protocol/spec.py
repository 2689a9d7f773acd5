"""The run spec: the one document that fixes what a run is.

Everything a participant, an attester or a verifier needs to take part in a run, or to
check it, is in this document: the model (a Hydra ``_target_`` and its arguments), the
data schema the model expects, the aggregation rule and its parameters, the DP-SGD
settings, the local training hyper-parameters, the round structure and the code release
whose bytes every party must reproduce. The coordinator's word is not one of its sources.

The spec is stored in the content store under its CID and the contract records the
sha-256 digest of its canonical bytes at ``createRun`` (``specHash``). A spec is at most
one IPFS block (256 KiB), so its CIDv1 (codec raw, sha2-256) follows from that digest:
anyone reading the chain knows which blob to fetch and can check it.

Canonical bytes (docs/protocol.md §1.3): UTF-8 JSON with keys sorted, no whitespace,
ASCII only, integers as integers, floats in Python's shortest round-trip form, and an
infinite ε written as the string ``"inf"``. Readers need not re-encode: they hash what they
fetched and compare it with the chain.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from deai_flower.errors import ConfigError, ProtocolError
from deai_flower.protocol.cid import _RAW, _binary_cid, cid_from_bytes
from deai_flower.protocol.encoding import BPS, ZERO_ADDRESS, to_wad
from deai_flower.protocol.epsilon import ACCOUNTANTS

#: The format this release writes and reads.
SPEC_FORMAT = "deai-flower/run-spec/3"
#: A spec must fit one raw IPFS block, so the digest on chain names its CID.
MAX_SPEC_BYTES = 262_144
#: Contribution scores attesters know how to compute (deai_flower.protocol.scores).
SCORES = ("alignment", "loss", "shares")
#: Amounts are wei (or token base units): at most what the contract's uint128 holds.
_MAX_AMOUNT = 2**128 - 1
_MAX_MINORITY_SLASH = 2**96 - 1
#: Libraries whose versions fix the bytes of an aggregate: numpy does the arithmetic,
#: safetensors is only used to read (the project's own encoder writes), so numpy alone.
_BYTE_LIBRARIES = ("numpy",)


class SpecError(ProtocolError):
    """A run spec that cannot be fetched, parsed or supported."""


# --- which model a party builds: the one rule (docs/protocol.md §1.1) ------------------

#: The models this release bundles (deai_flower.models), by their exact names: what every
#: party builds unless its own configuration names more.
BUNDLED_MODEL_TARGETS: tuple[str, ...] = (
    "deai_flower.models.cnn", "deai_flower.models.mlp", "deai_flower.models.resnet", "deai_flower.models.scatter",
)
#: The keys Hydra's ``instantiate`` acts on. Anywhere in a model's arguments they would
#: make the party that builds the model import and call whatever they name.
HYDRA_KEYS: tuple[str, ...] = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def allowed_models(extra: str | Iterable[str] = ()) -> tuple[str, ...]:
    """The bundled model targets plus ``extra`` (exact dotted names; a string is a
    comma-separated list, as node and run configs write it).

    Raises:
        ConfigError: a name that is not a dotted name (a prefix such as ``my_lab.`` is not).
    """
    names = [name.strip() for name in (extra.split(",") if isinstance(extra, str) else extra)]
    for name in names:
        if name and not _DOTTED_NAME.fullmatch(name):
            raise ConfigError(f"model target {name!r} is not an exact 'package.module.name' (prefixes are not "
                              "allowed: list each model by the module that defines it)")  # fmt: skip
    return tuple(dict.fromkeys([*BUNDLED_MODEL_TARGETS, *(name for name in names if name)]))


def _hydra_key_in(value: Any, path: str) -> str | None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in HYDRA_KEYS:
                return f"{path}.{key}"
            found = _hydra_key_in(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _hydra_key_in(item, f"{path}[{i}]")
            if found:
                return found
    return None


def _model_problem(model: ModelSpec) -> str | None:
    if not isinstance(model.target, str) or not _DOTTED_NAME.fullmatch(model.target):
        return f"model target must be an importable 'package.module.name' (got {model.target!r})"
    key = _hydra_key_in(model.args, "model.args")
    if key:
        return f"{key}: a model's arguments are plain values; Hydra's keys ({', '.join(HYDRA_KEYS)}) are refused"
    return None


def check_model(model: ModelSpec, *, allowed: Collection[str]) -> None:
    """The rule every party applies before it builds a spec's model, ahead of any import:
    the target is exactly one of ``allowed`` (not a prefix of it, nor an attribute reached
    through it) and no argument, at any depth, is a key Hydra would act on.

    Raises:
        SpecError: one line naming the target or the argument.
    """
    problem = _model_problem(model)
    if problem:
        raise SpecError(problem)
    if model.target not in allowed:
        raise SpecError(f"model {model.target} is not one this party builds (it builds exactly: "
                        f"{', '.join(allowed)})")  # fmt: skip


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:  # pragma: no cover - both are dependencies
        return "unknown"


@dataclass(frozen=True)
class Release:
    """The code release that fixes the bytes: this package and the libraries they depend on."""

    deai_flower: str
    libraries: dict[str, str] = field(default_factory=dict)

    @classmethod
    def current(cls) -> Release:
        return cls(deai_flower=_package_version("deai-flower"),
                   libraries={name: _package_version(name) for name in _BYTE_LIBRARIES})  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """The model: an importable callable (``module.attr``) returning an ``nn.Module``,
    with its keyword arguments (JSON values). The data schema's ``num_features``,
    ``num_classes`` and ``input_shape`` are passed too where the callable accepts them."""

    target: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSchema:
    """What the model expects of every silo's data: flat float features, integer labels."""

    num_features: int
    num_classes: int
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class RuleSpec:
    """The aggregation rule attesters run (``deai_flower.protocol.rules.RULES``) and its parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PrivacySpec:
    """Per-participant DP-SGD settings; ``epsilon = inf`` is a non-private run."""

    epsilon: float
    delta: float
    max_grad_norm: float
    accountant: str


@dataclass(frozen=True)
class TrainingSpec:
    """Local training of every participant, every round."""

    local_epochs: int
    batch_size: int
    learning_rate: float


@dataclass(frozen=True)
class RoundsSpec:
    """The round structure: how many rounds, phase durations (seconds), sampling and quorum.

    ``committee_size`` is the contract's ``committeeSize``: the revealers among the first
    ``committee_size`` positions of the round's beacon-keyed shuffle may attest (0: every
    revealer), and a strict majority of them, at least ``quorum``, finalizes a round.
    """

    num_rounds: int
    commit_s: int
    reveal_s: int
    attest_s: int
    sample_fraction: float
    quorum: int
    min_reveals: int
    committee_size: int


@dataclass(frozen=True)
class IncentivesSpec:
    """What participants stake, how contributions are scored and paid, what is slashed.

    Amounts are in wei of the native currency, or base units of ``stake_token`` (an
    ERC-20 address; empty: native). ``reward_pool`` is paid in by the run's creator and
    shared over the rounds by contribution ``score``: ``alignment`` (geometry of the
    revealed updates) or ``loss`` (improvement of the validation loss on the set stored
    under ``validation_cid``). ``attester_share_bps`` of each finalized round's budget
    goes equally to the attesters that voted for the finalized result. The contract's run
    parameters repeat the amounts and the share.
    """

    score: str = "alignment"
    validation_cid: str = ""
    stake_token: str = ""
    stake: int = 0
    reward_pool: int = 0
    slash_missing_reveal: int = 0
    slash_refused: int = 0
    slash_minority: int = 0
    attester_share_bps: int = 1_000


@dataclass(frozen=True)
class RunSpec:
    """A run, as every party builds it. See the module docstring for the encoding."""

    model: ModelSpec
    data: DataSchema
    rule: RuleSpec
    privacy: PrivacySpec
    training: TrainingSpec
    rounds: RoundsSpec
    max_blob_bytes: int
    incentives: IncentivesSpec = field(default_factory=IncentivesSpec)
    release: Release = field(default_factory=Release.current)

    # ------------------------------------------------------------------ encoding

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["format"] = SPEC_FORMAT
        document["data"]["input_shape"] = list(self.data.input_shape)
        eps = self.privacy.epsilon
        document["privacy"]["epsilon"] = "inf" if math.isinf(eps) else eps
        return document

    def to_bytes(self) -> bytes:
        """The canonical bytes (what is stored and hashed)."""
        data = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False).encode("ascii")  # fmt: skip
        if len(data) > MAX_SPEC_BYTES:
            raise SpecError(f"run spec: {len(data)} bytes, more than one IPFS block ({MAX_SPEC_BYTES})")
        return data

    def digest(self) -> bytes:
        """sha-256 of the canonical bytes: the contract's ``specHash``."""
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> RunSpec:
        """Parse and check a spec's structure; :class:`SpecError` says what is wrong."""
        if len(data) > MAX_SPEC_BYTES:
            raise SpecError(f"run spec: {len(data)} bytes, more than {MAX_SPEC_BYTES}")
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SpecError(f"run spec is not UTF-8 JSON ({exc})") from None
        return cls.from_json(document)

    @classmethod
    def from_json(cls, document: Any) -> RunSpec:
        reader = _Reader(document, "")
        fmt = reader.str("format")
        if fmt != SPEC_FORMAT:
            raise SpecError(f"run spec format {fmt!r} is not supported (this release reads {SPEC_FORMAT!r})")
        model, data, rule = reader.node("model"), reader.node("data"), reader.node("rule")
        privacy, training, rounds = reader.node("privacy"), reader.node("training"), reader.node("rounds")
        release, incentives = reader.node("release"), reader.node("incentives")
        eps_value = privacy.raw("epsilon")
        if eps_value == "inf":
            epsilon = math.inf
        elif isinstance(eps_value, (int, float)) and not isinstance(eps_value, bool):
            epsilon = float(eps_value)
        else:
            raise SpecError(f"run spec: privacy.epsilon must be a number or \"inf\" (got {eps_value!r})")
        spec = cls(
            model=ModelSpec(target=model.str("target"), args=model.dict("args")),
            data=DataSchema(num_features=data.int("num_features"), num_classes=data.int("num_classes"),
                            input_shape=tuple(data.int_list("input_shape"))),  # fmt: skip
            rule=RuleSpec(name=rule.str("name"), params=rule.dict("params")),
            privacy=PrivacySpec(epsilon=epsilon, delta=privacy.float("delta"),
                                max_grad_norm=privacy.float("max_grad_norm"), accountant=privacy.str("accountant")),  # fmt: skip
            training=TrainingSpec(local_epochs=training.int("local_epochs"), batch_size=training.int("batch_size"),
                                  learning_rate=training.float("learning_rate")),  # fmt: skip
            rounds=RoundsSpec(num_rounds=rounds.int("num_rounds"), commit_s=rounds.int("commit_s"),
                              reveal_s=rounds.int("reveal_s"), attest_s=rounds.int("attest_s"),
                              sample_fraction=rounds.float("sample_fraction"), quorum=rounds.int("quorum"),
                              min_reveals=rounds.int("min_reveals"), committee_size=rounds.int("committee_size")),  # fmt: skip
            max_blob_bytes=reader.int("max_blob_bytes"),
            incentives=IncentivesSpec(
                score=incentives.str("score"), validation_cid=incentives.str("validation_cid"),
                stake_token=incentives.str("stake_token"), stake=incentives.int("stake"),
                reward_pool=incentives.int("reward_pool"), slash_missing_reveal=incentives.int("slash_missing_reveal"),
                slash_refused=incentives.int("slash_refused"), slash_minority=incentives.int("slash_minority"),
                attester_share_bps=incentives.int("attester_share_bps")),  # fmt: skip
            release=Release(deai_flower=release.str("deai_flower"),
                            libraries={k: str(v) for k, v in release.dict("libraries").items()}),  # fmt: skip
        )
        for name in ("model", "data", "rule", "privacy", "training", "rounds", "incentives", "release"):
            reader.node(name).done()
        reader.done()
        spec.check()
        return spec

    # ------------------------------------------------------------------ on chain

    def run_params(self, *, initial_model_cid: bytes, code_hash: bytes) -> dict[str, Any]:
        """The contract's ``RunParams`` for this spec (docs/protocol.md §2.1): what the run's
        creator passes to ``createRun`` and what a verifier expects the ``RunCreated``
        event to hold. Everything but the initial model's binary CID and the release's
        ``codeHash`` follows from the spec; ``sampleBps`` is ``sample_fraction`` in basis
        points, rounded half to even (Python's ``round``)."""
        r, inc = self.rounds, self.incentives
        return {
            "specHash": self.digest(),
            "codeHash": code_hash,
            "initialModelCid": initial_model_cid,
            "epsilonBudgetWad": to_wad(self.privacy.epsilon),
            "deltaWad": to_wad(self.privacy.delta),
            "numRounds": r.num_rounds,
            "commitDuration": r.commit_s,
            "revealDuration": r.reveal_s,
            "attestDuration": r.attest_s,
            "sampleBps": round(r.sample_fraction * BPS),
            "quorum": r.quorum,
            "minReveals": r.min_reveals,
            "committeeSize": r.committee_size,
            "stakeToken": inc.stake_token or ZERO_ADDRESS,
            "stake": inc.stake,
            "rewardPool": inc.reward_pool,
            "slashMissingReveal": inc.slash_missing_reveal,
            "slashRefused": inc.slash_refused,
            "slashMinority": inc.slash_minority,
            "attesterShareBps": inc.attester_share_bps,
        }

    # ------------------------------------------------------------------ checks

    @property
    def private(self) -> bool:
        return math.isfinite(self.privacy.epsilon)

    def check(self) -> None:
        """Values in range (a spec that parses but could not run is refused as well)."""
        d, p, t, r = self.data, self.privacy, self.training, self.rounds
        problems = []
        model_problem = _model_problem(self.model)
        if model_problem:
            problems.append(model_problem)
        if d.num_features < 1 or d.num_classes < 2 or not d.input_shape or min(d.input_shape) < 1:
            problems.append(f"data schema needs num_features >= 1, num_classes >= 2 and a positive input shape "
                            f"(got {d.num_features}, {d.num_classes}, {list(d.input_shape)})")  # fmt: skip
        elif math.prod(d.input_shape) != d.num_features:
            problems.append(f"data.input_shape {list(d.input_shape)} does not hold {d.num_features} features")
        if not (p.epsilon > 0 and 0 < p.delta < 1 and 0 < p.max_grad_norm < math.inf):
            problems.append(f"privacy needs epsilon > 0, 0 < delta < 1 and a finite max_grad_norm > 0 "
                            f"(got {p.epsilon}, {p.delta}, {p.max_grad_norm})")  # fmt: skip
        if t.local_epochs < 1 or t.batch_size < 1 or not t.learning_rate > 0:
            problems.append("training needs local_epochs >= 1, batch_size >= 1 and learning_rate > 0")
        if r.num_rounds < 1 or min(r.commit_s, r.reveal_s, r.attest_s) < 1 or not 0 < r.sample_fraction <= 1:
            problems.append("rounds need num_rounds >= 1, phase durations >= 1 s and 0 < sample_fraction <= 1")
        if not 1 <= r.quorum <= r.min_reveals or not (r.committee_size == 0 or r.quorum <= r.committee_size):
            problems.append(f"rounds need 1 <= quorum <= min_reveals, and committee_size 0 or >= quorum "
                            f"(got {r.quorum}, {r.min_reveals}, {r.committee_size})")  # fmt: skip
        if self.max_blob_bytes < 1:
            problems.append("max_blob_bytes must be >= 1")
        problems.extend(self._incentive_problems())
        if problems:
            raise SpecError("run spec: " + "; ".join(problems))

    def _incentive_problems(self) -> list[str]:
        i = self.incentives
        problems = []
        if i.score not in SCORES:
            problems.append(f"incentives.score must be one of {', '.join(SCORES)} (got {i.score!r})")
        elif i.score == "loss" and not i.validation_cid:
            problems.append("incentives.score 'loss' needs incentives.validation_cid (the validation set's CID)")
        token = i.stake_token
        if token and not (len(token) == 42 and token.startswith("0x") and all(c in "0123456789abcdefABCDEF"
                                                                            for c in token[2:])):  # fmt: skip
            problems.append(f"incentives.stake_token must be a 0x address or empty (got {token!r})")
        amounts = {"stake": i.stake, "reward_pool": i.reward_pool, "slash_missing_reveal": i.slash_missing_reveal,
                   "slash_refused": i.slash_refused, "slash_minority": i.slash_minority}  # fmt: skip
        for name, value in amounts.items():
            if not 0 <= value <= _MAX_AMOUNT:
                problems.append(f"incentives.{name} must be between 0 and 2**128 - 1 (got {value})")
        slashes = (i.slash_missing_reveal, i.slash_refused, i.slash_minority)
        if max(slashes) > i.stake:
            problems.append(f"incentives: no slashing amount may exceed the stake ({i.stake}); got {list(slashes)}")
        if not 0 <= i.attester_share_bps <= BPS:
            problems.append(f"incentives.attester_share_bps must be between 0 and {BPS} (got {i.attester_share_bps})")
        if i.slash_minority > _MAX_MINORITY_SLASH:
            problems.append(f"incentives.slash_minority must be at most 2**96 - 1 (got {i.slash_minority})")
        return problems

    def check_supported(self) -> None:
        """Refuse a spec this release cannot execute bit for bit (rule, accountant, release)."""
        from deai_flower.protocol.rules import RULES, minimum_updates

        if self.rule.name not in RULES:
            raise SpecError(f"run spec names aggregation rule {self.rule.name!r}, which this release does not "
                            f"implement ({', '.join(RULES)})")  # fmt: skip
        if self.privacy.accountant not in ACCOUNTANTS:
            raise SpecError(f"run spec names accountant {self.privacy.accountant!r} (known: {', '.join(ACCOUNTANTS)})")
        ours = Release.current()
        if self.release.deai_flower != ours.deai_flower:
            raise SpecError(f"run spec is for deai-flower {self.release.deai_flower}; this is {ours.deai_flower} "
                            "(aggregates are bit-identical only within one release)")  # fmt: skip
        for name, version in self.release.libraries.items():
            if ours.libraries.get(name, _package_version(name)) != version:
                raise SpecError(f"run spec fixes {name} {version}; this participant has "
                                f"{ours.libraries.get(name, _package_version(name))}")  # fmt: skip
        needed = minimum_updates(self.rule.name, self.rule.params)
        if self.rounds.min_reveals < needed:
            raise SpecError(f"run spec: rule {self.rule.name} with {self.rule.params} needs min_reveals >= {needed} "
                            f"(got {self.rounds.min_reveals})")  # fmt: skip


def spec_cid(digest: bytes) -> str:
    """The CID a spec is stored under, from the digest the chain records."""
    if len(digest) != 32:
        raise SpecError(f"a spec digest is 32 bytes (got {len(digest)})")
    return cid_from_bytes(_binary_cid(_RAW, bytes(digest)))


class _Reader:
    """Typed access to one JSON object of the spec, naming the path in every error."""

    def __init__(self, node: Any, path: str) -> None:
        if not isinstance(node, dict):
            raise SpecError(f"run spec: {path or 'the document'} must be an object")
        self._node, self._path, self._seen = node, path, set()

    def raw(self, key: str) -> Any:
        where = f"{self._path}.{key}" if self._path else key
        if key not in self._node:
            raise SpecError(f"run spec: missing {where}")
        self._seen.add(key)
        return self._node[key]

    def _typed(self, key: str, kinds: tuple[type, ...], label: str) -> Any:
        value = self.raw(key)
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            where = f"{self._path}.{key}" if self._path else key
            raise SpecError(f"run spec: {where} must be {label} (got {value!r})")
        return value

    def str(self, key: str) -> str:
        return self._typed(key, (str,), "a string")

    def int(self, key: str) -> int:
        return self._typed(key, (int,), "an integer")

    def float(self, key: str) -> float:
        return float(self._typed(key, (int, float), "a number"))

    def dict(self, key: str) -> dict[str, Any]:
        return dict(self._typed(key, (dict,), "an object"))

    def int_list(self, key: str) -> list[int]:
        value = self._typed(key, (list,), "a list of integers")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise SpecError(f"run spec: {self._path}.{key} must be a list of integers (got {value!r})")
        return value

    def node(self, key: str) -> _Reader:
        where = f"{self._path}.{key}" if self._path else key
        cached = getattr(self, "_children", {})
        if key not in cached:
            cached[key] = _Reader(self.raw(key), where)
            self._children = cached
        return cached[key]

    def done(self) -> None:
        unknown = sorted(set(self._node) - self._seen)
        if unknown:
            raise SpecError(f"run spec: unknown key {', '.join(unknown)} in {self._path or 'the document'}")

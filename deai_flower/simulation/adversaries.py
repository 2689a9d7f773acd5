"""Simulated defectors against the reward rule (issue 24): each sends what a silo could
send to be paid more than honest private work earns, and reveals honest DP claims.

Selected by ``adversary.kind`` (conf/adversary/*.yaml), played by the clients in
``adversary.poisoned_clients``:

* ``public_step``: trains nothing useful; sends the global model plus last round's public
  step (the change between the two latest global models it saw), plus Gaussian noise of
  the per-coordinate std an honest DP update carries when ``adversary.look_honest``.
* ``no_noise``: trains with DP-SGD's clipping and sampling but σ = 0, and reveals the DP
  record of an honest round (its ledger spends as an honest one's would).
* ``sybil``: two identities, one vector: the first of the pair to train sends its honest
  update, the other the identical bytes.
* ``sign_flip_twins``: two identities send the identical sign-flipped update
  ``G + scale * (w_trained - G)`` (``adversary.scale`` < 0) of the first to train.
* ``fit_validation``: trains as ``no_noise`` does, but on the validation set a
  loss-scored run names in its spec (the first ``incentives.validation_size`` examples of
  the test split, public to every participant) instead of its own data.

A behaviour may wrap the training (``train_round``, with :func:`train_round`'s keyword
arguments) and rewrite what is sent (``poison``). Twins meet on a board in this process:
the in-process engine only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..models import get_arrays
from ..privacy.training import RoundTraining, train_round
from ..protocol.shares import update_noise_std

__all__ = ["ADVERSARY_KINDS", "NoNoise", "PublicStepEcho", "Twin", "forget_twins", "make_adversary"]

#: The kinds this module plays (the others, ``scaled`` and ``freerider``, are participants.py's).
ADVERSARY_KINDS = ("public_step", "no_noise", "sybil", "sign_flip_twins", "fit_validation")

_BOARD: dict[tuple[str, bytes], dict[str, np.ndarray]] = {}
_BOARD_LOCK = threading.Lock()


def _digest(arrays: Mapping[str, np.ndarray]) -> bytes:
    return hashlib.sha256(b"".join(np.ascontiguousarray(arrays[n]).tobytes() for n in sorted(arrays))).digest()


def honest_noise_std(trained: RoundTraining, kwargs: Mapping[str, Any]) -> float:
    """The per-coordinate noise std of an honest update with ``trained``'s DP claims."""
    return update_noise_std(noise_multiplier=trained.noise_multiplier, steps=trained.steps,
                            num_examples=trained.num_examples, batch_size=int(kwargs["batch_size"]),
                            learning_rate=float(kwargs["learning_rate"]),
                            max_grad_norm=float(kwargs["settings"].max_grad_norm))  # fmt: skip


class _TrainingDefector:
    """A defector whose whole act is in its training (``train_round``): it sends what it trained."""

    def poison(
        self, global_arrays: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        return dict(update)


class PublicStepEcho(_TrainingDefector):
    """``public_step``: the global model plus the previous public step (plus honest-looking noise).

    Round 1 has no public step: it sends the global model (plus the noise)."""

    def __init__(self, *, look_honest: bool, seed: int) -> None:
        self.look_honest = look_honest
        self.rng = np.random.default_rng(seed)
        self.previous: dict[str, np.ndarray] | None = None

    def train_round(self, **kwargs: Any) -> RoundTraining:
        honest = train_round(**kwargs)  # for its DP claims and ledger: what it reveals is honest-looking
        current = {k: np.asarray(v) for k, v in get_arrays(kwargs["model"]).items()}
        std = honest_noise_std(honest, kwargs) if self.look_honest else 0.0
        sent = {}
        for name, value in current.items():
            step = value - self.previous[name] if self.previous is not None else np.zeros_like(value)
            noise = std * self.rng.standard_normal(value.shape) if std > 0 else 0.0
            sent[name] = (value + step + noise).astype(value.dtype)
        self.previous = {k: v.copy() for k, v in current.items()}
        return dataclasses.replace(honest, arrays=sent)


class NoNoise(_TrainingDefector):
    """``no_noise``: DP-SGD's clipping and Poisson sampling with σ = 0; the reveal carries
    the claims (σ, q, steps, ε) of the honest round its ledger records.

    ``data``: train on these ``(x, y)`` instead of its own (``fit_validation``: the
    validation set a loss-scored run names)."""

    def __init__(self, data: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.data = data

    def train_round(self, **kwargs: Any) -> RoundTraining:
        from ..privacy import training as dp

        honest = train_round(**kwargs)
        x, y = self.data if self.data is not None else (kwargs["x"], kwargs["y"])
        expected = min(int(kwargs["batch_size"]), len(x))
        seed = int(kwargs.get("seed") or 0)
        loader = dp.DPDataLoader(dp._tensors(x, y), sample_rate=expected / len(x),
                                 generator=torch.Generator().manual_seed(seed))  # fmt: skip
        with dp._cpu_threads(kwargs.get("num_threads")):
            arrays, _, _ = dp._train_private(model=kwargs["model"], loader=loader, settings=kwargs["settings"],
                                             prior=[], sigma=0.0, sample_rate=expected / len(x),
                                             expected_batch=expected, local_epochs=int(kwargs["local_epochs"]),
                                             learning_rate=float(kwargs["learning_rate"]), noise_seed=seed,
                                             device=kwargs["device"])  # fmt: skip
        return dataclasses.replace(honest, arrays=arrays)


class Twin:
    """``sybil`` (``scale`` 1) and ``sign_flip_twins`` (``scale`` < 0): the first of a pair
    to reach a round's global model posts ``G + scale * (w_trained - G)`` and sends it;
    the other takes it off the board and sends the same bytes."""

    def __init__(self, *, pair: str, scale: float) -> None:
        self.pair = pair
        self.scale = scale

    def poison(
        self, global_arrays: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        key = (self.pair, _digest(global_arrays))
        with _BOARD_LOCK:
            posted = _BOARD.pop(key, None)
            if posted is not None:
                return {name: value.copy() for name, value in posted.items()}
            sent = {name: (global_arrays[name] + self.scale * (value - global_arrays[name])).astype(value.dtype)
                    for name, value in update.items()}  # fmt: skip
            _BOARD[key] = sent
            return {name: value.copy() for name, value in sent.items()}


def forget_twins() -> None:
    """Clear the twins' board (an experiment ended)."""
    with _BOARD_LOCK:
        _BOARD.clear()


def make_adversary(cfg: Any, client: int) -> PublicStepEcho | NoNoise | Twin:
    """The behaviour of simulated ``client`` for ``cfg.adversary.kind`` (one of ADVERSARY_KINDS)."""
    a, kind = cfg.adversary, str(cfg.adversary.kind)
    seed = int(cfg.seed) * 1_000_003 + client
    if kind == "public_step":
        return PublicStepEcho(look_honest=bool(a.get("look_honest", True)), seed=seed)
    if kind == "no_noise":
        return NoNoise()
    if kind == "fit_validation":  # the set harness.store_validation_set names in a loss-scored spec
        from ..data import load_dataset

        split = load_dataset(cfg.dataset, seed=int(cfg.seed))
        size = min(int(cfg.incentives.validation_size), len(split.y_test))
        return NoNoise(data=(split.x_test[:size], split.y_test[:size]))
    pair = f"{cfg.seed}:{kind}:{sorted(int(c) for c in a.poisoned_clients)}"
    if kind == "sybil":
        return Twin(pair=pair, scale=1.0)
    if kind == "sign_flip_twins":
        return Twin(pair=pair, scale=float(a.scale))
    raise ValueError(f"unknown adversary kind {kind!r}")

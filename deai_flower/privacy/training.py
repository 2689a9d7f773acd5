"""Local DP-SGD training: one federated round on a participant's own data, with Opacus.

Each federated round a client trains the global model on its own data with Opacus'
DP-SGD (per-sample clipping, Gaussian noise, Poisson sampling) and reports how much of
its (epsilon, delta) budget it has spent so far. Three Opacus facts shape the design:

* Wrapping a module twice registers its hooks twice (an error), so every round trains
  a fresh deep copy of the caller's model and the caller's module is never wrapped.
* A new ``PrivacyEngine`` starts with an empty accountant, so the client's accounting
  history, a list of ``(noise_multiplier, sample_rate, steps)``, lives in a
  :class:`~deai_flower.privacy.ledger.PrivacyLedger` that the ClientApp keeps; it is
  restored into each round's engine and grows by one entry per round.
* Calibrating the noise every round for the whole budget (``make_private_with_epsilon``)
  would spend the budget again each round, so the noise multiplier is calibrated once
  per client for the planned number of rounds (:mod:`.accounting`) and kept in the ledger.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import secrets
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import AbstractGradSampleModule
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deai_flower.errors import ConfigError, PrivacyBudgetExhaustedError, PrivacyError
from deai_flower.models import get_arrays
from deai_flower.protocol.epsilon import coalesce, epsilon_of

from .accounting import EPSILON_TOLERANCE, calibrate_noise
from .ledger import PrivacyLedger
from .settings import GRAD_SAMPLE_MODES, PrivacySettings, is_number

__all__ = ["RoundTraining", "choose_grad_sample_mode", "train_round"]

# "auto" trains all-Linear models of at least this many trainable parameters with ghost
# clipping (the measurements are next to GRAD_SAMPLE_MODES, in settings.py).
_GHOST_MIN_LINEAR_PARAMETERS = 8_000
_FALLBACK_GRAD_SAMPLE_MODE = "hooks"

# SGD momentum for local training (private and non-private alike).
MOMENTUM = 0.9

_SECURE_RNG_HINT = (
    "secure_mode needs the 'torchcsprng' package, which is not installed; install a "
    "torchcsprng build matching your PyTorch version (pip install torchcsprng) or set "
    "privacy.secure_mode=false"
)


@dataclass(frozen=True)
class RoundTraining:
    """The outcome of one client's local training round.

    ``epsilon`` is cumulative over all of the client's rounds so far, at ``delta``
    (``inf`` for non-private training, whose ``accountant`` is ``"none"``).
    ``train_loss`` is the mean per-example loss on the batches trained on; it is
    computed from private data and is *not* covered by the DP guarantee.
    """

    arrays: dict[str, np.ndarray]
    num_examples: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float
    accountant: str
    train_loss: float



@contextlib.contextmanager
def _cpu_threads(count: int | None) -> Iterator[None]:
    # A client's CPU share. Small models train fastest on one thread, and on a busy
    # machine PyTorch's thread pool otherwise stalls them (measured: 18 ms vs 40-400 ms
    # for one main-job client round on a loaded 2-core machine). Ray sets the same cap
    # for its actors through OMP_NUM_THREADS.
    if count is None:
        yield
        return
    if count < 1:
        raise ConfigError(f"num_threads must be >= 1 (got {count})")
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_trainable(model: nn.Module) -> None:
    # Fixing layers here would change the parameter names and shapes of the update the
    # other parties expect, so an incompatible model is an error; the fix belongs at
    # build time (deai_flower.models.make_dp_compatible).
    base = model._module if isinstance(model, AbstractGradSampleModule) else model
    # The validator also demands training mode, which the trained copy will be in; the
    # caller's module may have been left in eval mode by an evaluation.
    was_training = base.training
    base.train()
    try:
        errors = ModuleValidator.validate(base, strict=False)
    finally:
        base.train(was_training)
    if errors:
        raise PrivacyError(
            "the model cannot be trained with DP-SGD: "
            + "; ".join(str(error) for error in errors)
            + " (build it through deai_flower.models.make_dp_compatible, which replaces such layers)"
        )



def _check_training_args(
    *,
    x: np.ndarray,
    y: np.ndarray,
    planned_rounds: int,
    local_epochs: int,
    batch_size: int,
    learning_rate: float,
) -> None:
    if len(x) != len(y):
        raise ConfigError(f"x and y differ in length ({len(x)} != {len(y)})")
    if len(x) == 0:
        raise ConfigError("cannot train on an empty partition")
    if planned_rounds < 1:
        raise ConfigError(f"planned_rounds must be >= 1 (got {planned_rounds})")
    if local_epochs < 1:
        raise ConfigError(f"local_epochs must be >= 1 (got {local_epochs})")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
    if not is_number(learning_rate) or not learning_rate > 0:
        raise ConfigError(f"learning_rate must be > 0 (got {learning_rate!r})")


def _seeds(seed: int | None) -> tuple[int, int]:
    # Independent streams for batch sampling and for noise, both derived from one seed
    # (or, without one, from 128 bits of CSPRNG entropy nobody else sees).
    entropy = secrets.randbits(128) if seed is None else int(seed) % 2**128  # SeedSequence wants a non-negative int
    sampling, noise = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64)
    return int(sampling) & (2**63 - 1), int(noise) & (2**63 - 1)


# Attribute Opacus sets on a module it has hooked (its "hooks twice" check reads it).
_OPACUS_HOOKS_MARK = "autograd_grad_sample_hooks"


def _fresh_copy(model: nn.Module, device: torch.device) -> nn.Module:
    # Never train (or let Opacus hook) the caller's module: train a deep copy.
    base = model._module if isinstance(model, AbstractGradSampleModule) else model
    work = copy.deepcopy(base)
    if base is not model or hasattr(base, _OPACUS_HOOKS_MARK):
        # The module is (or was) inside an Opacus wrapper, and deepcopy copied that
        # wrapper's hooks; wrapping the copy would then add them twice. The copy is
        # ours, so drop every hook and Opacus' per-sample state from it.
        _strip_hooks(work)
    work.to(device)
    work.train()
    return work


def _strip_hooks(module: nn.Module) -> None:
    if hasattr(module, _OPACUS_HOOKS_MARK):
        delattr(module, _OPACUS_HOOKS_MARK)
    for sub in module.modules():
        sub._forward_hooks.clear()
        sub._forward_pre_hooks.clear()
        sub._backward_hooks.clear()
        sub._backward_pre_hooks.clear()
    for param in module.parameters():
        param.grad = None
        for attr in ("grad_sample", "summed_grad", "_forward_counter"):
            if hasattr(param, attr):
                delattr(param, attr)


def _tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(
        torch.as_tensor(np.asarray(x, dtype=np.float32)),
        torch.as_tensor(np.asarray(y, dtype=np.int64)),
    )


def _step_count(history: list[tuple[float, float, int]]) -> int:
    return sum(int(steps) for _, _, steps in history)


def train_round(
    *,
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    settings: PrivacySettings,
    ledger: PrivacyLedger,
    planned_rounds: int,
    local_epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int | None = None,
    device: torch.device,
    num_threads: int | None = None,
) -> RoundTraining:
    """Train a copy of ``model`` on ``(x, y)`` for one federated round.

    Private (finite epsilon): DP-SGD via Opacus with Poisson sampling at rate
    ``q = batch_size / len(x)`` for ``local_epochs * floor(1/q)`` steps, clipping norm
    ``settings.max_grad_norm`` and the ledger's noise multiplier, calibrated on first use
    so that ``planned_rounds`` such rounds spend exactly the budget. The round is refused
    *before* training if it would take the cumulative epsilon past the budget. On success
    the round's ``(sigma, q, steps)`` is appended to ``ledger.history``; on any error the
    ledger is left unchanged.

    Non-private (``epsilon=inf``): plain shuffled mini-batch SGD without Opacus; the
    ledger records the round with noise multiplier 0 (an infinite epsilon).

    ``seed`` fixes batch sampling and noise (ignored under ``secure_mode``); None (the
    default) draws both from fresh CSPRNG entropy, so that nobody can replay the noise.
    A seed anyone else knows makes the noise public: pass one only for reproducible
    simulations, and never reuse one across clients or rounds. ``num_threads`` caps PyTorch's CPU threads while
    training (restored afterwards); ``None`` leaves PyTorch's setting.

    Raises:
        ConfigError: invalid training arguments.
        PrivacyBudgetExhaustedError: the round would exceed the (epsilon, delta) budget.
        PrivacyError: calibration impossible, or ``secure_mode`` without ``torchcsprng``.
    """
    _check_training_args(
        x=x,
        y=y,
        planned_rounds=planned_rounds,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )
    # A batch larger than the data would give q > 1; cap it at one full pass.
    expected_batch = min(int(batch_size), len(x))
    sample_rate = expected_batch / len(x)
    sampling_seed, noise_seed = _seeds(seed)

    if not settings.private:
        with _cpu_threads(num_threads):
            return _train_non_private(
                model=model,
                x=x,
                y=y,
                settings=settings,
                ledger=ledger,
                local_epochs=local_epochs,
                batch_size=expected_batch,
                sample_rate=sample_rate,
                learning_rate=learning_rate,
                sampling_seed=sampling_seed,
                device=device,
            )

    if settings.secure_mode and importlib.util.find_spec("torchcsprng") is None:
        raise PrivacyError(_SECURE_RNG_HINT)
    _check_trainable(model)

    dataset = _tensors(x, y)
    sampler_generator = None
    if not settings.secure_mode:
        sampler_generator = torch.Generator().manual_seed(sampling_seed)
    loader = DPDataLoader(dataset, sample_rate=sample_rate, generator=sampler_generator)
    # The Poisson sampler yields floor(1/q) batches per pass; that is the step count the
    # accountant will see, so plan with it.
    steps = local_epochs * len(loader)

    sigma = ledger.noise_multiplier
    if sigma is None:
        sigma = calibrate_noise(
            target_epsilon=float(settings.epsilon),
            delta=float(settings.delta),
            sample_rate=sample_rate,
            steps=planned_rounds * steps,
            accountant=settings.accountant,
        )
    prior = coalesce(ledger.history)
    epsilon_after = epsilon_of(
        [*prior, (sigma, sample_rate, steps)], delta=settings.delta, accountant=settings.accountant
    )
    if epsilon_after > settings.epsilon + EPSILON_TOLERANCE:
        spent = epsilon_of(prior, delta=settings.delta, accountant=settings.accountant)
        raise PrivacyBudgetExhaustedError(
            f"privacy budget exhausted: one more round ({steps} steps, σ={sigma:.4g}, "
            f"q={sample_rate:.4g}) would spend ε={epsilon_after:.4f} > budget "
            f"ε={settings.epsilon:g} at δ={settings.delta:g} (already spent ε={spent:.4f} "
            f"over {len(ledger.history)} round(s))"
        )

    with _cpu_threads(num_threads):
        arrays, recorded_steps, train_loss = _train_private(
            model=model,
            loader=loader,
            settings=settings,
            prior=prior,
            sigma=sigma,
            sample_rate=sample_rate,
            expected_batch=expected_batch,
            local_epochs=local_epochs,
            learning_rate=learning_rate,
            noise_seed=noise_seed,
            device=device,
        )
    if recorded_steps != steps:
        # Cannot happen with Opacus' sampler (fixed batch count); if it ever does, trust
        # what the accountant recorded over the plan.
        epsilon_after = epsilon_of(
            [*prior, (sigma, sample_rate, recorded_steps)],
            delta=settings.delta,
            accountant=settings.accountant,
        )
    ledger.noise_multiplier = sigma
    ledger.history.append((sigma, sample_rate, recorded_steps))
    return RoundTraining(
        arrays=arrays,
        num_examples=len(x),
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps=recorded_steps,
        delta=settings.delta,
        epsilon=epsilon_after,
        accountant=settings.accountant,
        train_loss=train_loss,
    )


def _make_private(
    *,
    engine: PrivacyEngine,
    module: nn.Module,
    loader: DataLoader,
    settings: PrivacySettings,
    sigma: float,
    learning_rate: float,
    expected_batch: int,
    sample_rate: float,
    noise_generator: torch.Generator | None,
    mode: str,
) -> tuple[nn.Module, Any, Any, DataLoader]:
    # Sum reduction: Opacus then adds noise to the sum of clipped per-sample gradients
    # and the learning rate divides by the *expected* batch size, which is the DP-SGD
    # estimator and, unlike mean reduction, stays finite on an empty Poisson batch.
    optimizer = torch.optim.SGD(
        module.parameters(), lr=learning_rate / expected_batch, momentum=MOMENTUM
    )
    criterion = nn.CrossEntropyLoss(reduction="sum")
    wrapped = engine.make_private(
        module=module,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=settings.max_grad_norm,
        loss_reduction="sum",
        # The loader is already a Poisson DPDataLoader at q = batch/len; letting Opacus
        # rebuild it would use q = 1/len(loader) instead.
        poisson_sampling=False,
        noise_generator=noise_generator,
        grad_sample_mode=mode,
    )
    if len(wrapped) == 4:  # ghost clipping also returns a criterion wrapper
        dp_module, dp_optimizer, dp_criterion, dp_loader = wrapped
    else:
        dp_module, dp_optimizer, dp_loader = wrapped
        dp_criterion = criterion
    # make_private attached an accounting hook with q = 1/len(loader); replace it with
    # the loader's true sampling rate so the accountant records what actually happened.
    dp_optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    dp_module.forbid_grad_accumulation()
    return dp_module, dp_optimizer, dp_criterion, dp_loader


def choose_grad_sample_mode(model: nn.Module, requested: str = "auto") -> str:
    """The per-sample-gradient mode to train ``model`` with (``requested`` unless "auto").

    "auto" picks ghost clipping for models whose trainable layers are all Linear and
    hold at least ``_GHOST_MIN_LINEAR_PARAMETERS`` parameters, hooks otherwise (see the
    measurements next to ``GRAD_SAMPLE_MODES`` in :mod:`.settings`).
    """
    if requested not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"grad_sample_mode must be one of: {', '.join(GRAD_SAMPLE_MODES)} (got {requested!r})")
    if requested != "auto":
        return requested
    layers = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    if not layers or not all(isinstance(m, nn.Linear) for m in layers):
        return "hooks"
    trainable = sum(p.numel() for m in layers for p in m.parameters(recurse=False) if p.requires_grad)
    return "ghost" if trainable >= _GHOST_MIN_LINEAR_PARAMETERS else "hooks"


def _run_epochs(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    device: torch.device,
    loss_scale: str | None,
) -> tuple[float, int, int]:
    """Plain training epochs; returns (summed loss, examples seen, optimizer steps).

    ``loss_scale="batch"`` multiplies a mean-reduced loss by the batch size, so the sum
    is comparable with a criterion that already sums.
    """
    loss_sum, seen, steps = 0.0, 0, 0
    for _ in range(epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(module(xb), yb)
            loss.backward()
            optimizer.step()
            batch = int(xb.shape[0])
            loss_sum += float(loss.item()) * (batch if loss_scale == "batch" else 1)
            seen += batch
            steps += 1
    return loss_sum, seen, steps


def _train_private(
    *,
    model: nn.Module,
    loader: DPDataLoader,
    settings: PrivacySettings,
    prior: list[tuple[float, float, int]],
    sigma: float,
    sample_rate: float,
    expected_batch: int,
    local_epochs: int,
    learning_rate: float,
    noise_seed: int,
    device: torch.device,
) -> tuple[dict[str, np.ndarray], int, float]:
    with warnings.catch_warnings():
        # Opacus warns on every engine built without secure RNG; the setting is explicit.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        try:
            engine = PrivacyEngine(accountant=settings.accountant, secure_mode=settings.secure_mode)
        except ImportError as exc:
            raise PrivacyError(_SECURE_RNG_HINT) from exc
    # Restore the client's history so the engine's accountant continues from it.
    engine.accountant.history = list(prior)

    noise_generator = None
    if not settings.secure_mode:
        noise_generator = torch.Generator(device=device).manual_seed(noise_seed)

    last_error: Exception | None = None
    for mode in dict.fromkeys((choose_grad_sample_mode(model, settings.grad_sample_mode),
                               _FALLBACK_GRAD_SAMPLE_MODE)):  # fmt: skip
        work = _fresh_copy(model, device)
        try:
            dp_module, dp_optimizer, dp_criterion, dp_loader = _make_private(
                engine=engine,
                module=work,
                loader=loader,
                settings=settings,
                sigma=sigma,
                learning_rate=learning_rate,
                expected_batch=expected_batch,
                sample_rate=sample_rate,
                noise_generator=noise_generator,
                mode=mode,
            )
            break
        except (NotImplementedError, ValueError) as exc:  # mode unsupported for a layer
            last_error = exc
    else:
        raise PrivacyError(f"Opacus cannot make this model private: {last_error}") from last_error

    with warnings.catch_warnings():
        # Ghost clipping's backward hooks fire on a first layer whose input needs no
        # gradient; PyTorch warns about that, but it is exactly what Opacus expects.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        # The private criterion sums over the batch (see _make_private): no rescaling.
        loss_sum, seen, _ = _run_epochs(dp_module, dp_optimizer, dp_criterion, dp_loader,
                                        epochs=local_epochs, device=device, loss_scale=None)  # fmt: skip
    dp_optimizer.zero_grad(set_to_none=True)

    recorded_steps = _step_count(engine.accountant.history) - _step_count(prior)
    train_loss = loss_sum / seen if seen else 0.0
    return get_arrays(dp_module), recorded_steps, train_loss


def _train_non_private(
    *,
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    settings: PrivacySettings,
    ledger: PrivacyLedger,
    local_epochs: int,
    batch_size: int,
    sample_rate: float,
    learning_rate: float,
    sampling_seed: int,
    device: torch.device,
) -> RoundTraining:
    work = _fresh_copy(model, device)
    loader = DataLoader(
        _tensors(x, y),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(sampling_seed),
    )
    optimizer = torch.optim.SGD(work.parameters(), lr=learning_rate, momentum=MOMENTUM)
    criterion = nn.CrossEntropyLoss()
    loss_sum, seen, steps = _run_epochs(work, optimizer, criterion, loader, epochs=local_epochs, device=device,
                                        loss_scale="batch")  # fmt: skip
    # A non-private round is recorded with sigma = 0: its epsilon is infinite, and a
    # later private configuration must not pretend this data was never exposed.
    ledger.history.append((0.0, sample_rate, steps))
    return RoundTraining(
        arrays=get_arrays(work),
        num_examples=len(x),
        noise_multiplier=0.0,
        sample_rate=sample_rate,
        steps=steps,
        delta=settings.delta,
        epsilon=math.inf,
        accountant="none",  # recorded on chain as accountant 0: no accounting, ε = ∞
        train_loss=loss_sum / seen if seen else 0.0,
    )

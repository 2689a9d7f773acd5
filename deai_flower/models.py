"""Model construction, weight exchange as numpy arrays, evaluation and device choice.

Weights travel between the server, the clients and the content store as a mapping of
parameter name to ``float32`` numpy array. Names are those of the plain PyTorch module:
when Opacus wraps a module (``GradSampleModule``) its state dict gains a ``_module.``
prefix, which :func:`get_arrays` removes and :func:`set_arrays` restores, so wrapped and
unwrapped models exchange the same names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from deai_flower.errors import ConfigError

__all__ = [
    "MODELS",
    "build_model",
    "evaluate",
    "get_arrays",
    "select_device",
    "set_arrays",
]

# Prefix Opacus' GradSampleModule (all grad-sample modes) puts before every name.
_WRAPPED_PREFIX = "_module."

MODELS: tuple[str, ...] = ("mlp",)


def _build_mlp(*, num_features: int, num_classes: int, hidden: Sequence[int]) -> nn.Module:
    layers: list[nn.Module] = []
    width = num_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def build_model(
    name: str,
    *,
    num_features: int,
    num_classes: int,
    hidden: Sequence[int],
    seed: int,
) -> nn.Module:
    """Build a freshly initialised model; the same arguments give identical weights.

    ``"mlp"`` is a stack of ``Linear + ReLU`` for each size in ``hidden`` followed by a
    ``Linear`` to ``num_classes`` logits (empty ``hidden``: multinomial logistic
    regression). The model is in ``float32`` on the CPU.

    Raises:
        ConfigError: unknown ``name`` or non-positive sizes.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if num_features < 1:
        raise ConfigError(f"num_features must be >= 1 (got {num_features})")
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 (got {num_classes})")
    sizes = [int(h) for h in hidden]
    if any(h < 1 for h in sizes):
        raise ConfigError(f"model.hidden sizes must all be >= 1 (got {list(hidden)})")
    # Seed the default generator only inside a forked RNG scope, so building a model
    # neither depends on nor disturbs the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _build_mlp(num_features=num_features, num_classes=num_classes, hidden=sizes)
    return model


def _strip(name: str) -> str:
    return name.removeprefix(_WRAPPED_PREFIX)


def get_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """Return ``float32`` numpy copies of the model's state, keyed by unwrapped name."""
    arrays: dict[str, np.ndarray] = {}
    for name, tensor in model.state_dict().items():
        arrays[_strip(name)] = tensor.detach().to("cpu", torch.float32).numpy().copy()
    return arrays


def set_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load ``arrays`` (unwrapped or wrapped names) into ``model`` in place.

    Strict: the names must match the model's exactly and every shape must agree.

    Raises:
        ConfigError: missing, unexpected or mis-shaped arrays.
    """
    current = model.state_dict()
    # Map unwrapped name -> the model's own key (which may carry the Opacus prefix).
    own_key = {_strip(key): key for key in current}
    given = {_strip(name): value for name, value in arrays.items()}
    missing = sorted(set(own_key) - set(given))
    unexpected = sorted(set(given) - set(own_key))
    if missing or unexpected:
        raise ConfigError(
            f"arrays do not match the model: missing {missing}, unexpected {unexpected}"
        )
    new_state: dict[str, torch.Tensor] = {}
    for name, value in given.items():
        key = own_key[name]
        target = current[key]
        array = np.asarray(value)
        if tuple(array.shape) != tuple(target.shape):
            raise ConfigError(
                f"array {name!r} has shape {tuple(array.shape)}, "
                f"the model expects {tuple(target.shape)}"
            )
        new_state[key] = torch.as_tensor(array, dtype=target.dtype)
    model.load_state_dict(new_state, strict=True)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 1024,
) -> tuple[float, float]:
    """Return ``(mean cross-entropy loss, accuracy)`` of ``model`` on ``(x, y)``.

    The model is moved to ``device`` and left in eval mode. An empty set scores
    ``(0.0, 0.0)``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
    num_rows = len(x)
    if num_rows == 0:
        return 0.0, 0.0
    model.to(device)
    model.eval()
    features = torch.as_tensor(np.asarray(x, dtype=np.float32))
    labels = torch.as_tensor(np.asarray(y, dtype=np.int64))
    total_loss = 0.0
    correct = 0
    for start in range(0, num_rows, batch_size):
        xb = features[start : start + batch_size].to(device)
        yb = labels[start : start + batch_size].to(device)
        logits = model(xb)
        # Sum per batch and divide once, so the mean is exact whatever the batch size.
        total_loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(dim=1) == yb).sum())
    return total_loss / num_rows, correct / num_rows


def select_device(preference: str = "auto") -> torch.device:
    """Resolve a device preference: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.

    Raises:
        ConfigError: unknown preference, or ``"cuda"`` on a machine without CUDA.
    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "device 'cuda' was requested but no CUDA GPU is available to PyTorch; "
                "use 'cpu' or 'auto'"
            )
        return torch.device("cuda")
    raise ConfigError(f"unknown device {preference!r}; choose one of: auto, cpu, cuda")

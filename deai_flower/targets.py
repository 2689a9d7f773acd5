"""The callables a config names by ``_target_``: imported, and their arguments checked.

A run's model and dataset loader are code the user names (``model._target_``,
``dataset.loader._target_``); :mod:`deai_flower.models` and :mod:`deai_flower.data` build
them, and :mod:`deai_flower.config` checks a whole experiment with them. The helpers they
share live here, below all three.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError, one_line

__all__ = ["accepted_arguments", "check_call", "resolve_target", "split_target"]


def resolve_target(target: object, kind: str, *, exact: bool = False) -> Callable[..., Any]:
    """Import the callable a ``_target_`` names (``"package.module.name"``).

    With ``exact`` the name must say where the callable is defined: ``module.name`` is a
    module-level function or class whose ``__module__`` and ``__qualname__`` are those
    two, so no attribute walk reaches into another module (``pkg.mod.torch.load``).

    Raises:
        ConfigError: ``target`` is not a dotted name, cannot be imported, is not defined
            where its name says (``exact``), or is not callable; the message names the
            ``kind`` (``"model"``, ``"dataset loader"``).
    """
    if not isinstance(target, str) or "." not in target.strip("."):
        raise ConfigError(f"{kind} target must be an importable 'package.module.name' (got {target!r})")
    obj = _import_exact(target, kind) if exact else _import_walking(target, kind)
    if not callable(obj):
        raise ConfigError(f"{kind} {target}: not callable (a {type(obj).__name__})")
    return obj


def _import_exact(target: str, kind: str) -> Any:
    module_name, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except Exception as exc:  # noqa: BLE001 - any import failure means "cannot use this target"
        raise ConfigError(f"{kind} {target}: cannot import it ({one_line(exc)})") from exc
    if not callable(obj):
        return obj  # refused by the caller, as any target that is not callable
    defined_as = f"{getattr(obj, '__module__', None)}.{getattr(obj, '__qualname__', None)}"
    if defined_as != target:
        where = f"it is {defined_as}" if not defined_as.startswith("None.") else f"a {type(obj).__name__}"
        raise ConfigError(f"{kind} {target}: not a function or class defined there ({where}); name it by the "
                          "module that defines it")  # fmt: skip
    return obj


def _import_walking(target: str, kind: str) -> Any:
    hydra_log = logging.getLogger("hydra.utils")  # it logs the failure itself: one line is ours
    level, hydra_log.level = hydra_log.level, logging.CRITICAL
    try:
        obj = get_object(target)
    except Exception as exc:  # noqa: BLE001 - any import failure means "cannot use this target"
        cause = exc.__cause__ or exc
        raise ConfigError(f"{kind} {target}: cannot import it ({one_line(cause)})") from exc
    finally:
        hydra_log.setLevel(level)
    return obj


def _parameters(fn: Callable[..., Any]) -> Mapping[str, inspect.Parameter] | None:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins have no introspectable signature
        return None


def accepted_arguments(fn: Callable[..., Any], names: Sequence[str]) -> list[str]:
    """Those of ``names`` that ``fn`` takes as keywords (all of them if it has ``**kwargs``)."""
    params = _parameters(fn)
    if params is None:
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return list(names)
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [name for name in names if name in params and params[name].kind in keyword]


def check_call(fn: Callable[..., Any], target: str, kwargs: Mapping[str, Any], kind: str) -> None:
    """Check that ``fn`` accepts exactly ``kwargs`` (no unknown, none required missing).

    Hydra's own keys (``_partial_``, ``_convert_``, ...) are left to Hydra.

    Raises:
        ConfigError: one line naming the target and the argument.
    """
    params = _parameters(fn)
    if params is None:
        return
    given = {key: value for key, value in kwargs.items() if not (key.startswith("_") and key.endswith("_"))}
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        names = [name for name, p in params.items() if p.kind in keyword]
        for key in given:
            if key not in names:
                raise ConfigError(f"{kind} {target}: unknown argument {key!r} "
                                  f"(it takes: {', '.join(names) or 'no keyword arguments'})")  # fmt: skip
    for name, p in params.items():
        if p.kind in keyword and p.default is inspect.Parameter.empty and name not in given:
            raise ConfigError(f"{kind} {target}: missing required argument {name!r}")


def split_target(node: Any, key: str) -> tuple[str, dict[str, Any]]:
    """A ``_target_`` config node as ``(target, plain arguments)``, interpolations resolved.

    Raises:
        ConfigError: the node is not a mapping or has no ``_target_`` (``key`` names it).
    """
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping):
        raise ConfigError(f"{key} must be a mapping with a _target_ (got {node!r})")
    args = {str(name): value for name, value in node.items()}
    target = args.pop("_target_", None)
    if not target:
        raise ConfigError(f"{key}._target_ is required (the importable callable to build it with)")
    return str(target), args

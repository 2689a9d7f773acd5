"""The experiment config from Hydra overrides, and what is wrong with them in one line.

One function says why overrides do not compose, for every way in: ``deai-flower``'s
command line, ``flwr run --run-config 'overrides="..."'`` and ``deai consortium
create-run``. A key that does not exist gets the closest one that does ("did you mean").
Imports Hydra, never the ML stack.
"""

from __future__ import annotations

import difflib
import functools
import re
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["compose_overrides", "composition_error"]

_NOT_OVERRIDABLE = re.compile(r"Could not override '([^']+)'")


def _compose(overrides: Sequence[str]) -> Any:
    from hydra import compose, initialize_config_module

    from .config import register_configs

    register_configs()
    with initialize_config_module(config_module="deai_flower.conf", version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].strip()


def _unknown_key(key: str, overrides: Sequence[str]) -> str | None:
    """``key`` (``a.b.c``) named a key the config does not have: one line with the
    closest existing key, or None if that is not what went wrong."""
    from hydra.errors import HydraException
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    others = [o for o in overrides if _override_key(o) != key]
    try:
        cfg = _compose(others)
    except (HydraException, OmegaConfBaseException):
        return None
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    if not isinstance(node, DictConfig) or leaf in node.keys():
        return None
    names = [str(name) for name in node.keys()]
    close = difflib.get_close_matches(leaf, names, n=1)
    hint = f"did you mean {(parent + '.' if parent else '') + close[0]}? " if close else ""
    return f"unknown config key {key!r} ({hint}{parent or 'the top level'} takes: {', '.join(names)})"


def composition_error(overrides: Sequence[str]) -> str | None:
    """Why Hydra cannot compose the config with ``overrides``, in one line; None if it can.

    Only plain ``key=value`` overrides are checked here: with a flag (``-m`` and its
    sweep syntax, ``--cfg``, ``--help``) Hydra itself reports, in its own format.
    """
    if any(arg.startswith("-") for arg in overrides):
        return None
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    try:
        _compose(overrides)
    except MissingConfigException as exc:
        first = str(exc).strip().splitlines()[0]
        return f"{first} (available: {', '.join(exc.options)})" if exc.options else first
    except HydraException as exc:
        first, *rest = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
        unknown = _NOT_OVERRIDABLE.match(first)
        if unknown is not None:
            line = _unknown_key(unknown.group(1), overrides)
            if line is not None:
                return line
        cause = exc.__cause__
        detail = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
        return " ".join([first.rstrip("."), f"({detail})." if detail else ".", *rest]).replace(" .", ".")
    except OmegaConfBaseException as exc:
        return str(exc).strip().splitlines()[0]
    return None


@functools.lru_cache(maxsize=8)
def compose_overrides(overrides: str, *, check_loader: bool = True) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides given as one shell-quoted string,
    and validate it (``check_loader=False``: all but the dataset loader, which a run's
    creator, having no dataset, never imports)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .config import register_configs, validate

    register_configs()
    try:
        with initialize_config_module(config_module="deai_flower.conf", version_base=None):
            cfg = compose(config_name="config", overrides=shlex.split(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        why = composition_error(shlex.split(overrides)) or str(exc).splitlines()[0]
        raise ConfigError(f"overrides {overrides!r}: {why}") from None
    validate(cfg, loader=check_loader)  # type: ignore[arg-type]
    return cfg

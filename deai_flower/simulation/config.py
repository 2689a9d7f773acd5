"""The experiment config a simulation's parties share, from Flower's ``run_config``.

``deai-flower`` hands the resolved Hydra config over as JSON (``experiment``); ``flwr
run .`` hands Hydra overrides (``overrides``, from ``[tool.flwr.app.config]`` or
``--run-config``), which every party composes the same way from the packaged configs.
"""

from __future__ import annotations

import functools
import json
import shlex
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError


def experiment_config(run_config: Mapping[str, Any]) -> DictConfig:
    """The validated experiment config of this simulation."""
    if "experiment" in run_config and str(run_config["experiment"]):
        return _from_json(str(run_config["experiment"]))
    return compose_overrides(str(run_config.get("overrides", "")))


@functools.lru_cache(maxsize=8)
def _from_json(document: str) -> DictConfig:
    try:
        cfg = OmegaConf.create(json.loads(document))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"run_config 'experiment' is not JSON: {exc}") from None
    assert isinstance(cfg, DictConfig)
    return cfg


@functools.lru_cache(maxsize=8)
def compose_overrides(overrides: str) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides given as one shell-quoted string."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from ..config import register_configs, validate

    register_configs()
    try:
        with initialize_config_module(config_module="deai_flower.conf", version_base=None):
            cfg = compose(config_name="config", overrides=shlex.split(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        from ..compose import composition_error  # the CLI's line (with "did you mean"), for every way in

        why = composition_error(shlex.split(overrides)) or str(exc).splitlines()[0]
        raise ConfigError(f"overrides {overrides!r}: {why}") from None
    validate(cfg)  # type: ignore[arg-type]
    return cfg

"""The experiment config a simulation's parties share, from Flower's ``run_config``.

``deai-flower`` hands the resolved Hydra config over as JSON (``experiment``); ``flwr
run .`` hands Hydra overrides (``overrides``, from ``[tool.flwr.app.config]`` or
``--run-config``), which every party composes the same way from the packaged configs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..compose import compose_overrides
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

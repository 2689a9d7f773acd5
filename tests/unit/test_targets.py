"""A config names code: the model and the dataset loader are Hydra targets, the bundled
ones and a user's own alike, and a composed config builds both for the same schema. The
party that wrote the config builds its own model; nothing nested in the model's arguments
is instantiated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from support import compose_with

from deai_flower.config import validate
from deai_flower.data import RawDataset, load_dataset
from deai_flower.errors import ConfigError
from deai_flower.models import get_arrays, instantiate_model, model_spec
from deai_flower.protocol.spec import SpecError, allowed_models


class ClinicNet(nn.Module):
    """A user's model: it needs the number of features and classes, and its own width."""

    def __init__(self, *, num_features: int, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(num_features, width), nn.Tanh(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_clinic(*, rows: int = 60, sites: int = 3) -> RawDataset:
    """A user's loader: tabular rows from a few sites, naturally grouped."""
    rng = np.random.default_rng(1)
    y = np.arange(rows) % 2
    x = rng.normal(size=(rows, 5)).astype(np.float32) + y[:, None]
    return RawDataset(x=x, y=y, input_shape=(5,), groups=np.arange(rows) % sites, group_name="site")


def _name(obj: object) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"  # type: ignore[attr-defined]


def _overrides_for_user_code(**loader_args: int) -> list[str]:
    return [
        f"model._target_={_name(ClinicNet)}", "~model.hidden", "~model.activation", "~model.pool", "+model.width=4",
        f"dataset.loader._target_={_name(load_clinic)}", "dataset.partitioner=natural", "num_clients=3",
        *(f"+dataset.loader.{key}={value}" for key, value in loader_args.items()),
    ]  # fmt: skip


@pytest.mark.parametrize("model", ["mlp", "cnn", "scatter"])
def test_bundled_targets_build_from_the_composed_config(model: str) -> None:
    cfg = compose_with(f"model={model}")
    validate(cfg)
    split = load_dataset(cfg.dataset, seed=0)
    net = instantiate_model(model_spec(cfg.model), split.schema(), seed=0)
    assert net(torch.as_tensor(split.x_test[:3])).shape == (3, 10)


def test_a_users_model_and_loader_named_in_the_config() -> None:
    cfg = compose_with(*_overrides_for_user_code(rows=90))
    validate(cfg)
    split = load_dataset(cfg.dataset, seed=0)
    assert (split.name, split.num_features, split.num_classes, split.num_groups) == ("clinic", 5, 2, 3)
    spec = model_spec(cfg.model)
    assert spec.args == {"width": 4}
    with pytest.raises(SpecError, match=f"model {_name(ClinicNet)} is not one this party builds"):
        instantiate_model(spec, split.schema())  # a party that did not write the config: the bundled models only
    net = instantiate_model(spec, split.schema(), allowed=allowed_models([_name(ClinicNet)]), seed=0)
    assert isinstance(net, ClinicNet)
    assert get_arrays(net)["layers.0.weight"].shape == (4, 5)
    # A few plain SGD steps learn the separable toy task.
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    x, y = torch.as_tensor(split.x_train), torch.as_tensor(split.y_train)
    for _ in range(50):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    accuracy = (net(torch.as_tensor(split.x_test)).argmax(1).numpy() == split.y_test).mean()
    assert accuracy > 0.7


def test_a_users_targets_are_checked_before_anything_is_built() -> None:
    with pytest.raises(ConfigError, match=r"ClinicNet: unknown argument 'depth' \(it takes: num_features, "
                                          r"num_classes, width\)"):  # fmt: skip
        validate(compose_with(*_overrides_for_user_code(), "+model.depth=2"))
    with pytest.raises(ConfigError, match=r"load_clinic: unknown argument 'row' \(it takes: rows, sites\)"):
        validate(compose_with(*_overrides_for_user_code(row=3)))


def test_nested_targets_in_a_configs_model_are_refused(tmp_path: Path) -> None:
    """Hydra would build a nested ``_target_``: a config's model arguments stay plain values,
    so the target file of this one is never opened."""
    target = tmp_path / "appended.pth"
    cfg = compose_with(*_overrides_for_user_code(), "+model.log._target_=builtins.open",
                       f"+model.log.file={target}", "+model.log.mode=a")  # fmt: skip
    with pytest.raises(ConfigError, match=r"^model.args.log._target_: a model's arguments are plain values"):
        validate(cfg)
    assert not target.exists()

"""Tests for deai_flower.models: targets and construction, weight exchange, evaluation, devices."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn

from deai_flower.errors import ConfigError
from deai_flower.models import (
    _BUNDLED,
    MODEL_TARGETS,
    build_model,
    check_engine_devices,
    check_model_args,
    evaluate,
    get_arrays,
    instantiate_model,
    make_dp_compatible,
    model_spec,
    resolve_model,
    select_device,
    set_arrays,
)
from deai_flower.protocol.spec import BUNDLED_MODEL_TARGETS, DataSchema, ModelSpec, SpecError, allowed_models


def _mlp(seed: int = 0, hidden: tuple[int, ...] = (16, 8)) -> nn.Module:
    return build_model("mlp", num_features=6, num_classes=3, hidden=hidden, seed=seed)


def test_mlp_architecture() -> None:
    arrays = get_arrays(_mlp())
    shapes = {name: a.shape for name, a in arrays.items()}
    assert shapes == {
        "0.weight": (16, 6),
        "0.bias": (16,),
        "2.weight": (8, 16),
        "2.bias": (8,),
        "4.weight": (3, 8),
        "4.bias": (3,),
    }
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert set(get_arrays(_mlp(hidden=()))) == {"0.weight", "0.bias"}


def test_init_is_deterministic_by_seed() -> None:
    a, b, c = get_arrays(_mlp(1)), get_arrays(_mlp(1)), get_arrays(_mlp(2))
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert any(not np.array_equal(a[name], c[name]) for name in a)


def test_build_leaves_global_rng_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _mlp(5)
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())


def test_unknown_model_and_bad_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model 'vit'; choose one of: cnn, mlp, resnet, scatter"):
        build_model("vit", num_features=6, num_classes=3, hidden=(4,), seed=0)
    with pytest.raises(ConfigError, match="hidden"):
        build_model("mlp", num_features=6, num_classes=3, hidden=(4, 0), seed=0)
    with pytest.raises(ConfigError, match="channels"):
        build_model("cnn", num_features=64, num_classes=3, hidden=(), channels=(0,), input_shape=(1, 8, 8), seed=0)
    with pytest.raises(ConfigError, match="unknown activation 'gelu'"):
        build_model("mlp", num_features=6, num_classes=3, hidden=(4,), activation="gelu", seed=0)
    with pytest.raises(ConfigError, match="unknown norm"):
        build_model("resnet", num_features=48, num_classes=3, hidden=(), norm="layer", input_shape=(3, 4, 4), seed=0)


def test_image_models_need_an_image_shape() -> None:
    with pytest.raises(ConfigError, match=r"model 'cnn' needs image data.*got input shape \(30,\)"):
        build_model("cnn", num_features=30, num_classes=2, hidden=(), input_shape=(30,), seed=0)
    with pytest.raises(ConfigError, match="does not hold 64 features"):
        build_model("cnn", num_features=64, num_classes=2, hidden=(), input_shape=(1, 28, 28), seed=0)


@pytest.mark.parametrize(
    "name,shape,kwargs",
    [
        ("cnn", (1, 8, 8), {"hidden": (32,), "channels": (16, 32), "activation": "tanh"}),
        ("cnn", (1, 28, 28), {"hidden": (32,), "channels": (16, 32)}),
        ("cnn", (1, 28, 28), {"hidden": (32,), "channels": (16, 32, 32), "pool": 2}),
        ("resnet", (3, 32, 32), {"hidden": (), "channels": (16, 32, 64)}),
        ("scatter", (1, 8, 8), {"hidden": (), "pool": 2}),
        ("scatter", (1, 28, 28), {"hidden": (16,), "pool": 4}),
    ],
)
@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_image_models_take_flat_features_and_are_opacus_ready(name, shape, kwargs) -> None:
    features = int(np.prod(shape))
    model = build_model(name, num_features=features, num_classes=10, input_shape=shape, seed=0, **kwargs)
    assert model(torch.randn(3, features)).shape == (3, 10)
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    again = build_model(name, num_features=features, num_classes=10, input_shape=shape, seed=0, **kwargs)
    for key, value in get_arrays(model).items():
        np.testing.assert_array_equal(value, get_arrays(again)[key])
    # Opacus computes per-sample gradients for every layer (hooks mode).
    wrapped = GradSampleModule(model)
    wrapped(torch.randn(4, features)).sum().backward()
    assert all(p.grad_sample.shape[0] == 4 for p in wrapped.parameters())


def test_cnn_input_pooling_shrinks_the_dense_head() -> None:
    plain = build_model("cnn", num_features=784, num_classes=10, hidden=(), channels=(4, 8), input_shape=(1, 28, 28),
                        seed=0)  # fmt: skip
    pooled = build_model("cnn", num_features=784, num_classes=10, hidden=(), channels=(4, 8), input_shape=(1, 28, 28),
                         pool=2, seed=0)  # fmt: skip
    # 28 -> 14 -> 7 vs 28 -> 14 (average pool) -> 7 -> 3 after the two max-pools.
    assert get_arrays(plain)["8.weight"].shape == (10, 8 * 7 * 7)
    assert get_arrays(pooled)["9.weight"].shape == (10, 8 * 3 * 3)


def test_scatter_features_are_fixed_and_not_exchanged() -> None:
    model = build_model("scatter", num_features=784, num_classes=10, hidden=(), pool=2, input_shape=(1, 28, 28),
                        seed=0)  # fmt: skip
    # Only the linear head is trained and exchanged: 9 channels (1 low-pass + 8
    # orientations at one scale) on a 14x14 grid.
    assert {name: a.shape for name, a in get_arrays(model).items()} == {
        "4.weight": (10, 9 * 14 * 14),
        "4.bias": (10,),
    }
    scatter = model[1]
    assert not list(scatter.parameters())
    # The wavelets have zero mean: a constant image has only low-pass coefficients.
    constant = scatter(torch.full((1, 1, 28, 28), 0.5))
    assert torch.allclose(constant[:, 1:], torch.zeros_like(constant[:, 1:]), atol=1e-4)
    assert scatter(torch.rand(2, 1, 28, 28)).shape == (2, 9, 14, 14)
    with pytest.raises(ConfigError, match="pool = 2, 4 or 8"):
        build_model("scatter", num_features=784, num_classes=10, hidden=(), pool=3, input_shape=(1, 28, 28), seed=0)
    with pytest.raises(ConfigError, match="divisible"):
        build_model("scatter", num_features=36, num_classes=10, hidden=(), pool=4, input_shape=(1, 6, 6), seed=0)


def test_batchnorm_is_replaced_by_groupnorm_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="deai_flower.models"):
        model = build_model("resnet", num_features=3 * 8 * 8, num_classes=4, hidden=(), channels=(8, 16),
                            norm="batch", input_shape=(3, 8, 8), seed=0)  # fmt: skip
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert ModuleValidator.validate(model, strict=False) == []
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "replacing 6 layer(s)" in message and "4.norm1 (BatchNorm2d -> GroupNorm)" in message
    # A user's own module goes through the same fix; a valid one is returned as is.
    plain = nn.Sequential(nn.Linear(4, 2))
    assert make_dp_compatible(plain) is plain
    fixed = make_dp_compatible(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
    assert isinstance(fixed[1], nn.GroupNorm)


def test_get_set_arrays_roundtrip() -> None:
    source, target = _mlp(1), _mlp(2)
    arrays = get_arrays(source)
    set_arrays(target, arrays)
    loaded = get_arrays(target)
    for name in arrays:
        np.testing.assert_array_equal(loaded[name], arrays[name])
    x = torch.randn(4, 6)
    torch.testing.assert_close(target(x), source(x))


def test_get_arrays_returns_copies() -> None:
    model = _mlp()
    arrays = get_arrays(model)
    arrays["0.bias"][:] = 42.0
    assert not np.any(get_arrays(model)["0.bias"] == 42.0)


def test_set_arrays_is_strict() -> None:
    model = _mlp()
    arrays = get_arrays(model)
    missing = dict(arrays)
    del missing["0.bias"]
    with pytest.raises(ConfigError, match="missing"):
        set_arrays(model, missing)
    with pytest.raises(ConfigError, match="unexpected"):
        set_arrays(model, {**arrays, "extra": np.zeros(1, np.float32)})
    with pytest.raises(ConfigError, match="shape"):
        set_arrays(model, {**arrays, "0.bias": np.zeros(17, np.float32)})


def test_opacus_prefix_is_stripped_and_restored() -> None:
    plain = _mlp(3)
    wrapped = GradSampleModule(_mlp(3))
    assert all(key.startswith("_module.") for key in wrapped.state_dict())
    arrays = get_arrays(wrapped)
    assert set(arrays) == set(get_arrays(plain))
    for name, value in get_arrays(plain).items():
        np.testing.assert_array_equal(arrays[name], value)
    # Unwrapped names load into a wrapped model, and vice versa.
    set_arrays(wrapped, get_arrays(_mlp(4)))
    set_arrays(plain, get_arrays(wrapped))
    np.testing.assert_array_equal(get_arrays(plain)["0.weight"], get_arrays(_mlp(4))["0.weight"])


def test_evaluate_matches_direct_computation() -> None:
    model = _mlp(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=37).astype(np.int64)
    # A batch size that does not divide the data checks the mean is over rows.
    loss, acc = evaluate(model, x, y, device=torch.device("cpu"), batch_size=10)
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        expected_loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(y)))
        expected_acc = float((logits.argmax(1).numpy() == y).mean())
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert acc == pytest.approx(expected_acc)


def test_select_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    assert select_device() == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU is available"):
        select_device("cuda")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        select_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("auto") == torch.device("cuda")
    assert select_device("auto", index=3) == torch.device("cuda")


def test_select_device_spreads_clients_over_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [select_device("auto", index=i) for i in range(3)] == [
        torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cuda", 0)]  # fmt: skip
    assert select_device("cuda", index=1) == torch.device("cuda", 1)
    assert select_device("cuda:1", index=0) == torch.device("cuda", 1)
    assert select_device("cpu", index=1) == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA devices 0..1"):
        select_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        select_device("cuda:0")


def test_engine_gpu_share_must_match_the_device(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_engine_devices("inprocess", "cuda", 0.0)  # only Ray hands out GPU shares
    check_engine_devices("ray", "auto", 0.0)
    with pytest.raises(ConfigError, match="num_gpus_per_client=0.5 but no CUDA GPU"):
        check_engine_devices("ray", "auto", 0.5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_engine_devices("ray", "cuda", 0.2)
    with pytest.raises(ConfigError, match="set engine.num_gpus_per_client"):
        check_engine_devices("ray", "cuda", 0.0)
    with caplog.at_level(logging.WARNING, logger="deai_flower.models"):
        check_engine_devices("ray", "auto", 0.0)
    assert "train on the CPU" in caplog.text


def test_evaluate_on_a_selected_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CPU path of the device logic that a GPU machine takes with CUDA.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = _mlp(0)
    x = np.zeros((4, 6), np.float32)
    loss, acc = evaluate(model, x, np.zeros(4, np.int64), device=select_device("auto", index=0))
    assert np.isfinite(loss) and 0.0 <= acc <= 1.0


# --- models as targets ------------------------------------------------------------------


class TinyNet(nn.Module):
    """A user's own model, named by ``_target_``: it takes the schema's two numbers."""

    def __init__(self, num_features: int, num_classes: int, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(num_features, width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ShapedNet(nn.Module):
    """Takes whatever the data offers through **kwargs; has a BatchNorm to be fixed."""

    def __init__(self, **data: object) -> None:
        super().__init__()
        self.data = data
        features = int(data["num_features"])  # type: ignore[call-overload]
        self.body = nn.Sequential(nn.Linear(features, 3), nn.BatchNorm1d(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FrozenNet(TinyNet):
    """Left in eval mode, which Opacus refuses to train."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__(num_features, num_classes)
        self.eval()


def not_a_module(num_classes: int) -> str:
    return "model"


def failing_model(num_classes: int) -> nn.Module:
    raise ValueError("no weights\nfor this size")


def _target(obj: object) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"  # type: ignore[attr-defined]


def _own(obj: object) -> tuple[str, ...]:
    """What the party that wrote a config naming ``obj`` builds: the bundled models and it."""
    return allowed_models([_target(obj)])


DIGITS = DataSchema(num_features=64, num_classes=10, input_shape=(1, 8, 8))


def test_the_bundled_targets_are_the_bundled_factories() -> None:
    assert sorted(MODEL_TARGETS.values()) == sorted(BUNDLED_MODEL_TARGETS)
    for name, target in MODEL_TARGETS.items():
        assert resolve_model(ModelSpec(target)) is _BUNDLED[name]


def test_bundled_targets_match_the_named_models() -> None:
    spec = ModelSpec(MODEL_TARGETS["cnn"], {"hidden": [8], "channels": [4, 8], "activation": "tanh"})
    by_target = get_arrays(instantiate_model(spec, DIGITS, seed=7))
    by_name = get_arrays(build_model("cnn", num_features=64, num_classes=10, input_shape=(1, 8, 8), hidden=(8,),
                                     channels=(4, 8), activation="tanh", seed=7))  # fmt: skip
    assert by_target.keys() == by_name.keys()
    for name, value in by_target.items():
        np.testing.assert_array_equal(value, by_name[name])


def test_instantiate_model_is_seeded_and_leaves_global_rng_untouched() -> None:
    spec = ModelSpec(MODEL_TARGETS["mlp"], {"hidden": [8]})
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b = instantiate_model(spec, DIGITS, seed=1), instantiate_model(spec, DIGITS, seed=1)
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())
    c = instantiate_model(spec, DIGITS, seed=2)
    assert all(np.array_equal(get_arrays(a)[k], get_arrays(b)[k]) for k in get_arrays(a))
    assert any(not np.array_equal(get_arrays(a)[k], get_arrays(c)[k]) for k in get_arrays(a))


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_a_users_model_class_runs_through_instantiate_model() -> None:
    model = instantiate_model(ModelSpec(_target(TinyNet), {"width": 5}), DIGITS, allowed=_own(TinyNet), seed=0)
    assert isinstance(model, TinyNet)
    assert model(torch.randn(2, 64)).shape == (2, 10)
    assert get_arrays(model)["body.0.weight"].shape == (5, 64)
    # Opacus computes its per-sample gradients.
    wrapped = GradSampleModule(model)
    wrapped(torch.randn(4, 64)).sum().backward()
    assert all(p.grad_sample.shape[0] == 4 for p in wrapped.parameters())


def test_kwargs_targets_get_the_whole_schema_and_batchnorm_is_fixed() -> None:
    model = instantiate_model(ModelSpec(_target(ShapedNet), {}), DIGITS, allowed=_own(ShapedNet), seed=0)
    assert model.data == {"num_features": 64, "num_classes": 10, "input_shape": (1, 8, 8)}
    assert isinstance(model.body[1], nn.GroupNorm)


def test_model_spec_from_a_config_node() -> None:
    from omegaconf import OmegaConf

    node = OmegaConf.create({"_target_": "deai_flower.models.mlp", "hidden": [64], "pool": "${width}", "width": 1})
    node = OmegaConf.create({"model": node, "width": 2}).model
    assert model_spec(node) == ModelSpec("deai_flower.models.mlp", {"hidden": [64], "pool": 2, "width": 1})
    with pytest.raises(ConfigError, match=r"model._target_ is required"):
        model_spec({"hidden": [64]})
    with pytest.raises(ConfigError, match=r"^model.args.layers\[0\]._partial_: a model's arguments are plain"):
        model_spec({"_target_": "deai_flower.models.mlp", "layers": [{"_partial_": True}]})


@pytest.mark.parametrize(
    "target,args,message",
    [
        ("deai_flower.models.mlp", {"hiden": [8]},
         r"model deai_flower.models.mlp: unknown argument 'hiden' \(it takes: "
         r"num_features, num_classes, input_shape, hidden, activation, pool\)"),
        ("deai_flower.models.mlp", {"num_classes": 3}, "'num_classes' comes from the data"),
        ("deai_flower.models.mlp", {"activation": "gelu"}, "model deai_flower.models.mlp: unknown activation 'gelu'"),
        ("deai_flower.models.cnn", {"channels": [0]}, "model deai_flower.models.cnn: model.channels must all be >= 1"),
        ("no_such_package.Net", {}, r"model no_such_package.Net: cannot import it \(.*no_such_package"),
        ("deai_flower.models.NoSuchNet", {}, "model deai_flower.models.NoSuchNet: cannot import it"),
        ("deai_flower.models.MODELS", {}, "not callable"),
        # named through another module's attribute, not where it is defined
        ("deai_flower.models.nn.Module", {}, "model deai_flower.models.nn.Module: cannot import it"),
        ("deai_flower.models.ModuleValidator", {},
         r"not a function or class defined there \(it is opacus.validators.module_validator.ModuleValidator\)"),
        ("torch.nn.Identity", {}, r"\(it is torch.nn.modules.linear.Identity\); name it by the module that defines it"),
        (_target(TinyNet), {"depth": 2}, "unknown argument 'depth'"),
        (_target(FrozenNet), {"width": 2}, "unknown argument 'width' \\(it takes: num_features, num_classes\\)"),
    ],
)
def test_bad_targets_and_arguments_are_one_line_config_errors(target: str, args: dict, message: str) -> None:
    allowed = allowed_models([target])  # the config's own: allowed, and still checked
    with pytest.raises(ConfigError, match=message) as info:
        check_model_args(ModelSpec(target, args), allowed=allowed)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=message):
        instantiate_model(ModelSpec(target, args), DIGITS, allowed=allowed, seed=0)


@pytest.mark.parametrize(
    "target,args,message",
    [
        ("MyNet", {}, r"^model target must be an importable 'package.module.name' \(got 'MyNet'\)$"),
        ("deai_flower.models.", {}, "model target must be an importable 'package.module.name'"),
        # a prefix look-alike, and an attribute walk into torch: names nobody allowed
        ("deai_flower.models.mlp_v2", {}, "model deai_flower.models.mlp_v2 is not one this party builds"),
        ("deai_flower.models.nn.Module", {}, "model deai_flower.models.nn.Module is not one this party builds"),
        ("deai_flower.models.mlp", {"hidden": [{"_target_": "builtins.print"}]},
         r"^model.args.hidden\[0\]._target_: a model's arguments are plain values"),
        ("deai_flower.models.mlp", {"activation": {"x": {"_args_": ["tanh"]}}}, r"^model.args.activation.x._args_:"),
        ("deai_flower.models.mlp", {"_recursive_": False}, r"^model.args._recursive_:"),
        ("deai_flower.models.mlp", {"_convert_": "all"}, r"^model.args._convert_:"),
    ],
)
def test_targets_beyond_the_allowlist_and_hydra_keys_are_refused_before_any_import(
    target: str, args: dict, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_import(name: str, *rest: object) -> None:
        raise AssertionError(f"imported {name} for a refused spec")

    monkeypatch.setattr("importlib.import_module", no_import)
    with pytest.raises(SpecError, match=message) as info:
        instantiate_model(ModelSpec(target, args), DIGITS)
    assert "\n" not in str(info.value)
    with pytest.raises(SpecError, match=message):
        check_model_args(ModelSpec(target, args))


def test_an_allowed_name_is_exact_not_a_prefix() -> None:
    allowed = allowed_models([_target(TinyNet)])
    assert allowed == (*BUNDLED_MODEL_TARGETS, _target(TinyNet))
    with pytest.raises(SpecError, match="is not one this party builds"):
        resolve_model(ModelSpec(_target(TinyNet) + "2"), allowed=allowed)
    for listed in ("my_lab.", "my_lab.nets.*", "my_lab", "os.system; rm"):
        with pytest.raises(ConfigError, match=f"model target '{re.escape(listed)}' is not an exact"):
            allowed_models(listed)
    assert allowed_models(" my_lab.nets.Net ,, other.mod.f") == (*BUNDLED_MODEL_TARGETS, "my_lab.nets.Net",
                                                               "other.mod.f")  # fmt: skip


@pytest.mark.parametrize(
    "obj,message",
    [
        (not_a_module, "returned a str, not a torch nn.Module"),
        (failing_model, "ValueError: no weights for this size"),
        (FrozenNet, "Opacus cannot train privately: Model needs to be in training mode"),
    ],
)
def test_models_that_fail_to_build_name_their_target(obj: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        instantiate_model(ModelSpec(_target(obj), {}), DIGITS, allowed=_own(obj))
    assert str(info.value).startswith(f"model {_target(obj)}")
    assert "\n" not in str(info.value)


def test_image_targets_check_the_schema() -> None:
    tabular = DataSchema(num_features=30, num_classes=2, input_shape=(30,))
    with pytest.raises(ConfigError, match=r"model deai_flower.models.cnn: model 'cnn' needs image data"):
        instantiate_model(ModelSpec(MODEL_TARGETS["cnn"], {}), tabular)
    # The MLP takes tabular data, and images when it does not pool them.
    assert instantiate_model(ModelSpec(MODEL_TARGETS["mlp"], {"hidden": []}), tabular) is not None

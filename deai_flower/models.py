"""Models as Hydra targets, weight exchange as numpy arrays, evaluation and device choice.

A run's model is a Hydra ``_target_`` with its arguments (:class:`ModelSpec`): a
module-level callable returning a ``torch.nn.Module`` that Opacus can train, named by the
module that defines it, e.g. ``model._target_=my_package.MyNet``. :func:`instantiate_model`
builds it for a data schema, passing ``num_features``, ``num_classes`` and ``input_shape``
as keywords where the callable takes them. The bundled models are targets of the same
kind: :func:`mlp`, :func:`cnn`, :func:`scatter` and :func:`resnet` (``conf/model/*.yaml``).

A spec's target is code the building party runs, so every party builds only what it
allows (:func:`deai_flower.protocol.spec.check_model`, before anything is imported): the
bundled models, and exact names its own configuration adds (a silo's ``model-targets``,
``deai verify --allow-model``; the experiment's own target for the party that wrote the
config). The arguments are plain values passed as they are; nothing in them is
instantiated.

Weights travel between the server, the clients and the content store as a mapping of
parameter name to ``float32`` numpy array. Names are those of the plain PyTorch module:
when Opacus wraps a module (``GradSampleModule``) its state dict gains a ``_module.``
prefix, which :func:`get_arrays` removes and :func:`set_arrays` restores, so wrapped and
unwrapped models exchange the same names.

Every model takes flat ``float32`` features ``[N, num_features]`` (the datasets' common
format; ``input_shape`` tells image models how to view them) and returns
``num_classes`` logits. Models must be Opacus-ready: no batch statistics (BatchNorm
mixes examples, which per-sample clipping cannot bound), so the bundled convolutional
nets normalise with GroupNorm. A model built with BatchNorm layers is converted by
:func:`make_dp_compatible`, which logs the layers it replaced; the conversion happens
when the model is built, never during training, since it changes the parameter names
and shapes every party must agree on.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from opacus.validators import ModuleValidator
from torch import nn

from deai_flower.errors import ConfigError, one_line
from deai_flower.logs import drop_opacus_root_handler
from deai_flower.protocol.spec import BUNDLED_MODEL_TARGETS, DataSchema, ModelSpec, SpecError, check_model
from deai_flower.targets import accepted_arguments, check_call, resolve_target, split_target

# Opacus computes per-sample gradients with full backward hooks on every layer; the first
# layer's input (the data) never requires a gradient, so PyTorch warns on every backward
# pass that the hook fires on outputs only. That is what Opacus needs, and nothing a user
# can act on: exactly this warning is silenced, wherever a model of this module trains.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect to "
                        "module outputs since no inputs require gradients", category=UserWarning)  # fmt: skip
drop_opacus_root_handler()  # imported above, Opacus added a root handler: Flower's lines would print twice

__all__ = [
    "ACTIVATIONS",
    "MODELS",
    "MODEL_TARGETS",
    "build_model",
    "check_engine_devices",
    "check_model_args",
    "cnn",
    "evaluate",
    "get_arrays",
    "instantiate_model",
    "make_dp_compatible",
    "mlp",
    "model_spec",
    "resnet",
    "resolve_model",
    "scatter",
    "select_device",
    "set_arrays",
]

logger = logging.getLogger(__name__)

# Prefix Opacus' GradSampleModule (all grad-sample modes) puts before every name.
_WRAPPED_PREFIX = "_module."

MODELS: tuple[str, ...] = ("cnn", "mlp", "resnet", "scatter")

# Bounded activations (tanh) keep activations, and so per-sample gradient norms, small,
# which often suits DP-SGD's clipping better than ReLU (Papernot et al., 2021).
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}

NORMS: tuple[str, ...] = ("batch", "group")

# Channels per GroupNorm group in the ResNet (a common choice; fewer for thin layers).
_GROUP_CHANNELS = 8


def _check_schema(num_features: int, num_classes: int) -> None:
    if num_features < 1:
        raise ConfigError(f"num_features must be >= 1 (got {num_features})")
    if num_classes < 2:
        raise ConfigError(f"num_classes must be >= 2 (got {num_classes})")


def _sizes(values: Sequence[int], key: str) -> list[int]:
    sizes = [int(v) for v in values]
    if any(v < 1 for v in sizes):
        suffix = " sizes" if key == "hidden" else ""
        raise ConfigError(f"model.{key}{suffix} must all be >= 1 (got {list(values)})")
    return sizes


def _activation(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _check_pool(pool: int) -> int:
    if int(pool) < 1:
        raise ConfigError(f"model.pool must be >= 1 (got {pool})")
    return int(pool)


def _image_shape(
    input_shape: Sequence[int] | None, num_features: int, model: str, pool: int = 1
) -> tuple[int, int, int]:
    if input_shape is None or len(input_shape) != 3:
        raise ConfigError(
            f"model {model!r} needs image data (a dataset with a [channels, height, width] shape); "
            f"got input shape {None if input_shape is None else tuple(input_shape)}"
        )
    shape = (int(input_shape[0]), int(input_shape[1]), int(input_shape[2]))
    if shape[0] * shape[1] * shape[2] != num_features or min(shape) < 1:
        raise ConfigError(f"input shape {shape} does not hold {num_features} features")
    if min(shape[1:]) < pool:
        raise ConfigError(f"model.pool={pool} is larger than the {shape[1]}x{shape[2]} images")
    return shape


def mlp(
    *,
    num_features: int,
    num_classes: int,
    input_shape: Sequence[int] | None = None,
    hidden: Sequence[int] = (64,),
    activation: str = "relu",
    pool: int = 1,
) -> nn.Module:
    """A multi-layer perceptron on the flat features.

    ``Linear + activation`` per size in ``hidden``, then a ``Linear`` to the logits
    (empty ``hidden``: multinomial logistic regression). With ``pool > 1`` image inputs
    (``input_shape`` ``[channels, height, width]``) are first average-pooled
    ``pool x pool``: a fixed, parameter-free transform, so fewer input weights and less
    DP noise in total for little lost detail.

    Raises:
        ConfigError: non-positive sizes, an unknown activation, or pooling without a
            matching image shape.
    """
    _check_schema(num_features, num_classes)
    sizes = _sizes(hidden, "hidden")
    act = _activation(activation)
    pool = _check_pool(pool)
    layers: list[nn.Module] = []
    width = num_features
    if pool > 1:
        shape = _image_shape(input_shape, num_features, "mlp", pool)
        channels, height, width_px = shape
        layers += [nn.Unflatten(1, shape), nn.AvgPool2d(pool), nn.Flatten()]
        width = channels * (height // pool) * (width_px // pool)
    for size in sizes:
        layers += [nn.Linear(width, size), act()]
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(
    *,
    num_features: int,
    num_classes: int,
    input_shape: Sequence[int],
    hidden: Sequence[int] = (32,),
    channels: Sequence[int] = (16, 32),
    activation: str = "tanh",
    pool: int = 1,
) -> nn.Module:
    """A small CNN for images given as flat features of shape ``input_shape``.

    Optionally a ``pool x pool`` average-pooling of the input (parameter-free; 28x28
    MNIST -> 14x14 quarters the per-sample-gradient work of every convolution), then per
    size in ``channels`` a 3x3 convolution (same padding), the activation and a 2x2
    max-pool (pooling stops once a side would drop below 2: 8x8 digits go 8->4->2); then
    the ``hidden`` dense layers and the logits.

    Raises:
        ConfigError: non-positive or no ``channels``, non-positive ``hidden``, an
            unknown activation, or no matching image shape.
    """
    _check_schema(num_features, num_classes)
    sizes = _sizes(hidden, "hidden")
    widths = _sizes(channels, "channels")
    act = _activation(activation)
    pool = _check_pool(pool)
    shape = _image_shape(input_shape, num_features, "cnn", pool)
    if not widths:
        raise ConfigError("model 'cnn' needs at least one entry in model.channels")
    in_channels, height, width = shape
    layers: list[nn.Module] = [nn.Unflatten(1, shape)]
    if pool > 1:
        layers.append(nn.AvgPool2d(pool))
        height, width = height // pool, width // pool
    for out_channels in widths:
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), act()]
        if height >= 4 and width >= 4:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        in_channels = out_channels
    layers.append(nn.Flatten())
    features = in_channels * height * width
    for size in sizes:
        layers += [nn.Linear(features, size), act()]
        features = size
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


# Scattering: orientations per scale (as in Kymatio's and Tramer & Boneh's ScatterNet).
_SCATTER_ORIENTATIONS = 8


def _gabor(size: int, sigma: float, theta: float, xi: float, slant: float) -> torch.Tensor:
    # A complex 2-D Gabor filter on a size x size periodic grid centred at 0 (Kymatio's
    # construction, without its periodisation sum: the filters here are small).
    coords = torch.arange(size, dtype=torch.float64)
    coords = torch.where(coords >= (size + 1) // 2, coords - size, coords)
    x, y = torch.meshgrid(coords, coords, indexing="ij")
    cos, sin = float(np.cos(theta)), float(np.sin(theta))
    rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    curvature = rotation @ torch.diag(torch.tensor([1.0, slant**2], dtype=torch.float64)) @ rotation.T
    curvature = curvature / (2 * sigma**2)
    envelope = torch.exp(-(curvature[0, 0] * x**2 + (curvature[0, 1] + curvature[1, 0]) * x * y
                           + curvature[1, 1] * y**2))  # fmt: skip
    wave = torch.exp(1j * (x * xi * cos + y * xi * sin))
    return envelope * wave / (2 * np.pi * sigma**2 / slant)


def _morlet(size: int, sigma: float, theta: float, xi: float, slant: float) -> torch.Tensor:
    wave = _gabor(size, sigma, theta, xi, slant)
    envelope = _gabor(size, sigma, theta, 0.0, slant)
    return wave - (wave.sum() / envelope.sum()) * envelope  # zero mean


class Scattering2D(nn.Module):
    """A fixed (untrained) 2-D scattering transform of order 2 (Bruna & Mallat).

    Morlet wavelets at ``J`` scales and 8 orientations, complex modulus, a Gaussian
    low-pass and ``2**J`` subsampling, computed with FFTs on a reflect-padded image, as
    in Kymatio. ``[N, C, H, W]`` becomes ``[N, C * K, H / 2**J, W / 2**J]`` with
    ``K = 1 + 8J + 64 J(J-1)/2`` (9 for J = 1, 81 for J = 2). It has no parameters and
    its filters are non-persistent buffers: nothing of it is trained or exchanged.
    """

    def __init__(self, input_shape: tuple[int, int, int], scales: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.scales = scales
        self.step = 2**scales
        if height % self.step or width % self.step:
            raise ConfigError(f"scattering with pool={self.step} needs image sides divisible by it "
                              f"(got {height}x{width})")  # fmt: skip
        self.pad = self.step
        size = max(height, width) + 2 * self.pad
        self.size = size
        orientations = _SCATTER_ORIENTATIONS
        slant = 4.0 / orientations
        psi = []
        for j in range(scales):
            for angle in range(orientations):
                theta = (int(orientations - orientations / 2 - 1) - angle) * np.pi / orientations
                morlet = _morlet(size, 0.8 * 2**j, theta, 3.0 / 4.0 * np.pi / 2**j, slant)
                psi.append(torch.fft.fft2(morlet).real)
        phi = torch.fft.fft2(_gabor(size, 0.8 * self.step, 0.0, 0.0, 1.0)).real
        self.register_buffer("psi", torch.stack(psi).to(torch.float32), persistent=False)
        self.register_buffer("phi", phi.to(torch.float32), persistent=False)
        self.out_channels = channels * (1 + scales * orientations + orientations**2 * scales * (scales - 1) // 2)
        self.out_height, self.out_width = height // self.step, width // self.step

    def _low(self, spectrum: torch.Tensor) -> torch.Tensor:
        smooth = torch.fft.ifft2(spectrum * self.phi).real
        return smooth[..., :: self.step, :: self.step][..., 1:-1, 1:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        padded = nn.functional.pad(x, (self.pad, self.size - width - self.pad,
                                       self.pad, self.size - height - self.pad), mode="reflect")  # fmt: skip
        spectrum = torch.fft.fft2(padded)  # [N, C, S, S]
        orientations = _SCATTER_ORIENTATIONS
        outputs = [self._low(spectrum).unsqueeze(2)]
        first = torch.fft.ifft2(spectrum.unsqueeze(2) * self.psi).abs()  # [N, C, J*L, S, S]
        first_spectrum = torch.fft.fft2(first)
        outputs.append(self._low(first_spectrum))
        for j1 in range(self.scales):
            for j2 in range(j1 + 1, self.scales):
                u1 = first_spectrum[:, :, j1 * orientations : (j1 + 1) * orientations].unsqueeze(3)
                psi2 = self.psi[j2 * orientations : (j2 + 1) * orientations]
                second = torch.fft.ifft2(u1 * psi2).abs().flatten(2, 3)  # [N, C, L*L, S, S]
                outputs.append(self._low(torch.fft.fft2(second)))
        return torch.cat(outputs, dim=2).flatten(1, 2)


def scatter(
    *,
    num_features: int,
    num_classes: int,
    input_shape: Sequence[int],
    pool: int = 2,
    hidden: Sequence[int] = (),
    activation: str = "relu",
) -> nn.Module:
    """Fixed scattering features and a linear model (Tramer & Boneh, 2021).

    A fixed, untrained order-2 scattering transform with ``J = log2(pool)`` scales
    (:class:`Scattering2D`; ``pool`` is 2, 4 or 8), per-example GroupNorm without
    weights (no privacy cost), then the ``hidden`` dense layers and the logits; only
    those are trained and exchanged ("Differentially private learning needs better
    features": such fixed features suit DP-SGD on little data far better than a CNN
    trained end to end).

    Raises:
        ConfigError: ``pool`` not a power of two in 2..8, image sides it does not
            divide, non-positive ``hidden``, an unknown activation, or no image shape.
    """
    _check_schema(num_features, num_classes)
    sizes = _sizes(hidden, "hidden")
    act = _activation(activation)
    pool = _check_pool(pool)
    shape = _image_shape(input_shape, num_features, "scatter", pool)
    scales = int(round(np.log2(pool)))
    if pool < 2 or 2**scales != pool:
        raise ConfigError(f"model 'scatter' needs model.pool = 2, 4 or 8 (2**scales; got {pool})")
    transform = Scattering2D(shape, scales)
    channels = transform.out_channels
    per_group = 3 if channels % 3 == 0 else 1
    layers: list[nn.Module] = [
        nn.Unflatten(1, shape),
        transform,
        nn.GroupNorm(channels // per_group, channels, affine=False),
        nn.Flatten(),
    ]
    features = channels * transform.out_height * transform.out_width
    for size in sizes:
        layers += [nn.Linear(features, size), act()]
        features = size
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(max(1, channels // _GROUP_CHANNELS), channels)


class _ResidualBlock(nn.Module):
    """Two 3x3 convolutions with normalisation and an identity (or 1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, norm: str,
                 activation: type[nn.Module]) -> None:  # fmt: skip
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm_layer(norm, out_channels)
        self.act1 = activation()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm_layer(norm, out_channels)
        self.act2 = activation()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                _norm_layer(norm, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


def resnet(
    *,
    num_features: int,
    num_classes: int,
    input_shape: Sequence[int],
    channels: Sequence[int] = (16, 32, 64),
    norm: str = "group",
    activation: str = "relu",
) -> nn.Module:
    """A small ResNet for 32x32 colour images (CIFAR-10).

    A 3x3 stem, one residual block per size in ``channels`` (stride 2 from the second
    on), ``norm`` normalisation (``"batch"`` is converted to GroupNorm by
    :func:`make_dp_compatible` when the model is instantiated), global average pooling,
    logits.

    Raises:
        ConfigError: non-positive or no ``channels``, an unknown norm or activation, or
            no image shape.
    """
    _check_schema(num_features, num_classes)
    widths = _sizes(channels, "channels")
    act = _activation(activation)
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; choose one of: {', '.join(NORMS)}")
    shape = _image_shape(input_shape, num_features, "resnet")
    if not widths:
        raise ConfigError("model 'resnet' needs at least one entry in model.channels")
    width = widths[0]
    layers: list[nn.Module] = [
        nn.Unflatten(1, shape),
        nn.Conv2d(shape[0], width, 3, padding=1, bias=False),
        _norm_layer(norm, width),
        act(),
    ]
    for i, out_channels in enumerate(widths):
        layers.append(_ResidualBlock(width, out_channels, stride=1 if i == 0 else 2, norm=norm,
                                     activation=act))  # fmt: skip
        width = out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """Return ``model`` in a form Opacus can train, logging every layer replaced.

    Uses Opacus' ``ModuleValidator``: BatchNorm becomes GroupNorm, and so on. A model
    that is already valid is returned unchanged (the same object).

    Raises:
        ConfigError: the model has layers Opacus can neither train nor fix.
    """
    if not ModuleValidator.validate(model, strict=False):
        return model
    before = dict(model.named_modules())
    fixed = ModuleValidator.fix(model)
    replaced = [
        f"{name} ({type(before[name]).__name__} -> {type(module).__name__})"
        for name, module in fixed.named_modules()
        if name in before and type(before[name]) is not type(module)
    ]
    if replaced:
        logger.warning("made the model Opacus-compatible by replacing %d layer(s): %s",
                       len(replaced), ", ".join(replaced))  # fmt: skip
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise ConfigError(
            "the model has layers Opacus cannot train privately: "
            + "; ".join(str(error) for error in errors)
        )
    return fixed


# The bundled models as Hydra targets, by the short names the old API and reports use.
MODEL_TARGETS: dict[str, str] = {name: f"{__name__}.{name}" for name in MODELS}

# What the data schema passes to a model target that accepts it.
_SCHEMA_ARGS: tuple[str, ...] = ("num_features", "num_classes", "input_shape")


def model_spec(node: Mapping[str, Any]) -> ModelSpec:
    """The :class:`ModelSpec` of a ``model`` config node (``_target_`` plus its arguments).

    Interpolations are resolved; the arguments become plain JSON values (lists, dicts).

    Raises:
        ConfigError: the node has no ``_target_``, or its arguments hold Hydra's keys
            (``_target_``, ``_partial_``, ...: a run's model arguments are plain values).
    """
    target, args = split_target(node, "model")
    spec = ModelSpec(target=target, args=args)
    try:
        check_model(spec, allowed=(target,))  # the config's own target: only its form is checked
    except SpecError as exc:
        raise ConfigError(str(exc)) from exc
    return spec


def resolve_model(model: ModelSpec, *, allowed: Collection[str] = BUNDLED_MODEL_TARGETS) -> Callable[..., Any]:
    """The callable ``model`` names, if ``allowed`` names it exactly; imported only then,
    and only as a module-level function or class of the module its name gives.

    Raises:
        SpecError: the target is not allowed, or Hydra's keys are in its arguments.
        ConfigError: the target cannot be imported, is not defined where its name says,
            or is not callable.
    """
    check_model(model, allowed=allowed)
    return resolve_target(model.target, "model", exact=True)


def check_model_args(
    model: ModelSpec, schema: DataSchema | None = None, *, allowed: Collection[str] = BUNDLED_MODEL_TARGETS
) -> None:
    """Check a model spec without building it: it is allowed, imports, takes the arguments.

    With ``schema`` None the schema's keys count as given where the target takes them
    (a config is checked before its dataset is loaded). For the bundled targets the
    argument values are checked too (sizes, activation, norm, pool).

    Raises:
        SpecError: the target is not one of ``allowed`` (:func:`resolve_model`).
        ConfigError: one line naming the target and the problem.
    """
    _checked_callable(model, schema, allowed)


def _checked_callable(model: ModelSpec, schema: DataSchema | None, allowed: Collection[str]) -> Callable[..., Any]:
    fn = resolve_model(model, allowed=allowed)
    clash = [key for key in _SCHEMA_ARGS if key in model.args]
    if clash:
        raise ConfigError(f"model {model.target}: {clash[0]!r} comes from the data, not from the model's "
                          "arguments; remove it")  # fmt: skip
    schema_values = _schema_values(schema)
    kwargs = {**model.args, **{key: schema_values[key] for key in accepted_arguments(fn, _SCHEMA_ARGS)}}
    check_call(fn, model.target, kwargs, "model")
    if fn in _BUNDLED.values():
        try:
            _check_bundled_values(model.args)
        except ConfigError as exc:
            raise ConfigError(f"model {model.target}: {exc}") from exc
    return fn


def _schema_values(schema: DataSchema | None) -> dict[str, Any]:
    if schema is None:
        return {key: None for key in _SCHEMA_ARGS}
    return {"num_features": int(schema.num_features), "num_classes": int(schema.num_classes),
            "input_shape": tuple(int(d) for d in schema.input_shape)}  # fmt: skip


def _check_bundled_values(args: Mapping[str, Any]) -> None:
    try:
        for key in ("hidden", "channels"):
            if key in args:
                _sizes(args[key], key)
        if "activation" in args:
            _activation(args["activation"])
        if "norm" in args and args["norm"] not in NORMS:
            raise ConfigError(f"unknown norm {args['norm']!r}; choose one of: {', '.join(NORMS)}")
        if "pool" in args:
            _check_pool(args["pool"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(one_line(exc)) from exc


def instantiate_model(
    model: ModelSpec,
    schema: DataSchema,
    *,
    allowed: Collection[str] = BUNDLED_MODEL_TARGETS,
    seed: int | None = None,
) -> nn.Module:
    """Build the model a spec names, for data of ``schema``, ready for Opacus.

    Only a target ``allowed`` names exactly is imported (:func:`resolve_model`). It is
    called with the spec's arguments as they are (plain values) plus ``num_features``,
    ``num_classes`` and ``input_shape`` (a tuple) as keywords where its signature takes
    them (or has ``**kwargs``). The result must be an ``nn.Module``;
    :func:`make_dp_compatible` then converts layers Opacus cannot train (BatchNorm).
    With ``seed`` the model is built in a forked, seeded torch RNG, so equal specs give
    equal weights and the caller's random state is left as it was.

    Raises:
        SpecError: the target is not one of ``allowed``, or Hydra's keys are in its
            arguments (nothing is imported then).
        ConfigError: one line naming the target: it cannot be imported, an argument is
            unknown or missing, building it failed, it is not an ``nn.Module``, or
            Opacus cannot train it.
    """
    target = model.target
    fn = _checked_callable(model, schema, allowed)
    schema_values = _schema_values(schema)
    data_args = {key: schema_values[key] for key in accepted_arguments(fn, _SCHEMA_ARGS)}
    scope = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with scope:
        if seed is not None:
            torch.manual_seed(seed)
        try:
            module = fn(**model.args, **data_args)
        except Exception as exc:  # noqa: BLE001 - a user's model may raise anything while built
            raise ConfigError(f"model {target}: {one_line(exc)}") from exc
        if not isinstance(module, nn.Module):
            raise ConfigError(f"model {target} returned a {type(module).__name__}, not a torch nn.Module")
        try:
            # Inside the seeded scope: replacement layers are initialised reproducibly too.
            return make_dp_compatible(module)
        except ConfigError as exc:
            raise ConfigError(f"model {target}: {one_line(exc)}") from exc


_BUNDLED: dict[str, Callable[..., nn.Module]] = {"cnn": cnn, "mlp": mlp, "resnet": resnet, "scatter": scatter}


def build_model(
    name: str,
    *,
    num_features: int,
    num_classes: int,
    hidden: Sequence[int],
    seed: int,
    input_shape: Sequence[int] | None = None,
    channels: Sequence[int] = (16, 32),
    activation: str = "relu",
    norm: str = "group",
    pool: int = 1,
) -> nn.Module:
    """Build a bundled model by name, seeded and Opacus-ready (the pre-target API).

    ``name`` is one of :data:`MODELS`; each model takes the arguments of its target
    (:func:`mlp`, :func:`cnn`, :func:`scatter`, :func:`resnet`), the others are ignored.
    Equal arguments give equal weights. The model is ``float32`` on the CPU.

    Raises:
        ConfigError: unknown ``name``, or the target's own checks.
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    own: dict[str, dict[str, Any]] = {
        "mlp": {"hidden": hidden, "activation": activation, "pool": pool},
        "cnn": {"hidden": hidden, "channels": channels, "activation": activation, "pool": pool},
        "scatter": {"hidden": hidden, "activation": activation, "pool": pool},
        "resnet": {"channels": channels, "norm": norm, "activation": activation},
    }
    # Seed the default generator only inside a forked RNG scope, so building a model
    # neither depends on nor disturbs the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _BUNDLED[name](num_features=num_features, num_classes=num_classes, input_shape=input_shape,
                               **own[name])  # fmt: skip
        return make_dp_compatible(model)


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


def select_device(preference: str = "auto", *, index: int | None = None) -> torch.device:
    """Resolve a device preference: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``
    or ``"cuda:N"``.

    ``index`` (a client's partition id) spreads clients over the visible GPUs
    round-robin when ``"auto"``/``"cuda"`` finds several; under Flower's simulation
    engine Ray makes only the GPU(s) granted to the actor visible, so every client
    there lands on its own share (``engine.num_gpus_per_client``).

    Raises:
        ConfigError: unknown preference, or CUDA requested on a machine without CUDA
            (or an ordinal it does not have).
    """
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if preference in ("auto", "cuda") or preference.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {preference!r} was requested but no CUDA GPU is available to PyTorch; "
                "use 'cpu' or 'auto'"
            )
        count = max(1, torch.cuda.device_count())
        if preference.startswith("cuda:"):
            ordinal = preference.removeprefix("cuda:")
            if not ordinal.isdigit() or int(ordinal) >= count:
                raise ConfigError(f"device {preference!r}: this machine has CUDA devices 0..{count - 1}")
            return torch.device("cuda", int(ordinal))
        if index is None or count == 1:
            return torch.device("cuda")
        return torch.device("cuda", int(index) % count)
    raise ConfigError(f"unknown device {preference!r}; choose one of: auto, cpu, cuda, cuda:N")


def check_engine_devices(engine: str, device: str, num_gpus_per_client: float) -> None:
    """Check that the engine's GPU share per client fits the device preference.

    Under Flower's simulation engine (``engine="ray"``) an actor sees only the GPUs Ray
    grants it (``engine.num_gpus_per_client``, a fraction shares one GPU among clients).

    Raises:
        ConfigError: CUDA requested with no GPU share per client, or a GPU share asked
            for on a machine without CUDA (Ray would wait for it forever).
    """
    if engine != "ray":
        return
    cuda = torch.cuda.is_available()
    wants_cuda = device == "cuda" or device.startswith("cuda:")
    if num_gpus_per_client > 0 and not cuda:
        raise ConfigError(
            f"engine.num_gpus_per_client={num_gpus_per_client:g} but no CUDA GPU is available; "
            "set engine.num_gpus_per_client=0"
        )
    if num_gpus_per_client == 0 and wants_cuda:
        raise ConfigError(
            f"device={device} with engine=ray needs a GPU share per client actor: set "
            "engine.num_gpus_per_client (e.g. 0.2 lets five clients share one GPU)"
        )
    if num_gpus_per_client == 0 and device == "auto" and cuda:
        logger.warning(
            "a GPU is present but engine.num_gpus_per_client=0, so Ray's client actors see no GPU "
            "and train on the CPU; set engine.num_gpus_per_client to use it"
        )

"""``init_model``: every layer of a model initialized from the activation that follows it.

The activation is found from the module order inside ``nn.Sequential`` containers, otherwise by
tracing the model with ``torch.fx`` and following each layer's output; :class:`InitReport` says
what was found and drawn, layer by layer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gradwise import checks
from gradwise.init.scaling import (
    DISTRIBUTIONS,
    check_generator,
    draw_,
    fan,
    fans,
    gain,
    orthogonal_,
)

SCHEMES = ("auto", "he", "xavier", "lecun", "orthogonal", "normal", "small", "torch")

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _classes(*names: str) -> tuple[type, ...]:
    return tuple(c for c in (getattr(nn, n, None) for n in names) if isinstance(c, type))


#: modules that may sit between a layer and its activation without changing which one it is
_TRANSPARENT = _classes(
    "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LayerNorm", "GroupNorm",
    "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm", "LocalResponseNorm",
    "Flatten", "Unflatten", "Identity", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d",
    "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d",
)  # fmt: skip
_OUTPUT = _classes("Softmax", "LogSoftmax", "Softmin")

_TRANSPARENT_FUNCTIONS = {
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, torch.flatten,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
}  # fmt: skip
_TRANSPARENT_METHODS = {
    "view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze", "permute", "transpose",
    "view_as", "reshape_as",
}  # fmt: skip
_ACTIVATION_FUNCTIONS: dict[Callable, tuple[str, str | None, float | None]] = {
    # function: (activation, name of its parameter, its default)
    F.relu: ("relu", None, None),
    F.relu_: ("relu", None, None),
    torch.relu: ("relu", None, None),
    torch.relu_: ("relu", None, None),
    F.relu6: ("relu", None, None),
    F.leaky_relu: ("leaky_relu", "negative_slope", 0.01),
    F.leaky_relu_: ("leaky_relu", "negative_slope", 0.01),
    F.gelu: ("gelu", None, None),
    F.silu: ("silu", None, None),
    F.elu: ("elu", "alpha", 1.0),
    F.tanh: ("tanh", None, None),
    torch.tanh: ("tanh", None, None),
    F.sigmoid: ("sigmoid", None, None),
    torch.sigmoid: ("sigmoid", None, None),
    F.selu: ("selu", None, None),
    torch.selu: ("selu", None, None),
    F.softmax: ("none", None, None),
    F.log_softmax: ("none", None, None),
    torch.softmax: ("none", None, None),
    torch.log_softmax: ("none", None, None),
}
_ACTIVATION_METHODS = {
    "relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh", "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid", "softmax": "none", "log_softmax": "none",
}  # fmt: skip

#: what follows a layer: ``(activation, param)``; activation "none" = nothing (linear output)
_Act = tuple[str, float | None]
_NONE: _Act = ("none", None)
_UNKNOWN: _Act = ("unknown", None)


def _module_activation(module: nn.Module) -> _Act | None:
    """The activation a module applies, ``_NONE`` for softmax-like outputs, ``None`` if not one."""
    if isinstance(module, nn.ReLU | nn.ReLU6):
        return ("relu", None)
    if isinstance(module, nn.LeakyReLU):
        return ("leaky_relu", float(module.negative_slope))
    if isinstance(module, nn.PReLU):
        return ("leaky_relu", float(module.weight.detach().mean()))
    if isinstance(module, nn.RReLU):
        return ("leaky_relu", (module.lower + module.upper) / 2)
    if isinstance(module, nn.GELU):
        return ("gelu", None)
    if isinstance(module, nn.SiLU):
        return ("silu", None)
    if isinstance(module, nn.ELU):
        return ("elu", float(module.alpha))
    if isinstance(module, nn.Tanh):
        return ("tanh", None)
    if isinstance(module, nn.Sigmoid):
        return ("sigmoid", None)
    if isinstance(module, nn.SELU):
        return ("selu", None)
    if isinstance(module, _OUTPUT):
        return _NONE
    return None


def _is_plain_sequential(model: nn.Module) -> bool:
    """True when the model is a tree of ``nn.Sequential`` containers around leaf modules."""
    return isinstance(model, nn.Sequential) and all(
        isinstance(m, nn.Sequential) or next(m.children(), None) is None for m in model.modules()
    )


def _flatten_sequential(
    seq: nn.Sequential, prefix: str, nested: set[str]
) -> list[tuple[str, nn.Module]]:
    """The modules of ``seq`` in call order, nested Sequentials opened (names added to nested)."""
    out = []
    for name, child in seq.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            nested.add(full)
            out.extend(_flatten_sequential(child, full, nested))
        else:
            out.append((full, child))
    return out


def _from_sequentials(model: nn.Module, end_is_output: bool) -> dict[str, _Act]:
    """Activations found from module order inside every outermost ``nn.Sequential``."""
    found: dict[str, _Act] = {}
    inner = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential) or name in inner:
            continue
        order = _flatten_sequential(module, name, inner)
        end = _NONE if end_is_output and module is model else _UNKNOWN
        for i, (layer_name, layer) in enumerate(order):
            if not isinstance(layer, _LAYERS):
                continue
            act = end
            for _, nxt in order[i + 1 :]:
                if isinstance(nxt, _TRANSPARENT):
                    continue
                act = _NONE if isinstance(nxt, _LAYERS) else (_module_activation(nxt) or _UNKNOWN)
                break
            found[layer_name] = act
    return found


def _from_graph(model: nn.Module) -> dict[str, _Act]:
    """Activations found by tracing ``model`` with ``torch.fx`` (raises if it cannot be traced)."""
    gm = torch.fx.symbolic_trace(model)
    modules = dict(model.named_modules())

    def follow(node: torch.fx.Node, seen: frozenset) -> _Act:
        if node in seen:
            return _UNKNOWN
        results = {classify(user, node, seen | {node}) for user in node.users}
        return results.pop() if len(results) == 1 else _NONE if not results else _UNKNOWN

    def classify(user: torch.fx.Node, src: torch.fx.Node, seen: frozenset) -> _Act:
        first = user.args[0] if user.args else None
        if user.op == "output":
            return _NONE
        if user.op == "call_module":
            m = modules.get(user.target)
            if isinstance(m, _LAYERS):
                return _NONE
            if isinstance(m, _TRANSPARENT) and first is src:
                return follow(user, seen)
            return (m is not None and _module_activation(m)) or _UNKNOWN
        if user.op == "call_function":
            if user.target in _TRANSPARENT_FUNCTIONS and first is src:
                return follow(user, seen)
            if user.target in _ACTIVATION_FUNCTIONS and first is src:
                act, pname, default = _ACTIVATION_FUNCTIONS[user.target]
                if pname is None:
                    return (act, None)
                value = user.kwargs.get(pname, user.args[1] if len(user.args) > 1 else default)
                return (act, float(value)) if isinstance(value, int | float) else _UNKNOWN
            return _UNKNOWN
        if user.op == "call_method" and first is src:
            if user.target in _TRANSPARENT_METHODS:
                return follow(user, seen)
            if user.target in _ACTIVATION_METHODS:
                return (_ACTIVATION_METHODS[user.target], None)
        return _UNKNOWN

    per_layer: dict[str, set] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), _LAYERS):
            per_layer.setdefault(node.target, set()).add(follow(node, frozenset()))
    return {name: acts.pop() if len(acts) == 1 else _UNKNOWN for name, acts in per_layer.items()}


def _find_activations(model: nn.Module) -> tuple[dict[str, _Act], str | None]:
    """Per layer name, the activation that follows it; and a note when tracing failed."""
    if isinstance(model, _LAYERS):
        return {"": _NONE}, None
    if _is_plain_sequential(model):
        return _from_sequentials(model, end_is_output=True), None
    try:
        return _from_graph(model), None
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: fall back to module order
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return _from_sequentials(model, end_is_output=False), reason


@dataclass(frozen=True)
class LayerInit:
    """How :func:`init_model` initialized one layer."""

    name: str
    shape: tuple[int, ...]
    activation: str  # "relu", "leaky_relu(0.01)", "tanh", "none", "unknown", ...
    scheme: str  # "he_normal", "xavier_normal", "lecun_normal", "orthogonal", ...
    gain: float
    std: float  # the standard deviation (root-mean-square for orthogonal) of the weights' law
    fallback: bool = False  # True when the activation was unknown and the fallback was used


@dataclass
class InitReport:
    """What :func:`init_model` did, layer by layer; ``str(report)`` is a table."""

    scheme: str
    layers: list[LayerInit] = field(default_factory=list)
    note: str | None = None  # why activations were not found by tracing, if so

    def __iter__(self) -> Iterator[LayerInit]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, key: int | str) -> LayerInit:
        if isinstance(key, str):
            for layer in self.layers:
                if layer.name == key:
                    return layer
            raise KeyError(key)
        return self.layers[key]

    @property
    def fallbacks(self) -> list[str]:
        """Names of the layers whose activation could not be found."""
        return [layer.name for layer in self.layers if layer.fallback]

    def __str__(self) -> str:
        head = ("layer", "shape", "activation", "init", "gain", "std")
        rows = [
            (
                layer.name or "<model>",
                "x".join(map(str, layer.shape)),
                layer.activation,
                layer.scheme + (" (fallback)" if layer.fallback else ""),
                f"{layer.gain:.4g}",
                f"{layer.std:.4g}",
            )
            for layer in self.layers
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if self.note:
            lines.append(f"note: {self.note}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"InitReport(scheme={self.scheme!r}, layers={len(self.layers)})"


def _activation_label(act: _Act) -> str:
    name, param = act
    return name if param is None else f"{name}({param:g})"


def _plan(scheme: str, act: _Act, distribution: str) -> tuple[str, str, float, float]:
    """``(scheme label, mode, scale, gain)`` for one layer; scale = variance · n."""
    kind = {"normal": "_normal", "uniform": "_uniform", "truncated_normal": "_truncated_normal"}[
        distribution
    ]
    name, param = act
    if scheme == "auto":
        if name in ("unknown", "relu", "leaky_relu", "gelu", "silu", "elu"):
            g = gain("relu" if name == "unknown" else name, param)
            return "he" + kind, "fan_in", g * g, g
        if name in ("tanh", "sigmoid"):
            g = gain(name)
            return "xavier" + kind, "fan_avg", g * g, g
        if name == "selu":
            return "lecun" + kind, "fan_in", 1.0, 1.0
        return "xavier" + kind, "fan_avg", 1.0, 1.0  # no activation: the output layer
    if scheme == "he":
        return "he" + kind, "fan_in", 2.0, math.sqrt(2.0)
    if scheme == "xavier":
        return "xavier" + kind, "fan_avg", 1.0, 1.0
    return "lecun" + kind, "fan_in", 1.0, 1.0  # scheme == "lecun"


def init_model(
    model: nn.Module,
    scheme: str = "auto",
    *,
    distribution: str = "normal",
    generator: torch.Generator | None = None,
) -> InitReport:
    """Initialize every ``Linear``/``Conv1d``/``Conv2d``/``Conv3d`` layer of ``model`` in place.

    ``scheme="auto"`` picks each layer's initializer from the activation that follows it:

    ==========================================  ===============================================
    activation after the layer                  initializer (std)
    ==========================================  ===============================================
    ReLU, ReLU6, LeakyReLU, PReLU, RReLU,       He, fan_in: gain(act) / sqrt(fan_in)
    GELU, SiLU, ELU                             (leaky/PReLU use their slope)
    Tanh, Sigmoid                               Xavier: gain(act) · sqrt(2 / (fan_in + fan_out))
    SELU                                        LeCun: 1 / sqrt(fan_in)
    none (output layer, Softmax, another layer) Xavier, gain 1
    not found (see below)                       **fallback: He with the ReLU gain**, and a warning
    ==========================================  ===============================================

    Dropout, normalization, pooling, ``Flatten`` and ``Identity`` between a layer and its
    activation are skipped over. The activation is found from the module order when ``model`` is an
    ``nn.Sequential`` (nested ones too), otherwise by tracing ``model`` with
    :func:`torch.fx.symbolic_trace` and following each layer's output to the first activation
    module, function (``F.relu``, ``torch.tanh``, ...) or method (``x.relu()``). When the output
    meets anything else first (a sum, a concatenation, a custom module, several different
    activations) or the model cannot be traced (then only layers inside ``nn.Sequential``
    containers are resolved, by module order), the layer gets the fallback — He, the usual choice
    for hidden layers of today's networks — and a ``UserWarning`` names the layers.

    The fixed schemes use one rule for every layer, whatever follows it:
    ``"he"`` N(0, 2 / fan_in), ``"xavier"`` N(0, 2 / (fan_in + fan_out)), ``"lecun"``
    N(0, 1 / fan_in), ``"orthogonal"`` (gain 1), ``"normal"`` N(0, 1) and ``"small"`` N(0, 0.01²)
    (the naive ones, for comparison), and ``"torch"``: PyTorch's default, U(±1 / sqrt(fan_in)) for
    weights and biases (left as they are without a ``generator``, redrawn from that law with one).

    Biases are set to zero, except with ``"torch"``.

    Args:
        model: any ``nn.Module``.
        scheme: one of ``"auto"``, ``"he"``, ``"xavier"``, ``"lecun"``, ``"orthogonal"``,
            ``"normal"``, ``"small"``, ``"torch"``.
        distribution: for the He/Xavier/LeCun draws: ``"normal"``, ``"uniform"`` or
            ``"truncated_normal"`` (same std each).
        generator: a ``torch.Generator`` for reproducible draws.

    Returns:
        an :class:`InitReport`: per layer its name, shape, activation found, scheme and std.

    Differences: PyTorch initializes every layer with U(±1/sqrt(fan_in)) (``"torch"``, the LeCun
    variance / 3) whatever follows it; Keras uses Glorot uniform everywhere.

    Examples:
        >>> net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
        >>> [layer.scheme for layer in init_model(net)]
        ['he_normal', 'xavier_normal']
    """
    owner = "init_model"
    if not isinstance(model, nn.Module):
        checks.refuse(owner, "model", "a torch.nn.Module", type(model).__name__, TypeError)
    checks.choice(owner, "scheme", scheme, SCHEMES)
    checks.choice(owner, "distribution", distribution, DISTRIBUTIONS)
    check_generator(owner, generator)

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _LAYERS)]
    for name, layer in layers:
        if isinstance(layer.weight, nn.parameter.UninitializedParameter):
            raise ValueError(
                f"{owner}: layer {name!r} has uninitialized (lazy) parameters; "
                "run one forward pass before init_model"
            )
    found, note = _find_activations(model)
    report = InitReport(scheme=scheme, note=note)
    with torch.no_grad():
        for name, layer in layers:
            act = found.get(name, _UNKNOWN)
            w = layer.weight
            fan_in, fan_out = fans(w) if w.dim() >= 2 else (0, 0)
            fallback = scheme == "auto" and act == _UNKNOWN
            if scheme in ("auto", "he", "xavier", "lecun"):
                label, mode, scale, g = _plan(scheme, act, distribution)
                std = math.sqrt(scale / fan(w, mode)) if w.numel() else 0.0
                if w.numel():
                    draw_(w, std, distribution, generator)
            elif scheme == "orthogonal":
                label, g = "orthogonal", 1.0
                rows, cols = w.shape[0], w.numel() // max(w.shape[0], 1)
                std = math.sqrt(min(rows, cols) / (rows * cols)) if w.numel() else 0.0
                orthogonal_(w, 1.0, generator)
            elif scheme in ("normal", "small"):
                std = 1.0 if scheme == "normal" else 0.01
                label, g = f"normal(0, {std:g})", 1.0
                w.normal_(0.0, std, generator=generator)
            else:  # "torch": kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in))
                bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
                label, g, std = "torch_default", 1.0 / math.sqrt(3.0), bound / math.sqrt(3.0)
                if generator is not None and w.numel():
                    w.uniform_(-bound, bound, generator=generator)
                    if layer.bias is not None:
                        layer.bias.uniform_(-bound, bound, generator=generator)
            if scheme != "torch" and layer.bias is not None:
                layer.bias.zero_()
            report.layers.append(
                LayerInit(name, tuple(w.shape), _activation_label(act), label, g, std, fallback)
            )
    if scheme == "auto" and report.fallbacks:
        why = f" (tracing failed: {note})" if note else ""
        warnings.warn(
            f"init_model: could not tell which activation follows layer(s) "
            f"{', '.join(repr(n) for n in report.fallbacks)}{why}; "
            "used the fallback He normal with the ReLU gain, std = sqrt(2 / fan_in)",
            UserWarning,
            stacklevel=2,
        )
    return report

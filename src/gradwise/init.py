"""Weight initialization: one variance-scaling primitive, its named presets, and ``init_model``.

Every initializer draws the entries of a weight tensor ``W`` independently with mean 0 and

.. code-block:: text

    Var(W) = scale / n,     n = fan_in | fan_out | (fan_in + fan_out) / 2     (mode)

    fan_in  = W.shape[1] · receptive_field,   fan_out = W.shape[0] · receptive_field,
    receptive_field = prod(W.shape[2:])       (1 for a Linear weight, k for a Conv1d kernel k)

from one of three distributions of that variance (``std = sqrt(scale / n)``)::

    normal            N(0, std²)
    uniform           U(−bound, bound),  bound = sqrt(3) · std
    truncated_normal  N(0, σ²) cut at ±2σ,  σ = std / 0.87962566...  (so the std is exactly std)

The presets are this primitive with a fixed ``scale`` and ``mode``:

=================  ==========  =========  ==============================================
preset             scale       mode       result
=================  ==========  =========  ==============================================
``xavier_*_``      gain²       fan_avg    std = gain · sqrt(2 / (fan_in + fan_out)),
                                          bound = gain · sqrt(6 / (fan_in + fan_out))
``he_*_``          gain²       fan_in     std = gain / sqrt(fan_in); relu: sqrt(2 / fan_in)
``lecun_*_``       1           fan_in     std = 1 / sqrt(fan_in)
=================  ==========  =========  ==============================================

plus ``orthogonal_`` (a random orthogonal matrix times ``gain``) and ``zeros_``. ``gain`` holds the
standard gains of the activations (the values of :func:`torch.nn.init.calculate_gain`).

:func:`init_model` initializes every ``Linear``/``Conv1d``/``Conv2d``/``Conv3d`` layer of a model
from the activation that follows it and returns an :class:`InitReport` that prints as a table.
``python -m gradwise.init`` prints how the activations' variance travels through a deep MLP with
these initializations and with naive ones.

Differences
-----------
* PyTorch calls He "kaiming" (``kaiming_normal_``) and Xavier "xavier"; Keras calls Xavier "glorot"
  (``glorot_uniform``) and He "he". The numbers are the same.
* Keras' ``*_normal`` presets draw from a truncated normal; gradwise's (like PyTorch's) draw
  from the normal itself. Pass ``distribution="truncated_normal"`` to :func:`variance_scaling_`
  for Keras'.
* Keras gives a 1-D tensor the fans ``(n, n)``; gradwise, like PyTorch, refuses tensors with fewer
  than two dimensions (a bias has no fan; use :func:`zeros_`).
* PyTorch's ``kaiming_*_`` default is ``nonlinearity="leaky_relu", a=0`` (the ReLU gain); gradwise's
  ``he_*_`` default is ``nonlinearity="relu"`` (same numbers), and ``a=None`` means the activation's
  own default slope (0.01 for leaky_relu, as :func:`gain`).
* :func:`gain` also knows ``gelu``, ``silu`` and ``elu`` (PyTorch's ``calculate_gain`` refuses
  them): for those, ``gain = 1 / sqrt(E[f(z)²])`` with ``z ~ N(0, 1)``, the rule that gives ReLU its
  sqrt(2): a unit-variance pre-activation keeps unit second moment through the layer.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradwise import checks

__all__ = [
    "InitReport",
    "LayerInit",
    "fans",
    "gain",
    "he_normal_",
    "he_uniform_",
    "init_model",
    "lecun_normal_",
    "lecun_uniform_",
    "orthogonal_",
    "signal_propagation",
    "variance_scaling_",
    "variance_table",
    "xavier_normal_",
    "xavier_uniform_",
    "zeros_",
]

MODES = ("fan_in", "fan_out", "fan_avg")
DISTRIBUTIONS = ("normal", "uniform", "truncated_normal")
NONLINEARITIES = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
    "gelu",
    "silu",
    "elu",
)
SCHEMES = ("auto", "he", "xavier", "lecun", "orthogonal", "normal", "small", "torch")

#: std of the standard normal truncated to [−2, 2]:  sqrt(1 − 4·φ(2) / (Φ(2) − Φ(−2)))
_TRUNC_STD = math.sqrt(
    1.0 - 4.0 * math.exp(-2.0) / math.sqrt(2.0 * math.pi) / math.erf(2.0 / math.sqrt(2.0))
)


# --------------------------------------------------------------------------------- helpers
def _tensor(owner: str, tensor: object, min_dim: int = 0) -> Tensor:
    if not isinstance(tensor, Tensor):
        checks.refuse(owner, "tensor", "a torch.Tensor", type(tensor).__name__, TypeError)
    if tensor.dim() < min_dim:
        checks.refuse(
            owner,
            "tensor",
            f"a tensor with at least {min_dim} dimensions (a bias has no fans: use zeros_)",
            f"<tensor of shape {tuple(tensor.shape)}>",
        )
    return tensor


def _generator(owner: str, generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        checks.refuse(owner, "generator", "a torch.Generator or None", generator, TypeError)
    return generator


def fans(tensor: Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight tensor of at least two dimensions.

    fan_in = shape[1] · prod(shape[2:]),  fan_out = shape[0] · prod(shape[2:])

    A ``Linear`` weight ``(out, in)`` has fans ``(in, out)``; a ``Conv2d`` weight
    ``(out, in / groups, kh, kw)`` has ``(in / groups · kh · kw, out · kh · kw)``, as in PyTorch.

    >>> fans(torch.empty(16, 3, 5, 5))
    (75, 400)
    """
    _tensor("fans", tensor, min_dim=2)
    receptive = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _fan(tensor: Tensor, mode: str) -> float:
    fan_in, fan_out = fans(tensor)
    return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]


def _draw_(tensor: Tensor, std: float, distribution: str, generator) -> Tensor:
    """Fill ``tensor`` in place with mean-0 draws of standard deviation ``std``."""
    with torch.no_grad():
        if distribution == "normal":
            return tensor.normal_(0.0, std, generator=generator)
        if distribution == "uniform":
            bound = math.sqrt(3.0) * std
            return tensor.uniform_(-bound, bound, generator=generator)
        # truncated normal by inverting the CDF on [Φ(−2), Φ(2)]
        lo = 0.5 * (1.0 + math.erf(-2.0 / math.sqrt(2.0)))
        tensor.uniform_(lo, 1.0 - lo, generator=generator)
        tensor.mul_(2.0).sub_(1.0).erfinv_().mul_(math.sqrt(2.0) * std / _TRUNC_STD)
        return tensor.clamp_(-2.0 * std / _TRUNC_STD, 2.0 * std / _TRUNC_STD)


# ------------------------------------------------------------------------------------ gain
def gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain of an activation: the factor on the std that keeps variance steady.

    ==============================  ===========================================
    nonlinearity                    gain
    ==============================  ===========================================
    linear, conv*, sigmoid          1
    tanh                            5 / 3
    relu                            sqrt(2)
    leaky_relu (param = slope)      sqrt(2 / (1 + slope²)),  slope 0.01 if None
    selu                            3 / 4
    gelu, silu, elu (param = α)     1 / sqrt(E[f(z)²]),  z ~ N(0, 1)
                                    (≈ 1.5335, 1.6765, 1.2452 for α = 1)
    ==============================  ===========================================

    Differences: the values are those of :func:`torch.nn.init.calculate_gain`, which refuses
    gelu, silu and elu; gradwise computes those from the rule that gives ReLU its sqrt(2).

    >>> round(gain("leaky_relu", 0.2), 6)
    1.38675
    """
    checks.choice("gain", "nonlinearity", nonlinearity, NONLINEARITIES)
    if param is not None:
        param = checks.number("gain", "param", param)
    if nonlinearity in ("linear", "sigmoid") or nonlinearity.startswith("conv"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1.0 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4.0
    if nonlinearity == "elu":
        return _unit_gaussian_gain("elu", 1.0 if param is None else param)
    return _unit_gaussian_gain(nonlinearity, 0.0)


@functools.lru_cache(maxsize=32)
def _unit_gaussian_gain(nonlinearity: str, param: float) -> float:
    """1 / sqrt(E[f(z)²]) for z ~ N(0, 1), by the trapezoid rule on [−12, 12] in float64."""
    z = torch.linspace(-12.0, 12.0, 48001, dtype=torch.float64)
    f = {"gelu": F.gelu, "silu": F.silu, "elu": lambda x: F.elu(x, alpha=param)}[nonlinearity](z)
    density = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    second_moment = torch.trapezoid(f * f * density, z).item()
    return 1.0 / math.sqrt(second_moment)


# ------------------------------------------------------------------------ the primitive
def variance_scaling_(
    tensor: Tensor,
    scale: float = 1.0,
    mode: str = "fan_in",
    distribution: str = "normal",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fill ``tensor`` in place with mean-0 draws of variance ``scale / n``; return it.

    .. code-block:: text

        n   = fan_in | fan_out | (fan_in + fan_out) / 2          (mode)
        std = sqrt(scale / n)
        normal: N(0, std²)   uniform: U(±sqrt(3)·std)   truncated_normal: N(0, (std/0.8796)²) on ±2σ

    Args:
        tensor: a weight of at least two dimensions (see :func:`fans`).
        scale: the variance times ``n``, > 0 (``gain²`` for the presets).
        mode: ``"fan_in"`` keeps the forward signal's variance, ``"fan_out"`` the backward one,
            ``"fan_avg"`` compromises (Xavier).
        distribution: ``"normal"``, ``"uniform"`` or ``"truncated_normal"``.
        generator: a ``torch.Generator`` for reproducible draws (on the tensor's device).

    Differences: this is Keras' ``VarianceScaling`` (same ``scale``, ``mode`` names with ``fan_avg``
    and ``truncated_normal``); PyTorch has no such primitive.

    >>> w = variance_scaling_(torch.empty(256, 128), 2.0, "fan_in")   # He normal
    """
    owner = "variance_scaling_"
    _tensor(owner, tensor, min_dim=2)
    scale = checks.positive(owner, "scale", scale)
    checks.choice(owner, "mode", mode, MODES)
    checks.choice(owner, "distribution", distribution, DISTRIBUTIONS)
    _generator(owner, generator)
    if tensor.numel() == 0:
        return tensor
    return _draw_(tensor, math.sqrt(scale / _fan(tensor, mode)), distribution, generator)


# ------------------------------------------------------------------------------ presets
def xavier_uniform_(
    tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """Xavier/Glorot uniform, in place: ``U(−b, b)``, ``b = gain · sqrt(6 / (fan_in + fan_out))``.

    Glorot & Bengio (2010). ``variance_scaling_(tensor, gain², "fan_avg", "uniform")``.
    Differences: PyTorch ``xavier_uniform_``, Keras ``GlorotUniform`` (no gain there).
    """
    g = checks.positive("xavier_uniform_", "gain", gain)
    _tensor("xavier_uniform_", tensor, min_dim=2)
    _generator("xavier_uniform_", generator)
    return variance_scaling_(tensor, g * g, "fan_avg", "uniform", generator)


def xavier_normal_(
    tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """Xavier/Glorot normal, in place: ``N(0, std²)``, ``std = gain·sqrt(2 / (fan_in + fan_out))``.

    ``variance_scaling_(tensor, gain², "fan_avg", "normal")``.
    Differences: PyTorch ``xavier_normal_``; Keras ``GlorotNormal`` truncates at 2σ and has no gain.
    """
    g = checks.positive("xavier_normal_", "gain", gain)
    _tensor("xavier_normal_", tensor, min_dim=2)
    _generator("xavier_normal_", generator)
    return variance_scaling_(tensor, g * g, "fan_avg", "normal", generator)


def _he(owner, tensor, mode, nonlinearity, a, distribution, generator) -> Tensor:
    _tensor(owner, tensor, min_dim=2)
    _generator(owner, generator)
    checks.choice(owner, "mode", mode, ("fan_in", "fan_out"))
    checks.choice(owner, "nonlinearity", nonlinearity, NONLINEARITIES)
    if a is not None:
        a = checks.number(owner, "a", a)
    g = gain(nonlinearity, a)
    return variance_scaling_(tensor, g * g, mode, distribution, generator)


def he_normal_(
    tensor: Tensor,
    mode: str = "fan_in",
    nonlinearity: str = "relu",
    a: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """He/Kaiming normal, in place: ``N(0, std²)``, ``std = gain(nonlinearity, a) / sqrt(fan)``.

    For ReLU, ``std = sqrt(2 / fan_in)`` (He et al., 2015). ``a`` is leaky_relu's negative slope
    (``None``: 0.01). ``mode="fan_out"`` preserves the backward pass' variance instead.
    Differences: PyTorch ``kaiming_normal_`` (default ``leaky_relu`` with ``a=0``, the same numbers
    as ``relu``); Keras ``HeNormal`` truncates at 2σ.
    """
    return _he("he_normal_", tensor, mode, nonlinearity, a, "normal", generator)


def he_uniform_(
    tensor: Tensor,
    mode: str = "fan_in",
    nonlinearity: str = "relu",
    a: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """He/Kaiming uniform, in place: ``U(−b, b)``, ``b = gain(nonlinearity, a) · sqrt(3 / fan)``.

    For ReLU, ``b = sqrt(6 / fan_in)``. Differences: PyTorch ``kaiming_uniform_``, Keras
    ``HeUniform``.
    """
    return _he("he_uniform_", tensor, mode, nonlinearity, a, "uniform", generator)


def lecun_normal_(tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """LeCun normal, in place: ``N(0, 1 / fan_in)`` — the init SELU networks need.

    Differences: Keras ``LecunNormal`` truncates at 2σ; PyTorch has none (``kaiming_normal_`` with
    ``nonlinearity="linear"`` gives the same numbers).
    """
    _tensor("lecun_normal_", tensor, min_dim=2)
    _generator("lecun_normal_", generator)
    return variance_scaling_(tensor, 1.0, "fan_in", "normal", generator)


def lecun_uniform_(tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """LeCun uniform, in place: ``U(−b, b)``, ``b = sqrt(3 / fan_in)``.

    Differences: Keras ``LecunUniform``; PyTorch has none.
    """
    _tensor("lecun_uniform_", tensor, min_dim=2)
    _generator("lecun_uniform_", generator)
    return variance_scaling_(tensor, 1.0, "fan_in", "uniform", generator)


def orthogonal_(
    tensor: Tensor, gain: float = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """A random orthogonal matrix times ``gain``, in place (Saxe et al., 2014).

    The tensor is seen as ``(rows, cols) = (shape[0], numel / shape[0])``. With ``A ~ N(0, 1)`` of
    that shape (transposed when rows < cols) and ``A = QR``, ``W = gain · Q · diag(sign(diag R))``:
    orthonormal rows or columns, whichever are fewer, drawn uniformly (Haar). Entries have mean 0
    and root-mean-square ``gain · sqrt(min(rows, cols) / (rows · cols))``.

    Differences: PyTorch ``orthogonal_`` and Keras ``Orthogonal`` do the same.
    """
    owner = "orthogonal_"
    _tensor(owner, tensor, min_dim=2)
    g = checks.positive(owner, "gain", gain)
    _generator(owner, generator)
    if tensor.numel() == 0:
        return tensor
    rows, cols = tensor.shape[0], tensor.numel() // tensor.shape[0]
    dtype = tensor.dtype if tensor.dtype in (torch.float32, torch.float64) else torch.float32
    a = torch.empty(max(rows, cols), min(rows, cols), dtype=dtype, device=tensor.device)
    a.normal_(0.0, 1.0, generator=generator)
    q, r = torch.linalg.qr(a)
    signs = torch.sign(torch.diagonal(r))
    q = q * torch.where(signs == 0, torch.ones_like(signs), signs)
    if rows < cols:
        q = q.T
    with torch.no_grad():
        tensor.copy_(q.reshape(tensor.shape)).mul_(g)
    return tensor


def zeros_(tensor: Tensor) -> Tensor:
    """Fill ``tensor`` with zeros in place (biases)."""
    _tensor("zeros_", tensor)
    with torch.no_grad():
        return tensor.zero_()


# --------------------------------------------------------------------------- init_model
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

    >>> net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    >>> [layer.scheme for layer in init_model(net)]
    ['he_normal', 'xavier_normal']
    """
    owner = "init_model"
    if not isinstance(model, nn.Module):
        checks.refuse(owner, "model", "a torch.nn.Module", type(model).__name__, TypeError)
    checks.choice(owner, "scheme", scheme, SCHEMES)
    checks.choice(owner, "distribution", distribution, DISTRIBUTIONS)
    _generator(owner, generator)

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
                std = math.sqrt(scale / _fan(w, mode)) if w.numel() else 0.0
                if w.numel():
                    _draw_(w, std, distribution, generator)
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


# ------------------------------------------------------------ signal through depth (docs)
@dataclass(frozen=True)
class Propagation:
    """Relative variances through a deep MLP (see :func:`signal_propagation`)."""

    activation: str
    scheme: str
    forward: list[float]  # Var(output of Linear l) / Var(input x), l = 1..depth
    backward: list[float]  # Var(∂L/∂ output of Linear l) / Var(∂L/∂ output of the last Linear)


def signal_propagation(
    activation: str = "relu",
    scheme: str = "auto",
    *,
    depth: int = 30,
    width: int = 256,
    batch: int = 512,
    seed: int = 0,
) -> Propagation:
    """Measure how the signal's variance travels through a deep MLP initialized by ``scheme``.

    The net is ``depth`` ``Linear(width, width)`` layers with ``activation`` after every one but
    the last, in float64, initialized with :func:`init_model`. The input is ``x ~ N(0, 1)`` of shape
    ``(batch, width)``; the backward pass starts from ``L = sum(r · y)`` with ``r ~ N(0, 1)``.
    ``forward[l]`` is the variance of layer ``l + 1``'s output (pre-activation) over the batch and
    units divided by ``Var(x)``; ``backward[l]`` is the variance of ``∂L/∂`` that output divided by
    that of the last layer (where the gradient is ``r``).
    """
    owner = "signal_propagation"
    checks.choice(owner, "activation", activation, ("relu", "tanh", "selu", "gelu", "sigmoid"))
    checks.choice(owner, "scheme", scheme, SCHEMES)
    depth = checks.integer(owner, "depth", depth, 1)
    width = checks.integer(owner, "width", width, 1)
    batch = checks.integer(owner, "batch", batch, 2)
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "selu": nn.SELU, "gelu": nn.GELU}.get(
        activation, nn.Sigmoid
    )
    mods: list[nn.Module] = []
    for i in range(depth):
        mods.append(nn.Linear(width, width, dtype=torch.float64))
        if i < depth - 1:
            mods.append(act())
    net = nn.Sequential(*mods)
    gen = torch.Generator().manual_seed(seed)
    init_model(net, scheme, generator=gen)
    x = torch.randn(batch, width, dtype=torch.float64, generator=gen)
    outs: list[Tensor] = []
    h = x
    for m in net:
        h = m(h)
        if isinstance(m, nn.Linear):
            h.retain_grad()
            outs.append(h)
    r = torch.randn(h.shape, dtype=torch.float64, generator=gen)
    (h * r).sum().backward()
    var_x = x.var().item()
    last = outs[-1].grad.var().item()
    return Propagation(
        activation,
        scheme,
        [o.detach().var().item() / var_x for o in outs],
        [o.grad.var().item() / last if last > 0 else float("nan") for o in outs],
    )


def variance_table(
    activations: tuple[str, ...] = ("relu", "tanh"),
    schemes: tuple[str, ...] = ("auto", "normal", "small"),
    *,
    depth: int = 30,
    width: int = 256,
    batch: int = 512,
    every: int = 5,
    seed: int = 0,
) -> str:
    """A text table of :func:`signal_propagation` for every ``activation × scheme``.

    One row per run and direction (``fwd``: forward variance ratio, ``bwd``: gradient variance
    ratio), one column per ``every``-th layer (and the first and last).
    """
    every = checks.integer("variance_table", "every", every, 1)
    layers = sorted({*range(every, depth + 1, every), 1, depth})
    names = {"auto": "init_model", "normal": "N(0, 1)", "small": "N(0, 0.01²)"}
    head = ["activation", "init", "pass"] + [f"layer {n}" for n in layers]
    rows = []
    for a in activations:
        for s in schemes:
            run = signal_propagation(a, s, depth=depth, width=width, batch=batch, seed=seed)
            for direction, values in (("fwd", run.forward), ("bwd", run.backward)):
                rows.append(
                    [a, names.get(s, s), direction] + [f"{values[n - 1]:.3g}" for n in layers]
                )
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    just = [str.ljust] * 3 + [str.rjust] * len(layers)
    lines = ["  ".join(j(c, w) for j, c, w in zip(just, row, widths)) for row in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    title = (
        f"Variance through a {depth}-layer MLP (width {width}, batch {batch}, float64)\n"
        "fwd: Var(output of layer l) / Var(input x)\n"
        "bwd: Var(dL/d output of layer l) / Var(dL/d output of the last layer)\n"
    )
    return title + "\n".join(line.rstrip() for line in lines)


if __name__ == "__main__":  # python -m gradwise.init
    print(variance_table())

"""Variance scaling: the one primitive (:func:`variance_scaling_`), the fans and gains it is
built from, and its named presets (Xavier, He, LeCun), plus ``orthogonal_`` and ``zeros_``.

:func:`gradwise.init.init_model` draws every layer through :func:`draw_` and :func:`fan`, so a
model and a single tensor get the same law for the same scale and mode.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gradwise import checks

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

#: std of the standard normal truncated to [−2, 2]:  sqrt(1 − 4·φ(2) / (Φ(2) − Φ(−2)))
TRUNC_STD = math.sqrt(
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


def check_generator(owner: str, generator: object) -> torch.Generator | None:
    """``generator`` when it is a ``torch.Generator`` or ``None``; refused otherwise."""
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


def fan(tensor: Tensor, mode: str) -> float:
    """The ``n`` of ``Var(W) = scale / n``: fan_in, fan_out or their mean, by ``mode``."""
    fan_in, fan_out = fans(tensor)
    return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]


def draw_(tensor: Tensor, std: float, distribution: str, generator) -> Tensor:
    """Fill ``tensor`` in place with mean-0 draws of standard deviation ``std`` (arguments
    unchecked: the public initializers check them)."""
    with torch.no_grad():
        if distribution == "normal":
            return tensor.normal_(0.0, std, generator=generator)
        if distribution == "uniform":
            bound = math.sqrt(3.0) * std
            return tensor.uniform_(-bound, bound, generator=generator)
        # truncated normal by inverting the CDF on [Φ(−2), Φ(2)]
        lo = 0.5 * (1.0 + math.erf(-2.0 / math.sqrt(2.0)))
        tensor.uniform_(lo, 1.0 - lo, generator=generator)
        tensor.mul_(2.0).sub_(1.0).erfinv_().mul_(math.sqrt(2.0) * std / TRUNC_STD)
        return tensor.clamp_(-2.0 * std / TRUNC_STD, 2.0 * std / TRUNC_STD)


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
    check_generator(owner, generator)
    if tensor.numel() == 0:
        return tensor
    return draw_(tensor, math.sqrt(scale / fan(tensor, mode)), distribution, generator)


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
    check_generator("xavier_uniform_", generator)
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
    check_generator("xavier_normal_", generator)
    return variance_scaling_(tensor, g * g, "fan_avg", "normal", generator)


def _he(owner, tensor, mode, nonlinearity, a, distribution, generator) -> Tensor:
    _tensor(owner, tensor, min_dim=2)
    check_generator(owner, generator)
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
    check_generator("lecun_normal_", generator)
    return variance_scaling_(tensor, 1.0, "fan_in", "normal", generator)


def lecun_uniform_(tensor: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """LeCun uniform, in place: ``U(−b, b)``, ``b = sqrt(3 / fan_in)``.

    Differences: Keras ``LecunUniform``; PyTorch has none.
    """
    _tensor("lecun_uniform_", tensor, min_dim=2)
    check_generator("lecun_uniform_", generator)
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
    check_generator(owner, generator)
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

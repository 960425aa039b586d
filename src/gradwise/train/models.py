"""Model builders: a multilayer perceptron and a 1-D convolutional network, initialized well.

Both return an ``nn.Sequential`` with named children (``fc1``, ``act1``, ``drop1``, ..., ``out``)
initialized by :func:`gradwise.init.init_model` (``init="auto"``: He for ReLU-like layers,
Xavier for tanh/sigmoid, LeCun for SELU, Xavier for the output layer; biases zero).

>>> net = mlp(40, 10, hidden=(256, 256), activation="gelu", dropout=0.1)
>>> net(torch.randn(8, 40)).shape
torch.Size([8, 10])
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from gradwise import checks
from gradwise.init import SCHEMES, init_model

__all__ = ["ACTIVATIONS", "AsChannels", "cnn1d", "conv_lengths", "mlp", "n_parameters"]

#: activation names accepted by the builders, and the modules they make
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "selu": nn.SELU,
    "elu": nn.ELU,
}


def _common(owner: str, activation, dropout, init, generator) -> float:
    checks.choice(owner, "activation", activation, tuple(ACTIVATIONS))
    dropout = checks.in_range(owner, "dropout", dropout, 0.0, 1.0)
    checks.choice(owner, "init", init, SCHEMES)
    if generator is not None and not isinstance(generator, torch.Generator):
        checks.refuse(owner, "generator", "a torch.Generator or None", generator, TypeError)
    return dropout


def _sizes(owner: str, name: str, values: object) -> list[int]:
    if isinstance(values, int | bool) or not isinstance(values, Iterable):
        checks.refuse(owner, name, "a sequence of positive integers", values, TypeError)
    sizes = list(values)  # type: ignore[arg-type]
    for i, v in enumerate(sizes):
        checks.integer(owner, f"{name}[{i}]", v, 1)
    return sizes


def _dropout(activation: str, p: float) -> nn.Module:
    # SELU nets keep their self-normalization only with alpha dropout (Klambauer et al., 2017)
    return nn.AlphaDropout(p) if activation == "selu" else nn.Dropout(p)


def mlp(
    in_features: int,
    out_features: int,
    hidden: Iterable[int] = (128, 128),
    activation: str = "relu",
    dropout: float = 0.0,
    init: str = "auto",
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """A multilayer perceptron: ``[Linear → activation → Dropout] × len(hidden) → Linear``.

    .. code-block:: text

        h_0 = x,   h_i = dropout(f(W_i h_{i-1} + b_i)),   y = W_out h_L + b_out

    Args:
        in_features: input size, >= 1.
        out_features: output size (logits), >= 1.
        hidden: the hidden widths; ``()`` gives a single linear layer.
        activation: one of ``relu``, ``leaky_relu``, ``gelu``, ``silu``, ``tanh``, ``sigmoid``,
            ``selu``, ``elu``.
        dropout: drop probability after every activation, in [0, 1); 0 adds no Dropout module.
            With ``selu`` the module is ``AlphaDropout``.
        init: a scheme of :func:`gradwise.init.init_model` (``"auto"``, ``"he"``, ..., ``"torch"``).
        generator: a ``torch.Generator`` for reproducible initial weights.

    Children are named ``fc1, act1, drop1, fc2, ..., out``.
    """
    owner = "mlp"
    in_features = checks.integer(owner, "in_features", in_features, 1)
    out_features = checks.integer(owner, "out_features", out_features, 1)
    widths = _sizes(owner, "hidden", hidden)
    dropout = _common(owner, activation, dropout, init, generator)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    prev = in_features
    for i, width in enumerate(widths, start=1):
        layers[f"fc{i}"] = nn.Linear(prev, width)
        layers[f"act{i}"] = ACTIVATIONS[activation]()
        if dropout > 0:
            layers[f"drop{i}"] = _dropout(activation, dropout)
        prev = width
    layers["out"] = nn.Linear(prev, out_features)
    model = nn.Sequential(layers)
    init_model(model, init, generator=generator)
    return model


class AsChannels(nn.Module):
    """Reshape ``(batch, length)`` or ``(batch, channels, length)`` input to the latter."""

    def __init__(self, channels: int, length: int) -> None:
        super().__init__()
        self.channels = channels
        self.length = length

    def forward(self, x: Tensor) -> Tensor:
        ok = x.dim() == 3 and tuple(x.shape[1:]) == (self.channels, self.length)
        ok = ok or (x.dim() == 2 and self.channels == 1 and x.shape[1] == self.length)
        if not ok:
            want = f"(batch, {self.length})" if self.channels == 1 else "(batch, C, L)"
            raise ValueError(
                f"cnn1d: input must have shape {want} or (batch, {self.channels}, {self.length}); "
                f"received shape {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.channels, self.length)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, length={self.length}"


def conv_lengths(
    in_length: int, n_layers: int, kernel_size: int, stride: int, padding: int
) -> list[int]:
    """Sequence lengths after each of ``n_layers`` convolutions:
    ``L_out = floor((L_in + 2·padding − kernel_size) / stride) + 1``."""
    lengths = [in_length]
    for _ in range(n_layers):
        lengths.append((lengths[-1] + 2 * padding - kernel_size) // stride + 1)
    return lengths[1:]


def cnn1d(
    in_length: int,
    out_features: int,
    channels: Iterable[int] = (32, 32, 32),
    kernel_size: int = 5,
    stride: int = 2,
    activation: str = "relu",
    dropout: float = 0.0,
    init: str = "auto",
    generator: torch.Generator | None = None,
    *,
    padding: int | None = None,
    pool: str = "flatten",
    in_channels: int = 1,
) -> nn.Sequential:
    """A 1-D convolutional network for sequences such as MNIST-1D.

    .. code-block:: text

        x (batch, length) or (batch, in_channels, length)
        → [Conv1d(c_{i-1}, c_i, kernel_size, stride, padding) → activation → Dropout] per channel
        → flatten (c_last · L_last features) | global avg / max pool (c_last features)
        → Linear(·, out_features)

    Modelled on the CNN of the MNIST-1D paper (Greydanus, 2020: three convolutions of 25 channels,
    kernel 5, stride 2, padding 1, ReLU, then a linear layer on the flattened features), which is
    ``cnn1d(40, 10, channels=(25, 25, 25), padding=1)``. The default padding,
    ``kernel_size // 2``, keeps ``L_out = ceil(L_in / stride)``.

    Args:
        in_length: the sequence length L, >= 1.
        out_features: output size (logits), >= 1.
        channels: output channels of each convolution (at least one).
        kernel_size: kernel size of every convolution, >= 1.
        stride: stride of every convolution, >= 1.
        activation: as for :func:`mlp`.
        dropout: drop probability after every activation, in [0, 1).
        init: a scheme of :func:`gradwise.init.init_model`.
        generator: a ``torch.Generator`` for reproducible initial weights.
        padding: zero padding on each side of every convolution, >= 0 (default ``kernel_size//2``).
        pool: ``"flatten"`` (the paper's head), ``"avg"`` or ``"max"`` (global pooling over length).
        in_channels: channels of the input, >= 1.

    Children are named ``input, conv1, act1, drop1, ..., pool, flatten, out``.
    """
    owner = "cnn1d"
    in_length = checks.integer(owner, "in_length", in_length, 1)
    out_features = checks.integer(owner, "out_features", out_features, 1)
    chans = _sizes(owner, "channels", channels)
    if not chans:
        checks.refuse(owner, "channels", "a non-empty sequence of positive integers", channels)
    kernel_size = checks.integer(owner, "kernel_size", kernel_size, 1)
    stride = checks.integer(owner, "stride", stride, 1)
    padding = kernel_size // 2 if padding is None else checks.integer(owner, "padding", padding, 0)
    checks.choice(owner, "pool", pool, ("flatten", "avg", "max"))
    in_channels = checks.integer(owner, "in_channels", in_channels, 1)
    dropout = _common(owner, activation, dropout, init, generator)
    lengths = conv_lengths(in_length, len(chans), kernel_size, stride, padding)
    if min(lengths) < 1:
        raise ValueError(
            f"{owner}: in_length must be long enough for {len(chans)} convolutions of "
            f"kernel_size={kernel_size}, stride={stride}, padding={padding} (lengths would be "
            f"{lengths}); received in_length={in_length}"
        )

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["input"] = AsChannels(in_channels, in_length)
    prev = in_channels
    for i, c in enumerate(chans, start=1):
        layers[f"conv{i}"] = nn.Conv1d(prev, c, kernel_size, stride=stride, padding=padding)
        layers[f"act{i}"] = ACTIVATIONS[activation]()
        if dropout > 0:
            layers[f"drop{i}"] = _dropout(activation, dropout)
        prev = c
    if pool == "avg":
        layers["pool"] = nn.AdaptiveAvgPool1d(1)
    elif pool == "max":
        layers["pool"] = nn.AdaptiveMaxPool1d(1)
    layers["flatten"] = nn.Flatten()
    features = prev * (lengths[-1] if pool == "flatten" else 1)
    layers["out"] = nn.Linear(features, out_features)
    model = nn.Sequential(layers)
    init_model(model, init, generator=generator)
    return model


def n_parameters(model: nn.Module) -> int:
    """The number of scalar parameters of ``model`` (shared ones counted once)."""
    return sum(math.prod(p.shape) for p in model.parameters())

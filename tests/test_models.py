"""Tests of gradwise.train.models: shapes, parameter counts, initialization, dropout, determinism
and argument errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradwise.init import gain
from gradwise.train.models import ACTIVATIONS, cnn1d, conv_lengths, mlp, n_parameters


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------ mlp
def test_mlp_shape_structure_and_parameter_count():
    net = mlp(40, 10, hidden=(256, 128), generator=gen())
    assert isinstance(net, nn.Sequential)
    assert list(dict(net.named_children())) == ["fc1", "act1", "fc2", "act2", "out"]
    assert net(torch.randn(7, 40)).shape == (7, 10)
    assert n_parameters(net) == (40 * 256 + 256) + (256 * 128 + 128) + (128 * 10 + 10)
    assert n_parameters(net) == sum(p.numel() for p in net.parameters())


def test_mlp_without_hidden_is_linear():
    net = mlp(5, 3, hidden=())
    assert len(net) == 1 and isinstance(net.out, nn.Linear)
    assert n_parameters(net) == 18


def test_mlp_init_is_he_for_relu_and_xavier_for_output():
    net = mlp(1000, 10, hidden=(800, 800), generator=gen())
    assert net.fc1.weight.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.01)
    assert net.fc2.weight.std().item() == pytest.approx(math.sqrt(2 / 800), rel=0.01)
    assert net.out.weight.std().item() == pytest.approx(math.sqrt(2 / 810), rel=0.03)
    for m in (net.fc1, net.fc2, net.out):
        assert torch.count_nonzero(m.bias) == 0


@pytest.mark.parametrize(
    "activation, std",
    [
        ("tanh", 5 / 3 * math.sqrt(2 / 1200)),  # Xavier, gain 5/3 (fans 600, 600)
        ("selu", math.sqrt(1 / 600)),  # LeCun
        ("gelu", gain("gelu") / math.sqrt(600)),  # He with the GELU gain
        ("leaky_relu", math.sqrt(2 / (1 + 0.01**2) / 600)),
    ],
)
def test_mlp_init_follows_activation(activation, std):
    net = mlp(600, 4, hidden=(600, 600), activation=activation, generator=gen())
    assert isinstance(net.act1, ACTIVATIONS[activation])
    assert net.fc2.weight.std().item() == pytest.approx(std, rel=0.01)


def test_mlp_init_torch_keeps_pytorch_default():
    net = mlp(300, 4, hidden=(300,), init="torch", generator=gen())
    assert net.fc1.weight.abs().max().item() <= 1 / math.sqrt(300)
    assert net.fc1.weight.std().item() == pytest.approx(1 / math.sqrt(900), rel=0.02)


def test_mlp_dropout():
    assert not any(isinstance(m, nn.Dropout) for m in mlp(4, 2).modules())
    net = mlp(4, 2, hidden=(8, 8, 8), dropout=0.25)
    drops = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 and all(d.p == 0.25 for d in drops)
    assert list(dict(net.named_children()))[:3] == ["fc1", "act1", "drop1"]
    # active in training mode, off in eval mode
    x = torch.randn(64, 4)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))
    selu = mlp(4, 2, hidden=(8,), activation="selu", dropout=0.1)
    assert isinstance(selu.drop1, nn.AlphaDropout)


def test_mlp_deterministic_with_generator():
    a = mlp(10, 3, generator=gen(3))
    b = mlp(10, 3, generator=gen(3))
    c = mlp(10, 3, generator=gen(4))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.fc1.weight, c.fc1.weight)


def test_mlp_errors():
    with pytest.raises(ValueError) as info:
        mlp(4, 2, activation="swish")
    assert str(info.value) == (
        "mlp: activation must be one of 'relu', 'leaky_relu', 'gelu', 'silu', 'tanh', "
        "'sigmoid', 'selu', 'elu'; received activation='swish'"
    )
    with pytest.raises(ValueError, match=r"^mlp: in_features must be an integer >= 1"):
        mlp(0, 2)
    with pytest.raises(TypeError, match=r"^mlp: out_features must be an integer"):
        mlp(4, 2.0)
    with pytest.raises(ValueError, match=r"^mlp: hidden\[1\] must be an integer >= 1"):
        mlp(4, 2, hidden=(8, 0))
    with pytest.raises(TypeError, match=r"^mlp: hidden must be a sequence of positive integers"):
        mlp(4, 2, hidden=8)
    with pytest.raises(ValueError, match=r"^mlp: dropout must be in \[0, 1\); received dropout=1"):
        mlp(4, 2, dropout=1)
    with pytest.raises(ValueError, match=r"^mlp: init must be one of 'auto'"):
        mlp(4, 2, init="glorot")
    with pytest.raises(TypeError, match=r"^mlp: generator must be a torch.Generator or None"):
        mlp(4, 2, generator=42)


# ---------------------------------------------------------------------------------- cnn1d
def test_conv_lengths_formula():
    # the paper's CNN on MNIST-1D: 40 -> 19 -> 9 -> 4
    assert conv_lengths(40, 3, 5, 2, 1) == [19, 9, 4]
    # padding kernel_size // 2: ceil(L / stride)
    assert conv_lengths(40, 3, 5, 2, 2) == [20, 10, 5]
    assert conv_lengths(41, 2, 3, 2, 1) == [21, 11]


def test_cnn1d_paper_configuration():
    net = cnn1d(40, 10, channels=(25, 25, 25), padding=1, generator=gen())
    assert net(torch.randn(6, 40)).shape == (6, 10)
    convs = (1 * 5 * 25 + 25) + 2 * (25 * 5 * 25 + 25)
    assert n_parameters(net) == convs + (25 * 4 * 10 + 10)


def test_cnn1d_default_shapes_and_inputs():
    net = cnn1d(40, 10, generator=gen())
    names = list(dict(net.named_children()))
    assert names == ["input", "conv1", "act1", "conv2", "act2", "conv3", "act3", "flatten", "out"]
    x = torch.randn(5, 40)
    y = net(x)
    assert y.shape == (5, 10)
    torch.testing.assert_close(net(x.unsqueeze(1)), y)  # (batch, 1, length) works too
    convs = (1 * 5 * 32 + 32) + 2 * (32 * 5 * 32 + 32)
    assert n_parameters(net) == convs + (32 * 5 * 10 + 10)
    with pytest.raises(ValueError, match=r"^cnn1d: input must have shape \(batch, 40\)"):
        net(torch.randn(5, 39))


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_cnn1d_global_pool_head(pool):
    net = cnn1d(40, 3, channels=(8, 16), pool=pool, in_channels=2)
    assert net(torch.randn(4, 2, 40)).shape == (4, 3)
    assert net.out.in_features == 16
    assert n_parameters(net) == (2 * 5 * 8 + 8) + (8 * 5 * 16 + 16) + (16 * 3 + 3)


def test_cnn1d_init_is_he_for_relu_convs():
    net = cnn1d(64, 10, channels=(64, 128), kernel_size=7, generator=gen())
    # conv2 weight (128, 64, 7): fan_in = 448, 57344 draws
    assert net.conv2.weight.std().item() == pytest.approx(math.sqrt(2 / 448), rel=0.02)
    # the head follows no activation: Xavier with gain 1; fans (128 * 16, 10)
    fan_in = 128 * 16
    assert net.out.weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + 10)), rel=0.05)
    assert torch.count_nonzero(net.conv1.bias) == 0


def test_cnn1d_dropout_and_determinism():
    net = cnn1d(40, 10, dropout=0.2, generator=gen(1))
    drops = [n for n, m in net.named_children() if isinstance(m, nn.Dropout)]
    assert drops == ["drop1", "drop2", "drop3"]
    twin = cnn1d(40, 10, dropout=0.2, generator=gen(1))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), twin.parameters()))


def test_cnn1d_trains_on_a_toy_task():
    # class = where a bump sits in the sequence; a few Adam steps separate the classes
    g = gen(0)
    y = torch.randint(0, 4, (256,), generator=g)
    x = 0.1 * torch.randn(256, 32, generator=g)
    for i, c in enumerate(y.tolist()):
        x[i, 8 * c : 8 * c + 4] += 1.0
    net = cnn1d(32, 4, channels=(8, 8), generator=gen(1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    assert (net(x).argmax(1) == y).float().mean().item() > 0.95


def test_cnn1d_errors():
    with pytest.raises(ValueError, match=r"^cnn1d: activation must be one of 'relu'"):
        cnn1d(40, 10, activation="mish")
    with pytest.raises(ValueError, match=r"in_length must be long enough for 3 convolutions"):
        cnn1d(4, 10, kernel_size=5, padding=0)
    with pytest.raises(ValueError, match=r"^cnn1d: channels must be a non-empty sequence"):
        cnn1d(40, 10, channels=())
    with pytest.raises(ValueError, match=r"^cnn1d: pool must be one of 'flatten', 'avg', 'max'"):
        cnn1d(40, 10, pool="sum")
    with pytest.raises(ValueError, match=r"^cnn1d: stride must be an integer >= 1"):
        cnn1d(40, 10, stride=0)
    with pytest.raises(ValueError, match=r"^cnn1d: padding must be an integer >= 0"):
        cnn1d(40, 10, padding=-1)

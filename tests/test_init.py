"""Tests of gradwise.init: formulas checked by statistics on big tensors, against torch's own gains
and fans, and the variance of the signal through a 30-layer MLP."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradwise import init
from gradwise.init import (
    fans,
    gain,
    he_normal_,
    he_uniform_,
    init_model,
    lecun_normal_,
    lecun_uniform_,
    orthogonal_,
    signal_propagation,
    variance_scaling_,
    xavier_normal_,
    xavier_uniform_,
    zeros_,
)
from gradwise.init.scaling import TRUNC_STD


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def big(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, dtype=torch.float64)


# relative tolerance for a std estimated from N ≥ 5e5 draws: its sd is ≈ 1/sqrt(2N) ≈ 0.1 %
STD_RTOL = 0.01


# ------------------------------------------------------------------------------------ fans
@pytest.mark.parametrize(
    "shape",
    [(300, 200), (16, 3, 5), (32, 8, 3, 3), (8, 4, 2, 3, 3), (1, 7), (64, 1, 9)],
)
def test_fans_match_pytorch(shape):
    expected = nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert fans(torch.empty(shape)) == expected


def test_fans_of_real_layers():
    assert fans(nn.Linear(20, 30).weight) == (20, 30)
    assert fans(nn.Conv1d(3, 16, kernel_size=5).weight) == (15, 80)
    assert fans(nn.Conv2d(3, 16, kernel_size=(3, 5)).weight) == (45, 240)
    # grouped conv: weight (out, in / groups, k) -> fan_in counts only the group's inputs
    assert fans(nn.Conv1d(8, 16, kernel_size=3, groups=4).weight) == (6, 48)


def test_fans_refuse_1d():
    with pytest.raises(ValueError, match=r"^fans: tensor must be a tensor with at least 2"):
        fans(torch.empty(5))


# ------------------------------------------------------------------------ the primitive
@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("distribution", ["normal", "uniform", "truncated_normal"])
def test_variance_scaling_std(mode, distribution):
    w = big(400, 250, 5)  # fan_in 1250, fan_out 2000, 5e5 draws
    n = {"fan_in": 1250, "fan_out": 2000, "fan_avg": 1625}[mode]
    std = math.sqrt(3.0 / n)
    out = variance_scaling_(w, 3.0, mode, distribution, generator=gen())
    assert out is w
    assert abs(w.mean().item()) < 5 * std / math.sqrt(w.numel())
    assert w.std().item() == pytest.approx(std, rel=STD_RTOL)
    bound = w.abs().max().item()
    if distribution == "uniform":
        assert std * math.sqrt(3) * 0.999 < bound <= std * math.sqrt(3)
    elif distribution == "truncated_normal":
        sigma = std / TRUNC_STD
        assert 1.99 * sigma < bound <= 2 * sigma
    else:  # untruncated: a 5e5-sample normal reaches beyond 4 std
        assert bound > 4 * std
        within_1 = (w.abs() < std).double().mean().item()
        assert within_1 == pytest.approx(math.erf(1 / math.sqrt(2)), abs=0.003)


def test_truncated_normal_constant():
    # std of N(0, 1) conditioned on |z| < 2, by numerical integration
    z = torch.linspace(-2, 2, 200001, dtype=torch.float64)
    pdf = torch.exp(-z * z / 2)
    var = torch.trapezoid(z * z * pdf, z) / torch.trapezoid(pdf, z)
    trunc_std = TRUNC_STD
    assert trunc_std == pytest.approx(math.sqrt(var.item()), rel=1e-9)


def test_variance_scaling_errors():
    with pytest.raises(ValueError, match=r"variance_scaling_: scale must be > 0; received scale=0"):
        variance_scaling_(torch.empty(3, 3), 0)
    with pytest.raises(ValueError, match=r"mode must be one of 'fan_in', 'fan_out', 'fan_avg'"):
        variance_scaling_(torch.empty(3, 3), 1.0, "fan")
    with pytest.raises(ValueError, match=r"distribution must be one of"):
        variance_scaling_(torch.empty(3, 3), 1.0, "fan_in", "gauss")
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator or None"):
        variance_scaling_(torch.empty(3, 3), generator=0)
    with pytest.raises(TypeError, match=r"tensor must be a torch.Tensor"):
        variance_scaling_([1.0, 2.0])
    with pytest.raises(ValueError, match=r"at least 2 dimensions"):
        he_normal_(torch.empty(10))


def test_zero_size_is_a_no_op():
    w = torch.empty(0, 5)
    assert variance_scaling_(w) is w
    assert orthogonal_(torch.empty(0, 5)).shape == (0, 5)


# ------------------------------------------------------------------------------ presets
def test_he_normal_is_sqrt_2_over_fan_in():
    w = he_normal_(big(1000, 800), generator=gen())
    assert w.std().item() == pytest.approx(math.sqrt(2 / 800), rel=STD_RTOL)


def test_he_normal_fan_out_and_leaky_slope():
    w = he_normal_(
        big(500, 1000), mode="fan_out", nonlinearity="leaky_relu", a=0.3, generator=gen()
    )
    assert w.std().item() == pytest.approx(math.sqrt(2 / (1 + 0.09)) / math.sqrt(500), rel=STD_RTOL)
    # a=None: leaky_relu's own default slope 0.01
    w = he_normal_(big(500, 1000), nonlinearity="leaky_relu", generator=gen())
    assert w.std().item() == pytest.approx(math.sqrt(2 / 1.0001 / 1000), rel=STD_RTOL)


def test_he_uniform_bound():
    w = he_uniform_(big(1000, 600), generator=gen())
    bound = math.sqrt(6 / 600)
    assert 0.999 * bound < w.abs().max().item() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=STD_RTOL)


def test_he_conv_uses_receptive_field():
    w = he_normal_(big(64, 32, 5, 5), generator=gen())  # fan_in = 32 * 25
    assert w.std().item() == pytest.approx(math.sqrt(2 / 800), rel=STD_RTOL)


def test_xavier_uniform_bound():
    w = xavier_uniform_(big(700, 900), gain=5 / 3, generator=gen())
    bound = 5 / 3 * math.sqrt(6 / (700 + 900))
    assert 0.999 * bound < w.abs().max().item() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=STD_RTOL)


def test_xavier_normal_conv():
    w = xavier_normal_(big(40, 20, 3, 3), gain=2.0, generator=gen())  # fans 180, 360; 7200 draws
    std = 2.0 * math.sqrt(2 / (180 + 360))
    assert w.std().item() == pytest.approx(std, rel=0.03)
    w = xavier_normal_(big(1000, 600), generator=gen())
    assert w.std().item() == pytest.approx(math.sqrt(2 / 1600), rel=STD_RTOL)


def test_lecun():
    w = lecun_normal_(big(800, 700), generator=gen())
    assert w.std().item() == pytest.approx(1 / math.sqrt(700), rel=STD_RTOL)
    w = lecun_uniform_(big(800, 700), generator=gen())
    assert 0.999 * math.sqrt(3 / 700) < w.abs().max().item() <= math.sqrt(3 / 700)


def test_presets_match_torch_distributions():
    # same law as torch.nn.init's namesakes: compare the std of both on the same shape
    shape = (600, 900)
    ours = he_normal_(big(*shape), generator=gen(1)).std().item()
    theirs = nn.init.kaiming_normal_(big(*shape), nonlinearity="relu", generator=gen(2)).std()
    assert ours == pytest.approx(theirs.item(), rel=0.02)
    ours = xavier_uniform_(big(*shape), gain=1.3, generator=gen(1)).abs().max().item()
    theirs = nn.init.xavier_uniform_(big(*shape), gain=1.3, generator=gen(2)).abs().max()
    assert ours == pytest.approx(theirs.item(), rel=1e-3)


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (32, 8, 3, 3), (50, 50)])
def test_orthogonal(shape):
    w = orthogonal_(torch.empty(shape, dtype=torch.float64), gain=1.5, generator=gen())
    m = w.reshape(shape[0], -1)
    rows, cols = m.shape
    eye = torch.eye(min(rows, cols), dtype=torch.float64)
    product = m @ m.T if rows <= cols else m.T @ m
    torch.testing.assert_close(product, 2.25 * eye, rtol=0, atol=1e-10)


def test_orthogonal_float32_and_half():
    w = orthogonal_(torch.empty(16, 16, dtype=torch.bfloat16), generator=gen())
    assert w.dtype == torch.bfloat16
    product = w.float() @ w.float().T
    torch.testing.assert_close(product, torch.eye(16), rtol=0, atol=0.05)


def test_zeros_and_parameters_in_place():
    layer = nn.Linear(5, 3)
    assert zeros_(layer.bias) is layer.bias
    assert torch.count_nonzero(layer.bias) == 0
    assert layer.weight.requires_grad
    he_normal_(layer.weight)  # a leaf that requires grad: filled under no_grad
    assert layer.weight.grad_fn is None


# --------------------------------------------------------------------------------- gain
@pytest.mark.parametrize(
    "nonlinearity, param",
    [
        ("linear", None),
        ("conv1d", None),
        ("conv2d", None),
        ("conv3d", None),
        ("conv_transpose2d", None),
        ("sigmoid", None),
        ("tanh", None),
        ("relu", None),
        ("leaky_relu", None),
        ("leaky_relu", 0.2),
        ("leaky_relu", 0),
        ("selu", None),
    ],
)
def test_gain_matches_torch(nonlinearity, param):
    expected = nn.init.calculate_gain(nonlinearity, param)
    assert gain(nonlinearity, param) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "nonlinearity, f",
    [
        ("relu", F.relu),
        ("gelu", F.gelu),
        ("silu", F.silu),
        ("elu", F.elu),
    ],
)
def test_gain_of_smooth_activations_by_monte_carlo(nonlinearity, f):
    # gain = 1 / sqrt(E[f(z)^2]), z ~ N(0, 1); the same rule gives ReLU its sqrt(2)
    z = torch.randn(2_000_000, dtype=torch.float64, generator=gen(3))
    expected = 1 / math.sqrt((f(z) ** 2).mean().item())
    assert gain(nonlinearity) == pytest.approx(expected, rel=3e-3)


def test_gain_elu_alpha_and_errors():
    z = torch.randn(2_000_000, dtype=torch.float64, generator=gen(4))
    expected = 1 / math.sqrt((F.elu(z, alpha=0.5) ** 2).mean().item())
    assert gain("elu", 0.5) == pytest.approx(expected, rel=3e-3)
    with pytest.raises(ValueError, match=r"^gain: nonlinearity must be one of 'linear'.*"):
        gain("swish")
    with pytest.raises(TypeError, match=r"gain: param must be a real number; received param='a'"):
        gain("leaky_relu", "a")


# ---------------------------------------------------------------------------- generator
def test_generator_reproducible_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    for fn in (he_normal_, he_uniform_, xavier_normal_, xavier_uniform_, orthogonal_):
        a = fn(torch.empty(20, 30), generator=gen(7))
        b = fn(torch.empty(20, 30), generator=gen(7))
        c = fn(torch.empty(20, 30), generator=gen(8))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)


def test_init_model_generator_reproducible():
    def build():
        return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 2))

    a, b = build(), build()
    init_model(a, generator=gen(1))
    init_model(b, generator=gen(1))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


# --------------------------------------------------------------------------- init_model
def test_auto_on_sequential():
    net = nn.Sequential(
        nn.Linear(10, 400),
        nn.BatchNorm1d(400),
        nn.LeakyReLU(0.2),
        nn.Dropout(0.1),
        nn.Sequential(nn.Linear(400, 300), nn.Tanh()),  # nested
        nn.Linear(300, 300),
        nn.SELU(),
        nn.Linear(300, 200),
        nn.Sequential(nn.Dropout(), nn.GELU()),  # activation inside the next container
        nn.Linear(200, 100),
        nn.Sigmoid(),
        nn.Linear(100, 5),
    )
    report = init_model(net, generator=gen())
    table = [(r.name, r.activation, r.scheme) for r in report]
    assert table == [
        ("0", "leaky_relu(0.2)", "he_normal"),
        ("4.0", "tanh", "xavier_normal"),
        ("5", "selu", "lecun_normal"),
        ("7", "gelu", "he_normal"),
        ("9", "sigmoid", "xavier_normal"),
        ("11", "none", "xavier_normal"),
    ]
    expected_std = {
        "0": math.sqrt(2 / 1.04 / 10),
        "4.0": 5 / 3 * math.sqrt(2 / 700),
        "5": math.sqrt(1 / 300),
        "7": gain("gelu") / math.sqrt(300),
        "9": math.sqrt(2 / 300),
        "11": math.sqrt(2 / 105),
    }
    for r in report:
        assert r.std == pytest.approx(expected_std[r.name], rel=1e-12)
        assert not r.fallback
    # the weights really are drawn with that std (the 400x10 layer has 4000 entries)
    assert net[0].weight.std().item() == pytest.approx(expected_std["0"], rel=0.05)
    assert net[4][0].weight.std().item() == pytest.approx(expected_std["4.0"], rel=0.01)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            assert torch.count_nonzero(m.bias) == 0


def test_auto_on_cnn_sequential_with_flatten_and_pooling():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.Flatten(),
        nn.Tanh(),
        nn.Linear(8, 4),
        nn.LogSoftmax(dim=1),
    )
    report = init_model(net)
    assert [(r.activation, r.scheme) for r in report] == [
        ("relu", "he_normal"),
        ("tanh", "xavier_normal"),
        ("none", "xavier_normal"),
    ]
    assert report[0].std == pytest.approx(math.sqrt(2 / 27))
    assert report[0].shape == (8, 3, 3, 3)


class CustomNet(nn.Module):
    """A non-Sequential model: activations as functions, methods and modules."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(12, 16)
        self.hid = nn.Linear(16, 16)
        self.block = nn.Sequential(nn.Linear(16, 16), nn.SiLU())
        self.skip = nn.Linear(16, 16)
        self.conv = nn.Conv1d(1, 4, 3)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = F.relu(self.inp(x))
        h = torch.tanh(F.dropout(self.hid(h), 0.1, self.training)).view(-1, 16)
        h = self.block(h)
        h = h + self.skip(h)  # a residual sum: the activation is not known
        c = self.conv(h.unsqueeze(1)).sigmoid()
        h = F.leaky_relu(self.norm(h), negative_slope=0.1)
        return self.out(h), c


def test_auto_on_custom_forward_by_tracing():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = init_model(CustomNet(), generator=gen())
    got = {r.name: (r.activation, r.scheme, r.fallback) for r in report}
    assert got == {
        "inp": ("relu", "he_normal", False),
        "hid": ("tanh", "xavier_normal", False),
        "block.0": ("silu", "he_normal", False),
        "skip": ("unknown", "he_normal", True),
        "conv": ("sigmoid", "xavier_normal", False),
        "out": ("none", "xavier_normal", False),
    }
    assert report.fallbacks == ["skip"]
    assert report["skip"].std == pytest.approx(math.sqrt(2 / 16))
    assert len(caught) == 1
    assert "'skip'" in str(caught[0].message)
    assert "fallback He normal" in str(caught[0].message)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            x = -x
        return self.head(torch.tanh(self.body(x)))


def test_untraceable_model_uses_sequential_order_and_warns():
    with pytest.warns(UserWarning, match=r"'body.2', 'head' \(tracing failed: TraceError"):
        report = init_model(Untraceable())
    assert report["body.0"].activation == "relu"
    assert not report["body.0"].fallback
    assert report["body.2"].fallback and report["head"].fallback
    assert report.note.startswith("TraceError")


def test_fixed_schemes_std():
    net = nn.Sequential(nn.Linear(300, 200), nn.Tanh(), nn.Linear(200, 100))
    expected = {
        "he": [math.sqrt(2 / 300), math.sqrt(2 / 200)],
        "xavier": [math.sqrt(2 / 500), math.sqrt(2 / 300)],
        "lecun": [math.sqrt(1 / 300), math.sqrt(1 / 200)],
        "normal": [1.0, 1.0],
        "small": [0.01, 0.01],
        "orthogonal": [math.sqrt(200 / 60000), math.sqrt(100 / 20000)],
    }
    for scheme, stds in expected.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # fixed schemes never warn
            report = init_model(net, scheme, generator=gen())
        assert [r.std for r in report] == pytest.approx(stds, rel=1e-12)
        for layer, std in zip((net[0], net[2]), stds):
            measured = layer.weight.pow(2).mean().sqrt().item()  # root-mean-square
            assert measured == pytest.approx(std, rel=0.05)
            assert torch.count_nonzero(layer.bias) == 0


def test_distribution_option():
    net = nn.Sequential(nn.Linear(600, 500), nn.ReLU(), nn.Linear(500, 10))
    report = init_model(net, distribution="uniform", generator=gen())
    assert report[0].scheme == "he_uniform"
    bound = math.sqrt(6 / 600)
    assert 0.999 * bound < net[0].weight.abs().max().item() <= bound


def test_torch_scheme():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(50, 40), nn.ReLU(), nn.Linear(40, 3))
    before = [p.clone() for p in net.parameters()]
    report = init_model(net, "torch")
    for p, q in zip(before, net.parameters()):
        assert torch.equal(p, q)  # without a generator: untouched
    assert report[0].std == pytest.approx(1 / math.sqrt(3 * 50))
    init_model(net, "torch", generator=gen(5))
    w1 = net[0].weight.clone()
    init_model(net, "torch", generator=gen(5))
    assert torch.equal(w1, net[0].weight)
    assert net[0].weight.abs().max() <= 1 / math.sqrt(50)
    assert net[0].bias.abs().max() <= 1 / math.sqrt(50)
    assert torch.count_nonzero(net[0].bias) > 0  # "torch" keeps PyTorch's biases


def test_single_layer_model_and_report_table():
    report = init_model(nn.Linear(3, 4))
    assert report[0].activation == "none"
    net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    text = str(init_model(net))
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "shape", "activation", "init", "gain", "std"]
    assert lines[2].split() == ["0", "32x10", "relu", "he_normal", "1.414", "0.4472"]
    assert lines[3].split() == ["2", "2x32", "none", "xavier_normal", "1", "0.2425"]
    assert repr(init_model(net)) == "InitReport(scheme='auto', layers=2)"


def test_init_model_errors():
    with pytest.raises(TypeError, match=r"init_model: model must be a torch.nn.Module"):
        init_model("net")
    with pytest.raises(ValueError, match=r"init_model: scheme must be one of 'auto', 'he'"):
        init_model(nn.Linear(2, 2), "kaiming")
    with pytest.raises(ValueError, match=r"lazy"):
        init_model(nn.Sequential(nn.LazyLinear(3)))


# ---------------------------------------------------------------- signal through depth
@pytest.fixture(scope="module")
def propagation():
    return {
        (a, s): signal_propagation(a, s, depth=30, width=256, batch=512, seed=0)
        for a in ("relu", "tanh")
        for s in ("auto", "normal", "small")
    }


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_init_model_keeps_variance_through_30_layers(propagation, activation):
    run = propagation[(activation, "auto")]
    assert len(run.forward) == 30
    assert all(0.1 < v < 10 for v in run.forward), run.forward


def test_relu_he_also_keeps_gradient_variance(propagation):
    assert all(0.1 < v < 10 for v in propagation[("relu", "auto")].backward)


def test_naive_init_collapses_or_explodes(propagation):
    assert propagation[("relu", "normal")].forward[-1] > 1e6  # x128 per layer
    assert propagation[("relu", "small")].forward[-1] < 1e-6  # x0.0128 per layer
    assert propagation[("tanh", "small")].forward[-1] < 1e-6
    # tanh with N(0, 1) saturates: the forward variance stays near width · E[tanh²] ≈ 240, but the
    # gradient explodes on the way back to the input
    tanh_normal = propagation[("tanh", "normal")]
    assert all(100 < v < 300 for v in tanh_normal.forward)
    assert tanh_normal.backward[0] > 1e6


def test_variance_table_runs():
    text = init.variance_table(("relu",), ("auto",), depth=4, width=16, batch=32, every=2)
    lines = text.splitlines()
    assert " ".join(lines[3].split()) == "activation init pass layer 1 layer 2 layer 4"
    assert lines[5].startswith("relu") and "fwd" in lines[5]
    assert lines[6].startswith("relu") and "bwd" in lines[6]

"""Tests of gradwise.regularization: penalty values and gradients, their equivalence with the
optimizers' coupled weight decay, param groups, and L1 sparsity (proximal vs penalty)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradwise.regularization import (
    default_no_decay,
    is_norm_layer,
    l1_penalty,
    l2_penalty,
    param_groups,
)


# ------------------------------------------------------------------------------ penalties
def test_penalty_values_and_gradients():
    a = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([-3.0, 4.0], dtype=torch.float64, requires_grad=True)
    l1 = l1_penalty([a, b], 0.1)
    l2 = l2_penalty([a, b], 0.1)
    assert l1.item() == pytest.approx(0.1 * (1 + 2 + 0.5 + 0 + 3 + 4))
    assert l2.item() == pytest.approx(0.05 * (1 + 4 + 0.25 + 0 + 9 + 16))
    (ga, gb) = torch.autograd.grad(l2, [a, b])
    torch.testing.assert_close(ga, 0.1 * a.detach())
    torch.testing.assert_close(gb, 0.1 * b.detach())
    (ga,) = torch.autograd.grad(l1_penalty(a, 0.1), [a])
    torch.testing.assert_close(ga, 0.1 * torch.sign(a.detach()))  # 0 at θ = 0


def test_penalty_accepts_generators_and_empty():
    net = nn.Linear(3, 2)
    expected = 0.5 * 0.2 * sum((p.detach() ** 2).sum() for p in net.parameters())
    assert l2_penalty(net.parameters(), 0.2).item() == pytest.approx(expected.item())
    assert l1_penalty([], 0.3).item() == 0.0
    assert l2_penalty(net.weight, 0.0).item() == 0.0


def test_penalty_errors():
    with pytest.raises(ValueError, match=r"^l2_penalty: weight must be >= 0; received weight=-1"):
        l2_penalty([torch.ones(2)], -1)
    with pytest.raises(TypeError, match=r"^l1_penalty: params must be a tensor or an iterable"):
        l1_penalty(nn.Linear(2, 2), 0.1)
    with pytest.raises(TypeError, match=r"l1_penalty: params\[1\] must be a torch.Tensor"):
        l1_penalty([torch.ones(2), 3.0], 0.1)
    with pytest.raises(TypeError, match=r"weight must be a real number"):
        l1_penalty([torch.ones(2)], "0.1")


# ----------------------------------------------- l2_penalty == coupled weight_decay
def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, dtype=torch.float64, generator=g)
    y = torch.randn(64, 3, dtype=torch.float64, generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    return net, x, y


def _train(make_opt, penalty: float, steps: int = 25):
    net, x, y = _problem()
    opt = make_opt(net.parameters())
    for _ in range(steps):
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        if penalty:
            loss = loss + l2_penalty(net.parameters(), penalty)
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize(
    "make",
    [
        lambda wd: lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=wd),
        lambda wd: lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=wd),
        lambda wd: (
            lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=wd)
        ),
        lambda wd: lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=wd),
        lambda wd: lambda ps: torch.optim.RMSprop(ps, lr=0.01, weight_decay=wd),
    ],
    ids=["sgd", "momentum", "nesterov", "adam", "rmsprop"],
)
def test_l2_penalty_equals_coupled_weight_decay(make):
    lam = 0.3
    with_decay = _train(make(lam), penalty=0.0)
    with_penalty = _train(make(0.0), penalty=lam)
    without = _train(make(0.0), penalty=0.0)
    for p, q in zip(with_decay, with_penalty):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert any((p - r).abs().max() > 1e-3 for p, r in zip(with_decay, without))


def test_l2_penalty_equals_gradwise_sgd_weight_decay():
    optim = pytest.importorskip("gradwise.optim")
    lam = 0.3
    with_decay = _train(lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=lam), 0.0)
    with_penalty = _train(lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9), lam)
    for p, q in zip(with_decay, with_penalty):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_plain_sgd_l2_is_a_shrink_but_adamw_is_not_a_penalty():
    # one plain SGD step on the penalty alone: θ ← θ − lr·λ·θ = θ·(1 − lr·λ)
    net, _, _ = _problem()
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    l2_penalty(net.parameters(), 0.5).backward()
    opt.step()
    for p, b in zip(net.parameters(), before):
        torch.testing.assert_close(p.detach(), b * (1 - 0.1 * 0.5), rtol=1e-12, atol=0)
    # AdamW's decoupled decay is not the loss penalty under Adam
    decoupled = _train(lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.3), 0.0)
    penalty = _train(lambda ps: torch.optim.Adam(ps, lr=0.01), 0.3)
    assert max((p - q).abs().max().item() for p, q in zip(decoupled, penalty)) > 1e-3


# -------------------------------------------------------------------------- param groups
class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 6, 3)
        self.bn = nn.BatchNorm1d(6)
        self.act = nn.PReLU()
        self.fc = nn.Linear(6, 6)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 10, bias=False)


def _names(model, group):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return sorted(by_id[id(p)] for p in group["params"])


def test_param_groups_default():
    model = Model()
    groups = param_groups(model, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert _names(model, groups[0]) == ["conv.weight", "embed.weight", "fc.weight", "head.weight"]
    assert _names(model, groups[1]) == [
        "act.weight",
        "bn.bias",
        "bn.weight",
        "conv.bias",
        "fc.bias",
        "ln.bias",
        "ln.weight",
    ]
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(model.parameters()))


def test_param_groups_custom_rules_and_shared_params():
    model = Model()
    groups = param_groups(model, 0.1, no_decay=["*.bias", "embed.*"])
    assert "embed.weight" in _names(model, groups[1])
    assert "bn.weight" in _names(model, groups[0])
    groups = param_groups(model, 0.1, no_decay=lambda name, p, m: isinstance(m, nn.Linear))
    assert _names(model, groups[1]) == ["fc.bias", "fc.weight", "head.weight"]
    # a tied parameter appears once; an empty group is left out
    tied = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    tied[1].weight = tied[0].weight
    groups = param_groups(tied, 0.1)
    assert len(groups) == 1 and len(groups[0]["params"]) == 1


def test_param_groups_in_an_optimizer_spare_biases_and_norms():
    # with zero gradients AdamW only decays: θ ← θ·(1 − lr·λ) for the first group, nothing else
    model = Model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(param_groups(model, 0.5), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    decayed = {"conv.weight", "embed.weight", "fc.weight", "head.weight"}
    for n, p in model.named_parameters():
        factor = 1 - 0.1 * 0.5 if n in decayed else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor, rtol=1e-6, atol=0)


def test_param_groups_with_gradwise_optim():
    optim = pytest.importorskip("gradwise.optim")
    model = Model()
    opt = optim.AdamW(param_groups(model, 0.01), lr=1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]


def test_is_norm_layer_and_default_rule():
    assert is_norm_layer(nn.BatchNorm2d(3)) and is_norm_layer(nn.GroupNorm(1, 4))
    assert is_norm_layer(nn.InstanceNorm1d(3)) and is_norm_layer(nn.LayerNorm(3))
    assert not is_norm_layer(nn.Linear(2, 2))
    lin = nn.Linear(2, 2)
    assert default_no_decay("bias", lin.bias, lin)
    assert not default_no_decay("weight", lin.weight, lin)


def test_param_groups_errors():
    with pytest.raises(ValueError, match=r"^param_groups: weight_decay must be >= 0"):
        param_groups(nn.Linear(2, 2), -0.1)
    with pytest.raises(TypeError, match=r"^param_groups: model must be a torch.nn.Module"):
        param_groups([torch.ones(2)], 0.1)
    with pytest.raises(ValueError, match=r"no_decay must be one of 'auto'; received no_decay='x'"):
        param_groups(nn.Linear(2, 2), 0.1, no_decay="x")
    with pytest.raises(TypeError, match=r"no_decay\[0\] must be a string"):
        param_groups(nn.Linear(2, 2), 0.1, no_decay=[1])


# ----------------------------------------------------------- L1: proximal vs penalty
N, D, SUPPORT = 200, 50, [3, 11, 20, 33, 47]
LR, LAM, STEPS = 0.2, 0.05, 1000


@pytest.fixture(scope="module")
def sparse_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, dtype=torch.float64, generator=g)
    w = torch.zeros(D, dtype=torch.float64)
    w[SUPPORT] = torch.tensor([1.5, -2.0, 1.0, -1.2, 0.8], dtype=torch.float64)
    y = x @ w + 0.1 * torch.randn(N, dtype=torch.float64, generator=g)
    return x, y


def _lasso_coordinate_descent(x: np.ndarray, y: np.ndarray, lam: float, sweeps=500) -> np.ndarray:
    """Independent reference: argmin 1/(2n)·‖Xθ − y‖² + λ‖θ‖₁ by cyclic coordinate descent."""
    n, d = x.shape
    theta = np.zeros(d)
    col_sq = (x**2).sum(0) / n
    residual = y - x @ theta
    for _ in range(sweeps):
        for j in range(d):
            residual += x[:, j] * theta[j]
            rho = x[:, j] @ residual / n
            theta[j] = np.sign(rho) * max(abs(rho) - lam, 0.0) / col_sq[j]
            residual -= x[:, j] * theta[j]
    return theta


def _fit(x, y, l1_arg: float, penalty: float):
    optim = pytest.importorskip("gradwise.optim")
    theta = torch.zeros(D, dtype=torch.float64, requires_grad=True)
    opt = optim.SGD([theta], lr=LR, l1=l1_arg)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = 0.5 * ((x @ theta - y) ** 2).mean()
        if penalty:
            loss = loss + l1_penalty([theta], penalty)
        loss.backward()
        opt.step()
    return theta.detach()


def test_proximal_l1_recovers_support_with_exact_zeros(sparse_problem):
    x, y = sparse_problem
    theta = _fit(x, y, l1_arg=LAM, penalty=0.0)
    assert torch.nonzero(theta).flatten().tolist() == SUPPORT
    assert int((theta == 0).sum()) == D - len(SUPPORT)  # 45 exact zeros
    # it is the Lasso solution (ISTA converges to it)
    reference = _lasso_coordinate_descent(x.numpy(), y.numpy(), LAM)
    np.testing.assert_allclose(theta.numpy(), reference, rtol=0, atol=1e-8)
    assert np.count_nonzero(reference) == len(SUPPORT)


def test_l1_penalty_in_the_loss_gives_no_exact_zeros(sparse_problem):
    x, y = sparse_problem
    theta = _fit(x, y, l1_arg=0.0, penalty=LAM)
    assert int((theta == 0).sum()) == 0
    # the same objective: the true weights are found, but the other 45 only jitter near zero
    reference = _lasso_coordinate_descent(x.numpy(), y.numpy(), LAM)
    np.testing.assert_allclose(theta.numpy()[SUPPORT], reference[SUPPORT], atol=0.02)
    off = np.setdiff1d(np.arange(D), SUPPORT)
    assert np.abs(theta.numpy()[off]).max() <= 2 * LR * LAM  # a subgradient step wide

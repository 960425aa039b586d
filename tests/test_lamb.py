"""LAMB against its reference implementation, ``pytorch_optimizer.Lamb`` (a test dependency)."""

from __future__ import annotations

import pytest
import torch

import gradwise.optim as go

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")

#: each argument at its default and at one other value (rectify's threshold and its SGD
#: fallback with rectify on, which they need)
GRID = [
    dict(),
    dict(lr=3e-3),
    dict(betas=(0.8, 0.99)),
    dict(weight_decay=0.1),
    dict(weight_decay=0.1, weight_decouple=False),
    dict(weight_decay=0.1, fixed_decay=True),
    dict(rectify=True),
    dict(rectify=True, degenerated_to_sgd=True),
    dict(rectify=True, n_sma_threshold=8),
    dict(grad_averaging=False),
    dict(pre_norm=True),
    dict(pre_norm=True, max_grad_norm=0.0),
    dict(adam=True),
    dict(eps=1e-3),
    dict(foreach=False),
    dict(maximize=True),
    dict(adam_debias=True),
]
#: a large tensor (updated where its gradient lies), small ones gathered, an all-zero one
#: (trust ratio 1), a zero-size one
SHAPES = [(257, 256), (64, 33), (17,), (5, 5), (1,), (0, 3)]
STEPS = 22
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-14)}


def params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    values = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    values[2].zero_()
    return (
        [torch.nn.Parameter(v.clone()) for v in values],
        [torch.nn.Parameter(v.clone()) for v in values],
    )


def lockstep(ours, ref, a, b, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for i in range(steps):
        for x, y in zip(a, b):
            g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
            x.grad, y.grad = g.clone(), g.clone()  # the reference scales its grads in place
        if i == 3:  # a missing gradient: that parameter is left alone, as in the reference
            a[3].grad = b[3].grad = None
        ours.step()
        ref.step()


def assert_same(ours, ref, a, b, tol):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, **tol)
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours.state[x][name], ref.state[y][name], **tol)
    assert [g["step"] for g in ours.param_groups] == [g["step"] for g in ref.param_groups]


@pytest.mark.parametrize("kw", GRID, ids=[str(k) or "defaults" for k in GRID])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lamb_equals_pytorch_optimizer(kw, dtype):
    a, b = params(dtype)
    ours, ref = go.Lamb(a, **kw), pytorch_optimizer.Lamb(b, **kw)
    lockstep(ours, ref, a, b, STEPS)
    assert_same(ours, ref, a, b, TOL[dtype])


def test_trust_ratio_scales_each_tensor_by_its_own_norms():
    """Steps with β = 0: u = g/(|g| + ε) = ±1, so each tensor moves by lr·‖θ‖/‖u‖ per
    element: its own ratio, whatever else shares the flat buffer."""
    w1 = torch.nn.Parameter(torch.full((4,), 3.0))  # ‖θ‖ = 6, ‖u‖ = 2: ratio 3
    w2 = torch.nn.Parameter(torch.full((9,), 0.5))  # ‖θ‖ = 1.5, ‖u‖ = 3: ratio 0.5
    opt = go.Lamb([w1, w2], lr=0.1, betas=(0.0, 0.0), eps=0.0)
    for step in range(1, 4):  # the first step per tensor; then flat, alignment gaps between
        w1.grad, w2.grad = torch.ones(4), -torch.ones(9)
        opt.step()
        # r·lr = 0.1·‖θ‖/‖u‖ per element: θ ← 0.9·θ and θ ← 1.1·θ; with eps = 0 a gap's 0/0
        # must not reach these norms
        torch.testing.assert_close(w1.detach(), torch.full((4,), 3.0 * 0.9**step))
        torch.testing.assert_close(w2.detach(), torch.full((9,), 0.5 * 1.1**step))


def test_state_dicts_interchange_both_ways():
    kw = dict(lr=1e-2, weight_decay=0.01)
    a, b = params(torch.float32)
    ours, ref = go.Lamb(a, **kw), pytorch_optimizer.Lamb(b, **kw)
    lockstep(ours, ref, a, b, 3)
    a2, b2 = (
        [torch.nn.Parameter(x.detach().clone()) for x in a],
        [torch.nn.Parameter(y.detach().clone()) for y in b],
    )
    ours2, ref2 = go.Lamb(a2, **kw), pytorch_optimizer.Lamb(b2, **kw)
    ours2.load_state_dict(ref.state_dict())  # the reference's checkpoint into gradwise
    ref2.load_state_dict(ours.state_dict())  # and gradwise's into the reference
    assert "trust_ratio" not in ours2.state[a2[0]]  # the reference's diagnostics, dropped
    lockstep(ours2, ref2, a2, b2, 4, seed=2)
    assert_same(ours2, ref2, a2, b2, TOL[torch.float32])


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        (dict(adanorm=True), NotImplementedError, "adanorm=True is refused"),
        (dict(adanorm_r=0.9), NotImplementedError, "adanorm_r=0.9 is refused"),
        (dict(cautious=True), TypeError, "unexpected keyword argument cautious=True"),
        (dict(lr=-1.0), ValueError, r"lr must be >= 0; received lr=-1.0"),
        (dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be in \[0, 1\)"),
        (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm must be >= 0"),
        (dict(eps=-1.0), ValueError, "eps must be >= 0"),
        (dict(rectify=1), TypeError, "rectify must be True or False"),
    ],
)
def test_what_is_refused(kw, error, match):
    with pytest.raises(error, match=match):
        go.Lamb([torch.nn.Parameter(torch.zeros(2))], **kw)

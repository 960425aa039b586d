"""Lion against its reference implementation, ``lion-pytorch`` (a test dependency)."""

from __future__ import annotations

import pytest
import torch

import gradwise.optim as go

lion_pytorch = pytest.importorskip("lion_pytorch")

GRID = [
    dict(),
    dict(lr=3e-3),
    dict(lr=1e-3, betas=(0.95, 0.98)),
    dict(lr=1e-3, weight_decay=0.1),
    dict(lr=1e-3, betas=(0.8, 0.999), weight_decay=1.0),
]
SHAPES = [(64, 33), (17,), (5, 5), (1,)]


def params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    values = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    return (
        [torch.nn.Parameter(v.clone()) for v in values],
        [torch.nn.Parameter(v.clone()) for v in values],
    )


def lockstep(ours, ref, a, b, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for i in range(steps):
        for x, y in zip(a, b):
            g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
            x.grad, y.grad = g.clone(), g.clone()
        if i == 3:  # a missing gradient: that parameter is left alone, as in the reference
            a[1].grad = b[1].grad = None
        ours.step()
        ref.step()


@pytest.mark.parametrize("kw", GRID, ids=[str(k) or "defaults" for k in GRID])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lion_equals_lion_pytorch(kw, dtype):
    a, b = params(dtype)
    ours, ref = go.Lion(a, **kw), lion_pytorch.Lion(b, **kw)
    lockstep(ours, ref, a, b, 8)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
        torch.testing.assert_close(
            ours.state[x]["exp_avg"], ref.state[y]["exp_avg"], rtol=0, atol=0
        )


def test_state_dicts_interchange_both_ways():
    a, b = params(torch.float32)
    ours, ref = go.Lion(a, lr=1e-3), lion_pytorch.Lion(b, lr=1e-3)
    lockstep(ours, ref, a, b, 3)
    a2, b2 = (
        [torch.nn.Parameter(x.detach().clone()) for x in a],
        [torch.nn.Parameter(y.detach().clone()) for y in b],
    )
    ours2, ref2 = go.Lion(a2, lr=1e-3), lion_pytorch.Lion(b2, lr=1e-3)
    ours2.load_state_dict(ref.state_dict())  # the reference's checkpoint into gradwise
    ref2.load_state_dict(ours.state_dict())  # and gradwise's into the reference
    lockstep(ours2, ref2, a2, b2, 3, seed=2)
    for x, y in zip(a2, b2):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_every_coordinate_moves_by_the_learning_rate():
    """The sign update: from zero momentum, each coordinate moves by exactly lr, against its
    gradient."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    w.grad = torch.tensor([0.5, -1e-6, 40.0])
    go.Lion([w], lr=0.25).step()
    assert w.detach().tolist() == [0.75, -1.75, 2.75]


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        (dict(use_triton=True), NotImplementedError, "use_triton=True is refused"),
        (dict(decoupled_weight_decay=True), NotImplementedError, "decoupled_weight_decay"),
        (dict(lr=0.0), ValueError, r"lr must be > 0; received lr=0.0"),
        (dict(betas=(0.9, 1.5)), ValueError, r"betas\[1\] must be in \[0, 1\)"),
    ],
)
def test_what_is_refused(kw, error, match):
    with pytest.raises(error, match=match):
        go.Lion([torch.nn.Parameter(torch.zeros(2))], **kw)
    with pytest.raises(TypeError, match="complex parameters"):
        go.Lion([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))])

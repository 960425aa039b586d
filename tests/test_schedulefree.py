"""Schedule-Free AdamW and SGD against their reference implementation, ``schedulefree`` (a test
dependency), and their train()/eval() switch inside ``fit()``."""

from __future__ import annotations

import pytest
import torch

import gradwise.optim as go
from gradwise.train import fit

schedulefree = pytest.importorskip("schedulefree")

ADAMW_GRID = [
    dict(),
    dict(lr=0.01),
    dict(betas=(0.95, 0.98)),
    dict(eps=1e-3),
    dict(weight_decay=0.1),
    dict(warmup_steps=7),
    dict(r=1.0),
    dict(weight_lr_power=0.0),
    dict(lr=0.02, betas=(0.5, 0.9), weight_decay=0.5, warmup_steps=3, r=0.5),
]
SGD_GRID = [
    dict(),
    dict(lr=0.1),
    dict(momentum=0.5),
    dict(weight_decay=0.1),
    dict(warmup_steps=7),
    dict(r=1.0),
    dict(weight_lr_power=1.0),
    dict(lr=0.05, momentum=0.8, weight_decay=0.3, warmup_steps=4, r=2.0),
]
CASES = [("AdamWScheduleFree", kw) for kw in ADAMW_GRID] + [
    ("SGDScheduleFree", kw) for kw in SGD_GRID
]
SHAPES = [(64, 33), (17,), (5, 5), (1,), (0, 3)]
STEPS = 24


def params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    values = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in SHAPES]
    return (
        [torch.nn.Parameter(v.clone()) for v in values],
        [torch.nn.Parameter(v.clone()) for v in values],
    )


def lockstep(ours, ref, a, b, steps, seed=1, start=0):
    gen = torch.Generator().manual_seed(seed)
    for i in range(start, start + steps):
        for x, y in zip(a, b):
            g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
            x.grad, y.grad = g.clone(), g.clone()  # the reference divides its grad in place
        if i == 3:  # a missing gradient: that parameter is left alone, as in the reference
            a[1].grad = b[1].grad = None
        ours.step()
        ref.step()
        if i % 10 == 9:  # an evaluation in between: to x and back to y
            ours.eval(), ref.eval()
            ours.train(), ref.train()


def assert_same(ours, ref, a, b, tol):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)
        assert set(ours.state[x]) == set(ref.state[y])
        for name in ref.state[y]:
            torch.testing.assert_close(ours.state[x][name], ref.state[y][name], rtol=tol, atol=tol)
    for g, h in zip(ours.param_groups, ref.param_groups):
        for key in ("k", "weight_sum", "lr_max", "scheduled_lr", "train_mode"):
            assert g[key] == h[key], key


@pytest.mark.parametrize(("name", "kw"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_the_reference(name, kw, dtype):
    a, b = params(dtype)
    ours, ref = getattr(go, name)(a, **kw), getattr(schedulefree, name)(b, **kw)
    ours.train(), ref.train()
    lockstep(ours, ref, a, b, STEPS)
    assert_same(ours, ref, a, b, 0)  # the same operations in the same order: bit-identical
    ours.eval(), ref.eval()
    assert_same(ours, ref, a, b, 0)


@pytest.mark.parametrize("name", ["AdamWScheduleFree", "SGDScheduleFree"])
def test_state_dicts_interchange_both_ways(name):
    kw = dict(lr=0.01, weight_decay=0.1, warmup_steps=2)
    a, b = params(torch.float32)
    ours, ref = getattr(go, name)(a, **kw), getattr(schedulefree, name)(b, **kw)
    ours.train(), ref.train()
    lockstep(ours, ref, a, b, 5)
    ours.eval(), ref.eval()  # checkpoints are taken in eval mode
    a2, b2 = (
        [torch.nn.Parameter(x.detach().clone()) for x in a],
        [torch.nn.Parameter(y.detach().clone()) for y in b],
    )
    ours2, ref2 = getattr(go, name)(a2, **kw), getattr(schedulefree, name)(b2, **kw)
    ours2.load_state_dict(ref.state_dict())  # the reference's checkpoint into gradwise
    ref2.load_state_dict(ours.state_dict())  # and gradwise's into the reference
    ours2.train(), ref2.train()
    lockstep(ours2, ref2, a2, b2, 6, seed=2, start=5)
    ours2.eval(), ref2.eval()
    assert_same(ours2, ref2, a2, b2, 0)


def test_step_in_eval_mode_is_refused_and_train_eval_round_trip():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = go.AdamWScheduleFree([w], lr=0.1)
    w.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="eval mode.*optimizer.train()"):
        opt.step()
    opt.train()
    opt.step()
    w.grad = torch.tensor([1.0, -3.0])
    opt.step()
    y = w.detach().clone()
    opt.eval()
    assert not torch.equal(w, y)  # x differs from y once z moved
    opt.eval()  # a second eval() changes nothing
    opt.train()
    torch.testing.assert_close(w.detach(), y)


@pytest.mark.parametrize(
    ("cls", "kw", "error", "match"),
    [
        (go.SGDScheduleFree, dict(momentum=1.0), ValueError, r"momentum must be in \(0, 1\)"),
        (go.SGDScheduleFree, dict(momentum=0.0), ValueError, "momentum must be in"),
        (go.AdamWScheduleFree, dict(betas=(0.0, 0.9)), ValueError, r"betas\[0\] must be in \(0,"),
        (go.AdamWScheduleFree, dict(warmup_steps=1.5), TypeError, "warmup_steps"),
        (go.AdamWScheduleFree, dict(lr=-1.0), ValueError, "lr must be >= 0"),
        (go.AdamWScheduleFree, dict(weight_decay=-1.0), ValueError, "weight_decay"),
        (go.AdamWScheduleFree, dict(eps=-1.0), ValueError, "eps"),
    ],
)
def test_what_is_refused(cls, kw, error, match):
    with pytest.raises(error, match=match):
        cls([torch.nn.Parameter(torch.zeros(2))], **kw)


def test_fit_trains_at_y_and_evaluates_checkpoints_and_returns_x(tmp_path):
    """fit() switches the optimizer: steps at y, then validation, the checkpoint and the model
    it returns at x, exactly what a hand-written loop with train()/eval() gets."""
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Linear(5, 2)
    twin = torch.nn.Linear(5, 2)
    twin.load_state_dict(model.state_dict())
    opt = go.AdamWScheduleFree(model.parameters(), lr=0.05, weight_decay=0.01)
    history = fit(
        model,
        (x, y),
        val=(x, y),
        optimizer=opt,
        epochs=2,
        batch_size="full",
        progress=False,
        checkpoint_dir=tmp_path,
    )
    assert not opt.param_groups[0]["train_mode"]  # fit() ends in eval mode

    by_hand = schedulefree.AdamWScheduleFree(twin.parameters(), lr=0.05, weight_decay=0.01)
    losses = []
    for _ in range(2):
        by_hand.train()
        twin.zero_grad()
        torch.nn.functional.cross_entropy(twin(x), y).backward()
        by_hand.step()
        by_hand.eval()
        with torch.no_grad():
            losses.append(torch.nn.functional.cross_entropy(twin(x), y).item())
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    val = [row["val_loss"] for row in history.epochs]
    assert val == pytest.approx(losses, rel=1e-5)

    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    for key, value in twin.state_dict().items():  # the checkpoint holds x
        torch.testing.assert_close(saved[key], value, rtol=1e-6, atol=1e-7)

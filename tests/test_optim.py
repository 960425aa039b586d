"""gradwise.optim against torch.optim, the spec's equations, and each other."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gradwise.optim as go
from gradwise.optim import torch_api

# (name, gradwise class, torch class, kwargs): every option of every optimizer.
GRID = [
    ("sgd", go.SGD, torch.optim.SGD, dict(lr=0.05)),
    ("sgd-momentum", go.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    ("sgd-dampening", go.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("sgd-nesterov", go.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("sgd-wd-max", go.SGD, torch.optim.SGD, dict(lr=0.05, weight_decay=0.1, maximize=True)),
    ("adagrad", go.Adagrad, torch.optim.Adagrad, dict(lr=0.1)),
    (
        "adagrad-all",
        go.Adagrad,
        torch.optim.Adagrad,
        dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.2, eps=1e-6),
    ),
    ("adagrad-max", go.Adagrad, torch.optim.Adagrad, dict(lr=0.1, maximize=True)),
    ("rmsprop", go.RMSprop, torch.optim.RMSprop, dict(lr=0.01)),
    ("rmsprop-centered", go.RMSprop, torch.optim.RMSprop, dict(lr=0.01, centered=True)),
    ("rmsprop-momentum", go.RMSprop, torch.optim.RMSprop, dict(lr=0.01, momentum=0.9)),
    (
        "rmsprop-all",
        go.RMSprop,
        torch.optim.RMSprop,
        dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1, momentum=0.5, centered=True),
    ),
    ("rmsprop-max", go.RMSprop, torch.optim.RMSprop, dict(lr=0.01, maximize=True)),
    ("adam", go.Adam, torch.optim.Adam, dict(lr=0.01)),
    ("adam-amsgrad", go.Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True)),
    (
        "adam-all",
        go.Adam,
        torch.optim.Adam,
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True, maximize=True),
    ),
    ("adamw", go.AdamW, torch.optim.AdamW, dict(lr=0.01)),
    ("adamw-all", go.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
]
IDS = [g[0] for g in GRID]
SHAPES = [(4, 3), (7,), (0,), (2, 3, 2), (1,)]
TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def make_params(dtype=torch.float32, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def twins(values):
    return (
        [torch.nn.Parameter(v.clone()) for v in values],
        [torch.nn.Parameter(v.clone()) for v in values],
    )


def set_grads(a, b, gen, none=()):
    for i, (x, y) in enumerate(zip(a, b)):
        if i in none:
            x.grad = y.grad = None
            continue
        g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
        x.grad, y.grad = g.clone(), g.clone()


def assert_close(x, y, dtype, what=""):
    if x.numel() == 0:
        return
    x, y = x.double(), y.double()
    scale = max(1.0, y.abs().max().item())
    err = (x - y).abs().max().item() / scale
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:g}"


def assert_same_state(oa, ob, a, b, dtype):
    for x, y in zip(a, b):
        assert_close(x.detach(), y.detach(), dtype, "param")
        sb = ob.state.get(y, {})
        sa = oa.state.get(x, {})
        assert set(sa) == set(sb), (set(sa), set(sb))
        for k, v in sb.items():
            assert_close(sa[k], v, dtype, f"state {k}")


def run_lockstep(oa, ob, a, b, steps, gen, none_at=None):
    for i in range(steps):
        set_grads(a, b, gen, none=none_at(i) if none_at else ())
        oa.step()
        ob.step()


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_with_torch(name, cls, tcls, kw, dtype):
    a, b = twins(make_params(dtype))
    oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
    gen = torch.Generator().manual_seed(1)
    # param 1 has no gradient on steps 3 and 10..12: skipped exactly as PyTorch skips it
    run_lockstep(oa, ob, a, b, 30, gen, none_at=lambda i: (1,) if i == 3 or 10 <= i <= 12 else ())
    assert_same_state(oa, ob, a, b, dtype)


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID[::3], ids=IDS[::3])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_parity_low_precision(name, cls, tcls, kw, dtype):
    a, b = twins(make_params(dtype))
    oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
    run_lockstep(oa, ob, a, b, 25, torch.Generator().manual_seed(2))
    assert_same_state(oa, ob, a, b, dtype)


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID, ids=IDS)
def test_param_groups_and_add_param_group(name, cls, tcls, kw):
    vals = make_params(torch.float64)
    a, b = twins(vals)
    extra = {"lr": kw["lr"] * 3, "weight_decay": 0.05}
    oa = cls([{"params": a[:2]}, {"params": a[2:4], **extra}], **kw)
    ob = tcls([{"params": b[:2]}, {"params": b[2:4], **extra}], foreach=False, **kw)
    gen = torch.Generator().manual_seed(3)
    run_lockstep(oa, ob, a[:4], b[:4], 10, gen)
    oa.add_param_group({"params": [a[4]], "lr": kw["lr"] / 2})
    ob.add_param_group({"params": [b[4]], "lr": kw["lr"] / 2})
    run_lockstep(oa, ob, a, b, 15, gen)
    assert_same_state(oa, ob, a, b, torch.float64)


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID, ids=IDS)
def test_grads_from_zero_grad_views_and_backward(name, cls, tcls, kw):
    """A real training loop: zero_grad(set_to_none=False) then backward into the flat buffer."""
    torch.manual_seed(0)
    net_a = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    net_b = copy.deepcopy(net_a)
    oa, ob = cls(net_a.parameters(), **kw), tcls(net_b.parameters(), foreach=False, **kw)
    x, y = torch.randn(32, 6), torch.randn(32, 2)
    for _ in range(20):
        for net, opt in ((net_a, oa), (net_b, ob)):
            opt.zero_grad(set_to_none=False)
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    assert_same_state(oa, ob, list(net_a.parameters()), list(net_b.parameters()), torch.float32)
    seg = next(iter(oa._segments.values()))[1][0]
    assert seg.flat and seg.grads_are_views()  # the fast path ran with no gradient copy


LARGE = [(301, 300), (17,), (5, 5), (256, 300), (3,)]  # two tensors of >= DIRECT_NUMEL elements
FROZEN = GRID + [
    ("nadam", go.NAdam, torch.optim.NAdam, dict()),
    ("asgd", go.ASGD, torch.optim.ASGD, dict(t0=3)),
]


@pytest.mark.parametrize(
    ("name", "cls", "tcls", "kw"), FROZEN[::3], ids=[g[0] for g in FROZEN[::3]]
)
@pytest.mark.parametrize("missing", [1, 0], ids=["a-small-one-misses", "the-largest-misses"])
def test_a_flat_segment_parted_keeps_its_largest_part_where_it_lies(name, cls, tcls, kw, missing):
    """A parameter of a flat segment that misses a gradient parts the segment: the largest
    part stays in the segment's buffers (no second copy of it, even for a moment), the others
    move to buffers of their own, and both step flat from then on, with the default
    ``zero_grad()`` and then with ``set_to_none=False`` (the kept part's gradients then views
    of a buffer with gaps where the moved tensors were). Against torch for 10 steps."""
    a, b = twins(make_params(torch.float64, LARGE))
    oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
    gen = torch.Generator().manual_seed(6)
    run_lockstep(oa, ob, a, b, 3, gen)
    (whole,) = oa._group_segments(oa.param_groups[0])
    buffers = [whole.param.data_ptr(), *(t.data_ptr() for t in whole.state.values())]
    run_lockstep(oa, ob, a, b, 1, gen, none_at=lambda _: {missing})
    size = {id(p): p.numel() for p in a}
    kept, moved = sorted(
        oa._group_segments(oa.param_groups[0]), key=lambda s: -sum(size[id(p)] for p in s.params)
    )
    assert kept.flat and moved.flat
    assert [kept.param.data_ptr(), *(t.data_ptr() for t in kept.state.values())] == buffers
    assert moved.param.data_ptr() not in buffers
    for p in moved.params:  # their old places: zeros, as between aligned tensors
        gap = whole.slices[next(i for i, q in enumerate(a) if q is p)]
        assert all(not t[gap].any() for t in (kept.param, *kept.state.values()))
    # the largest tensor (301 x 300) missing a step keeps the buffers alone, with no small
    # tensor: it has no small piece to step (its next step raised before)
    assert kept.small == (0 if missing == 0 else whole.small)
    run_lockstep(oa, ob, a, b, 2, gen)
    for _ in range(4):
        oa.zero_grad(set_to_none=False)
        ob.zero_grad(set_to_none=False)
        for x, y in zip(a, b):
            g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            x.grad.copy_(g)
            y.grad.copy_(g)
        oa.step()
        ob.step()
    assert kept.grads_are_views() and moved.grads_are_views()
    assert_same_state(oa, ob, a, b, torch.float64)


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID, ids=IDS)
@pytest.mark.parametrize("count", [2, 40], ids=["python-check", "native-check"])
def test_a_step_without_any_gradient_changes_nothing(name, cls, tcls, kw, count):
    """Once laid out flat, a segment whose gradients are all None at a step (a head not used
    on this batch, in a param group of its own) is left alone, as torch leaves it. Before the
    fix, the layout check without the native helpers (segments of few tensors) took "every
    gradient is its view of the flat buffer" to hold when there were no views and no
    gradients, and the step ran on the gradients of the step before."""
    a, b = twins(make_params(torch.float64, [(3, 2)] * count))
    oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
    gen = torch.Generator().manual_seed(4)
    run_lockstep(oa, ob, a, b, 6, gen, none_at=lambda i: range(count) if i >= 3 else ())
    assert_same_state(oa, ob, a, b, torch.float64)
    assert all(s.flat for s in oa._group_segments(oa.param_groups[0]))


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID[1::4], ids=IDS[1::4])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_channels_last_parameters_keep_their_memory_format(name, cls, tcls, kw, set_to_none):
    """A conv net in ``channels_last`` stays in it: each parameter moves into the flat buffers
    laid out as it was, its state and gradient views too (before, the first step made every
    weight row-major). One weight of 82,944 elements runs the fused kernel; the small ones are
    gathered (the native helpers vouch for contiguous gradients only). Against torch."""
    torch.manual_seed(0)
    net_a = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 96, 3),
        torch.nn.Conv2d(96, 96, 3),
    )
    net_a = net_a.double().to(memory_format=torch.channels_last)
    net_b = copy.deepcopy(net_a)
    oa, ob = cls(net_a.parameters(), **kw), tcls(net_b.parameters(), foreach=False, **kw)
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64).to(memory_format=torch.channels_last)
    for _ in range(6):
        for net, opt in ((net_a, oa), (net_b, ob)):
            opt.zero_grad(set_to_none=set_to_none)
            net(x).square().mean().backward()
            opt.step()
    a, b = list(net_a.parameters()), list(net_b.parameters())
    assert_same_state(oa, ob, a, b, torch.float64)
    assert all(s.flat for s in oa._group_segments(oa.param_groups[0]))
    for p, q in zip(a, b):
        tensors = [p, p.grad, *(v for k, v in oa.state[p].items() if k != "step")]
        assert all(t.stride() == q.stride() for t in tensors), [t.stride() for t in tensors]


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID, ids=IDS)
def test_a_model_moved_to_another_dtype_takes_its_state_along(name, cls, tcls, kw):
    """``model.double()`` after some steps: each state tensor follows its parameter's new
    dtype, as ``load_state_dict`` casts it (torch's optimizers raise a dtype mismatch here; kept
    in float32, every moment would be rounded to it at every step). Against torch with its
    state cast that way; a group's ``state_dtype`` still wins."""
    torch.manual_seed(0)
    net_a = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    net_b = copy.deepcopy(net_a)
    oa, ob = cls(net_a.parameters(), **kw), tcls(net_b.parameters(), foreach=False, **kw)
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    for step in range(6):
        if step == 3:
            net_a.double(), net_b.double()
            ob.load_state_dict(ob.state_dict())  # torch's way to cast its state
        for net, opt in ((net_a, oa), (net_b, ob)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x.to(net[0].weight.dtype)), y.to(x.dtype)).backward()
            opt.step()
    a, b = list(net_a.parameters()), list(net_b.parameters())
    assert_same_state(oa, ob, a, b, torch.float64)
    for p in a:
        assert all(v.dtype == torch.float64 for k, v in oa.state[p].items() if k != "step")
    p = torch.nn.Parameter(torch.randn(5))
    opt = cls([p], state_dtype=torch.bfloat16, **kw)
    for _ in range(2):
        p.grad = torch.randn(5, dtype=p.dtype)
        opt.step()
        p.data = p.data.double()
    names = opt.state_names(opt.param_groups[0])
    assert all(opt.state[p][n].dtype == torch.bfloat16 for n in names)


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), FROZEN, ids=[g[0] for g in FROZEN])
@pytest.mark.parametrize("shapes", [SHAPES, LARGE], ids=["small", "kernel"])
def test_frozen_parameters_are_parted_off_and_the_rest_steps_flat(name, cls, tcls, kw, shapes):
    """Parameters handed to the optimizer that get no gradient (a frozen backbone) become a
    segment of their own: the others are laid out and stepped flat from their first step, as
    if the frozen ones were not there (every step ran per tensor before, 4x slower than torch
    fused on a 1,200-tensor net). Unfrozen one by one later, each is laid out in turn. Against
    torch for 12 steps, every state tensor compared; ``kernel``: parts large enough for the
    fused kernel."""
    a, b = twins(make_params(torch.float64, shapes))
    oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
    gen = torch.Generator().manual_seed(5)
    frozen = lambda i: {0, 3} if i < 4 else {3} if i < 8 else set()  # noqa: E731
    for i in range(12):
        set_grads(a, b, gen, none=frozen(i))
        oa.step()
        ob.step()
        segments = oa._group_segments(oa.param_groups[0])
        if i in (0, 4, 8):  # the ones stepped so far lie in flat segments, the frozen in none
            stepped = {id(p) for j, p in enumerate(a) if j not in frozen(i)}
            assert {id(p) for s in segments if s.flat for p in s.params} == stepped
            assert not any(s.flat for s in segments if {id(p) for p in s.params} - stepped)
    assert_same_state(oa, ob, a, b, torch.float64)
    assert len(segments) == 3 and all(s.flat for s in segments)


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID[::2], ids=IDS[::2])
def test_large_tensors_are_updated_where_their_gradient_lies(name, cls, tcls, kw):
    """With the default zero_grad(), large tensors are updated from the gradient backward made
    (no copy, no gradient buffer of their size), small ones from one gathered buffer: bit for bit
    torch's numbers; zero_grad(set_to_none=False) then makes every gradient a view."""
    from gradwise.optim import engine

    a, b = twins(make_params(torch.float32, shapes=LARGE))
    oa, ob = cls(a, fused=False, **kw), tcls(b, foreach=False, **kw)
    gen = torch.Generator().manual_seed(3)
    run_lockstep(oa, ob, a, b, 4, gen)
    seg = oa._group_segments(oa.param_groups[0])[0]
    small = sum(p.numel() for p in a if p.numel() < engine.DIRECT_NUMEL)
    assert seg.flat and small <= seg.small < small + 16 * 3 and seg.grad.numel() == seg.small
    assert [p for p, _ in seg.large] == [a[0], a[3]]
    kept = a[0].grad
    oa.step()
    ob.step()
    assert a[0].grad is kept  # used where it lies
    assert_same_state(oa, ob, a, b, torch.float32)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    oa.zero_grad(set_to_none=False)
    assert seg.grad.numel() == seg.param.numel() >= sum(p.numel() for p in a)
    assert seg.grads_are_views()
    for _ in range(3):
        for x, y in zip(a, b):
            g = torch.randn(x.shape, generator=gen)
            x.grad.copy_(g)  # into the views
            y.grad = g.clone()
        oa.step()
        ob.step()
    assert_same_state(oa, ob, a, b, torch.float32)


def test_zero_grad_semantics():
    a = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    opt = go.Adam(a)
    for _ in range(2):
        a[0].grad, a[1].grad = torch.ones(3), torch.ones(2)
        opt.step()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in a)
    opt.zero_grad()
    assert all(p.grad is None for p in a)
    b = [torch.nn.Parameter(torch.ones(3))]
    go.SGD(b, lr=0.1).zero_grad(set_to_none=False)
    assert b[0].grad is None  # None stays None, as in PyTorch


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID[::2], ids=IDS[::2])
def test_closure_returns_loss(name, cls, tcls, kw):
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = cls([w], **kw)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(5.0)


@pytest.mark.parametrize("direction", ["torch->gradwise", "gradwise->torch"])
@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID, ids=IDS)
def test_state_dict_interchange(name, cls, tcls, kw, direction):
    """A state saved by one library loads into the other; both then continue in lockstep."""
    vals = make_params(torch.float64)
    first, second = (tcls, cls) if direction == "torch->gradwise" else (cls, tcls)
    kw_first = dict(kw, foreach=False) if first is tcls else kw
    kw_second = dict(kw, foreach=False) if second is tcls else kw
    a, b = twins(vals)
    oa = first(a, **kw_first)
    gen = torch.Generator().manual_seed(4)
    for _ in range(7):
        for p in a:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        oa.step()
    buf = io.BytesIO()
    torch.save(oa.state_dict(), buf)
    buf.seek(0)
    for p, q in zip(a, b):
        q.data.copy_(p.data)
    ob = second(b, **kw_second)
    ob.load_state_dict(torch.load(buf, weights_only=True))
    run_lockstep(oa, ob, a, b, 10, gen)
    assert_same_state(oa, ob, a, b, torch.float64)


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID[::4], ids=IDS[::4])
def test_torch_lr_scheduler_drives_gradwise(name, cls, tcls, kw):
    a, b = twins(make_params(torch.float64))
    oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
    sa = torch.optim.lr_scheduler.StepLR(oa, step_size=3, gamma=0.5)
    sb = torch.optim.lr_scheduler.StepLR(ob, step_size=3, gamma=0.5)
    gen = torch.Generator().manual_seed(5)
    for _ in range(12):
        run_lockstep(oa, ob, a, b, 1, gen)
        sa.step()
        sb.step()
    assert oa.param_groups[0]["lr"] == ob.param_groups[0]["lr"]
    assert_same_state(oa, ob, a, b, torch.float64)


def test_params_moved_after_flattening_fall_back_and_reflatten():
    """A parameter replaced after the flat layout was built (e.g. model.to) is still updated."""
    a, b = twins(make_params(torch.float64))
    oa, ob = go.Adam(a, lr=0.01), torch.optim.Adam(b, lr=0.01, foreach=False)
    gen = torch.Generator().manual_seed(6)
    run_lockstep(oa, ob, a, b, 3, gen)
    a[0].data = a[0].data.clone()  # no longer a view into the flat buffer
    run_lockstep(oa, ob, a, b, 5, gen)
    assert_same_state(oa, ob, a, b, torch.float64)


def test_first_step_moves_params_before_any_state_exists(monkeypatch):
    """Moving a parameter into the flat buffer holds two copies of it for a moment; on the first
    step that happens before any state is made, so the moment is not at the iteration's peak
    (gradients plus all state). Then the step is still torch's."""
    from gradwise.optim import layout

    a, b = twins(make_params(torch.float32))
    oa, ob = go.Adam(a, lr=0.01), torch.optim.Adam(b, lr=0.01, foreach=False)
    states_when_moved = []
    move = layout.move_params

    def watched(seg):
        states_when_moved.append(sum(len(oa.state[p]) for p in seg.params))
        move(seg)

    monkeypatch.setattr(layout, "move_params", watched)
    run_lockstep(oa, ob, a, b, 3, torch.Generator().manual_seed(6))
    assert states_when_moved == [0]
    assert_same_state(oa, ob, a, b, torch.float32)


def _many_param_net(seed=0):
    """40 parameters: enough for the native layout check (native.MIN_PARAMS) to serve them."""
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(4, 4) for _ in range(20)]
    return torch.nn.Sequential(*[m for layer in layers for m in (layer, torch.nn.Tanh())])


def _engine_helpers():
    """The engine's native helpers, built (in a child process) if need be; skips without them."""
    from gradwise.optim import native

    helpers = native.helpers(wait=True)
    if helpers is None:
        pytest.skip(f"native helpers not built here: {native.ENGINE.error}")
    return helpers


def _trainer_helpers():
    from gradwise.train import native

    helpers = native.helpers(wait=True)
    if helpers is None:
        pytest.skip(f"native helpers not built here: {native.TRAINER.error}")
    return helpers


def test_native_helpers_are_built_where_a_compiler_is():
    import shutil
    import sysconfig
    from pathlib import Path

    from gradwise.optim import native

    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler: the Python versions serve (tested below)")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        pytest.skip("no Python headers: the Python versions serve (tested below)")
    assert native.helpers(wait=True) is not None, native.ENGINE.error
    assert _trainer_helpers() is not None


def test_a_native_build_that_fails_warns_once_and_the_python_versions_serve(tmp_path):
    """No compiler (simulated: a source that does not compile): one warning that says so, and
    the helpers stay None."""
    from gradwise.optim import native

    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    ext = native.Extension("broken", broken)
    with pytest.warns(RuntimeWarning, match="could not be built here") as said:
        assert ext.get(wait=True) is None
        assert ext.get(wait=True) is None
    assert len(said) == 1 and ext.error


@pytest.mark.parametrize("use_native", [True, False], ids=["native", "python"])
def test_layout_check_sees_every_way_out_of_the_flat_buffer(use_native, monkeypatch):
    from gradwise.optim import engine, native

    if use_native:
        _engine_helpers()
    else:
        monkeypatch.setattr(native, "MIN_PARAMS", 10**9)
    net = _many_param_net()
    opt = go.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(8, 4)
    net(x).sum().backward()
    opt.step()  # first step: per tensor, then flattened
    opt.zero_grad(set_to_none=False)
    seg = opt._group_segments(opt.param_groups[0])[0]
    assert seg.flat and seg.uses_native == use_native
    params = list(net.parameters())
    assert seg.layout() == engine.Segment.VIEWS
    net(x).sum().backward()
    assert seg.layout() == engine.Segment.VIEWS  # backward accumulated into the views
    kept = params[7].grad
    params[7].grad = kept.clone()
    assert seg.layout() == engine.Segment.FLAT
    params[7].grad = None
    assert seg.layout() == engine.Segment.FLAT
    params[7].grad = kept
    assert seg.layout() == engine.Segment.VIEWS
    data = params[39].data
    params[39].data = data.clone()
    assert seg.layout() == engine.Segment.MOVED
    params[39].data = data
    assert seg.layout() == engine.Segment.VIEWS
    net.to(torch.float64)
    assert seg.layout() == engine.Segment.MOVED


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID[::3], ids=IDS[::3])
def test_many_params_stay_exact_through_layout_changes(name, cls, tcls, kw):
    """With the native check serving: set_to_none zero_grad, replaced grads and a moved param
    between steps, in lockstep with torch.optim."""
    _engine_helpers()
    net_a, net_b = _many_param_net(1), _many_param_net(1)
    oa, ob = cls(net_a.parameters(), **kw), tcls(net_b.parameters(), foreach=False, **kw)
    gen = torch.Generator().manual_seed(2)
    for i in range(12):
        x = torch.randn(8, 4, generator=gen)
        for net, opt in ((net_a, oa), (net_b, ob)):
            opt.zero_grad(set_to_none=i % 4 == 1)
            net(x).square().mean().backward()
            p = list(net.parameters())
            if i % 4 == 2:
                p[5].grad = p[5].grad * 2  # a replaced gradient (e.g. a user's clipping)
            if i == 6:
                p[30].data = p[30].data.clone()  # a moved parameter
            opt.step()
    a, b = list(net_a.parameters()), list(net_b.parameters())
    assert_same_state(oa, ob, a, b, torch.float32)
    seg = oa._group_segments(oa.param_groups[0])[0]
    assert seg.flat and seg.uses_native  # flat again, native check serving


# ------------------------------------------------------------ the spec's equations, in float64


def spec_rmsprop(theta, grads, lr, rho, eps):
    """The spec: E[g²] ← ρE[g²] + (1−ρ)g²;  θ ← θ − η/sqrt(E[g²] + ε) · g (element by element)."""
    theta = list(theta)
    avg = [0.0] * len(theta)
    for g in grads:
        for i, gi in enumerate(g):
            avg[i] = rho * avg[i] + (1 - rho) * gi * gi
            theta[i] = theta[i] - lr / math.sqrt(avg[i] + eps) * gi
    return theta


def spec_adam(theta, grads, lr, beta1, beta2, eps):
    """The spec's Adam, with bias correction, element by element."""
    theta = list(theta)
    m = [0.0] * len(theta)
    v = [0.0] * len(theta)
    for t, g in enumerate(grads, start=1):
        for i, gi in enumerate(g):
            m[i] = beta1 * m[i] + (1 - beta1) * gi
            v[i] = beta2 * v[i] + (1 - beta2) * gi * gi
            m_hat = m[i] / (1 - beta1**t)
            v_hat = v[i] / (1 - beta2**t)
            theta[i] = theta[i] - lr / (math.sqrt(v_hat) + eps) * m_hat
    return theta


def run_on_grads(opt_cls, theta, grads, **kw):
    p = torch.nn.Parameter(torch.tensor(theta, dtype=torch.float64))
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    return p.detach().tolist()


def random_grads(n, steps, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(steps, n, generator=g, dtype=torch.float64).tolist()


def test_rmsprop_matches_spec_equations():
    theta, grads = [0.5, -1.0, 2.0, 0.0], random_grads(4, 25, 7)
    ours = run_on_grads(
        go.RMSprop, theta, grads, lr=0.01, alpha=0.9, eps=1e-8, eps_inside_sqrt=True
    )
    assert ours == pytest.approx(spec_rmsprop(theta, grads, 0.01, 0.9, 1e-8), rel=1e-12, abs=1e-14)


def test_adam_matches_spec_equations():
    theta, grads = [0.5, -1.0, 2.0, 0.0], random_grads(4, 25, 8)
    ours = run_on_grads(go.Adam, theta, grads, lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    expect = spec_adam(theta, grads, 0.01, 0.9, 0.999, 1e-8)
    assert ours == pytest.approx(expect, rel=1e-12, abs=1e-14)


def test_momentum_matches_hand_computed_steps():
    """b ← μb + g; θ ← θ − ηb, by hand for three steps."""
    ours = run_on_grads(go.SGD, [1.0], [[1.0], [2.0], [-1.0]], lr=0.1, momentum=0.5)
    # b: 1, 0.5 + 2 = 2.5, 1.25 - 1 = 0.25; θ: 1 − 0.1 − 0.25 − 0.025
    assert ours == pytest.approx([0.625], rel=1e-15)


# ------------------------------------------------------------------------------ equivalences


def test_adam_with_beta1_zero_is_bias_corrected_rmsprop():
    """β1 = 0: θ ← θ − η g / (sqrt(v/(1−β2^t)) + ε), i.e. RMSProp with a bias-corrected average."""
    theta, grads = [0.3, -0.7, 1.1], random_grads(3, 20, 9)
    ours = run_on_grads(go.Adam, theta, grads, lr=0.01, betas=(0.0, 0.99), eps=1e-8)
    p = list(theta)
    v = [0.0] * 3
    for t, g in enumerate(grads, start=1):
        for i, gi in enumerate(g):
            v[i] = 0.99 * v[i] + 0.01 * gi * gi
            p[i] -= 0.01 * gi / (math.sqrt(v[i] / (1 - 0.99**t)) + 1e-8)
    assert ours == pytest.approx(p, rel=1e-12)


def test_adamw_with_zero_decay_is_adam():
    theta, grads = [0.3, -0.7, 1.1], random_grads(3, 20, 10)
    assert run_on_grads(go.AdamW, theta, grads, lr=0.01, weight_decay=0.0) == run_on_grads(
        go.Adam, theta, grads, lr=0.01
    )


def test_nesterov_sgd_with_zero_momentum_is_plain_sgd():
    theta, grads = [0.3, -0.7], random_grads(2, 10, 11)
    plain = run_on_grads(go.SGD, theta, grads, lr=0.1)
    assert run_on_grads(go.SGD, theta, grads, lr=0.1, momentum=0.0) == plain


# ------------------------------------------------------------------------------- convergence

CONVERGE = [
    (go.SGD, dict(lr=0.1)),
    (go.SGD, dict(lr=0.05, momentum=0.9)),
    (go.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    (go.Adagrad, dict(lr=0.5)),
    (go.RMSprop, dict(lr=0.01)),
    (go.RMSprop, dict(lr=0.01, eps_inside_sqrt=True)),
    (go.Adam, dict(lr=0.05)),
    (go.AdamW, dict(lr=0.05, weight_decay=0.0)),
]


@pytest.mark.parametrize(("cls", "kw"), CONVERGE)
def test_converges_on_quadratic(cls, kw):
    """f(θ) = ½ θᵀ A θ − bᵀθ with A positive definite: the minimum is A⁻¹ b."""
    a_mat = torch.tensor([[3.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    b_vec = torch.tensor([1.0, -2.0], dtype=torch.float64)
    w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = cls([w], **kw)
    for _ in range(3000):
        opt.zero_grad()
        (0.5 * w @ a_mat @ w - b_vec @ w).backward()
        opt.step()
    assert w.detach() == pytest.approx(torch.linalg.solve(a_mat, b_vec), abs=2e-2)


@pytest.mark.parametrize(
    ("cls", "kw", "steps"),
    [
        (go.Adam, dict(lr=0.02), 5000),
        (go.SGD, dict(lr=1e-3, momentum=0.9), 10000),
        (go.RMSprop, dict(lr=1e-3, centered=True), 10000),
    ],
)
def test_converges_on_rosenbrock(cls, kw, steps):
    """f(x, y) = (1 − x)² + 100 (y − x²)², minimum at (1, 1)."""
    w = torch.nn.Parameter(torch.tensor([-1.5, 2.0], dtype=torch.float64))
    opt = cls([w], **kw)
    for _ in range(steps):
        opt.zero_grad()
        ((1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2).backward()
        opt.step()
    assert w.detach() == pytest.approx([1.0, 1.0], abs=5e-2)


# ---------------------------------------------------------------------------------- L1 zeros


@pytest.mark.parametrize(
    ("cls", "lr", "l1"),
    [
        (go.SGD, 0.01, 0.5),
        (go.Adam, 0.01, 0.5),
        (go.RMSprop, 0.01, 0.5),
        (go.Adagrad, 0.5, 0.02),
        (go.AdamW, 0.01, 0.5),
    ],
)
def test_l1_proximal_gives_exact_zeros(cls, lr, l1):
    """Weights with a small gradient signal are thresholded to exactly 0 by the proximal step."""
    w = torch.nn.Parameter(torch.tensor([2.0, 0.001, -0.002, -3.0]))
    target = torch.tensor([2.0, 0.0, 0.0, -3.0])
    opt = cls([w], lr=lr, l1=l1)
    for _ in range(500):
        opt.zero_grad()
        ((w - target) ** 2).sum().backward()
        opt.step()
    assert w[1].item() == 0.0 and w[2].item() == 0.0
    assert abs(w[0].item()) > 1.0 and abs(w[3].item()) > 1.0


def test_l1_is_soft_thresholding_after_update():
    w = torch.nn.Parameter(torch.tensor([1.0, 0.05, -0.5]))
    opt = go.SGD([w], lr=0.1, l1=1.0)
    w.grad = torch.tensor([0.0, 0.0, 1.0])
    opt.step()
    # θ − η g = [1, 0.05, −0.6]; then shrink by η·l1 = 0.1 → [0.9, 0, −0.5]
    assert w.detach().tolist() == pytest.approx([0.9, 0.0, -0.5])


# -------------------------------------------------------------------------------- validation

BAD = [
    (go.SGD, dict(lr=-0.1), "lr"),
    (go.SGD, dict(lr="fast"), "lr"),
    (go.SGD, dict(lr=float("nan")), "lr"),
    (go.SGD, dict(momentum=-0.5), "momentum"),
    (go.SGD, dict(dampening=1.5), "dampening"),
    (go.SGD, dict(weight_decay=-1.0), "weight_decay"),
    (go.SGD, dict(nesterov=True), "nesterov"),
    (go.SGD, dict(nesterov=True, momentum=0.9, dampening=0.1), "nesterov"),
    (go.SGD, dict(l1=-0.1), "l1"),
    (go.SGD, dict(maximize="yes"), "maximize"),
    (go.Adam, dict(betas=(1.0, 0.999)), "betas[0]"),
    (go.Adam, dict(betas=(0.9, -0.1)), "betas[1]"),
    (go.Adam, dict(betas=0.9), "betas"),
    (go.Adam, dict(eps=-1e-8), "eps"),
    (go.Adam, dict(amsgrad=1), "amsgrad"),
    (go.Adam, dict(lr=torch.tensor([0.1, 0.2])), "lr"),
    (go.AdamW, dict(weight_decay=-0.01), "weight_decay"),
    (go.RMSprop, dict(alpha=1.5), "alpha"),
    (go.RMSprop, dict(alpha=-0.1), "alpha"),
    (go.RMSprop, dict(eps=-1.0), "eps"),
    (go.RMSprop, dict(momentum=-1.0), "momentum"),
    (go.RMSprop, dict(centered="no"), "centered"),
    (go.Adagrad, dict(lr_decay=-1.0), "lr_decay"),
    (go.Adagrad, dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (go.Adagrad, dict(eps=-1.0), "eps"),
    (go.Adagrad, dict(eps_inside_sqrt=None), "eps_inside_sqrt"),
]


@pytest.mark.parametrize(("cls", "kw", "arg"), BAD, ids=[f"{c.__name__}-{a}" for c, _, a in BAD])
def test_bad_hyperparameters_are_refused_with_a_clear_message(cls, kw, arg):
    with pytest.raises((ValueError, TypeError)) as info:
        cls([torch.nn.Parameter(torch.zeros(2))], **kw)
    message = str(info.value)
    assert arg in message and cls.__name__ in message
    assert "received" in message


@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop"])
def test_capturable_on_the_cpu_is_refused_at_step_as_torch_refuses_it(name):
    for cls in (getattr(go, name), getattr(torch.optim, name)):
        w = torch.nn.Parameter(torch.zeros(2))
        w.grad = torch.ones(2)
        opt = cls([w], capturable=True)
        with pytest.raises(AssertionError, match="If capturable=True, params and state_steps"):
            opt.step()


CAPTURABLE = [g for g in GRID if g[0].startswith(("adam", "rmsprop"))]


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), CAPTURABLE, ids=[g[0] for g in CAPTURABLE])
def test_capturable_steps_from_the_counter_on_the_device(monkeypatch, name, cls, tcls, kw):
    """``capturable=True`` reads the step counter where it lies (no ``.item()``): the numbers
    are torch's capturable arithmetic, which its ``differentiable=True`` path shares (Adam's
    bias corrections from the float32 counter). The CPU stands in for a CUDA device here;
    test_cuda_graph_captures_a_capturable_step runs it on one."""
    monkeypatch.setattr(torch_api, "CAPTURABLE_DEVICE_TYPES", ["cpu"])
    a, b = twins(make_params(torch.float32))
    b = [t.detach() for t in b]  # torch's differentiable path changes them in place
    oa, ob = cls(a, capturable=True, **kw), tcls(b, differentiable=True, **kw)
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        for x, y in zip(a, b):
            x.grad = torch.randn(x.shape, generator=gen)
            y.grad = x.grad.clone()
        oa.step()
        ob.step()
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "item", lambda t: pytest.fail("capturable read a number back"))
        oa.step()
    ob.step()
    assert not any(s.flat for cached in oa._segments.values() for s in cached[1])
    assert_same_state(oa, ob, a, b, torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["Adam", "AdamW", "RMSprop"])
def test_cuda_graph_captures_a_capturable_step(name):
    """torch's recipe: warm up on a side stream, capture ``step()`` in a CUDA graph, replay
    it with new gradients copied into the captured ones; the same numbers as torch's."""
    results = []
    for cls in (getattr(torch.optim, name), getattr(go, name)):
        torch.manual_seed(0)
        params = [torch.randn(s, device="cuda", requires_grad=True) for s in ((64, 33), (17,))]
        for p in params:
            p.grad = torch.zeros_like(p)
        opt = cls(params, lr=0.01, capturable=True)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                opt.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            opt.step()
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in params:
                p.grad.copy_(torch.randn(p.shape, generator=gen))
            graph.replay()
        torch.cuda.synchronize()
        results.append([p.detach().cpu() for p in params])
    for x, y in zip(*results, strict=True):
        torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-7)


def test_capture_without_capturable_is_refused_with_torchs_words():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    w = torch.zeros(4, device="cuda", requires_grad=True)
    w.grad = torch.ones_like(w)
    opt = go.Adam([w])
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capturable is False"), torch.cuda.graph(graph):
        opt.step()


# ------------------------------------------------------------------- differentiable=True


def differentiable_step(cls, kw, warm_steps=3, tensor_lr=False):
    """One ``differentiable=True`` step from a state warmed by ``warm_steps`` plain steps: the
    new parameter and state, and the vector-Jacobian products of a fixed random cotangent with
    respect to the old parameter, the gradient, the old state and (``tensor_lr``) the lr."""
    gen = torch.Generator().manual_seed(0)
    warm = torch.randn(5, 3, dtype=torch.float64, generator=gen).requires_grad_()
    opt = cls([warm], **kw)
    for _ in range(warm_steps):
        warm.grad = torch.randn(5, 3, dtype=torch.float64, generator=gen)
        opt.step()
    names = [n for n in opt.state[warm] if n != "step"]
    inputs = [warm.detach().clone().requires_grad_()]
    inputs.append(torch.randn(5, 3, dtype=torch.float64, generator=gen).requires_grad_())
    inputs += [opt.state[warm][n].detach().clone().requires_grad_() for n in names]
    kw = dict(kw, differentiable=True)
    if tensor_lr:
        kw["lr"] = torch.tensor(kw["lr"], dtype=torch.float64, requires_grad=True)
        inputs.append(kw["lr"])
    param = inputs[0].clone()  # not a leaf: the step changes it in place, recorded
    param.grad = inputs[1]
    opt_d = cls([param], **kw)
    opt_d.state[param].update({n: t.clone() for n, t in zip(names, inputs[2:])})
    if "step" in opt.state[warm]:
        opt_d.state[param]["step"] = opt.state[warm]["step"].clone()
    opt_d.step()
    outputs = [param] + [opt_d.state[param][n] for n in names]
    cotangent = [torch.randn(o.shape, dtype=o.dtype, generator=gen) for o in outputs]
    vjps = torch.autograd.grad(outputs, inputs, cotangent, allow_unused=True)
    return [o.detach() for o in outputs], vjps


#: the grid, with a tensor lr where torch's class takes one with differentiable=True
DIFFERENTIABLE = [(*g, False) for g in GRID] + [
    (*g, True) for g in GRID if g[0].startswith(("sgd", "adam"))
]


@pytest.mark.parametrize(
    ("name", "cls", "tcls", "kw", "tensor_lr"),
    DIFFERENTIABLE,
    ids=[f"{g[0]}{'-tensor-lr' if g[4] else ''}" for g in DIFFERENTIABLE],
)
@pytest.mark.parametrize("step_dtype", [torch.float64, torch.float32])
def test_differentiable_step_has_torchs_values_and_gradients(
    name, cls, tcls, kw, tensor_lr, step_dtype
):
    """``differentiable=True``: autograd records the step, and its vector-Jacobian products
    with respect to θ, the gradient, every state tensor and a tensor lr equal torch.optim's.
    The step counter's dtype follows the default dtype, as in torch; with a float32 counter
    torch's Adam computes its bias corrections in float32, and so does gradwise's."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(step_dtype)
    try:
        want, want_vjps = differentiable_step(tcls, kw, tensor_lr=tensor_lr)
        got, got_vjps = differentiable_step(cls, kw, tensor_lr=tensor_lr)
    finally:
        torch.set_default_dtype(previous)
    tol = (
        dict(rtol=1e-12, atol=1e-14) if step_dtype == torch.float64 else dict(rtol=1e-6, atol=1e-9)
    )
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **tol)
    assert len(got_vjps) == len(want_vjps)
    for g, w in zip(got_vjps, want_vjps, strict=True):
        assert (g is None) == (w is None)
        if w is not None:
            torch.testing.assert_close(g, w, **tol)


def meta_learning_lr_gradient(cls, lr: float, **kw) -> tuple[float, float]:
    """Five differentiable steps of least squares from a learnable lr; the validation loss
    after them and its derivative with respect to the lr."""
    gen = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(20, 3, dtype=torch.float64, generator=gen),
        torch.randn(20, dtype=torch.float64, generator=gen),
    )
    av, bv = (
        torch.randn(20, 3, dtype=torch.float64, generator=gen),
        torch.randn(20, dtype=torch.float64, generator=gen),
    )
    rate = torch.tensor(lr, dtype=torch.float64, requires_grad=True)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True).clone()
    opt = cls([w], lr=rate, differentiable=True, **kw)
    for _ in range(5):
        current = w.clone()  # the step changes w in place: the loss reads a copy
        loss = ((a @ current - b) ** 2).mean()
        (w.grad,) = torch.autograd.grad(loss, current, create_graph=True)
        opt.step()
    val = ((av @ w - bv) ** 2).mean()
    (d_lr,) = torch.autograd.grad(val, rate)
    return val.item(), d_lr.item()


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("Adam", {}),
        ("AdamW", dict(weight_decay=0.1)),
        ("SGD", dict(momentum=0.9)),
        ("RMSprop", dict(momentum=0.5, centered=True)),
        ("Adagrad", dict(lr_decay=0.01)),
        ("Adam", dict(l1=1e-3)),
    ],
)
def test_meta_learning_the_learning_rate(name, kw):
    """The gradient of a validation loss with respect to the lr, through five steps, equals
    the central finite difference of the same computation, and torch's where torch can take it
    (torch's SGD with momentum cannot go through several steps, nor its RMSprop and Adagrad
    take a tensor lr with differentiable=True)."""
    cls, lr, h = getattr(go, name), 0.05, 1e-6
    val, d_lr = meta_learning_lr_gradient(cls, lr, **kw)
    up, _ = meta_learning_lr_gradient(cls, lr + h, **kw)
    down, _ = meta_learning_lr_gradient(cls, lr - h, **kw)
    assert d_lr == pytest.approx((up - down) / (2 * h), rel=1e-6)
    if name in ("Adam", "AdamW") and "l1" not in kw:
        assert (val, d_lr) == pytest.approx(
            meta_learning_lr_gradient(getattr(torch.optim, name), lr, **kw), rel=1e-8
        )  # both compute the bias corrections from a float32 step counter


# ------------------------------------------------------------------------- property testing


@settings(max_examples=30, deadline=None)
@given(
    case=st.sampled_from(GRID),
    shapes=st.lists(
        st.lists(st.integers(0, 5), min_size=1, max_size=3).map(tuple), min_size=1, max_size=4
    ),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    lr=st.floats(1e-4, 0.5),
    seed=st.integers(0, 2**16),
)
def test_property_parity_with_torch(case, shapes, dtype, lr, seed):
    _, cls, tcls, kw = case
    kw = dict(kw, lr=lr)
    a, b = twins(make_params(dtype, shapes, seed))
    oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
    run_lockstep(oa, ob, a, b, 6, torch.Generator().manual_seed(seed))
    assert_same_state(oa, ob, a, b, dtype)


# ------------------------------------------------------------------ the compiled (fused) path

COMPILED = [GRID[i] for i in (3, 6, 11, 15)]


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), COMPILED, ids=[c[0] for c in COMPILED])
def test_compiled_path_matches_torch(name, cls, tcls, kw):
    """fused=True runs the same rule as a fused kernel; results equal PyTorch's."""
    a, b = twins(make_params(torch.float32, shapes=[(64, 33), (17,), (5, 5)]))
    oa, ob = cls(a, fused=True, **kw), tcls(b, foreach=False, **kw)
    gen = torch.Generator().manual_seed(12)
    for i in range(12):
        run_lockstep(oa, ob, a, b, 1, gen)
        if i == 6:  # a new rate must not need a recompilation, nor change the results
            for group in oa.param_groups + ob.param_groups:
                group["lr"] *= 0.3
    assert_same_state(oa, ob, a, b, torch.float32)
    from gradwise.optim import kernels

    seg = next(iter(oa._segments.values()))[1][0]
    assert seg.flat and any(memo[0] is cls.rule for memo in kernels._loaded)


@pytest.mark.parametrize(
    ("name", "cls", "tcls", "kw"), COMPILED[1:3], ids=[c[0] for c in COMPILED[1:3]]
)
def test_compiled_path_runs_on_the_gradients_backward_made(name, cls, tcls, kw):
    """The kernel updates each large tensor from its own gradient, and the gathered small ones
    together, at their places (offsets) in the flat buffers; torch's numbers to float rounding."""
    a, b = twins(make_params(torch.float32, shapes=LARGE))
    oa, ob = cls(a, fused=True, **kw), tcls(b, foreach=False, **kw)
    run_lockstep(oa, ob, a, b, 6, torch.Generator().manual_seed(4))
    from gradwise.optim import kernels

    assert any(memo[0] is cls.rule for memo in kernels._loaded)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-6)


def test_an_ahead_of_time_kernel_takes_whole_cache_lines_and_leaves_the_rest_to_eager():
    """A CPU kernel is built for lengths that are a multiple of a cache line's worth of
    elements (no partial vector: Inductor's loop then has no branch for one). The engine lays
    its buffers out so; a large gradient's last few elements are left to the eager update, and
    everything else reaches the kernel exactly once, in place."""
    from gradwise.optim import engine, kernel_args, kernels, layout

    calls = []

    def kernel(param, grad, state, scalars):
        calls.append(param.numel())
        param.add_(grad)  # in place, on the views it was given
        state["m"].add_(1.0)

    run = kernels.ahead_of_time.runner(kernel, torch.float32).run
    scalars = kernel_args.Scalars(0, torch.float32)
    lines = kernel_args.length_multiple(torch.float32)
    assert lines == 16 and kernel_args.length_multiple(torch.float64) == 8
    sizes = [64, 70, 5]
    targets = [(torch.zeros(n), torch.ones(n), {"m": torch.zeros(n)}) for n in sizes]
    left = run(targets, scalars)
    assert calls == [64, 64]  # whole lines only; the 5-element piece never reaches the kernel
    assert [p.numel() for p, _, _ in left] == [6, 5]
    for (param, _, state), n in zip(targets, sizes):
        done = n - n % lines
        assert param[:done].eq(1).all() and param[done:].eq(0).all()
        assert state["m"][:done].eq(1).all() and state["m"][done:].eq(0).all()
    # the views left are the tensors' own last elements: the eager update lands in place
    left[0][0].fill_(7)
    assert targets[1][0][64:].eq(7).all()
    # the engine's layout: the small tensors' piece and the whole buffers end on a line
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (3, 17, engine.DIRECT_NUMEL + 3)]
    seg = engine.split_group(params)[0]
    layout.flatten(seg, {p: {} for p in params}, [], has_step=False)
    assert seg.small % lines == 0 and seg.param.numel() % lines == 0
    assert seg.small <= seg.large[0][1].start


@pytest.mark.parametrize(
    ("cls", "tcls", "first", "second"),
    [
        (
            go.Adam,
            torch.optim.Adam,
            dict(betas=(0.9, 0.999), eps=1e-8),
            dict(betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
        ),
        (
            go.SGD,
            torch.optim.SGD,
            dict(momentum=0.9, dampening=0.1),
            dict(momentum=0.5, dampening=0.2),
        ),
        (
            go.RMSprop,
            torch.optim.RMSprop,
            dict(alpha=0.99, momentum=0.1),
            dict(alpha=0.9, eps=1e-5, momentum=0.3),
        ),
    ],
    ids=["adam", "sgd", "rmsprop"],
)
def test_a_new_hyperparameter_value_needs_no_new_kernel(
    monkeypatch, tmp_path, cls, tcls, first, second
):
    """Hyperparameter values are the kernel's runtime arguments: a second optimizer with other
    betas, eps, momentum or decay (all nonzero) runs the kernel already built, with torch's
    numbers to float rounding."""
    kernels = _fresh_kernels(monkeypatch, tmp_path)
    second = {**first, "weight_decay": 0.02, **second}
    for kw in (dict(first, weight_decay=0.01), second):
        a, b = twins(make_params(torch.float32, shapes=[(64, 33), (17,)]))
        oa, ob = cls(a, lr=0.01, fused=True, **kw), tcls(b, lr=0.01, foreach=False, **kw)
        run_lockstep(oa, ob, a, b, 8, torch.Generator().manual_seed(21))
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-6)
    assert len(kernels._loaded) == 1 and len(list(tmp_path.glob("*.so"))) == 1


def test_compiled_path_with_l1_and_decoupled_decay_matches_eager():
    vals = make_params(torch.float32, shapes=[(40, 30), (30,)])
    a, b = twins(vals)
    kw = dict(lr=0.01, weight_decay=0.1, l1=5.0)
    oa, ob = go.AdamW(a, fused=True, **kw), go.AdamW(b, fused=False, **kw)
    run_lockstep(oa, ob, a, b, 10, torch.Generator().manual_seed(13))
    assert_same_state(oa, ob, a, b, torch.float32)
    assert (a[0] == 0).sum() > 0  # L1 made exact zeros in the compiled path too


def test_a_cached_kernel_loads_in_milliseconds_without_inductor():
    """A fresh process finds the kernel on disk and runs it without importing Inductor's Python
    package (~1-2 s): the first step, load included, takes well under a second."""
    import subprocess
    import sys

    a, _ = twins(make_params(torch.float32, shapes=[(64, 33), (17,)]))
    opt = go.SGD(a, lr=0.05, momentum=0.8, nesterov=True, fused=True)  # built once per machine
    run_lockstep(opt, opt, a, a, 1, torch.Generator().manual_seed(15))
    code = (
        "import sys, time, torch, gradwise.optim as go\n"
        "p = torch.nn.Parameter(torch.ones(64 * 33))\n"
        "q = torch.nn.Parameter(torch.ones(64 * 33))\n"
        "o = go.SGD([p], lr=0.05, momentum=0.8, nesterov=True, fused=True)\n"
        "r = go.SGD([q], lr=0.05, momentum=0.8, nesterov=True, fused=False)\n"
        "took = 0.0\n"
        "for i in range(3):\n"
        "    p.grad = torch.full_like(p, i + 1.0); q.grad = torch.full_like(q, i + 1.0)\n"
        "    t = time.perf_counter(); o.step(); took += time.perf_counter() - t; r.step()\n"
        "from gradwise.optim import kernels\n"
        "print(len(kernels._loaded), 'torch._inductor.package' in sys.modules,\n"
        "      float((p - q).abs().max()), took)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded, inductor, diff, took = done.stdout.split()
    assert loaded == "1" and inductor == "False"
    assert float(diff) <= 1e-6
    assert float(took) < 0.5  # 3 steps, the load included; importing Inductor alone takes 1-2 s


def test_a_kernel_is_cached_per_cpu(monkeypatch):
    """Kernels are compiled for the building CPU (-march=native): another CPU sharing the cache
    directory (an NFS home) looks for its own file instead of loading this one."""
    from gradwise.optim import base, kernel_args, kernels

    assert kernels.cpu_identity() == kernels.cpu_identity() and len(kernels.cpu_identity()) == 16
    p = torch.nn.Parameter(torch.ones(4))
    opt = go.SGD([p], lr=0.1, momentum=0.9)
    static, slots, values = kernel_args.split(opt._update_args(opt.param_groups[0], 2))
    spec = dict(
        update=base.update,
        rule=go.SGD.rule,
        names=["momentum_buffer"],
        static=static,
        slots=slots,
        values=values,
        device="cpu",
        dtypes=[torch.float32] * 3,
    )
    monkeypatch.setitem(kernels._sources, ("aot",), None)  # as for a rule without a C form
    generated, ahead = kernels._place(("generated",), spec), kernels._place(("aot",), spec)
    assert generated[1] is not None and generated[0].suffix == ".so"
    assert ahead[1] is None and ahead[0].suffix == ".pt2"
    monkeypatch.setattr(kernels, "cpu_identity", lambda: "another cpu")
    assert kernels._place(("generated",), spec)[0] != generated[0]
    assert kernels._place(("aot",), spec)[0] != ahead[0]


def test_fused_on_a_device_without_kernels_warns_once_and_runs_eager(monkeypatch):
    """Kernels are CPU-only (a CUDA package crashed torch's loader): fused=True elsewhere gives
    the eager path's results and one warning. Simulated here by taking the CPU off the list."""
    from gradwise.optim import kernels

    monkeypatch.setattr(kernels, "DEVICES", ())
    monkeypatch.setattr(kernels, "_warned_devices", set())
    a, b = twins(make_params(torch.float32))
    oa, ob = go.Adam(a, lr=0.01, fused=True), torch.optim.Adam(b, lr=0.01, foreach=False)
    with pytest.warns(RuntimeWarning, match="fused=True on cpu runs the eager path") as said:
        run_lockstep(oa, ob, a, b, 6, torch.Generator().manual_seed(16))
    assert len([w for w in said if "fused kernels are built" in str(w.message)]) == 1
    for x, y in zip(a, b):
        assert torch.equal(x, y)  # bit for bit: the eager path


def test_eager_chunks_only_on_the_cpu():
    from gradwise.optim import engine

    assert len(engine.chunks(3 * engine.CHUNK + 1, torch.device("cpu"))) == 4
    assert engine.chunks(3 * engine.CHUNK + 1, torch.device("meta")) == [
        slice(0, 3 * engine.CHUNK + 1)
    ]


def _fresh_kernels(monkeypatch, tmp_path):
    """An empty kernel cache and a kernel module that has built nothing in this process."""
    from gradwise.optim import kernels

    monkeypatch.setenv("GRADWISE_KERNEL_CACHE", str(tmp_path))
    monkeypatch.delenv("GRADWISE_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setattr(kernels, "_absent", set())
    monkeypatch.setattr(kernels, "_building", {})
    monkeypatch.setattr(kernels, "_sources", {})
    monkeypatch.setattr(kernels, "_error", None)
    monkeypatch.setattr(kernels, "_warned_unproven", False)
    return kernels


@pytest.mark.parametrize("kind", ["generated", "ahead-of-time"])
@pytest.mark.parametrize(
    ("child", "said_why"),
    [
        ("import sys; sys.exit('RuntimeError: no C++ compiler')", "no C\\+\\+ compiler"),
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
            "killed the child \\(SIGSEGV\\)",
        ),
    ],
    ids=["build-fails", "child-crashes"],
)
def test_a_kernel_that_fails_in_its_child_means_one_warning_and_the_eager_path(
    monkeypatch, tmp_path, child, said_why, kind
):
    """Loading native code can kill a process (torch 2.11's CUDA build segfaulted loading a CPU
    kernel), and a build can fail (no compiler). Kernels are built, loaded and run in a child
    first: a child that fails or dies of a signal means one warning with its reason, the eager
    path's results bit for bit, and nothing put in the cache."""
    import sys

    kernels = _fresh_kernels(monkeypatch, tmp_path)
    if kind == "generated":
        monkeypatch.setattr(kernels.generated, "CHILD", child)
    else:
        monkeypatch.setattr(kernels.generated, "source", lambda *args: None)
        aot = kernels.ahead_of_time
        monkeypatch.setattr(aot, "child_command", lambda: [sys.executable, "-c", child])
    a, b = twins(make_params(torch.float64))
    oa, ob = go.AdamW(a, lr=0.01, fused=True), torch.optim.AdamW(b, lr=0.01, foreach=False)
    with pytest.warns(RuntimeWarning, match=said_why) as said:
        run_lockstep(oa, ob, a, b, 6, torch.Generator().manual_seed(17))
    assert len([w for w in said if "kernel could not be used" in str(w.message)]) == 1
    assert_same_state(oa, ob, a, b, torch.float64)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not kernels.available() and not list(tmp_path.iterdir())


def test_kernels_run_only_on_proven_torch_releases(monkeypatch, tmp_path):
    """On a torch release where kernels are not proven, fused=True runs the eager path with one
    warning, and nothing is built; GRADWISE_KERNELS=off turns them off without a warning."""
    kernels = _fresh_kernels(monkeypatch, tmp_path)
    monkeypatch.setattr(kernels, "PROVEN_TORCH", {"cpu": ("1.0",)})
    a, b = twins(make_params(torch.float32))
    oa, ob = go.Adam(a, lr=0.01, fused=True), torch.optim.Adam(b, lr=0.01, foreach=False)
    with pytest.warns(RuntimeWarning, match="proven on torch 1.0") as said:
        run_lockstep(oa, ob, a, b, 4, torch.Generator().manual_seed(18))
    assert len(said) == 1
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not list(tmp_path.iterdir())

    monkeypatch.setenv("GRADWISE_KERNELS", "off")
    monkeypatch.setattr(kernels, "PROVEN_TORCH", {"cpu": (kernels.torch_release(),)})
    assert not kernels.available()
    monkeypatch.setenv("GRADWISE_KERNELS", "any")
    monkeypatch.setattr(kernels, "PROVEN_TORCH", {"cpu": ("1.0",)})
    assert kernels.available()


def test_a_large_group_never_waits_for_its_ahead_of_time_kernel(monkeypatch, tmp_path):
    """fused=None on a group large enough to build an ahead-of-time kernel (~20 s): the steps
    run eagerly while a child builds it at low priority, and the kernel takes over once it is on
    disk. Same results as torch within the kernel's rounding."""
    import time

    from gradwise.optim import engine

    kernels = _fresh_kernels(monkeypatch, tmp_path)
    monkeypatch.setattr(engine, "AUTO_BUILD_NUMEL", 1000)
    monkeypatch.setattr(engine, "KERNEL_MIN_NUMEL", 1000)
    monkeypatch.setattr(kernels.generated, "source", lambda *args: None)  # ahead of time
    a, b = twins(make_params(torch.float32, shapes=[(64, 33), (17,)]))
    oa, ob = go.SGD(a, lr=0.05, momentum=0.9), torch.optim.SGD(b, lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(19)
    started = time.perf_counter()
    run_lockstep(oa, ob, a, b, 3, gen)
    assert time.perf_counter() - started < 5  # no step waited for the build
    assert not kernels._loaded and kernels._building
    deadline = time.monotonic() + 240
    while not kernels._loaded and time.monotonic() < deadline:
        run_lockstep(oa, ob, a, b, 1, gen)
        time.sleep(0.2)
    assert kernels._loaded and kernels.available()
    run_lockstep(oa, ob, a, b, 3, gen)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-7)


def test_a_generated_kernel_runs_from_the_second_step_in_every_run(monkeypatch, tmp_path):
    """With the default fused=None, a segment of KERNEL_MIN_NUMEL elements or more waits for its
    generated kernel's short build at its second step: whatever the cache holds, every run takes
    the same path from the same step, and gives the same numbers to the bit."""
    from gradwise.optim import engine

    kernels = _fresh_kernels(monkeypatch, tmp_path)
    monkeypatch.setattr(engine, "KERNEL_MIN_NUMEL", 1000)
    results = []
    for _ in range(2):  # built in the first run, found on disk in the second
        monkeypatch.setattr(kernels, "_loaded", {})
        a, b = twins(make_params(torch.float32, shapes=[(64, 33), (17,)]))
        oa, ob = go.Adam(a, lr=0.01), torch.optim.Adam(b, lr=0.01)
        run_lockstep(oa, ob, a, b, 2, torch.Generator().manual_seed(20))
        assert len(kernels._loaded) == 1 and not kernels._building  # there from the second step
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-7)
        results.append([p.detach().clone() for p in a])
    assert all(torch.equal(x, y) for x, y in zip(*results))


@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
        ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
        ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
        ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
    ],
)
def test_kernel_compiled_in_process(monkeypatch, tmp_path, cls, kw):
    """The in-process compile that CUDA uses (torch.compile of the same update and rule), run
    here on the CPU: with gradients as backward leaves them (small ones gathered, large ones
    where they lie: three pieces, one call), a learning rate that changes every step and a flag
    that changes once, 20 steps within 2e-6 of torch; compiled once per flag setting, not once
    per learning rate."""
    import torch._dynamo.utils

    from gradwise.optim import engine

    kernels = _fresh_kernels(monkeypatch, tmp_path)
    monkeypatch.setattr(kernels, "DEVICES", ())
    monkeypatch.setattr(kernels, "JIT_DEVICES", ("cpu",))
    monkeypatch.setattr(engine, "DIRECT_NUMEL", 500)
    shapes = [(40, 30), (7,), (33, 20), (5, 3)]
    a, b = twins(make_params(torch.float32, shapes=shapes))
    oa = getattr(go, cls)(a, fused=True, **kw)
    ob = getattr(torch.optim, cls)(b, foreach=False, **kw)
    sa = torch.optim.lr_scheduler.ExponentialLR(oa, gamma=0.9)
    sb = torch.optim.lr_scheduler.ExponentialLR(ob, gamma=0.9)
    gen = torch.Generator().manual_seed(23)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for i in range(20):
        if i == 12:  # a flag changes the kernel: a second one, not the first one misused
            oa.param_groups[0]["maximize"] = ob.param_groups[0]["maximize"] = True
        run_lockstep(oa, ob, a, b, 1, gen)
        sa.step()
        sb.step()
    assert len(kernels._loaded) == 2 and kernels.available()
    for memo in kernels._loaded:
        assert memo[0] == "jit" and memo[1] == 3  # the small tensors, then the two large ones
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs <= 4
    for x, y in zip(a, b):  # parameters of magnitude ~1: last-bit rounding (FMA) in a few
        torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-6)


# ------------------------------------------------------------------- torch.optim's step wrapper


def test_step_runs_without_grad_and_restores_the_grad_mode(monkeypatch):
    """The update is not recorded by autograd; the caller's grad mode is back afterwards, also
    when the step raises; a closure runs with grad."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = go.SGD([p], lr=0.1)
    for enabled in (True, False):
        p.grad = torch.ones(3)
        with torch.set_grad_enabled(enabled):
            opt.step()
            assert torch.is_grad_enabled() is enabled
        assert p.is_leaf and p.grad_fn is None
    loss = opt.step(lambda: (p * 2).sum())
    assert loss.requires_grad

    def fail(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(opt, "_step_segment", fail)
    with pytest.raises(RuntimeError, match="boom"):
        opt.step()
    assert torch.is_grad_enabled()


def test_step_hooks_run_as_in_torch():
    """Global and per-optimizer pre/post hooks, in torch's order; a pre-hook may replace the
    arguments (here: the closure)."""
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = go.SGD([w], lr=0.1)
    calls = []

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global pre")),
        opt.register_step_pre_hook(lambda o, a, k: ((closure,), k)),  # supplies the closure
        opt.register_step_post_hook(lambda o, a, k: calls.append(("post", a[0] is closure))),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post")),
    ]
    try:
        loss = opt.step()
    finally:
        for h in handles:
            h.remove()
    assert loss.item() == pytest.approx(5.0)  # the closure the pre-hook supplied ran
    assert calls == ["global pre", ("post", True), "global post"]
    assert torch.equal(w.detach(), torch.tensor([0.8, -1.6]))
    opt.register_step_pre_hook(lambda o, a, k: "not a tuple")
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()


def test_state_dict_hooks_run_as_in_torch():
    """state_dict pre/post hooks and load_state_dict pre/post hooks: a post hook may add an
    entry (kept as it is, even one that is not a parameter's state), a load pre hook may edit
    what is loaded; the numbers after the round trip are torch's."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = go.Adam([w], lr=0.1)
    (w**2).sum().backward()
    opt.step()
    seen = []

    def post(optimizer, sd):
        sd["state"]["note"] = 7  # not a parameter's dict
        return sd

    def load_pre(optimizer, sd):
        seen.append("load pre")
        sd = copy.deepcopy(sd)
        sd["state"].pop("note")
        sd["param_groups"][0]["lr"] = 0.5
        return sd

    opt.register_state_dict_pre_hook(lambda o: seen.append("pre"))
    opt.register_state_dict_post_hook(post)
    sd = opt.state_dict()
    assert seen == ["pre"] and sd["state"]["note"] == 7
    other = go.Adam([torch.nn.Parameter(w.detach().clone())], lr=0.1)
    other.register_load_state_dict_pre_hook(load_pre)
    other.register_load_state_dict_post_hook(lambda o: seen.append("load post"))
    other.load_state_dict(sd)
    assert seen == ["pre", "load pre", "load post"]
    assert other.param_groups[0]["lr"] == 0.5
    ref = torch.optim.Adam([torch.nn.Parameter(torch.tensor([1.0, -2.0]))], lr=0.1)
    (ref.param_groups[0]["params"][0] ** 2).sum().backward()
    ref.step()
    for name in ("exp_avg", "exp_avg_sq", "step"):
        p_ref = ref.param_groups[0]["params"][0]
        torch.testing.assert_close(other.state_dict()["state"][0][name], ref.state[p_ref][name])


def test_step_is_named_in_the_profiler_and_torch_schedulers_see_it():
    import warnings

    w = torch.nn.Parameter(torch.ones(3))
    opt = go.Adam([w], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    w.grad = torch.ones(3)
    with torch.profiler.profile() as prof:
        opt.step()
    assert "Optimizer.step#Adam.step" in {e.name for e in prof.events()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()" would
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_native_finite_check_finds_every_nan_and_inf(dtype):
    """The fit() guard's native check: every position, NaN and both infinities, every float
    dtype; None gradients skipped; what it cannot read (non-contiguous) is left to the caller."""
    check = _trainer_helpers().all_finite
    params = [torch.nn.Parameter(torch.zeros(n, dtype=dtype)) for n in (1, 33, 70)]
    params.append(torch.nn.Parameter(torch.zeros(4, dtype=dtype)))  # its grad stays None
    for p in params[:3]:
        p.grad = torch.randn(p.shape).to(dtype)
    loss = torch.tensor(0.5, dtype=dtype)

    def run(loss=loss):
        return check(params, loss)

    assert run() == 1
    for p in params[:3]:
        for i in range(p.numel()):
            for bad in (float("nan"), float("inf"), float("-inf")):
                keep = p.grad[i].item()
                p.grad[i] = bad
                assert run() == 0, (p.numel(), i, bad)
                p.grad[i] = keep
    assert run() == 1
    assert run(torch.tensor(float("nan"), dtype=dtype)) == 0
    params[1].grad = torch.randn(33, 2).to(dtype)[:, 0]  # a strided view: not read natively
    assert run() == -1


def test_native_finite_check_leaves_subclasses_and_sparse_alone():
    """Tensors that could call into Python (subclasses) or have no dense storage
    are answered 'cannot tell' (-1) without being read."""
    from torch.testing._internal.two_tensor import TwoTensor

    check = _trainer_helpers().all_finite
    p = torch.nn.Parameter(torch.zeros(3))
    loss = torch.tensor(1.0)
    p.grad = torch.ones(3)
    assert check([p], loss) == 1
    two = TwoTensor(torch.ones(3), torch.ones(3))
    assert check([p], two) == -1  # a subclass as the loss
    q = torch.nn.Parameter(torch.zeros(5, 3))
    q.grad = torch.zeros(5, 3).to_sparse()
    assert check([q], loss) == -1
    assert check([p, "not a tensor"], loss) == -1


def test_native_functions_refuse_wrong_arguments():
    """The extensions' functions check their arguments (a Python error, never a bad read)."""
    engine_helpers, trainer = _engine_helpers(), _trainer_helpers()
    with pytest.raises(TypeError, match="all_finite takes 2 arguments"):
        trainer.all_finite([])
    with pytest.raises(TypeError, match="loss must be a tensor"):
        trainer.all_finite([], 0.5)
    with pytest.raises(TypeError, match="layout takes 3 arguments"):
        engine_helpers.layout([], None)
    ptrs = torch.zeros(0, dtype=torch.int64)
    with pytest.raises(TypeError, match="ptrs must be a contiguous int64"):
        engine_helpers.layout([], torch.zeros(0), [])
    with pytest.raises(TypeError, match="views must be a list of 0"):
        engine_helpers.layout([], ptrs, [None])
    with pytest.raises(TypeError, match="params\\[i\\] must be a tensor"):
        engine_helpers.layout([1], torch.zeros(1, dtype=torch.int64), [None])
    assert engine_helpers.layout([], ptrs, []) == 2  # no parameters: nothing moved
    with pytest.raises(TypeError, match="offsets must be"):
        engine_helpers.gather([], torch.zeros(1, dtype=torch.int64), torch.zeros(3))


def test_native_gather_copies_every_gradient_or_none():
    """The gather: each .grad copied to its offset in the buffer, bit for bit; a missing or
    strided gradient, or one past the buffer's end, means nothing is copied (False)."""
    gather = _engine_helpers().gather
    params = [torch.nn.Parameter(torch.zeros(s)) for s in ((3, 4), (5,), (0,), (2, 2))]
    for p in params:
        p.grad = torch.randn(p.shape)
    offsets = torch.tensor([0, 16, 21, 32], dtype=torch.int64)
    buffer = torch.full((40,), -1.0)
    assert gather(params, offsets, buffer)
    for p, o in zip(params, offsets.tolist()):
        assert torch.equal(buffer[o : o + p.numel()].view_as(p), p.grad)
    assert torch.equal(buffer[12:16], torch.full((4,), -1.0))  # gaps untouched
    before = buffer.clone()
    for change in (
        lambda p: setattr(p, "grad", None),
        lambda p: setattr(p, "grad", torch.randn(2, 4)[:, :2]),
    ):
        keep = params[3].grad
        change(params[3])
        assert not gather(params, offsets, buffer)
        assert torch.equal(buffer, before)
        params[3].grad = keep
    assert not gather(params, torch.tensor([0, 16, 21, 38], dtype=torch.int64), buffer)
    assert torch.equal(buffer, before)


def test_optimizer_methods_do_not_import_dynamo():
    """torch.optim wraps add_param_group/state_dict/load_state_dict/zero_grad in
    torch._disable_dynamo, whose first call imports torch._dynamo (~1.3 s); gradwise calls them
    plainly while Dynamo is not loaded. Checked in a fresh interpreter."""
    import subprocess
    import sys

    code = """
import sys, torch, gradwise.optim as go
p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
opt = go.Adam([p], lr=0.1)
opt.add_param_group({"params": [q], "lr": 0.2})
p.grad, q.grad = torch.ones(3), torch.ones(2)
opt.step()
opt.load_state_dict(opt.state_dict())
opt.zero_grad()
assert opt.param_groups[1]["lr"] == 0.2 and p.grad is None
print("torch._dynamo" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_optimizer_methods_as_pytorch_wraps_them_once_dynamo_is_loaded():
    """With Dynamo imported, the same methods go through torch's wrappers (still correct)."""
    import torch._dynamo  # noqa: F401

    p = torch.nn.Parameter(torch.ones(3))
    opt = go.SGD([p], lr=0.5, momentum=0.9)
    p.grad = torch.ones(3)
    opt.step()
    sd = opt.state_dict()
    other = go.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.1, momentum=0.9)
    other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.5
    torch.testing.assert_close(other.state_dict()["state"][0]["momentum_buffer"], torch.ones(3))
    opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(1))]})
    opt.zero_grad()
    assert p.grad is None and len(opt.param_groups) == 2


def test_native_step_record_counts_as_argmax_does_and_keeps_the_loss():
    """fit()'s one-call record: the loss's value appended, the right predictions counted with
    torch.argmax's choice (first of equal maxima, a NaN above all), and nothing recorded for a
    NaN gradient or for what it cannot read."""
    from torch.testing._internal.two_tensor import TwoTensor

    record = _trainer_helpers().record
    p = torch.nn.Parameter(torch.zeros(5))
    p.grad = torch.ones(5)
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(64, 7, generator=gen)
    out[3] = 1.0  # all equal: column 0
    out[4, 2] = out[4, 5] = 9.0  # two maxima: the first
    out[5, 4] = float("nan")  # a NaN: its column
    out[6, 1] = out[6, 3] = float("nan")  # two NaNs: the first
    labels = torch.randint(0, 7, (64,), generator=gen)
    labels[3:7] = torch.tensor([0, 2, 4, 1])
    expected = int((out.argmax(1) == labels).sum())
    for scores in (out, out.double()):
        right = torch.zeros((), dtype=torch.int64)
        losses: list = []
        loss = torch.tensor(0.25)
        assert record([p], loss, scores, labels, right, losses) == 3
        assert record([p], loss, scores, labels, right, losses) == 3
        assert losses == [0.25, 0.25] and int(right) == 2 * expected
    right = torch.zeros((), dtype=torch.int64)
    losses = []
    half, loss = out.half(), torch.tensor(1.5, dtype=torch.float64)
    args = ([p], loss, half, labels, right)
    assert record(*args, losses) == 2  # recorded, not counted: float16 scores
    no_out = ([p], loss, None, None, None)
    assert record(*no_out, losses) == 2
    assert losses == [1.5, 1.5] and int(right) == 0
    p.grad[2] = float("inf")
    assert record(*args, losses) == 0 and losses == [1.5, 1.5]
    p.grad[2] = 1.0
    two = TwoTensor(torch.tensor(1.0), torch.tensor(1.0))
    assert record([p], two, None, None, None, losses) == -1
    assert losses == [1.5, 1.5]
    with pytest.raises(TypeError, match="record takes 6 arguments"):
        record(*no_out)
    with pytest.raises(TypeError, match="losses must be a list"):
        record(*no_out, ())


def test_gradwise_cache_lists_and_clears_the_kernel_cache(monkeypatch, tmp_path):
    """`gradwise cache` lists the cached kernels by rule; `--clear --older-than DAYS` deletes
    only those unused for that long, `--clear` all of them; a build in progress (a dot file)
    and files that are not kernels are left alone."""
    import os
    import time

    from click.testing import CliRunner

    from gradwise.cli import main
    from gradwise.optim import kernels

    monkeypatch.setenv("GRADWISE_KERNEL_CACHE", str(tmp_path))
    now = time.time()
    files = {"adam-1.pt2": 1, "adam-2.pt2": 40, "sgd-3.pt2": 2, "native-optim-4.so": 0.5}
    for name, days in files.items():
        (tmp_path / name).write_bytes(b"x" * 1000)
        os.utime(tmp_path / name, (now - 86400 * days, now - 86400 * days))
    (tmp_path / ".adam-5.123.tmp.pt2").write_bytes(b"building")
    (tmp_path / "notes.txt").write_text("mine")

    entries = kernels.cache_entries()  # oldest use first
    assert [e["path"].name for e in entries] == [
        "adam-2.pt2",
        "sgd-3.pt2",
        "adam-1.pt2",
        "native-optim-4.so",
    ]
    assert [e["name"] for e in entries] == ["adam", "sgd", "adam", "native"]
    shown = CliRunner().invoke(main, ["cache"])
    assert shown.exit_code == 0, shown.output
    assert "adam" in shown.output and "sgd" in shown.output and "native" in shown.output
    assert "all" in shown.output and "4" in shown.output

    cleared = CliRunner().invoke(main, ["cache", "--clear", "--older-than", "30"])
    assert cleared.exit_code == 0 and "removed 1 file(s)" in cleared.output
    assert not (tmp_path / "adam-2.pt2").exists() and (tmp_path / "adam-1.pt2").exists()
    cleared = CliRunner().invoke(main, ["cache", "--clear"])
    assert cleared.exit_code == 0 and "removed 3 file(s)" in cleared.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [".adam-5.123.tmp.pt2", "notes.txt"]

    usage = CliRunner().invoke(main, ["cache", "--older-than", "3"])
    assert usage.exit_code == 2
    usage = CliRunner().invoke(main, ["cache", "--clear", "--older-than", "-1"])
    assert usage.exit_code == 2


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID, ids=IDS)
def test_complex_parameters_match_torch(name, cls, tcls, kw):
    """A complex parameter is its real and imaginary parts, as in torch.optim (the square of a
    complex gradient would be a wrong answer with no error): every optimizer and option, complex64
    and complex128, in lockstep with torch's for-loop."""
    if kw.get("l1"):
        pytest.skip("torch has no l1 to compare with")
    gen = torch.Generator().manual_seed(5)
    for dtype, tol in ((torch.complex64, 1e-6), (torch.complex128, 1e-12)):
        values = [torch.randn(s, generator=gen, dtype=dtype) for s in ((4, 3), (7,), (2, 2))]
        a, b = twins(values)
        oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
        for _ in range(5):
            for x, y in zip(a, b):
                g = torch.randn(x.shape, generator=gen, dtype=dtype)
                x.grad, y.grad = g.clone(), g.clone()
            oa.step()
            ob.step()
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=tol, atol=tol)
            for key, value in ob.state[y].items():
                torch.testing.assert_close(oa.state[x][key], value, rtol=tol, atol=tol)


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID[::3], ids=IDS[::3])
def test_a_checkpoint_whose_step_is_a_plain_number_loads(name, cls, tcls, kw):
    """torch before 1.12 saved ``state["step"]`` as a Python number: such a checkpoint loads and
    training goes on as from torch's own class loading it."""
    a, b = twins(make_params(torch.float32))
    oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
    gen = torch.Generator().manual_seed(6)
    run_lockstep(oa, ob, a, b, 3, gen)
    old = ob.state_dict()
    for state in old["state"].values():
        if "step" in state:
            state["step"] = float(state["step"])  # the old layout
    oa.load_state_dict(copy.deepcopy(old))
    ob.load_state_dict(copy.deepcopy(old))
    run_lockstep(oa, ob, a, b, 3, gen)
    assert_same_state(oa, ob, a, b, torch.float32)


#: param-group keys torch added after 1.8 (maximize 1.11, foreach/capturable 1.12,
#: differentiable 1.13, fused 2.0, decoupled_weight_decay later), and gradwise's own
NEWER_KEYS = (
    "maximize",
    "foreach",
    "capturable",
    "differentiable",
    "fused",
    "decoupled_weight_decay",
    "l1",
    "state_dtype",
    "eps_inside_sqrt",
)


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID[::3], ids=IDS[::3])
def test_a_checkpoint_from_torch_1_8_loads(name, cls, tcls, kw):
    """torch 1.8's layout: a plain-number ``step`` and param groups without the keys later
    versions added. It loads with each missing key at its default, and training goes on as
    from torch's own class loading it."""
    a, b = twins(make_params(torch.float32))
    oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
    gen = torch.Generator().manual_seed(7)
    run_lockstep(oa, ob, a, b, 3, gen)
    old = ob.state_dict()
    for group in old["param_groups"]:
        for key in NEWER_KEYS:
            if key not in kw:
                group.pop(key, None)
    for state in old["state"].values():
        if "step" in state:
            state["step"] = int(state["step"])
    oa.load_state_dict(copy.deepcopy(old))
    ob.load_state_dict(copy.deepcopy(old))
    assert oa.param_groups[0]["maximize"] == kw.get("maximize", False)
    run_lockstep(oa, ob, a, b, 3, gen)
    assert_same_state(oa, ob, a, b, torch.float32)


def test_state_dict_keeps_an_entry_that_is_not_a_parameters_state():
    """A state-dict pre-hook (or a user) may put other entries in ``optimizer.state``;
    ``state_dict()`` keeps them as torch's does, instead of failing."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = go.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    opt.state["extra"] = 7
    sd = opt.state_dict()
    assert sd["state"]["extra"] == 7 and float(sd["state"][0]["step"]) == 1.0


@pytest.mark.parametrize(
    ("cls", "kw", "words"),
    [
        ("SGD", dict(lr=-0.1), "Invalid learning rate: -0.1"),
        ("SGD", dict(lr=0.1, momentum=-0.5), "Invalid momentum value: -0.5"),
        ("SGD", dict(lr=torch.tensor([0.1, 0.1])), "Tensor lr must be 1-element"),
        ("Adam", dict(betas=(1.0, 0.0)), "Invalid beta parameter at index 0: 1.0"),
        ("Adam", dict(betas=(0.9, 1.5)), "Invalid beta parameter at index 1: 1.5"),
        ("AdamW", dict(weight_decay=-1), "Invalid weight_decay value: -1"),
        ("Adam", dict(eps=-1e-8), "Invalid epsilon value: -1e-08"),
        ("Adam", dict(betas=(0.9, torch.tensor(0.99))), "both floats or both Tensors"),
        (
            "AdamW",
            dict(lr=torch.tensor(0.01), foreach=True),
            "lr as a Tensor is not supported for capturable=False and foreach=True",
        ),
        (
            "Adam",
            dict(betas=(torch.tensor(0.9), torch.tensor(0.99)), foreach=True),
            r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True",
        ),
        ("RMSprop", dict(alpha=-0.1), "Invalid alpha value: -0.1"),
        ("RMSprop", dict(momentum=-1.0), "Invalid momentum value: -1.0"),
        ("Adagrad", dict(lr_decay=-0.5), "Invalid lr_decay value: -0.5"),
        ("Adagrad", dict(initial_accumulator_value=-1.0), "initial_accumulator_value value: -1.0"),
    ],
)
def test_bad_arguments_say_what_torch_optim_says_too(cls, kw, words):
    """A bad argument raises what torch.optim raises (ValueError), with gradwise's message
    (owner, argument, what is allowed, the value) and the words torch's own check uses, which
    code written against torch may look for; torch's class raises for the same input."""
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match=words) as ours:
        getattr(go, cls)(p, **kw)
    assert str(ours.value).startswith(f"{cls}: ")
    with pytest.raises(ValueError, match=words):
        getattr(torch.optim, cls)(p, **kw)


def _uncoalesced_sparse(shape, gen):
    """A sparse gradient with repeated indices (torch adds them up), as torch's own tests use."""
    rows = torch.randint(0, shape[0], (7,), generator=gen)
    values = torch.randn(7, *shape[1:], generator=gen)
    return torch.sparse_coo_tensor(rows[None], values, shape)


@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        ("SGD", dict(lr=0.1)),
        ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
        ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, maximize=True)),
        ("Adagrad", dict(lr=0.1)),
        ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, maximize=True)),
    ],
)
def test_sparse_gradients_where_torch_takes_them(cls, kw):
    """SGD and Adagrad take sparse gradients (uncoalesced, beside dense ones in the same group)
    and give torch's numbers; so does an nn.Embedding(sparse=True) trained through them."""
    gen = torch.Generator().manual_seed(31)
    a, b = twins(make_params(torch.float32, shapes=[(10, 4), (6,)]))
    oa, ob = getattr(go, cls)(a, **kw), getattr(torch.optim, cls)(b, **kw)
    for _ in range(6):
        sparse = _uncoalesced_sparse((10, 4), gen)
        dense = torch.randn(6, generator=gen)
        a[0].grad, b[0].grad = sparse.clone(), sparse.clone()
        a[1].grad, b[1].grad = dense.clone(), dense.clone()
        oa.step()
        ob.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)

    torch.manual_seed(0)
    emb = torch.nn.Embedding(20, 3, sparse=True)
    ref = torch.nn.Embedding(20, 3, sparse=True)
    ref.load_state_dict(emb.state_dict())
    oa, ob = (
        getattr(go, cls)(emb.parameters(), **kw),
        getattr(torch.optim, cls)(ref.parameters(), **kw),
    )
    for _ in range(4):
        ids = torch.randint(0, 20, (8,), generator=gen)
        for model, opt in ((emb, oa), (ref, ob)):
            opt.zero_grad()
            model(ids).square().sum().backward()
            assert model.weight.grad.is_sparse
            opt.step()
    torch.testing.assert_close(emb.weight, ref.weight, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("cls", "kw", "words"),
    [
        (
            "Adam",
            dict(lr=0.1),
            "Adam does not support sparse gradients, please consider SparseAdam",
        ),
        ("AdamW", dict(lr=0.1), "does not support sparse gradients"),
        ("RMSprop", dict(lr=0.1), "RMSprop does not support sparse gradients"),
        ("Adagrad", dict(lr=0.1, weight_decay=0.1), "weight_decay option is not compatible"),
        ("SGD", dict(lr=0.1, weight_decay=0.1), "not compatible with sparse gradients"),
    ],
)
def test_sparse_gradients_are_refused_where_torch_refuses_them(cls, kw, words):
    p = torch.nn.Parameter(torch.randn(5, 3))
    opt = getattr(go, cls)([p], **kw)
    p.grad = torch.randn(5, 3).to_sparse()
    with pytest.raises(RuntimeError, match=words):
        opt.step()
    assert p.grad.is_sparse


def test_fused_true_on_meta_parameters_is_refused_at_step():
    """fused=True with parameters on the meta device: step() raises torch's error (its words),
    as torch.optim's fused classes do; on real parameters the same construction steps."""
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    opt = go.Adam(model.parameters(), fused=True)
    with torch.device("meta"):
        for p in model.parameters():
            p.grad = torch.rand_like(p)
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating"):
        opt.step()
    with pytest.raises(RuntimeError, match="`fused=True` requires all the params to be floating"):
        torch.optim.Adam(model.parameters(), fused=True).step()
    real = torch.nn.Parameter(torch.randn(3))
    real.grad = torch.randn(3)
    go.Adam([real], fused=True, lr=0.1).step()
    assert torch.isfinite(real).all()
    # the model materialized as new Parameters: the optimizer's meta ones, without gradients
    # now, are not stepped, and so not refused (torch's suite does this)
    opt.zero_grad(set_to_none=True)
    model.to_empty(device="cpu")
    opt.step()

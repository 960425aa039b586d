"""The rest of torch.optim's elementwise algorithms against torch.optim: parameters and every
state tensor equal to torch's, state_dict both ways, differentiable=True, complex parameters."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys

import pytest
import torch

import gradwise.optim as go
from gradwise.optim import engine

# (name, gradwise class, torch class, kwargs): each argument at its default and at another value
GRID = [
    ("nadam", go.NAdam, torch.optim.NAdam, dict()),
    (
        "nadam-all",
        go.NAdam,
        torch.optim.NAdam,
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, momentum_decay=0.01),
    ),
    (
        "nadamw-max",
        go.NAdam,
        torch.optim.NAdam,
        dict(weight_decay=0.2, decoupled_weight_decay=True, maximize=True),
    ),
    ("radam", go.RAdam, torch.optim.RAdam, dict()),
    (
        "radam-all",
        go.RAdam,
        torch.optim.RAdam,
        dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, maximize=True),
    ),
    ("radamw", go.RAdam, torch.optim.RAdam, dict(weight_decay=0.2, decoupled_weight_decay=True)),
    ("adamax", go.Adamax, torch.optim.Adamax, dict()),
    (
        "adamax-all",
        go.Adamax,
        torch.optim.Adamax,
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.1, maximize=True),
    ),
    ("adadelta", go.Adadelta, torch.optim.Adadelta, dict()),
    (
        "adadelta-all",
        go.Adadelta,
        torch.optim.Adadelta,
        dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.1, maximize=True),
    ),
    ("rprop", go.Rprop, torch.optim.Rprop, dict()),
    (
        "rprop-all",
        go.Rprop,
        torch.optim.Rprop,
        dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2), maximize=True),
    ),
    ("asgd", go.ASGD, torch.optim.ASGD, dict()),
    (
        "asgd-all",
        go.ASGD,
        torch.optim.ASGD,
        dict(lr=0.05, lambd=1e-2, alpha=0.5, t0=3, weight_decay=0.1, maximize=True),
    ),
]
IDS = [g[0] for g in GRID]
SHAPES = [(4, 3), (7,), (0,), (2, 3, 2), (1,)]
TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}


def make_params(dtype, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def twins(values):
    return (
        [torch.nn.Parameter(v.clone()) for v in values],
        [torch.nn.Parameter(v.clone()) for v in values],
    )


def run_lockstep(oa, ob, a, b, steps, gen, none_at=()):
    for i in range(steps):
        for j, (x, y) in enumerate(zip(a, b)):
            if (i, j) in none_at:
                x.grad = y.grad = None
                continue
            g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype)
            x.grad, y.grad = g.clone(), g.clone()
        oa.step()
        ob.step()


def assert_close(x, y, dtype, what):
    if x.numel() == 0:
        return
    x, y = x.detach().double(), y.detach().double()
    err = (x - y).abs().max().item() / max(1.0, y.abs().max().item())
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:g}"


def assert_same_state(oa, ob, a, b, dtype):
    """Parameters and every state tensor equal, and of torch's dtypes."""
    for x, y in zip(a, b):
        assert_close(x, y, dtype, "param")
        sa, sb = oa.state.get(x, {}), ob.state.get(y, {})
        assert set(sa) == set(sb), (set(sa), set(sb))
        for k, v in sb.items():
            assert sa[k].shape == v.shape and sa[k].dtype == v.dtype, k
            assert_close(sa[k], v, dtype, f"state {k}")


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_with_torch(name, cls, tcls, kw, dtype):
    """Eight steps; parameter 1 has no gradient on step 3 (skipped, as torch skips it), then
    the parameters' step counts differ."""
    a, b = twins(make_params(dtype))
    oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
    run_lockstep(oa, ob, a, b, 8, torch.Generator().manual_seed(1), none_at={(3, 1)})
    assert_same_state(oa, ob, a, b, dtype)


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID, ids=IDS)
def test_param_groups_zero_grad_views_and_torch_scheduler(name, cls, tcls, kw):
    """Two groups, one added later, gradients from backward into zero_grad(False)'s views, and
    torch's StepLR changing the lr: still torch's numbers."""
    torch.manual_seed(0)
    net_a = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    net_a = net_a.double()
    net_b = copy.deepcopy(net_a)
    extra = {"lr": kw.get("lr", 0.01) * 3}
    oa = cls([{"params": net_a[0].parameters()}, {"params": [net_a[2].weight], **extra}], **kw)
    ob = tcls(
        [{"params": net_b[0].parameters()}, {"params": [net_b[2].weight], **extra}],
        foreach=False,
        **kw,
    )
    sa = torch.optim.lr_scheduler.StepLR(oa, step_size=3, gamma=0.5)
    sb = torch.optim.lr_scheduler.StepLR(ob, step_size=3, gamma=0.5)
    x, y = torch.randn(32, 6, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    for i in range(8):
        if i == 4:
            oa.add_param_group({"params": [net_a[2].bias]})
            ob.add_param_group({"params": [net_b[2].bias]})
        for net, opt, sched in ((net_a, oa, sa), (net_b, ob, sb)):
            opt.zero_grad(set_to_none=False)
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
            sched.step()
    pa, pb = list(net_a.parameters()), list(net_b.parameters())
    assert_same_state(oa, ob, pa, pb, torch.float64)


@pytest.mark.parametrize("saved_by", ["torch", "gradwise"])
@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID, ids=IDS)
def test_state_dict_interchange(name, cls, tcls, kw, saved_by):
    """A state saved by either library loads into both; the two then continue in lockstep
    (torch's own load casts per-parameter scalars to the parameter's dtype: both get that)."""
    first = tcls if saved_by == "torch" else cls
    vals = make_params(torch.float64)
    saved = [torch.nn.Parameter(v.clone()) for v in vals]
    opt = first(saved, **(dict(kw, foreach=False) if first is tcls else kw))
    gen = torch.Generator().manual_seed(4)
    for _ in range(6):
        for p in saved:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    a, b = twins([p.detach() for p in saved])
    oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
    for o in (oa, ob):
        buf.seek(0)
        o.load_state_dict(torch.load(buf, weights_only=True))
    assert_same_state(oa, ob, a, b, torch.float64)
    run_lockstep(oa, ob, a, b, 6, gen)
    assert_same_state(oa, ob, a, b, torch.float64)
    assert oa.state_dict()["param_groups"][0]["lr"] == ob.state_dict()["param_groups"][0]["lr"]


def differentiable_step(cls, kw, warm_steps=3):
    """One ``differentiable=True`` step from a state warmed by plain steps: the new parameter
    and elementwise state, and the vector-Jacobian products of a random cotangent with respect
    to the old parameter, the gradient and the old elementwise state (per-parameter scalar
    state, e.g. NAdam's mu_product, is carried over but not differentiated: torch updates it in
    place)."""
    gen = torch.Generator().manual_seed(0)
    warm = torch.randn(5, 3, dtype=torch.float64, generator=gen).requires_grad_()
    opt = cls([warm], **kw)
    for _ in range(warm_steps):
        warm.grad = torch.randn(5, 3, dtype=torch.float64, generator=gen)
        opt.step()
    old = opt.state[warm]
    names = [n for n, t in old.items() if t.shape == warm.shape]
    inputs = [warm.detach().clone().requires_grad_()]
    inputs.append(torch.randn(5, 3, dtype=torch.float64, generator=gen).requires_grad_())
    inputs += [old[n].detach().clone().requires_grad_() for n in names]
    param = inputs[0].clone()  # not a leaf: the step changes it in place, recorded
    param.grad = inputs[1]
    opt_d = cls([param], **dict(kw, differentiable=True))
    opt_d.state[param].update({n: t.detach().clone() for n, t in old.items()})
    opt_d.state[param].update(dict(zip(names, (t.clone() for t in inputs[2:]))))
    opt_d.step()
    outputs = [param] + [opt_d.state[param][n] for n in names]
    cotangent = [torch.randn(o.shape, dtype=o.dtype, generator=gen) for o in outputs]
    vjps = torch.autograd.grad(outputs, inputs, cotangent, allow_unused=True)
    scalars = {n: t.detach() for n, t in opt_d.state[param].items() if n not in names}
    return [o.detach() for o in outputs], vjps, scalars


#: one configuration per algorithm (the one with the most options on)
DIFFERENTIABLE = [g for g in GRID if g[0].endswith("-all")]


@pytest.mark.parametrize(
    ("name", "cls", "tcls", "kw"), DIFFERENTIABLE, ids=[g[0] for g in DIFFERENTIABLE]
)
@pytest.mark.parametrize("step_dtype", [torch.float64, torch.float32])
def test_differentiable_step_has_torchs_values_and_gradients(name, cls, tcls, kw, step_dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(step_dtype)
    try:
        want, want_vjps, want_scalars = differentiable_step(tcls, kw)
        got, got_vjps, got_scalars = differentiable_step(cls, kw)
    finally:
        torch.set_default_dtype(previous)
    tol = (
        dict(rtol=1e-12, atol=1e-14) if step_dtype == torch.float64 else dict(rtol=1e-6, atol=1e-9)
    )
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **tol)
    for g, w in zip(got_vjps, want_vjps, strict=True):
        assert (g is None) == (w is None)
        if w is not None:
            torch.testing.assert_close(g, w, **tol)
    assert got_scalars.keys() == want_scalars.keys()
    for n, w in want_scalars.items():
        torch.testing.assert_close(got_scalars[n], w, rtol=0, atol=0)


COMPLEX = [g for g in GRID if g[0].endswith("-all") or g[0] == "nadamw-max"]


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), COMPLEX, ids=[g[0] for g in COMPLEX])
def test_complex_parameters_match_torch(name, cls, tcls, kw):
    """A complex parameter is its real and imaginary parts, as in torch.optim."""
    gen = torch.Generator().manual_seed(5)
    for dtype, tol in ((torch.complex64, 1e-6), (torch.complex128, 1e-12)):
        values = [torch.randn(s, generator=gen, dtype=dtype) for s in ((4, 3), (7,))]
        a, b = twins(values)
        oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
        run_lockstep(oa, ob, a, b, 6, gen)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=tol, atol=tol)
            for key, value in ob.state[y].items():
                torch.testing.assert_close(oa.state[x][key], value, rtol=tol, atol=tol)


def test_bfloat16_step_counters_count_past_256_on_the_per_tensor_path():
    """A step counter (or per-parameter scalar state) never goes through a bfloat16 parameter's
    dtype: before, per-tensor steps of a bfloat16 Adam froze ``step`` at 256."""
    a = [torch.nn.Parameter(torch.randn(3, dtype=torch.bfloat16)) for _ in range(2)]
    opt = go.Adam(a)
    for i in range(300):
        a[0].grad = torch.randn(3, dtype=torch.bfloat16)
        a[1].grad = None if i % 2 else torch.randn(3, dtype=torch.bfloat16)
        opt.step()
    assert opt.state[a[0]]["step"].item() == 300 and opt.state[a[1]]["step"].item() == 150


DEFAULTS = [g for g in GRID if "-" not in g[0]]


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), DEFAULTS, ids=[g[0] for g in DEFAULTS])
def test_low_precision_and_state_dtype(name, cls, tcls, kw):
    """bfloat16 parameters follow torch to bfloat16 rounding; ``state_dtype`` keeps the
    elementwise state in that dtype and the per-parameter scalars in torch's."""
    a, b = twins(make_params(torch.bfloat16))
    oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
    run_lockstep(oa, ob, a, b, 6, torch.Generator().manual_seed(2))
    assert_same_state(oa, ob, a, b, torch.bfloat16)
    p = torch.nn.Parameter(torch.randn(5))
    opt = cls([p], state_dtype=torch.bfloat16, **kw)
    p.grad = torch.randn(5)
    opt.step()
    for key, value in opt.state[p].items():
        want = torch.bfloat16 if value.shape == p.shape else torch.float32
        assert value.dtype == want, key


BAD = [
    (go.NAdam, dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0"),
    (go.NAdam, dict(momentum_decay=-1.0), "Invalid momentum_decay value"),
    (go.NAdam, dict(eps=-1.0), "Invalid epsilon value"),
    (go.RAdam, dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1"),
    (go.Adamax, dict(eps=-1.0), "Invalid epsilon value"),
    (go.Adadelta, dict(rho=1.5), "Invalid rho value"),
    (go.Rprop, dict(etas=(1.5, 2.0)), "Invalid eta values"),
    (go.ASGD, dict(weight_decay=-1.0), "Invalid weight_decay value"),
    # torch takes these, and its rate's denominator then reaches 0 (lambd) or its power turns
    # the decay into growth (alpha): refused
    (go.ASGD, dict(lambd=-1.0), r"lambd must be >= 0; received lambd=-1.0"),
    (go.ASGD, dict(alpha=-0.5), r"alpha must be >= 0; received alpha=-0.5"),
]


@pytest.mark.parametrize(("cls", "kw", "words"), BAD, ids=[f"{c.__name__}-{w}" for c, _, w in BAD])
def test_bad_arguments_say_what_torch_optim_says_too(cls, kw, words):
    with pytest.raises(ValueError, match=words):
        cls([torch.nn.Parameter(torch.zeros(2))], **kw)


def test_an_option_torchs_class_lacks_is_refused():
    """Rprop has no weight decay in torch: refused in the constructor and in a new group."""
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(TypeError):
        go.Rprop([p], weight_decay=0.1)
    opt = go.Rprop([p])
    with pytest.raises(ValueError, match="weight_decay"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))], "weight_decay": 0.1})
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))], "weight_decay": 0})
    with pytest.raises(TypeError):
        go.NAdam([p], fused=True)  # torch's NAdam and ASGD have no fused implementation


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), DEFAULTS, ids=[g[0] for g in DEFAULTS])
def test_state_is_flat_and_scalar_state_one_buffer_per_segment(name, cls, tcls, kw):
    """Every algorithm here runs flat, with its state tensors views of the segment's buffers;
    per-parameter scalar state (NAdam's mu_product, ASGD's eta and mu) stays one 0-d tensor
    per parameter, as torch keeps it, each a view of one buffer per segment, and a state_dict
    holds copies that stand on their own."""
    a = [torch.nn.Parameter(torch.randn(s)) for s in ((3, 2), (5,))]
    opt = cls(a, **kw)
    for _ in range(3):
        for p in a:
            p.grad = torch.randn(p.shape)
        opt.step()
    seg = opt._group_segments(opt.param_groups[0])[0]
    assert seg.flat
    assert sorted(seg.scalar_state) == sorted(cls.scalar_state)
    saved = opt.state_dict()["state"]
    for i, p in enumerate(a):
        for key in cls.scalar_state:
            value = opt.state[p][key]
            assert value.shape == () and value.dtype == torch.float32
            assert value._base is seg.scalar_state[key]
            assert saved[i][key]._base is None and saved[i][key].untyped_storage().size() == 4
        for key in opt.state_names(opt.param_groups[0]):
            assert opt.state[p][key].shape == p.shape
            assert opt.state[p][key]._base is seg.state[key]


SCALAR = [g for g in GRID if g[1].scalar_state]


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), SCALAR, ids=[g[0] for g in SCALAR])
def test_parameters_whose_scalar_state_differs_are_parted_into_flat_segments(name, cls, tcls, kw):
    """Parameters whose scalar state differs (one of them skipped a step: its ``mu_product``
    or ``eta`` lags) cannot share a flat step, which advances the state as one value: the
    segment is parted by step count, and each part runs flat. Checked against torch for 8
    steps."""
    ours, theirs = make_params(torch.float64), make_params(torch.float64)
    ours = [torch.nn.Parameter(t) for t in ours]
    theirs = [torch.nn.Parameter(t) for t in theirs]
    a, b = cls(ours, **kw), tcls(theirs, **kw)
    g = torch.Generator().manual_seed(3)
    for step in range(8):
        for i, (p, q) in enumerate(zip(ours, theirs)):
            grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            skip = step == 2 and i == 0
            p.grad, q.grad = (None, None) if skip else (grad, grad.clone())
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
        for key in cls.scalar_state:
            torch.testing.assert_close(a.state[p][key], b.state[q][key], rtol=1e-12, atol=0)
    segments = a._group_segments(a.param_groups[0])
    assert sorted(len(s.params) for s in segments) == [1, len(ours) - 1]
    assert all(s.flat and engine.uniform_step(s) is not None for s in segments)


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID, ids=IDS)
def test_a_kernels_constants_hold_for_every_step_and_its_scalars_give_eagers_numbers(
    name, cls, tcls, kw
):
    """A fused kernel is chosen once per group options, and takes the step's numbers at run
    time (kernel_args.split): what it bakes in must not change from step to step (RAdam's
    rectification switches on at step 6 with the default betas), and the rule run on 0-d
    tensor scalars, as traced, must give the eager numbers. Checked without compiling. Scalar
    state is advanced as a flat segment advances it; ASGD's ``average`` flag switches once (at
    ``t0``), the one constant that may: a second kernel."""
    from gradwise.optim import base, kernel_args

    gen = torch.Generator().manual_seed(7)
    p = torch.nn.Parameter(torch.randn(40, dtype=torch.float64, generator=gen))
    opt = cls([p], **kw)
    group = opt.param_groups[0]
    names = opt.state_names(group)
    # positive: a valid second moment and step size
    state = {n: torch.rand(40, dtype=torch.float64, generator=gen) + 0.5 for n in names}
    scalar_state = {n: opt.init_state(p, group)[n].repeat(3) for n in cls.scalar_state}
    constants = {}
    for step in range(1, 13):
        args = opt._update_args(group, step, opt.advance(group, scalar_state, step))
        static, slots, values = kernel_args.split(args)
        average = static["coefficients"].get("average")
        assert (static, slots) == constants.setdefault(average, (static, slots)), f"step {step}"
        grad = torch.randn(40, dtype=torch.float64, generator=gen)
        eager_p, eager_s = p.detach().clone(), {n: t.clone() for n, t in state.items()}
        base.update(cls.rule, eager_p, grad, eager_s, **args)
        traced = kernel_args.Update(base.update, cls.rule, names, static, slots)
        scalars = kernel_args.scalar_tensors(values, p.device, torch.float64)
        traced(p.detach(), grad, *state.values(), *scalars)
        # float64: the two orders of rounding (Python numbers, 0-d tensors) agree to 1e-12
        torch.testing.assert_close(p.detach(), eager_p, rtol=1e-12, atol=1e-14)
        for n in names:
            torch.testing.assert_close(state[n], eager_s[n], rtol=1e-12, atol=1e-14)


FIRST_STEP_PEAK = """
import sys, torch, gradwise.optim as go
torch.set_num_threads(1)
def peak_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
params = [torch.nn.Parameter(torch.randn(2048, 2048)) for _ in range(4)]  # 64 MiB in all
for p in params:
    p.grad = torch.randn_like(p)
opt = getattr(go, sys.argv[1])(params)
before = peak_mib()
opt.step()
opt.step()
print(peak_mib() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize(("name", "states"), [("Adam", 2), ("RMSprop", 1)])
def test_the_first_step_makes_the_state_in_place(tmp_path, name, states):
    """A first step moves the parameters into their flat buffer one at a time, before any state
    exists, and then makes each state tensor at its place in the flat buffers: the peak memory
    grows by the state (64 MiB a state tensor here) and a few MiB, not by a second copy of the
    state or a full-size temporary per tensor (which added ~130 MiB to Adam's peak here), nor by
    the moment a parameter exists twice (16 MiB, when it was moved after the state was made)."""
    env = {**os.environ, "GRADWISE_KERNELS": "off", "GRADWISE_KERNEL_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", FIRST_STEP_PEAK, name],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    grew = float(done.stdout.split()[-1])
    assert 64 * states <= grew <= 64 * states + 12, done.stdout

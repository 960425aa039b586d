"""The CPU's generated kernels: every rule of the flat path traced into C, built in a child
process, checked, and run with torch's numbers."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradwise.optim as go
from gradwise.optim import base, engine, generated, kernel_args
from test_optim import GRID, _fresh_kernels, make_params, run_lockstep, twins

# optimizers beyond the parity GRID whose rules take the flat path (no ``fused`` argument: their
# kernels are built from a size up, lowered here)
MORE = [
    ("adadelta", go.Adadelta, torch.optim.Adadelta, dict(lr=0.5, weight_decay=0.1)),
    ("adamax", go.Adamax, torch.optim.Adamax, dict(lr=0.01, weight_decay=0.1)),
    ("nadam", go.NAdam, torch.optim.NAdam, dict(lr=0.01, decoupled_weight_decay=True)),
    ("radam", go.RAdam, torch.optim.RAdam, dict(lr=0.01, weight_decay=0.1)),
    ("rprop", go.Rprop, torch.optim.Rprop, dict(lr=0.01)),
    ("asgd", go.ASGD, torch.optim.ASGD, dict(lr=0.01, t0=3)),
]


def _update_module(opt):
    group = opt.param_groups[0]
    static, slots, values = kernel_args.split(opt._update_args(group, 2))
    names = sorted(opt.state_names(group))
    module = kernel_args.Update(base.update, type(opt).rule, names, static, slots)
    return module, names, values


def _cached(tmp_path, suffix):
    return [p for p in tmp_path.iterdir() if p.suffix == suffix and not p.name.startswith(".")]


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), GRID, ids=[g[0] for g in GRID])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_generated_kernels_match_torch(monkeypatch, tmp_path, name, cls, tcls, kw, dtype):
    """fused=True on the CPU runs the rule as generated C: torch's numbers to rounding (no FMA
    contraction: the roundings of the eager update, one operation at a time)."""
    kernels = _fresh_kernels(monkeypatch, tmp_path)
    a, b = twins(make_params(dtype, shapes=[(64, 33), (17,), (5, 5)]))
    oa, ob = cls(a, fused=True, **kw), tcls(b, foreach=False, **kw)
    run_lockstep(oa, ob, a, b, 12, torch.Generator().manual_seed(31))
    assert len(_cached(tmp_path, ".so")) == 1 and not _cached(tmp_path, ".pt2")
    assert len(kernels._loaded) == 1
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)
        for n, theirs in ob.state[y].items():  # every state tensor too
            torch.testing.assert_close(oa.state[x][n], theirs, rtol=tol, atol=tol)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    case=st.sampled_from([g for g in GRID if g[0].startswith(("adam", "sgd-", "rmsprop"))]),
    lr=st.floats(1e-4, 0.3),
    beta=st.floats(0.0, 0.999),
    eps=st.sampled_from([1e-8, 1e-6, 1e-3]),
    decay=st.sampled_from([0.0, 1e-3, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_property_a_generated_kernel_takes_any_hyperparameter_value(
    monkeypatch, tmp_path, case, lr, beta, eps, decay, seed
):
    """The numbers are the kernel's runtime arguments: any learning rate, beta, momentum, eps
    or decay gives torch's numbers (one build per set of flags and zeros, in this cache)."""
    _, cls, tcls, kw = case
    kw = dict(kw, lr=lr, weight_decay=decay)
    if "betas" in kw or cls in (go.Adam, go.AdamW):
        kw["betas"] = (beta, 0.999)
        kw["eps"] = eps
    elif cls is go.RMSprop:
        kw["alpha"], kw["eps"] = max(beta, 0.5), eps
    elif kw.get("momentum"):
        kw["momentum"] = max(beta, 0.1)
    _fresh_kernels(monkeypatch, tmp_path)
    a, b = twins(make_params(torch.float32, shapes=[(40, 30), (7,)], seed=seed))
    oa, ob = cls(a, fused=True, **kw), tcls(b, foreach=False, **kw)
    run_lockstep(oa, ob, a, b, 6, torch.Generator().manual_seed(seed))
    assert _cached(tmp_path, ".so")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize(("name", "cls", "tcls", "kw"), MORE, ids=[m[0] for m in MORE])
def test_the_other_flat_rules_run_generated_kernels_too(monkeypatch, tmp_path, name, cls, tcls, kw):
    kernels = _fresh_kernels(monkeypatch, tmp_path)
    monkeypatch.setattr(engine, "KERNEL_MIN_NUMEL", 1)
    monkeypatch.setattr(engine, "AUTO_BUILD_NUMEL", 1)
    a, b = twins(make_params(torch.float32, shapes=[(64, 33), (17,)]))
    oa, ob = cls(a, **kw), tcls(b, foreach=False, **kw)
    gen = torch.Generator().manual_seed(32)
    run_lockstep(oa, ob, a, b, 2, gen)  # the build starts in the background
    kernels.wait_for_builds()
    run_lockstep(oa, ob, a, b, 10, gen)
    # ASGD's average starts at t0: a kernel for each value of its flag
    kinds = 2 if name == "asgd" else 1
    assert len(kernels._loaded) == kinds and len(_cached(tmp_path, ".so")) == kinds
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=2e-6, atol=2e-6)
        for n, theirs in ob.state[y].items():  # ASGD's average (ax) too
            torch.testing.assert_close(oa.state[x][n], theirs, rtol=2e-6, atol=2e-6)


def test_lion_translates():
    """(Lion has no torch.optim twin to run against: its kernel is checked against the eager
    update when it is loaded, and here its source is what the loop needs.)"""
    p = torch.nn.Parameter(torch.randn(8))
    opt = go.Lion([p], lr=1e-3, weight_decay=0.1)
    p.grad = torch.randn(8)
    opt.step()
    module, names, values = _update_module(opt)
    text = generated.source(module, names, len(values), torch.float32)
    assert text is not None and "for (int64_t i = 0; i < n; i++)" in text
    assert "b0[i] = " in text and "b2[i] = " in text  # the parameter and exp_avg are written


def test_a_rule_outside_the_elementwise_operations_is_not_translated():
    """A reduction (or any operation without a C form, or a number read out of a tensor) means
    no generated kernel: None, and the ahead-of-time kernel is built instead."""

    def normalized(param, grad, state, *, lr):
        param.sub_(grad / grad.norm() * lr)

    def reads_a_number(param, grad, state, *, lr):
        param.sub_(grad * float(lr))

    for rule in (normalized, reads_a_number):
        module = kernel_args.Update(
            base.update,
            rule,
            [],
            dict(
                maximize=False,
                weight_decay=0,
                shrink=None,
                l1_threshold=None,
                hyperparameters={},
                coefficients={"lr": kernel_args.RUNTIME},
            ),
            [("coefficients", "lr")],
        )
        assert generated.source(module, [], 1, torch.float32) is None
    assert generated.source(module, [], 1, torch.bfloat16) is None  # float32 and float64 only


def _adam_module(monkeypatch, tmp_path):
    kernels = _fresh_kernels(monkeypatch, tmp_path)
    p = torch.nn.Parameter(torch.randn(8))
    opt = go.Adam([p], lr=0.01, amsgrad=True)
    p.grad = torch.randn(8)
    opt.step()
    module, names, values = _update_module(opt)
    spec = dict(
        update=base.update,
        rule=go.Adam.rule,
        names=names,
        static=module.static,
        slots=module.slots,
        values=values,
        device="cpu",
        dtypes=[torch.float32] * (2 + len(names)),
    )
    path, text = kernels._place(("adam",), spec)
    assert text is not None
    proc = generated.start_build(text, path, 2 + len(names), len(values), torch.float32)
    assert proc.wait() == 0 and path.exists()
    return kernels, spec, path, values


def test_the_module_refuses_what_it_was_not_built_for_and_changes_nothing(monkeypatch, tmp_path):
    kernels, spec, path, values = _adam_module(monkeypatch, tmp_path)
    kernel = generated.load(path, tuple(spec["names"]))
    run = kernel.run
    scalars = kernel_args.Scalars(len(values), torch.float64)
    scalars.filled(values)

    def target(n, dtype=torch.float32, grad_n=None):
        p = torch.ones(n, dtype=dtype)
        g = torch.ones(grad_n or n, dtype=dtype)
        return p, g, {name: torch.ones(n, dtype=dtype) for name in spec["names"]}

    good = target(64)
    for bad, error in [
        (target(64, grad_n=63), ValueError),  # lengths differ
        (target(64, dtype=torch.float64), ValueError),  # another item size
    ]:
        with pytest.raises(error):
            run([good, bad], scalars)  # the good one first: still untouched
        assert good[0].eq(1).all() and all(t.eq(1).all() for t in good[2].values())
    strided = (torch.ones(128)[::2], torch.ones(64), {n: torch.ones(64) for n in spec["names"]})
    with pytest.raises((ValueError, BufferError)):
        run([strided], scalars)
    with pytest.raises(ValueError):
        run([good], kernel_args.Scalars(len(values), torch.float32))  # not doubles
    run([good], scalars)
    assert not good[0].eq(1).all()
    assert kernels.agrees(kernel, spec)


def test_threads_split_a_piece_without_changing_a_bit(monkeypatch, tmp_path):
    _, spec, path, values = _adam_module(monkeypatch, tmp_path)
    run = generated.load(path, tuple(spec["names"])).run
    scalars = kernel_args.Scalars(len(values), torch.float64)
    scalars.filled(values)
    n = 4 * generated.PARALLEL_MIN + 5
    gen = torch.Generator().manual_seed(3)
    start = [torch.rand(n, generator=gen) for _ in range(2 + len(spec["names"]))]
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            p, g, *st = (t.clone() for t in start)
            run([(p, g, dict(zip(spec["names"], st)))], scalars)
            results.append([p, *st])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert torch.equal(x, y)


def test_nan_and_inf_take_the_eager_updates_path(monkeypatch, tmp_path):
    """torch.maximum keeps a NaN, torch.sign(NaN) is 0, clamp keeps a NaN: the C forms agree
    with the eager update on NaN and ±inf gradients (AMSGrad, Rprop, Lion)."""
    kernels = _fresh_kernels(monkeypatch, tmp_path)
    monkeypatch.setattr(engine, "KERNEL_MIN_NUMEL", 1)
    monkeypatch.setattr(engine, "AUTO_BUILD_NUMEL", 1)
    for cls, kw in [
        (go.Adam, dict(lr=0.01, amsgrad=True)),
        (go.Rprop, dict(lr=0.01)),
        (go.Lion, dict(lr=0.01)),
    ]:
        a, b = twins(make_params(torch.float32, shapes=[(64, 4)]))
        oa, ob = cls(a, **kw), cls(b, **kw)
        ob.param_groups[0]["fused"] = False
        gen = torch.Generator().manual_seed(5)
        for step in range(8):
            g = torch.randn(64, 4, generator=gen)
            if step >= 3:
                g[step, :] = [math.nan, math.inf, -math.inf, 0.0][step % 4]
            a[0].grad, b[0].grad = g.clone(), g.clone()
            oa.step()
            ob.step()
            kernels.wait_for_builds()
        assert any(memo[0] is cls.rule for memo in kernels._loaded)
        torch.testing.assert_close(a[0], b[0], rtol=2e-6, atol=1e-6, equal_nan=True)


def _small_tensor_net(dtype, seed=0):
    """40 small parameters (native.MIN_PARAMS and up, 6.6K elements in all), for the native
    helpers and the scattered gradients' table."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(16, 9), (7,), (3, 5, 2), (1,)] * 10
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


@pytest.mark.parametrize(
    ("name", "cls", "tcls", "kw"),
    [g for g in GRID if g[0].startswith(("adam", "adamw", "sgd-", "rmsprop"))],
    ids=lambda v: v if isinstance(v, str) else "",
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_gradients_are_read_where_backward_left_them(
    monkeypatch, tmp_path, name, cls, tcls, kw, dtype
):
    """With the default zero_grad(), the small tensors' gradients are not copied into a flat
    buffer: the generated kernel reads each where backward left it, through a table of their
    addresses. Bit for bit what the gathered gradients give, and torch's numbers."""
    from test_optim import _engine_helpers

    _engine_helpers()  # loaded before the cache moves (built once per machine)
    _fresh_kernels(monkeypatch, tmp_path)
    tables = []
    monkeypatch.setattr(engine.Segment, "_table", _counted(engine.Segment._table, tables))
    runs = {}
    for scattered in (True, False):
        if not scattered:
            monkeypatch.setattr(engine.Segment, "_scattered", lambda self: None)
        a, b = twins(_small_tensor_net(dtype))
        oa, ob = cls(a, fused=True, **kw), tcls(b, foreach=False, **kw)
        gen = torch.Generator().manual_seed(7)
        for _ in range(6):
            for x, y in zip(a, b):
                x.grad = torch.randn(x.shape, generator=gen, dtype=dtype)  # new tensors, as
                y.grad = x.grad.clone()  # backward leaves them after zero_grad()
            oa.step()
            ob.step()
        runs[scattered] = [x.detach().clone() for x in a]
        (seg,) = [seg for _, segs, _ in oa._segments.values() for seg in segs]
        assert (seg.grad is None) == scattered  # no second copy of the gradients was made
        tol = 2e-6 if dtype == torch.float32 else 1e-12
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=tol, atol=tol)
    assert len(tables) == 5  # steps 2-6 (the first is eager); none without the table
    for x, y in zip(runs[True], runs[False]):
        assert torch.equal(x, y)


def _counted(method, calls):
    def counted(self):
        calls.append(1)
        return method(self)

    return counted


def test_a_missing_or_odd_small_gradient_is_gathered_or_stepped_per_tensor(monkeypatch, tmp_path):
    """The native helper vouches for every gradient it gives the kernel an address of: a missing
    one of another dtype or a non-contiguous one means no table that step; a missing one
    (None) is parted off, the others' table read; the step is still torch's."""
    from test_optim import _engine_helpers

    _engine_helpers()
    _fresh_kernels(monkeypatch, tmp_path)
    tables = []
    monkeypatch.setattr(engine.Segment, "_table", _counted(engine.Segment._table, tables))
    a, b = twins(_small_tensor_net(torch.float32))
    oa = go.Adam(a, lr=0.01, fused=True)
    ob = torch.optim.Adam(b, lr=0.01, foreach=False)
    gen = torch.Generator().manual_seed(8)
    odd = {
        3: lambda g: torch.cat([torch.zeros(3), g.flatten()])[3:].view_as(g),  # at an offset: fine
        4: lambda g: g.t().contiguous().t(),  # not contiguous
        6: lambda g: None,  # missing: parted off, the others' table still read
    }
    for step in range(7):
        for i, (x, y) in enumerate(zip(a, b)):
            g = torch.randn(x.shape, generator=gen)
            if i == 0 and step in odd:
                g = odd[step](g)
            x.grad = g
            y.grad = None if g is None else g.clone()
        before = len(tables)
        oa.step()
        ob.step()
        assert (len(tables) > before) == (step not in (0, 4)), step
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=2e-6, atol=2e-6)


def test_the_table_is_checked_before_anything_is_written(monkeypatch, tmp_path):
    kernels, spec, path, values = _adam_module(monkeypatch, tmp_path)
    run = generated.load(path, tuple(spec["names"])).run
    scalars = kernel_args.Scalars(len(values), torch.float64)
    scalars.filled(values)
    grads = [torch.full((n,), 0.5) for n in (5, 7)]

    def table(offsets, lengths, ptrs=None):
        ptrs = ptrs if ptrs is not None else [g.data_ptr() for g in grads]
        arrays = [torch.tensor(v, dtype=torch.int64) for v in (ptrs, offsets, lengths)]
        return kernel_args.Scattered(lambda: None, lambda: tuple(t.numpy() for t in arrays))

    def fresh():
        return torch.ones(16), {n: torch.ones(16) for n in spec["names"]}

    for bad in [
        table([0, 10], [5, 7]),  # past the piece's end
        table([-1, 8], [5, 7]),  # before its start
        table([0, 8], [5, -7]),  # a negative length
        table([0, 8], [5, 7], ptrs=[grads[0].data_ptr(), 0]),  # no address
        table([0], [5, 7]),  # counts differ
    ]:
        p, st = fresh()
        with pytest.raises(ValueError):
            run([(p, bad, st), (torch.ones(4), torch.ones(4), fresh()[1])], scalars)
        assert p.eq(1).all() and all(t.eq(1).all() for t in st.values())
    p, st = fresh()
    run([(p, table([0, 8], [5, 7]), st)], scalars)
    flat_p, flat_st = fresh()
    run([(flat_p, torch.full((16,), 0.5), flat_st)], scalars)
    covered = torch.zeros(16, dtype=torch.bool)
    covered[0:5] = covered[8:15] = True
    for x, y in [(p, flat_p), *((st[n], flat_st[n]) for n in spec["names"])]:
        assert torch.equal(x[covered], y[covered])  # what the flat gradient gives
        assert x[~covered].eq(1).all()  # the gaps between the tensors: untouched


def test_a_rule_that_writes_its_gradient_takes_no_table():
    """A kernel never writes memory it reads through the table (the user's gradients)."""
    opt = go.SGD([torch.nn.Parameter(torch.ones(3))], lr=0.1, momentum=0.9)
    group = opt.param_groups[0]
    static, slots, values = kernel_args.split(opt._update_args(group, 2))
    names = sorted(opt.state_names(group))

    def writes_grad(param, grad, state, **kw):
        grad.mul_(2.0)
        return type(opt).rule(param, grad, state, **kw)

    for rule, table in [(type(opt).rule, 1), (writes_grad, 0)]:
        module = kernel_args.Update(base.update, rule, names, static, slots)
        text = generated.source(module, names, len(values), torch.float32)
        assert f"#define TABLE {table}" in text


@pytest.mark.parametrize(
    ("cls", "kw"), [("Adam", dict(lr=0.01)), ("SGD", dict(lr=0.1, momentum=0.9))]
)
def test_a_first_step_reads_small_gradients_where_they_lie(cls, kw):
    """The first step is eager (a kernel runs from the second); it updates each small tensor
    from the gradient backward left, so no gather buffer, a second copy of the gradients, is
    made at the step that sets the iteration's peak. Bit for bit torch's for-loop."""
    from test_optim import _engine_helpers

    _engine_helpers()
    a, b = twins(_small_tensor_net(torch.float32, seed=3))
    oa, ob = getattr(go, cls)(a, **kw), getattr(torch.optim, cls)(b, foreach=False, **kw)
    gen = torch.Generator().manual_seed(8)
    for x, y in zip(a, b):
        x.grad = torch.randn(x.shape, generator=gen)
        y.grad = x.grad.clone()
    oa.step()
    ob.step()
    (seg,) = [seg for _, segs, _ in oa._segments.values() for seg in segs]
    assert seg.flat and seg.grad is None
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "eager"])
def test_sgd_momentum_turned_on_mid_run_makes_its_buffer_as_torch(monkeypatch, tmp_path, kernel):
    """``param_groups[0]["momentum"]`` set from 0 to 0.9 mid-run: torch makes each buffer from
    that step's gradient; the flat buffers had none, so that step runs per tensor (it raised
    KeyError, and on the kernel path turned kernels off for the whole process). Off and on
    again: the old buffer is used, as torch uses it."""
    kernels = _fresh_kernels(monkeypatch, tmp_path)
    if kernel:
        monkeypatch.setattr(engine, "KERNEL_MIN_NUMEL", 1)
        monkeypatch.setattr(engine, "AUTO_BUILD_NUMEL", 1)
    a, b = twins(make_params(torch.float32, shapes=[(64, 33), (17,)]))
    oa, ob = go.SGD(a, lr=0.01, fused=kernel), torch.optim.SGD(b, lr=0.01, foreach=False)
    gen = torch.Generator().manual_seed(3)
    for step, momentum in enumerate([0, 0, 0.9, 0.9, 0.9, 0, 0.5, 0.5]):
        oa.param_groups[0]["momentum"] = ob.param_groups[0]["momentum"] = momentum
        run_lockstep(oa, ob, a, b, 1, gen)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-6, msg=f"step {step}")
            for n, theirs in ob.state[y].items():
                torch.testing.assert_close(oa.state[x][n], theirs, rtol=2e-6, atol=1e-6)
    assert kernels.available() and bool(kernels._loaded) == kernel

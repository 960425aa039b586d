"""gradwise.schedules: closed forms, parity with torch.optim.lr_scheduler, plateau on top of any
schedule, resuming, the text form and argument checks."""

from __future__ import annotations

import doctest
import importlib
import io
import math
import re
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim import lr_scheduler as tls

import gradwise.schedules as gs
from gradwise.errors import CheckpointError, ConfigError
from gradwise.schedules import (
    Constant,
    Cosine,
    ExponentialDecay,
    MultiStepDecay,
    OneCycle,
    Plateau,
    Product,
    Scheduler,
    Sequence,
    StepDecay,
    Warmup,
    describe,
    parse,
)


def close(x):
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def make_sgd(lrs=(0.1, 0.03)):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups)


def group_lrs(opt):
    return [float(g["lr"]) for g in opt.param_groups]


# --------------------------------------------------------------------------- closed forms

π = math.pi
CLOSED_FORMS = [
    (Constant(), lambda t: 1.0),
    (Constant(0.25), lambda t: 0.25),
    (StepDecay(7, gamma=0.5), lambda t: 0.5 ** (t // 7)),
    (StepDecay(1), lambda t: 0.1**t),
    (MultiStepDecay([5, 17, 40], gamma=0.3), lambda t: 0.3 ** sum(t >= m for m in (5, 17, 40))),
    (ExponentialDecay(0.97), lambda t: 0.97**t),
    (Cosine(50, final=0.1), lambda t: 0.1 + 0.9 * (1 + math.cos(π * min(t, 50) / 50)) / 2),
    (Cosine(1), lambda t: 0.0 if t >= 1 else 1.0),
    (Warmup(20, start=0.1), lambda t: 0.1 + 0.9 * t / 20 if t < 20 else 1.0),
    (
        Warmup(20, then=Cosine(30)),
        lambda t: t / 20 if t < 20 else (1 + math.cos(π * min(t - 20, 30) / 30)) / 2,
    ),
    (
        Sequence([(Constant(0.5), 10), (ExponentialDecay(0.9), 5), (Cosine(20), None)]),
        lambda t: (
            0.5
            if t < 10
            else 0.9 ** (t - 10)
            if t < 15
            else (1 + math.cos(π * min(t - 15, 20) / 20)) / 2
        ),
    ),
    (Product(StepDecay(10, 0.5), Warmup(5)), lambda t: 0.5 ** (t // 10) * min(t / 5, 1.0)),
    (
        StepDecay(10, 0.5) * Cosine(40),
        lambda t: 0.5 ** (t // 10) * (1 + math.cos(π * min(t, 40) / 40)) / 2,
    ),
]


@pytest.mark.parametrize("schedule, formula", CLOSED_FORMS, ids=[repr(s) for s, _ in CLOSED_FORMS])
def test_closed_form_scalar_and_tensor(schedule, formula):
    ts = [*range(0, 300), 1000, 10**6]
    expected = [formula(t) for t in ts]
    assert [schedule(t) for t in ts] == close(expected)
    assert all(type(schedule(t)) is float for t in (0, 5))
    tensor = schedule(torch.tensor(ts))
    assert tensor.dtype == torch.float64 and tensor.shape == (len(ts),)
    assert tensor.tolist() == close(expected)


def test_onecycle_landmarks():
    c = OneCycle(100, pct_start=0.25, div_factor=10, final_div_factor=100)
    values = [c(t) for t in range(100)]
    assert values[0] == close(0.1)
    assert values[24] == 1.0 == max(values)
    assert values[99] == close(0.1 / 100)
    assert all(a < b for a, b in zip(values[:24], values[1:25]))
    assert all(a > b for a, b in zip(values[24:99], values[25:]))
    assert c(100) == c(10**5) == close(1e-3)  # held after the cycle
    lin = OneCycle(10, pct_start=0.5, anneal="linear", div_factor=5, final_div_factor=2)
    # peak at 0.5·10 − 1 = 4: 0.2 → 1 linearly over 4 steps, then 1 → 0.1 over 5 steps
    assert [lin(t) for t in range(10)] == close(
        [0.2, 0.4, 0.6, 0.8, 1.0, 0.82, 0.64, 0.46, 0.28, 0.1]
    )


def test_tensor_input_shapes_and_dtypes():
    s = parse("warmup:10,cosine:90")
    grid = torch.arange(12).reshape(3, 4)
    assert s(grid).shape == (3, 4) and s(grid).dtype == torch.float64
    assert s(grid.float()).dtype == torch.float32
    assert s(torch.tensor(5)).item() == close(0.5)
    assert s(torch.tensor([], dtype=torch.long)).numel() == 0
    assert s(torch.tensor([2.5])).item() == close(0.25)  # fractional steps are allowed


def test_step_validation():
    with pytest.raises(ValueError, match=re.escape("Cosine: t must be >= 0; received t=-1")):
        Cosine(10)(-1)
    with pytest.raises(ValueError, match="t must be finite and >= 0 in every element"):
        Cosine(10)(torch.tensor([1, -2]))
    with pytest.raises(TypeError, match="received t='3'"):
        Cosine(10)("3")
    with pytest.raises(TypeError, match="t must be a tensor of real step counts"):
        Cosine(10)(torch.tensor([True]))


# --------------------------------------------------------------------------- against PyTorch


def run_both(make_ref, ours, lrs=(0.1, 0.03), steps=150):
    """Step a torch scheduler and a gradwise Scheduler in lockstep; compare every group's lr."""
    opt_ref, opt = make_sgd(lrs), make_sgd(lrs)
    ref, sched = make_ref(opt_ref), Scheduler(opt, ours)
    for t in range(steps):
        assert group_lrs(opt) == close(group_lrs(opt_ref)), f"t={sched.t}"
        if t == steps - 1:
            break
        opt_ref.step()
        opt.step()
        ref.step()
        sched.step()


TORCH_PARITY = [
    (lambda o: tls.StepLR(o, step_size=30, gamma=0.1), StepDecay(30)),
    (lambda o: tls.StepLR(o, step_size=7, gamma=0.8), StepDecay(7, gamma=0.8)),
    (
        lambda o: tls.MultiStepLR(o, milestones=[10, 45, 120], gamma=0.5),
        MultiStepDecay([10, 45, 120], 0.5),
    ),
    (lambda o: tls.ExponentialLR(o, gamma=0.97), ExponentialDecay(0.97)),
    (lambda o: tls.CosineAnnealingLR(o, T_max=150), Cosine(150)),
    (lambda o: tls.LinearLR(o, start_factor=0.01, total_iters=40), Warmup(40, start=0.01)),
    (lambda o: tls.LinearLR(o, start_factor=0.5, total_iters=1), Warmup(1, start=0.5)),
]


@pytest.mark.parametrize("make_ref, ours", TORCH_PARITY, ids=[repr(s) for _, s in TORCH_PARITY])
def test_matches_torch(make_ref, ours):
    run_both(make_ref, ours)


def test_cosine_final_matches_eta_min():
    base, final = 0.2, 0.05
    run_both(
        lambda o: tls.CosineAnnealingLR(o, T_max=120, eta_min=base * final),
        Cosine(120, final=final),
        lrs=(base,),
        steps=121,
    )


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(pct_start=0.25, anneal="linear"),
        dict(pct_start=0.4, div_factor=10.0, final_div_factor=100.0),
        dict(pct_start=0.1, anneal="linear", div_factor=3.0),
        dict(pct_start=0.0),
        dict(pct_start=1.0),
    ],
)
def test_onecycle_matches_torch(kw):
    T = 200
    torch_kw = {("anneal_strategy" if k == "anneal" else k): v for k, v in kw.items()}
    lrs = (0.1, 0.03)

    def make_ref(o):
        return tls.OneCycleLR(o, max_lr=list(lrs), total_steps=T, cycle_momentum=False, **torch_kw)

    run_both(make_ref, OneCycle(T, **kw), lrs=lrs, steps=T)  # t = 0 .. T-1


def test_drives_gradwise_sgd():
    go = pytest.importorskip("gradwise.optim")
    w = torch.nn.Parameter(torch.ones(3))
    opt = go.SGD([w], lr=0.5)
    sched = Scheduler(opt, "step:2:0.5")
    for t in range(6):
        assert group_lrs(opt) == close([0.5 * 0.5 ** (t // 2)])
        w.grad = torch.ones(3)
        opt.step()
        sched.step()


def metric_sequence(n, seed, noise=0.01):
    g = torch.Generator().manual_seed(seed)
    trend = torch.clamp(1.0 - 0.02 * torch.arange(n, dtype=torch.float64), min=0.4)
    return (trend + noise * torch.randn(n, generator=g, dtype=torch.float64)).tolist()


PLATEAU_CASES = [
    dict(mode="min", factor=0.5, patience=5),
    dict(mode="max", factor=0.5, patience=5, threshold=1e-3),
    dict(mode="min", threshold_mode="abs", threshold=0.01, factor=0.5, patience=6),
    dict(mode="max", threshold_mode="abs", threshold=0.005, factor=0.3, patience=5, cooldown=3),
    dict(mode="min", factor=0.1, patience=2, cooldown=2, min_lr=1e-4),
    dict(mode="min", factor=0.1, patience=1, min_lr=[1e-3, 1e-5]),
    dict(mode="min", factor=0.5, patience=0, cooldown=1, min_lr=1e-6),
    dict(mode="max", factor=0.7, patience=3, threshold=0.0, min_lr=[0.0, 1e-3]),
]


@pytest.mark.parametrize("kw", PLATEAU_CASES, ids=str)
def test_plateau_matches_torch(kw):
    kw = dict(kw)
    min_lr = kw.pop("min_lr", 0.0)
    lrs = (0.1, 0.03)
    opt_ref, opt = make_sgd(lrs), make_sgd(lrs)
    ref = tls.ReduceLROnPlateau(opt_ref, min_lr=min_lr, **kw)
    sched = Scheduler(opt, plateau=Plateau(**kw), min_lr=min_lr)
    sign = -1 if kw["mode"] == "max" else 1  # "max" watches an increasing metric
    cuts = 0
    for value in metric_sequence(150, seed=len(str(kw))):
        before = group_lrs(opt_ref)
        opt_ref.step()
        ref.step(sign * value)
        reduced = sched.report(torch.tensor(sign * value))
        assert group_lrs(opt) == close(group_lrs(opt_ref))
        if group_lrs(opt_ref) != before:
            assert reduced
            cuts += 1
    assert cuts >= 2  # the sequences do stall


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(["min", "max"]),
    threshold_mode=st.sampled_from(["rel", "abs"]),
    threshold=st.sampled_from([0.0, 1e-4, 0.01, 0.1]),
    patience=st.integers(0, 4),
    cooldown=st.integers(0, 3),
    factor=st.sampled_from([0.5, 0.8]),
    values=st.lists(st.integers(-20, 20).map(lambda k: k / 8), min_size=1, max_size=60),
)
def test_plateau_matches_torch_property(
    mode, threshold_mode, threshold, patience, cooldown, factor, values
):
    kw = dict(
        mode=mode,
        threshold_mode=threshold_mode,
        threshold=threshold,
        patience=patience,
        cooldown=cooldown,
        factor=factor,
    )
    opt_ref, opt = make_sgd((1.0,)), make_sgd((1.0,))
    ref = tls.ReduceLROnPlateau(opt_ref, **kw)
    sched = Scheduler(opt, plateau=Plateau(**kw))
    for v in values:
        if group_lrs(opt_ref)[0] < 1e-6:
            break  # PyTorch stops cutting within its eps=1e-8 of the rate; Plateau has no eps
        ref.step(v)
        sched.report(v)
        assert group_lrs(opt) == close(group_lrs(opt_ref))


# --------------------------------------------------------------------------- plateau on top


def test_plateau_on_top_of_warmup_cosine():
    lrs, min_lr = (0.1, 0.01), 1e-5
    schedule = parse("warmup:10,cosine:140:0.05")
    opt = make_sgd(lrs)
    plateau = Plateau(patience=3, factor=0.5)
    sched = Scheduler(opt, schedule, plateau=plateau, min_lr=min_lr)
    values = metric_sequence(200, seed=3)
    cuts = 0
    for t in range(200):
        expected = [max(min_lr, base * schedule(t) * plateau.scale) for base in lrs]
        assert sched.t == t
        assert sched.lrs == group_lrs(opt) == close(expected)
        opt.step()
        sched.step()
        if t % 2 == 1:
            cuts += sched.report(values[t])
            assert sched.lrs == close(
                [max(min_lr, b * schedule(t + 1) * plateau.scale) for b in lrs]
            )
    assert cuts >= 2 and plateau.scale == 0.5**cuts
    assert sched.factor == close(schedule(200) * plateau.scale)


def test_plateau_scale_bounds_and_update_types():
    p = Plateau(patience=0, factor=0.5, min_scale=0.2)
    flags = [p.update(v) for v in (1.0, 2.0, 2.0, 2.0, 2.0)]
    assert flags == [False, True, True, True, False] and p.scale == 0.2
    assert p.update(float("nan")) is False and p.bad_steps == 0  # NaN is a bad step, as in torch
    with pytest.raises(TypeError, match="Plateau: value must be a number"):
        p.update("0.3")
    with pytest.raises(TypeError, match="Plateau: value must be"):
        p.update(torch.ones(2))


def test_report_without_plateau_is_an_error():
    sched = Scheduler(make_sgd())
    with pytest.raises(ConfigError, match="needs a plateau"):
        sched.report(1.0)


# --------------------------------------------------------------------------- resuming


def build(lrs=(0.1, 0.02, 0.5)):
    opt = make_sgd(lrs)
    return opt, Scheduler(
        opt, "warmup:20,cosine:200:0.01", Plateau(patience=2, cooldown=1), min_lr=1e-6
    )


def test_state_dict_round_trip_continues_identically():
    values = metric_sequence(160, seed=7, noise=0.05)
    opt_a, a = build()
    for t in range(60):
        opt_a.step()
        a.step()
        if t % 3 == 0:
            a.report(values[t])
    buffer = io.BytesIO()
    torch.save({"opt": opt_a.state_dict(), "sched": a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)

    opt_b = make_sgd((1.0, 1.0, 1.0))  # any rates: initial_lr comes from the checkpoint
    opt_b.load_state_dict(saved["opt"])
    b = Scheduler(opt_b, "warmup:20,cosine:200:0.01", Plateau(patience=2, cooldown=1), min_lr=1e-6)
    assert b.base_lrs == a.base_lrs == [0.1, 0.02, 0.5]
    b.load_state_dict(saved["sched"])
    assert b.t == a.t == 60 and b.plateau.state_dict() == a.plateau.state_dict()
    assert b.lrs == a.lrs
    for t in range(60, 160):
        for opt, s in ((opt_a, a), (opt_b, b)):
            opt.step()
            s.step()
            if t % 3 == 0:
                s.report(values[t])
        assert b.lrs == a.lrs
    assert a.plateau.scale < 1


def test_load_state_dict_mismatches():
    _, a = build()
    state = a.state_dict()
    opt = make_sgd((0.1, 0.2))
    with pytest.raises(CheckpointError, match="3 base rates but the optimizer has 2"):
        Scheduler(opt, plateau=Plateau()).load_state_dict(state)
    with pytest.raises(CheckpointError, match="plateau"):
        Scheduler(make_sgd((0.1, 0.2, 0.3))).load_state_dict(state)
    with pytest.raises(CheckpointError, match="lacks t"):
        a.load_state_dict({"base_lrs": [], "plateau": None})
    with pytest.raises(CheckpointError, match="lacks scale"):
        Plateau().load_state_dict({})


def test_param_groups_tensor_lr_duck_typing_and_new_groups():
    opt = types.SimpleNamespace(
        param_groups=[{"lr": torch.tensor(0.1, dtype=torch.float64)}, {"lr": 0.4}]
    )
    lr_tensor = opt.param_groups[0]["lr"]
    sched = Scheduler(opt, StepDecay(1, gamma=0.5), min_lr=[0.0, 0.15])
    sched.step()
    assert opt.param_groups[0]["lr"] is lr_tensor and lr_tensor.item() == close(0.05)
    assert sched.lrs == close([0.05, 0.2])
    sched.step()
    assert sched.lrs == close([0.025, 0.15])  # floored per group
    sched.min_lr = 0.0
    opt.param_groups.append({"lr": 1.0})  # adopted with its rate as base
    sched.step()
    assert sched.base_lrs == close([0.1, 0.4, 1.0]) and sched.lrs == close([0.0125, 0.05, 0.125])
    assert opt.param_groups[2]["initial_lr"] == 1.0


def test_existing_initial_lr_is_the_base():
    opt = make_sgd((0.1,))
    opt.param_groups[0]["initial_lr"] = 0.4
    assert Scheduler(opt).lrs == [0.4]


# --------------------------------------------------------------------------- text form

PARSE_EXAMPLES = [
    ("constant", Constant()),
    ("warmup:100", Warmup(100)),
    ("warmup:100:0.1", Warmup(100, start=0.1)),
    ("cosine:900", Cosine(900)),
    ("cosine:900:0.01", Cosine(900, final=0.01)),
    ("step:30:0.1", StepDecay(30, 0.1)),
    ("step:30", StepDecay(30)),
    ("multistep:100/200:0.1", MultiStepDecay([100, 200], 0.1)),
    ("exp:0.99", ExponentialDecay(0.99)),
    ("onecycle:1000", OneCycle(1000)),
    ("onecycle:1000:0.25", OneCycle(1000, pct_start=0.25)),
    ("constant:10:0.5", Constant(0.5)),
    ("warmup:100,cosine:900", Sequence([(Warmup(100), 100), (Cosine(900), 900)])),
    (
        " Warmup : 5 , CONSTANT:10:0.5 , exp:0.9 ",
        Sequence([(Warmup(5), 5), (Constant(0.5), 10), (ExponentialDecay(0.9), None)]),
    ),
    (
        "warmup:500,constant:4000,cosine:1000:0.01",
        Sequence([(Warmup(500), 500), (Constant(), 4000), (Cosine(1000, 0.01), 1000)]),
    ),
    ("warmup:5,multistep:30/60", Sequence([(Warmup(5), 5), (MultiStepDecay([30, 60]), None)])),
]


@pytest.mark.parametrize("text, expected", PARSE_EXAMPLES, ids=[t for t, _ in PARSE_EXAMPLES])
def test_parse_examples(text, expected):
    assert parse(text) == expected


def test_parse_values():
    s = parse("warmup:100,cosine:900")
    assert [s(t) for t in (0, 50, 100, 550, 1000, 5000)] == close([0.0, 0.5, 1.0, 0.5, 0.0, 0.0])
    m = parse("warmup:5,multistep:30/60")
    assert [m(t) for t in (34, 35, 64, 65)] == close([1.0, 0.1, 0.1, 0.01])


BAD_TEXT = [
    ("", "''", "empty segment"),
    ("cosin:900", "'cosin:900'", "unknown schedule name 'cosin'"),
    ("cosine", "'cosine'", "cosine takes 1 to 2 argument(s), got 0"),
    ("cosine:abc", "'cosine:abc'", "invalid literal"),
    ("cosine:0", "'cosine:0'", "not a number of steps"),
    ("cosine:9.5", "'cosine:9.5'", "invalid literal"),
    ("cosine:900:2", "'cosine:900:2'", "final must be in [0, 1]; received final=2.0"),
    ("step:30:0.1,cosine:100", "'step:30:0.1'", "runs forever"),
    ("warmup:10,,cosine:5", "''", "empty segment"),
    ("exp:0.9:3", "'exp:0.9:3'", "exp takes 1 argument(s), got 2"),
    ("multistep:100/50", "'multistep:100/50'", "strictly increasing"),
    ("multistep:100/", "'multistep:100/'", "invalid literal"),
    ("exp:nan", "'exp:nan'", "gamma must be finite"),
    ("onecycle:100:1.5", "'onecycle:100:1.5'", "pct_start must be in [0, 1]"),
]


@pytest.mark.parametrize(
    "text, segment, reason", BAD_TEXT, ids=[t or "empty" for t, *_ in BAD_TEXT]
)
def test_parse_rejects(text, segment, reason):
    with pytest.raises(ConfigError) as info:
        parse(text)
    message = str(info.value)
    assert f"segment {segment}" in message and reason in message
    assert "allowed forms: constant, constant:N[:VALUE], warmup:N[:START]" in message
    assert "multistep:M1/M2/...[:GAMMA], exp:GAMMA" in message


@pytest.mark.parametrize("text", ["cosine,cosine", "onecycle,constant", "cosine::0.01,warmup:5"])
def test_a_segment_that_lasts_until_the_end_of_the_run_must_be_the_last(text):
    """With the run's length known, ``cosine`` or ``onecycle`` without N lasts until its end:
    a segment after it would never run, and is refused (it was accepted and ignored)."""
    with pytest.raises(ConfigError, match="lasts until the end of the run, so the segments after"):
        parse(text, total_steps=100)
    assert parse("warmup:10," + text.split(",")[0], total_steps=100)(100) is not None


def test_parse_rejects_non_text():
    with pytest.raises(ConfigError, match="must be a string"):
        parse(42)


@pytest.mark.parametrize("text", [t for t, _ in PARSE_EXAMPLES])
def test_describe_round_trip(text):
    s = parse(text)
    again = parse(describe(s))
    ts = torch.arange(0, 6000, 7)
    assert torch.equal(again(ts), s(ts))


def test_describe_forms_and_limits():
    assert describe(parse("warmup:100,cosine:900")) == "warmup:100,cosine:900"
    assert describe(Warmup(10, then=Cosine(90, final=0.01))) == "warmup:10,cosine:90:0.01"
    assert describe(Constant(0.5)) == "constant:1:0.5"
    joined = Sequence([(Warmup(10, then=Cosine(5)), 15), (ExponentialDecay(0.5), None)])
    assert describe(joined) == "warmup:10,cosine:5,exp:0.5"
    assert describe(Sequence([(Warmup(10), 30), (Constant(), None)])) == (
        "warmup:10,constant:20,constant"
    )
    for bad in (
        Product(Cosine(10), Warmup(3)),
        OneCycle(10, div_factor=3.0),
        Sequence([(StepDecay(3), 10), (Constant(), None)]),
        Sequence([(Cosine(20), 10), (Constant(), None)]),
        Sequence([(Warmup(10, then=Cosine(5)), 30), (Constant(), None)]),
    ):
        with pytest.raises(ConfigError, match="has no text form"):
            describe(bad)


# --------------------------------------------------------------------------- repr

REPRS = [
    (Constant(), "Constant()"),
    (StepDecay(30), "StepDecay(30)"),
    (StepDecay(30, gamma=0.5), "StepDecay(30, gamma=0.5)"),
    (MultiStepDecay([30, 60]), "MultiStepDecay([30, 60])"),
    (ExponentialDecay(0.99), "ExponentialDecay(0.99)"),
    (Cosine(900, final=0.01), "Cosine(900, final=0.01)"),
    (Warmup(100, then=Cosine(900)), "Warmup(100, then=Cosine(900))"),
    (OneCycle(1000, anneal="linear"), "OneCycle(1000, anneal='linear')"),
    (parse("warmup:100,cosine:900"), "Sequence([(Warmup(100), 100), (Cosine(900), 900)])"),
    (Product(StepDecay(3), Warmup(2, start=0.5)), "Product(StepDecay(3), Warmup(2, start=0.5))"),
    (Plateau(), "Plateau()"),
    (Plateau(mode="max", patience=3), "Plateau(mode='max', patience=3)"),
]


@pytest.mark.parametrize("obj, text", REPRS, ids=[t for _, t in REPRS])
def test_repr_reads_like_the_call(obj, text):
    assert repr(obj) == text
    if isinstance(obj, gs.Schedule):
        assert eval(text, vars(gs)) == obj


def test_scheduler_repr():
    sched = Scheduler(make_sgd(), "cosine:10", plateau=Plateau(patience=2), min_lr=1e-5)
    assert repr(sched) == "Scheduler(SGD, Cosine(10), plateau=Plateau(patience=2), min_lr=1e-05)"


# --------------------------------------------------------------------------- argument checks

C = Constant()
BAD_ARGS = [
    (lambda: Constant(-1), ValueError, "Constant", "value", "-1"),
    (lambda: StepDecay(0), ValueError, "StepDecay", "step_size", "0"),
    (lambda: StepDecay(1.5), TypeError, "StepDecay", "step_size", "1.5"),
    (lambda: StepDecay(10, gamma=1.5), ValueError, "StepDecay", "gamma", "1.5"),
    (lambda: StepDecay(10, gamma="0.1"), TypeError, "StepDecay", "gamma", "'0.1'"),
    (lambda: MultiStepDecay(5), TypeError, "MultiStepDecay", "milestones", "5"),
    (lambda: MultiStepDecay([]), ValueError, "MultiStepDecay", "milestones", "[]"),
    (lambda: MultiStepDecay([3, 2]), ValueError, "MultiStepDecay", "milestones", "[3, 2]"),
    (lambda: MultiStepDecay([1, -2]), ValueError, "MultiStepDecay", "milestones[1]", "-2"),
    (lambda: ExponentialDecay(-0.1), ValueError, "ExponentialDecay", "gamma", "-0.1"),
    (lambda: ExponentialDecay(True), TypeError, "ExponentialDecay", "gamma", "True"),
    (lambda: Cosine(0), ValueError, "Cosine", "total_steps", "0"),
    (lambda: Cosine(10, final=2), ValueError, "Cosine", "final", "2"),
    (lambda: Cosine(10, final=math.nan), ValueError, "Cosine", "final", "nan"),
    (lambda: Warmup(0), ValueError, "Warmup", "steps", "0"),
    (lambda: Warmup(10, then=3), TypeError, "Warmup", "then", "3"),
    (lambda: Warmup(10, start=1.5), ValueError, "Warmup", "start", "1.5"),
    (lambda: OneCycle(0), ValueError, "OneCycle", "total_steps", "0"),
    (lambda: OneCycle(10, pct_start=1.5), ValueError, "OneCycle", "pct_start", "1.5"),
    (lambda: OneCycle(10, div_factor=0), ValueError, "OneCycle", "div_factor", "0"),
    (lambda: OneCycle(10, final_div_factor=-1), ValueError, "OneCycle", "final_div_factor", "-1"),
    (lambda: OneCycle(10, anneal="cosine"), ValueError, "OneCycle", "anneal", "'cosine'"),
    (lambda: Sequence(C), TypeError, "Sequence", "segments", "Constant()"),
    (lambda: Sequence([]), ValueError, "Sequence", "segments", "[]"),
    (lambda: Sequence([C]), TypeError, "Sequence", "segments[0]", "Constant()"),
    (lambda: Sequence([(C, 0)]), ValueError, "Sequence", "segments[0][1]", "0"),
    (lambda: Sequence([(C, None), (C, 5)]), ValueError, "Sequence", "segments[0][1]", "None"),
    (
        lambda: Sequence([(C, 5), (lambda t: 1, None)]),
        TypeError,
        "Sequence",
        "segments[1][0]",
        "<function",
    ),
    (lambda: Product(C, 2), TypeError, "Product", "b", "2"),
    (lambda: Plateau(mode="avg"), ValueError, "Plateau", "mode", "'avg'"),
    (lambda: Plateau(factor=1.0), ValueError, "Plateau", "factor", "1.0"),
    (lambda: Plateau(factor=-0.1), ValueError, "Plateau", "factor", "-0.1"),
    (lambda: Plateau(patience=-1), ValueError, "Plateau", "patience", "-1"),
    (lambda: Plateau(patience=1.5), TypeError, "Plateau", "patience", "1.5"),
    (lambda: Plateau(threshold=-1), ValueError, "Plateau", "threshold", "-1"),
    (lambda: Plateau(threshold_mode="x"), ValueError, "Plateau", "threshold_mode", "'x'"),
    (lambda: Plateau(cooldown=-1), ValueError, "Plateau", "cooldown", "-1"),
    (lambda: Plateau(min_scale=2), ValueError, "Plateau", "min_scale", "2"),
    (lambda: Scheduler(object()), TypeError, "Scheduler", "optimizer", "<object"),
    (lambda: Scheduler(make_sgd(), schedule=3), TypeError, "Scheduler", "schedule", "3"),
    (lambda: Scheduler(make_sgd(), plateau=3), TypeError, "Scheduler", "plateau", "3"),
    (lambda: Scheduler(make_sgd(), min_lr=-1), ValueError, "Scheduler", "min_lr", "-1"),
    (lambda: Scheduler(make_sgd(), min_lr=[0.1]), ValueError, "Scheduler", "min_lr", "[0.1]"),
    (lambda: Scheduler(make_sgd(), min_lr=[0.1, -1]), ValueError, "Scheduler", "min_lr[1]", "-1"),
]


@pytest.mark.parametrize(
    "build, exc, owner, name, shown", BAD_ARGS, ids=[f"{o}-{n}-{s}" for _, _, o, n, s in BAD_ARGS]
)
def test_bad_arguments(build, exc, owner, name, shown):
    with pytest.raises(exc) as info:
        build()
    message = str(info.value)
    assert message.startswith(f"{owner}: {name} must be "), message
    assert f"; received {name}={shown}" in message, message


# --------------------------------------------------------------------------- properties

leaf = st.one_of(
    st.builds(Constant, st.floats(0, 1)),
    st.builds(StepDecay, st.integers(1, 50), st.floats(0, 1)),
    st.builds(
        MultiStepDecay,
        st.lists(st.integers(1, 300), min_size=1, max_size=4, unique=True).map(sorted),
        st.floats(0, 1),
    ),
    st.builds(ExponentialDecay, st.floats(0, 1)),
    st.builds(Cosine, st.integers(1, 300), st.floats(0, 1)),
    st.builds(
        OneCycle,
        st.integers(1, 300),
        st.floats(0, 1),
        st.floats(1, 100),
        st.floats(1, 1e4),
        st.sampled_from(["cos", "linear"]),
    ),
)
schedules = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(Warmup, st.integers(1, 100), inner, st.floats(0, 1)),
        st.builds(Product, inner, inner),
        st.builds(
            Sequence,
            st.lists(st.tuples(inner, st.integers(1, 100)), min_size=1, max_size=3).map(
                lambda segs: [*segs[:-1], (segs[-1][0], None)]
            ),
        ),
    ),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None)
@given(schedules, st.lists(st.integers(0, 2000), min_size=1, max_size=20))
def test_multipliers_in_range_and_tensor_agrees(schedule, ts):
    values = [schedule(t) for t in ts]
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in values)
    assert schedule(torch.tensor(ts)).tolist() == pytest.approx(values, rel=1e-9, abs=1e-12)
    assert eval(repr(schedule), vars(gs)) == schedule


@settings(max_examples=60, deadline=None)
@given(
    warm=st.integers(1, 200),
    start=st.floats(0, 1),
    decay=st.integers(1, 500),
    final=st.floats(0, 1),
)
def test_warmup_then_cosine_is_continuous(warm, start, decay, final):
    s = parse(f"warmup:{warm}:{start!r},cosine:{decay}:{final!r}")
    values = s(torch.arange(warm + decay + 50)).tolist()
    jump = max((1 - start) / warm, (1 - final) * math.pi / (2 * decay)) + 1e-12
    assert all(abs(b - a) <= jump for a, b in zip(values, values[1:]))
    assert max(values) == close(1.0) and values[warm] == 1.0 and values[-1] == close(final)
    assert (
        Warmup(warm, then=Cosine(decay, final), start=start)(torch.arange(len(values))).tolist()
        == values
    )


segments_text = st.lists(
    st.one_of(
        st.builds("constant:{}".format, st.integers(1, 50)),
        st.builds("warmup:{}:{}".format, st.integers(1, 50), st.sampled_from(["0", "0.1", "0.5"])),
        st.builds("cosine:{}:{}".format, st.integers(1, 50), st.sampled_from(["0", "0.01", "1"])),
        st.builds("onecycle:{}".format, st.integers(1, 50)),
    ),
    min_size=1,
    max_size=4,
)
forever_text = st.sampled_from(["", "constant", "step:7:0.5", "multistep:3/9", "exp:0.9"])


@settings(max_examples=60, deadline=None)
@given(segments_text, forever_text)
def test_text_round_trip(segments, last):
    text = ",".join(segments + ([last] if last else []))
    s = parse(text)
    ts = torch.arange(300)
    assert torch.equal(parse(describe(s))(ts), s(ts))


# --------------------------------------------------------------------------- docstrings


@pytest.mark.parametrize(
    "module",
    [
        "__init__",
        "base",
        "decay",
        "warmup",
        "onecycle",
        "combine",
        "plateau",
        "scheduler",
        "language",
    ],
)
def test_docstring_examples(module):
    mod = importlib.import_module(
        "gradwise.schedules" + ("" if module == "__init__" else f".{module}")
    )
    result = doctest.testmod(mod, extraglobs=vars(gs), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_parse_fills_an_open_cosine_to_the_end_of_the_run():
    from gradwise.schedules import Cosine, Sequence, Warmup, parse

    assert parse("warmup:100,cosine", total_steps=1000) == Sequence(
        [(Warmup(100), 100), (Cosine(900), 900)]
    )
    assert parse("cosine::0.01", total_steps=50) == Cosine(50, final=0.01)
    with pytest.raises(ConfigError):
        parse("warmup:100,cosine")  # no run length given: cosine needs its N

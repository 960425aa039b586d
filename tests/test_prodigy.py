"""Prodigy against its reference implementation, ``prodigyopt.Prodigy`` (a test dependency)."""

from __future__ import annotations

import pytest
import torch

import gradwise.optim as go
from gradwise.optim import prodigy as prodigy_module

prodigyopt = pytest.importorskip("prodigyopt")

GRID = [
    dict(),
    dict(lr=0.5),
    dict(betas=(0.8, 0.99)),
    dict(betas=(0.0, 0.99)),  # no first moment: the step divides the gradient itself
    dict(beta3=0.9),
    dict(eps=1e-4),
    dict(weight_decay=0.1),
    dict(weight_decay=0.1, decouple=False),
    dict(betas=(0.0, 0.99), weight_decay=0.1, decouple=False),
    dict(use_bias_correction=True),
    dict(safeguard_warmup=True),
    dict(d0=1e-3),
    dict(d_coef=2.0),
    dict(growth_rate=1.02),
]
#: a large tensor, small ones, an all-zero one (the reference's 0-d p0), a zero-size one
SHAPES = [(257, 256), (64, 33), (17,), (5, 5), (1,), (0, 3)]
STEPS = 22
#: d is one global reduction: in float32 the flat buffers' partial sums round differently
#: from the reference's per-tensor ones, and every element is scaled by d. Differences are
#: measured against the tensor's largest element (s and the moments cancel to near zero). The
#: worst float32 case, d_coef=2 with its d grown fastest, reads up to 2.5e-5 (its sums are two
#: partial sums from step 3 on: the missing gradient parts the segment)
RTOL = {torch.float32: 5e-5, torch.float64: 1e-12}


def assert_close(ours, theirs, rtol):
    ours, theirs = (torch.as_tensor(t, dtype=torch.float64) for t in (ours, theirs))
    if theirs.numel():
        worst = (ours - theirs).abs().max().item()
        assert worst <= rtol * theirs.abs().max().item(), (worst, theirs.abs().max().item())


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
            g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x.dtype) + 0.3
            x.grad, y.grad = g.clone(), g.clone()  # the reference decays its grad in place
        if i == 3:  # a missing gradient: that parameter is left alone, as in the reference
            a[3].grad = b[3].grad = None
        ours.step()
        ref.step()


def assert_same(ours, ref, a, b, tol):
    for x, y in zip(a, b):
        assert_close(x.detach(), y.detach(), tol)
        for name in ("exp_avg", "exp_avg_sq", "s", "p0"):
            if name in ref.state[y]:
                theirs = ref.state[y][name]
                if theirs.dim() == 0:  # the reference's p0 of an all-zero parameter
                    theirs = theirs.expand(x.shape)
                assert_close(ours.state[x][name], theirs.view_as(x), tol)
    for g, h in zip(ours.param_groups, ref.param_groups):
        assert g["k"] == h["k"]
        for key in ("d", "d_max", "d_numerator", "d_denom", "d_hat"):
            assert_close(float(g[key]), h[key], tol)


@pytest.mark.parametrize("kw", GRID, ids=[str(k) or "defaults" for k in GRID])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("numbers", [True, False], ids=["numbers", "device-scalars"])
def test_prodigy_equals_prodigyopt(kw, dtype, numbers, monkeypatch):
    """Both ways of passing the step's scalars: as numbers (the CPU's) and as 0-d tensors
    (an accelerator's, see ``reads_numbers``)."""
    monkeypatch.setattr(prodigy_module, "reads_numbers", lambda device: numbers)
    a, b = params(dtype)
    ours, ref = go.Prodigy(a, **kw), prodigyopt.Prodigy(b, **kw)
    lockstep(ours, ref, a, b, STEPS)
    assert_same(ours, ref, a, b, RTOL[dtype])
    assert ours.param_groups[0]["d"] > 1e-6  # the estimate grew


def test_groups_with_lr_zero_and_a_first_step_without_gradient():
    """A group at lr 0 is left out of the estimate but still decays, and a step whose every
    gradient is zero moves nothing and counts nothing, both as in the reference."""
    a, b = params(torch.float64)
    kw = dict(weight_decay=0.1)
    ours = go.Prodigy([{"params": a[:3]}, {"params": a[3:], "lr": 0.0}], **kw)
    ref = prodigyopt.Prodigy([{"params": b[:3]}, {"params": b[3:], "lr": 0.0}], **kw)
    for x, y in zip(a, b):
        x.grad, y.grad = torch.zeros_like(x), torch.zeros_like(y)
    ours.step(), ref.step()
    assert ours.param_groups[0]["k"] == ref.param_groups[0]["k"] == 0
    lockstep(ours, ref, a, b, 6)
    assert_same(ours, ref, a, b, RTOL[torch.float64])


@pytest.mark.parametrize("kw", [{}, dict(use_bias_correction=True)], ids=["defaults", "bias"])
def test_a_step_without_any_gradient_later_on_counts_nothing(kw):
    """step() with no gradient at all (no backward ran) after the first update: nothing is
    counted or decayed, as in the reference, which returns when its denominator is 0 (before,
    only a first step did: k ran one ahead from then on, d_numerator decayed once more, and
    the parameters drifted 1e-5 from the reference's). Found without a host sync."""
    a, b = params(torch.float64)
    ours, ref = go.Prodigy(a, **kw), prodigyopt.Prodigy(b, **kw)
    lockstep(ours, ref, a, b, 4)
    for x, y in zip(a, b):
        x.grad = y.grad = None
    ours.step(), ref.step()
    assert ours.param_groups[0]["k"] == ref.param_groups[0]["k"] == 4
    lockstep(ours, ref, a, b, 6, seed=2)
    assert_same(ours, ref, a, b, RTOL[torch.float64])


def test_no_host_sync_after_the_first_update(monkeypatch):
    """On an accelerator the estimate stays on the device: after the first update, a step
    reads no tensor's value on the host (no .item(), .tolist() or bool()). Checked on the
    CPU with the step told it is on such a device."""
    monkeypatch.setattr(prodigy_module, "reads_numbers", lambda device: False)
    a, _ = params(torch.float32)
    opt = go.Prodigy(a)
    for x in a:
        x.grad = torch.ones_like(x)
    opt.step()

    def refused(*args):
        raise AssertionError("a host sync in Prodigy.step")

    for name in ("item", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, refused)
    for _ in range(3):
        opt.step()
    monkeypatch.undo()
    assert isinstance(opt.param_groups[0]["d"], torch.Tensor)
    assert opt.param_groups[0]["k"] == 4


def test_the_cpu_reads_its_scalars_once_per_phase_and_group(monkeypatch):
    """On the CPU a step reads its scalars as numbers once per phase and group, not per
    tensor (reading a CPU tensor is no device sync), and still equals the reference."""
    a, b = params(torch.float64)
    groups = [{"params": a[:2]}, {"params": a[2:], "eps": 1e-6}]
    ours = go.Prodigy(groups)
    ref = prodigyopt.Prodigy([{"params": b[:2]}, {"params": b[2:], "eps": 1e-6}])
    lockstep(ours, ref, a, b, 1)
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t) or tolist(t))
    lockstep(ours, ref, a, b, 3)
    monkeypatch.undo()
    assert len(reads) == 3 * 2 * 2  # 3 steps, 2 phases, 2 groups
    assert_same(ours, ref, a, b, RTOL[torch.float64])


def test_state_dicts_interchange_both_ways():
    kw = dict(weight_decay=0.01, use_bias_correction=True)
    a, b = params(torch.float64)
    ours, ref = go.Prodigy(a, **kw), prodigyopt.Prodigy(b, **kw)
    lockstep(ours, ref, a, b, 4)
    saved = ours.state_dict()
    assert isinstance(saved["param_groups"][0]["d"], float)  # numbers, as the reference's
    assert saved["state"][0]["s"].dim() == 1  # flat, as the reference's
    a2, b2 = (
        [torch.nn.Parameter(x.detach().clone()) for x in a],
        [torch.nn.Parameter(y.detach().clone()) for y in b],
    )
    ours2, ref2 = go.Prodigy(a2, **kw), prodigyopt.Prodigy(b2, **kw)
    ours2.load_state_dict(ref.state_dict())  # the reference's checkpoint into gradwise
    ref2.load_state_dict(saved)  # and gradwise's into the reference
    lockstep(ours2, ref2, a2, b2, 4, seed=2)
    assert_same(ours2, ref2, a2, b2, RTOL[torch.float64])


def test_different_group_rates_are_refused_at_step():
    w, v = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = go.Prodigy([{"params": [w]}, {"params": [v], "lr": 0.5}])
    w.grad = v.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="only supported for values of 0"):
        opt.step()


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        (dict(slice_p=2), NotImplementedError, "slice_p=2 is refused"),
        (dict(fsdp_in_use=True), NotImplementedError, "fsdp_in_use=True is refused"),
        (dict(lr=0.0), ValueError, r"lr must be > 0; received lr=0.0"),
        (dict(d0=0.0), ValueError, "d0 must be > 0"),
        (dict(eps=0.0), ValueError, "eps must be > 0"),
        (dict(growth_rate=0.0), ValueError, "growth_rate must be a number > 0"),
        (dict(beta3=1.5), ValueError, r"beta3 must be in \[0, 1\]"),
        (dict(betas=(1.0, 0.9)), ValueError, r"betas\[0\] must be in \[0, 1\)"),
    ],
)
def test_what_is_refused(kw, error, match):
    with pytest.raises(error, match=match):
        go.Prodigy([torch.nn.Parameter(torch.zeros(2))], **kw)

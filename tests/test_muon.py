"""Muon against torch.optim.Muon: parameters and momentum buffers, state dicts, refusals."""

from __future__ import annotations

import copy

import pytest
import torch

from gradwise.optim.muon import Muon, newton_schulz

#: each argument at its default and at one other value
GRID = [
    dict(),
    dict(lr=0.02),
    dict(weight_decay=0.0),
    dict(momentum=0.9),
    dict(nesterov=False),
    dict(ns_coefficients=(2.0, -1.5, 0.5)),
    dict(eps=1e-2),
    dict(ns_steps=3),
    dict(adjust_lr_fn="original"),
    dict(adjust_lr_fn="match_rms_adamw"),
]
#: tall, wide, square, a row, a column
SHAPES = [(12, 7), (7, 12), (6, 6), (1, 9), (9, 1), (40, 24)]


@pytest.fixture(autouse=True)
def one_thread():
    """Small bfloat16 products: threads only contend (8 ms against 0.1 ms each, 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_params(dtype, seed=0):
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
        if i % 7 == 3:  # a missing gradient: that parameter is left alone
            a[1].grad = b[1].grad = None
        ours.step()
        ref.step()


def assert_same(ours, ref, a, b, **tol):
    tol = tol or dict(rtol=0, atol=0)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, **tol)
        assert set(ours.state[x]) == set(ref.state[y]) == {"momentum_buffer"}
        buf, theirs = ours.state[x]["momentum_buffer"], ref.state[y]["momentum_buffer"]
        assert buf.dtype == theirs.dtype
        torch.testing.assert_close(buf, theirs, **tol)


@pytest.mark.parametrize("kw", GRID, ids=[str(k) or "defaults" for k in GRID])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_with_torch(kw, dtype):
    """The same bfloat16 products in the same order as torch: equal bit for bit on one machine
    (the promise is bfloat16 tolerance), over 25 steps."""
    a, b = make_params(dtype)
    ours, ref = Muon(a, **kw), torch.optim.Muon(b, **kw)
    lockstep(ours, ref, a, b, 25)
    assert_same(ours, ref, a, b)


def test_bfloat16_parameters_with_nesterov_equal_torch():
    a, b = make_params(torch.bfloat16)
    ours, ref = Muon(a, lr=0.02), torch.optim.Muon(b, lr=0.02)
    lockstep(ours, ref, a, b, 20)
    assert_same(ours, ref, a, b)


def test_bfloat16_parameters_without_nesterov_keep_their_momentum():
    """torch normalizes a bfloat16 momentum buffer in place when nesterov=False (its
    orthogonalization divides its input, which is the buffer itself); gradwise's stays the
    average of the gradients."""
    w = torch.nn.Parameter(torch.randn(5, 4, dtype=torch.bfloat16))
    g = torch.randn(5, 4, dtype=torch.bfloat16)
    w.grad = g.clone()
    ours = Muon([w], nesterov=False)
    ours.step()
    torch.testing.assert_close(ours.state[w]["momentum_buffer"], torch.lerp(0 * g, g, 0.05))


def test_orthogonalization_matches_a_float64_transcription_to_bfloat16_tolerance():
    gen = torch.Generator().manual_seed(4)
    for shape in [(16, 9), (9, 16), (32, 32)]:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        a, b, c = 3.4445, -4.7750, 2.0315
        y = x.T if shape[0] > shape[1] else x
        y = y / y.norm()
        for _ in range(5):
            gram = y @ y.T
            y = a * y + (b * gram + c * gram @ gram) @ y
        expected = y.T if shape[0] > shape[1] else y
        got = newton_schulz(x, (a, b, c), 5, 1e-7)
        assert got.dtype == torch.bfloat16 and got.shape == shape
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=0.05)
        singular = torch.linalg.svdvals(got.double())
        assert singular.min() > 0.5 and singular.max() < 1.3  # near-orthogonal, as Jordan's


def test_param_groups_and_a_torch_scheduler():
    a, b = make_params(torch.float32)

    def groups(ps):
        return [
            {"params": ps[:3], "lr": 0.05, "adjust_lr_fn": "match_rms_adamw"},
            {"params": ps[3:], "momentum": 0.8, "nesterov": False, "weight_decay": 0.0},
        ]

    ours, ref = Muon(groups(a), lr=0.01), torch.optim.Muon(groups(b), lr=0.01)
    sched_ours = torch.optim.lr_scheduler.StepLR(ours, step_size=5, gamma=0.5)
    sched_ref = torch.optim.lr_scheduler.StepLR(ref, step_size=5, gamma=0.5)
    for _ in range(4):
        lockstep(ours, ref, a, b, 5)
        sched_ours.step()
        sched_ref.step()
    assert_same(ours, ref, a, b)


@pytest.mark.parametrize("saved_by", ["torch", "gradwise"])
def test_state_dicts_interchange_both_ways(saved_by):
    a, b = make_params(torch.float32)
    kw = dict(lr=0.02, momentum=0.9, adjust_lr_fn="match_rms_adamw")
    ours, ref = Muon(a, **kw), torch.optim.Muon(b, **kw)
    lockstep(ours, ref, a, b, 8)
    saved = (ref if saved_by == "torch" else ours).state_dict()
    a2 = [torch.nn.Parameter(x.detach().clone()) for x in a]
    b2 = [torch.nn.Parameter(y.detach().clone()) for y in b]
    ours2, ref2 = Muon(a2), torch.optim.Muon(b2)
    ours2.load_state_dict(copy.deepcopy(saved))  # (torch loads state tensors without copying)
    ref2.load_state_dict(copy.deepcopy(saved))
    assert ours2.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    assert set(ours2.param_groups[0]) == set(ours.param_groups[0])  # no key added on the way
    lockstep(ours2, ref2, a2, b2, 12, seed=2)
    assert_same(ours2, ref2, a2, b2)


def test_maximize_is_a_step_on_the_negated_gradient():
    a, b = make_params(torch.float32)
    ours, ref = Muon(a, maximize=True), torch.optim.Muon(b)
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        for x, y in zip(a, b):
            x.grad = torch.randn(x.shape, generator=gen)
            y.grad = -x.grad
        ours.step()
        ref.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_state_dtype_keeps_the_momentum_in_bfloat16():
    a, b = make_params(torch.float32)
    ours, ref = Muon(a, lr=0.02, state_dtype=torch.bfloat16), torch.optim.Muon(b, lr=0.02)
    lockstep(ours, ref, a, b, 10)
    for x, y in zip(a, b):
        assert ours.state[x]["momentum_buffer"].dtype == torch.bfloat16
        torch.testing.assert_close(x, y, rtol=0, atol=0.02)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), ()])
def test_parameters_that_are_not_matrices_are_refused_as_torch_refuses_them(shape):
    bad = torch.nn.Parameter(torch.zeros(shape))
    with pytest.raises(ValueError, match=r"Muon: every parameter must be 2-D.*only supports 2D"):
        Muon([torch.nn.Parameter(torch.zeros(2, 2)), bad])
    with pytest.raises(ValueError, match="only supports 2D parameters"):
        torch.optim.Muon([torch.nn.Parameter(torch.zeros(2, 2)), bad])
    opt = Muon([torch.nn.Parameter(torch.zeros(2, 2))])
    with pytest.raises(ValueError, match="every parameter must be 2-D"):
        opt.add_param_group({"params": [bad]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(lr=-1.0), r"lr must be >= 0; received lr=-1.0"),
        (dict(momentum=-0.5), r"momentum must be >= 0.*momentum should be >= 0"),
        (dict(weight_decay=-0.1), r"weight_decay must be >= 0"),
        (dict(adjust_lr_fn="spectral"), r"adjust_lr_fn must be None or one of 'original'"),
        (dict(ns_steps=100), r"ns_steps must be an integer in \[0, 100\)"),
        (dict(ns_coefficients=(1.0, 2.0)), r"ns_coefficients must be three numbers"),
    ],
)
def test_bad_arguments_are_refused_with_their_names(kw, match):
    with pytest.raises(ValueError, match=match):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], **kw)


def test_complex_parameters_and_sparse_gradients_are_refused_at_step():
    z = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.complex64))
    z.grad = torch.ones_like(z)
    with pytest.raises(RuntimeError, match="does not support complex parameters"):
        Muon([z]).step()
    w = torch.nn.Parameter(torch.zeros(3, 2))
    w.grad = torch.zeros(3, 2).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        Muon([w]).step()


def test_parameters_are_never_moved_into_flat_buffers():
    a, _ = make_params(torch.float32)
    ours = Muon(a)
    storages = [x.untyped_storage().data_ptr() for x in a]
    for _ in range(3):
        for x in a:
            x.grad = torch.ones_like(x)
        ours.step()
        ours.zero_grad(set_to_none=False)
    ours.load_state_dict(ours.state_dict())
    assert [x.untyped_storage().data_ptr() for x in a] == storages
    assert all((x.grad == 0).all() for x in a)


@pytest.mark.parametrize("kw", [dict(), dict(nesterov=False), dict(adjust_lr_fn="original")])
def test_same_shape_matrices_are_orthogonalized_as_a_batch_and_equal_torch(kw, monkeypatch):
    """Small matrices of one shape are stacked and orthogonalized together (batched products,
    each matrix its own norm): one Newton–Schulz call per shape, and the parameters equal
    torch's, which orthogonalizes them one by one, to bfloat16 tolerance over 25 steps."""
    import gradwise.optim.muon as muon_module

    shapes = [(12, 7)] * 5 + [(7, 12)] * 3 + [(64, 64)] * 4 + [(9, 1)]
    gen = torch.Generator().manual_seed(0)
    values = [torch.randn(s, generator=gen) for s in shapes]
    a = [torch.nn.Parameter(v.clone()) for v in values]
    b = [torch.nn.Parameter(v.clone()) for v in values]
    ours, ref = Muon(a, **kw), torch.optim.Muon(b, **kw)
    calls = []
    orthogonalize = muon_module.newton_schulz
    monkeypatch.setattr(
        muon_module,
        "newton_schulz",
        lambda x, *args: calls.append(x.shape) or orthogonalize(x, *args),
    )
    lockstep(ours, ref, a, b, 25)  # a[1] misses a gradient now and then: a batch of 4
    assert sorted(calls[:4]) == sorted([(5, 12, 7), (3, 7, 12), (4, 64, 64), (1, 9, 1)])
    for x, y in zip(a, b):
        # a last-bit bfloat16 difference moves an update of size ~lr by ~lr·2⁻⁸: 25 steps of
        # lr 1e-3 stay within 5e-5 (the two agree bit for bit in most elements)
        torch.testing.assert_close(x, y, rtol=0, atol=5e-5)
        torch.testing.assert_close(
            ours.state[x]["momentum_buffer"], ref.state[y]["momentum_buffer"]
        )

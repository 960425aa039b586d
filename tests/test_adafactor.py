"""Adafactor against torch.optim.Adafactor: parameters and every state tensor, state dicts."""

from __future__ import annotations

import copy

import pytest
import torch

from gradwise.optim.adafactor import Adafactor

#: each argument at its default and at one other value
GRID = [
    dict(),
    dict(lr=0.1),
    dict(beta2_decay=-0.5),
    dict(eps=(1e-20, 1e-3)),
    dict(eps=(None, 0.1)),
    dict(d=2.0),
    dict(weight_decay=0.1),
    dict(maximize=True),
    dict(foreach=False),
]
#: factored (2-D, 3-D, a row), whole (vectors, a scalar)
SHAPES = [(12, 7), (3, 4, 5), (1, 9), (9, 1), (17,), (1,), ()]


def make_params(dtype, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    values = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    return (
        [torch.nn.Parameter(v.clone()) for v in values],
        [torch.nn.Parameter(v.clone()) for v in values],
    )


def lockstep(ours, ref, a, b, steps, seed=1, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    for i in range(steps):
        for x, y in zip(a, b):
            g = torch.randn(x.shape, generator=gen, dtype=torch.float64).mul_(scale).to(x.dtype)
            x.grad, y.grad = g.clone(), g.clone()
        if i % 7 == 3:  # a missing gradient: that parameter is left alone, its step not counted
            a[1].grad = b[1].grad = None
        ours.step()
        ref.step()


def assert_same(ours, ref, a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
        assert set(ours.state[x]) == set(ref.state[y])
        for name, value in ref.state[y].items():
            assert ours.state[x][name].dtype == value.dtype, name
            torch.testing.assert_close(ours.state[x][name], value, rtol=0, atol=0)


@pytest.mark.parametrize("kw", GRID, ids=[str(k) or "defaults" for k in GRID])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_with_torch(kw, dtype):
    """Bit-identical to torch's (default, single-tensor) path over 25 steps."""
    a, b = make_params(dtype)
    ours, ref = Adafactor(a, **kw), torch.optim.Adafactor(b, **kw)
    lockstep(ours, ref, a, b, 25)
    assert_same(ours, ref, a, b)


def test_foreach_is_accepted_and_equals_torchs_foreach_to_rounding():
    a, b = make_params(torch.float32)
    ours, ref = Adafactor(a, foreach=True), torch.optim.Adafactor(b, foreach=True)
    lockstep(ours, ref, a, b, 20)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_update_clipping_and_small_gradients():
    """Large gradients (the RMS clip at d binds) and tiny ones (the ε1 floors bind)."""
    for scale in (1e3, 1e-20):
        a, b = make_params(torch.float32)
        ours, ref = Adafactor(a, lr=0.05), torch.optim.Adafactor(b, lr=0.05)
        lockstep(ours, ref, a, b, 20, scale=scale)
        assert_same(ours, ref, a, b)


def test_param_groups_and_a_torch_scheduler():
    a, b = make_params(torch.float64)

    def groups(ps):
        return [
            {"params": ps[:3], "lr": 0.05, "weight_decay": 0.01},
            {"params": ps[3:], "d": 1.5, "eps": (1e-25, 1e-2)},
        ]

    ours, ref = Adafactor(groups(a)), torch.optim.Adafactor(groups(b))
    sched_ours = torch.optim.lr_scheduler.StepLR(ours, step_size=5, gamma=0.5)
    sched_ref = torch.optim.lr_scheduler.StepLR(ref, step_size=5, gamma=0.5)
    for _ in range(4):
        lockstep(ours, ref, a, b, 5)
        sched_ours.step()
        sched_ref.step()
    assert_same(ours, ref, a, b)


def test_eps1_none_is_the_first_parameters_machine_epsilon_for_the_group():
    """torch takes ε1 from the dtype of the group's first parameter with a gradient."""
    a, b = make_params(torch.float32, shapes=[(6, 5), (4, 3)])
    a[1].data, b[1].data = a[1].data.double(), b[1].data.double()
    ours, ref = Adafactor(a), torch.optim.Adafactor(b)
    lockstep(ours, ref, a, b, 20, scale=1e-5)
    assert_same(ours, ref, a, b)


@pytest.mark.parametrize("saved_by", ["torch", "gradwise"])
def test_state_dicts_interchange_both_ways(saved_by):
    a, b = make_params(torch.float32)
    ours, ref = Adafactor(a, lr=0.05, weight_decay=0.01), torch.optim.Adafactor(b, lr=0.05)
    ref.param_groups[0]["weight_decay"] = 0.01
    lockstep(ours, ref, a, b, 8)
    saved = (ref if saved_by == "torch" else ours).state_dict()
    a2 = [torch.nn.Parameter(x.detach().clone()) for x in a]
    b2 = [torch.nn.Parameter(y.detach().clone()) for y in b]
    ours2, ref2 = Adafactor(a2), torch.optim.Adafactor(b2)
    ours2.load_state_dict(copy.deepcopy(saved))  # (torch loads state tensors without copying)
    ref2.load_state_dict(copy.deepcopy(saved))
    assert ours2.param_groups[0]["lr"] == 0.05
    assert set(ours2.param_groups[0]) == set(ours.param_groups[0])  # no key added on the way
    assert ours2.param_groups[0]["weight_decay"] == 0.01
    lockstep(ours2, ref2, a2, b2, 12, seed=2)
    assert_same(ours2, ref2, a2, b2)
    # and what each saves now loads into the other
    theirs = ref2.state_dict()["state"]
    for key, state in ours2.state_dict()["state"].items():
        assert set(state) == set(theirs[key])
        for name, value in state.items():
            torch.testing.assert_close(value, theirs[key][name], rtol=0, atol=0)


def test_a_tensor_with_no_elements_is_left_alone():
    """torch divides by the size of an empty tensor (ZeroDivisionError); gradwise counts its
    step, keeps it empty, and updates the others as torch does."""
    a, b = make_params(torch.float32)
    empty = torch.nn.Parameter(torch.zeros(0, 3))
    ours, ref = Adafactor([*a, empty]), torch.optim.Adafactor(b)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        for x, y in zip(a, b):
            x.grad = torch.randn(x.shape, generator=gen)
            y.grad = x.grad.clone()
        empty.grad = torch.zeros(0, 3)
        ours.step()
        ref.step()
    assert_same(ours, ref, a, b)
    assert ours.state[empty]["step"].item() == 5
    assert ours.state[empty]["row_var"].shape == (0, 1)


def test_state_dtype_keeps_the_moments_in_bfloat16():
    a, b = make_params(torch.float32)
    ours = Adafactor(a, state_dtype=torch.bfloat16)
    ref = torch.optim.Adafactor(b)
    lockstep(ours, ref, a, b, 10)
    for x, y in zip(a, b):
        for name, value in ours.state[x].items():
            if name != "step":
                assert value.dtype == torch.bfloat16
        torch.testing.assert_close(x, y, rtol=0.02, atol=2e-3)


def test_l1_gives_exact_zeros():
    w = torch.nn.Parameter(torch.full((4, 3), 1e-3))
    w.grad = torch.zeros(4, 3)
    Adafactor([w], l1=1.0).step()
    assert (w == 0).all()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(lr=-1.0), r"lr must be >= 0; received lr=-1.0"),
        (dict(beta2_decay=0.5), r"beta2_decay must be <= 0; received beta2_decay=0.5"),
        (dict(eps=(-1.0, 1e-3)), r"eps\[0\] must be >= 0.*epsilon1 should be >= 0"),
        (dict(eps=(None, -1.0)), r"eps\[1\] must be >= 0.*epsilon2 should be >= 0"),
        (dict(eps=1e-3), r"eps must be a pair"),
        (dict(d=0.5), r"d must be >= 1; received d=0.5.*Clipping threshold"),
        (dict(weight_decay=-0.1), r"weight_decay must be >= 0"),
    ],
)
def test_bad_arguments_are_refused_with_their_names(kw, match):
    with pytest.raises(ValueError, match=match):
        Adafactor([torch.nn.Parameter(torch.zeros(2, 2))], **kw)


def test_complex_parameters_and_sparse_gradients_are_refused_at_step():
    z = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.complex64))
    z.grad = torch.ones_like(z)
    with pytest.raises(RuntimeError, match="does not support complex parameters"):
        Adafactor([z]).step()
    w = torch.nn.Parameter(torch.zeros(3, 2))
    w.grad = torch.zeros(3, 2).to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        Adafactor([w]).step()


def test_parameters_are_never_moved_into_flat_buffers():
    a, b = make_params(torch.float32)
    ours = Adafactor(a)
    storages = [x.untyped_storage().data_ptr() for x in a]
    for _ in range(3):
        for x in a:
            x.grad = torch.ones_like(x)
        ours.step()
        ours.zero_grad(set_to_none=False)
    ours.load_state_dict(ours.state_dict())
    assert [x.untyped_storage().data_ptr() for x in a] == storages
    assert all((x.grad == 0).all() for x in a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_shape_tensors_are_stepped_as_a_batch_with_torchs_numbers(dtype):
    """Many tensors of a few shapes (a deep narrow net's): each shape's tensors are one batch
    of the rule (stacked, then copied back), and every parameter and state tensor equals
    torch's, bit for bit, over 12 steps with a missing gradient now and then."""
    shapes = [(6, 5)] * 7 + [(5,)] * 9 + [(2, 3, 4)] * 3 + [()] * 4
    a, b = make_params(dtype, seed=3, shapes=shapes)
    ours, ref = Adafactor(a, weight_decay=0.1), torch.optim.Adafactor(b, weight_decay=0.1)
    lockstep(ours, ref, a, b, 12, scale=0.3)
    assert_same(ours, ref, a, b)

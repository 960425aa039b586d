"""SparseAdam against torch.optim.SparseAdam: parameters and every state entry over a grid of
its arguments, state dicts both ways, and what both refuse."""

from __future__ import annotations

import io

import pytest
import torch

from gradwise.optim.adam import Adam
from gradwise.optim.sparse_adam import SparseAdam, sparse_adam

# each argument at its default and at another value
GRID = [
    dict(),
    dict(lr=0.01),
    dict(betas=(0.8, 0.99)),
    dict(eps=1e-4),
    dict(maximize=True),
    dict(lr=torch.tensor(0.02), betas=(0.5, 0.9), eps=1e-6, maximize=True),
]
ROWS, DIM = 40, 6
DTYPES = [torch.float32, torch.float64]


def tolerance(dtype, kw=None):
    """Float rounding: the step size comes from Adam's :func:`adam_coefficients`, as
    ``(lr/(1 − β1^t))·sqrt(1 − β2^t)`` where torch computes ``lr·sqrt(1 − β2^t)/(1 − β1^t)``;
    the two differ in the last bit (in float32 when lr is a float32 tensor)."""
    if kw and isinstance(kw.get("lr"), torch.Tensor):  # the step size in float32, both
        return dict(rtol=1e-5, atol=1e-7)
    if dtype == torch.float32:
        return dict(rtol=1.3e-6, atol=2.5e-7)  # two ulps of 1
    return dict(rtol=1e-13, atol=1e-15)


def models(dtype, seed=0):
    """Two copies of a pair of sparse embeddings (the second in its own group)."""
    torch.manual_seed(seed)
    a = torch.nn.ModuleList(
        [torch.nn.Embedding(ROWS, DIM, sparse=True), torch.nn.Embedding(7, 3, sparse=True)]
    ).to(dtype)
    b = torch.nn.ModuleList(
        [torch.nn.Embedding(ROWS, DIM, sparse=True), torch.nn.Embedding(7, 3, sparse=True)]
    ).to(dtype)
    b.load_state_dict(a.state_dict())
    return a, b


def groups(model, kw):
    second = {k: v for k, v in kw.items() if k != "lr"}
    return [
        {"params": model[0].parameters()},
        {"params": model[1].parameters(), "lr": 0.005, **second},
    ]


def lockstep(models_and_optimizers, steps, seed=1):
    """The same sparse gradients for each (model, optimizer): duplicate indices (they add up),
    a step where the second embedding has no gradient, and one where its gradient is empty."""
    gen = torch.Generator().manual_seed(seed)
    dtype = models_and_optimizers[0][0][0].weight.dtype
    for i in range(steps):
        idx = torch.randint(0, ROWS, (12,), generator=gen)
        idx[1] = idx[0]
        small = torch.randint(0, 7, (4,), generator=gen)
        w = torch.randn(12, DIM, generator=gen, dtype=torch.float64).to(dtype)
        for model, opt in models_and_optimizers:
            opt.zero_grad()
            loss = (model[0](idx) * w).sum()
            if i % 5 != 3:
                loss = loss + model[1](small).pow(2).sum()
            loss.backward()
            if i % 7 == 4:  # an empty sparse gradient: the step is counted, nothing moves
                g = model[1].weight
                g.grad = torch.sparse_coo_tensor(
                    torch.empty(1, 0, dtype=torch.long),
                    torch.empty(0, 3, dtype=dtype),
                    g.shape,
                    check_invariants=True,
                )
            opt.step()


def assert_same(ours, ref, a, b, dtype, kw=None):
    for x, y in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(x, y, **tolerance(dtype, kw))
        mine, theirs = ours.state[x], ref.state[y]
        assert mine.keys() == theirs.keys()
        assert type(mine["step"]) is type(theirs["step"]) is int
        assert mine["step"] == theirs["step"]
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(mine[name], theirs[name], **tolerance(dtype, kw))


@pytest.mark.parametrize("kw", GRID, ids=[str(k) or "defaults" for k in GRID])
@pytest.mark.parametrize("dtype", DTYPES)
def test_equals_torch_sparse_adam(kw, dtype):
    a, b = models(dtype)
    ours, ref = SparseAdam(groups(a, kw), **kw), torch.optim.SparseAdam(groups(b, kw), **kw)
    lockstep([(a, ours), (b, ref)], 20)
    assert_same(ours, ref, a, b, dtype, kw)
    assert ours.param_groups[1]["lr"] == ref.param_groups[1]["lr"] == 0.005


def saved(opt) -> dict:
    """``opt``'s state dict as a checkpoint file gives it back (a live state dict loaded into
    another optimizer would share its moment tensors, which both would then update)."""
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dicts_interchange_both_ways(dtype):
    kw = dict(lr=0.01, betas=(0.8, 0.99))
    a, b = models(dtype)
    ours, ref = SparseAdam(groups(a, kw), **kw), torch.optim.SparseAdam(groups(b, kw), **kw)
    lockstep([(a, ours), (b, ref)], 6)
    # torch's checkpoint into gradwise, gradwise's into torch; both go on in lockstep
    a2, b2 = models(dtype)
    a2.load_state_dict(b.state_dict())
    b2.load_state_dict(a.state_dict())
    ours2, ref2 = SparseAdam(groups(a2, kw), **kw), torch.optim.SparseAdam(groups(b2, kw), **kw)
    ours2.load_state_dict(saved(ref))
    ref2.load_state_dict(saved(ours))
    assert ours2.state_dict()["param_groups"] == ref.state_dict()["param_groups"]
    lockstep([(a2, ours2), (b2, ref2), (a, ours), (b, ref)], 6, seed=2)
    assert_same(ours2, ref, a2, b, dtype)
    assert_same(ours, ref2, a, b2, dtype)


def test_rows_not_touched_stay_as_they_are():
    emb = torch.nn.Embedding(5, 2, sparse=True)
    opt = SparseAdam(emb.parameters(), lr=0.1)
    before = emb.weight.detach().clone()
    emb(torch.tensor([1, 3, 1])).sum().backward()
    opt.step()
    moved = (emb.weight.detach() != before).any(dim=1).tolist()
    assert moved == [False, True, False, True, False]
    assert opt.state[emb.weight]["exp_avg"][[0, 2, 4]].abs().sum() == 0


def test_first_step_is_adams_on_the_touched_rows():
    """From zero moments, one step of SparseAdam on a row is one step of Adam on it, up to
    where ε goes (sqrt(v)+ε vs sqrt(v̂)+ε): with ε = 0 they agree."""
    g = torch.tensor([[0.3, -2.0]], dtype=torch.float64)
    rows = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    state = {"exp_avg": torch.zeros_like(rows), "exp_avg_sq": torch.zeros_like(rows)}
    lr, betas = 0.1, (0.9, 0.999)
    step_size = lr * (1 - betas[1]) ** 0.5 / (1 - betas[0])
    sparse_adam(rows, g, state, betas=betas, eps=0.0, step_size=step_size)
    w = torch.nn.Parameter(torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    w.grad = g.clone()
    Adam([w], lr=lr, betas=betas, eps=0.0).step()
    torch.testing.assert_close(rows, w.detach(), rtol=1e-15, atol=0)


def test_dense_gradients_are_refused_and_change_nothing():
    emb, lin = torch.nn.Embedding(4, 2, sparse=True), torch.nn.Linear(2, 1)
    opt = SparseAdam([*emb.parameters(), *lin.parameters()])
    before = emb.weight.detach().clone()
    lin(emb(torch.tensor([0, 1]))).sum().backward()
    with pytest.raises(
        RuntimeError, match="does not support dense gradients, please consider Adam"
    ):
        opt.step()
    assert torch.equal(emb.weight.detach(), before) and not opt.state


@pytest.mark.parametrize(
    "kw, exc, words, torch_too",
    [
        (dict(weight_decay=0.01), ValueError, "weight_decay is not an option of SparseAdam", 0),
        (dict(weight_decay=0), ValueError, "received weight_decay=0", 0),
        (dict(l1=1e-4), ValueError, "l1 is not an option", 0),
        (dict(amsgrad=True), ValueError, "amsgrad is not an option", 0),
        (dict(foreach=True), TypeError, "takes lr, betas, eps, maximize", 0),
        (dict(lr=0.0), ValueError, "Invalid learning rate: 0.0", 1),
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element", 1),
        (dict(eps=0.0), ValueError, "Invalid epsilon value: 0.0", 1),
        (dict(betas=(1.0, 0.9)), ValueError, "Invalid beta parameter at index 0", 1),
        (dict(betas=(0.9, -0.1)), ValueError, "Invalid beta parameter at index 1", 1),
        (dict(maximize=1), TypeError, "maximize must be True or False", 0),
    ],
)
def test_bad_arguments_are_refused(kw, exc, words, torch_too):
    emb = torch.nn.Embedding(3, 2, sparse=True)
    with pytest.raises(exc, match=words):
        SparseAdam(emb.parameters(), **kw)
    if torch_too:
        with pytest.raises(exc, match=words):  # torch's words are in gradwise's message
            torch.optim.SparseAdam(emb.parameters(), **kw)


def test_param_groups_with_decay_are_refused_unless_zero():
    emb = torch.nn.Embedding(3, 2, sparse=True)
    SparseAdam([{"params": emb.parameters(), "weight_decay": 0.0}])
    with pytest.raises(ValueError, match="weight_decay=0.1 in a param group"):
        SparseAdam([{"params": emb.parameters(), "weight_decay": 0.1}])


@pytest.mark.parametrize(
    "param, words",
    [
        (torch.zeros(3, 2).to_sparse().requires_grad_(), r"Sparse params at indices \[\[0, 0\]\]"),
        (torch.zeros(3, dtype=torch.complex64, requires_grad=True), "Complex params at indices"),
    ],
)
def test_sparse_and_complex_params_are_refused(param, words):
    with pytest.raises(ValueError, match=words):
        SparseAdam([param])
    with pytest.raises(ValueError, match=words):
        torch.optim.SparseAdam([param])


def test_closure_loss_is_returned():
    emb = torch.nn.Embedding(3, 2, sparse=True)
    opt = SparseAdam(emb.parameters())

    def closure():
        opt.zero_grad()
        loss = emb(torch.tensor([2])).sum()
        loss.backward()
        return loss

    assert opt.step(closure) is not None and opt.state[emb.weight]["step"] == 1


@pytest.mark.parametrize("sparse_dim", [0, 1, 2])
def test_gradients_sparse_in_any_number_of_dims(sparse_dim):
    """Hybrid COO gradients: rows (as nn.Embedding's), single elements, or one dense block."""
    gen = torch.Generator().manual_seed(3)
    grads = []
    for _ in range(4):
        dense = torch.randn(5, 3, generator=gen, dtype=torch.float64)
        dense[torch.rand(5, generator=gen) < 0.5] = 0
        if sparse_dim:
            grads.append(dense.to_sparse(sparse_dim))
        else:  # no sparse dimension: one value, the whole tensor
            index = torch.empty(0, 1, dtype=torch.long)
            grads.append(torch.sparse_coo_tensor(index, dense[None], (5, 3), check_invariants=True))
    runs = []
    for cls in (SparseAdam, torch.optim.SparseAdam):
        p = torch.nn.Parameter(torch.ones(5, 3, dtype=torch.float64))
        opt = cls([p], lr=0.1)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        runs.append((p.detach(), opt.state[p]))
    (p1, s1), (p2, s2) = runs
    torch.testing.assert_close(p1, p2, **tolerance(torch.float64))
    for name in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(s1[name], s2[name], **tolerance(torch.float64))

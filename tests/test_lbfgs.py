"""LBFGS against torch.optim.LBFGS: parameters and every state entry (history lists, counters,
the last direction and step) over a grid of its arguments, with and without the strong-Wolfe
line search, on least squares and Rosenbrock; state dicts both ways; what both refuse."""

from __future__ import annotations

import io

import pytest
import torch

from gradwise.optim.lbfgs import LBFGS, cubic_minimizer

# each argument at its default and at another value
GRID = [
    dict(),
    dict(line_search_fn="strong_wolfe"),
    dict(lr=0.5),
    dict(max_iter=7),
    dict(max_eval=9, line_search_fn="strong_wolfe"),
    dict(tolerance_grad=1e-3),
    dict(tolerance_change=1e-4, line_search_fn="strong_wolfe"),
    dict(history_size=3),
    dict(history_size=3, line_search_fn="strong_wolfe", lr=torch.tensor(0.8)),
]
DTYPES = [torch.float32, torch.float64]
STEPS = 20


def least_squares(dtype, seed=0):
    """A linear model ``X·w + b`` on 40 points (two parameters, one of them a matrix), and a
    third parameter the loss does not use (its gradient stays None: zeros in the flat vector)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randn(40, 2, generator=gen, dtype=torch.float64).to(dtype)
    start = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in ((5, 2), (2,))]

    def loss(params):
        w, b, _ = params
        prediction = (x.unsqueeze(-1) * w).sum(1) + b  # x @ w, without BLAS's per-call cost
        return ((prediction - y) ** 2).mean()

    return [*start, torch.zeros(3, dtype=dtype)], loss


def rosenbrock(dtype):
    """The 4-dimensional Rosenbrock function from (−1.2, 1, −0.5, 0.3)."""

    def loss(params):
        (z,) = params
        return ((1 - z[:-1]) ** 2).sum() + 100 * ((z[1:] - z[:-1] ** 2) ** 2).sum()

    return [torch.tensor([-1.2, 1.0, -0.5, 0.3], dtype=dtype)], loss


PROBLEMS = {"least_squares": least_squares, "rosenbrock": rosenbrock}


def setup(problem, dtype, cls, kw, start=None):
    values, loss = PROBLEMS[problem](dtype)
    params = [torch.nn.Parameter(v.clone()) for v in (start or values)]
    opt = cls(params, **kw)

    def closure():
        opt.zero_grad()
        value = loss(params)
        value.backward()
        return value

    return params, opt, closure


def assert_same_value(mine, theirs, where):
    """Equal values of the same kind: tensors bit for bit, numbers exactly, lists item by item."""
    assert type(mine) is type(theirs), (where, type(mine), type(theirs))
    if isinstance(mine, torch.Tensor):
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, where
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0, msg=where)
    elif isinstance(mine, list):
        assert len(mine) == len(theirs), where
        for i, (m, t) in enumerate(zip(mine, theirs)):
            assert_same_value(m, t, f"{where}[{i}]")
    else:
        assert mine == theirs, (where, mine, theirs)


def assert_same(ours, ref, a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    mine, theirs = ours.state[a[0]], ref.state[b[0]]
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert_same_value(mine[key], theirs[key], key)
    assert len(ours.state) == len(ref.state) == 1  # the state is global, with the first param


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("kw", GRID, ids=[str(k) or "defaults" for k in GRID])
@pytest.mark.parametrize("dtype", DTYPES)
def test_equals_torch_lbfgs(problem, kw, dtype):
    a, ours, step_a = setup(problem, dtype, LBFGS, kw)
    b, ref, step_b = setup(problem, dtype, torch.optim.LBFGS, kw)
    for _ in range(STEPS):
        assert_same_value(ours.step(step_a), ref.step(step_b), "loss")
    assert_same(ours, ref, a, b)
    assert ours.state[a[0]]["n_iter"] > 5  # iterations, not just evaluations
    assert ours.param_groups[0].keys() == ref.param_groups[0].keys()


def saved(opt) -> dict:
    """``opt``'s state dict as a checkpoint file gives it back (loading a live state dict
    would share its tensors, which LBFGS updates in place, between two optimizers)."""
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_state_dicts_interchange_both_ways(dtype, line_search_fn):
    kw = dict(history_size=4, max_iter=5, line_search_fn=line_search_fn)
    a, ours, step_a = setup("rosenbrock", dtype, LBFGS, kw)
    b, ref, step_b = setup("rosenbrock", dtype, torch.optim.LBFGS, kw)
    for _ in range(4):
        ours.step(step_a)
        ref.step(step_b)
    start = [p.detach() for p in a]
    a2, ours2, step_a2 = setup("rosenbrock", dtype, LBFGS, kw, start=start)
    b2, ref2, step_b2 = setup("rosenbrock", dtype, torch.optim.LBFGS, kw, start=start)
    ours2.load_state_dict(saved(ref))  # torch's checkpoint into gradwise
    ref2.load_state_dict(saved(ours))  # gradwise's into torch
    for _ in range(6):
        for opt, closure in ((ours, step_a), (ref, step_b), (ours2, step_a2), (ref2, step_b2)):
            opt.step(closure)
    assert_same(ours2, ref, a2, b)
    assert_same(ours, ref2, a, b2)


def test_converges_on_rosenbrock():
    a, opt, closure = setup("rosenbrock", torch.float64, LBFGS, dict(line_search_fn="strong_wolfe"))
    for _ in range(20):
        opt.step(closure)
    assert closure().item() < 1e-8  # the valley is flat: θ is 1 to a few 1e-5 there
    torch.testing.assert_close(a[0].detach(), torch.ones(4, dtype=torch.float64), atol=1e-4, rtol=0)


def test_complex_and_sparse_gradients_as_torch():
    """Complex parameters step as pairs of reals and sparse gradients are made dense, as torch."""
    runs = []
    for cls in (LBFGS, torch.optim.LBFGS):
        torch.manual_seed(0)
        z = torch.nn.Parameter(torch.randn(3, dtype=torch.complex128))
        emb = torch.nn.Embedding(6, 2, sparse=True).double()
        opt = cls([z, *emb.parameters()], history_size=5, line_search_fn="strong_wolfe")

        def closure(opt=opt, z=z, emb=emb):
            opt.zero_grad()
            target = torch.tensor([1 + 1j, -2j, 0.5], dtype=torch.complex128)
            loss = (z - target).abs().pow(2).sum() + (emb(torch.tensor([1, 4, 4])) - 1).pow(2).sum()
            loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)
        runs.append((z.detach().clone(), emb.weight.detach().clone(), opt.state[z]))
    (z1, e1, s1), (z2, e2, s2) = runs
    assert torch.equal(z1, z2) and torch.equal(e1, e2)
    for key in s1:
        assert_same_value(s1[key], s2[key], key)


def test_cubic_minimizer_of_a_cubic_is_its_minimum():
    """The cubic through f(x) = (x − 1)³ − 3(x − 1), whose local minimum is at x = 2."""
    f = lambda x: (x - 1) ** 3 - 3 * (x - 1)  # noqa: E731
    df = lambda x: 3 * (x - 1) ** 2 - 3  # noqa: E731
    for x1, x2 in ((1.5, 3.0), (3.0, 1.5), (0.0, 2.5)):
        t = cubic_minimizer(x1, f(x1), df(x1), x2, f(x2), df(x2))
        assert abs(t - 2.0) < 1e-12


@pytest.mark.parametrize(
    "kw, exc, words, torch_too",
    [
        (dict(weight_decay=0.01), ValueError, "weight_decay is not an option of LBFGS", False),
        (dict(l1=1e-4), ValueError, "l1 is not an option of LBFGS", False),
        (dict(maximize=True), ValueError, "maximize is not an option", False),
        (dict(momentum=0.9), TypeError, "takes lr, max_iter, max_eval", False),
        (dict(lr=-1.0), ValueError, "Invalid learning rate: -1.0", True),
        (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "Tensor lr must be 1-element", True),
        (dict(max_iter=0), ValueError, "max_iter must be an integer >= 1", False),
        (dict(max_eval=2.5), TypeError, "max_eval must be an integer", False),
        (dict(history_size=0), ValueError, "history_size must be an integer >= 1", False),
        (dict(tolerance_grad=float("nan")), ValueError, "tolerance_grad must be a number", False),
        (dict(tolerance_change="0"), TypeError, "tolerance_change must be a real number", False),
        (dict(line_search_fn="armijo"), ValueError, "only 'strong_wolfe' is supported", False),
    ],
)
def test_bad_arguments_are_refused(kw, exc, words, torch_too):
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(exc, match=words):
        LBFGS([w], **kw)
    if torch_too:  # torch's words are in gradwise's message
        with pytest.raises(exc, match=words):
            torch.optim.LBFGS([w], **kw)


def test_one_param_group_only_and_no_decay_in_it():
    w, v = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    words = r"doesn't support per-parameter options \(parameter groups\)"
    with pytest.raises(ValueError, match=words):
        torch.optim.LBFGS([{"params": [w]}, {"params": [v]}])
    with pytest.raises(ValueError, match=words):
        LBFGS([{"params": [w]}, {"params": [v]}])
    opt = LBFGS([w])
    with pytest.raises(ValueError, match=words):
        opt.add_param_group({"params": [v]})
    with pytest.raises(ValueError, match="l1=0.1 in a param group"):
        LBFGS([{"params": [w], "l1": 0.1}])
    LBFGS([{"params": [w], "weight_decay": 0}])  # a zero changes nothing


def test_step_needs_a_closure():
    opt = LBFGS([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(TypeError, match="needs a closure"):
        opt.step()

"""Several optimizers stepped as one (``Combined``), and Muon with AdamW (``MuonWithAdamW``,
``gradwise train --optimizer muon``): each member does exactly what it does alone."""

from __future__ import annotations

import copy

import pytest
import torch

import gradwise.optim as go
from gradwise.train.run import muon_groups


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in ((4, 3), (3,), (5, 4))]


def _grads(params, gen):
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def test_combined_steps_each_member_as_alone_and_shares_their_groups():
    a, b = _params(), _params()
    both = go.Combined(go.SGD(a[:2], lr=0.1, momentum=0.9), go.Adam(a[2:], lr=0.01))
    alone = [go.SGD(b[:2], lr=0.1, momentum=0.9), go.Adam(b[2:], lr=0.01)]
    assert both.param_groups[0] is both.optimizers[0].param_groups[0]
    gen_a, gen_b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for step in range(6):
        if step == 3:  # a scheduler sets the combined groups' lr: the members see it
            for group in both.param_groups:
                group["lr"] *= 0.5
            for opt in alone:
                for group in opt.param_groups:
                    group["lr"] *= 0.5
        _grads(a, gen_a)
        _grads(b, gen_b)
        both.step()
        for opt in alone:
            opt.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert set(both.state) == set(a)  # every member's state, read together
    both.zero_grad()
    assert all(p.grad is None for p in a)


def test_combined_state_dict_round_trip_and_resume_exactly():
    a = _params()
    first = go.Combined(go.SGD(a[:2], lr=0.1, momentum=0.9), go.Adam(a[2:], lr=0.01))
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        _grads(a, gen)
        first.step()
    saved = copy.deepcopy(first.state_dict())
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    second = go.Combined(go.SGD(b[:2], lr=0.1, momentum=0.9), go.Adam(b[2:], lr=0.01))
    second.load_state_dict(saved)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in a]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        first.step()
        second.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="holds 1"):
        second.load_state_dict({"optimizers": [saved["optimizers"][0]]})


def test_combined_refuses_what_it_cannot_do():
    a = _params()
    both = go.Combined(go.SGD(a[:1], lr=0.1), go.SGD(a[1:], lr=0.1))
    with pytest.raises(ValueError, match="one of its optimizers"):
        both.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
    with pytest.raises(TypeError, match=r"optimizers\[1\] must be a torch.optim.Optimizer"):
        go.Combined(go.SGD(a[:1], lr=0.1), "adam")
    with pytest.raises(ValueError, match="appear in more than one"):
        go.Combined(go.SGD(a, lr=0.1), go.SGD(a[:1], lr=0.1))
    with pytest.raises(ValueError, match="at least one"):
        go.Combined()


def test_combined_evaluates_the_closure_once():
    a = _params()
    both = go.Combined(go.SGD(a[:1], lr=0.1), go.SGD(a[1:], lr=0.1))
    calls = []

    def closure():
        calls.append(1)
        loss = sum((p**2).sum() for p in a)
        both.zero_grad()
        loss.backward()
        return loss

    loss = both.step(closure)
    assert len(calls) == 1 and float(loss.detach()) > 0


def test_muon_with_adamw_is_muon_matching_adamw_rms_and_adamw():
    """The marked groups are torch's Muon with ``adjust_lr_fn="match_rms_adamw"``, the others
    torch's AdamW, with one lr and weight decay: each to float rounding (Muon: bfloat16)."""
    a, b = _params(), _params()
    opt = go.MuonWithAdamW(
        [{"params": [a[0], a[2]], "use_muon": True}, {"params": [a[1]], "weight_decay": 0.0}],
        lr=0.02,
        weight_decay=0.1,
        momentum=0.9,
        betas=(0.8, 0.99),
        eps=1e-7,
        ns_dtype=torch.bfloat16,
    )
    muon = torch.optim.Muon(
        [b[0], b[2]], lr=0.02, weight_decay=0.1, momentum=0.9, adjust_lr_fn="match_rms_adamw"
    )
    adamw = torch.optim.AdamW([b[1]], lr=0.02, weight_decay=0.0, betas=(0.8, 0.99), eps=1e-7)
    assert [type(o).__name__ for o in opt.optimizers] == ["Muon", "AdamW"]
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(5):
        _grads(a, gen_a)
        _grads(b, gen_b)
        opt.step()
        muon.step()
        adamw.step()
    torch.testing.assert_close(a[1], b[1], rtol=1e-6, atol=1e-7)
    for i in (0, 2):
        torch.testing.assert_close(a[i], b[i], rtol=1e-2, atol=1e-3)
    with pytest.raises(ValueError, match="every parameter must be 2-D"):
        go.MuonWithAdamW([{"params": [a[1]], "use_muon": True}])
    with pytest.raises(ValueError, match="ns_dtype must be"):
        go.Muon([a[0]], ns_dtype=torch.float16)


def test_muon_with_adamw_orthogonalizes_in_float32_on_the_cpu():
    """On the CPU (no bfloat16 instructions assumed) the default ``ns_dtype`` is float32: the
    same steps as gradwise's Muon with ``ns_dtype=torch.float32``, and torch's bfloat16 Muon's
    to bfloat16 rounding."""
    a, b, c = _params(), _params(), _params()
    opt = go.MuonWithAdamW([{"params": [a[0]], "use_muon": True}], lr=0.02)
    assert opt.param_groups[0]["ns_dtype"] == torch.float32
    mine = go.Muon([b[0]], lr=0.02, weight_decay=1e-2, adjust_lr_fn="match_rms_adamw")
    mine.param_groups[0]["ns_dtype"] = torch.float32
    theirs = torch.optim.Muon([c[0]], lr=0.02, weight_decay=1e-2, adjust_lr_fn="match_rms_adamw")
    gens = [torch.Generator().manual_seed(5) for _ in range(3)]
    for _ in range(4):
        for params, gen in zip((a, b, c), gens):
            _grads(params, gen)
        for o in (opt, mine, theirs):
            o.step()
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[0], c[0], rtol=1e-2, atol=2e-3)
    with pytest.raises(TypeError, match="param groups"):
        go.MuonWithAdamW(a)


def test_muon_groups_give_muon_the_hidden_matrices_only():
    """Muon takes the hidden layers' 2-D weights; the input and output layers, convolution
    kernels, biases and norms stay with AdamW."""
    from gradwise.regularization import param_groups

    model = torch.nn.Sequential(
        torch.nn.Conv1d(1, 4, 3),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 6),
        torch.nn.LayerNorm(6),
        torch.nn.Linear(6, 6),
        torch.nn.Linear(6, 5),
        torch.nn.Linear(5, 3),
    )
    groups = muon_groups(param_groups(model, weight_decay=0.1))
    marked = [g for g in groups if g.get("use_muon")]
    assert len(marked) == 1
    assert marked[0]["params"] == [model[4].weight, model[5].weight]
    assert marked[0]["weight_decay"] == 0.1
    rest = [p for g in groups if not g.get("use_muon") for p in g["params"]]
    assert {id(p) for p in rest} == {id(p) for p in model.parameters()} - {
        id(model[4].weight),
        id(model[5].weight),
    }
    opt = go.MuonWithAdamW(groups, lr=1e-3)
    x = torch.randn(2, 1, 4)
    model(x).sum().backward()
    opt.step()


def test_muon_on_a_model_without_hidden_matrices_is_refused():
    """A model whose only 2-D weights are its input and output layers (the 1-D CNN: convolutions
    and one output layer) would train with AdamW alone: refused, naming what to use."""
    from gradwise.errors import ConfigError
    from gradwise.train.config import TrainConfig
    from gradwise.train.run import build_optimizer

    config = TrainConfig(dataset="mnist1d", model="cnn1d", optimizer="muon").resolved()
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    with pytest.raises(ConfigError, match="model 'cnn1d' has none.*--optimizer adamw"):
        build_optimizer(config, model)


def test_gradwise_train_muon_resumes_exactly(tmp_path):
    """``gradwise train --optimizer muon`` checkpoints both members: 2 epochs, then resumed to
    4, equals 4 epochs at once, weight for weight."""
    from click.testing import CliRunner

    from gradwise.cli import main
    from gradwise.train import checkpoint as ckpt

    def train(*args):
        done = CliRunner().invoke(main, ["train", "--no-progress", *args])
        assert done.exit_code == 0, done.output

    train("--optimizer", "muon", "--epochs", "2", "--out", str(tmp_path / "short"))
    train("--optimizer", "muon", "--epochs", "4", "--out", str(tmp_path / "long"))
    train("--resume", str(tmp_path / "short"), "--epochs", "4")  # the saved configuration
    short = ckpt.load_latest(tmp_path / "short")[0]["model"]
    long = ckpt.load_latest(tmp_path / "long")[0]["model"]
    for name, tensor in long.items():
        assert torch.equal(short[name], tensor), name

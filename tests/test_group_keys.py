"""A state dict loads back into the same param groups, for every gradwise optimizer: torch's
``Optimizer.__setstate__`` adds ``differentiable=False`` to the defaults, which must not reach
the groups of a class that has no such option (Lion, LAMB, Prodigy, Adafactor, ...)."""

from __future__ import annotations

import pytest
import torch

import gradwise.optim as go

#: every single-rule class (Combined and MuonWithAdamW: tests/test_combined.py)
CLASSES = [
    n
    for n in go.__all__
    if n not in ("Optimizer", "SparseAdam", "LBFGS", "Combined", "MuonWithAdamW")
]


@pytest.mark.parametrize("name", CLASSES)
def test_loaded_groups_equal_the_saved_ones(name):
    cls = getattr(go, name)
    p = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    opt = cls([p])
    if callable(getattr(opt, "train", None)):
        opt.train()
    p.grad = torch.randn(3, 2, dtype=torch.float64)
    opt.step()
    saved = opt.state_dict()
    other = cls([torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64))])
    other.load_state_dict(saved)
    assert other.state_dict()["param_groups"] == saved["param_groups"]
    assert set(other.param_groups[0]) == set(opt.param_groups[0])

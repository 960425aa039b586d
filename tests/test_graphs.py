"""The compiled step replayed as a CUDA graph (``gradwise.optim.graphs``), checked on the CPU.

A CUDA graph replays the launches it recorded, on the addresses it recorded. The CPU emulation
used here does the same: "recording" keeps the call with its own tensors, and a "replay" runs
it again on exactly those tensors. A replay where the step's tensors are not the recorded ones
therefore updates from stale gradients, and the lockstep with torch fails.
"""

from __future__ import annotations

import pytest
import torch

import gradwise.optim as go
from gradwise.optim import engine, graphs
from test_optim import _fresh_kernels, make_params, twins


def emulated(run):
    return run  # replay() runs the recorded call, on the recorded tensors


class Calls:
    def __init__(self):
        self.runs, self.recorded = [], 0

    def run(self, tensors):
        self.runs.append(tuple(t.data_ptr() for t in tensors))

    def record(self, run):
        self.recorded += 1
        return run


def test_replayer_records_a_set_of_addresses_the_second_time_it_sees_it():
    calls = Calls()
    replayer = graphs.Replayer(calls.run, calls.record)
    a, b = [torch.zeros(4), torch.zeros(3)], [torch.zeros(4), torch.zeros(3)]
    replayer(a)  # new: run, not recorded
    assert (calls.recorded, replayer.replays, len(calls.runs)) == (0, 0, 1)
    replayer(b)
    replayer(a)  # seen before: recorded, then replayed (which runs it)
    assert (calls.recorded, replayer.replays, len(calls.runs)) == (1, 1, 3)
    replayer(a)
    replayer(b)  # seen before too: its own graph
    replayer(b)
    assert (calls.recorded, replayer.replays, len(calls.runs)) == (2, 4, 6)
    assert calls.runs[-1] == tuple(t.data_ptr() for t in b)


def test_replayer_keeps_at_most_max_graphs(monkeypatch):
    monkeypatch.setattr(graphs, "MAX_GRAPHS", 2)
    calls = Calls()
    replayer = graphs.Replayer(calls.run, calls.record)
    sets = [[torch.zeros(2)] for _ in range(4)]
    for _ in range(3):
        for s in sets:
            replayer(s)
    assert calls.recorded == 2 and len(replayer.graphs) == 2
    assert len(calls.runs) == 12  # every call ran once, replayed or not


def test_a_recording_that_fails_runs_the_step_once_and_stops_recording():
    calls = Calls()

    def broken(run):
        raise RuntimeError("operation not permitted when stream is capturing")

    replayer = graphs.Replayer(calls.run, broken)
    t = [torch.zeros(2)]
    replayer(t)
    with pytest.warns(RuntimeWarning, match="could not be recorded as a CUDA graph"):
        replayer(t)
    replayer(t)
    assert len(calls.runs) == 3 and not replayer.recording and replayer.replays == 0


@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
        ("AdamW", dict(lr=0.01, weight_decay=0.1)),
        ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
        ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
    ],
)
def test_replayed_steps_equal_torch(monkeypatch, tmp_path, cls, kw):
    """The CUDA path (compiled in the process, steps replayed) emulated on the CPU, against
    torch for 24 steps with a learning rate that changes every step: gradients written into
    the same tensors (the addresses repeat: replays), then new tensors at new addresses (no
    replay may run: it would read the old gradients), then the same tensors again."""
    kernels = _fresh_kernels(monkeypatch, tmp_path)
    monkeypatch.setattr(kernels, "DEVICES", ())
    monkeypatch.setattr(kernels, "JIT_DEVICES", ("cpu",))
    monkeypatch.setattr(engine, "DIRECT_NUMEL", 500)
    monkeypatch.setattr(graphs, "RECORDERS", {"cpu": emulated})
    shapes = [(40, 30), (7,), (33, 20), (5, 3)]
    a, b = twins(make_params(torch.float32, shapes=shapes))
    oa = getattr(go, cls)(a, fused=True, **kw)
    ob = getattr(torch.optim, cls)(b, foreach=False, **kw)
    sa = torch.optim.lr_scheduler.ExponentialLR(oa, gamma=0.9)
    sb = torch.optim.lr_scheduler.ExponentialLR(ob, gamma=0.9)
    gen = torch.Generator().manual_seed(5)
    kept = []  # old gradients stay alive, so that new ones get new addresses
    for i in range(24):
        for x, y in zip(a, b):
            g = torch.randn(x.shape, generator=gen)
            if 10 <= i < 16 or x.grad is None:
                kept.append(x.grad)
                x.grad = g.clone()
            else:
                x.grad.copy_(g)
            y.grad = g.clone()
        oa.step()
        ob.step()
        sa.step()
        sb.step()
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-6)
    (seg,) = oa._group_segments(oa.param_groups[0])
    (plan,) = seg.kernel_plans.values()
    assert plan[2].replayer.replays >= 15  # 24 steps, less 6 at new addresses, less 3 first

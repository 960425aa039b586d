"""The compiled step replayed as a CUDA graph (``gradwise.optim.graphs``), checked on the CPU.

A CUDA graph replays the launches it recorded, on the addresses it recorded. The CPU emulation
used here does the same: "recording" keeps the call with its own tensors, and a "replay" runs
it again on exactly those tensors. A replay where the step's tensors are not the recorded ones
therefore updates from stale gradients, and the lockstep with torch fails.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import gradwise.optim as go
from gradwise.optim import engine, graphs, plans
from test_optim import _fresh_kernels, make_params, twins


def emulated(run):
    return run  # replay() runs the recorded call, on the recorded tensors


@pytest.fixture
def cuda_path_on_cpu(monkeypatch, tmp_path):
    """CUDA's path on the CPU: kernels compiled in the process (no ahead-of-time ones), graphs
    emulated, tensors of 500+ elements updated where their gradients lie, and the default
    path compiling at once (as a run does once it has trained ``plans.COMPILE_AFTER_S``)."""
    kernels = _fresh_kernels(monkeypatch, tmp_path)
    monkeypatch.setattr(kernels, "DEVICES", ())
    monkeypatch.setattr(kernels, "JIT_DEVICES", ("cpu",))
    monkeypatch.setattr(engine, "DIRECT_NUMEL", 500)
    monkeypatch.setattr(graphs, "RECORDERS", {"cpu": emulated})
    monkeypatch.setattr(plans, "COMPILE_AFTER_S", 0.0)  # a long run's steady state


class Calls:
    def __init__(self):
        self.runs, self.recorded = [], 0

    def run(self, key):
        return lambda: self.runs.append(key)

    def record(self, run):
        self.recorded += 1
        return run


def step(replayer, calls, key):
    """What the optimizer does: a replay where the replayer knows the key, else a plain run."""
    if replayer.knows(key):
        replayer(key, lambda: calls.run(key))
    else:
        calls.run(key)()


def test_replayer_records_a_set_of_addresses_the_second_time_it_sees_it():
    calls = Calls()
    replayer = graphs.Replayer(calls.record)
    step(replayer, calls, (1, 2))  # new: run, not recorded
    assert (calls.recorded, replayer.replays, len(calls.runs)) == (0, 0, 1)
    step(replayer, calls, (3, 4))
    step(replayer, calls, (1, 2))  # seen before: recorded, then replayed (which runs it)
    assert (calls.recorded, replayer.replays, len(calls.runs)) == (1, 1, 3)
    step(replayer, calls, (1, 2))
    step(replayer, calls, (3, 4))  # seen before too: its own graph
    step(replayer, calls, (3, 4))
    assert (calls.recorded, replayer.replays, len(calls.runs)) == (2, 4, 6)
    assert calls.runs[-1] == (3, 4)


def test_replayer_keeps_at_most_max_graphs(monkeypatch):
    monkeypatch.setattr(graphs, "MAX_GRAPHS", 2)
    calls = Calls()
    replayer = graphs.Replayer(calls.record)
    for _ in range(3):
        for key in range(4):
            step(replayer, calls, (key,))
    assert calls.recorded == 2 and len(replayer.graphs) == 2
    assert len(calls.runs) == 12  # every call ran once, replayed or not


def test_a_recording_that_fails_runs_the_step_once_and_stops_recording():
    calls = Calls()

    def broken(run):
        raise RuntimeError("operation not permitted when stream is capturing")

    replayer = graphs.Replayer(broken)
    step(replayer, calls, (7,))
    with pytest.warns(RuntimeWarning, match="could not be recorded as a CUDA graph"):
        step(replayer, calls, (7,))
    step(replayer, calls, (7,))
    assert len(calls.runs) == 3 and not replayer.recording and replayer.replays == 0


@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
        ("AdamW", dict(lr=0.01, weight_decay=0.1)),
        ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
        ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
        ("Adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.01)),
        ("Adamax", dict(lr=0.01, weight_decay=0.01)),
        ("NAdam", dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True)),
        ("RAdam", dict(lr=0.01)),
        ("Adadelta", dict(lr=1.0, rho=0.9, weight_decay=0.01)),
        ("ASGD", dict(lr=0.01, t0=5, weight_decay=0.01)),
        ("Rprop", dict(lr=0.01)),
    ],
)
def test_replayed_steps_equal_torch(cuda_path_on_cpu, monkeypatch, cls, kw):
    """The CUDA path (compiled in the process, steps replayed) emulated on the CPU, against
    torch for 24 steps with a learning rate that changes every step: gradients written into
    the same tensors (the addresses repeat: replays), then new tensors at new addresses (no
    replay may run: it would read the old gradients), then the same tensors again. The default
    path (``fused=None``; NAdam and ASGD have no ``fused``), its size thresholds lowered to
    these tensors'."""
    monkeypatch.setattr(engine, "KERNEL_MIN_NUMEL", 2)
    monkeypatch.setattr(engine, "AUTO_BUILD_NUMEL", 2)
    shapes = [(40, 30), (7,), (33, 20), (5, 3)]
    a, b = twins(make_params(torch.float32, shapes=shapes))
    oa = getattr(go, cls)(a, **kw)
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
            # every state, ASGD's average (ax) from t0 on; looser: centered RMSprop's
            # momentum divides by √(v − ḡ²), which cancels (5.7e-6 of 8.1 at the first kernel step)
            for n, theirs in ob.state[y].items():
                torch.testing.assert_close(oa.state[x][n], theirs, rtol=2e-5, atol=1e-5)
    (seg,) = oa._group_segments(oa.param_groups[0])
    (plan,) = seg.kernel_plans.values()
    # 24 steps, less 6 at new addresses, less the firsts; ASGD's from its second kernel on (t0)
    assert plan.replayer.replays >= (8 if cls == "ASGD" else 12)


def test_the_default_path_compiles_once_a_run_has_trained_a_while(cuda_path_on_cpu, monkeypatch):
    """Where kernels are compiled in the process, ``fused=None`` runs the eager update until the
    segment has asked for a kernel for ``COMPILE_AFTER_S`` seconds (a short run never pays for
    a compile), then compiles; ``fused=True`` compiles at once. gradwise equals torch
    throughout. (A kernel already compiled in the process is used at once.)"""
    clock = [100.0]
    monkeypatch.setattr(plans.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(plans, "COMPILE_AFTER_S", 10.0)
    monkeypatch.setattr(engine, "KERNEL_MIN_NUMEL", 2)
    monkeypatch.setattr(engine, "AUTO_BUILD_NUMEL", 2)
    shapes = [(40, 30), (7,), (33, 20)]
    a, b = twins(make_params(torch.float32, shapes=shapes))
    c, _ = twins(make_params(torch.float32, shapes=shapes))
    oa, ob = go.Adam(a, lr=0.01), torch.optim.Adam(b, lr=0.01, foreach=False)
    oc = go.Adam(c, lr=0.01, fused=True, amsgrad=True)  # a kernel of its own
    gen = torch.Generator().manual_seed(4)
    compiled_at = {}
    for i in range(12):
        clock[0] += 1.0  # a second a step
        for x, y, z in zip(a, b, c):
            g = torch.randn(x.shape, generator=gen)
            x.grad, y.grad, z.grad = g.clone(), g.clone(), g.clone()
        for name, opt in (("default", oa), ("fused", oc)):
            opt.step()
            (seg,) = opt._group_segments(opt.param_groups[0])
            if seg.kernel_plans and name not in compiled_at:
                compiled_at[name] = i + 1
        ob.step()
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-6)
    # asked first at step 2 (the first step is eager), due 10 s later
    assert compiled_at == {"fused": 2, "default": 12}


@pytest.mark.parametrize(
    ("widths", "set_to_none"),
    [
        ((256, 512, 10), True),  # a large tensor: pieces with gradients of their own
        ((256, 512, 10), False),  # gradients are views of the flat buffer: one piece
        ((64,) * 21, True),  # small tensors only: one gathered piece
    ],
)
def test_a_kernel_is_compiled_once(cuda_path_on_cpu, widths, set_to_none):
    """The compiled kernel's check before its first use runs on pieces laid out as the step's
    are, so that the step finds that compiled code and Dynamo compiles nothing more (a second
    compile, from guards on how each view relates to its base, cost seconds of a first run)."""
    from torch._dynamo.utils import counters

    layers = [torch.nn.Linear(a, b) for a, b in zip(widths, widths[1:])]
    model = torch.nn.Sequential(*layers)
    opt = go.Adam(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(8, widths[0])
    before = counters["stats"]["unique_graphs"]
    for _ in range(4):
        opt.zero_grad(set_to_none=set_to_none)
        model(x).square().mean().backward()
        opt.step()
    (seg,) = opt._group_segments(opt.param_groups[0])
    assert len(seg.kernel_plans) == 1
    assert counters["stats"]["unique_graphs"] - before == 1


def _twin_mlps_with_adams():
    """Two equal small MLPs, one with gradwise's Adam (fused=True), one with torch's."""
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 3))
    ref = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 3))
    ref.load_state_dict(ours.state_dict())
    oa = go.Adam(ours.parameters(), lr=0.01, fused=True)
    return ours, ref, oa, torch.optim.Adam(ref.parameters(), lr=0.01)


@pytest.mark.parametrize("set_to_none", [True, False, "both"])
def test_replayed_training_loop_equals_torch(cuda_path_on_cpu, set_to_none):
    """A training loop as users write it (zero_grad, forward, backward, step), the CUDA path
    emulated on the CPU, against torch.optim.Adam: with the default zero_grad() (gradients
    where backward leaves them), with set_to_none=False (gradients as views of the flat
    buffer: one set of addresses, replayed from the third step on), and switching from one to
    the other and back (the gradient buffer is replaced: graphs bound to it never replay)."""
    ours, ref, oa, ob = _twin_mlps_with_adams()
    gen = torch.Generator().manual_seed(1)
    for i in range(15):
        x, y = torch.randn(8, 16, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        to_none = not 5 <= i < 10 if set_to_none == "both" else set_to_none
        for model, opt in ((ours, oa), (ref, ob)):
            opt.zero_grad(set_to_none=to_none)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-6)
    (seg,) = oa._group_segments(oa.param_groups[0])
    replays = sum(p.replayer.replays for p in seg.kernel_plans.values() if p.replayer)
    if set_to_none is False:
        assert replays >= 10  # one set of addresses: recorded at the third step


def test_a_gather_buffer_off_the_cpu_lives_for_one_step(cuda_path_on_cpu, monkeypatch):
    """Off the CPU, the buffer the small tensors' gradients are gathered into goes back to the
    allocator after each replayed step (backward may then use its memory) and is made again
    at the next. A caching allocator hands a freed block out again, here one block three
    times, then another: the steps are recorded and replayed on each block, every replay on
    the block its graph was recorded on (a graph writes to the addresses it recorded), and
    the loop equals torch's. After every replayed step there is no buffer."""
    monkeypatch.setattr(engine, "GATHER_KEPT_ON", ())
    blocks, made = {}, itertools.count()

    def gather_buffer(seg):  # the allocator: blocks 0, 0, 0, 1, 1, 1, 0, ...
        if seg.grad is None:
            block = blocks.setdefault(next(made) // 3 % 2, torch.empty(seg.small))
            seg.grad = block.view(-1).zero_()  # a new tensor on the old block
        return seg.grad

    def record(run):
        recorded_on = segment().grad.data_ptr()

        def replay():
            assert segment().grad.data_ptr() == recorded_on
            run()

        return replay

    monkeypatch.setattr(engine.Segment, "gather_buffer", gather_buffer)
    monkeypatch.setattr(graphs, "RECORDERS", {"cpu": record})
    ours, ref, oa, ob = _twin_mlps_with_adams()
    segment = lambda: oa._group_segments(oa.param_groups[0])[0]  # noqa: E731
    grads = [torch.zeros_like(p) for p in ours.parameters()]
    gen = torch.Generator().manual_seed(1)
    for _ in range(18):
        x, y = torch.randn(8, 16, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        for model, opt in ((ours, oa), (ref, ob)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
        for p, g in zip(ours.parameters(), grads):  # backward's gradients, where they were
            p.grad = g.copy_(p.grad)
        replays = sum(p.replayer.replays for p in segment().kernel_plans.values() if p.replayer)
        oa.step()
        ob.step()
        replayed = sum(p.replayer.replays for p in segment().kernel_plans.values() if p.replayer)
        if replayed > replays:
            assert segment().grad is None and not segment().small_views
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-6)
    (plan,) = segment().kernel_plans.values()
    assert plan.replayer is not None  # no replay failed (each checks its block)
    assert plan.replayer.replays >= 6 and len(plan.replayer.graphs) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cls", ["Adam", "SGD"])
def test_cuda_training_loop_replays_and_equals_torch(cls):
    """On a GPU: a training loop with the default zero_grad() records the step as a CUDA graph
    and replays it (PyTorch's allocator gives backward the same memory every iteration), and
    the parameters stay within 2e-6 of torch fused's. torch's optimizer is given gradwise's
    model's gradients: two models each trained on its own gradients drift apart by more than
    that from rounding alone (a last-bit difference in one step changes the next gradients,
    and Adam's division by sqrt(v) + eps magnifies it where v is tiny; measured on the CPU,
    1e-7 after 7 steps, 8e-6 after 9)."""
    kw = dict(lr=0.01, momentum=0.9) if cls == "SGD" else dict(lr=0.01)
    torch.manual_seed(0)
    layers = [torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10)]
    ours = torch.nn.Sequential(*layers).cuda()
    ref = torch.nn.Sequential(
        *[torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10)]
    ).cuda()
    ref.load_state_dict(ours.state_dict())
    oa = getattr(go, cls)(ours.parameters(), **kw)
    ob = getattr(torch.optim, cls)(ref.parameters(), fused=True, **kw)
    gen = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(20):
        x = torch.randn(16, 1024, generator=gen, device="cuda")
        y = torch.randint(0, 10, (16,), generator=gen, device="cuda")
        oa.zero_grad()
        ob.zero_grad()
        torch.nn.functional.cross_entropy(ours(x), y).backward()
        for a, b in zip(ours.parameters(), ref.parameters()):
            b.grad = a.grad.clone()
        oa.step()
        ob.step()
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6)
    (seg,) = oa._group_segments(oa.param_groups[0])
    assert sum(p.replayer.replays for p in seg.kernel_plans.values() if p.replayer) >= 10


def test_a_replay_that_fails_leaves_the_step_right(cuda_path_on_cpu, monkeypatch):
    """A graph whose replay raises (a driver error, say): that step is taken without it, one
    warning says so, and the segment's later steps run without graphs, all equal to torch."""

    def failing(run):
        def replay():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

        return replay

    monkeypatch.setattr(graphs, "RECORDERS", {"cpu": failing})
    a, b = twins(make_params(torch.float32, shapes=[(40, 30), (7,), (33, 20)]))
    oa, ob = go.Adam(a, lr=0.01, fused=True), torch.optim.Adam(b, lr=0.01)
    gen = torch.Generator().manual_seed(2)
    with pytest.warns(RuntimeWarning, match="replaying the optimizer step as a CUDA graph failed"):
        for _ in range(8):
            for x, y in zip(a, b):  # the same gradient tensors: the same addresses
                g = torch.randn(x.shape, generator=gen)
                if x.grad is None:
                    x.grad = g.clone()
                else:
                    x.grad.copy_(g)
                y.grad = g.clone()
            oa.step()
            ob.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=2e-6, atol=1e-6)

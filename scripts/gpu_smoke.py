"""Smoke check (CUDA): gradwise's default path trains a small model beside torch fused.

    python scripts/gpu_smoke.py     # GRADWISE_CHECK_DEVICE=cpu tries it on the CPU

A training loop as users write it (``zero_grad()``, ``backward()``, ``step()``), 20 Adam steps
in lockstep with ``torch.optim.Adam(fused=True)``, which is given the same gradients (two models
each trained on its own gradients drift apart from rounding alone: a last-bit difference changes
the next gradients, and Adam's division by sqrt(v) + eps magnifies it where v is tiny). Prints
the largest difference and how many steps were replayed as CUDA graphs; fails if the parameters
differ by 2e-6 or more. Then counts the synchronizing CUDA calls (a host wait for the GPU, which
stalls a training loop) in 5 more steps of each optimizer (``torch.cuda.set_sync_debug_mode``).
"""

import os
import warnings

import torch

import gradwise.optim as go
from gradwise.optim import plans

plans.COMPILE_AFTER_S = 0.0  # a long run's steady state: the kernel from the second step

dev = os.environ.get("GRADWISE_CHECK_DEVICE", "cuda")
print(torch.__version__, torch.cuda.get_device_name() if dev == "cuda" else "cpu", flush=True)
torch.manual_seed(0)
net, ref = (
    torch.nn.Sequential(torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))
    for _ in range(2)
)
ref.load_state_dict(net.state_dict())
net, ref = net.to(dev), ref.to(dev)
ours = go.Adam(net.parameters(), lr=1e-3)
theirs = torch.optim.Adam(ref.parameters(), lr=1e-3, fused=True)
x, y = torch.randn(64, 1024, device=dev), torch.randint(0, 10, (64,), device=dev)
for _ in range(20):
    ours.zero_grad()
    theirs.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    for a, b in zip(net.parameters(), ref.parameters()):
        b.grad = a.grad.clone()  # the same gradients: each model's own would drift apart
    ours.step()
    theirs.step()
with torch.no_grad():
    err = max(float((a - b).abs().max()) for a, b in zip(net.parameters(), ref.parameters()))
plans = [p for segs in ours._segments.values() for s in segs[1] for p in s.kernel_plans.values()]
replays = sum(p.replayer.replays for p in plans if p.replayer is not None)
print(f"smoke: 20 Adam steps, max abs difference {err:.2e}, graph replays {replays}", flush=True)
assert err < 2e-6, err


def syncs_in_steps(opt, model, count=5):
    """How many synchronizing CUDA calls ``count`` steps of ``opt`` make (backward not counted)."""
    found = 0
    for _ in range(count):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                opt.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        found += sum("synchroniz" in str(w.message) for w in caught)
    return found


if dev == "cuda":
    print(
        f"smoke: synchronizing calls in 5 steps: gradwise {syncs_in_steps(ours, net)}, "
        f"torch fused {syncs_in_steps(theirs, ref)}",
        flush=True,
    )

"""Probe (CUDA): gradwise's compiled step with and without Inductor's combo kernels (a step's
pieces in one launch), against torch fused: step() with gradients as separate tensors, and
whole iterations. A short A/B for choosing ``compiled.COMBO_KERNELS``.

    python scripts/gpu_step_probe.py
"""

import statistics
import time

import torch

import gradwise.optim as go
from gradwise.lab import train_step
from gradwise.lab.bench import make_workload
from gradwise.optim import compiled, kernels, plans

plans.COMPILE_AFTER_S = 0.0  # a long run's steady state: the kernel from the second step


def timed(fn, inner=20):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / inner * 1e3


def make(impl, name, kw, shapes):
    ps = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in shapes]
    compiled.COMBO_KERNELS = impl == "gradwise combo"
    if impl == "torch":
        o = getattr(torch.optim, name)(ps, fused=True, **kw)
    else:
        o = getattr(go, name)(ps, **kw)
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn_like(p)
        o.step()
    return o


for wl in ("one-tensor", "resnet18"):
    shapes = make_workload(wl).shapes
    for name, kw in (("Adam", dict(lr=1e-3)), ("SGD", dict(lr=1e-2, momentum=0.9))):
        opts = {i: make(i, name, kw, shapes) for i in ("torch", "gradwise", "gradwise combo")}
        times = {i: [] for i in opts}
        for _ in range(9):
            for i, o in opts.items():
                times[i].append(timed(o.step))
        med = {i: statistics.median(v) for i, v in times.items()}
        print(
            f"step {wl:10s} {name:4s} "
            + "  ".join(f"{i} {v:.4f} ms" for i, v in med.items())
            + f" | x{med['torch'] / med['gradwise']:.2f}"
            + f" combo x{med['torch'] / med['gradwise combo']:.2f}",
            flush=True,
        )
print("kernel error:", kernels._error, flush=True)
for combo in (False, True):
    compiled.COMBO_KERNELS = combo
    cfg = train_step.Config(
        device="cuda",
        models=["wide-mlp-67m", "resnet18", "transformer"],
        optimizers=["adam", "sgd"],
        implementations=["torch", "gradwise"],
        rounds=9,
        iterations=3,
    )
    res = train_step.run(cfg)
    for r in res["rows"]:
        print(
            f"iteration combo={combo} {r['model']:12s} {r['optimizer']:5s} torch "
            f"{r['ms']['torch']:.3f} gradwise {r['ms']['gradwise']:.3f} ms "
            f"x{r['ratio']['gradwise']:.3f}",
            flush=True,
        )
print("kernel error:", kernels._error, flush=True)

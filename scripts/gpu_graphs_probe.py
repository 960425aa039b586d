"""Probe (CUDA): the compiled step replayed as a CUDA graph (``gradwise.optim.graphs``).

    python scripts/gpu_graphs_probe.py            # JSON under $OUT when set

In order, printing as it goes (the most important first, for a short lease):
1. parity: the default path (graphs on) against torch fused (RMSprop: foreach), 20 steps with
   new gradient tensors every step and a learning rate that changes every step;
2. the step's CPU profile (cProfile, ResNet-18's tensors, Adam);
3. ``step()`` times: torch fused, gradwise with graphs, gradwise without;
4. the GPU kernels of a 67M-parameter MLP's iteration, torch against gradwise (Adam);
5. whole iterations (lab/train_step.py), graphs on.
"""

import cProfile
import json
import os
import pstats
import statistics
import sys
import time

import torch

import gradwise.optim as go
from gradwise.lab import train_step
from gradwise.lab.bench import make_workload
from gradwise.optim import graphs, kernels, plans

plans.COMPILE_AFTER_S = 0.0  # a long run's steady state: the kernel from the second step
OUT = os.environ.get("OUT")
DEV = os.environ.get("PROBE_DEVICE", "cuda")  # "cpu": a dry run, graphs emulated, tiny sizes
SCALE = 1.0 if DEV == "cuda" else 0.01
if DEV == "cpu":
    kernels.DEVICES, kernels.JIT_DEVICES = (), ("cpu",)
    graphs.RECORDERS = {"cpu": lambda run: run}
    torch.cuda.synchronize = lambda: None
    torch.cuda.get_device_name = lambda: "cpu"
RESULTS: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
OPTS = {
    "Adam": dict(lr=1e-3),
    "AdamW": dict(lr=1e-3, weight_decay=0.01),
    "SGD": dict(lr=1e-2, momentum=0.9),
    "RMSprop": dict(lr=1e-3),
}


def save():
    if OUT:
        with open(os.path.join(OUT, "graphs_probe.json"), "w") as f:
            json.dump(RESULTS, f, indent=1)


def make(impl, name, shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen).to(DEV)) for s in shapes]
    graphs.ENABLED = impl != "gradwise, no graphs"
    if impl == "torch":
        fastest = {"foreach": True} if name == "RMSprop" else {"fused": True}
        return ps, getattr(torch.optim, name)(ps, **OPTS[name], **fastest)
    dry = {"fused": True} if DEV == "cpu" else {}  # tiny sizes: the kernel all the same
    return ps, getattr(go, name)(ps, **OPTS[name], **dry)


def replays(opt):
    return sum(
        plan.replayer.replays
        for segs in opt._segments.values()
        for seg in segs[1]
        for plan in seg.kernel_plans.values()
        if plan.replayer is not None
    )


def parity():
    for wl, names in (("resnet18", ("Adam", "SGD")), ("one-tensor", ("AdamW", "RMSprop"))):
        shapes = make_workload(wl, SCALE).shapes
        for name in names:
            a, oa = make("gradwise", name, shapes)
            b, ob = make("torch", name, shapes)
            sa = torch.optim.lr_scheduler.ExponentialLR(oa, gamma=0.95)
            sb = torch.optim.lr_scheduler.ExponentialLR(ob, gamma=0.95)
            gen = torch.Generator(device=DEV).manual_seed(1)
            for _ in range(20):
                oa.zero_grad()  # as a training loop frees last step's gradients
                ob.zero_grad()
                for x, y in zip(a, b):
                    g = torch.randn(x.shape, generator=gen, device=DEV)
                    x.grad, y.grad = g, g.clone()  # new tensors every step, as backward's
                oa.step()
                ob.step()
                sa.step()
                sb.step()
            torch.cuda.synchronize()
            a, b = [x.detach() for x in a], [y.detach() for y in b]
            err = max(
                float((x - y).abs().max()) / max(1.0, float(y.abs().max())) for x, y in zip(a, b)
            )
            n = replays(oa)
            ok = err <= 2e-6 and n > 0
            RESULTS.setdefault("parity", []).append(
                dict(workload=wl, optimizer=name, err=err, replays=n)
            )
            print(
                f"{'ok  ' if ok else 'FAIL'} parity {wl} {name}: rel err {err:.2e}, replays {n}",
                flush=True,
            )
    print("kernel error:", kernels._error, flush=True)


def profile():
    ps, opt = make("gradwise", "Adam", make_workload("resnet18", SCALE).shapes)
    for p in ps:
        p.grad = torch.randn_like(p)
    for _ in range(5):
        opt.step()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(300):
        opt.step()
    prof.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(18)


def timed(fn, inner=20):
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / inner * 1e3


def steps():
    impls = ("torch", "gradwise", "gradwise, no graphs")
    # the no-graphs variant compiles kernels of its own: only for Adam and SGD
    for wl in ("one-tensor", "resnet18", "small-2000"):
        shapes = make_workload(wl, SCALE).shapes
        for name in ("Adam", "SGD", "AdamW", "RMSprop"):
            opts = {}
            for impl in impls if name in ("Adam", "SGD") else impls[:2]:
                ps, o = make(impl, name, shapes)
                for p in ps:
                    p.grad = torch.randn_like(p)
                for _ in range(4):
                    o.step()
                opts[impl] = o
            times = {i: [] for i in opts}
            for _ in range(9):
                for i, o in opts.items():
                    times[i].append(timed(o.step))
            med = {i: statistics.median(v) for i, v in times.items()}
            RESULTS.setdefault("steps", []).append(dict(workload=wl, optimizer=name, ms=med))
            print(
                f"step {wl:10s} {name:7s} "
                + "  ".join(f"{i} {v:.4f}" for i, v in med.items())
                + f" ms | graphs x{med['torch'] / med['gradwise']:.2f}"
                + f" no graphs x{med['torch'] / med.get('gradwise, no graphs', float('nan')):.2f}",
                flush=True,
            )
            save()


def kernels_67m():
    """Where an iteration of the 67M-parameter MLP spends its GPU time, torch fused against
    gradwise (Adam): the profiler's kernels, top 8 by device time."""
    from torch.profiler import ProfilerActivity, profile

    graphs.ENABLED = True
    model = train_step.MODELS["wide-mlp-67m" if DEV == "cuda" else "deep-narrow"]
    for impl in ("torch", "gradwise"):
        gen = torch.Generator().manual_seed(0)
        trainer = train_step.Trainer(impl, "adam", model.build(), model.batch(gen), DEV)
        trainer.run(6)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEV == "cuda" else [])
        with profile(activities=acts) as prof:
            trainer.run(5)
        key = "self_cuda_time_total" if DEV == "cuda" else "self_cpu_time_total"
        if impl == "gradwise":
            print(f"gradwise's step graphs replayed: {replays(trainer.opt)}", flush=True)
        print(f"--- {impl}: 5 iterations", flush=True)
        print(prof.key_averages().table(sort_by=key, row_limit=10), flush=True)


def iterations():
    graphs.ENABLED = True
    cfg = train_step.Config(
        device=DEV,
        implementations=["torch", "gradwise"],
        rounds=9 if DEV == "cuda" else 1,
        iterations=3,
        models=None if DEV == "cuda" else ["deep-narrow"],
    )
    res = train_step.run(cfg)
    for r in res["rows"]:
        print(
            f"iteration {r['model']:12s} {r['optimizer']:7s} torch {r['ms']['torch']:.3f} "
            f"gradwise {r['ms']['gradwise']:.3f} ms x{r['ratio']['gradwise']:.3f}",
            flush=True,
        )
    RESULTS["iterations"] = res["rows"]
    save()


for part in sys.argv[1:] or ("parity", "profile", "steps", "kernels_67m", "iterations"):
    t0 = time.perf_counter()
    globals()[part]()
    print(f"[{part}: {time.perf_counter() - t0:.1f} s]", flush=True)
    save()
print("kernel error:", kernels._error, flush=True)

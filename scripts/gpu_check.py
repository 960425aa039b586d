"""GPU check (run on a CUDA machine): gradwise's optimizers, engine paths and fit() on CUDA.

    python scripts/gpu_check.py            # prints a report; exit status 1 if a check fails

Checks: (1) every optimizer configuration of the parity grid in lockstep with torch.optim on
CUDA tensors (the eager flat path, Python and native layout checks); (2) fused=True on CUDA
(the update compiled in this process by torch.compile to Triton) against torch, 20 steps; (3)
the default path on a large group (compiled) against torch fused, 20 steps; (4) a moved
parameter and replaced gradients; (5) fit() on digits; (6) the device-to-device copy bandwidth
and optimizer.step() timings on the three benchmark workloads, gradients as separate tensors
(what backward leaves) and as views, against torch fused and foreach, interleaved; (7) whole
training iterations (lab/train_step.py on cuda); (8) peak GPU memory of an iteration, torch
fused against gradwise; (9) every class torch.optim has too, on the default path (compiled,
steps replayed as graphs), against torch. With $OUT set, the timings are also written there as JSON.

GRADWISE_CHECK_DEVICE=cpu GRADWISE_CHECK_QUICK=1 tries the script on a CPU (small sizes).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback

import torch

import gradwise.optim as go
from gradwise.lab.bench import make_workload
from gradwise.optim import plans

plans.COMPILE_AFTER_S = 0.0  # a long run's steady state: the kernel from the second step

DEV = torch.device(os.environ.get("GRADWISE_CHECK_DEVICE", "cuda"))  # "cpu" to try the script
QUICK = bool(os.environ.get("GRADWISE_CHECK_QUICK"))
if DEV.type == "cpu":  # try the CUDA code path (compiled in this process) on the CPU
    from gradwise.optim import kernels as _kernels

    _kernels.DEVICES, _kernels.JIT_DEVICES = (), ("cpu",)
RESULTS: dict = {}
CONFIGS = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.2)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), amsgrad=True, maximize=True, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
]
failures: list[str] = []


def sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


@torch.no_grad()
def rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    errors = (float((x - y).abs().max()) / max(1.0, float(y.abs().max())) for x, y in zip(a, b))
    return max(errors, default=0.0)


def lockstep(name, kw, n_params, steps=25, fused=False, dtype=torch.float32):
    gen = torch.Generator(device="cpu").manual_seed(0)
    shapes = [(7 + i % 5, 3 + i % 4) for i in range(n_params)]
    vals = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    a = [torch.nn.Parameter(v.clone().to(DEV)) for v in vals]
    b = [torch.nn.Parameter(v.clone().to(DEV)) for v in vals]
    oa = getattr(go, name)(a, fused=fused, **kw)
    ob = getattr(torch.optim, name)(b, foreach=False, **kw)
    for i in range(steps):
        if i == 3:
            oa.zero_grad(set_to_none=False)
        for p, q in zip(a, b):
            g = torch.randn(p.shape, generator=gen, dtype=dtype).to(DEV)
            if p.grad is not None and i > 3:
                p.grad.copy_(g)
            else:
                p.grad = g.clone()
            q.grad = g.clone()
        oa.step()
        ob.step()
    seg = oa._group_segments(oa.param_groups[0])[0]
    state_a = [t for p in a for k, t in sorted(oa.state[p].items()) if k != "step"]
    state_b = [t for p in b for k, t in sorted(ob.state[p].items()) if k != "step"]
    return rel_err(a, b), rel_err(state_a, state_b), seg


def section(name: str):
    """Run a section; an exception is a failure, printed, and the next section runs."""

    def wrap(fn):
        def run(*args, **kwargs):
            print(f"\n== {name}", flush=True)
            t = time.perf_counter()
            try:
                fn(*args, **kwargs)
            except Exception:
                traceback.print_exc()
                check(False, f"{name}: raised")
            print(f"   ({time.perf_counter() - t:.1f} s)", flush=True)

        return run

    return wrap


def jit_kernels() -> int:
    from gradwise.optim import kernels

    return sum(1 for memo in kernels._loaded if memo and memo[0] == "jit")


def scalar_places() -> set[str]:
    """Where the compiled kernels' scalars live: "cpu" (passed as kernel arguments) or
    "device" (the fallback, one small copy a step)."""
    from gradwise.optim import kernels

    return {getattr(k, "place", "?") for m, k in kernels._loaded.items() if m[0] == "jit"}


@section("1. parity of the eager flat path")
def parity_eager() -> None:
    from gradwise.optim import native

    print("native helpers:", native.helpers(wait=True) is not None, native.ENGINE.error)
    for name, kw in CONFIGS:
        for n in (6, 40):
            for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
                pe, se, seg = lockstep(name, kw, n, dtype=dtype)
                native_used = seg.uses_native and native.helpers() is not None
                check(
                    pe <= tol and se <= tol and seg.flat and native_used == (n >= 32),
                    f"parity {name} {kw} {n} params {dtype}: param {pe:.2g} state {se:.2g} "
                    f"flat={seg.flat} native={native_used}",
                )


@section("2. fused=True: compiled in this process, against torch, 20 steps")
def parity_fused() -> None:
    import warnings

    from gradwise.optim import kernels

    for name, kw in CONFIGS:
        before = jit_kernels()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pe, se, _ = lockstep(name, kw, 6, steps=20, fused=True)
        said = [str(w.message) for w in caught if "gradwise" in str(w.message)]
        check(
            pe <= 2e-6 and se <= 2e-6 and jit_kernels() > before and not said,
            f"fused=True {name} {kw}: param {pe:.2g} state {se:.2g}; compiled "
            f"{jit_kernels() - before}; error {kernels._error}; warned {said}; "
            f"scalars on {scalar_places()}",
        )


@section("3. the default path on a large group (compiled), against torch fused, 20 steps")
def parity_default() -> None:
    from gradwise.optim import kernels

    big = 256 if QUICK else 2048
    shapes = [(big, big), (big,), (big, big), (10,), (3, big)]
    for name, kw in (
        ("Adam", dict(lr=1e-3)),
        ("AdamW", dict(lr=1e-3, weight_decay=0.01)),
        ("SGD", dict(lr=1e-2, momentum=0.9)),
        ("RMSprop", dict(lr=1e-3)),
    ):
        gen = torch.Generator().manual_seed(1)
        vals = [torch.randn(s, generator=gen) for s in shapes]
        a = [torch.nn.Parameter(v.clone().to(DEV)) for v in vals]
        b = [torch.nn.Parameter(v.clone().to(DEV)) for v in vals]
        oa = getattr(go, name)(a, **kw)
        fastest = {"foreach": True} if name == "RMSprop" else {"fused": True}
        ob = getattr(torch.optim, name)(b, **fastest, **kw)
        before = jit_kernels()
        for _ in range(20):
            for p, q in zip(a, b):
                g = torch.randn(p.shape, generator=gen).to(DEV)
                p.grad, q.grad = g.clone(), g.clone()  # separate tensors, as backward leaves
            oa.step()
            ob.step()
        err = rel_err(a, b)
        tol = 2e-6 if name != "RMSprop" else 1e-5
        if QUICK:
            tol = 1e-5  # on the CPU the sizes stay under the automatic compile's threshold
        check(
            err <= tol and (jit_kernels() > before or QUICK),
            f"default {name}: param {err:.2g} (target {tol:g}); compiled "
            f"{jit_kernels() - before}; error {kernels._error}",
        )


@section("4. a moved parameter and replaced gradients")
def layout_changes() -> None:
    net = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(20)]).to(DEV)
    ref = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(20)]).to(DEV)
    ref.load_state_dict(net.state_dict())
    oa, ob = go.Adam(net.parameters(), lr=1e-2), torch.optim.Adam(ref.parameters(), lr=1e-2)
    x = torch.randn(16, 8, device=DEV)
    for i in range(10):
        for m, o in ((net, oa), (ref, ob)):
            o.zero_grad(set_to_none=i % 3 == 1)
            m(x).square().mean().backward()
            ps = list(m.parameters())
            if i % 3 == 2:
                ps[4].grad = ps[4].grad * 2
            if i == 5:
                ps[33].data = ps[33].data.clone()
            o.step()
    err = rel_err(list(net.parameters()), list(ref.parameters()))
    check(err <= 1e-5, f"layout changes (40 params): param {err:.2g}")


@section("5. fit() on digits")
def fit_digits() -> None:
    from gradwise.train import fit, load_dataset
    from gradwise.train.models import mlp

    data = load_dataset("digits")
    model = mlp(data.n_features, data.n_classes, hidden=(128, 128))
    t = time.perf_counter()
    h = fit(
        model,
        (data.x_train, data.y_train),
        val=(data.x_test, data.y_test),
        optimizer=go.Adam(model.parameters(), lr=1e-3),
        epochs=5 if QUICK else 20,
        batch_size=32,
        device=str(DEV),
        progress=False,
    )
    acc = h.epochs[-1]["val_accuracy"]
    check(
        acc > 0.9 and next(model.parameters()).device.type == DEV.type,
        f"fit on {DEV.type}: digits val accuracy {acc:.4f} in {time.perf_counter() - t:.1f} s",
    )


def timed(fn, rounds: int, inner: int) -> float:
    sync()
    t = time.perf_counter()
    for _ in range(inner):
        fn()
    sync()
    return (time.perf_counter() - t) / inner * 1e3


@section("6. step() timings and the copy bandwidth")
def step_timings() -> None:
    n = (1 << 20) if QUICK else (1 << 24)
    src = torch.randn(n, device=DEV)
    dst = torch.empty_like(src)
    copies = [timed(lambda: dst.copy_(src), 1, 20) for _ in range(9)]
    copy_ms = statistics.median(copies)
    copy_gbs = 2 * n * 4 / copy_ms / 1e6
    print(f"device-to-device copy of {n} floats: {copy_ms:.4f} ms, {copy_gbs:.0f} GB/s r+w")
    RESULTS["copy_gbs"] = copy_gbs
    optimizers = {
        "SGD": (dict(lr=0.01, momentum=0.9), 5),  # bytes moved per element / 4: p,g,m r; p,m w
        "Adam": (dict(lr=1e-3), 7),
        "AdamW": (dict(lr=1e-3, weight_decay=0.01), 7),
        "RMSprop": (dict(lr=1e-3), 5),
    }
    workloads = ["one-tensor", "resnet18", "small-2000"]
    if QUICK:
        workloads = ["small-2000"]
    rows = []
    for wl in workloads:
        w = make_workload(wl)
        for name, (kw, words) in optimizers.items():
            impls = ["torch fused", "torch foreach", "gradwise", "gradwise views"]
            if name == "RMSprop":
                impls.remove("torch fused")
            runners = {}
            for impl in impls:
                ps = [torch.nn.Parameter(torch.randn(s, device=DEV)) for s in w.shapes]
                if impl.startswith("gradwise"):
                    o = getattr(go, name)(ps, **kw)
                else:
                    flag = "fused" if impl == "torch fused" else "foreach"
                    o = getattr(torch.optim, name)(ps, **{flag: True}, **kw)
                for p in ps:
                    p.grad = torch.randn_like(p)
                o.step()
                if impl == "gradwise views":
                    o.zero_grad(set_to_none=False)
                    for p in ps:
                        p.grad.normal_()
                else:
                    for p in ps:  # gradients as separate tensors, as backward leaves them
                        p.grad = torch.randn_like(p)
                o.step()
                o.step()
                runners[impl] = o
            times = {k: [] for k in runners}
            for r in range(11):
                order = list(runners.items())
                for k, o in order if r % 2 == 0 else order[::-1]:
                    times[k].append(timed(o.step, 1, 20))
            med = {k: statistics.median(v) for k, v in times.items()}
            best = min(v for k, v in med.items() if k.startswith("torch"))
            numel = sum(p.numel() for p in runners["gradwise"].param_groups[0]["params"])
            row = {
                "workload": wl,
                "optimizer": name,
                "ms": med,
                "ratio": {k: best / v for k, v in med.items() if k.startswith("gradwise")},
                "ratio_foreach": med["torch foreach"] / med["gradwise"],
                "bandwidth_fraction": words * 4 * numel / med["gradwise"] / 1e6 / copy_gbs,
            }
            rows.append(row)
            print(
                f"step {wl:11s} {name:7s} "
                + "  ".join(f"{k} {v:.4f}" for k, v in med.items())
                + f" ms | gradwise x{row['ratio']['gradwise']:.2f} views "
                f"x{row['ratio']['gradwise views']:.2f} vs torch best; "
                f"x{row['ratio_foreach']:.2f} vs foreach; "
                f"{100 * row['bandwidth_fraction']:.0f}% of copy bandwidth",
                flush=True,
            )
    RESULTS["step"] = rows


@section("7. whole training iterations")
def whole_iterations() -> None:
    from rich.console import Console

    from gradwise.lab import train_step

    cfg = train_step.Config(
        device=str(DEV),
        rounds=3 if QUICK else int(os.environ.get("GRADWISE_CHECK_ROUNDS", "15")),
        iterations=1 if QUICK else 3,
        models=["deep-narrow"] if QUICK else None,
    )
    results = train_step.run(cfg, log=lambda m: print("  " + m, flush=True))
    Console(width=160).print(train_step.render(results))
    RESULTS["train_step"] = results


@section("8. peak GPU memory of an iteration")
def peak_memory() -> None:
    if DEV.type != "cuda":
        print("skipped: needs CUDA's allocator statistics")
        return
    import gc

    from gradwise.lab import train_step

    rows = []
    for model_name in ("wide-mlp-67m", "resnet18", "transformer"):
        spec = train_step.MODELS[model_name]
        for optimizer in ("adam", "sgd"):
            peaks = {}
            for impl in ("torch", "gradwise"):
                torch.manual_seed(0)
                batch = spec.batch(torch.Generator().manual_seed(0))
                trainer = train_step.Trainer(impl, optimizer, spec.build(), batch, str(DEV))
                trainer.run(3)
                torch.cuda.reset_peak_memory_stats()
                trainer.run(2)
                peaks[impl] = torch.cuda.max_memory_allocated() / 2**20
                del trainer
                gc.collect()
                torch.cuda.empty_cache()
            ratio = peaks["gradwise"] / peaks["torch"]
            rows.append({"model": model_name, "optimizer": optimizer, "MiB": peaks})
            print(
                f"memory {model_name:12s} {optimizer:5s} torch {peaks['torch']:.0f} MiB, "
                f"gradwise {peaks['gradwise']:.0f} MiB: {ratio:.3f}",
                flush=True,
            )
    RESULTS["memory"] = rows


#: every class that torch.optim has too, on the default path (compiled, steps replayed as graphs)
TWINS = [
    ("Adam", dict(lr=1e-3, amsgrad=True, weight_decay=0.01)),
    ("Adam", dict(lr=1e-3, maximize=True)),
    ("SGD", dict(lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True)),
    ("RMSprop", dict(lr=1e-3, alpha=0.9, momentum=0.5, centered=True)),
    ("Adagrad", dict(lr=1e-2, lr_decay=0.01, weight_decay=0.01)),
    ("Adamax", dict(lr=2e-3, weight_decay=0.01)),
    ("NAdam", dict(lr=2e-3, momentum_decay=4e-3)),
    ("NAdam", dict(lr=2e-3, weight_decay=0.01, decoupled_weight_decay=True)),
    ("RAdam", dict(lr=1e-3)),
    ("RAdam", dict(lr=1e-3, weight_decay=0.01, decoupled_weight_decay=True)),
    ("Adadelta", dict(lr=1.0, rho=0.9, weight_decay=0.01)),
    ("ASGD", dict(lr=1e-2, t0=5, weight_decay=0.01)),
    ("Rprop", dict(lr=1e-2)),
]


@section("9. every torch.optim twin on the default path (compiled, graphs), 20 steps")
def parity_twins() -> None:
    from gradwise.optim import kernels

    big = 256 if QUICK else 1024
    shapes = [(big, big), (big,), (big // 2, big), (10,), (3, 2 * big), (1,)]
    for name, kw in TWINS:
        gen = torch.Generator().manual_seed(3)
        vals = [torch.randn(s, generator=gen) for s in shapes]
        a = [torch.nn.Parameter(v.clone().to(DEV)) for v in vals]
        b = [torch.nn.Parameter(v.clone().to(DEV)) for v in vals]
        oa = getattr(go, name)(a, **kw)
        ob = getattr(torch.optim, name)(b, **kw)
        sa = torch.optim.lr_scheduler.ExponentialLR(oa, gamma=0.95)
        sb = torch.optim.lr_scheduler.ExponentialLR(ob, gamma=0.95)
        before = jit_kernels()
        for _ in range(20):
            oa.zero_grad()  # as a training loop: new gradient tensors every step
            ob.zero_grad()
            for p, q in zip(a, b):
                g = torch.randn(p.shape, generator=gen).to(DEV)
                p.grad, q.grad = g, g.clone()
            oa.step()
            ob.step()
            sa.step()
            sb.step()
        err = rel_err(a, b)
        seg = oa._group_segments(oa.param_groups[0])[0]
        plans = seg.kernel_plans.values()
        replays = sum(p.replayer.replays for p in plans if p.replayer is not None)
        RESULTS.setdefault("twins", []).append(
            dict(optimizer=name, options=kw, err=err, replays=replays)
        )
        check(
            err <= 1e-5 and (jit_kernels() > before or QUICK),
            f"{name} {kw}: param {err:.2g}; compiled {jit_kernels() - before}; replays "
            f"{replays}; error {kernels._error}",
        )


def main() -> int:
    name = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu"
    print(torch.__version__, name, flush=True)
    RESULTS["device"], RESULTS["torch"] = name, torch.__version__
    only = os.environ.get("GRADWISE_CHECK_ONLY")
    sections = [
        parity_eager,
        parity_fused,
        parity_default,
        layout_changes,
        fit_digits,
        step_timings,
        whole_iterations,
        peak_memory,
        parity_twins,
    ]
    for i, run in enumerate(sections, 1):
        if not only or str(i) in only.split(","):
            run()
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_check.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)
    print(f"{len(failures)} failure(s)")
    for f in failures:
        print("  " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

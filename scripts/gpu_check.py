"""GPU check (run on a CUDA machine): gradwise's optimizers, engine paths and fit() on CUDA.

    python scripts/gpu_check.py            # prints a report; exit status 1 if a check fails

Checks: (1) every optimizer configuration of the parity grid in lockstep with torch.optim on
CUDA tensors (flat path, Python and native layout checks); (2) fused=True on CUDA (an
AOTInductor kernel built with Triton) against torch; (3) a moved parameter and replaced
gradients on CUDA; (4) fit() on digits on CUDA; (5) optimizer.step() timings on the three
benchmark workloads, gradwise against torch's fused path, interleaved.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import gradwise.optim as go
from gradwise.bench import make_workload

DEV = torch.device(os.environ.get("GRADWISE_CHECK_DEVICE", "cuda"))  # "cpu" to try the script
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


def main() -> int:
    name = torch.cuda.get_device_name() if DEV.type == "cuda" else "cpu"
    print(torch.__version__, name, flush=True)
    from gradwise.optim import native

    print("native helpers:", native.helpers(wait=True) is not None, native.ENGINE.error, flush=True)
    # (1) parity on CUDA, Python check (6 params) and native check (40 params)
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
    # (2) fused=True on CUDA: the eager path, with one warning (kernels are CPU-only)
    import warnings

    from gradwise.optim import kernels

    for name, kw in (CONFIGS[1], CONFIGS[4], CONFIGS[5]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pe, se, seg = lockstep(name, kw, 6, fused=True)
        said = [str(w.message) for w in caught if "fused kernels are built for" in str(w.message)]
        expect_warning = DEV.type not in kernels.DEVICES and name == CONFIGS[1][0]
        check(
            pe <= 1e-5 and se <= 1e-5 and (bool(said) == expect_warning or DEV.type == "cpu"),
            f"fused=True {name} on {DEV.type}: param {pe:.2g} state {se:.2g}; warned: {said}",
        )
    # (3) moved parameter / replaced grads with the native check on CUDA
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
    check(err <= 1e-5, f"layout changes on CUDA (40 params): param {err:.2g}")
    # (4) fit on CUDA
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
        epochs=20,
        batch_size=32,
        device=str(DEV),
        progress=False,
    )
    acc = h.epochs[-1]["val_accuracy"]
    check(
        acc > 0.95 and next(model.parameters()).device.type == DEV.type,
        f"fit on {DEV.type}: digits val accuracy {acc:.4f} in {time.perf_counter() - t:.1f} s",
    )
    # (5) step timings
    for wl in os.environ.get("GRADWISE_CHECK_WORKLOADS", "one-tensor,resnet18,small-2000").split(
        ","
    ):
        w = make_workload(wl)
        for name, kw in (("SGD", dict(lr=0.01, momentum=0.9)), ("Adam", dict(lr=1e-3))):
            runners = {}
            for impl in ("torch fused", "torch foreach", "gradwise"):
                ps = [torch.nn.Parameter(torch.randn(s, device=DEV)) for s in w.shapes]
                if impl == "gradwise":
                    o = getattr(go, name)(ps, **kw)
                else:
                    flag = "fused" if impl == "torch fused" else "foreach"
                    o = getattr(torch.optim, name)(ps, **{flag: True}, **kw)
                for p in ps:
                    p.grad = torch.randn_like(p)
                o.step()
                if impl == "gradwise":
                    o.zero_grad(set_to_none=False)
                    for p in ps:
                        p.grad.normal_()
                runners[impl] = o
            times = {k: [] for k in runners}
            for _ in range(7):
                for k, o in runners.items():
                    sync()
                    t = time.perf_counter()
                    for _ in range(20):
                        o.step()
                    sync()
                    times[k].append((time.perf_counter() - t) / 20 * 1e3)
            med = {k: statistics.median(v) for k, v in times.items()}
            best = min(med["torch fused"], med["torch foreach"])
            print(
                f"time {wl:11s} {name:5s} "
                + "  ".join(f"{k} {v:.3f} ms" for k, v in med.items())
                + f"  gradwise x{best / med['gradwise']:.2f} vs torch best",
                flush=True,
            )
    print(f"{len(failures)} failure(s)")
    for f in failures:
        print("  " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

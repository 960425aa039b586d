"""The optimizer-step benchmark: gradwise against PyTorch's for-loop, foreach and fused paths.

Importable and free of any command-line framework: :func:`run` measures and returns a plain,
JSON-ready dict; :func:`render` turns that dict into a rich table; :func:`main` is the argparse
entry point used by ``benchmarks/optim_step.py`` (and by ``gradwise bench``).

How it measures (the method: docs/benchmarking.md):

* one process; for each row group (a workload and an optimizer) every implementation gets its own
  copy of the same random parameters and gradients (fixed seed, set once), is warmed up, and then
  the implementations are timed in interleaved rounds (A, B, C, A, B, C, ...); the result is the
  median of the rounds, with the interquartile range and min–max as its spread;
* ``torch.set_num_threads`` is set explicitly, and the load average is recorded at the start and
  the end (with a warning when the machine was busy);
* the machine's in-place memory bandwidth (``a += s*b`` on 256 MiB float32 arrays, 12 bytes per
  element) is measured at the start and the end, and once in every interleaved round of every row
  group; each step's achieved bandwidth is reported against the median of its own group's probes
  (the machine's bandwidth drifts), counting the bytes the update must move at least (e.g. Adam:
  read θ, g, m, v and write θ, m, v = 28 bytes per float32 parameter).

gradwise's optimizers are imported lazily: the harness runs against PyTorch alone when
``gradwise.optim`` is missing or broken, and says so in its notes.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

try:
    import resource
except ImportError:  # pragma: no cover - not Unix
    resource = None

# ------------------------------------------------------------------------------------ workloads


@dataclass(frozen=True)
class Workload:
    """A list of parameter shapes (float32), as an optimizer sees a model."""

    name: str
    label: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def tensors(self) -> int:
        return len(self.shapes)


def resnet18_shapes(width: float = 1.0, classes: int = 1000) -> list[tuple[int, ...]]:
    """The 62 parameter shapes of torchvision's ResNet-18 (``width`` scales the channels).

    conv1 + bn1, four stages of two BasicBlocks (conv3x3-bn-conv3x3-bn, plus a 1x1 conv + bn
    downsample in the first block of stages 2-4), and the fc layer; convolutions have no bias.
    """

    def ch(c: int) -> int:
        return max(1, round(c * width))

    def bn(c: int) -> list[tuple[int, ...]]:
        return [(c,), (c,)]  # weight, bias

    shapes: list[tuple[int, ...]] = [(ch(64), 3, 7, 7), *bn(ch(64))]
    cin = ch(64)
    for stage, planes in enumerate((64, 128, 256, 512)):
        cout = ch(planes)
        for block in range(2):
            shapes += [(cout, cin, 3, 3), *bn(cout), (cout, cout, 3, 3), *bn(cout)]
            if block == 0 and stage > 0:
                shapes += [(cout, cin, 1, 1), *bn(cout)]
            cin = cout
    shapes += [(classes, cin), (classes,)]
    return shapes


def _scaled(label: str, scale: float) -> str:
    return label if scale == 1 else f"{label} [scaled ×{scale:g}]"


def make_workload(name: str, scale: float = 1.0) -> Workload:
    """One of :data:`WORKLOADS`; ``scale`` < 1 shrinks it (and says so in its label)."""
    if scale <= 0:
        raise ValueError(f"make_workload: scale must be > 0; received scale={scale}")
    if name == "one-tensor":
        n = max(1, round(16 * 2**20 * scale))
        shapes = [(n,)]
        label = "one tensor, 16M" if scale == 1 else f"one tensor, {n:,}"
    elif name == "resnet18":
        width = math.sqrt(scale)
        shapes = resnet18_shapes(width, classes=max(1, round(1000 * width)))
        label = "ResNet-18, 62 tensors"
    elif name == "small-2000":
        per = max(1, round(512 * scale))
        shapes = [(per,)] * 2000
        label = "2000 tensors × 512" if scale == 1 else f"2000 tensors × {per}"
    else:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    return Workload(name, _scaled(label, scale), tuple(shapes))


#: workload names, in display order
WORKLOADS = ("one-tensor", "resnet18", "small-2000")

# ----------------------------------------------------------------------------------- optimizers


@dataclass(frozen=True)
class OptimizerSpec:
    name: str  # key used on the command line
    label: str
    cls_name: str  # the class name in torch.optim and gradwise.optim
    kwargs: dict[str, Any]
    bytes_per_param: int  # float32 bytes the update must read + write, at least


OPTIMIZERS: dict[str, OptimizerSpec] = {
    s.name: s
    for s in (
        # read θ, g, buf; write θ, buf
        OptimizerSpec("sgd", "SGD-momentum", "SGD", {"lr": 1e-3, "momentum": 0.9}, 20),
        # read θ, g, v; write θ, v
        OptimizerSpec("rmsprop", "RMSprop", "RMSprop", {"lr": 1e-3}, 20),
        # read θ, g, m, v; write θ, m, v
        OptimizerSpec("adam", "Adam", "Adam", {"lr": 1e-3}, 28),
        OptimizerSpec("adamw", "AdamW", "AdamW", {"lr": 1e-3, "weight_decay": 1e-2}, 28),
        # read θ, g, sum; write θ, sum
        OptimizerSpec("adagrad", "Adagrad", "Adagrad", {"lr": 1e-2}, 20),
    )
}
DEFAULT_OPTIMIZERS = ("sgd", "rmsprop", "adam", "adamw")

#: implementation names, in display order
IMPLEMENTATIONS = (
    "torch for-loop",
    "torch foreach",
    "torch fused",
    "gradwise",
    "gradwise (gather)",
    "gradwise eager",
)
TORCH_IMPLEMENTATIONS = IMPLEMENTATIONS[:3]
_TORCH_FLAGS = {
    "torch for-loop": {"foreach": False},
    "torch foreach": {"foreach": True},
    "torch fused": {"fused": True},
}

# -------------------------------------------------------------------------------------- config


@dataclass
class Config:
    """What to measure and how long; :func:`quick_config` gives the ``--quick`` preset."""

    workloads: Sequence[str | Workload] = WORKLOADS
    optimizers: Sequence[str] = DEFAULT_OPTIMIZERS
    implementations: Sequence[str] = IMPLEMENTATIONS
    threads: int | None = None  # None: every core this process may use
    scale: float = 1.0  # workload scale (1 = the real sizes)
    warmup: int = 3  # untimed steps per implementation before the rounds
    rounds: int = 11  # interleaved timed rounds
    min_round_s: float = 0.1  # each implementation's round lasts at least this (several steps)
    max_steps_per_round: int = 50
    bandwidth: bool = True  # measure the in-place memory bandwidth too
    bandwidth_mib: int = 256  # size of each of the two arrays
    bandwidth_reps: int = 10
    seed: int = 0
    quick: bool = False


def quick_config(**overrides) -> Config:
    """The ``--quick`` preset: full-size workloads, few rounds (under a minute on 2 cores)."""
    base = {
        "warmup": 1,
        "rounds": 3,
        "min_round_s": 0.0,
        "bandwidth_reps": 4,
        "quick": True,
    }
    base.update(overrides)
    return Config(**base)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------- measurement


def _summary(samples_s: list[float]) -> dict[str, Any]:
    ms = [s * 1e3 for s in samples_s]
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {
        "ms_median": statistics.median(ms),
        "ms_q1": q1,
        "ms_q3": q3,
        "ms_min": min(ms),
        "ms_max": max(ms),
        "samples_ms": ms,
    }


def _probe_arrays(n: int) -> tuple[Tensor, Tensor]:
    """Two float32 arrays of ``n`` elements for ``a += s*b`` (a constant fill: ``torch.rand``
    took 0.3 s per 256 MiB array, and the values do not matter to the timing)."""
    return torch.full((n,), 0.5), torch.full((n,), 0.25)


def measure_bandwidth(mib: int = 256, reps: int = 10) -> dict[str, Any]:
    """In-place ``a += s*b`` on two float32 arrays of ``mib`` MiB; 12 bytes moved per element."""
    n = mib * 2**20 // 4
    a, b = _probe_arrays(n)
    for _ in range(2):
        a.add_(b, alpha=1e-3)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a.add_(b, alpha=1e-3)
        rates.append(12 * n / (time.perf_counter() - t0) / 1e9)
    del a, b
    return {
        "kernel": "a += s*b (float32, in place)",
        "array_mib": mib,
        "bytes_per_element": 12,
        "gbs_median": statistics.median(rates),
        "gbs_max": max(rates),
        "gbs_min": min(rates),
        "samples_gbs": rates,
    }


class _BandwidthProbe:
    """One timed ``a += s*b`` on two float32 arrays of ``mib`` MiB per call, in GB/s.

    Taken once per interleaved round of every row group, so that each group's fraction of the
    bandwidth compares against the bandwidth *while it ran*: on a shared machine it drifts
    (measured here: 52 and 89 GB/s a minute apart, in the same process)."""

    def __init__(self, mib: int) -> None:
        self.n = mib * 2**20 // 4
        self.a, self.b = _probe_arrays(self.n)
        self.a.add_(self.b, alpha=1e-3)

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.a.add_(self.b, alpha=1e-3)
        return 12 * self.n / (time.perf_counter() - t0) / 1e9


def _gradwise_optim():
    """``gradwise.optim`` or the reason it cannot be used (imported lazily, guarded)."""
    try:
        import gradwise.optim as gw
    except Exception as exc:  # noqa: BLE001 - any failure means "not available", with its reason
        return None, f"{type(exc).__name__}: {exc}"
    return gw, None


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


class _Runner:
    """One implementation of one optimizer on its own copy of a workload's params and grads."""

    def __init__(self, impl: str, make_opt: Callable, params0, grads0, gather: bool | None):
        self.impl = impl
        self.params = [torch.nn.Parameter(p.clone()) for p in params0]
        self.grads = [g.clone() for g in grads0]
        for p, g in zip(self.params, self.grads):
            p.grad = g
        self.opt = make_opt(self.params)
        self.gather = gather  # None: a torch path; True/False: gradwise with separate/flat grads
        self.step_s = float("nan")
        self.faults = 0  # minor page faults during the timed steps
        self.steps = 0

    def warm_up(self, steps: int) -> None:
        self.opt.step()  # creates the state (gradwise: then lays the group out flat)
        if self.gather is False:
            # as a training loop would: zero_grad(set_to_none=False) makes p.grad views into the
            # flat gradient buffer, and backward() would accumulate into them; we copy instead.
            self.opt.zero_grad(set_to_none=False)
            for p, g in zip(self.params, self.grads):
                p.grad.copy_(g)
        for _ in range(max(0, steps - 1)):
            self.opt.step()
        t0 = time.perf_counter()
        self.opt.step()
        self.step_s = time.perf_counter() - t0

    def time_steps(self, steps: int) -> float:
        step = self.opt.step
        f0 = _minor_faults()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        elapsed = time.perf_counter() - t0
        self.faults += _minor_faults() - f0
        self.steps += steps
        return elapsed / steps

    def finite(self) -> bool:
        """Whether every parameter is finite: one multi-tensor check (GradScaler's, scaling by
        exactly 1) instead of one ``isfinite`` per tensor, 2000 of them per row here."""
        found = torch.zeros(1)
        torch._amp_foreach_non_finite_check_and_unscale_(
            [p.detach() for p in self.params], found, torch.ones(1)
        )
        return not bool(found)

    def flat_grads(self) -> bool:
        """Whether every ``p.grad`` is a view into one buffer that the optimizer made."""
        grads = [p.grad for p in self.params]
        if any(g is None or g is mine for g, mine in zip(grads, self.grads)):
            return False
        return len({g.untyped_storage().data_ptr() for g in grads}) == 1


def _make_factory(impl: str, spec: OptimizerSpec, gw) -> Callable:
    if impl in _TORCH_FLAGS:
        cls = getattr(torch.optim, spec.cls_name)
        flags = _TORCH_FLAGS[impl]
        return lambda params: cls(params, **spec.kwargs, **flags)
    cls = getattr(gw, spec.cls_name)
    fused = {"fused": False} if impl == "gradwise eager" else {}
    return lambda params: cls(params, **spec.kwargs, **fused)


def _prebuild_kernel(spec: OptimizerSpec, gw, params0, grads0) -> None:
    """Build (or load) gradwise's fused kernel for this group, as a first run on a machine does
    once: it is cached on disk, and the default path (``fused=None``) then uses it."""
    params = [torch.nn.Parameter(p.clone()) for p in params0]
    opt = getattr(gw, spec.cls_name)(params, **spec.kwargs, fused=True)
    for _ in range(2):
        for p, g in zip(params, grads0):
            p.grad = g.clone()
        opt.step()


def _build_kernel(optimizer: str) -> str | None:
    """In a worker process: build (or find on disk) gradwise's fused kernel for one optimizer of
    the benchmark. A kernel does not depend on the size of what it updates, so a small group
    builds the one every workload uses. Returns the error's first line, if any."""
    try:
        gw, why = _gradwise_optim()
        if gw is None:
            return why
        gen = torch.Generator().manual_seed(0)
        params0, grads0 = [torch.randn(1024, generator=gen)], [torch.randn(1024, generator=gen)]
        _prebuild_kernel(OPTIMIZERS[optimizer], gw, params0, grads0)
    except Exception as exc:  # noqa: BLE001 - reported; the group tries again itself
        return (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0]
    return None


def _prebuild_kernels(optimizers: Sequence[str], workers: int, log) -> None:
    """Build the fused kernels a run times, ``workers`` at a time in worker processes.

    A cold build is mostly one single-threaded C++ compile (~10 s); one after another, the four
    default optimizers' kernels took ~40 s of a first ``--quick`` run on 2 cores. Kernels already
    on disk are only found (a worker's start-up, ~2 s). Failures are left to the row groups,
    which build (or report) as before."""
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process with OpenMP threads
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            for name, error in zip(optimizers, pool.map(_build_kernel, optimizers)):
                if error:
                    log(f"note: building the {name} kernel in a worker failed ({error})")
    except Exception as exc:  # noqa: BLE001 - a worker died (crash, killed): build here instead
        log(f"note: the kernel-building workers stopped ({type(exc).__name__}: {exc})")


def _run_group(
    workload: Workload,
    spec: OptimizerSpec,
    impls: Sequence[str],
    gw,
    cfg: Config,
    log: Callable[[str], None],
    probe: _BandwidthProbe | None = None,
) -> tuple[list[dict], list[dict]]:
    """Every implementation of one optimizer on one workload, in interleaved rounds (with one
    bandwidth probe per round, if given)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    params0 = [torch.randn(s, generator=gen) for s in workload.shapes]
    grads0 = [torch.randn(s, generator=gen) for s in workload.shapes]
    runners: list[_Runner] = []
    skipped: list[dict] = []
    if gw is not None and any(i.startswith("gradwise") for i in impls):
        from gradwise.optim import engine

        if workload.numel >= engine.KERNEL_MIN_NUMEL:  # smaller groups stay eager by default
            _prebuild_kernel(spec, gw, params0, grads0)
    for impl in impls:
        gather = None if impl in _TORCH_FLAGS else impl == "gradwise (gather)"
        try:
            runner = _Runner(impl, _make_factory(impl, spec, gw), params0, grads0, gather)
            runner.warm_up(cfg.warmup)
        except Exception as exc:  # noqa: BLE001 - e.g. fused=True unsupported for this optimizer
            first_line = (str(exc).splitlines() or [""])[0]
            skipped.append(
                {
                    "workload": workload.name,
                    "optimizer": spec.name,
                    "implementation": impl,
                    "reason": f"{type(exc).__name__}: {first_line}",
                }
            )
            continue
        runners.append(runner)
    del params0, grads0

    steps = {}
    for r in runners:
        want = math.ceil(cfg.min_round_s / r.step_s) if r.step_s > 0 else 1
        steps[r.impl] = max(1, min(cfg.max_steps_per_round, want))
    samples: dict[str, list[float]] = {r.impl: [] for r in runners}
    probed: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.collect(1)
    gc.disable()
    try:
        for _ in range(cfg.rounds):
            for r in runners:
                samples[r.impl].append(r.time_steps(steps[r.impl]))
            if probe is not None:
                probed.append(probe())
    finally:
        if gc_was_enabled:
            gc.enable()

    rows = []
    for r in runners:
        row = {
            "workload": workload.name,
            "workload_label": workload.label,
            "numel": workload.numel,
            "tensors": workload.tensors,
            "optimizer": spec.name,
            "optimizer_label": spec.label,
            "implementation": r.impl,
            "steps_per_round": steps[r.impl],
            "rounds": cfg.rounds,
            **_summary(samples[r.impl]),
            "bytes_per_param": spec.bytes_per_param,
            "params_finite": r.finite(),
            "minor_faults_per_step": r.faults / r.steps if resource else None,
            "bandwidth_gbs": statistics.median(probed) if probed else None,
        }
        if r.gather is not None:
            row["grads_flat"] = r.flat_grads()
        rows.append(row)
    log(
        f"{workload.label:<28} {spec.label:<13} "
        + "  ".join(f"{row['implementation']} {row['ms_median']:.2f} ms" for row in rows)
    )
    return rows, skipped


def _derive(rows: list[dict], bandwidth_gbs: float | None) -> None:
    """Add speedup vs the best torch path of each row group, GB/s and fraction of bandwidth."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["workload"], row["optimizer"]), []).append(row)
    for group in groups.values():
        torch_ms = [r["ms_median"] for r in group if r["implementation"] in TORCH_IMPLEMENTATIONS]
        best = min(torch_ms) if torch_ms else None
        for r in group:
            r["speedup_vs_best_torch"] = best / r["ms_median"] if best else None
            gbs = r["bytes_per_param"] * r["numel"] / (r["ms_median"] / 1e3) / 1e9
            r["gbs"] = gbs
            reference = r.get("bandwidth_gbs") or bandwidth_gbs  # the group's own probes
            r["bandwidth_fraction"] = gbs / reference if reference else None


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cores_available": available_cores(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def run(config: Config | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark and return its results as a JSON-ready dict (prints nothing itself).

    ``log`` receives one line of progress per row group (and notes), if given.
    """
    cfg = config or Config()
    log = log or (lambda _msg: None)
    for name in cfg.optimizers:
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    for impl in cfg.implementations:
        if impl not in IMPLEMENTATIONS:
            raise ValueError(
                f"unknown implementation {impl!r}; choose from {', '.join(IMPLEMENTATIONS)}"
            )
    workloads = [
        w if isinstance(w, Workload) else make_workload(w, cfg.scale) for w in cfg.workloads
    ]
    cores = available_cores()
    if cfg.threads is not None and cfg.threads < 1:
        raise ValueError(f"threads must be >= 1; received threads={cfg.threads}")
    threads = cfg.threads or cores
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)

    notes: list[str] = []
    warnings: list[str] = []
    impls = list(cfg.implementations)
    gw = None
    if any(i.startswith("gradwise") for i in impls):
        gw, why = _gradwise_optim()
        if gw is None:
            notes.append(f"gradwise.optim is not available ({why}); measuring PyTorch only")
            impls = [i for i in impls if not i.startswith("gradwise")]
            log(notes[-1])

    load_start = _loadavg()
    busy_start = load_start is not None and load_start[0] > max(0.5, cores - threads + 0.5)
    if busy_start:
        warnings.append(
            f"machine busy at start: load average {load_start[0]} with {cores} cores and "
            f"{threads} benchmark thread(s); timings are unreliable"
            + (" (try fewer threads)" if threads > 1 else "")
        )
        log("warning: " + warnings[-1])
    t_start = time.perf_counter()
    try:
        bandwidth = None
        if cfg.bandwidth:
            bandwidth = {"start": measure_bandwidth(cfg.bandwidth_mib, cfg.bandwidth_reps)}
            log(f"memory bandwidth (a += s*b): {bandwidth['start']['gbs_median']:.1f} GB/s")
        probe = _BandwidthProbe(cfg.bandwidth_mib) if cfg.bandwidth else None
        if gw is not None:
            from gradwise.optim import engine

            fused = [n for n in cfg.optimizers if hasattr(gw, OPTIMIZERS[n].cls_name)]
            if (
                len(fused) > 1
                and cores > 1
                and any(w.numel >= engine.KERNEL_MIN_NUMEL for w in workloads)
            ):
                _prebuild_kernels(fused, min(len(fused), cores), log)
        rows: list[dict] = []
        skipped: list[dict] = []
        for w in workloads:
            for name in cfg.optimizers:
                impls_here = impls
                if gw is not None:
                    missing = [
                        i
                        for i in impls
                        if i.startswith("gradwise") and not hasattr(gw, OPTIMIZERS[name].cls_name)
                    ]
                    impls_here = [i for i in impls if i not in missing]
                    skipped += [
                        {
                            "workload": w.name,
                            "optimizer": name,
                            "implementation": i,
                            "reason": f"gradwise.optim has no {OPTIMIZERS[name].cls_name}",
                        }
                        for i in missing
                    ]
                group_rows, group_skipped = _run_group(
                    w, OPTIMIZERS[name], impls_here, gw, cfg, log, probe
                )
                rows += group_rows
                skipped += group_skipped
                gc.collect(1)
        del probe
        if cfg.bandwidth:
            bandwidth["end"] = measure_bandwidth(cfg.bandwidth_mib, cfg.bandwidth_reps)
            samples = bandwidth["start"]["samples_gbs"] + bandwidth["end"]["samples_gbs"]
            bandwidth["gbs"] = statistics.median(samples)
            bandwidth["kernel"] = bandwidth["start"]["kernel"]
            bandwidth["array_mib"] = cfg.bandwidth_mib
    finally:
        torch.set_num_threads(previous_threads)
    elapsed = time.perf_counter() - t_start
    load_end = _loadavg()
    # our own threads count in the load at the end
    if load_end is not None and load_end[0] > cores + 0.5:
        warnings.append(
            f"machine busy during the run: load average {load_end[0]} at the end with {cores} "
            f"cores ({threads} of that load is this benchmark); timings are unreliable"
        )
        log("warning: " + warnings[-1])

    _derive(rows, bandwidth["gbs"] if bandwidth else None)
    for s in skipped:
        if s["implementation"] == "torch fused":
            note = f"torch fused: not available for {OPTIMIZERS[s['optimizer']].label} on CPU"
            if note not in notes:
                notes.append(note)
    if any(r["implementation"].startswith("gradwise") for r in rows):
        notes.append(
            "gradwise = the default path (fused=None; its fused kernel was built or loaded from "
            "the disk cache before timing, as after a first run); gradwise eager = fused=False"
        )
    not_flat = sorted(
        {
            f"{r['workload']}/{r['optimizer']}"
            for r in rows
            if r["implementation"] == "gradwise" and not r.get("grads_flat")
        }
    )
    if not_flat:
        warnings.append(
            "gradwise: after zero_grad(set_to_none=False) the grads were not views into one flat "
            f"buffer ({', '.join(not_flat)}); those 'gradwise' rows measure a gather"
        )
    if any(r["bandwidth_fraction"] and r["bandwidth_fraction"] > 1 for r in rows):
        notes.append(
            "more than 100% of the bandwidth: that workload fits (partly) in the CPU caches"
        )
    cfg_dict = asdict(cfg)
    cfg_dict["workloads"] = [w.name for w in workloads]
    cfg_dict["threads"] = threads
    return {
        "benchmark": "optimizer step",
        "machine": {
            **machine_info(),
            "threads": threads,
            "loadavg_start": load_start,
            "loadavg_end": load_end,
            "bandwidth_gbs": bandwidth["gbs"] if bandwidth else None,
        },
        "config": cfg_dict,
        "workloads": [
            {"name": w.name, "label": w.label, "numel": w.numel, "tensors": w.tensors}
            for w in workloads
        ],
        "bandwidth": bandwidth,
        "results": rows,
        "skipped": skipped,
        "notes": notes,
        "warnings": warnings,
        "elapsed_s": elapsed,
    }


# -------------------------------------------------------------------------------------- report


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3g}" if ms < 1 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def render(results: dict[str, Any]):
    """The results as a ``rich.table.Table`` (rows grouped by workload and optimizer)."""
    from rich.table import Table

    m = results["machine"]
    bw = m.get("bandwidth_gbs")
    caption = [
        f"{m['cpu_model']} · {m['threads']} thread(s) of {m['cores_available']} · torch "
        f"{m['torch']} · load {m['loadavg_start']} → {m['loadavg_end']}",
        (
            f"bandwidth a += s*b: {bw:.1f} GB/s at the start and end; % bw is against the "
            "probes taken in each row group's own rounds"
            if bw
            else "bandwidth not measured"
        ),
        f"{results['config']['rounds']} interleaved rounds; spread = interquartile range; "
        "×faster = best torch ms / ms; faults/step = minor page faults (fresh memory)",
    ]
    caption += [f"note: {n}" for n in results["notes"]]
    caption += [f"[bold red]warning: {w}[/]" for w in results["warnings"]]
    title = "optimizer.step()" + (" — quick mode" if results["config"].get("quick") else "")
    table = Table(title=title, caption="\n".join(caption), caption_justify="left")
    table.add_column("workload")
    table.add_column("optimizer", no_wrap=True)
    table.add_column("implementation", no_wrap=True)
    table.add_column("ms/step", justify="right")
    table.add_column("spread (IQR)", justify="right")
    table.add_column("×faster", justify="right")
    table.add_column("GB/s", justify="right")
    table.add_column("% bw", justify="right")
    table.add_column("faults/step", justify="right")
    previous = None
    for r in results["results"]:
        key = (r["workload"], r["optimizer"])
        first_of_group = key != previous
        if first_of_group and previous is not None:
            table.add_section()
        first_of_workload = previous is None or previous[0] != r["workload"]
        previous = key
        speed = r["speedup_vs_best_torch"]
        fast = f"{speed:.2f}×" if speed is not None else "–"
        if speed is not None and speed >= 1.0 and r["implementation"].startswith("gradwise"):
            fast = f"[green]{fast}[/]"
        frac = r["bandwidth_fraction"]
        flag = "" if r["params_finite"] else " [red](non-finite!)[/]"
        table.add_row(
            r["workload_label"] if first_of_workload and first_of_group else "",
            r["optimizer_label"] if first_of_group else "",
            r["implementation"] + flag,
            _fmt_ms(r["ms_median"]),
            f"{_fmt_ms(r['ms_q1'])}–{_fmt_ms(r['ms_q3'])}",
            fast,
            f"{r['gbs']:.1f}",
            f"{100 * frac:.0f}%" if frac is not None else "–",
            f"{faults:.0f}" if (faults := r.get("minor_faults_per_step")) is not None else "–",
        )
    return table


def write_json(results: dict[str, Any], path: str | os.PathLike) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="optim_step",
        description="Time optimizer.step(): torch for-loop / foreach / fused vs gradwise.",
    )
    p.add_argument("--quick", action="store_true", help="few rounds; finishes in under a minute")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch threads (default: all {available_cores()} cores available)",
    )
    p.add_argument(
        "--optimizers",
        type=_csv,
        default=list(DEFAULT_OPTIMIZERS),
        help=f"comma-separated, from {','.join(OPTIMIZERS)} "
        f"(default: {','.join(DEFAULT_OPTIMIZERS)})",
    )
    p.add_argument(
        "--workloads",
        type=_csv,
        default=list(WORKLOADS),
        help=f"comma-separated, from {','.join(WORKLOADS)} (default: all)",
    )
    p.add_argument(
        "--impls",
        type=_csv,
        default=list(IMPLEMENTATIONS),
        help=f"comma-separated implementations, from: {', '.join(IMPLEMENTATIONS)}",
    )
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (11; quick: 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (3; quick: 1)")
    p.add_argument(
        "--scale", type=float, default=1.0, help="shrink the workloads (e.g. 0.25); flagged"
    )
    p.add_argument("--no-bandwidth", action="store_true", help="skip the bandwidth measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", default=None, help="write all results as JSON")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {
        "workloads": args.workloads,
        "optimizers": args.optimizers,
        "implementations": args.impls,
        "threads": args.threads,
        "scale": args.scale,
        "bandwidth": not args.no_bandwidth,
        "seed": args.seed,
    }
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    if args.warmup is not None:
        overrides["warmup"] = args.warmup
    return quick_config(**overrides) if args.quick else Config(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: parse ``argv``, run, print the table, optionally write JSON."""
    from rich.console import Console

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        console = Console() if sys.stdout.isatty() else Console(width=132)
        err = Console(stderr=True, soft_wrap=True)
        cores = available_cores()
        threads = cfg.threads or cores
        err.print(
            f"[dim]load average at start: {_loadavg()} · {threads} thread(s) of {cores} cores"
            f"{' · quick mode' if cfg.quick else ''}[/]"
        )
        results = run(cfg, log=lambda msg: err.print(f"[dim]{msg}[/]", highlight=False))
    except ValueError as exc:
        parser.error(str(exc))
    err.print(f"[dim]load average at end: {results['machine']['loadavg_end']}[/]")
    console.print(render(results))
    if args.json:
        write_json(results, args.json)
        err.print(f"[dim]wrote {args.json}[/]")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

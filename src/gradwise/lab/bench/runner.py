"""The step benchmark's runner: each row group (a workload and an optimizer) timed in
interleaved rounds, and :func:`run`, which measures everything a :class:`Config` asks for.

How it measures (the method: docs/benchmarking.md):

* one process; for each row group every implementation gets its own copy of the same random
  parameters and gradients (fixed seed, set once), is warmed up, and then the implementations are
  timed in interleaved rounds (A, B, C, A, B, C, ...); the result is the median of the rounds,
  with the interquartile range and min–max as its spread;
* ``torch.set_num_threads`` is set explicitly, and the load average is recorded at the start and
  the end (with a warning when the machine was busy);
* the machine's in-place memory bandwidth (:mod:`gradwise.lab.bench.machine`) is measured at the
  start and the end, and once in every interleaved round of every row group; each step's achieved
  bandwidth is reported against the median of its own group's probes (the machine's bandwidth
  drifts), counting the bytes the update must move at least (e.g. Adam: read θ, g, m, v and
  write θ, m, v = 28 bytes per float32 parameter).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch

from gradwise.lab.bench import kernels
from gradwise.lab.bench.config import (
    IMPLEMENTATIONS,
    OPTIMIZERS,
    TORCH_FLAGS,
    TORCH_IMPLEMENTATIONS,
    Config,
    OptimizerSpec,
)
from gradwise.lab.bench.machine import (
    BandwidthProbe,
    available_cores,
    loadavg,
    machine_info,
    measure_bandwidth,
)
from gradwise.lab.bench.workloads import Workload, make_workload

try:
    import resource
except ImportError:  # pragma: no cover - not Unix
    resource = None


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


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


class _Runner:
    """One implementation of one optimizer on its own copy of a workload's params and grads."""

    def __init__(self, impl: str, make_opt: Callable, params0, grads0, separate: bool | None):
        self.impl = impl
        self.params = [torch.nn.Parameter(p.clone()) for p in params0]
        self.grads = [g.clone() for g in grads0]
        for p, g in zip(self.params, self.grads):
            p.grad = g
        self.opt = make_opt(self.params)
        self.separate = separate  # None: torch; True/False: gradwise with separate/flat grads
        self.step_s = float("nan")
        self.faults = 0  # minor page faults during the timed steps
        self.steps = 0

    def warm_up(self, steps: int) -> None:
        self.opt.step()  # creates the state (gradwise: then lays the group out flat)
        if self.separate is False:
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
        from gradwise.train.faults import all_finite

        return all_finite([p.detach() for p in self.params])

    def flat_grads(self) -> bool:
        """Whether every ``p.grad`` is a view into one buffer that the optimizer made."""
        grads = [p.grad for p in self.params]
        if any(g is None or g is mine for g, mine in zip(grads, self.grads)):
            return False
        return len({g.untyped_storage().data_ptr() for g in grads}) == 1


def _make_factory(impl: str, spec: OptimizerSpec, gw) -> Callable:
    if impl in TORCH_FLAGS:
        cls = getattr(torch.optim, spec.cls_name)
        flags = TORCH_FLAGS[impl]
        return lambda params: cls(params, **spec.kwargs, **flags)
    cls = getattr(gw, spec.cls_name)
    fused = {"fused": False} if impl == "gradwise eager" else {}
    return lambda params: cls(params, **spec.kwargs, **fused)


def _run_group(
    workload: Workload,
    spec: OptimizerSpec,
    impls: Sequence[str],
    gw,
    cfg: Config,
    log: Callable[[str], None],
    probe: BandwidthProbe | None = None,
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
            kernels.prebuild_kernel(spec, gw, params0, grads0)
    for impl in impls:
        separate = None if impl in TORCH_FLAGS else impl == "gradwise (separate grads)"
        try:
            runner = _Runner(impl, _make_factory(impl, spec, gw), params0, grads0, separate)
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
        if r.separate is not None:
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
        gw, why = kernels.gradwise_optim()
        if gw is None:
            notes.append(f"gradwise.optim is not available ({why}); measuring PyTorch only")
            impls = [i for i in impls if not i.startswith("gradwise")]
            log(notes[-1])

    load_start = loadavg()
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
        probe = BandwidthProbe(cfg.bandwidth_mib) if cfg.bandwidth else None
        if gw is not None:
            from gradwise.optim import engine

            fused = [n for n in cfg.optimizers if hasattr(gw, OPTIMIZERS[n].cls_name)]
            if (
                len(fused) > 1
                and cores > 1
                and any(w.numel >= engine.KERNEL_MIN_NUMEL for w in workloads)
            ):
                kernels.prebuild_kernels(fused, min(len(fused), cores), log)
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
    load_end = loadavg()
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
            f"buffer ({', '.join(not_flat)}); those 'gradwise' rows measure separate gradients"
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

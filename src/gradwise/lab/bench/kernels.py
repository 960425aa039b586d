"""gradwise's optimizers for the step benchmark: imported lazily, and their fused kernels built
before timing.

The harness runs against PyTorch alone when ``gradwise.optim`` is missing or broken
(:func:`gradwise_optim` says why). The default path (``fused=None``) uses a fused kernel once it
is on disk, so the kernels are built (or loaded) before the rounds, as after a first run on a
machine; a build is never timed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradwise.lab.bench.config import OPTIMIZERS, OptimizerSpec


def gradwise_optim():
    """``gradwise.optim`` or the reason it cannot be used (imported lazily, guarded)."""
    try:
        import gradwise.optim as gw
    except Exception as exc:  # noqa: BLE001 - any failure means "not available", with its reason
        return None, f"{type(exc).__name__}: {exc}"
    return gw, None


def prebuild_kernel(spec: OptimizerSpec, gw, params0, grads0) -> None:
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
        gw, why = gradwise_optim()
        if gw is None:
            return why
        gen = torch.Generator().manual_seed(0)
        params0, grads0 = [torch.randn(1024, generator=gen)], [torch.randn(1024, generator=gen)]
        prebuild_kernel(OPTIMIZERS[optimizer], gw, params0, grads0)
    except Exception as exc:  # noqa: BLE001 - reported; the group tries again itself
        return (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0]
    return None


def prebuild_kernels(optimizers: Sequence[str], workers: int, log) -> None:
    """Build the fused kernels a run times, ``workers`` at a time in worker processes.

    A cold build is mostly one single-threaded C++ compile: built one after another, the
    kernels of several optimizers would keep the other cores idle for most of a first run.
    Kernels already on disk are only found (the cost is a worker's start-up). A failure here is
    left to its row group, which builds the kernel itself or reports why it cannot."""
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

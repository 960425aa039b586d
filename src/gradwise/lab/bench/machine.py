"""The machine the step benchmark runs on: its cores, its load, and its memory bandwidth.

Step times only mean something next to the machine's in-place memory bandwidth (``a += s*b`` on
two float32 arrays, 12 bytes moved per element): an optimizer step is memory-bound, so the
runner reports each step's bytes per second as a fraction of it.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any

import torch
from torch import Tensor


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _probe_arrays(n: int) -> tuple[Tensor, Tensor]:
    """Two float32 arrays of ``n`` elements for ``a += s*b``: a constant fill, because the
    values do not matter to the timing and random ones take far longer to make."""
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


class BandwidthProbe:
    """One timed ``a += s*b`` on two float32 arrays of ``mib`` MiB per call, in GB/s.

    Taken once per interleaved round of every row group, so that each group's fraction of the
    bandwidth compares against the bandwidth *while it ran*: on a shared machine it drifts,
    within one process, from one minute to the next."""

    def __init__(self, mib: int) -> None:
        self.n = mib * 2**20 // 4
        self.a, self.b = _probe_arrays(self.n)
        self.a.add_(self.b, alpha=1e-3)

    def __call__(self) -> float:
        t0 = time.perf_counter()
        self.a.add_(self.b, alpha=1e-3)
        return 12 * self.n / (time.perf_counter() - t0) / 1e9


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


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None

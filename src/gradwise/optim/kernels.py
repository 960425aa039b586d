"""Fused kernels on the CPU: the same update in one pass over memory, built once, cached on disk.

This module: where kernels may run (:data:`PROVEN_TORCH`, :data:`DEVICES`), and the CPU's
kernels, built, checked, cached and loaded. What a kernel takes is
:mod:`gradwise.optim.kernel_args`; CUDA's kernels, compiled in the process, are
:mod:`gradwise.optim.compiled`.

The eager path runs a rule as a handful of tensor operations, each a pass over the (chunked)
buffers. A *kernel* is that same Python code — ``update()`` and the rule it calls — compiled
into a loop that reads each buffer once and writes it once. Nothing is written twice: the
kernel is traced from the rule itself, in one of two ways:

* **Generated C** (:mod:`generated`), for every rule whose operations are elementwise (all of
  gradwise's flat-path rules): the trace becomes a C loop that needs only ``Python.h``, built in
  ~0.3 s, so that even a first run waits for it (see below).
* **Ahead of time**, for any other rule: exported with ``torch.export`` and compiled by
  AOTInductor (~20 s). It takes lengths that are a multiple of a cache line's worth of elements
  (:func:`kernel_args.length_multiple`: the engine lays its buffers out so; the few elements
  past a multiple in a large tensor's gradient take the eager update).

Every number is a runtime argument: what varies from step to step (the learning rate, bias
corrections, the decoupled-decay factor, the L1 threshold) and the hyperparameters alike
(``betas``, ``eps``, ``momentum``, ...), so that a new value never means a new build (see
:func:`kernel_args.split`). What is baked in and part of the cache key: flags, which numbers
are zero, dtypes, the device type, the code (the generated C source; for an ahead-of-time
kernel the torch build and the source of ``update``, the rule and ``engine``), and the CPU
(model and instruction-set flags: kernels are compiled with ``-march=native`` for the CPU that
builds them). The cache lives in ``$GRADWISE_KERNEL_CACHE`` (default
``~/.cache/gradwise/kernels``) and is written atomically (temporary file + rename). A cached
kernel loads in milliseconds, without importing Inductor.

A kernel is a parallel loop whose thread count is read when it runs (``torch.set_num_threads``
decides, as for PyTorch's own kernels): a kernel first built under one thread must not stay
serial in every later process.

**A kernel never takes the user's process down.** Loading native code can crash a process where
no ``try`` can catch it: with torch 2.11's CUDA build, loading an AOTInductor package that had
just been built for the CPU killed the process with a segmentation fault. So a kernel is built,
loaded and run on a small input in a *child process* first (an ahead-of-time kernel is also
compared with the eager rule there; a generated one, whose child runs without torch, is compared
here before its first use); only a kernel that survived that is renamed into the cache, and
only a file in the cache is ever loaded here. A child that fails or dies, or a kernel that
disagrees, turns kernels off for this process with one warning, and the eager path runs (same
results). Kernels are also gated to the torch releases where building and loading them is
proven (:data:`PROVEN_TORCH`); elsewhere the eager path runs, with one warning when a kernel
was asked for. ``GRADWISE_KERNELS=off`` turns them off; ``GRADWISE_KERNELS=any`` allows any
torch release (each kernel is still checked first).

A generated kernel's build (~0.4 s, once per machine) is waited for, at the second step (the
first is always eager: a kernel bakes in flags such as SGD's first step): every run then takes
the same path from the same step, whatever the cache holds, and the results are the same from
run to run. An ahead-of-time kernel's child runs at the lowest CPU priority (``SCHED_IDLE``),
one thread, while the eager path goes on: with the default ``fused=None`` a large group does
not wait for it (the kernel takes over once it is on disk), and ``fused=True`` does.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import signal
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from gradwise.optim import ahead_of_time, generated
from gradwise.optim.kernel_args import Kernel, Update, agrees, split

_loaded: dict[tuple, Callable] = {}  # CPU: Kernels; CUDA: compiled.CompiledUpdates
_absent: set[tuple] = set()  # kernels looked for (not to be built) and not on disk
_building: dict[tuple, tuple[subprocess.Popen, Path]] = {}  # builds running in a child process
_sources: dict[tuple, str | None] = {}  # generated C sources (None: the rule does not translate)
_error: str | None = None

#: torch releases (major.minor) on which kernels are proven, by device type: on the CPU by the
#: test suite (ahead-of-time kernels); on CUDA by ``scripts/gpu_check.py`` on an H200 with torch
#: 2.11, and on 2.13 by the test suite, which runs the same in-process compile on the CPU
PROVEN_TORCH = {"cpu": ("2.13",), "cuda": ("2.11", "2.13")}
_warned_unproven = False


def cache_dir() -> Path:
    return Path(os.environ.get("GRADWISE_KERNEL_CACHE", Path.home() / ".cache/gradwise/kernels"))


@functools.cache
def torch_release() -> str:
    """``major.minor`` of the running torch (``"2.13"`` for ``2.13.0+cpu``)."""
    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def _proven(device_type: str) -> tuple[str, ...]:
    return PROVEN_TORCH.get(device_type, ())


def available(device_type: str = "cpu") -> bool:
    """Whether kernels may run in this process for this device type: not turned off
    (``GRADWISE_KERNELS=off``), a proven torch release (or ``GRADWISE_KERNELS=any``), and no
    build or check has failed here."""
    setting = os.environ.get("GRADWISE_KERNELS", "auto").strip().lower()
    if _error is not None or setting in ("off", "0", "no", "false"):
        return False
    return setting == "any" or torch_release() in _proven(device_type)


def unproven(device_type: str = "cpu", stacklevel: int = 5) -> None:
    """Warn once that this torch release runs the eager path where a kernel was asked for."""
    global _warned_unproven
    proven = _proven(device_type)
    if _warned_unproven or _error is not None or torch_release() in proven:
        return
    if os.environ.get("GRADWISE_KERNELS", "auto").strip().lower() != "auto":
        return  # the user chose
    _warned_unproven = True
    warnings.warn(
        f"gradwise: fused kernels on {device_type} are proven on torch "
        f"{', '.join(proven) or '(none)'}; this is torch {torch.__version__}, so the eager path "
        "runs (same results, slower). Set GRADWISE_KERNELS=any to try them (each is checked "
        "against the eager update first)",
        RuntimeWarning,
        stacklevel=stacklevel,
    )


#: devices whose kernels are built ahead of time (AOTInductor) in a child process and cached on
#: disk. Not CUDA: with torch 2.11 on an H200, loading an AOTInductor CUDA package crashed the
#: process (a segmentation fault inside torch's loader, through ``aoti_load_package`` as well as
#: the loader itself), which no fallback can catch.
DEVICES = ("cpu",)
#: devices whose kernels are compiled in this process by ``torch.compile`` (Inductor → Triton on
#: CUDA; Inductor's own cache on disk makes a later process's compile short), see
#: :mod:`gradwise.optim.compiled`
JIT_DEVICES = ("cuda",)
_warned_devices: set[str] = set()


def supports(device: torch.device) -> bool:
    return device.type in DEVICES or device.type in JIT_DEVICES


def compiled_here(device: torch.device) -> bool:
    """Whether this device's kernels are compiled in this process (:mod:`compiled`)."""
    return device.type in JIT_DEVICES


def unsupported(device: torch.device) -> None:
    """Warn once per device type that ``fused=True`` runs the eager path there."""
    if device.type not in _warned_devices:
        _warned_devices.add(device.type)
        warnings.warn(
            f"gradwise: fused kernels are built for {', '.join(DEVICES + JIT_DEVICES)} only; "
            f"fused=True on "
            f"{device.type} runs the eager path (same results)",
            RuntimeWarning,
            stacklevel=5,
        )


def disable(error: BaseException | str) -> None:
    """Turn kernels off for this process, with one warning that says why."""
    global _error
    if _error is not None:
        return
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    _error = (text.splitlines() or ["?"])[0]
    warnings.warn(
        f"gradwise: the fused optimizer kernel could not be used ({_error}); "
        "using the eager path (same results, slower)",
        RuntimeWarning,
        stacklevel=4,
    )


@functools.cache
def cpu_identity() -> str:
    """What a kernel built here assumes of the CPU: it is compiled with ``-march=native``, so a
    cache shared by different machines (an NFS home on a cluster) must not hand one CPU's
    kernel to another (an illegal instruction kills the process). The architecture and, on
    Linux, the CPU's model name and instruction-set flags."""
    import platform

    parts = [platform.machine(), platform.processor()]
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        seen = set()
        for line in f:
            field = line.split(":", 1)[0].strip()
            if field in ("model name", "flags", "Features") and field not in seen:
                seen.add(field)
                parts.append(line.strip())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


#: what :func:`get` does when the kernel is not on disk
SKIP, START, WAIT = "skip", "start", "wait"


def get(
    update: Callable,
    rule: Callable,
    param: Tensor,
    grad: Tensor,
    state: dict,
    args: dict,
    *,
    missing: str,
) -> tuple[Kernel, list[float]] | None:
    """The kernel for this update (a :class:`kernel_args.Kernel`) and the step's scalars, or
    None where there is none yet.

    The kernel is generated C (:mod:`generated`) where the rule translates: one not on disk is
    built in a child process, waited for (~0.4 s). Else it is ahead of time; one not on disk
    is, by ``missing``: ``SKIP``, not built; ``START``, built in a child process while this one
    goes on (None until it is on disk); ``WAIT``, built in a child process, waited for. A child
    that fails turns kernels off (:func:`disable`): None."""
    names = tuple(sorted(state))
    static, slots, values = split(args)
    dtypes = [param.dtype, grad.dtype, *(state[n].dtype for n in names)]
    memo = (rule, update, names, repr(static), tuple(slots), param.device.type, *dtypes)
    kernel = _loaded.get(memo)
    if kernel is not None:
        return kernel, values
    if missing == SKIP and memo in _absent:
        return None
    spec = dict(
        update=update,
        rule=rule,
        names=list(names),
        static=static,
        slots=slots,
        values=values,
        device=param.device.type,
        dtypes=dtypes,
        cuda=torch.cuda.is_initialized(),
    )
    running = _building.get(memo)
    if running is not None:
        proc, path = running
        if missing != WAIT and proc.poll() is None:
            return None
    else:
        path, text = _place(memo, spec)
        proc = None
        if not path.exists():
            if text is None and missing == SKIP:
                _absent.add(memo)  # not looked for again in this process
                return None
            # a generated kernel (~0.4 s to build) is always waited for: it then runs from the
            # same step in every run, so that the results do not depend on the build's timing
            background = text is None and missing == START
            proc = _start(spec, path, text, background=background)
            if proc is None:
                return None
            _building[memo] = (proc, path)
            if background:
                return None
    if proc is not None and not _finished(memo, proc):
        return None
    _absent.discard(memo)
    kernel = _loaded[memo] = _load(path, spec)
    with contextlib.suppress(OSError):  # "last used", for `gradwise cache --older-than`
        os.utime(path)
    return kernel, values


def _place(memo: tuple, spec: dict) -> tuple[Path, str | None]:
    """Where the kernel of ``spec`` is cached, and its C source where it is generated."""
    rule, names, values = spec["rule"], spec["names"], spec["values"]
    if memo not in _sources:
        text = None
        if spec["device"] == "cpu" and len(set(spec["dtypes"])) == 1:
            text = generated.source(Update.of(spec), names, len(values), spec["dtypes"][0])
        _sources[memo] = text
    text = _sources[memo]
    if text is not None:
        return cache_dir() / f"{rule.__name__}-{generated.key(text, cpu_identity())}.so", text
    return cache_dir() / f"{rule.__name__}-{ahead_of_time.key(spec, cpu_identity())}.pt2", None


def _start(spec: dict, path: Path, text: str | None, *, background: bool):
    """Start the child process that builds the kernel into ``path`` (None: it could not)."""
    try:
        if text is None:
            nice = lowest_priority if background else None
            return ahead_of_time.start_build(dict(spec, path=str(path)), nice)
        buffers, count = len(spec["dtypes"]), len(spec["values"])
        return generated.start_build(text, path, buffers, count, spec["dtypes"][0])
    except Exception as e:  # noqa: BLE001 - no C compiler, a rule that cannot be pickled, ...
        disable(e)
        return None


def _finished(memo: tuple, proc: subprocess.Popen) -> bool:
    """Wait for a child's build; True if it put a checked kernel on disk, else kernels are
    turned off with the child's reason."""
    proc.wait()
    path = _building.pop(memo)[1]
    if path.suffix == ".so":
        for leftover in generated.scratch(path):
            leftover.unlink(missing_ok=True)
    proc.stderr.seek(0)
    err = proc.stderr.read()
    proc.stderr.close()
    if proc.returncode == 0:
        return True
    if proc.returncode < 0:
        try:
            why = signal.Signals(-proc.returncode).name
        except ValueError:
            why = f"signal {-proc.returncode}"
        disable(f"building and checking it in a child process killed the child ({why})")
    else:
        lines = (err or b"").decode(errors="replace").strip().splitlines()
        disable(lines[-1] if lines else f"the child process exited with {proc.returncode}")
    return False


def building() -> bool:
    """Whether a kernel is being built in a child process for this one."""
    return bool(_building)


def kernel_for(memo: tuple) -> Callable | None:
    """The kernel this process has loaded or compiled for ``memo``, if any."""
    return _loaded.get(memo)


def keep(memo: tuple, kernel: Callable) -> Callable:
    """Remember a kernel compiled in this process (see :mod:`gradwise.optim.compiled`)."""
    _loaded[memo] = kernel
    return kernel


def loaded() -> int:
    """How many kernels this process has loaded or compiled."""
    return len(_loaded)


def wait_for_builds(timeout_s: float | None = None) -> None:
    """Wait for the kernel builds running in child processes (a benchmark that times the steady
    state calls it); a build still running after ``timeout_s`` is left running."""
    for memo, (proc, _) in list(_building.items()):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout_s)
            _finished(memo, proc)


def lowest_priority() -> None:  # pragma: no cover - runs in the child before exec
    """CPU time only when nothing else wants it (Linux's SCHED_IDLE), else the lowest nice:
    a build beside a training on 2 cores must not make PyTorch's threads wait on each other."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)


def cache_entries() -> list[dict]:
    """The files in the kernel cache, oldest use first: ``path``, ``name`` (the update rule, or
    ``native`` for the helpers of :mod:`native`), ``bytes`` and ``used`` (the time it was last
    built or loaded, seconds since the epoch)."""
    folder = cache_dir()
    if not folder.is_dir():
        return []
    entries = []
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix not in (".pt2", ".so"):
            continue  # a build in progress (temporary files start with a dot), or not ours
        with contextlib.suppress(OSError):
            info = path.stat()
            entries.append(
                {
                    "path": path,
                    "name": path.name.split("-", 1)[0],
                    "bytes": info.st_size,
                    "used": info.st_mtime,
                }
            )
    return sorted(entries, key=lambda e: e["used"])


def clear_cache(older_than_days: float | None = None) -> tuple[int, int]:
    """Delete the cached kernels (all, or those not built or loaded for ``older_than_days``);
    returns how many files and bytes went. A process that has a kernel loaded keeps running it;
    the next process builds it again when it needs it."""
    cutoff = None if older_than_days is None else time.time() - 86400 * older_than_days
    files = size = 0
    for entry in cache_entries():
        if cutoff is not None and entry["used"] >= cutoff:
            continue
        with contextlib.suppress(FileNotFoundError):
            entry["path"].unlink()
            files, size = files + 1, size + entry["bytes"]
    _absent.clear()
    return files, size


def _load(path: Path, spec: dict) -> Callable:
    """The kernel cached in ``path``, as :func:`get` gives it."""
    names = tuple(spec["names"])
    if path.suffix == ".so":  # its child ran it without torch: checked here, before its first use
        kernel = generated.load(path, names)
        if not agrees(kernel, spec):
            raise RuntimeError("the generated kernel disagrees with the eager update")
        return kernel
    return ahead_of_time.runner(ahead_of_time.load(path, names), spec["dtypes"][0], disable)

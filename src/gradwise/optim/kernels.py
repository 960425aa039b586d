"""Fused kernels: the same update, compiled ahead of time into one pass over memory, cached on disk.

This module: where kernels may run (:data:`PROVEN_TORCH`, :data:`DEVICES`), and the CPU's
ahead-of-time kernels, built, checked, cached and loaded. What a kernel takes is
:mod:`gradwise.optim.kernel_args`; CUDA's kernels, compiled in the process, are
:mod:`gradwise.optim.compiled`.

The eager path runs a rule as a handful of tensor operations, each a pass over the (chunked)
buffers. A *kernel* is that same Python code — ``update()`` and the rule it calls — exported with
``torch.export`` and compiled by AOTInductor into a shared library that reads each buffer once and
writes it once. Nothing is written twice: the kernel is traced from the rule itself.

Every number enters as a 0-d tensor (float32, or float64 for float64 parameters): what varies
from step to step (the learning rate, bias corrections, the decoupled-decay factor, the L1
threshold) and the hyperparameters alike (``betas``, ``eps``, ``momentum``, ...), so that a new
value never means a new build (see :func:`kernel_args.split`); a piece's length is a dynamic
dimension, a multiple of a cache line's worth of elements (:func:`kernel_args.length_multiple`:
the engine lays its buffers out so; the few elements past a multiple in a large tensor's
gradient take the eager update). What is baked in and part of the cache key: flags, which
numbers are zero, dtypes, the device type, together with the torch build, the source code of
``update`` and the rule, and the CPU (model and instruction-set flags: kernels are compiled for
the CPU that builds them). Building a kernel takes ~10-30 s once per machine; loading a cached one
takes milliseconds. The cache lives in ``$GRADWISE_KERNEL_CACHE`` (default
``~/.cache/gradwise/kernels``) and is written atomically (temporary file + rename). A cached
kernel loads in ~2 ms, without importing Inductor.

A kernel is always built as an OpenMP-parallel loop whose thread count is read when it runs
(``torch.set_num_threads`` decides, as for PyTorch's own kernels). Inductor's default would bake
in the thread count of the building process: a kernel first built under one thread would then
stay serial in every later process (measured: SGD on 16M parameters 6.6 ms against 5.7 ms for
PyTorch's fused kernel with 2 threads, instead of the bandwidth-bound ~6 ms).

**A kernel never takes the user's process down.** Loading native code can crash a process where
no ``try`` can catch it: with torch 2.11's CUDA build, loading an AOTInductor package that had
just been built for the CPU killed the process with a segmentation fault. So a kernel is built,
loaded and run (against the eager rule, on a small input) in a *child process* first; only a
kernel that survived that is renamed into the cache, and only a file in the cache is ever loaded
here. A child that fails or dies turns kernels off for this process with one warning, and the
eager path runs (same results). Kernels are also gated to the torch releases where building and
loading them is proven (:data:`PROVEN_TORCH`); elsewhere the eager path runs, with one warning
when a kernel was asked for. ``GRADWISE_KERNELS=off`` turns them off; ``GRADWISE_KERNELS=any``
allows any torch release (each kernel is still checked in a child first).

The child runs at the lowest CPU priority (``SCHED_IDLE``), one thread, while the eager path
goes on: with the default ``fused=None`` a large group never waits for a build (the kernel takes
over once it is on disk), and ``fused=True`` waits for it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from gradwise import __version__
from gradwise.optim.kernel_args import (
    Update,
    length_multiple,
    scalar_dtype,
    scalar_tensors,
    split,
)

_loaded: dict[tuple, Callable] = {}
_absent: set[tuple] = set()  # kernels looked for (not to be built) and not on disk
_building: dict[tuple, tuple[subprocess.Popen, Path]] = {}  # builds running in a child process
_error: str | None = None

#: torch releases (major.minor) on which kernels are proven, by device type: on the CPU by the
#: test suite (ahead-of-time kernels); on CUDA by ``scripts/gpu_check.py`` on an H200 with torch
#: 2.11, and on 2.13 by the test suite, which runs the same in-process compile on the CPU
PROVEN_TORCH = {"cpu": ("2.13",), "cuda": ("2.11", "2.13")}
_warned_unproven = False


def cache_dir() -> Path:
    return Path(os.environ.get("GRADWISE_KERNEL_CACHE", Path.home() / ".cache/gradwise/kernels"))


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
def _source(fn) -> str:
    return inspect.getsource(fn)


#: changes whenever the way kernels are built changes, so that older cached kernels are not used
KERNEL_FORMAT = (
    "5: float32 scalars, omp parallel, dynamic threads, hyperparameters at run time, "
    "lengths a multiple of a cache line"
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


def _key(update, rule, names, static, slots, param, grad, state) -> str:
    parts = [
        KERNEL_FORMAT,
        cpu_identity(),
        torch.__version__,
        str(torch.version.git_version),
        str(torch.version.cuda),
        __version__,
        _source(update),
        _source(rule),
        _source(sys.modules["gradwise.optim.engine"]),  # the operations rules are written with
        rule.__module__,
        rule.__qualname__,
        repr(sorted(static.items(), key=str)),
        repr(slots),
        repr(names),
        param.device.type,
        str(param.dtype),
        str(grad.dtype),
        repr([str(state[n].dtype) for n in names]),
    ]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


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
) -> tuple[Callable, list[float]] | None:
    """The kernel for this update and the step's scalars, or None where there is none yet.

    A kernel not on disk is, by ``missing``: ``SKIP``, not built; ``START``, built in a child
    process while this one goes on (None until it is on disk); ``WAIT``, built in a child
    process, waited for. A child that fails turns kernels off (:func:`disable`): None."""
    names = tuple(sorted(state))
    static, slots, values = split(args)
    memo = (
        rule,
        update,
        names,
        repr(static),
        tuple(slots),
        param.device.type,
        param.dtype,
        grad.dtype,
        tuple(state[n].dtype for n in names),
    )
    kernel = _loaded.get(memo)
    if kernel is not None:
        return kernel, values
    if missing == SKIP and memo in _absent:
        return None
    running = _building.get(memo)
    if running is not None:
        proc, path = running
        if missing != WAIT and proc.poll() is None:
            return None
        if not _finished(memo, proc):
            return None
    else:
        key = _key(update, rule, list(names), static, slots, param, grad, state)
        path = cache_dir() / f"{rule.__name__}-{key}.pt2"
        if not path.exists():
            if missing == SKIP:
                _absent.add(memo)  # not looked for again in this process
                return None
            spec = dict(
                update=update,
                rule=rule,
                names=list(names),
                static=static,
                slots=slots,
                values=values,
                device=param.device.type,
                dtypes=[param.dtype, grad.dtype, *(state[n].dtype for n in names)],
                path=str(path),
                cuda=torch.cuda.is_initialized(),
            )
            proc = _start_build(spec, background=missing == START)
            if proc is None:
                return None
            _building[memo] = (proc, path)
            if missing == START or not _finished(memo, proc):
                return None
    _absent.discard(memo)
    kernel = _loaded[memo] = _load(path, names)
    with contextlib.suppress(OSError):  # "last used", for `gradwise cache --older-than`
        os.utime(path)
    return kernel, values


def _finished(memo: tuple, proc: subprocess.Popen) -> bool:
    """Wait for a child's build; True if it put a checked kernel on disk, else kernels are
    turned off with the child's reason."""
    proc.wait()
    del _building[memo]
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


def child_command() -> list[str]:
    """The command of a kernel-building child process; it reads its job (pickled) on stdin."""
    return [sys.executable, "-c", "from gradwise.optim import kernels; kernels.child_main()"]


def lowest_priority() -> None:  # pragma: no cover - runs in the child before exec
    """CPU time only when nothing else wants it (Linux's SCHED_IDLE), else the lowest nice:
    a build beside a training on 2 cores must not make PyTorch's threads wait on each other."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)


def _start_build(spec: dict, *, background: bool) -> subprocess.Popen | None:
    """Start a child process that builds, loads and checks one kernel (:func:`child_main`)."""
    try:
        job = pickle.dumps(spec)
    except Exception as e:  # a rule the child could not import (e.g. defined in a closure)
        disable(f"its rule cannot be sent to a child process to be built ({e})")
        return None
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHINDUCTOR_COMPILE_THREADS="1")
    # the eager path goes on meanwhile: the build takes only what the training leaves of the CPU
    nice = lowest_priority if background else None
    try:
        # a file, not a pipe: a chatty build never blocks; closed in _finished
        errors = tempfile.TemporaryFile()  # noqa: SIM115
        proc = subprocess.Popen(
            child_command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env=env,
            preexec_fn=nice,
        )
        proc.stdin.write(job)
        proc.stdin.close()
        proc.stderr = errors
    except OSError as e:
        disable(e)
        return None
    return proc


def child_main() -> None:
    """In the child process: build the kernel of the pickled job on stdin, load it, run it on a
    small input and compare it with the eager update; only then rename it into the cache."""
    torch.set_num_threads(1)
    spec = pickle.loads(sys.stdin.buffer.read())
    if spec["cuda"]:
        torch.cuda.init()  # load as the parent would: with CUDA up
    names, device = spec["names"], torch.device(spec["device"])
    gen = torch.Generator().manual_seed(0)
    n = 64 * length_multiple(spec["dtypes"][0])

    def tensors():
        gen.manual_seed(0)
        return [torch.rand(n, generator=gen).to(dtype=d, device=device) for d in spec["dtypes"]]

    module = Update(spec["update"], spec["rule"], names, spec["static"], spec["slots"])
    param, grad, *states = tensors()
    path = Path(spec["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.checked.pt2")
    _build(tmp, module, param, grad, dict(zip(names, states)), names, spec["values"])
    try:
        kernel = _load(tmp, tuple(names))
        ran = tensors()
        scalars = scalar_tensors(spec["values"], device, scalar_dtype(spec["dtypes"][0]))
        kernel(ran[0], ran[1], dict(zip(names, ran[2:])), scalars)
        eager = tensors()
        with torch.no_grad():
            module(*eager, *scalars)
        # FMA contraction changes last bits: allow two units in the last place of the
        # parameter's dtype (bfloat16: 1.6e-2), and never less than 1e-3
        rtol = max(1e-3, 2 * torch.finfo(ran[0].dtype).eps)
        for a, b in zip(ran, eager):
            if not torch.allclose(a.double(), b.double(), rtol=rtol, atol=1e-5, equal_nan=True):
                sys.exit("the compiled kernel disagrees with the eager update")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


def _load(path: Path, names: tuple[str, ...]) -> Callable:
    """The kernel in ``path`` as ``kernel(param, grad, state, scalars)``.

    Loaded with AOTInductor's C++ package loader itself and run through its ``boxed_run``:
    ``torch._inductor.aoti_load_package`` first imports Inductor's Python package (~1-2 s in a
    fresh process), and its callable (de)serializes the call's pytree spec on every call. The
    loader alone takes ~2 ms. Where its signature differs (another torch), the public way."""
    loader = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    run = None
    if loader is not None:
        with contextlib.suppress(RuntimeError, TypeError):
            run = loader(str(path), "model", False, 1, -1).boxed_run
    if run is None:
        loaded = torch._inductor.aoti_load_package(str(path))

        def kernel(p, g, st, scalars):
            loaded(p, g, *(st[n] for n in names), *scalars)

        return kernel

    def kernel(p, g, st, scalars):
        run([p, g, *(st[n] for n in names), *scalars])

    return kernel


def _build(path: Path, module, param, grad, state, names, values) -> None:
    from torch.export import Dim, export

    # a multiple of a cache line (see length_multiple): no partial vector, no branch for one
    n = length_multiple(param.dtype) * Dim("lines", min=1)
    scalars = scalar_tensors(values, param.device, scalar_dtype(param.dtype))
    inputs = (param, grad, *(state[name] for name in names), *scalars)
    shapes = ({0: n}, {0: n}, (*({0: n} for _ in names), *(None for _ in scalars)))
    exported = export(module, inputs, dynamic_shapes=shapes)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.pt2")
    # parallel code whatever this process's thread count; the count is read at run time
    parallel = {"cpp.threads": max(2, os.cpu_count() or 2), "cpp.dynamic_threads": True}
    with torch._inductor.config.patch(parallel), warnings.catch_warnings():
        # torch 2.13 deep-copies its own tree spec here and warns about itself: not the user's
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp))
    os.replace(tmp, path)

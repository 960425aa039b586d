"""Fused kernels: the same update, compiled ahead of time into one pass over memory, cached on disk.

The eager path runs a rule as a handful of tensor operations, each a pass over the (chunked)
buffers. A *kernel* is that same Python code — ``update()`` and the rule it calls — exported with
``torch.export`` and compiled by AOTInductor into a shared library that reads each buffer once and
writes it once. Nothing is written twice: the kernel is traced from the rule itself.

What varies from step to step (the learning rate, bias corrections, the decoupled-decay factor, the
L1 threshold) enters as 0-d float64 tensors; the flat buffers' length is a dynamic dimension. What
is constant for a param group (``betas``, ``eps``, ``momentum``, flags, dtypes, the device type)
is baked in and is part of the cache key, together with the torch version, the source code of
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
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from gradwise import __version__

_loaded: dict[tuple, Callable] = {}
_absent: set[tuple] = set()  # kernels looked for (not to be built) and not on disk
_error: str | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("GRADWISE_KERNEL_CACHE", Path.home() / ".cache/gradwise/kernels"))


def available() -> bool:
    """False once building a kernel failed here (e.g. no C++ compiler): eager from then on."""
    return _error is None


#: devices whose kernels gradwise builds and runs. Not CUDA: with torch 2.11 on an H200, loading
#: an AOTInductor CUDA package crashed the process (a segmentation fault inside torch's loader,
#: through ``aoti_load_package`` as well as the loader itself), which no fallback can catch.
DEVICES = ("cpu",)
_warned_devices: set[str] = set()


def supports(device: torch.device) -> bool:
    return device.type in DEVICES


def unsupported(device: torch.device) -> None:
    """Warn once per device type that ``fused=True`` runs the eager path there."""
    if device.type not in _warned_devices:
        _warned_devices.add(device.type)
        warnings.warn(
            f"gradwise: fused kernels are built for {', '.join(DEVICES)} only; fused=True on "
            f"{device.type} runs the eager path (same results)",
            RuntimeWarning,
            stacklevel=5,
        )


def disable(error: BaseException) -> None:
    global _error
    _error = f"{type(error).__name__}: {error}".splitlines()[0]
    warnings.warn(
        f"gradwise: building the fused optimizer kernel failed ({_error}); "
        "using the eager path (same results, slower)",
        RuntimeWarning,
        stacklevel=4,
    )


def _is_scalar(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def split(args: dict) -> tuple[dict, list[tuple[str, str]], list[float]]:
    """``update``'s keyword arguments as (constants, where the step's scalars go, their values)."""
    static = {k: v for k, v in args.items() if k not in ("coefficients", "shrink", "l1_threshold")}
    slots, values = [], []
    for key, value in args["coefficients"].items():
        if _is_scalar(value):
            slots.append(("coefficients", key))
            values.append(float(value))
    for key in ("shrink", "l1_threshold"):
        if args[key] is not None:
            slots.append((key, ""))
            values.append(float(args[key]))
    static["coefficients"] = {k: v for k, v in args["coefficients"].items() if not _is_scalar(v)}
    static["present"] = [k for k in ("shrink", "l1_threshold") if args[k] is not None]
    return static, slots, values


class _Update(torch.nn.Module):
    """``update(rule, param, grad, state, **args)`` with tensors only as positional inputs."""

    def __init__(self, update, rule, names, static, slots):
        super().__init__()
        self.update, self.rule, self.names, self.static, self.slots = (
            update,
            rule,
            names,
            static,
            slots,
        )

    def forward(self, param: Tensor, grad: Tensor, *rest: Tensor) -> None:
        state = dict(zip(self.names, rest[: len(self.names)]))
        scalars = rest[len(self.names) :]
        coefficients = dict(self.static["coefficients"])
        extra = {"shrink": None, "l1_threshold": None}
        for (where, key), value in zip(self.slots, scalars):
            if where == "coefficients":
                coefficients[key] = value
            else:
                extra[where] = value
        static = {k: v for k, v in self.static.items() if k not in ("coefficients", "present")}
        self.update(self.rule, param, grad, state, coefficients=coefficients, **extra, **static)


@functools.cache
def _source(fn) -> str:
    return inspect.getsource(fn)


#: changes whenever the way kernels are built changes, so that older cached kernels are not used
KERNEL_FORMAT = "2: omp parallel, dynamic threads"


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
        __version__,
        _source(update),
        _source(rule),
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


def get(
    update: Callable,
    rule: Callable,
    param: Tensor,
    grad: Tensor,
    state: dict,
    args: dict,
    *,
    build: bool,
) -> tuple[Callable, list[float]] | None:
    """The kernel for this update and the step's scalars, or None if it is not on disk and
    ``build`` is False. Building takes seconds, once per machine; later calls hit a memo."""
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
    if kernel is None:
        if not build and memo in _absent:
            return None
        key = _key(update, rule, list(names), static, slots, param, grad, state)
        path = cache_dir() / f"{rule.__name__}-{key}.pt2"
        if not path.exists():
            if not build:
                _absent.add(memo)  # not looked for again in this process
                return None
            module = _Update(update, rule, list(names), static, slots)
            _build(path, module, param, grad, state, names, values)
        kernel = _loaded[memo] = _load(path, names)
        with contextlib.suppress(OSError):  # "last used", for `gradwise cache --older-than`
            os.utime(path)
    return kernel, values


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

    n = Dim("n", min=2)
    scalars = [torch.tensor(v, dtype=torch.float64, device=param.device) for v in values]
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


def scalar_tensors(values: list[float], device: torch.device) -> list[Tensor]:
    return [torch.tensor(v, dtype=torch.float64, device=device) for v in values]

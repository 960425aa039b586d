"""Ahead-of-time CPU kernels: a rule that :mod:`generated` cannot translate (an operation
outside its elementwise ones) exported with ``torch.export`` and compiled by AOTInductor into a
package, in a child process (~20 s once per machine), which loads it, runs it and compares it
with the eager update before it renames it into the cache (:mod:`kernels` decides when).

The package takes lengths that are a multiple of a cache line's worth of elements
(:func:`kernel_args.length_multiple`): Inductor's loop then has no branch for a partial vector.
It is built as an OpenMP-parallel loop whose thread count is read when it runs (Inductor's
default would bake in the thread count of the building process: a kernel first built under one
thread would then stay serial in every later process; measured: SGD on 16M parameters 6.6 ms
against 5.7 ms for PyTorch's fused kernel with 2 threads, instead of the bandwidth-bound ~6 ms).
Its scalars are float32 0-d tensors (float64 for float64 parameters: float64 scalars made the
compiled loop convert each of them on every iteration).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from gradwise import __version__
from gradwise.optim.kernel_args import (
    Kernel,
    Scalars,
    Update,
    agrees,
    check_inputs,
    dense,
    length_multiple,
    scalar_dtype,
    scalar_tensors,
)


@functools.cache
def _source(fn) -> str:
    return inspect.getsource(fn)


#: changes whenever the way kernels are built changes, so that older cached kernels are not used
KERNEL_FORMAT = (
    "5: float32 scalars, omp parallel, dynamic threads, hyperparameters at run time, "
    "lengths a multiple of a cache line"
)


#: changes whenever the way kernels are built changes, so that older cached kernels are not used
KERNEL_FORMAT = (
    "5: float32 scalars, omp parallel, dynamic threads, hyperparameters at run time, "
    "lengths a multiple of a cache line"
)


def key(spec: dict, cpu: str) -> str:
    """The cache key of the ahead-of-time kernel of ``spec`` for the CPU ``cpu``."""
    parts = [
        KERNEL_FORMAT,
        cpu,
        torch.__version__,
        str(torch.version.git_version),
        str(torch.version.cuda),
        __version__,
        _source(spec["update"]),
        _source(spec["rule"]),
        _source(sys.modules["gradwise.optim.engine"]),  # the operations rules are written with
        spec["rule"].__module__,
        spec["rule"].__qualname__,
        repr(sorted(spec["static"].items(), key=str)),
        repr(spec["slots"]),
        repr(spec["names"]),
        spec["device"],
        repr([str(d) for d in spec["dtypes"]]),
    ]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def child_command() -> list[str]:
    """The command of a kernel-building child process; it reads its job (pickled) on stdin."""
    return [
        sys.executable,
        "-c",
        "from gradwise.optim import ahead_of_time; ahead_of_time.child_main()",
    ]


def start_build(spec: dict, nice: Callable | None) -> subprocess.Popen:
    """Start a child process that builds, loads and checks one ahead-of-time kernel
    (:func:`child_main`), at the lowest priority where ``nice`` is :func:`lowest_priority`."""
    try:
        job = pickle.dumps(spec)
    except Exception as e:  # a rule the child could not import (e.g. defined in a closure)
        raise RuntimeError(f"its rule cannot be sent to a child process to be built ({e})") from e
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCHINDUCTOR_COMPILE_THREADS="1")
    # a file, not a pipe: a chatty build never blocks; closed by the caller
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
    return proc


def child_main() -> None:
    """In the child process: build the ahead-of-time kernel of the pickled job on stdin, load
    it, run it on a small input and compare it with the eager update; only then rename it into
    the cache."""
    torch.set_num_threads(1)
    spec = pickle.loads(sys.stdin.buffer.read())
    if spec["cuda"]:
        torch.cuda.init()  # load as the parent would: with CUDA up
    names = spec["names"]
    param, grad, *states = check_inputs(spec)
    path = Path(spec["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.checked.pt2")
    _build(tmp, Update.of(spec), param, grad, dict(zip(names, states)), names, spec["values"])
    try:
        if not agrees(runner(load(tmp, tuple(names)), spec["dtypes"][0]), spec):
            sys.exit("the compiled kernel disagrees with the eager update")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def runner(
    kernel: Callable, dtype: torch.dtype, on_error: Callable[[Exception], None] | None = None
) -> Kernel:
    """An ahead-of-time kernel as ``run(targets, scalars) -> the targets it left``: it takes
    whole cache lines (:func:`kernel_args.length_multiple`), a large tensor's last few elements
    are left to the eager update, and so is every target after one it failed on (``on_error``
    is told; without it the error is raised)."""
    multiple = length_multiple(dtype)

    def run(targets: list, scalars: Scalars) -> list:
        left = []
        for i, (param, grad, state) in enumerate(targets):
            grad, n = dense(grad), param.numel()
            body = n - n % multiple
            head = (param, grad, state)
            if body < n:  # views only where a tail is left (a view costs ~1 µs)
                head = (param[:body], grad[:body], {k: t[:body] for k, t in state.items()})
            if body:
                try:
                    kernel(*head, scalars.views)
                except Exception as e:  # e.g. an input the kernel was not built for
                    if on_error is None:  # the check in the child: its error is the reason
                        raise
                    on_error(e)
                    return left + targets[i:]
            if body < n:  # a large tensor's last few elements
                left.append((param[body:], grad[body:], {k: t[body:] for k, t in state.items()}))
        return left

    return Kernel(run, scalar_dtype(dtype))


def load(path: Path, names: tuple[str, ...]) -> Callable:
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

"""What a compiled kernel takes: the update's arguments split into constants, baked into the
kernel, and runtime scalars, passed to it on every call (so that a new hyperparameter value never
means a new build); the module that puts them back together for tracing; and the scalars' tensors.

Shared by both kinds of kernel: the CPU's ahead-of-time ones (:mod:`gradwise.optim.kernels`) and
CUDA's, compiled in the process (:mod:`gradwise.optim.compiled`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def _is_scalar(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: in a kernel's constants, a value that is one of its runtime scalars
RUNTIME = "<runtime>"


def split(args: dict) -> tuple[dict, list[tuple], list[float]]:
    """``update``'s keyword arguments as (constants, where the scalars go, their values).

    Every number is a runtime scalar of the kernel — the step's coefficients, ``shrink``,
    ``l1_threshold``, and the hyperparameters (``betas``, ``eps``, ``momentum``, ...) — so that
    a new value never means a new build. Only a zero stays a constant (written ``0``, not
    :data:`RUNTIME`): rules branch on whether e.g. ``momentum`` is zero, never on its value.
    Flags and dtypes are constants."""
    static = {k: dict(v) if isinstance(v, dict) else v for k, v in args.items()}
    slots: list[tuple] = []
    values: list[float] = []

    def runtime(path: tuple, value) -> bool:
        if not _is_scalar(value) or (value == 0 and path[0] != "coefficients"):
            return False
        slots.append(path)
        values.append(float(value))
        return True

    for key in ("coefficients", "hyperparameters"):
        for name, value in args[key].items():
            if isinstance(value, tuple):
                static[key][name] = tuple(
                    RUNTIME if runtime((key, name, i), v) else v for i, v in enumerate(value)
                )
            elif runtime((key, name), value):
                static[key][name] = RUNTIME
    for key in ("weight_decay", "shrink", "l1_threshold"):
        if runtime((key,), args[key]):
            static[key] = RUNTIME
    return static, slots, values


def flags(args: dict) -> tuple:
    """The step's coefficients that a kernel bakes in as constants (flags, None: every number
    is a runtime scalar, see :func:`split`). Unlike the group's options they may change from
    one step to the next (ASGD's ``average`` turns on at ``t0``), and a kernel built for one
    set of them must not run a step with another."""
    return tuple((k, v) for k, v in args["coefficients"].items() if not _is_scalar(v))


def values_at(args: dict, slots: list[tuple]) -> list[float]:
    """The runtime scalars' values in ``args``, at the places :func:`split` found them (cheaper
    than splitting again, for a kernel already chosen)."""
    values = []
    for path in slots:
        value = args[path[0]]
        for key in path[1:]:
            value = value[key]
        values.append(float(value))
    return values


class Scalars:
    """A kernel's runtime scalars as 0-d CPU tensors, written in place each step: one buffer
    and its views, made once (a new tensor a step cost ~10 µs). A kernel reads them when it is
    called (on CUDA, Inductor passes them to the GPU kernel as arguments at its launch), so
    the next step may overwrite them."""

    def __init__(self, count: int, dtype: torch.dtype) -> None:
        self.buffer = torch.zeros(count, dtype=dtype)
        self.views = list(self.buffer.unbind())
        self.array = self.buffer.numpy()

    def filled(self, values: list[float]) -> list[Tensor]:
        self.array[:] = values
        return self.views


class Update(torch.nn.Module):
    """``update(rule, param, grad, state, **args)`` with tensors only as positional inputs: the
    constants of :func:`split`, with its runtime scalars put back in their places."""

    def __init__(self, update, rule, names, static, slots):
        super().__init__()
        self.update, self.rule, self.names = update, rule, names
        self.static, self.slots = static, slots

    @classmethod
    def of(cls, spec: dict) -> Update:
        """The module of a kernel's ``spec`` (see :func:`gradwise.optim.kernels.get`)."""
        return cls(spec["update"], spec["rule"], spec["names"], spec["static"], spec["slots"])

    def forward(self, param: Tensor, grad: Tensor, *rest: Tensor) -> None:
        state = dict(zip(self.names, rest[: len(self.names)]))
        args = {k: dict(v) if isinstance(v, dict) else v for k, v in self.static.items()}
        for path, value in zip(self.slots, rest[len(self.names) :]):
            if len(path) == 1:
                args[path[0]] = value
            elif len(path) == 2:
                args[path[0]][path[1]] = value
            else:
                items = list(args[path[0]][path[1]])
                items[path[2]] = value
                args[path[0]][path[1]] = tuple(items)
        self.update(self.rule, param, grad, state, **args)


def scalar_tensors(values: list[float], device: torch.device, dtype: torch.dtype) -> list[Tensor]:
    # one tensor and its 0-d views: one allocation (and, on a GPU, one copy) instead of one each
    return list(torch.tensor(values, dtype=dtype, device=device).unbind()) if values else []


#: a cache line: where each tensor's place in the engine's flat buffers starts, and what the
#: length of every piece an ahead-of-time kernel takes is a multiple of
ALIGN_BYTES = 64


def length_multiple(dtype: torch.dtype) -> int:
    """Elements that the length of a piece a CPU kernel takes is a multiple of: a cache line's
    worth (16 float32), a whole number of vectors for every vector width up to AVX-512's.

    Inductor then knows the loop has no partial vector at its end, and leaves out the branch
    that its loop otherwise takes on every iteration to look for one: Adam on 16M float32
    elements, one thread, 20.8 against 21.8 ms a step (torch's fused kernel: 20.9 ms)."""
    return max(ALIGN_BYTES // dtype.itemsize, 1)


def scalar_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a kernel's runtime scalars: float64 for float64 parameters, else float32
    (float64 scalars made the compiled loop convert each of them on every iteration)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class Kernel:
    """A CPU kernel: ``run(targets, scalars) -> the targets it left to the eager update``, with
    ``targets`` ``(param, grad, state)`` triples and ``scalars`` a :class:`Scalars` of
    ``scalar_dtype`` holding the step's values."""

    run: Callable[[list, Scalars], list]
    scalar_dtype: torch.dtype


@dataclass(frozen=True)
class Scattered:
    """A piece's gradient as backward left it, one tensor per parameter (the segment's small
    tensors): ``table()`` is ``(addresses, offsets, lengths)``, int64 arrays that a generated
    kernel reads them through (see :mod:`generated`); ``gather()`` copies them into one tensor,
    for every other update."""

    gather: Callable[[], Tensor]
    table: Callable[[], tuple]


def dense(grad: Tensor | Scattered) -> Tensor:
    """A piece's gradient as one tensor (a :class:`Scattered` one gathered)."""
    return grad.gather() if isinstance(grad, Scattered) else grad


def check_inputs(spec: dict) -> list[Tensor]:
    """A kernel's check's input: a parameter, its gradient and its state, of ``spec``'s dtypes."""
    gen = torch.Generator().manual_seed(0)
    n = 64 * length_multiple(spec["dtypes"][0])
    return [torch.rand(n, generator=gen).to(dtype=d, device=spec["device"]) for d in spec["dtypes"]]


def agrees(kernel: Kernel, spec: dict) -> bool:
    """Whether ``kernel`` updates a small random input as the eager update of ``spec`` does
    (see :func:`gradwise.optim.kernels.get`), up to rounding: two units in the last place of
    the parameter's dtype (bfloat16: 1.6e-2), never less than 1e-3 relative."""
    names = spec["names"]
    ran = check_inputs(spec)
    scalars = Scalars(len(spec["values"]), kernel.scalar_dtype)
    views = scalars.filled(spec["values"])
    left = kernel.run([(ran[0], ran[1], dict(zip(names, ran[2:])))], scalars)
    if left:
        return False
    eager = check_inputs(spec)
    with torch.no_grad():
        Update.of(spec)(*eager, *views)
    rtol = max(1e-3, 2 * torch.finfo(ran[0].dtype).eps)
    return all(
        torch.allclose(a.double(), b.double(), rtol=rtol, atol=1e-5, equal_nan=True)
        for a, b in zip(ran, eager)
    )

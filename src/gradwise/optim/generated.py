"""The CPU's kernels, generated: ``update()`` and its rule traced into one C loop.

A rule is a handful of elementwise tensor operations. :func:`source` runs the same module the
ahead-of-time kernels export (:class:`kernel_args.Update`: every number a 0-d tensor) once on
16-element tensors, under a ``TorchFunctionMode`` that records each tensor operation it calls;
each becomes one C expression (:data:`OPS`). The loop reads every buffer once, computes the
step's values in registers, and writes back the buffers the rule changed: one pass over memory.
What depends on the scalars only (``1 − β1``, ``1/√(1 − β2^t)``, ...) is computed once per
call, before the loop, in double precision, and rounded to the parameter's dtype where the loop
uses it, as the eager update computes such numbers in Python and torch rounds them.

The C source needs only ``Python.h``: a C compiler builds it in ~0.3 s (the ahead-of-time
kernels take ~20 s, most of it parsing torch's headers), so even a first run on a machine waits
for it (at its second step) rather than running the slower eager update meanwhile. Its buffers
come through Python's buffer protocol (``Tensor.numpy()``), whose length, item size and
contiguity the module checks before it writes any memory; it needs neither torch's headers nor
its ABI, so one build serves every torch release.

With the default ``zero_grad()``, backward leaves each small tensor's gradient in a tensor of its
own. The loop then reads them where they are, through a table of their addresses, offsets and
lengths (``run(..., table)``; see :meth:`engine.Segment.gradient_pieces`) rather than from a
gathered copy: the same statements, one tensor after another. The module checks every entry
lies inside the piece before it writes anything, and never writes what it reads through the table
(a rule that writes its gradient has no table: ``TABLE`` is 0).

A rule with an operation outside :data:`OPS` (a reduction, a factory, a number read out of a
tensor, a dtype other than the parameter's or bool) has no generated kernel: :func:`source`
returns None and the ahead-of-time kernel is built instead. Like every CPU kernel, the module
is compiled, imported and run on a small input in a child process before this process loads it
(see :mod:`kernels`); this process then checks it against the eager update before its first use.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from gradwise.optim.kernel_args import Kernel, Scalars, Scattered

#: elements per thread below which a piece is updated by one thread (a parallel region's start
#: costs about as much as updating this many elements)
PARALLEL_MIN = 1 << 15
#: the C types of the parameter dtypes a kernel is generated for
C_TYPES = {torch.float32: "float", torch.float64: "double"}
#: the compiler's options: vectorized square roots (no errno), no FMA contraction (the eager
#: update's roundings, one operation at a time), parallel pieces with OpenMP
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp"]
_TRACE_LENGTH = 16


class Untranslatable(Exception):
    """The rule does something the generated loop cannot (its message says what)."""


@dataclass(frozen=True)
class Value:
    """A traced tensor's value: a C expression, its kind ("f": the parameter's dtype, "b":
    bool), and whether it is the same for every element (made from the scalars only)."""

    expr: str
    kind: str
    uniform: bool


def _minmax(cmp: str) -> Callable:
    # NaN wins, as in torch.maximum/minimum
    return lambda self, other: f"(({self} {cmp} {other} || {self} != {self}) ? {self} : {other})"


def _clamp(self, min=None, max=None) -> str:  # noqa: A002 - ATen's names
    # a NaN in self stays NaN, as in torch.clamp
    expr = self
    if min is not None:
        expr = f"(({expr} < {min}) ? {min} : {expr})"
    if max is not None:
        expr = f"(({expr} > {max}) ? {max} : {expr})"
    return expr


def _scaled(x: str, alpha: str | None) -> str:
    return x if alpha is None else f"{alpha} * {x}"


#: a tensor operation's name (without ``_`` or dunders) → its C expression from its arguments,
#: positional or by torch's names for them (tensors and numbers as C expressions; an ``alpha``
#: of 1 left out); C's type-generic maths (``<tgmath.h>``) picks each function's precision
OPS: dict[str, Callable[..., str]] = {
    "add": lambda self, other, alpha=None: f"({self} + {_scaled(other, alpha)})",
    "sub": lambda self, other, alpha=None: f"({self} - {_scaled(other, alpha)})",
    "rsub": lambda self, other, alpha=None: f"({other} - {_scaled(self, alpha)})",
    "mul": lambda self, other: f"({self} * {other})",
    "div": lambda self, other: f"({self} / {other})",
    "rdiv": lambda self, other: f"({other} / {self})",
    "neg": lambda self: f"(-{self})",
    "reciprocal": lambda self: f"(1 / {self})",
    "sqrt": lambda self: f"sqrt({self})",
    "rsqrt": lambda self: f"(1 / sqrt({self}))",
    "abs": lambda self: f"fabs({self})",
    "exp": lambda self: f"exp({self})",
    "log": lambda self: f"log({self})",
    "sign": lambda self: f"(({self} > 0) - ({self} < 0))",
    "addcmul": lambda self, tensor1, tensor2, value=None: (
        f"({self} + {_scaled(f'{tensor1} * {tensor2}', value)})"
    ),
    "addcdiv": lambda self, tensor1, tensor2, value=None: (
        f"({self} + {_scaled(f'({tensor1} / {tensor2})', value)})"
    ),
    "lerp": lambda self, end, weight: (
        f"(fabs({weight}) < 0.5 ? {self} + {weight} * ({end} - {self})"
        f" : {end} - ({end} - {self}) * (1 - {weight}))"
    ),
    "maximum": _minmax(">"),
    "minimum": _minmax("<"),
    "clamp": _clamp,
    "clamp_min": lambda self, min: _clamp(self, min=min),  # noqa: A006
    "clamp_max": lambda self, max: _clamp(self, max=max),  # noqa: A006
    "where": lambda condition, self, other: f"({condition} ? {self} : {other})",
    "gt": lambda self, other: f"({self} > {other})",
    "lt": lambda self, other: f"({self} < {other})",
    "ge": lambda self, other: f"({self} >= {other})",
    "le": lambda self, other: f"({self} <= {other})",
    "eq": lambda self, other: f"({self} == {other})",
    "ne": lambda self, other: f"({self} != {other})",
    "and": lambda self, other: f"({self} && {other})",
    "or": lambda self, other: f"({self} || {other})",
    "not": lambda self: f"(!{self})",
    "fill": lambda self, value: value,
    "zero": lambda self: "0",
    "copy": lambda self, src: src,
    "clone": lambda self: self,
}
#: other names of the operations in :data:`OPS`
SYNONYMS = {
    "radd": "add",
    "rmul": "mul",
    "truediv": "div",
    "rtruediv": "rdiv",
    "divide": "div",
    "multiply": "mul",
    "subtract": "sub",
    "greater": "gt",
    "less": "lt",
    "bitwise_and": "and",
    "logical_and": "and",
    "bitwise_or": "or",
    "logical_or": "or",
    "logical_not": "not",
    "invert": "not",
    "bitwise_not": "not",
}
#: operations whose result is the same memory as their input (a view of all of it)
ALIASES = ("detach", "view_as", "view", "reshape", "flatten", "ravel")
#: operations that read a tensor's description, not its values (their results are not traced)
DESCRIPTIONS = ("get", "dim", "numel", "size", "stride", "is_contiguous", "data_ptr", "type")


def _name(func) -> tuple[str, bool]:
    """A torch function's operation, as a key of :data:`OPS`, and whether it is in place."""
    name = getattr(func, "__name__", str(func))
    inplace = False
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name[0] == "i" and name[1:] in ("add", "sub", "mul", "truediv", "and", "or"):
            name, inplace = name[1:], True
    elif name.endswith("_"):
        name, inplace = name[:-1], True
    return SYNONYMS.get(name, name), inplace


class _Trace(TorchFunctionMode):
    """Records the tensor operations of one run as C statements (see the module docstring)."""

    def __init__(self, buffers: list[Tensor], scalars: list[Tensor], dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype, self.length = dtype, buffers[0].numel()
        self.keep: list[Tensor] = [*buffers, *scalars]  # alive: their ids stay theirs
        self.root: dict[int, int] = {}  # a tensor's id → the id of the memory it is a view of
        self.value: dict[int, Value] = {}  # the memory's id → its current value
        self.before: list[str] = []  # statements before the loop (uniform values)
        self.inside: list[str] = []  # statements in the loop
        self.count = 0
        for i, t in enumerate(buffers):
            self._own(t, Value(f"x{i}", "f", False))
        for i, t in enumerate(scalars):
            self._own(t, Value(f"s{i}", "f", True))

    def _own(self, t: Tensor, value: Value) -> None:
        self.keep.append(t)
        self.root[id(t)] = id(t)
        self.value[id(t)] = value

    def current(self, t: Tensor) -> Value:
        if id(t) not in self.root:
            raise Untranslatable("the rule reads a tensor made outside it")
        return self.value[self.root[id(t)]]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self._record(func, args, kwargs, out)
        return out

    def _record(self, func, args, kwargs, out) -> None:
        name, inplace = _name(func)
        if name in DESCRIPTIONS:
            return
        if not isinstance(out, Tensor):
            raise Untranslatable(f"{name} gives a {type(out).__name__}, not a tensor")
        if name in ALIASES:
            self._kind(out, name)
            self.keep.append(out)
            self.root[id(out)] = self.root[id(args[0])]
            return
        if name not in OPS:
            raise Untranslatable(f"the operation {name} has no C form here")
        target = kwargs.get("out")
        positional = [self._operand(v, name) for v in args]
        named = {k: self._operand(v, name) for k, v in kwargs.items() if k != "out"}
        if kwargs.get("alpha") == 1:
            del named["alpha"]
        uniform = all(u for _, u in [*positional, *named.values()])
        if not uniform:  # in the loop, uniform values (doubles) are rounded to the dtype, as
            # torch rounds a Python number to a float32 tensor's dtype in an operation
            positional = [_rounded(*operand) for operand in positional]
            named = {k: _rounded(*operand) for k, operand in named.items()}
        try:
            expr = OPS[name](*(e for e, _ in positional), **{k: e for k, (e, _) in named.items()})
        except TypeError as e:  # arguments it does not take
            raise Untranslatable(f"{name}: {e}") from None
        kind = self._kind(out, name)
        self.count += 1
        var = f"{'u' if uniform else 'v'}{self.count}"
        ctype = "int" if kind == "b" else ("double" if uniform else "T")
        (self.before if uniform else self.inside).append(f"const {ctype} {var} = {expr};")
        result = Value(var, kind, uniform)
        written = target if target is not None else (args[0] if inplace else None)
        if written is not None:
            self.value[self.root[id(written)]] = result
        if written is not out:
            self._own(out, result)

    def _kind(self, t: Tensor, name: str) -> str:
        if t.dim() != 0 and tuple(t.shape) != (self.length,):
            raise Untranslatable(f"{name} makes a tensor of shape {tuple(t.shape)}")
        if t.dtype == self.dtype:
            return "f"
        if t.dtype == torch.bool:
            return "b"
        raise Untranslatable(f"{name} makes a {t.dtype} tensor")

    def _operand(self, v, name: str) -> tuple[str | None, bool]:
        """An argument as (C expression, uniform)."""
        if isinstance(v, Tensor):
            self._kind(v, name)
            value = self.current(v)
            return value.expr, value.uniform
        if v is None:
            return None, True
        if isinstance(v, bool):
            return ("1" if v else "0"), True
        if isinstance(v, int | float):
            return _literal(float(v)), True
        raise Untranslatable(f"{name} takes {v!r}")

    def stores(self, buffers: list[Tensor]) -> list[str]:
        """The writes that end the loop: every buffer whose value the rule changed."""
        lines = []
        for i, t in enumerate(buffers):
            value = self.current(t)
            if value.expr != f"x{i}":
                lines.append(f"b{i}[i] = (T){value.expr};")
        return lines


def _rounded(expr: str | None, uniform: bool) -> tuple[str | None, bool]:
    """An operand of an operation in the loop: a uniform value rounded to the dtype ``T``."""
    return (f"((T){expr})" if uniform and expr is not None else expr), uniform


def _literal(x: float) -> str:
    if math.isnan(x):
        return "NAN"
    if math.isinf(x):
        return "INFINITY" if x > 0 else "(-INFINITY)"
    return repr(x)


def source(module: torch.nn.Module, names: list[str], count: int, dtype: torch.dtype) -> str | None:
    """The C source of ``module`` (a :class:`kernel_args.Update`) over a parameter, its gradient
    and the state tensors ``names``, all of ``dtype``, with ``count`` runtime scalars; None
    where the rule cannot be translated (see :data:`OPS`)."""
    if dtype not in C_TYPES or not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        return None
    gen = torch.Generator().manual_seed(0)
    buffers = [torch.rand(_TRACE_LENGTH, generator=gen, dtype=dtype) for _ in range(2 + len(names))]
    scalars = list(torch.rand(count, generator=gen, dtype=dtype).unbind())
    trace = _Trace(buffers, scalars, dtype)
    try:
        with torch.no_grad(), trace:
            module(*buffers, *scalars)
        stores = trace.stores(buffers)
    except Untranslatable:
        return None
    return _render(len(buffers), count, C_TYPES[dtype], trace, stores)


def _render(k: int, count: int, ctype: str, trace: _Trace, stores: list[str]) -> str:
    params = ", ".join(f"T* restrict b{i}" for i in range(k))
    loads = " ".join(f"const T x{i} = b{i}[i];" for i in range(k))
    scalars = " ".join(f"const double s{i} = s[{i}];" for i in range(count))
    lines = "\n    ".join([loads, *trace.inside, *stores])
    before = "\n  ".join([scalars, *trace.before])
    # the table's loop: the same statements, the gradient read where backward left each tensor
    # (never written: a rule that writes it has no table)
    table = not any(line.startswith("b1[") for line in stores)
    places = " ".join(f"T* restrict b{i} = B[{i}] + off[t];" for i in range(k) if i != 1)
    return f"""\
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <tgmath.h>
typedef {ctype} T;
#define K {k}
#define SCALARS {count}
#define PARALLEL_MIN {PARALLEL_MIN}
#define TABLE {int(table)}

static void body(int64_t n, {params}, const double* restrict s) {{
  {before}
  for (int64_t i = 0; i < n; i++) {{
    {lines}
  }}
}}

#if TABLE
static void table_body(int64_t lo, int64_t hi, const int64_t* restrict gp,
                       const int64_t* restrict off, const int64_t* restrict len, T** B,
                       const double* restrict s) {{
  {before}
  for (int64_t t = lo; t < hi; t++) {{
    const int64_t n = len[t];
    {places} const T* restrict b1 = (const T*)(intptr_t)gp[t];
    for (int64_t i = 0; i < n; i++) {{
      {lines}
    }}
  }}
}}

static void run_table(int64_t m, int64_t n, const int64_t* gp, const int64_t* off,
                      const int64_t* len, T** B, const double* s, int threads) {{
  int64_t parts = n / PARALLEL_MIN < threads ? n / PARALLEL_MIN : threads;
  if (parts > m) parts = m;
  if (parts <= 1) {{
    table_body(0, m, gp, off, len, B, s);
    return;
  }}
  #pragma omp parallel for num_threads(parts) schedule(static)
  for (int64_t j = 0; j < parts; j++)
    table_body(m * j / parts, m * (j + 1) / parts, gp, off, len, B, s);
}}
#endif

static void piece(int64_t n, T** b, const double* s, int threads) {{
  int64_t parts = n / PARALLEL_MIN < threads ? n / PARALLEL_MIN : threads;
  if (parts <= 1) {{
    body(n, {", ".join(f"b[{i}]" for i in range(k))}, s);
    return;
  }}
  int64_t step = (n / parts + 15) / 16 * 16;
  #pragma omp parallel for num_threads(parts) schedule(static)
  for (int64_t j = 0; j < parts; j++) {{
    int64_t lo = j * step, hi = lo + step < n ? lo + step : n;
    if (lo < hi) body(hi - lo, {", ".join(f"b[{i}] + lo" for i in range(k))}, s);
  }}
}}
{_WRAPPER}"""


#: the module's entry point, ``run(pieces, scalars, threads, table=None)``: its checks and calls
_WRAPPER = Path(__file__).with_name("generated_wrapper.c").read_text()


def compiler() -> str | None:
    """The C compiler: ``$CC``, else ``cc``, ``gcc`` or ``clang`` on the path."""
    found = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    return found or shutil.which("clang")


def command(out: Path, c_file: Path) -> list[str]:
    """The compiler's command line that builds ``c_file`` into the extension module ``out``."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC)")
    flags = FLAGS if sys.platform.startswith("linux") else [f for f in FLAGS if f != "-fopenmp"]
    extra = ["-undefined", "dynamic_lookup"] if sys.platform == "darwin" else []
    include = sysconfig.get_paths()["include"]
    return [cc, *flags, "-shared", "-fPIC", f"-I{include}", *extra, str(c_file), "-o", str(out)]


def key(text: str, cpu: str) -> str:
    """The cache key of a generated kernel: its source, the compiler and its options, the CPU
    (``-march=native``) and Python's C API."""
    parts = [text, str(compiler()), " ".join(FLAGS), cpu, sysconfig.get_config_var("EXT_SUFFIX")]
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:32]


def start_build(
    text: str, path: Path, buffers: int, count: int, dtype: torch.dtype
) -> subprocess.Popen:
    """Start a child process that compiles ``text`` (a kernel over ``buffers`` buffers of
    ``dtype`` and ``count`` scalars) into ``path`` (atomically), having first imported the
    module and run it on a small input (:data:`CHILD`: no torch in the child)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    c_file, tmp = scratch(path)
    c_file.write_text(text)
    item = torch.empty((), dtype=dtype).element_size()
    job = [str(c_file), str(tmp), str(path), str(buffers), str(count), str(item)]
    job += command(tmp, c_file)
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *job],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=errors,
    )
    proc.stderr = errors
    return proc


def scratch(path: Path) -> tuple[Path, Path]:
    """The C file and the module a build into ``path`` started by this process writes first
    (the child removes them; a child killed by a signal leaves them to its parent)."""
    stem = f".{path.stem}.{os.getpid()}"
    return path.with_name(f"{stem}.c"), path.with_name(f"{stem}.tmp.so")


CHILD = r"""
import importlib.machinery, importlib.util, os, subprocess, sys
c_file, tmp, path, k, count, item, *command = sys.argv[1:]
try:
    done = subprocess.run(command, capture_output=True, timeout=600)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        first = ([line for line in lines if "error" in line] or lines or ["?"])[0]
        sys.exit(f"{os.path.basename(command[0])} failed: {first}")
    loader = importlib.machinery.ExtensionFileLoader("gradwise_kernel", tmp)
    spec = importlib.util.spec_from_file_location("gradwise_kernel", tmp, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    buffer = lambda n, size: memoryview(bytearray(n * size)).cast("f" if size == 4 else "d")
    pieces = [tuple(buffer(64, int(item)) for _ in range(int(k)))]
    module.run(pieces, buffer(int(count), 8), 1)  # the scalars: doubles
    os.replace(tmp, path)
finally:
    for name in (c_file, tmp):
        if os.path.exists(name):
            os.unlink(name)
"""


def load(path: Path, names: tuple[str, ...]) -> Kernel:
    """The kernel in ``path``: one call updates all of a step's ``(param, grad, state)``
    targets (1-D CPU tensors, ``state`` by name), or, refusing one, none of them. Its scalars
    are doubles: the step's numbers as Python has them."""
    loader = importlib.machinery.ExtensionFileLoader("gradwise_kernel", str(path))
    spec = importlib.util.spec_from_file_location("gradwise_kernel", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    call, takes_table = module.run, bool(module.TABLE)

    def run(targets: list, scalars: Scalars) -> list:
        pieces, table = [], None
        for param, grad, state in targets:
            if isinstance(grad, Scattered):
                if takes_table and not pieces:  # read where backward left them
                    table = grad.table()
                    grad = None
                else:
                    grad = grad.gather()
            grad = grad if grad is None else grad.numpy()
            pieces.append((param.numpy(), grad, *(state[n].numpy() for n in names)))
        call(pieces, scalars.array, torch.get_num_threads(), table)
        return []

    return Kernel(run, torch.float64)

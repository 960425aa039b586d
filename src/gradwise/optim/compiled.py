"""Kernels compiled in this process by ``torch.compile``: the CUDA path (Inductor → Triton).

The same ``update()`` and rule as the CPU's ahead-of-time kernels (:mod:`kernels`), with the same
runtime scalars (:func:`kernel_args.split`), compiled where they run: on CUDA, loading an
AOTInductor package crashed the process (torch 2.11), while ``torch.compile``'s own path is the
one PyTorch users run every day. One call updates all of a step's pieces (the gathered small
tensors and each large gradient where backward left it); Inductor may launch them together
(:data:`COMBO_KERNELS`). A kernel is compiled once per process, when a step first asks for it
(the default path asks once a segment has trained for ``plans.COMPILE_AFTER_S``), and checked
against the eager update on small inputs laid out as the step's before it is used; Inductor's
cache on disk makes a later process's compile shorter.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gradwise.optim import graphs, kernel_args, kernels


def jit(
    update: Callable,
    rule: Callable,
    param: Tensor,
    grad: Tensor,
    state: dict,
    args: dict,
    pieces: int,
    *,
    missing: str,
) -> tuple[CompiledUpdate, list[float]] | None:
    """The in-process kernel for this update over ``pieces`` pieces of a segment, and the step's
    scalars; None where ``missing`` is ``SKIP`` and it is not compiled yet in this process.

    Its :meth:`CompiledUpdate.runner` is ``run(targets, values)``, with ``targets`` a list of
    ``pieces`` triples ``(param, grad, state)`` (1-D tensors; on CUDA, the small tensors'
    gathered gradients and each large tensor's gradient where backward left it): one call for
    all of them. Compiling takes seconds the first time on a machine, less once Inductor's
    cache holds it; it happens once per process, at the step that first asks for it. An error or
    a kernel that disagrees with the eager update raises (the caller turns kernels off)."""
    names = tuple(sorted(state))
    static, slots, values = kernel_args.split(args)
    dtypes = (param.dtype, grad.dtype, *(state[n].dtype for n in names))
    memo = ("jit", pieces, rule, update, names, repr(static), tuple(slots), param.device, dtypes)
    memo += (COMBO_KERNELS, scalar_places(param.device))
    kernel = kernels.kernel_for(memo)
    if kernel is None:
        if missing == kernels.SKIP:
            return None
        module = kernel_args.Update(update, rule, names, static, slots)
        kernel = kernels.keep(memo, _compile_checked(module, pieces, values, param.device, dtypes))
    return kernel, values


def scalar_places(device: torch.device) -> tuple[str, ...]:
    """Where a compiled kernel's scalars may live, in the order tried: 0-d CPU tensors (Inductor
    passes them to the GPU kernel as arguments: no copy, no wait) or the device (one small copy
    a step). A CUDA graph would bake CPU scalars' values in, so where steps are replayed as
    graphs (:mod:`graphs`) the device comes first."""
    return ("device", "cpu") if graphs.recorder(device) is not None else ("cpu", "device")


def _scalars_on(place: str, values: list[float], device: torch.device, dtype: torch.dtype):
    return kernel_args.scalar_tensors(
        values, torch.device("cpu") if place == "cpu" else device, dtype
    )


def _compile_checked(
    module: kernel_args.Update,
    pieces: int,
    values: list[float],
    device: torch.device,
    dtypes: tuple,
) -> CompiledUpdate:
    """``torch.compile`` of ``module`` applied to ``pieces`` pieces, checked against the eager
    update on small pieces laid out as a segment's are; the first place of the scalars
    (:data:`SCALAR_PLACES`) that compiles and agrees is kept."""
    width = 2 + len(module.names)
    scalar_type = kernel_args.scalar_dtype(dtypes[0])

    def inputs():
        """Pieces laid out as a segment's step lays them out (``Segment.pieces``), so that the
        step finds the kernel compiled for it: Dynamo guards on how each view relates to its
        base, and a check on other layouts would cost a second compile at the step. One piece:
        the whole parameter and state buffers, and the gradients gathered into a buffer of
        their own (a view of all of it). More: piece 0 at the start of the flat buffers with
        its gradient gathered so, the others later in the flat buffers with gradients of
        their own. Sizes differ, so that the compiled code is general in each length."""
        gen = torch.Generator().manual_seed(0)

        def rand(n: int, dtype: torch.dtype) -> Tensor:
            return torch.rand(n, generator=gen, dtype=dtype).to(device)

        sizes = [1000 + 48 * i for i in range(pieces)]
        starts = [sum(sizes[:i]) + 16 * i for i in range(pieces)]
        flat = [rand(starts[-1] + sizes[-1], d) for d in dtypes]
        tensors = []
        for i, (start, size) in enumerate(zip(starts, sizes)):
            for k, t in enumerate(flat):
                if k == 1:  # piece 0: the gathered buffer's view; else a gradient of its own
                    tensors.append(rand(size, t.dtype)[:size] if i == 0 else rand(size, t.dtype))
                else:
                    tensors.append(t if pieces == 1 else t[start : start + size])
        return tensors

    def eager(tensors, scalars):
        for i in range(pieces):
            module(*tensors[i * width : (i + 1) * width], *scalars)

    failure: BaseException | None = None
    for place in scalar_places(device):
        compiled = _compiled_function(module, pieces, width)
        try:
            ran, expected = inputs(), inputs()
            scalars = _scalars_on(place, values, device, scalar_type)
            with torch.no_grad():
                compiled(*ran, *scalars)
                eager(expected, scalars)
        except Exception as e:  # e.g. this torch cannot pass CPU scalars to a GPU kernel
            failure = e
            continue
        for a, b in zip(ran, expected):
            if not torch.allclose(a.double(), b.double(), rtol=1e-3, atol=1e-5, equal_nan=True):
                raise RuntimeError("the compiled kernel disagrees with the eager update")
        return CompiledUpdate(compiled, place, module.names, len(values), device, scalar_type)
    assert failure is not None
    raise failure


class CompiledUpdate:
    """A compiled function of a step's pieces (the module's docstring), whose scalars live at
    ``place``: ``"cpu"`` (0-d CPU tensors, refilled in place) or ``"device"`` (a device buffer,
    refilled by one copy a step, which lets a CUDA graph replay the step: :mod:`graphs`)."""

    def __init__(
        self,
        compiled: Callable,
        place: str,
        names: tuple[str, ...],
        count: int,
        device: torch.device,
        scalar_type: torch.dtype,
    ) -> None:
        self.compiled, self.place, self.names = compiled, place, names
        self.count, self.device, self.scalar_type = count, device, scalar_type

    def runner(self) -> Runner:
        """A way to run it for one segment of one optimizer, with its own scalars."""
        return Runner(self)


class Runner:
    """:class:`CompiledUpdate` for one segment: ``run(targets, values) -> how many targets it
    updated``, or, to record the call in a CUDA graph, :meth:`scalars` (outside the graph)
    then :meth:`call` (inside it). ``recordable``: whether its scalars live on the device and
    this device records graphs (:mod:`graphs`)."""

    def __init__(self, update: CompiledUpdate) -> None:
        self.compiled, self.names, self.scalar_type = (
            update.compiled,
            update.names,
            update.scalar_type,
        )
        if update.place == "cpu":  # 0-d CPU tensors, read when the kernel is launched
            self.held = kernel_args.Scalars(update.count, self.scalar_type)
            self.buffer, self.views = None, self.held.views
        else:
            self.held = None
            self.buffer = torch.zeros(update.count, dtype=self.scalar_type, device=update.device)
            self.views = self.buffer.unbind()
            self.staged = _Staging(update.count, self.scalar_type, update.device)
        self.recordable = self.buffer is not None and graphs.recorder(update.device) is not None

    def scalars(self, values: list[float]) -> None:
        """This step's scalars, where the compiled function reads them."""
        if self.held is not None:
            self.held.filled(values)
        elif values:
            self.staged.copy(values, self.buffer)

    def call(self, targets: list) -> int:
        names, dense = self.names, kernel_args.dense
        self.compiled(
            *[t for p, g, st in targets for t in (p, dense(g), *(st[n] for n in names))],
            *self.views,
        )
        return len(targets)

    def __call__(self, targets: list, values: list[float]) -> int:
        self.scalars(values)
        return self.call(targets)


class _Staging:
    """Host buffers for copying a step's scalars to the device without waiting for the GPU.
    On CUDA: a ring of pinned buffers, each refilled only once its last copy is done (an event
    recorded after the copy, long done by then: a step queues one copy and the ring holds 8).
    A copy from ordinary (pageable) memory may wait for the stream's queued work first, which
    would stall the training loop at every step."""

    RING = 8

    def __init__(self, count: int, dtype: torch.dtype, device: torch.device) -> None:
        self.pinned = device.type == "cuda"
        buffers = [torch.zeros(count, dtype=dtype) for _ in range(self.RING if self.pinned else 1)]
        self.buffers = [b.pin_memory() for b in buffers] if self.pinned else buffers
        self.arrays = [b.numpy() for b in self.buffers]
        self.events: list = [None] * len(self.buffers)
        self.next = 0

    def copy(self, values: list[float], to: Tensor) -> None:
        """``to.copy_(values)``, queued on the current stream."""
        i = self.next
        self.next = (i + 1) % len(self.buffers)
        if self.events[i] is not None:
            self.events[i].synchronize()
        self.arrays[i][:] = values
        to.copy_(self.buffers[i], non_blocking=True)
        if self.pinned:
            if self.events[i] is None:
                self.events[i] = torch.cuda.Event()
            self.events[i].record()


def _compiled_function(module: kernel_args.Update, pieces: int, width: int) -> Callable:
    """``torch.compile`` of a function of its own that runs ``module`` on each piece.

    Its own: Dynamo keeps its compiled code and guards on the function's code object, with a
    limit of 8 per code object. Each kernel gets a new code object, so that many kernels (rules,
    flags, piece counts) never reach that limit (Dynamo would then refuse to compile). The code
    is attributed to this file: torch 2.11 treats code from a ``<...>`` file name as not its
    user's and compiles it through one shared wrapper, whose code object then hits the limit
    (seen on an H200: the ninth kernel failed)."""

    def run(tensors):
        scalars = tensors[pieces * width :]
        for i in range(pieces):
            module(*tensors[i * width : (i + 1) * width], *scalars)

    namespace: dict = {"run": run}
    code = "def kernel(*tensors):\n    run(tensors)\n"
    exec(compile(code, __file__, "exec"), namespace)  # noqa: S102
    options = {"combo_kernels": True} if COMBO_KERNELS and pieces > 1 else None
    return torch.compile(namespace["kernel"], fullgraph=True, dynamic=True, options=options)


#: whether Inductor may launch a step's pieces together (its "combo kernels") instead of one
#: launch per piece. On an H200 (torch 2.11), ResNet-18's Adam step with gradients as backward
#: leaves them (14 pieces) took 0.38 ms with them against 0.52 ms without: launches cost
#: ~10 µs each there, and the step is bound by the CPU, not the GPU
COMBO_KERNELS = True

"""A segment's kernel plan: which fused kernel runs its flat update, chosen once for a set of
options (later steps only pass the scalars' new values), and on CUDA its graphs.

The choice (:func:`choose`): ``fused=False`` never a kernel; ``True`` always (waiting for its
build or compile if needed); ``None`` (the default) for a segment of ``KERNEL_MIN_NUMEL``
elements or more: a generated CPU kernel (built at once if need be, ~0.4 s), an ahead-of-time
one when it is on disk or, for a segment of ``AUTO_BUILD_NUMEL`` or more, once a build started
in the background has put it there, and on CUDA a kernel compiled in the process once the
segment has trained for :data:`COMPILE_AFTER_S` seconds. Without a kernel, the eager update runs.

On CUDA the whole step (gathering the small tensors' gradients, then the compiled update) is
replayed as a CUDA graph once its gradients lie where an earlier step's did (:mod:`graphs`,
:func:`bound_step`).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from gradwise.optim import compiled, engine, graphs, kernel_args, kernels

#: Where kernels are compiled in the process (CUDA: ``torch.compile``, :mod:`compiled`), the
#: default path (``fused=None``) compiles a segment's kernel only once the segment has asked for
#: one for this many seconds, running the eager update meanwhile. A compile costs seconds in the
#: foreground: importing Dynamo and Inductor (~4 s on a 2-core CPU), tracing, and, the first
#: time on a machine, Triton's build. A 1,000-step ``fit()`` of a 1.3M-parameter MLP on an
#: H200 took 19.4 s when it compiled at its second step, against 12.0 s for torch fused (21.2
#: against 9.2 s with the caches warm): a short run never earns a compile back. A longer run
#: pays for it at most about once more than it has run so far (a ski rental), then runs the
#: kernel. ``fused=True`` compiles at once, as do benchmarks of a long run's steady state
#: (:func:`steady_state`).
COMPILE_AFTER_S = 10.0


@contextlib.contextmanager
def steady_state():
    """Within it, kernels are compiled at a segment's first ask (``COMPILE_AFTER_S`` is 0): for
    benchmarks and checks of a long run's steady state, which time or test the kernel."""
    global COMPILE_AFTER_S
    previous, COMPILE_AFTER_S = COMPILE_AFTER_S, 0.0
    try:
        yield
    finally:
        COMPILE_AFTER_S = previous


@dataclass
class Plan:
    """The kernel chosen for a segment's step of a given number of pieces."""

    options: list  # the group's options it was chosen for
    signature: tuple  # what of them shapes the kernel (:func:`signature`)
    flags: tuple  # the step's coefficients baked into the kernel (:func:`kernel_args.flags`)
    run: Callable[[list[float], list], list]  # run(values, targets) -> what it left to eager
    slots: list[tuple]  # where the runtime scalars are in the update's arguments
    runner: compiled.Runner | None = None  # CUDA: the compiled kernel, for graphs
    replayer: graphs.Replayer | None = None  # CUDA: the step's graphs


def choose(
    seg: engine.Segment,
    group: dict,
    pieces: int,
    args: Callable[[], dict],
    rule: Callable,
    update: Callable,
) -> Callable[[list], list] | None:
    """The kernel for this step's flat update over ``pieces`` ``(param, grad, state)`` targets,
    as ``kernel(targets) -> the targets left to the eager update`` (a ``functools.partial`` of
    its plan's ``run`` with this step's scalars), or None: the eager update. ``args()`` gives
    ``update``'s keyword arguments for this step."""
    options, step_args = [value for key, value in group.items() if key != "params"], args()
    plan = seg.kernel_plans.get(pieces)
    flags = kernel_args.flags(step_args)
    if plan is not None and plan.flags != flags:
        plan = None  # a flag of the step changed (ASGD's average): another kernel
    if plan is not None and plan.options == options and kernels.available(seg.param.device.type):
        # the usual step: the kernel chosen for these options, with this step's scalars
        return functools.partial(plan.run, kernel_args.values_at(step_args, plan.slots))
    fused, numel, device = group.get("fused"), seg.param.numel(), seg.param.device
    if fused is False or numel < 2:
        return None
    if fused is None and numel < engine.KERNEL_MIN_NUMEL:
        return None
    if not kernels.supports(device):
        if fused is True:
            kernels.unsupported(device)
        return None
    if not kernels.available(device.type):
        if fused is True or numel >= engine.AUTO_BUILD_NUMEL:
            kernels.unproven(device.type)
        return None
    if fused is True:
        missing = kernels.WAIT
    elif numel >= engine.AUTO_BUILD_NUMEL and _compile_due(seg, device):
        missing = kernels.START
    else:
        missing = kernels.SKIP
    # a gradient like the step's: the gradient buffer where there is one (CUDA, or views of it),
    # else the parameters' (of the same dtype and device)
    grad = seg.grad if seg.grad is not None else seg.param
    if plan is not None and plan.signature == signature(group):
        plan.options = options  # a new learning rate, say: the same kernel, new scalars
        return functools.partial(plan.run, kernel_args.values_at(step_args, plan.slots))
    try:
        if kernels.compiled_here(device):
            found = compiled.jit(
                update, rule, seg.param, grad, seg.state, step_args, pieces, missing=missing
            )
        else:
            found = kernels.get(
                update, rule, seg.param, grad, seg.state, step_args, missing=missing
            )
    except Exception as e:  # a package that will not load, a compile that fails, ...
        kernels.disable(e)
        return None
    if found is None:
        return None
    kernel, values = found
    slots = kernel_args.split(step_args)[1]
    if kernels.compiled_here(device):
        try:  # its scalars' buffers: pinned host memory, a device buffer, events
            runner = kernel.runner()
        except Exception as e:
            kernels.disable(e)
            return None
        plan = _compiled_plan(seg, runner, options, signature(group), flags, slots)
    else:
        plan = Plan(options, signature(group), flags, _on_cpu(kernel, len(values)), slots)
    seg.kernel_plans[pieces] = plan  # chosen once for these options
    return functools.partial(plan.run, values)


def _compile_due(seg: engine.Segment, device: torch.device) -> bool:
    """Whether a missing kernel may be made now (see :data:`COMPILE_AFTER_S`): always where
    builds run in the background (the CPU); where kernels are compiled in the process, once the
    segment has asked for one for ``COMPILE_AFTER_S`` seconds."""
    if not kernels.compiled_here(device):
        return True
    now = time.monotonic()
    if seg.kernel_asked is None:
        seg.kernel_asked = now
    return now - seg.kernel_asked >= COMPILE_AFTER_S


def _compiled_plan(seg, runner: compiled.Runner, options, sig, flags, slots) -> Plan:
    def run(values: list[float], targets: list) -> list:
        if any(param.numel() < 2 for param, _, _ in targets):
            return targets  # a 1-element piece: Dynamo would specialize on it; eager
        try:
            runner(targets, values)
        except Exception as e:
            kernels.disable(e)
            return targets
        return []

    record = graphs.recorder(seg.param.device) if runner.recordable else None
    # graphs only where every piece goes through the kernel (none is left to the eager update)
    replayer = graphs.Replayer(record) if record and _pieces_fit(seg) else None
    return Plan(options, sig, flags, run, slots, runner, replayer)


def _on_cpu(kernel: kernels.Kernel, count: int) -> Callable:
    scalars = kernel_args.Scalars(count, kernel.scalar_dtype)

    def run(values: list[float], targets: list) -> list:
        scalars.filled(values)
        try:
            return kernel.run(targets, scalars)
        except Exception as e:  # e.g. an input the kernel was not built for: nothing updated
            kernels.disable(e)
            return targets

    return run


def targets(seg: engine.Segment, pieces: list) -> list[tuple[Tensor, Tensor, dict]]:
    """``(param, grad, state)`` for each ``(where, grad)`` piece of the flat buffers."""
    found = []
    for where, grad in pieces:
        param, state = seg.buffers_at(where)
        found.append((param, grad, state))
    return found


def bound_step(seg: engine.Segment, views: bool, runner: compiled.Runner) -> Callable[[], None]:
    """The step's launches with this step's gradient tensors bound, as a CUDA graph binds
    them when it is recorded: the gather of the small tensors' gradients, then the kernel."""
    if views:
        return functools.partial(runner.call, targets(seg, seg.pieces(views=True)))
    gather = seg.gatherer()

    def run() -> None:
        runner.call(targets(seg, gather()))

    return run


def _pieces_fit(seg: engine.Segment) -> bool:
    """Whether every piece of the segment's step has the 2+ elements the compiled kernel
    takes (a 1-element piece is updated eagerly)."""
    sizes = [seg.small] if seg.small else []
    sizes += [where.stop - where.start for _, where in seg.large]
    return bool(sizes) and min(sizes) >= 2 and seg.param.numel() >= 2


def signature(group: dict) -> tuple:
    """What of a group's options shapes its kernel: flags, dtypes, and which numbers are zero
    (the numbers themselves are the kernel's runtime scalars, see ``kernel_args.split``)."""
    return tuple((key, _shape(value)) for key, value in group.items() if key != "params")


def _shape(value):
    if isinstance(value, bool) or value is None or isinstance(value, str | torch.dtype):
        return value
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, tuple | list):
        return tuple(map(_shape, value))
    return (type(value).__name__, id(value))  # e.g. a tensor: never mistaken for another

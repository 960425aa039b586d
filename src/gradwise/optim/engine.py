"""The engine: applies an update rule to a whole param group with a handful of tensor operations.

A rule (``gradwise.optim.adam.adam``, ...) is the math of one algorithm, written once for one
tensor. The engine decides *what* it is applied to:

* **Flat path.** A group's parameters of one device and dtype (a :class:`Segment`) become views
  into one contiguous buffer; so does every state tensor (``exp_avg`` ...) and the per-parameter
  ``step`` counters. One call of the rule then updates every tensor of the segment, whatever their
  number. Gradients prepared by ``zero_grad(set_to_none=False)`` are views into a flat gradient
  buffer too, so ``loss.backward()`` accumulates into it and no copy is needed; other gradients are
  gathered into it with one multi-tensor copy.
* **Per-tensor path.** Where the flat view cannot hold (a parameter whose ``.grad`` is ``None`` on
  this step, parameters whose step counts differ, a state not yet created, a sparse gradient, a
  tensor subclass such as a DTensor), the same rule runs on each tensor on its own. The results
  are the same; only the speed differs.

The per-parameter ``self.state[p]`` dicts always hold tensors in PyTorch's layout (in the flat
path they are views into the segment's buffers), so ``state_dict()`` moves either way between
gradwise and ``torch.optim``.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gradwise.optim import native

_GRAD = operator.attrgetter("grad")


def _is_plain(t: Tensor) -> bool:
    """A dense strided tensor of the base class (no DTensor or other subclass)."""
    return type(t) in (torch.Tensor, torch.nn.Parameter) and t.layout == torch.strided


@dataclass
class Segment:
    """The parameters of one param group that share a device and a dtype.

    ``flat`` is None until every parameter has a state (after its first update); then ``param``,
    ``grad``, ``state[name]`` and ``steps`` are flat buffers and the per-parameter tensors are views
    into them.
    """

    params: list[Tensor]
    flattenable: bool
    flat: bool = False
    param: Tensor | None = None
    grad: Tensor | None = None
    grad_views: list[Tensor] = field(default_factory=list)
    state: dict[str, Tensor] = field(default_factory=dict)
    steps: Tensor | None = None
    step: int | None = None  # the common step count, None when unknown or not uniform
    ptrs: list[int] = field(default_factory=list)
    # the native layout check and its arguments (see :mod:`native`), when it serves this segment;
    # ``native_arrays`` keeps alive the arrays the arguments point into
    native_check: Callable | None = None
    native_args: tuple = ()
    native_arrays: tuple[Tensor, ...] = ()

    #: what :meth:`layout` returns
    MOVED, FLAT, VIEWS = 0, 1, 2

    def layout(self) -> int:
        """``MOVED`` when a parameter no longer lives in the flat buffer (``model.to(...)``,
        ``p.data = ...``); else ``VIEWS`` when every ``p.grad`` is its view into the flat
        gradient buffer (the usual case after ``zero_grad(set_to_none=False)``), else ``FLAT``."""
        if self.native_check is not None:
            return self.native_check(*self.native_args)
        if not self.still_flat():
            return Segment.MOVED
        return Segment.VIEWS if self.grads_are_views() else Segment.FLAT

    def still_flat(self) -> bool:
        """False when a parameter no longer lives in the flat buffer (``model.to(...)``, ...)."""
        return list(map(Tensor.data_ptr, self.params)) == self.ptrs

    def grads_are_views(self) -> bool:
        """True when every ``p.grad`` is its view into the flat gradient buffer."""
        return all(map(operator.is_, map(_GRAD, self.params), self.grad_views))

    def all_have_grads(self) -> bool:
        return all(map(operator.is_not, map(_GRAD, self.params), itertools.repeat(None)))


def split_group(params: list[Tensor]) -> list[Segment]:
    """Partition a group's params by (device, dtype), keeping their order within each segment."""
    by_key: dict[tuple, list[Tensor]] = {}
    for p in params:
        by_key.setdefault((p.device, p.dtype, _is_plain(p)), []).append(p)
    return [Segment(ps, flattenable=plain) for (_, _, plain), ps in by_key.items()]


def flatten(seg: Segment, states: dict, names: list[str], has_step: bool) -> None:
    """Move a segment's params, states and step counters into flat buffers (values unchanged)."""
    params = seg.params
    numels = [p.numel() for p in params]
    total = sum(numels)
    like = params[0]
    seg.param = torch.empty(total, dtype=like.dtype, device=like.device)
    seg.grad = torch.zeros(total, dtype=like.dtype, device=like.device)
    views = []
    for name in names:
        dtype = states[params[0]][name].dtype
        buf = torch.empty(total, dtype=dtype, device=like.device)
        seg.state[name] = buf
    offset = 0
    for p, n in zip(params, numels):
        view = seg.param[offset : offset + n].view_as(p)
        view.copy_(p.detach())
        p.data = view
        views.append(seg.grad[offset : offset + n].view_as(p))
        for name in names:
            v = seg.state[name][offset : offset + n].view_as(p)
            v.copy_(states[p][name])
            states[p][name] = v
        offset += n
    seg.grad_views = views
    if has_step:
        old = [states[p]["step"] for p in params]
        seg.steps = torch.stack([s.detach().reshape(()) for s in old]).to(old[0].dtype)
        for i, p in enumerate(params):
            states[p]["step"] = seg.steps[i]
        seg.step = None
    else:
        seg.steps, seg.step = None, 1  # every parameter has had its first update
    seg.ptrs = [p.data_ptr() for p in params]
    seg.native_check, seg.native_args, seg.native_arrays = None, (), ()
    check = native.layout_check() if len(params) >= native.MIN_PARAMS else None
    if check is not None:
        # TensorImpl addresses: the optimizer holds the params and the views, so they stay valid
        arrays = tuple(
            torch.tensor(values, dtype=torch.int64)
            for values in ([p._cdata for p in params], seg.ptrs, [v._cdata for v in views])
        )
        seg.native_arrays = arrays
        seg.native_args = (len(params), *(a.data_ptr() for a in arrays))
        seg.native_check = check
    seg.flat = True


#: elements per piece of a flat buffer that the rule is applied to at once (see :func:`chunks`)
CHUNK = 1 << 18


def chunks(n: int, device: torch.device, size: int = CHUNK) -> list[slice]:
    """Slices covering ``range(n)``: on the CPU, pieces of ``size`` elements; elsewhere, one.

    On the CPU the rule's temporaries (e.g. Adam's denominator) are then chunk-sized: they come
    from the allocator's cache instead of fresh pages, and the rule's several passes over a piece
    hit the CPU cache instead of main memory. On a GPU every piece costs a kernel launch per
    operation and the caches are not the point: one piece (measured on an H200, SGD with momentum
    on 16M parameters: 1.97 ms a step in 256K-element pieces).
    """
    if device.type != "cpu":
        return [slice(0, n)]
    return [slice(i, min(i + size, n)) for i in range(0, n, size)] or [slice(0, 0)]


def gather_grad(seg: Segment) -> Tensor:
    """The segment's gradients copied into its flat gradient buffer (one multi-tensor copy), for
    gradients that are not already its views."""
    torch._foreach_copy_(seg.grad_views, [p.grad for p in seg.params])
    return seg.grad


def uniform_step(seg: Segment) -> int | None:
    """The step count shared by every parameter of the segment, or None if they differ."""
    if seg.steps is None:
        return seg.step
    if seg.step is None:
        first = seg.steps[0]
        if bool((seg.steps == first).all()):
            seg.step = int(first.item())
    return seg.step


Rule = Callable[..., None]

#: ``fused=None`` runs a group's update as a fused kernel (:mod:`kernels`) when the group has at
#: least ``KERNEL_MIN_NUMEL`` elements and the kernel is already on disk; it builds one (~10-30 s,
#: once per machine) only for groups of at least ``AUTO_BUILD_NUMEL`` elements, where that pays
#: for itself within a typical 1,000-step run. Below ``KERNEL_MIN_NUMEL`` the default stays
#: eager even with a kernel on disk: a cached Adam kernel would save ~15 µs a step at 17K
#: elements (38 against 54 µs), but its float32 rounding differs from PyTorch's in the last bits,
#: and a small model's results should not depend on what happens to be cached on the machine.
KERNEL_MIN_NUMEL = 1 << 16
AUTO_BUILD_NUMEL = 1 << 24


def sub_scaled_(param: Tensor, x: Tensor, scale: float | Tensor) -> None:
    """``θ ← θ − scale·x`` in place; ``scale`` is a number (eager) or a 0-d tensor (compiled)."""
    if isinstance(scale, Tensor):
        param.sub_(x * scale)
    else:
        param.add_(x, alpha=-scale)


def sub_scaled_ratio_(param: Tensor, num: Tensor, den: Tensor, scale: float | Tensor) -> None:
    """``θ ← θ − scale·num/den`` in place, as ``sub_scaled_`` for its ``scale``."""
    if isinstance(scale, Tensor):
        param.sub_(num.mul(scale).div_(den))
    else:
        param.addcdiv_(num, den, value=-scale)

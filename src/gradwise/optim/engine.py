"""The engine: applies an update rule to a whole param group with a handful of tensor operations.

A rule (``gradwise.optim.adam.adam``, ...) is the math of one algorithm, written once for one
tensor. The engine decides *what* it is applied to:

* **Flat path.** A group's parameters of one device and dtype (a :class:`Segment`) become views
  into one contiguous buffer; so does every state tensor (``exp_avg`` ...) and the per-parameter
  ``step`` counters. One call of the rule then updates every tensor of the segment, whatever their
  number. Gradients prepared by ``zero_grad(set_to_none=False)`` are views into a flat gradient
  buffer too, so ``loss.backward()`` accumulates into it and no copy is needed. Otherwise (the
  default ``zero_grad()``) a large tensor's gradient is used where backward left it; the small
  tensors' gradients are gathered into one buffer, or, for a generated CPU kernel, read where
  backward left them through a table of their addresses (:meth:`Segment.gradient_pieces`).
* **Parts.** Parameters without a gradient at a step (a frozen layer handed to the optimizer)
  or whose step counts came apart are parted into segments of their own
  (``Optimizer._parted``, :func:`layout.part`), each flat from then on.
* **Per-tensor path.** Where the flat view cannot hold (a state not yet created, a sparse
  gradient, a tensor subclass such as a DTensor, the step that parts a segment), the same rule
  runs on each tensor on its own. The results are the same; only the speed differs.

The per-parameter ``self.state[p]`` dicts always hold tensors in PyTorch's layout (in the flat
path they are views into the segment's buffers), so ``state_dict()`` moves either way between
gradwise and ``torch.optim``.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gradwise.optim import kernel_args, native

_GRAD = operator.attrgetter("grad")


def _is_plain(t: Tensor) -> bool:
    """A dense strided real tensor of the base class (no DTensor or other subclass; a complex
    parameter is updated per tensor, as its real and imaginary parts)."""
    return (
        type(t) in (torch.Tensor, torch.nn.Parameter)
        and t.layout == torch.strided
        and not t.is_complex()
    )


#: the devices whose segments keep their gather buffer from one step to the next (see
#: :meth:`Segment.release_gather_buffer`)
GATHER_KEPT_ON = ("cpu",)

#: tensors of at least this many elements are updated where backward left their gradient (no
#: copy); smaller ones have theirs gathered into one buffer and are updated together
DIRECT_NUMEL = 1 << 16


@dataclass
class Segment:
    """The parameters of one param group that share a device and a dtype.

    ``flat`` is False until every parameter has a state (after its first update); then ``param``,
    ``state[name]`` and ``steps`` are flat buffers and the per-parameter tensors are views into
    them. In the buffers, the parameters under :data:`DIRECT_NUMEL` elements come first
    (``small`` elements in all), the larger ones after them; parameter ``i`` is at
    ``slices[i]``. The largest part of a parted segment keeps its buffers, with gaps of zeros
    where the other parts' tensors were (:func:`layout.part`), as between aligned tensors.

    ``grad`` is the gradient buffer: None until a step gathers the small tensors' gradients
    (:meth:`gather_buffer`: the first ``small`` elements only; a generated CPU kernel reads them
    where they lie instead), or until :meth:`use_grad_views` makes it whole for
    ``zero_grad(set_to_none=False)``, whose gradients are then its views (``grad_views``) and
    need no copy at all. Off the CPU a gather buffer lives for one step only
    (:meth:`release_gather_buffer`).
    """

    params: list[Tensor]
    flattenable: bool
    flat: bool = False
    param: Tensor | None = None
    grad: Tensor | None = None
    whole_grad: bool = False  # whether ``grad`` covers every parameter, not only the small ones
    grad_views: list[Tensor | None] = field(default_factory=list)
    slices: list[slice] = field(default_factory=list)
    small: int = 0
    small_params: list[Tensor] = field(default_factory=list)
    small_index: list[int] = field(default_factory=list)  # their indices in ``params``
    small_views: list[Tensor] = field(default_factory=list)
    large: list[tuple[Tensor, slice]] = field(default_factory=list)
    state: dict[str, Tensor] = field(default_factory=dict)
    steps: Tensor | None = None
    step: int | None = None  # the common step count, None when unknown or not uniform
    # per-parameter 0-d scalar state (NAdam's mu_product, ASGD's eta and mu), one element per
    # parameter, each parameter's state a view; the flat path runs only while all are equal
    scalar_state: dict[str, Tensor] = field(default_factory=dict)
    ptrs: list[int] = field(default_factory=list)
    # for the native helpers (see :mod:`native`), which serve segments of many tensors: ``ptrs``
    # and the small tensors' offsets in ``grad``, as int64 tensors
    uses_native: bool = False
    ptr_array: Tensor | None = None
    small_offsets: Tensor | None = None
    # the small tensors' gradients' addresses (filled each step), offsets and lengths: the table
    # a generated kernel reads them through (see gradient_pieces)
    grad_table: tuple[Tensor, Tensor, Tensor] | None = None
    # the optimizer's chosen kernel for a step of this many pieces (see Optimizer._kernel)
    kernel_plans: dict[int, Any] = field(default_factory=dict)  # pieces -> plans.Plan
    # views of the flat buffers, by (start, stop): made once per layout (see buffers_at)
    views_at: dict[tuple[int, int], tuple[Tensor, dict[str, Tensor]]] = field(default_factory=dict)
    # before the first step of a segment without state: where each parameter's state goes
    # (id -> slice), the buffers' length, and the state buffers made so far (see place_state)
    fresh_slices: dict[int, slice] | None = None
    fresh_length: int = 0
    fresh_state: dict[str, Tensor] = field(default_factory=dict)
    # when (time.monotonic()) a kernel was first asked for: see plans.COMPILE_AFTER_S
    kernel_asked: float | None = None

    #: what :meth:`layout` returns
    MOVED, FLAT, VIEWS = 0, 1, 2

    def layout(self) -> int:
        """``MOVED`` when a parameter no longer lives in the flat buffer (``model.to(...)``,
        ``p.data = ...``); else ``VIEWS`` when every ``p.grad`` is its view into the flat
        gradient buffer (the usual case after ``zero_grad(set_to_none=False)``), else ``FLAT``."""
        helpers = native.helpers() if self.uses_native else None
        if helpers is not None:
            return helpers.layout(self.params, self.ptr_array, self.grad_views)
        if not self.still_flat():
            return Segment.MOVED
        return Segment.VIEWS if self.grads_are_views() else Segment.FLAT

    def still_flat(self) -> bool:
        """False when a parameter no longer lives in the flat buffer (``model.to(...)``, ...)."""
        return list(map(Tensor.data_ptr, self.params)) == self.ptrs

    def grads_are_views(self) -> bool:
        """True when every ``p.grad`` is its view into the flat gradient buffer (never before
        :meth:`use_grad_views` made them: a gradient of None is no view)."""
        return self.whole_grad and all(map(operator.is_, map(_GRAD, self.params), self.grad_views))

    def grads_placed_elsewhere(self) -> bool:
        """Whether a gradient is a view into another owner's buffer (DDP's
        ``gradient_as_bucket_view=True`` buckets, which its all-reduce reads): then gradients
        stay where their owner put them."""
        ours = self.grad if self.whole_grad else None
        return any(
            p.grad is not None and p.grad._is_view() and p.grad._base is not ours
            for p in self.params
        )

    def any_grad(self) -> bool:
        return any(map(operator.is_not, map(_GRAD, self.params), itertools.repeat(None)))

    def all_have_grads(self) -> bool:
        return all(map(operator.is_not, map(_GRAD, self.params), itertools.repeat(None)))

    def use_grad_views(self) -> None:
        """Make ``grad`` whole (zeros), with a view for every parameter, for
        ``zero_grad(set_to_none=False)``; a no-op once it is."""
        if self.whole_grad:
            return
        like = self.param
        self.grad = torch.zeros(like.numel(), dtype=like.dtype, device=like.device)
        self.whole_grad = True
        self.grad_views = [laid_out_as(self.grad[sl], p) for p, sl in zip(self.params, self.slices)]
        small = {id(p) for p in self.small_params}
        self.small_views = [v for p, v in zip(self.params, self.grad_views) if id(p) in small]

    def buffers_at(self, where: slice) -> tuple[Tensor, dict[str, Tensor]]:
        """The parameter and state buffers over ``where`` (the whole buffers, or views of them
        made once)."""
        if where.start == 0 and where.stop == self.param.numel():
            return self.param, self.state
        key = (where.start, where.stop)
        found = self.views_at.get(key)
        if found is None:
            state = {n: b[where] for n, b in self.state.items()}
            found = self.views_at[key] = (self.param[where], state)
        return found

    def gradient_pieces(self, scattered: bool = False) -> list[tuple[slice, Any]] | None:
        """For a step on gradients that are not (all) views of ``grad``: where in the flat
        buffers each piece is, and its gradient; None if a gradient is missing. Each large
        tensor's gradient is used where it lies. The small tensors' gradients are gathered into
        ``grad`` (one ``memcpy`` each natively, else one multi-tensor copy), or, if
        ``scattered`` and the native helpers can vouch for them, left where they are: a
        :class:`kernel_args.Scattered` (see :func:`kernel_args.dense`)."""
        pieces = []
        if self.small:
            grad = self._scattered() if scattered else None
            if grad is None and (grad := self._gathered()) is None:
                return None
            pieces.append((slice(0, self.small), grad))
        for p, sl in self.large:
            g = p.grad
            if g is None or g.layout != torch.strided:
                return None
            pieces.append((sl, _flat(g, p)))
        return pieces

    def _gathered(self) -> Tensor | None:
        """The small tensors' gradients copied into ``grad``: its first ``small`` elements;
        None if one is missing or sparse."""
        helpers = native.helpers() if self.uses_native else None
        buffer = self.gather_buffer()
        if helpers is None or not helpers.gather(self.small_params, self.small_offsets, buffer):
            grads = list(map(_GRAD, self.small_params))
            if not all(map(operator.is_not, grads, itertools.repeat(None))):
                return None
            if any(g.layout != torch.strided for g in grads):
                return None  # a sparse gradient: the per-tensor path
            torch._foreach_copy_(self.gather_views(), grads)
        return self._small_piece()[1]

    def _scattered(self) -> kernel_args.Scattered | None:
        """The small tensors' gradients where backward left them, their addresses in
        ``grad_table``; None where the native helpers are not here or do not vouch for every
        one (defined, dense, contiguous, on the CPU, of the parameter's dtype and size)."""
        on_cpu = self.uses_native and self.param.device.type == "cpu"  # CUDA: always gathered
        helpers = native.helpers() if on_cpu else None
        addresses = self.grad_table[0]
        if helpers is None or not helpers.pointers(self.small_params, self.param, addresses):
            return None
        return kernel_args.Scattered(self._gathered, self._table)

    def _table(self) -> tuple:
        """``grad_table`` for a kernel that reads it: the gather buffer (an eager step's, the
        first one's) is no longer needed, and goes."""
        if not self.whole_grad:
            self.grad, self.small_views = None, []
        return tuple(t.numpy() for t in self.grad_table)

    def pieces(self, views: bool, scattered: bool = False) -> list[tuple[slice, Any]] | None:
        """The step's pieces: the whole buffers when the gradients are views of ``grad``,
        else :meth:`gradient_pieces`."""
        if views:  # a view of all of it, laid out as gathered gradients are: one compile
            n = self.param.numel()
            return [(slice(0, n), self.grad[:n])]
        return self.gradient_pieces(scattered)

    def _small_piece(self) -> tuple[slice, Tensor]:
        return slice(0, self.small), self.gather_buffer()[: self.small]

    def gather_buffer(self) -> Tensor:
        """``grad``, made at its first use: a CPU segment whose kernel reads the small tensors'
        gradients where they lie (:meth:`gradient_pieces`) never needs one, and then holds no
        second copy of them. Zeros: the alignment gaps between the tensors get zero gradients."""
        if self.grad is None:
            like = self.param
            self.grad = torch.zeros(self.small, dtype=like.dtype, device=like.device)
        return self.grad

    def gather_views(self) -> list[Tensor]:
        """Each small tensor's place in :meth:`gather_buffer`, shaped as the tensor (made once
        per buffer: a replayed step, which needs only the buffer's address, makes none)."""
        if not self.small_views and self.small_index:
            buffer = self.gather_buffer()
            self.small_views = [
                laid_out_as(buffer[self.slices[i]], self.params[i]) for i in self.small_index
            ]
        return self.small_views

    def release_gather_buffer(self) -> None:
        """After a step replayed as a CUDA graph: the gather buffer goes back to the device's
        caching allocator, so that the next forward and backward may use its memory (it would
        otherwise add its size to the iteration's peak, which is in backward). The next step
        asks for the same size at the same point of the iteration and gets the same block, so
        its address, which the graph bakes in and its key holds (see
        ``Optimizer._step_replayed``), repeats; a replay needs the buffer only, not its views
        (:meth:`gather_views`, ~5 µs each to make). On the CPU the buffer stays: the gather
        there is a fallback, and a kernel reads the gradients where they lie."""
        if self.small and not self.whole_grad and self.param.device.type not in GATHER_KEPT_ON:
            self.grad, self.small_views = None, []

    def gatherer(self) -> Callable[[], list[tuple[slice, Tensor]]]:
        """:meth:`gradient_pieces` for a step recorded as a CUDA graph: a function that gathers
        the small tensors' gradients of this step (the tensors bound now, as a graph binds
        them) and returns the pieces. Every gradient must be there and dense."""
        small = list(map(_GRAD, self.small_params))
        large = [(where, p.grad, p) for p, where in self.large]
        views, piece = (self.gather_views(), self._small_piece()) if self.small else ([], None)

        def gather() -> list[tuple[slice, Tensor]]:
            if piece is not None:
                torch._foreach_copy_(views, small)
            return ([piece] if piece is not None else []) + [(w, _flat(g, p)) for w, g, p in large]

        return gather


def each_tensor(seg: Segment, param: Tensor, grad: Any, state: dict) -> list[tuple]:
    """A step's target ``(param, grad, state)`` for an eager update: a piece whose small
    tensors' gradients are :class:`kernel_args.Scattered` (where backward left them) as one
    target per tensor, each gradient read where it lies, so that no gather buffer is made (the
    first step's update; from the second a kernel reads them through their addresses). The
    rules are elementwise, so the results are the same. Any other target: itself."""
    if not isinstance(grad, kernel_args.Scattered):
        return [(param, grad, state)]
    found = []
    for i in seg.small_index:  # the piece starts at 0: the small tensors' own slices
        where = seg.slices[i]
        views = {name: buffer[where] for name, buffer in state.items()}
        p = seg.params[i]
        found.append((param[where], _flat(p.grad, p), views))
    return found


def laid_out_as(piece: Tensor, p: Tensor) -> Tensor:
    """A 1-D piece of a flat buffer (``p.numel()`` elements) as a tensor of ``p``'s shape, laid
    out as ``p`` is: with ``p``'s strides where its elements fill their memory in another order
    than row-major (``channels_last``), so that a parameter moved into the buffer keeps its
    memory format, and the buffer holds every tensor of it (state, gradient) in that order."""
    return piece.as_strided(p.shape, p.stride()) if _permuted(p) else piece.view_as(p)


def _permuted(t: Tensor) -> bool:
    """Whether ``t``'s elements fill ``t.numel()`` consecutive places of memory, in an order
    other than row-major (``channels_last``)."""
    if t.is_contiguous():
        return False
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda each: each[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def _flat(grad: Tensor, param: Tensor) -> Tensor:
    """A gradient as 1-D, its elements in the order its parameter's lie in the flat buffers
    (:func:`laid_out_as`): a view where it is laid out as they are, else a copy."""
    if not _permuted(param):
        return grad.view(-1) if grad.is_contiguous() else grad.reshape(-1)
    if grad.stride() == param.stride():
        return grad.as_strided((grad.numel(),), (1,))
    flat = torch.empty(grad.numel(), dtype=grad.dtype, device=grad.device)
    laid_out_as(flat, param).copy_(grad)
    return flat


def split_group(params: list[Tensor]) -> list[Segment]:
    """Partition a group's params by (device, dtype), keeping their order within each segment."""
    by_key: dict[tuple, list[Tensor]] = {}
    for p in params:
        by_key.setdefault((p.device, p.dtype, _is_plain(p)), []).append(p)
    return [Segment(ps, flattenable=plain) for (_, _, plain), ps in by_key.items()]


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


def uniform_step(seg: Segment) -> int | None:
    """The step count shared by every parameter of the segment, or None if they differ or
    their scalar state (:attr:`Segment.scalar_state`) differs: the flat path advances it as
    one value."""
    if seg.steps is None:
        return seg.step
    if seg.step is None:
        first = seg.steps[0]
        if _all_equal(seg.steps) and all(map(_all_equal, seg.scalar_state.values())):
            seg.step = int(first.item())
    return seg.step


def _all_equal(values: Tensor) -> bool:
    return bool((values == values[0]).all())


def first_value(scalar: Tensor) -> float:
    """A 0-d scalar state's value, or a segment's (:attr:`Segment.scalar_state`, all equal)."""
    return scalar.reshape(-1)[0].item()


Rule = Callable[..., None]

#: ``fused=None`` runs a segment's update as a fused kernel (:mod:`kernels`) when the segment
#: has at least ``KERNEL_MIN_NUMEL`` elements. A generated kernel (every elementwise rule) not
#: on disk is built then, once per machine, in ~0.4 s. An ahead-of-time kernel (any other rule)
#: runs where it is on disk; for a segment of at least ``AUTO_BUILD_NUMEL`` elements one not on
#: disk is built in a child process at the lowest CPU priority while the eager path runs (~20 s
#: of one core), and takes over once it is there. Below ``KERNEL_MIN_NUMEL`` the default stays
#: eager: a kernel would save ~15 µs a step at 17K elements (38 against 54 µs), and the eager
#: path's results are PyTorch's to the bit.
KERNEL_MIN_NUMEL = 1 << 16
AUTO_BUILD_NUMEL = 1 << 20


# A rule's numbers (rates, betas, eps, momentum, ...) are Python numbers when it runs eagerly,
# and 0-d float64 tensors when it is traced into a fused kernel (see :mod:`kernels`), so that
# a kernel serves every value. These are the operations whose PyTorch form takes only a number;
# each does the same arithmetic for a tensor. A zero is never a tensor, so rules may branch on
# :func:`nonzero`.


def nonzero(value: float | Tensor) -> bool:
    """Whether a hyperparameter is not zero (a traced one is a tensor only when nonzero)."""
    return isinstance(value, Tensor) or value != 0


def add_scaled_(x: Tensor, y: Tensor, scale: float | Tensor) -> Tensor:
    """``x ← x + scale·y`` in place."""
    return x.add_(y * scale) if isinstance(scale, Tensor) else x.add_(y, alpha=scale)


def added_scaled(x: Tensor, y: Tensor, scale: float | Tensor) -> Tensor:
    """``x + scale·y``, a new tensor."""
    return x + y * scale if isinstance(scale, Tensor) else x.add(y, alpha=scale)


def addcmul_(x: Tensor, a: Tensor, b: Tensor, scale: float | Tensor) -> Tensor:
    """``x ← x + scale·a·b`` in place."""
    if isinstance(scale, Tensor):
        return x.add_(a * b * scale)
    return x.addcmul_(a, b, value=scale)


def lerp_(x: Tensor, end: Tensor, weight: float | Tensor) -> Tensor:
    """``x ← x + weight·(end − x)`` in place. (PyTorch's ``lerp`` picks one of two formulas by
    the weight: traced with a tensor weight, that is a select per element.)"""
    if isinstance(weight, Tensor):
        return x.add_((end - x) * weight)
    return x.lerp_(end, weight)


def sqrt_plus(x: Tensor, eps: float | Tensor, inside: bool = False) -> Tensor:
    """``sqrt(x) + eps`` (``inside``: ``sqrt(x + eps)``), a new tensor. The second operation
    works in place on the first's result, except while autograd records the update
    (``differentiable=True``): ``sqrt``'s backward needs its result unchanged."""
    if inside:
        return x.add(eps).sqrt_()
    root = x.sqrt()
    return root + eps if torch.is_grad_enabled() else root.add_(eps)


def maximum_(x: Tensor, y: Tensor) -> Tensor:
    """``x ← max(x, y)`` elementwise, in place (recorded by autograd when it records)."""
    if torch.is_grad_enabled():  # maximum's backward needs the old x: compare a copy
        return x.copy_(torch.maximum(x.clone(), y))
    return torch.maximum(x, y, out=x)


def div_scalar(x: Tensor, divisor: float | Tensor) -> Tensor:
    """``x / divisor``, a new tensor (traced: times the divisor's reciprocal, computed once)."""
    if isinstance(divisor, Tensor):
        return x * divisor.reciprocal()
    return x / divisor


def div_scalar_(x: Tensor, divisor: float | Tensor) -> Tensor:
    """``x / divisor`` in place, for an ``x`` the rule made itself (a temporary); a new tensor
    while autograd records the update (``differentiable=True``: the operation that made ``x``
    may need it unchanged, as ``sqrt``'s backward does)."""
    if torch.is_grad_enabled():
        return div_scalar(x, divisor)
    if isinstance(divisor, Tensor):
        return x.mul_(divisor.reciprocal())
    return x.div_(divisor)


def sub_scaled_(param: Tensor, x: Tensor, scale: float | Tensor) -> None:
    """``θ ← θ − scale·x`` in place."""
    if isinstance(scale, Tensor):
        param.sub_(x * scale)
    else:
        param.add_(x, alpha=-scale)


def sub_scaled_ratio_(param: Tensor, num: Tensor, den: Tensor, scale: float | Tensor) -> None:
    """``θ ← θ − scale·num/den`` in place."""
    if isinstance(scale, Tensor):
        param.sub_(num.mul(scale).div_(den))
    else:
        param.addcdiv_(num, den, value=-scale)

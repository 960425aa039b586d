"""How a segment's tensors come to live in flat buffers (see :mod:`engine`): where each
parameter goes (:func:`plan_layout`), the move of the parameters (:func:`move_params`) and of
every state (:func:`flatten`), a first step's new state made at its place
(:func:`lay_out_fresh`), and a segment whose parameters came apart parted (:func:`part`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gradwise.optim import engine, kernel_args, native
from gradwise.optim.engine import Segment


def move_params(seg: Segment) -> None:
    """Move a segment's parameters into one flat buffer, ``seg.param`` (values unchanged), at
    the places :func:`plan_layout` gives them.

    One tensor at a time, each tensor's old storage released as soon as it is copied, into a
    buffer whose pages the copies touch one tensor at a time: the memory in flight is about one
    tensor. Zeros in the alignment gaps between tensors: they get zero gradients (their values
    never reach a parameter)."""
    like = seg.params[0]
    slices, length, _ = plan_layout(seg.params)
    seg.param = _empty_with_zero_gaps(length, _gaps(slices, length), like.dtype, like.device)
    for p, sl in zip(seg.params, slices):
        view = engine.laid_out_as(seg.param[sl], p)
        view.copy_(p.detach())
        p.data = view


def flatten(
    seg: Segment,
    states: dict,
    names: list[str],
    has_step: bool,
    scalars: tuple[str, ...] = (),
    params_moved: bool = False,
) -> None:
    """Move a segment's params (unless ``params_moved``: :func:`move_params` did), states, step
    counters and ``scalars`` (per-parameter 0-d state) into flat buffers (values unchanged): the
    tensors under :data:`engine.DIRECT_NUMEL` elements first, then the larger ones; one element per
    parameter for the 0-d ones. The states move as the parameters do (:func:`move_params`),
    one buffer at a time."""
    params = seg.params
    like = params[0]
    seg.slices, offset, _ = plan_layout(params)
    small = _small(params)
    # the small tensors' piece ends aligned: in the gap before the first large tensor, or in
    # the buffers' own aligned end
    seg.small = _aligned(seg.slices[small[-1]].stop, like.element_size()) if small else 0
    gaps = _gaps(seg.slices, offset)
    if not params_moved:
        move_params(seg)
    fresh, seg.fresh_slices, seg.fresh_state = seg.fresh_state, None, {}
    for name in names:
        buf = fresh.get(name)
        if buf is not None and all(
            states[p][name].data_ptr() == buf[sl].data_ptr() for p, sl in zip(params, seg.slices)
        ):  # made in place by place_state: nothing to move
            seg.state[name] = buf
            continue
        dtype = states[params[0]][name].dtype
        buf = _empty_with_zero_gaps(offset, gaps, dtype, like.device)
        for p, sl in zip(params, seg.slices):
            view = engine.laid_out_as(buf[sl], p)
            view.copy_(states[p][name])
            states[p][name] = view
        seg.state[name] = buf
    _index(seg, small, states, has_step, scalars)


def part(
    seg: Segment,
    keys: list,
    states: dict,
    names: list[str],
    has_step: bool,
    scalars: tuple[str, ...] = (),
) -> list[Segment]:
    """``seg`` in parts, one per distinct key in ``keys`` (one key per parameter), each with
    its parameters in their order. Parts of a segment not laid out are new segments, laid out
    at their own first steps. Of a flat segment, the part with the most elements keeps the
    buffers, its tensors where they are, and the other parts move to buffers of their own at
    once, before the kept part's next update goes over their old places: parting never holds a
    second copy of the largest part. Their old places become gaps of zeros, as the alignment
    gaps between tensors are, so that a rule's sums over a whole buffer (Prodigy's) hold."""
    members: dict = {key: [] for key in keys}
    for p, key in zip(seg.params, keys):
        members[key].append(p)
    parts = [Segment(params, flattenable=True) for params in members.values()]
    if not seg.flat:
        return parts
    kept = max(parts, key=lambda each: sum(p.numel() for p in each.params))
    where = {id(p): sl for p, sl in zip(seg.params, seg.slices)}
    for each in parts:
        if each is not kept:
            flatten(each, states, names, has_step, scalars)
            for p in each.params:  # its old places: zeros, as the gaps between tensors are
                for buffer in (seg.param, *seg.state.values()):
                    buffer[where[id(p)]].zero_()
    kept.param, kept.state = seg.param, seg.state
    kept.slices = [where[id(p)] for p in kept.params]
    small = _small(kept.params)
    kept.small = seg.small if small else 0  # no small piece to step without small tensors
    _index(kept, small, states, has_step, scalars)
    return parts


def _small(params: list[Tensor]) -> list[int]:
    """The indices of the tensors under :data:`engine.DIRECT_NUMEL` elements, in order."""
    return [i for i, p in enumerate(params) if p.numel() < engine.DIRECT_NUMEL]


def _index(seg: Segment, small: list[int], states: dict, has_step: bool, scalars) -> None:
    """What a segment whose tensors lie in its flat buffers at ``seg.slices`` keeps to step
    them: its step counters and scalar state as one tensor each (views of it in ``states``),
    the small tensors (indices ``small``) and the large ones, the parameters' addresses, the
    small ones' table; no gradient buffer yet."""
    params = seg.params
    seg.small_params = [params[i] for i in small]
    seg.large = [(p, sl) for p, sl in zip(params, seg.slices) if p.numel() >= engine.DIRECT_NUMEL]
    seg.views_at = {}
    seg.kernel_plans = {}  # their CUDA graphs (plans.Plan) are bound to the old buffers
    seg.small_index, seg.grad, seg.small_views, seg.whole_grad = small, None, [], False
    seg.grad_views = [None] * len(params)  # none until Segment.use_grad_views
    if has_step:
        old = [states[p]["step"] for p in params]
        seg.steps = torch.stack([_step_tensor(s) for s in old]).to(_step_dtype_of(old))
        for i, p in enumerate(params):
            states[p]["step"] = seg.steps[i]
        seg.step = None
    else:
        seg.steps, seg.step = None, 1  # every parameter has had its first update
    seg.scalar_state = {}
    for name in scalars:  # on torch's device and in its dtype for them, as they were
        seg.scalar_state[name] = torch.stack([states[p][name].detach().reshape(()) for p in params])
        for i, p in enumerate(params):
            states[p][name] = seg.scalar_state[name][i]
    seg.ptrs = [p.data_ptr() for p in params]
    seg.uses_native = len(params) >= native.MIN_PARAMS
    seg.ptr_array = torch.tensor(seg.ptrs, dtype=torch.int64)
    seg.small_offsets = torch.tensor([seg.slices[i].start for i in small], dtype=torch.int64)
    lengths = torch.tensor([params[i].numel() for i in small], dtype=torch.int64)
    seg.grad_table = (torch.zeros_like(lengths), seg.small_offsets, lengths)
    seg.flat = True


def follow_dtype(p: Tensor, state: dict, names: list[str], state_dtype) -> None:
    """A parameter's elementwise state in the dtype it is kept in: the group's ``state_dtype``
    where it sets one, else the parameter's. A model moved to another dtype after a step
    (``model.double()``) takes its state along, as ``load_state_dict`` casts it; torch's
    optimizers raise a dtype mismatch there, and keeping the old dtype would round every
    moment to it."""
    want = state_dtype or p.dtype
    for name in names:
        t = state.get(name)
        if t is not None and t.dtype != want and t.is_floating_point() and t.shape == p.shape:
            state[name] = t.to(want)


def plan_layout(params: list[Tensor]) -> tuple[list[slice], int, list[int]]:
    """Where :func:`flatten` puts each parameter (``slices[i]`` for ``params[i]``): the tensors
    under :data:`engine.DIRECT_NUMEL` elements first, then the larger ones, each at an aligned
    place; the buffers' length (aligned too); and the parameters' indices in that order."""
    like = params[0]
    large = engine.DIRECT_NUMEL
    order = sorted(range(len(params)), key=lambda i: params[i].numel() >= large)  # stable
    slices = [slice(0, 0)] * len(params)
    offset = 0
    for i in order:
        offset = _aligned(offset, like.element_size())
        slices[i] = slice(offset, offset + params[i].numel())
        offset += params[i].numel()
    return slices, _aligned(offset, like.element_size()), order  # zeros after the last


def lay_out_fresh(
    seg: Segment,
    states: dict,
    names: list[str],
    init: Callable[[Tensor], dict[str, Tensor]],
    has_step: bool,
    scalars: tuple[str, ...] = (),
) -> None:
    """Before the first step of a segment none of whose parameters has state yet: make each
    parameter's state (``init(param)``) at its place in flat buffers and lay the segment out
    (:func:`flatten`, which adopts those buffers as they are), so that the first update is a
    flat one too. No state tensor then exists twice, even for a moment (its own and its
    buffer's), and no update makes a temporary the size of a whole tensor. The parameters move
    first, while there is no state: moving one holds a copy of it for a moment, and that moment
    is then not at the iteration's peak (gradients and all state alive)."""
    move_params(seg)
    plan_fresh_state(seg)
    for p in seg.params:
        state = states[p]
        for name, value in init(p).items():
            state.setdefault(name, place_state(seg, p, name, value) if name in names else value)
    flatten(seg, states, names, has_step, scalars, params_moved=True)
    if not has_step:
        seg.step = 0  # no update yet: the first one counts as step 1


def plan_fresh_state(seg: Segment) -> None:
    """Where each parameter's new state goes (:func:`place_state`, :func:`zeros_state`): the
    places :func:`flatten` will give it."""
    slices, length, _ = plan_layout(seg.params)
    seg.fresh_slices = {id(p): sl for p, sl in zip(seg.params, slices)}
    seg.fresh_length, seg.fresh_state = length, {}


def place_state(seg: Segment, param: Tensor, name: str, value: Tensor) -> Tensor:
    """A new state tensor ``value`` of ``param``: as it is, or, after :func:`plan_fresh_state`,
    copied to its place in the segment's buffer for ``name`` and returned as that view."""
    view = _place(seg, param, name, value.dtype, value.shape, value.device)
    if view is None:
        return value
    if view.data_ptr() != value.data_ptr():  # not made there already (zeros_state)
        view.copy_(value)
    return view


def zeros_state(seg: Segment | None, param: Tensor, name: str, dtype: torch.dtype) -> Tensor:
    """New zero state of ``param``'s shape: after :func:`plan_fresh_state`, at its place in the
    segment's buffer for ``name`` (no temporary), else a tensor of its own."""
    view = None if seg is None else _place(seg, param, name, dtype, param.shape, param.device)
    return torch.zeros_like(param, dtype=dtype) if view is None else view.zero_()


def _place(seg: Segment, param: Tensor, name: str, dtype, shape, device) -> Tensor | None:
    """``param``'s place in the segment's fresh buffer for ``name`` (made on first use), or
    None where it has none (not planned, or state of another shape, dtype or device)."""
    where = None if seg.fresh_slices is None else seg.fresh_slices.get(id(param))
    if where is None or shape != param.shape or device != param.device:
        return None
    buf = seg.fresh_state.get(name)
    if buf is None:
        gaps = _gaps(list(seg.fresh_slices.values()), seg.fresh_length)
        buf = seg.fresh_state[name] = _empty_with_zero_gaps(seg.fresh_length, gaps, dtype, device)
    return engine.laid_out_as(buf[where], param) if buf.dtype == dtype else None


def _gaps(slices: list[slice], length: int) -> list[slice]:
    """The places of a buffer of ``length`` elements that none of ``slices`` covers."""
    gaps, covered = [], 0
    for sl in sorted(slices, key=lambda sl: sl.start):
        if sl.start > covered:
            gaps.append(slice(covered, sl.start))
        covered = max(covered, sl.stop)
    if length > covered:
        gaps.append(slice(covered, length))
    return gaps


def _empty_with_zero_gaps(
    length: int, gaps: list[slice], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """A new buffer with zeros in ``gaps`` only: the rest is written by the copies that follow,
    so that its pages are not all touched (made resident) at once, as zeros would."""
    buf = torch.empty(length, dtype=dtype, device=device)
    for gap in gaps:
        buf[gap].zero_()
    return buf


#: bytes each tensor's place in the flat buffers is aligned to: a cache line, as PyTorch's CPU
#: allocator aligns a tensor of its own (oneDNN and BLAS kernels read aligned weights best);
#: the small tensors' piece and the whole buffers end aligned too, as kernels take them
#: (:func:`kernel_args.length_multiple`)
ALIGN_BYTES = kernel_args.ALIGN_BYTES


def _aligned(offset: int, element_size: int) -> int:
    """``offset`` (in elements) rounded up to a multiple of :data:`ALIGN_BYTES`."""
    step = max(ALIGN_BYTES // element_size, 1)
    return -(-offset // step) * step


def _step_tensor(step) -> Tensor:
    """A parameter's ``step`` as a 0-d tensor (checkpoints of torch < 1.12 hold plain numbers)."""
    if isinstance(step, Tensor):
        return step.detach().reshape(())
    return torch.tensor(float(step))


def _step_dtype_of(steps: list) -> torch.dtype:
    first = steps[0]
    return first.dtype if isinstance(first, Tensor) else torch.get_default_dtype()

"""The optimizer base: what every algorithm shares, written once.

An algorithm subclass declares its rule (the math), the names of its state tensors, whether it
keeps PyTorch's per-parameter ``step`` counter, and how a group's hyperparameters become the
rule's arguments. The base does the rest, identically for every algorithm:

1. ``g ← −g`` when ``maximize``;
2. coupled L2: ``g ← g + weight_decay·θ`` (or, with ``decoupled_weight_decay``,
   ``θ ← θ·(1 − lr·weight_decay)``, AdamW's decay);
3. the rule's update of θ and its state;
4. the L1 proximal step ``θ ← sign(θ)·max(|θ| − lr·l1, 0)``, which gives exact zeros.

and hands the rule to the engine (:mod:`gradwise.optim.engine`), which applies it to a whole
group at once.
"""

from __future__ import annotations

import functools
import itertools
import operator
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine, kernel_args, layout, plans, torch_api
from gradwise.optim.torch_api import TORCH_WORDS, torch_words  # noqa: F401 (their home before)

_GRAD = operator.attrgetter("grad")

#: Arguments PyTorch accepts for choosing its implementation; gradwise's engine chooses itself.
IMPLEMENTATION_FLAGS = ("foreach", "fused")


def l1_proximal_(param: Tensor, threshold: float | Tensor) -> None:
    """Soft-thresholding, the proximal operator of ``threshold·|θ|``, in place.

    θ ← sign(θ) · max(|θ| − threshold, 0)
    """
    source = param.clone() if torch.is_grad_enabled() else param  # recorded: see sqrt_plus
    param.copy_(source.sign() * (source.abs() - threshold).clamp_(min=0))


def update(
    rule: engine.Rule,
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    maximize: bool,
    weight_decay: float | Tensor,
    shrink: float | Tensor | None,
    l1_threshold: float | Tensor | None,
    hyperparameters: dict[str, Any],
    coefficients: dict[str, Any],
) -> None:
    """Steps 1-4 of the module docstring on one tensor (a parameter, or a flat buffer).

    ``weight_decay`` is the coupled L2 strength (0 when decay is decoupled), ``shrink`` the
    decoupled factor ``1 − lr·weight_decay`` (or None), ``l1_threshold`` is ``lr·l1`` (or None).
    ``hyperparameters`` are the group's constants, ``coefficients`` the step's scalars.
    """
    if maximize:
        grad = -grad
    if engine.nonzero(weight_decay):
        grad = engine.added_scaled(grad, param, weight_decay)
    if shrink is not None:
        param.mul_(shrink)
    stored = state
    if any(t.dtype != param.dtype for t in stored.values()):  # state_dtype: compute in θ's dtype
        state = {name: t.to(param.dtype) for name, t in stored.items()}
    rule(param, grad, state, **hyperparameters, **coefficients)
    for name, t in state.items():
        if t is not stored[name]:
            stored[name].copy_(t)
    if l1_threshold is not None:
        l1_proximal_(param, l1_threshold)


class Optimizer(torch.optim.Optimizer):
    """Base class of gradwise's optimizers (a ``torch.optim.Optimizer``).

    Keyword arguments every gradwise optimizer adds to PyTorch's, with defaults that change
    nothing: ``l1`` (proximal L1 strength), ``state_dtype`` (e.g. ``torch.bfloat16``: moment
    buffers stored in that dtype, halving their memory; the update is computed in the
    parameter's dtype), and ``fused`` (``None``: the update runs as one compiled pass for groups of
    at least ``engine.KERNEL_MIN_NUMEL`` elements, see ``engine.KERNEL_MIN_NUMEL`` for when it is
    built, and on CUDA ``plans.COMPILE_AFTER_S``; ``True``: always, waiting for a build;
    ``False``: never).
    """

    #: the rule: ``rule(param, grad, state, **hyperparameters, **coefficients)``, in place
    rule: ClassVar[engine.Rule]
    #: whether the algorithm keeps PyTorch's per-parameter ``state["step"]`` tensor
    has_step: ClassVar[bool] = True
    #: whether sparse gradients are taken, as torch's class takes them (SGD, Adagrad)
    sparse_grads: ClassVar[bool] = False
    #: whether, with ``differentiable=True`` or ``capturable=True``, the step's coefficients
    #: come from the ``step`` tensor itself (in its dtype, on its device), as torch.optim's Adam
    #: computes its bias corrections then
    coefficients_from_step_tensor: ClassVar[bool] = False
    #: per-parameter 0-d state tensors besides ``step`` (NAdam's ``mu_product``, ASGD's ``eta``
    #: and ``mu``), kept as torch.optim keeps them and advanced by :meth:`advance`; in a flat
    #: segment they are views of one buffer each (one element per parameter), advanced at once
    scalar_state: ClassVar[tuple[str, ...]] = ()
    #: whether the rule places ``weight_decay`` itself, not step 2 (LAMB: inside the trust
    #: ratio, Schedule-Free AdamW: at y, Prodigy: scaled by d·lr)
    decay_in_rule: ClassVar[bool] = False

    def __init__(self, params, defaults: dict[str, Any]) -> None:
        name = type(self).__name__
        self._options = frozenset(defaults)  # this class's options (see __setstate__)
        lr = _as_float(name, "lr", defaults["lr"])
        checks.at_least(name, "lr", lr, 0.0, also=torch_words("lr", lr))
        if not (defaults.get("differentiable") and isinstance(defaults["lr"], Tensor)):
            defaults["lr"] = lr  # a tensor lr stays one only where autograd differentiates it
        wd = defaults.get("weight_decay", 0.0)
        checks.at_least(name, "weight_decay", wd, 0.0, also=torch_words("weight_decay", wd))
        checks.at_least(name, "l1", defaults.get("l1", 0.0), 0.0)
        checks.flag(name, "maximize", defaults.get("maximize", False))
        state_dtype = defaults.get("state_dtype")
        if state_dtype is not None and not (
            isinstance(state_dtype, torch.dtype) and state_dtype.is_floating_point
        ):
            raise TypeError(
                f"{name}: state_dtype must be None or a floating torch.dtype such as "
                f"torch.bfloat16; received state_dtype={state_dtype!r}"
            )
        self._segments: dict[int, tuple[list, list[engine.Segment]]] = {}
        #: whether a CUDA graph may capture a step here (torch then checks ``capturable``)
        self._may_capture = torch.backends.cuda.is_built() and torch.cuda.is_available()
        super().__init__(params, defaults)

    # ----------------------------------------------------------------- to be given by subclasses
    def state_names(self, group: dict) -> list[str]:
        """Names of the state tensors, in PyTorch's layout, for this group's options."""
        raise NotImplementedError

    def init_state(self, param: Tensor, group: dict) -> dict[str, Tensor]:
        """A new parameter's state (zeros unless the algorithm says otherwise)."""
        dtype = group.get("state_dtype") or param.dtype
        fresh = getattr(self, "_fresh_segment", None)  # a first step's: made in place
        state = {n: layout.zeros_state(fresh, param, n, dtype) for n in self.state_names(group)}
        if self.has_step:  # capturable: on the parameter's device, as torch keeps it then
            device = param.device if group.get("capturable") else None
            state["step"] = torch.tensor(0.0, dtype=_step_dtype(), device=device)
        return state

    def hyperparameters(self, group: dict) -> dict[str, Any]:
        """The rule's constant keyword arguments, from a param group."""
        raise NotImplementedError

    def coefficients(self, group: dict, step: int) -> dict[str, Any]:
        """The rule's keyword arguments that change from step to step (rates, corrections)."""
        raise NotImplementedError

    def advance(self, group: dict, state: dict[str, Tensor], step: int) -> dict[str, Any]:
        """Advance one parameter's :attr:`scalar_state` by a step, in place, and return the
        step's coefficients that come from it (added to :meth:`coefficients`'). Called after
        ``step`` is counted, before the rule: once per parameter and step, or once for a flat
        segment, whose ``state`` then holds 1-D buffers of equal values (one per parameter;
        read one with :func:`engine.first_value`)."""
        return {}

    def piece_arguments(self, seg: engine.Segment, where: slice) -> dict[str, Any] | None:
        """A rule with per-tensor reductions (LAMB's): its arguments for the piece ``where``
        of a flat segment, then updated whole (no chunks, no kernel). None: elementwise."""
        return None

    def state_bytes_per_param(self) -> float:
        """Bytes of optimizer state (moment buffers and step counters) per parameter element."""
        numel = sum(p.numel() for g in self.param_groups for p in g["params"])
        total = sum(
            t.numel() * t.element_size()
            for st in self.state.values()
            for t in st.values()
            if isinstance(t, Tensor)
        )
        return total / max(numel, 1)

    # ----------------------------------------------------------------------------- torch API
    def _patch_step_function(self) -> None:
        """As ``torch.optim.Optimizer``'s, with the lighter wrapper of
        :func:`~gradwise.optim.torch_api.with_hooks`."""
        self._zero_grad_profile_name = f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"
        cls = type(self)
        if not getattr(cls.step, "hooked", False):
            cls.step = torch_api.with_hooks(cls.step)
            cls.step.hooked = True

    add_param_group = torch_api.unless_dynamo(torch.optim.Optimizer.add_param_group)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._may_capture = torch.backends.cuda.is_built() and torch.cuda.is_available()
        # a group saved by torch or an older release gets this class's other options; not the
        # differentiable=False torch's __setstate__ adds to every optimizer's defaults
        own = getattr(self, "_options", self.defaults)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                if key in own:
                    group.setdefault(key, value)
        self._segments = {}

    def load_state_dict(self, state_dict: dict) -> None:
        torch_api.torch_load_state_dict(self, state_dict)  # casts state to each parameter's dtype
        for state in self.state.values():  # torch < 1.12 saved ``step`` as a plain number
            if isinstance(state, dict) and isinstance(state.get("step"), int | float):
                state["step"] = torch.tensor(float(state["step"]), dtype=_step_dtype())
        for group in self.param_groups:
            if group.get("state_dtype") is not None:
                for p in group["params"]:
                    for key, value in self.state.get(p, {}).items():
                        if key != "step" and key not in self.scalar_state:
                            self.state[p][key] = value.to(group["state_dtype"])
        self._segments = {}  # the state tensors were replaced: lay them out flat again now
        for group in self.param_groups:
            names = self.state_names(group)
            for seg in self._group_segments(group):
                if (
                    seg.flattenable
                    and not _per_tensor(group)
                    and all(self._has_state(p, names) for p in seg.params)
                ):
                    layout.flatten(seg, self.state, names, self.has_step, self.scalar_state)

    def state_dict(self) -> dict:
        """PyTorch's layout; ``step`` and scalar-state tensors are copies so that each stands on
        its own."""
        sd = torch_api.torch_state_dict(self)
        own = ("step", *self.scalar_state)  # views of a segment's buffer: each made whole
        sd["state"] = {
            k: {n: (v.clone() if n in own and isinstance(v, Tensor) else v) for n, v in s.items()}
            if isinstance(s, dict)
            else s  # an entry a hook or a user put there: kept as it is, as torch does
            for k, s in sd["state"].items()
        }
        return sd

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients, as ``torch.optim.Optimizer.zero_grad``.

        With ``set_to_none=False``, gradients that exist become zeroed views into the segment's
        flat gradient buffer, so that the next ``backward()`` accumulates straight into it (one
        ``zero_()`` for the whole segment, and no gather at ``step()``). A gradient that is
        already a view into someone else's buffer stays where it is, zeroed: DDP's
        ``gradient_as_bucket_view=True`` buckets, which its all-reduce needs, are not fought
        over. Gradients that are ``None`` stay ``None``, as in PyTorch.
        """
        if set_to_none:
            torch_api.torch_zero_grad(self, set_to_none=True)
            return
        for group in self.param_groups:
            for seg in self._group_segments(group):
                layout = seg.layout() if seg.flat else engine.Segment.MOVED
                moved = layout == engine.Segment.MOVED
                if moved or (layout == engine.Segment.FLAT and seg.grads_placed_elsewhere()):
                    for p in seg.params:
                        if p.grad is not None:
                            torch_api.zero_in_place(p.grad)
                    continue
                seg.use_grad_views()
                seg.grad.zero_()
                if layout == engine.Segment.FLAT:
                    for p, view in zip(seg.params, seg.grad_views):
                        if p.grad is not None and p.grad is not view:
                            p.grad = view

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # no_grad without ``@torch.no_grad()``, which makes a context object per call (~1.7 µs)
        grad_was_enabled = torch.is_grad_enabled()
        # differentiable=True: autograd records the update (torch.optim does the same)
        torch._C._set_grad_enabled(self.defaults.get("differentiable", False))
        try:
            if self._may_capture:
                torch_api.graph_capture_health_check(self)  # torch's check, with its words
            for group in self.param_groups:
                for seg in self._group_segments(group):
                    self._step_segment(seg, group)
        finally:
            torch._C._set_grad_enabled(grad_was_enabled)
        return loss

    # ------------------------------------------------------------------------------ the engine
    def _group_segments(self, group: dict) -> list[engine.Segment]:
        key = id(group)
        cached = self._segments.get(key)
        if cached is None or cached[0] is not group["params"] or cached[2] != len(group["params"]):
            cached = (group["params"], engine.split_group(group["params"]), len(group["params"]))
            self._segments[key] = cached
        return cached[1]

    def _step_segment(self, seg: engine.Segment, group: dict) -> None:
        if seg.params[0].grad is None and not seg.any_grad():
            return  # nothing to step (torch passes over a parameter without a gradient too)
        if _per_tensor(group):  # never flattened
            self._step_each(seg, group)
            return
        if group.get("fused") is True and any(p.grad is not None for p in seg.params):
            torch_api.check_fusable(seg.params[0])  # parameters without gradients are not stepped
        if not seg.flat and seg.flattenable and self._first_step(seg):
            self._lay_out_fresh(seg, group)
        layout = seg.layout() if seg.flat else engine.Segment.MOVED
        # moved/replaced, or a state the buffers lack (SGD's momentum on): per tensor, re-flattened
        if seg.flat and (layout == seg.MOVED or not {*self.state_names(group)} <= seg.state.keys()):
            seg.flat = False
        views = layout == engine.Segment.VIEWS  # the usual case after zero_grad(False)
        step = engine.uniform_step(seg) if seg.flat else None
        if step is not None:
            if seg.kernel_plans and self._step_replayed(seg, group, step, views):
                return
            # views: the whole buffers at once; else backward's own gradients (None: one missing)
            pieces = seg.pieces(views, scattered=True)
            if pieces is not None:
                self._step_pieces(seg, group, pieces, self._count_step(seg, group, step))
                return
        if seg.flattenable and (parts := self._parted(seg, group)) is not None:
            for part in parts:
                self._step_segment(part, group)
            return
        self._step_each(seg, group)

    def _parted(self, seg: engine.Segment, group: dict) -> list[engine.Segment] | None:
        """A segment whose parameters have come apart, in parts that can each be stepped flat
        (:func:`layout.part`): parameters with a gradient at this step and those without (a
        frozen layer handed to the optimizer, a head used on some batches only), by their
        step count. Each part is a segment of its own from now on (the ones without a gradient
        wait, as torch's would). None where the parameters are all alike: the per-tensor path
        takes the step (a sparse gradient, the layout moved)."""
        keys = list(map(self._progress, seg.params))
        if len(set(keys)) == 1:
            return None
        names = self.state_names(group)
        parts = layout.part(seg, keys, self.state, names, self.has_step, self.scalar_state)
        params, segments, count = self._segments[id(group)]
        segments = [each for s in segments for each in (parts if s is seg else (s,))]
        self._segments[id(group)] = (params, segments, count)
        return parts

    def _progress(self, p: Tensor) -> tuple[bool, bool, float | None]:
        """What a parameter's step takes: whether it has a gradient, whether it has state, its
        step count."""
        state = self.state.get(p)
        step = state.get("step") if state else None
        return p.grad is not None, bool(state), None if step is None else float(step)

    def _first_step(self, seg: engine.Segment) -> bool:
        """No parameter has state yet, and each has a dense gradient to make it from."""
        return not any(self.state.get(p) for p in seg.params) and all(
            p.grad is not None and p.grad.layout == torch.strided for p in seg.params
        )

    def _lay_out_fresh(self, seg: engine.Segment, group: dict) -> None:
        """Before a first step: the new state made at its places (:func:`layout.lay_out_fresh`;
        :meth:`init_state`'s zeros there directly, ``layout.zeros_state``)."""
        self._fresh_segment = seg
        try:
            init = functools.partial(self.init_state, group=group)
            names = self.state_names(group)
            layout.lay_out_fresh(seg, self.state, names, init, self.has_step, self.scalar_state)
        finally:
            self._fresh_segment = None

    def _count_step(self, seg: engine.Segment, group: dict, step: int) -> dict | None:
        """Count a flat segment's step (from ``step``, its uniform count) and advance its
        scalar state; the coefficients that come from that (see :meth:`advance`)."""
        if seg.steps is not None:
            seg.steps += 1
        seg.step = step + 1
        return self.advance(group, seg.scalar_state, seg.step) if self.scalar_state else None

    def _step_pieces(
        self, seg: engine.Segment, group: dict, pieces: list, scalars: dict | None
    ) -> None:
        """The flat update of ``pieces`` (``(where, grad)`` pairs), its step already counted
        (``scalars``: what :meth:`_count_step` gave)."""
        if pieces and self.piece_arguments(seg, pieces[0][0]) is not None:  # whole
            for where, grad in pieces:
                param, state = seg.buffers_at(where)
                extra = {**(scalars or {}), **self.piece_arguments(seg, where)}
                self._update(param, kernel_args.dense(grad), dict(state), seg.step, group, extra)
            return
        left = targets = plans.targets(seg, pieces)
        # the first step eager: a kernel bakes in flags (SGD's "first"), one step's not worth it
        if seg.step != 1 and (kernel := self._kernel(seg, group, len(targets), scalars)):
            left = kernel(targets)
        if seg.step == 1:  # small gradients read where they lie: no gather buffer (peak memory)
            left = [each for target in left for each in engine.each_tensor(seg, *target)]
        for param, grad, state in left:
            self._update_chunked(param, kernel_args.dense(grad), state, seg.step, group, scalars)

    def _step_replayed(self, seg: engine.Segment, group: dict, step: int, views: bool) -> bool:
        """The whole step as one CUDA graph replay (:mod:`graphs`), where the segment's compiled
        kernel records graphs: the gather of the small tensors' gradients and the compiled
        update, recorded the second time every gradient lies where it lies now. False, having
        done nothing, where that does not apply: no graphs here, a gradient missing, sparse or
        not contiguous, or gradients at addresses seen for the first time (the usual path runs
        the step)."""
        count = 1 if views else (1 if seg.small else 0) + len(seg.large)
        plan = seg.kernel_plans.get(count)
        replayer = plan.replayer if plan is not None else None
        if replayer is None or torch.compiler.is_compiling():  # the user's torch.compile: traced
            return False
        # what a graph touches: the flat buffers, this step's gather buffer, backward's gradients
        buffers = (seg.param, seg.gather_buffer(), *seg.state.values())
        grads = () if views else list(map(_GRAD, seg.params))
        try:
            key = tuple(map(Tensor.data_ptr, itertools.chain(grads, buffers)))
        except (TypeError, RuntimeError):  # a gradient missing (None) or sparse
            return False
        if not all(map(Tensor.is_contiguous, grads)):  # a graph reads them laid out as recorded
            return False
        if not replayer.knows(key):
            return False
        scalars = self._count_step(seg, group, step)
        kernel = self._kernel(seg, group, count, scalars)
        if kernel is None or kernel.func is not plan.run:  # kernels off, or a flag changed
            self._step_pieces(seg, group, seg.pieces(views), scalars)
            return True
        try:
            plan.runner.scalars(kernel.args[0])
            replayer(key, lambda: plans.bound_step(seg, views, plan.runner))
            seg.release_gather_buffer()  # made again at the next step: the allocator's same block
        except Exception as e:  # nothing updated: this segment's steps go on without graphs
            plan.replayer = None
            warnings.warn(
                f"gradwise: replaying the optimizer step as a CUDA graph failed ({e!r}); the "
                "steps run without graphs from now on",
                RuntimeWarning,
                stacklevel=4,
            )
            self._step_pieces(seg, group, seg.pieces(views), scalars)
        return True

    def _update_chunked(
        self,
        param: Tensor,
        grad: Tensor,
        state: dict[str, Tensor],
        step: int,
        group: dict,
        scalars: dict | None = None,
    ) -> None:
        """The eager update of a piece of the flat buffers, in cache-sized chunks."""
        pieces = engine.chunks(param.numel(), param.device)
        if len(pieces) == 1:  # the whole piece: no views to make (~1 µs each)
            self._update(param, grad, dict(state), step, group, scalars)
            return
        for sl in pieces:
            state_here = {n: b[sl] for n, b in state.items()}
            self._update(param[sl], grad[sl], state_here, step, group, scalars)

    def _kernel(
        self, seg: engine.Segment, group: dict, pieces: int, scalars: dict | None
    ) -> Callable[[list], list] | None:
        """The fused kernel that runs this step's flat update, if that is the choice (see
        :func:`plans.choose`), as ``kernel(targets) -> the targets it left``; None: eager."""
        args = functools.partial(self._update_args, group, seg.step, scalars)
        return plans.choose(seg, group, pieces, args, type(self).rule, update)

    def _step_each(self, seg: engine.Segment, group: dict) -> None:
        """The per-tensor path: the same rule, one parameter at a time."""
        names = self.state_names(group)
        for p in seg.params:
            if p.grad is None:
                continue
            grad = p.grad
            if grad.layout != torch.strided:
                grad = torch_api.dense(type(self).__name__, type(self).sparse_grads, grad, group)
            new = not self._has_state(p, names)
            if new:
                state = self.state[p]
                for n, v in self.init_state(p, group).items():
                    state.setdefault(n, v)
            else:
                state = self.state.get(p, {})
                layout.follow_dtype(p, state, names, group.get("state_dtype"))
            if group.get("capturable"):
                torch_api.check_capturable(p, state.get("step"))
            if self.has_step:
                state["step"] += 1
                if group.get("capturable") or (
                    group.get("differentiable") and type(self).coefficients_from_step_tensor
                ):
                    step = state["step"]  # on its device: no host sync in a captured step
                else:
                    step = int(state["step"].item())
            else:
                step = 1 if new else 2  # only "first update or not" matters without a counter
            scalars = self.advance(group, state, step) if self.scalar_state else None
            # the rule gets the elementwise state only: a step counter or scalar state that went
            # through update()'s cast to a bfloat16 parameter's dtype would come back rounded
            state = {n: state[n] for n in names}
            if group.get("differentiable"):
                self._update_recorded(p, grad, state, step, group, scalars)
                continue
            if p.is_complex():  # as PyTorch: a complex number is a pair of real numbers
                parts = {n: as_real(v) for n, v in state.items()}
                self._update(as_real(p), as_real(grad), parts, step, group, scalars)
                continue
            self._update(p, grad, state, step, group, scalars)
        if _per_tensor(group):
            return
        if seg.steps is not None:
            seg.step = None  # step counts may now differ between parameters
        if seg.flattenable and not seg.flat and all(self._has_state(p, names) for p in seg.params):
            layout.flatten(seg, self.state, names, self.has_step, self.scalar_state)

    def _has_state(self, p: Tensor, names: list[str]) -> bool:
        state = self.state.get(p, {})
        return all(n in state for n in names) and (not self.has_step or "step" in state)

    def _update_recorded(
        self, param: Tensor, grad: Tensor, state: dict, step: int, group: dict, scalars=None
    ) -> None:
        """``differentiable=True``: the update on copies of θ and its state, which autograd
        records, written back with ``copy_`` (recorded too), so that the new θ and state are
        differentiable functions of the old ones, the gradient and tensor hyperparameters.
        The rule runs on the copies because it works in place, and autograd refuses to
        differentiate through an in-place change of a tensor a step has saved."""
        names = [n for n in state if n != "step"]
        if param.is_complex():
            param_in, grad, state_in = (
                as_real(param),
                as_real(grad),
                {n: as_real(state[n]) for n in names},
            )
        else:
            param_in, state_in = param, {n: state[n] for n in names}
        new_param = param_in.clone()
        new_state = {n: t.clone() for n, t in state_in.items()}
        self._update(new_param, grad, new_state, step, group, scalars)
        param_in.copy_(new_param)
        for n, t in new_state.items():
            state_in[n].copy_(t)

    def _update(
        self, param: Tensor, grad: Tensor, state: dict, step: int, group: dict, scalars=None
    ) -> None:
        update(type(self).rule, param, grad, state, **self._update_args(group, step, scalars))

    def _update_args(self, group: dict, step: int, scalars: dict | None = None) -> dict[str, Any]:
        """``update``'s keyword arguments for this group and step (``scalars``: the
        coefficients :meth:`advance` gave)."""
        lr, l1 = group["lr"], group.get("l1", 0.0)
        wd = 0.0 if self.decay_in_rule else group.get("weight_decay", 0.0)
        coefficients = self.coefficients(group, step)
        if scalars:
            coefficients = {**coefficients, **scalars}
        decoupled = group.get("decoupled_weight_decay", False)
        return dict(
            maximize=group["maximize"],
            weight_decay=0.0 if decoupled else wd,
            shrink=1 - lr * wd if decoupled and wd != 0 else None,
            l1_threshold=lr * l1 if l1 else None,
            hyperparameters=self.hyperparameters(group),
            coefficients=coefficients,
        )


def _per_tensor(group: dict) -> bool:
    """Whether a group runs the per-tensor path and is never flattened into the engine's
    buffers: ``differentiable=True`` (autograd's graph holds the user's tensors) and
    ``capturable=True`` (a CUDA graph holds their addresses; each step reads its counter on
    the device)."""
    return bool(group.get("differentiable") or group.get("capturable"))


def as_real(t: Tensor) -> Tensor:
    """A complex tensor as a view of its real and imaginary parts (``view_as_real``); a real one
    as it is. Every rule then treats each part as a real number, as ``torch.optim`` does."""
    return torch.view_as_real(t) if t.is_complex() else t


def _step_dtype() -> torch.dtype:
    """PyTorch's dtype for ``state["step"]``: float64 if that is the default dtype, else float32."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _as_float(owner: str, name: str, value) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{owner}: {name} must be a number or a 1-element tensor; "
                f"received a tensor of shape {tuple(value.shape)} (Tensor {name} must be "
                "1-element)"
            )
        return float(value.item())
    return checks.number(owner, name, value)

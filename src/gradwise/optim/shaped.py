"""The per-tensor path of the optimizers whose rule needs a tensor's shape.

Adafactor's factored second moments (a row and a column factor for a matrix, a full one for a
vector) and Muon's orthogonalization of a matrix are not elementwise: they cannot run on the
engine's flat buffers, whose elements have forgotten which tensor, row and column they belong
to. :class:`ShapedOptimizer` runs such a rule on each parameter as it is, with the base's
steps 1-4 (:func:`gradwise.optim.base.update`: maximize, L1) around it, and keeps the state in
PyTorch's layout, shaped as torch's class shapes it, so that state dicts move either way.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from gradwise.optim import torch_api
from gradwise.optim.base import Optimizer, update

#: tensors of at least this many elements are stepped one at a time by a :attr:`batched` rule:
#: stacking them would cost more than the per-tensor overhead it saves (Adafactor, the wide MLP's
#: four 2048×2048 weights: 571 ms a step stacked, against 253 ms for torch's per-tensor loop)
BATCH_NUMEL = 1 << 16


class ShapedOptimizer(Optimizer):
    """Base of the optimizers whose rule works on a whole tensor of a given shape.

    A subclass gives :meth:`init_state` (the state of one parameter, shaped as its rule needs
    it), :meth:`group_arguments` (the rule's constants for one step of a group) and
    :meth:`tensor_coefficients` (the rule's arguments for one tensor at one step). Parameters
    are never laid out in the engine's flat buffers.

    With :attr:`batched`, the rule takes a batch of same-shape tensors stacked along a new first
    dimension, and a step runs it once for each set of small parameters that share a shape,
    dtypes, device and step count (a parameter alone, or one of :data:`BATCH_NUMEL` elements or
    more, is a batch of one, of views: no copy).
    """

    #: whether the rule takes a batch of same-shape tensors (see the class docstring)
    batched: ClassVar[bool] = False

    def state_names(self, group: dict) -> list[str]:
        """Every name a parameter's state may hold (which ones it holds depends on its shape)."""
        raise NotImplementedError

    def group_arguments(self, group: dict, params: list[Tensor]) -> dict[str, Any]:
        """The rule's constant keyword arguments for this step of ``group``, whose ``params``
        have gradients (by default, :meth:`hyperparameters`)."""
        return self.hyperparameters(group)

    def tensor_coefficients(self, group: dict, param: Tensor, step: float) -> dict[str, Any]:
        """The rule's keyword arguments for ``param`` at its step ``step`` (its count after this
        step; 1 for every step of an algorithm without a counter)."""
        raise NotImplementedError

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if torch.backends.cuda.is_built() and torch.cuda.is_available():
            torch_api.graph_capture_health_check(self)  # torch's check, with its words
        name = type(self).__name__
        with torch.no_grad():
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                for p in params:
                    if p.is_complex():
                        raise RuntimeError(f"{name} does not support complex parameters")
                    if p.grad.is_sparse:
                        raise RuntimeError(f"{name} does not support sparse gradients")
                if params:
                    self._step_group(group, params)
        return loss

    def _step_group(self, group: dict, params: list[Tensor]) -> None:
        if type(self).batched:
            self._step_batches(group, params)
            return
        constants = self.group_arguments(group, params)
        for p in params:
            state = self.state[p]
            if not state:
                state.update(self.init_state(p, group))
            step = 1.0
            if self.has_step:
                state["step"] += 1
                step = state["step"].item()
            moments = {n: t for n, t in state.items() if n != "step"}
            self._update(
                p, p.grad, moments, group, constants, self.tensor_coefficients(group, p, step)
            )

    def _update(self, param, grad, state, group, constants, coefficients) -> None:
        """The base's steps 1-4 around the rule, for one tensor or one batch of them."""
        l1 = group.get("l1", 0.0)
        update(
            type(self).rule,
            param,
            grad,
            state,
            maximize=group.get("maximize", False),
            weight_decay=0.0,  # placed by the rule, where the reference places it
            shrink=None,
            l1_threshold=group["lr"] * l1 if l1 else None,
            hyperparameters=constants,
            coefficients=coefficients,
        )

    def _step_batches(self, group: dict, params: list[Tensor]) -> None:
        """The step of :attr:`batched` rules: one call of the rule for each set of parameters
        with the same shape, dtypes, device and step count (stacked, then copied back)."""
        constants = self.group_arguments(group, params)
        states = []
        for p in params:
            state = self.state[p]
            if not state:
                state.update(self.init_state(p, group))
            states.append(state)
        steps = [1.0] * len(params)
        if self.has_step:
            counters = [state["step"] for state in states]
            # a tensor, not a number: CPU counters take foreach's per-tensor path, which would
            # wrap a number into a new tensor for each of them
            torch._foreach_add_(counters, torch.ones((), dtype=counters[0].dtype), alpha=1.0)
            steps = torch.stack(counters).tolist()  # one read, not one per parameter
        batches: dict[tuple, list[tuple[Tensor, dict]]] = {}
        for p, state, step in zip(params, states, steps):
            # the state's names and dtypes follow from the shape, the dtype and the group; a
            # large tensor is a batch of its own (views: no copy)
            alone = id(p) if p.numel() >= BATCH_NUMEL else None
            key = (p.shape, p.dtype, p.device, p.grad.dtype, step, alone)
            batches.setdefault(key, []).append((p, state))
        for (*_, step, _), members in batches.items():
            names = [n for n in members[0][1] if n != "step"]
            if len(members) == 1:  # views with a batch dimension: updated where they are
                p, state = members[0]
                param, grad = p.unsqueeze(0), p.grad.unsqueeze(0)
                stacked = {n: state[n].unsqueeze(0) for n in names}
            else:  # (no autograd here: step() runs under no_grad)
                param = torch.stack([p for p, _ in members])
                grad = torch.stack([p.grad for p, _ in members])
                stacked = {n: torch.stack([state[n] for _, state in members]) for n in names}
            coefficients = self.tensor_coefficients(group, members[0][0], step)
            self._update(param, grad, stacked, group, constants, coefficients)
            if len(members) > 1:
                torch._foreach_copy_([p for p, _ in members], list(param.unbind(0)))
                for n in names:
                    torch._foreach_copy_(
                        [state[n] for _, state in members], list(stacked[n].unbind(0))
                    )

    def load_state_dict(self, state_dict: dict) -> None:
        """As ``torch.optim.Optimizer.load_state_dict`` (the state cast to each parameter's
        dtype and device), with the moments in ``state_dtype`` where a group asks for it."""
        torch_api.torch_load_state_dict(self, state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not isinstance(state, dict):
                    continue
                if isinstance(state.get("step"), int | float):  # a step saved as a number
                    state["step"] = step_counter(state["step"])
                if group.get("state_dtype") is not None:
                    for key, value in state.items():
                        if key != "step" and isinstance(value, Tensor):
                            state[key] = value.to(group["state_dtype"])


def step_counter(value: float = 0.0) -> Tensor:
    """A parameter's ``step`` counter as torch.optim keeps it: a 0-d tensor on the CPU, in
    float64 if that is the default dtype, else in float32."""
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return torch.tensor(float(value), dtype=dtype)

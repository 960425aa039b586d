"""The per-tensor path of the optimizers whose rule needs a tensor's shape.

Adafactor's factored second moments (a row and a column factor for a matrix, a full one for a
vector) and Muon's orthogonalization of a matrix are not elementwise: they cannot run on the
engine's flat buffers, whose elements have forgotten which tensor, row and column they belong
to. :class:`ShapedOptimizer` runs such a rule on each parameter as it is, with the base's
steps 1-4 (:func:`gradwise.optim.base.update`: maximize, L1) around it, and keeps the state in
PyTorch's layout, shaped as torch's class shapes it, so that state dicts move either way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradwise.optim import torch_api
from gradwise.optim.base import Optimizer, update


class ShapedOptimizer(Optimizer):
    """Base of the optimizers whose rule works on a whole tensor of a given shape.

    A subclass gives :meth:`init_state` (the state of one parameter, shaped as its rule needs
    it), :meth:`group_arguments` (the rule's constants for one step of a group) and
    :meth:`tensor_coefficients` (the rule's arguments for one tensor at one step). Parameters
    are never laid out in the engine's flat buffers.
    """

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
        constants = self.group_arguments(group, params)
        l1 = group.get("l1", 0.0)
        lr = group["lr"]
        for p in params:
            state = self.state[p]
            if not state:
                state.update(self.init_state(p, group))
            step = 1.0
            if self.has_step:
                state["step"] += 1
                step = state["step"].item()
            update(
                type(self).rule,
                p,
                p.grad,
                {n: t for n, t in state.items() if n != "step"},
                maximize=group.get("maximize", False),
                weight_decay=0.0,  # placed by the rule, where the reference places it
                shrink=None,
                l1_threshold=lr * l1 if l1 else None,
                hyperparameters=constants,
                coefficients=self.tensor_coefficients(group, p, step),
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

"""AdaGrad (Duchi, Hazan & Singer, 2011)."""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine
from gradwise.optim.base import Optimizer, torch_words


def adagrad_coefficients(step: int, lr: float, lr_decay: float) -> dict[str, float]:
    """The rate of step ``t``: ``η_t = η / (1 + (t − 1)·lr_decay)``."""
    return {"clr": lr / (1 + (step - 1) * lr_decay)}


def adagrad(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    eps: float,
    eps_inside_sqrt: bool,
    clr: float | Tensor,
) -> None:
    r"""One AdaGrad step, in place.

    With ``g`` the gradient, ``η = lr``, ``ε = eps``, ``t = step``::

        η_t = η / (1 + (t − 1)·lr_decay)        (clr, from adagrad_coefficients)
        G ← G + g²                               (sum)
        θ ← θ − η_t · g / (sqrt(G) + ε)          (eps_inside_sqrt=True: sqrt(G + ε))

    Differences: PyTorch's form (ε outside the root, ``lr_decay``, ``initial_accumulator_value``)
    by default; Keras and optax put ε inside the root (``eps_inside_sqrt=True``) and start the
    accumulator at 0.1. The spec cites AdaGrad's ever-growing ``G`` as what RMSProp fixes.
    """
    total = state["sum"]
    total.addcmul_(grad, grad, value=1)
    root = engine.sqrt_plus(total, eps, inside=eps_inside_sqrt)
    engine.sub_scaled_ratio_(param, grad, root, clr)


class Adagrad(Optimizer):
    """AdaGrad, drop-in for ``torch.optim.Adagrad`` (same arguments and defaults).

    Extras: ``l1`` (proximal L1), ``eps_inside_sqrt``.
    """

    rule = staticmethod(adagrad)
    sparse_grads = True

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        l1: float = 0.0,
        state_dtype: torch.dtype | None = None,
        eps_inside_sqrt: bool = False,
    ) -> None:
        checks.at_least(
            "Adagrad", "lr_decay", lr_decay, 0.0, also=torch_words("lr_decay", lr_decay)
        )
        checks.at_least(
            "Adagrad",
            "initial_accumulator_value",
            initial_accumulator_value,
            0.0,
            also=torch_words("initial_accumulator_value", initial_accumulator_value),
        )
        checks.at_least("Adagrad", "eps", eps, 0.0, also=torch_words("eps", eps))
        checks.flag("Adagrad", "eps_inside_sqrt", eps_inside_sqrt)
        defaults = dict(
            lr=lr,
            lr_decay=lr_decay,
            eps=eps,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            fused=fused,
            l1=l1,
            state_dtype=state_dtype,
            eps_inside_sqrt=eps_inside_sqrt,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:  # PyTorch creates Adagrad's state up front
            for p in group["params"]:
                self.state[p] = self.init_state(p, group)

    def init_state(self, param: Tensor, group: dict) -> dict[str, Tensor]:
        dtype = group.get("state_dtype") or param.dtype
        value = group["initial_accumulator_value"]
        if value > torch.finfo(dtype).max:
            raise ValueError(
                f"Adagrad: initial_accumulator_value must be at most {torch.finfo(dtype).max:g} "
                f"(the largest {dtype}); received initial_accumulator_value={value!r}"
            )
        state = super().init_state(param, group)
        if param.is_complex():  # both parts start at the value, as in PyTorch
            value = complex(value, value)
        state["sum"] = torch.full_like(param, value, dtype=dtype)
        return state

    def state_names(self, group: dict) -> list[str]:
        return ["sum"]

    def hyperparameters(self, group: dict) -> dict:
        return dict(eps=group["eps"], eps_inside_sqrt=group["eps_inside_sqrt"])

    def coefficients(self, group: dict, step: int) -> dict:
        return adagrad_coefficients(step, group["lr"], group["lr_decay"])

"""Rprop (Riedmiller & Braun, 1993): steps from the gradient's sign, not its size."""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine
from gradwise.optim.base import Optimizer


def rprop(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    etas: tuple[float, float],
    step_sizes: tuple[float, float],
) -> None:
    r"""One Rprop step, in place ("A Direct Adaptive Method for Faster Backpropagation
    Learning: The RPROP Algorithm", Riedmiller & Braun, ICNN 1993).

    Each coordinate keeps its own step size: it grows while the gradient keeps its sign and
    shrinks when the sign flips (a minimum was jumped over); the parameter moves by that size
    against the gradient's sign, whatever the gradient's magnitude. With ``g`` the gradient,
    ``η−, η+ = etas``, ``Δmin, Δmax = step_sizes``, ``g_prev`` the last gradient kept::

        s = sign(g·g_prev)
        Δ ← clamp(Δ·(η+ if s > 0, η− if s < 0, 1 if s = 0), Δmin, Δmax)   (step_size; Δ₀ = lr)
        g ← 0 where s < 0                     (after a sign flip: no move, and no flip next time)
        θ ← θ − sign(g)·Δ
        g_prev ← g                            (prev)

    Differences: this is Rprop without weight backtracking ("Rprop−", as in PyTorch): a flip
    zeroes the step instead of undoing the previous one. It is meant for full-batch gradients.
    """
    etaminus, etaplus = etas
    step_size_min, step_size_max = step_sizes
    prev, step_size = state["prev"], state["step_size"]
    # recorded by autograd: the product must not read ``prev`` after it is overwritten below
    sign = grad.mul(prev.clone() if torch.is_grad_enabled() else prev).sign()
    flipped = sign < 0
    factor = torch.where(sign > 0, etaplus, sign)
    factor = torch.where(flipped, etaminus, factor)
    factor = torch.where(factor == 0, 1.0, factor)
    step_size.mul_(factor).clamp_(step_size_min, step_size_max)
    grad = torch.where(flipped, 0.0, grad)
    engine.addcmul_(param, grad.sign(), step_size, -1)
    prev.copy_(grad)


class Rprop(Optimizer):
    """Rprop, drop-in for ``torch.optim.Rprop`` (same arguments and defaults).

    ``weight_decay`` is refused, as torch's class has none (a decay folded into the gradient
    would only change its sign near zero; it is not Rprop). Extras: ``l1`` (proximal L1 after
    each update, with ``lr·l1`` as threshold), ``state_dtype``, ``fused`` (the engine's
    compiled update). ``foreach`` is accepted and ignored.
    """

    rule = staticmethod(rprop)

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50),
        *,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        l1: float = 0.0,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        for name, pair in (("etas", etas), ("step_sizes", step_sizes)):
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ValueError(f"Rprop: {name} must be a pair; received {name}={pair!r}")
            for i, value in enumerate(pair):
                checks.number("Rprop", f"{name}[{i}]", value)
        if not 0.0 < etas[0] < 1.0 < etas[1]:
            raise ValueError(
                f"Rprop: etas must satisfy 0 < etas[0] < 1 < etas[1]; received etas={etas!r} "
                f"(Invalid eta values: {etas[0]}, {etas[1]})"
            )
        defaults = dict(
            lr=lr,
            etas=tuple(etas),
            step_sizes=tuple(step_sizes),
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            capturable=capturable,
            fused=fused,
            l1=l1,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        # torch's Rprop ignores keys it does not know; a weight_decay of 0 changes nothing
        # either way, any other would be a decay Rprop does not have (the base would apply it)
        if param_group.get("weight_decay", 0) != 0:
            raise ValueError(
                "Rprop: weight_decay is not an option of Rprop (torch.optim.Rprop has none); "
                f"received weight_decay={param_group['weight_decay']!r}"
            )
        super().add_param_group(param_group)

    def init_state(self, param: Tensor, group: dict) -> dict[str, Tensor]:
        state = super().init_state(param, group)
        lr = float(group["lr"])
        value = complex(lr, lr) if param.is_complex() else lr  # both parts start at lr
        state["step_size"] = torch.full_like(param, value, dtype=state["step_size"].dtype)
        return state

    def state_names(self, group: dict) -> list[str]:
        return ["prev", "step_size"]

    def hyperparameters(self, group: dict) -> dict:
        return dict(etas=group["etas"], step_sizes=group["step_sizes"])

    def coefficients(self, group: dict, step) -> dict:
        return {}

"""Adamax (Kingma & Ba, 2015): Adam with the infinity norm in place of the second moment."""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine
from gradwise.optim.base import Optimizer, torch_words
from gradwise.optim.nadam import checked_betas


def adamax(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    betas: tuple[float, float],
    eps: float,
    clr: float | Tensor,
) -> None:
    r"""One Adamax step, in place ("Adam: A Method for Stochastic Optimization", Kingma & Ba,
    ICLR 2015, section 7.1).

    Adam's second moment is an exponentially weighted L2 norm of past gradients; letting the
    norm's order go to infinity gives a running maximum, which needs no bias correction and
    bounds each step by ``η/(1 − β1^t)``. With ``g`` the gradient, ``β1, β2 = betas``,
    ``η = lr``, ``ε = eps``, ``t`` the step::

        m ← β1·m + (1 − β1)·g                    (exp_avg)
        u ← max(β2·u, |g| + ε)                   (exp_inf)
        θ ← θ − η/(1 − β1^t) · m / u             (clr = η/(1 − β1^t), from the class)

    Differences: the paper's ``u ← max(β2·u, |g|)`` has no ε (a zero gradient from the start
    would divide by zero); PyTorch adds ε inside the maximum, and so does this rule. Keras adds
    ε to ``u`` in the division instead.
    """
    beta1, beta2 = betas
    exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
    engine.lerp_(exp_avg, grad, 1 - beta1)
    engine.maximum_(exp_inf.mul_(beta2), grad.abs().add_(eps))
    engine.sub_scaled_ratio_(param, exp_avg, exp_inf, clr)


class Adamax(Optimizer):
    """Adamax, drop-in for ``torch.optim.Adamax`` (same arguments and defaults).

    Extras: ``l1`` (proximal L1), ``state_dtype`` (state buffers' dtype), ``fused`` (the
    engine's compiled update). ``foreach`` is accepted and ignored.
    """

    rule = staticmethod(adamax)

    def __init__(
        self,
        params,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        fused: bool | None = None,
        l1: float = 0.0,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        betas = checked_betas("Adamax", betas)
        checks.at_least("Adamax", "eps", eps, 0.0, also=torch_words("eps", eps))
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            capturable=capturable,
            fused=fused,
            l1=l1,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults)

    def state_names(self, group: dict) -> list[str]:
        return ["exp_avg", "exp_inf"]

    def hyperparameters(self, group: dict) -> dict:
        return dict(betas=group["betas"], eps=group["eps"])

    def coefficients(self, group: dict, step) -> dict:
        return {"clr": group["lr"] / (1 - group["betas"][0] ** step)}

"""Adadelta (Zeiler, 2012): per-coordinate steps in the units of the parameter."""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine
from gradwise.optim.base import Optimizer, torch_words


def adadelta(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    rho: float,
    eps: float,
    lr: float | Tensor,
) -> None:
    r"""One Adadelta step, in place ("ADADELTA: An Adaptive Learning Rate Method", Zeiler,
    arXiv:1212.5701, 2012).

    AdaGrad's ever-growing sum of squared gradients is replaced by a decaying average, and the
    rate by the ratio of two RMS values — of past updates over past gradients — so that the step
    has the parameter's units and needs no hand-set rate. With ``g`` the gradient, ``ρ = rho``,
    ``ε = eps``, ``η = lr``::

        E[g²] ← ρ·E[g²] + (1 − ρ)·g²                      (square_avg)
        Δ = sqrt(E[Δ²] + ε) / sqrt(E[g²] + ε) · g
        E[Δ²] ← ρ·E[Δ²] + (1 − ρ)·Δ²                      (acc_delta)
        θ ← θ − η·Δ

    Differences: the paper has no rate (η = 1, PyTorch's default); PyTorch's ``lr`` scales the
    step, and this rule follows it.
    """
    square_avg, acc_delta = state["square_avg"], state["acc_delta"]
    engine.addcmul_(square_avg.mul_(rho), grad, grad, 1 - rho)
    std = engine.sqrt_plus(square_avg, eps, inside=True)
    delta = engine.sqrt_plus(acc_delta, eps, inside=True).div(std) * grad
    engine.addcmul_(acc_delta.mul_(rho), delta, delta, 1 - rho)
    engine.sub_scaled_(param, delta, lr)


class Adadelta(Optimizer):
    """Adadelta, drop-in for ``torch.optim.Adadelta`` (same arguments and defaults).

    Extras: ``l1`` (proximal L1), ``state_dtype`` (state buffers' dtype), ``fused`` (the
    engine's compiled update). ``foreach`` is accepted and ignored.
    """

    rule = staticmethod(adadelta)

    def __init__(
        self,
        params,
        lr: float | Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        l1: float = 0.0,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        checks.in_range(
            "Adadelta", "rho", rho, 0.0, 1.0, closed_high=True, also=f"Invalid rho value: {rho}"
        )
        checks.at_least("Adadelta", "eps", eps, 0.0, also=torch_words("eps", eps))
        defaults = dict(
            lr=lr,
            rho=rho,
            eps=eps,
            weight_decay=weight_decay,
            foreach=foreach,
            capturable=capturable,
            maximize=maximize,
            differentiable=differentiable,
            fused=fused,
            l1=l1,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults)

    def state_names(self, group: dict) -> list[str]:
        return ["square_avg", "acc_delta"]

    def hyperparameters(self, group: dict) -> dict:
        return dict(rho=group["rho"], eps=group["eps"])

    def coefficients(self, group: dict, step) -> dict:
        return {"lr": group["lr"]}

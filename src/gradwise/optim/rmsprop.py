"""RMSProp (Hinton, 2012), with PyTorch's options: centered, momentum."""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine
from gradwise.optim.base import Optimizer, torch_words


def rmsprop(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    alpha: float,
    eps: float,
    momentum: float,
    centered: bool,
    eps_inside_sqrt: bool,
    lr: float | Tensor,
) -> None:
    r"""One RMSProp step, in place.

    With ``g`` the gradient, ``ρ = alpha``, ``η = lr``, ``ε = eps``, ``μ = momentum``::

        E[g²] ← ρ·E[g²] + (1 − ρ)·g²            (square_avg)
        s = E[g²]                               (centered: E[g] ← ρ·E[g] + (1 − ρ)·g;
                                                 s = E[g²] − E[g]²)
        r = sqrt(s) + ε                         (eps_inside_sqrt=True: r = sqrt(s + ε))
        θ ← θ − η · g / r                       (momentum: b ← μ·b + g / r;  θ ← θ − η·b)

    Differences: the spec, Keras and optax put ε inside the root, ``η·g / sqrt(E[g²] + ε)``;
    PyTorch (and this rule by default, for drop-in parity) adds it outside. Set
    ``eps_inside_sqrt=True`` for the spec's form. ``alpha`` is the spec's ``ρ`` (Keras: ``rho``).
    """
    square_avg = state["square_avg"]
    engine.addcmul_(square_avg.mul_(alpha), grad, grad, 1 - alpha)
    second = square_avg
    if centered:
        grad_avg = state["grad_avg"]
        engine.lerp_(grad_avg, grad, 1 - alpha)
        second = square_avg.addcmul(grad_avg, grad_avg, value=-1)
    root = engine.sqrt_plus(second, eps, inside=eps_inside_sqrt)
    if engine.nonzero(momentum):  # momentum >= 0
        buf = state["momentum_buffer"]
        buf.mul_(momentum).addcdiv_(grad, root)
        engine.sub_scaled_(param, buf, lr)
    else:
        engine.sub_scaled_ratio_(param, grad, root, lr)


class RMSprop(Optimizer):
    """RMSProp, drop-in for ``torch.optim.RMSprop`` (same arguments and defaults).

    Extras: ``l1`` (proximal L1), ``eps_inside_sqrt`` (the spec's ``sqrt(E[g²] + ε)``).

    Example (the spec's RMSProp, ρ = 0.9)::

        >>> import torch, gradwise.optim as go
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> opt = go.RMSprop([w], lr=0.01, alpha=0.9, eps=1e-8, eps_inside_sqrt=True)
    """

    rule = staticmethod(rmsprop)

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        fused: bool | None = None,
        l1: float = 0.0,
        state_dtype: torch.dtype | None = None,
        eps_inside_sqrt: bool = False,
    ) -> None:
        checks.in_range(
            "RMSprop", "alpha", alpha, 0.0, 1.0, closed_high=True, also=torch_words("alpha", alpha)
        )
        checks.at_least("RMSprop", "eps", eps, 0.0, also=torch_words("eps", eps))
        checks.at_least(
            "RMSprop", "momentum", momentum, 0.0, also=torch_words("momentum", momentum)
        )
        checks.flag("RMSprop", "centered", centered)
        checks.flag("RMSprop", "eps_inside_sqrt", eps_inside_sqrt)
        defaults = dict(
            lr=lr,
            alpha=alpha,
            eps=eps,
            weight_decay=weight_decay,
            momentum=momentum,
            centered=centered,
            capturable=capturable,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            fused=fused,
            l1=l1,
            state_dtype=state_dtype,
            eps_inside_sqrt=eps_inside_sqrt,
        )
        super().__init__(params, defaults)

    def state_names(self, group: dict) -> list[str]:
        names = ["square_avg"]
        if group["momentum"] > 0:
            names.append("momentum_buffer")
        if group["centered"]:
            names.append("grad_avg")
        return names

    def hyperparameters(self, group: dict) -> dict:
        return dict(
            alpha=group["alpha"],
            eps=group["eps"],
            momentum=group["momentum"],
            centered=group["centered"],
            eps_inside_sqrt=group["eps_inside_sqrt"],
        )

    def coefficients(self, group: dict, step: int) -> dict:
        return {"lr": group["lr"]}

"""ASGD: averaged stochastic gradient descent (Polyak & Juditsky, 1992)."""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine
from gradwise.optim.base import Optimizer


def asgd(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    lambd: float,
    eta: float | Tensor,
    mu: float | Tensor,
    average: bool,
) -> None:
    r"""One ASGD step, in place ("Acceleration of Stochastic Approximation by Averaging",
    Polyak & Juditsky, SIAM J. Control Optim. 1992; the decaying rate of Bottou's "Stochastic
    Gradient Descent Tricks", 2012).

    Plain SGD with a slowly decaying rate, plus a running average of the iterates that starts
    at step ``t0``: the average converges at the optimal rate where the last iterate is noisy.
    With ``g`` the gradient, ``η = lr``, ``λ = lambd``, ``α = alpha``, ``t`` the step::

        θ ← θ·(1 − λ·η_t) − η_t·g                 (η_1 = η)
        θ̄ ← θ                          if μ_t = 1 (before t0: the "average" follows θ)
        θ̄ ← θ̄ + μ_t·(θ − θ̄)            otherwise  (ax)
        η_{t+1} = η / (1 + λ·η·t)^α,  μ_{t+1} = 1 / max(1, t − t0)

    ``η_t`` and ``μ_t`` (``eta`` and ``mu``) are per-parameter scalar state, advanced by
    :meth:`ASGD.advance`; this rule receives the step's values and ``average = (μ_t ≠ 1)``.

    Differences: the rates are PyTorch's (``t0 = 1e6`` by default, so the average is θ itself
    for the first million steps). The averaged parameters live in the state as ``ax``; as in
    PyTorch they are not swapped into the model.
    """
    param.mul_(1 - lambd * eta)
    engine.sub_scaled_(param, grad, eta)
    ax = state["ax"]
    if average:
        ax.add_(param.sub(ax).mul_(mu))
    else:
        ax.copy_(param)


class ASGD(Optimizer):
    """ASGD, drop-in for ``torch.optim.ASGD`` (same arguments and defaults).

    ``eta`` and ``mu`` are per-parameter scalar state (0-d tensors, as in torch); in a flat
    segment they are views of one buffer each, advanced by one operation a step. Extras:
    ``l1`` (proximal L1), ``state_dtype``. ``foreach`` is accepted and ignored.
    """

    rule = staticmethod(asgd)
    scalar_state = ("eta", "mu")

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        *,
        l1: float = 0.0,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        # a negative decay or power would make the rate's denominator 0 or negative
        checks.at_least("ASGD", "lambd", lambd, 0)
        checks.at_least("ASGD", "alpha", alpha, 0)
        checks.number("ASGD", "t0", t0)
        defaults = dict(
            lr=lr,
            lambd=lambd,
            alpha=alpha,
            t0=t0,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
            differentiable=differentiable,
            capturable=capturable,
            l1=l1,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults)

    def init_state(self, param: Tensor, group: dict) -> dict[str, Tensor]:
        state = super().init_state(param, group)
        dtype = state["step"].dtype  # torch's dtype for its scalars; on the parameter's device
        state["eta"] = torch.tensor(float(group["lr"]), dtype=dtype, device=param.device)
        state["mu"] = torch.ones((), dtype=dtype, device=param.device)
        return state

    def state_names(self, group: dict) -> list[str]:
        return ["ax"]

    def hyperparameters(self, group: dict) -> dict:
        return dict(lambd=group["lambd"])

    def coefficients(self, group: dict, step) -> dict:
        return {}

    def advance(self, group: dict, state: dict[str, Tensor], step) -> dict:
        """This step's ``eta`` and ``mu`` (last step's values), then the next step's, in place,
        rounded through torch's scalar dtype as torch rounds them."""
        eta, mu = state["eta"], state["mu"]
        lr, lambd, alpha, t0 = group["lr"], group["lambd"], group["alpha"], group["t0"]
        if isinstance(step, Tensor):  # capturable: the values stay on the device
            now = {"eta": eta.clone(), "mu": mu.clone(), "average": True}
            eta.copy_(lr / ((1 + lambd * lr * step) ** alpha))
            mu.copy_(1 / torch.maximum(step - t0, torch.ones_like(step)))
            return now
        now = {"eta": engine.first_value(eta), "mu": engine.first_value(mu)}
        now["average"] = now["mu"] != 1
        eta.copy_(torch.as_tensor(lr / ((1 + lambd * lr * step) ** alpha)))
        mu.copy_(torch.as_tensor(1 / max(1, step - t0)))
        return now

"""NAdam (Dozat, 2016): Adam with Nesterov momentum, and NAdamW with decoupled weight decay."""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine
from gradwise.optim.base import Optimizer, torch_words


def momentum_schedule(step, beta1: float, momentum_decay: float):
    """Dozat's warming momentum ``μ_t = β1·(1 − ½·0.96^(t·ψ))`` at step ``t`` (a number, or the
    step tensor when ``capturable``)."""
    return beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))


def nadam(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    betas: tuple[float, float],
    eps: float,
    bias_correction2: float | Tensor,
    grad_scale: float | Tensor,
    avg_scale: float | Tensor,
) -> None:
    r"""One NAdam step, in place ("Incorporating Nesterov Momentum into Adam", Dozat, ICLR 2016
    workshop).

    Adam's look-ahead variant: the step mixes the current gradient and the *next* momentum, as
    Nesterov's method evaluates the momentum one step ahead. With ``g`` the gradient,
    ``β1, β2 = betas``, ``η = lr``, ``ψ = momentum_decay``, ``ε = eps``, ``t`` the step::

        μ_t = β1·(1 − ½·0.96^(t·ψ))           momentum schedule (μ_{t+1} likewise)
        Π_t = Π_{t−1}·μ_t                      (mu_product, one number per parameter, Π_0 = 1)
        m ← β1·m + (1 − β1)·g                  (exp_avg)
        v ← β2·v + (1 − β2)·g²                 (exp_avg_sq)
        d = sqrt(v / (1 − β2^t)) + ε
        θ ← θ − η·(1 − μ_t)/(1 − Π_t) · g/d − η·μ_{t+1}/(1 − Π_t·μ_{t+1}) · m/d

    The schedule and ``Π_t`` are advanced by :meth:`NAdam.advance` (``Π_t`` one number per
    parameter, as torch keeps it); this rule receives ``grad_scale = η(1 − μ_t)/(1 − Π_t)``,
    ``avg_scale = η·μ_{t+1}/(1 − Π_t·μ_{t+1})`` and ``bias_correction2 = 1 − β2^t``.

    Differences: the paper's momentum schedule is PyTorch's (Keras' ``Nadam`` uses the same
    0.96 base and ψ = 0.004); with ``decoupled_weight_decay`` the base class shrinks θ by
    ``1 − η·weight_decay`` first (NAdamW), as torch does.
    """
    beta1, beta2 = betas
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    engine.lerp_(exp_avg, grad, 1 - beta1)
    engine.addcmul_(exp_avg_sq.mul_(beta2), grad, grad, 1 - beta2)
    denom = engine.sqrt_plus(engine.div_scalar(exp_avg_sq, bias_correction2), eps)
    engine.sub_scaled_ratio_(param, grad, denom, grad_scale)
    engine.sub_scaled_ratio_(param, exp_avg, denom, avg_scale)


class NAdam(Optimizer):
    """NAdam, drop-in for ``torch.optim.NAdam`` (same arguments and defaults).

    ``mu_product`` is per-parameter scalar state (a 0-d tensor, as in torch); in a flat segment
    the tensors are views of one buffer, advanced by one operation a step. Extras: ``l1``
    (proximal L1), ``state_dtype`` (moment buffers' dtype). ``foreach`` is accepted and
    ignored.
    """

    rule = staticmethod(nadam)
    scalar_state = ("mu_product",)

    def __init__(
        self,
        params,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        l1: float = 0.0,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        betas = checked_betas("NAdam", betas)
        checks.at_least("NAdam", "eps", eps, 0.0, also=torch_words("eps", eps))
        checks.at_least(
            "NAdam",
            "momentum_decay",
            momentum_decay,
            0.0,
            also=f"Invalid momentum_decay value: {momentum_decay}",
        )
        checks.flag("NAdam", "decoupled_weight_decay", decoupled_weight_decay)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            momentum_decay=momentum_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            l1=l1,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults)

    def init_state(self, param: Tensor, group: dict) -> dict[str, Tensor]:
        state = super().init_state(param, group)
        step = state["step"]  # mu_product: torch's dtype and place for it are the step's
        state["mu_product"] = torch.ones((), dtype=step.dtype, device=step.device)
        return state

    def state_names(self, group: dict) -> list[str]:
        return ["exp_avg", "exp_avg_sq"]

    def hyperparameters(self, group: dict) -> dict:
        return dict(betas=group["betas"], eps=group["eps"])

    def coefficients(self, group: dict, step) -> dict:
        return {"bias_correction2": 1 - group["betas"][1] ** step}

    def advance(self, group: dict, state: dict[str, Tensor], step) -> dict:
        beta1, lr, psi = group["betas"][0], group["lr"], group["momentum_decay"]
        mu = momentum_schedule(step, beta1, psi)
        mu_next = momentum_schedule(step + 1, beta1, psi)
        mu_product = state["mu_product"]
        mu_product *= mu  # in the counter's dtype, as torch rounds it
        # a number, read once, except on a captured step (no host sync): torch's arithmetic
        product = mu_product if isinstance(step, Tensor) else engine.first_value(mu_product)
        return {
            "grad_scale": lr * (1.0 - mu) / (1.0 - product),
            "avg_scale": lr * mu_next / (1.0 - product * mu_next),
        }


def checked_betas(name: str, betas) -> tuple[float, float]:
    """``betas`` as a pair of numbers in [0, 1), refused with torch's words otherwise."""
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise ValueError(f"{name}: betas must be a pair (beta1, beta2); received betas={betas!r}")
    return tuple(
        checks.in_range(name, f"betas[{i}]", b, 0.0, 1.0, also=torch_words(f"betas[{i}]", b))
        for i, b in enumerate(betas)
    )

"""RAdam (Liu et al., 2020): Adam with its adaptive rate's variance rectified."""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine
from gradwise.optim.base import Optimizer, torch_words
from gradwise.optim.nadam import checked_betas


def radam_coefficients(step, lr, betas: tuple[float, float]) -> dict:
    """Step ``t``'s scalars (``t`` a number, or the step tensor when ``capturable``): the bias
    corrections, and whether and by how much the adaptive rate is rectified."""
    beta1, beta2 = betas
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
    # 1.0 or 0.0: a number, never a flag, so that a compiled kernel takes it at run time (a
    # kernel is chosen once per group options, and ρ_t crosses 5 during training); a tensor
    # when ``capturable``
    rectified = rho_t > 5.0
    rect = 1.0  # unused unless rectified (below ρ_t = 4 the root's argument is negative)
    if not isinstance(rectified, Tensor):
        rectified = 1.0 if rectified else 0.0
    if engine.nonzero(rectified):
        rect = (
            (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        ) ** 0.5
    return {
        "lr": lr,
        "bias_correction1": bias_correction1,
        "root_correction": bias_correction2**0.5,
        "rectified": rectified,
        "rect": rect,
    }


def radam(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    betas: tuple[float, float],
    eps: float,
    lr: float | Tensor,
    bias_correction1: float | Tensor,
    root_correction: float | Tensor,
    rectified: float | Tensor,
    rect: float | Tensor,
) -> None:
    r"""One RAdam step, in place ("On the Variance of the Adaptive Learning Rate and Beyond",
    Liu, Jiang, He, Chen, Liu, Gao & Han, ICLR 2020).

    Early in training Adam's second-moment estimate rests on few gradients, so its adaptive
    rate has a large variance; RAdam takes plain bias-corrected momentum steps until the
    estimate is long enough, and afterwards scales the adaptive step by a factor ``r_t`` that
    brings its variance to that of the long-run estimate. With ``g`` the gradient,
    ``β1, β2 = betas``, ``η = lr``, ``ε = eps``, ``t`` the step::

        m ← β1·m + (1 − β1)·g                          (exp_avg)
        v ← β2·v + (1 − β2)·g²                         (exp_avg_sq)
        m̂ = m / (1 − β1^t)
        ρ_∞ = 2/(1 − β2) − 1
        ρ_t = ρ_∞ − 2t·β2^t / (1 − β2^t)               (length of the approximated SMA)
        if ρ_t > 5:
            r_t = sqrt((ρ_t − 4)(ρ_t − 2)ρ_∞ / ((ρ_∞ − 4)(ρ_∞ − 2)ρ_t))
            θ ← θ − η · m̂ · sqrt(1 − β2^t)/(sqrt(v) + ε) · r_t
        else:
            θ ← θ − η · m̂

    The step's scalars come from :func:`radam_coefficients` (``rectified`` is 1.0 when
    ρ_t > 5, else 0.0; traced into a kernel, or on a captured step, it is a tensor and the rule
    selects between the two updates per element). Differences: the paper switches
    at ρ_t > 4; PyTorch (and this rule, for parity) at ρ_t > 5. With
    ``decoupled_weight_decay`` the base class shrinks θ first (RAdamW), as torch does.
    """
    beta1, beta2 = betas
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    engine.lerp_(exp_avg, grad, 1 - beta1)
    engine.addcmul_(exp_avg_sq.mul_(beta2), grad, grad, 1 - beta2)
    step = engine.div_scalar(exp_avg, bias_correction1) * lr
    if isinstance(rectified, Tensor):  # traced or captured: both computed, one selected
        adaptive = root_correction / engine.sqrt_plus(exp_avg_sq, eps)
        step = step * torch.where(rectified > 0, rect * adaptive, 1.0)
    elif engine.nonzero(rectified):
        adaptive = root_correction / engine.sqrt_plus(exp_avg_sq, eps)
        step = step * adaptive * rect
    param.sub_(step)


class RAdam(Optimizer):
    """RAdam, drop-in for ``torch.optim.RAdam`` (same arguments and defaults).

    Extras: ``l1`` (proximal L1), ``state_dtype`` (moment buffers' dtype), ``fused`` (the
    engine's compiled update, see :class:`~gradwise.optim.base.Optimizer`). ``foreach`` is
    accepted and ignored.
    """

    rule = staticmethod(radam)

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        l1: float = 0.0,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        betas = checked_betas("RAdam", betas)
        checks.at_least("RAdam", "eps", eps, 0.0, also=torch_words("eps", eps))
        checks.flag("RAdam", "decoupled_weight_decay", decoupled_weight_decay)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            l1=l1,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults)

    def state_names(self, group: dict) -> list[str]:
        return ["exp_avg", "exp_avg_sq"]

    def hyperparameters(self, group: dict) -> dict:
        return dict(betas=group["betas"], eps=group["eps"])

    def coefficients(self, group: dict, step) -> dict:
        return radam_coefficients(step, group["lr"], group["betas"])

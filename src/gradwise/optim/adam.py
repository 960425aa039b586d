"""Adam and AdamW: one rule; AdamW is Adam with decoupled weight decay."""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine
from gradwise.optim.base import Optimizer, torch_words


def adam_coefficients(step: int, lr: float, betas: tuple[float, float]) -> dict[str, float]:
    """Step ``t``'s scalars: ``step_size = η/(1 − β1^t)``, ``root_correction = √(1 − β2^t)``."""
    beta1, beta2 = betas
    return {"step_size": lr / (1 - beta1**step), "root_correction": (1 - beta2**step) ** 0.5}


def adam(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    betas: tuple[float, float],
    eps: float,
    amsgrad: bool,
    step_size: float | Tensor,
    root_correction: float | Tensor,
) -> None:
    r"""One Adam step, in place (Kingma & Ba, 2015).

    With ``g`` the gradient, ``β1, β2 = betas``, ``η = lr``, ``ε = eps``, ``t`` the step::

        m ← β1·m + (1 − β1)·g                (exp_avg: first moment)
        v ← β2·v + (1 − β2)·g²               (exp_avg_sq: second moment)
        m̂ = m / (1 − β1^t)
        v̂ = v / (1 − β2^t)                   (with amsgrad: v_max ← max(v_max, v); v̂ from v_max)
        θ ← θ − η · m̂ / (sqrt(v̂) + ε)

    computed as ``θ ← θ − step_size · m / (sqrt(v) / root_correction + ε)`` with the step's
    scalars from :func:`adam_coefficients` (PyTorch's arrangement, the same numbers).

    Differences: the spec's and PyTorch's equations (ε outside the root, added after the bias
    correction). Keras and optax add ``ε`` to ``sqrt(v̂)`` the same way; the original paper's
    "efficient" form adds an ε̂ to ``sqrt(v)`` before correcting, which differs slightly while
    ``t`` is small.
    """
    beta1, beta2 = betas
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    engine.lerp_(exp_avg, grad, 1 - beta1)
    engine.addcmul_(exp_avg_sq.mul_(beta2), grad, grad, 1 - beta2)
    second = exp_avg_sq
    if amsgrad:
        second = engine.maximum_(state["max_exp_avg_sq"], exp_avg_sq)
    denom = engine.div_scalar_(second.sqrt(), root_correction).add_(eps)
    engine.sub_scaled_ratio_(param, exp_avg, denom, step_size)


class Adam(Optimizer):
    """Adam, drop-in for ``torch.optim.Adam`` (same arguments and defaults).

    Extras: ``l1`` (proximal L1 after each update). ``decoupled_weight_decay=True`` gives AdamW.
    ``foreach``/``fused`` are accepted and ignored: the engine picks the fastest path.

    Example::

        >>> import torch, gradwise.optim as go
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> opt = go.Adam([w], lr=0.1)
        >>> (w ** 2).sum().backward(); _ = opt.step()
        >>> w.detach()
        tensor([ 0.9000, -1.9000])
    """

    rule = staticmethod(adam)
    coefficients_from_step_tensor = True

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        l1: float = 0.0,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise ValueError(
                f"{name}: betas must be a pair (beta1, beta2); received betas={betas!r}"
            )
        if isinstance(betas[0], Tensor) != isinstance(betas[1], Tensor):
            raise ValueError(
                f"{name}: betas must be either both floats or both Tensors; received "
                f"betas={tuple(betas)!r}"
            )
        if foreach and not capturable:  # refused as torch.optim refuses them
            for what, value in (("lr", lr), ("betas[0]", betas[0])):
                if isinstance(value, Tensor):
                    raise ValueError(
                        f"{name}: {what} as a Tensor is not supported for capturable=False and "
                        f"foreach=True; received {what}={value!r}"
                    )
        betas = tuple(
            checks.in_range(name, f"betas[{i}]", b, 0.0, 1.0, also=torch_words(f"betas[{i}]", b))
            for i, b in enumerate(map(_item, betas))
        )
        checks.at_least(name, "eps", eps, 0.0, also=torch_words("eps", eps))
        checks.flag(name, "amsgrad", amsgrad)
        checks.flag(name, "decoupled_weight_decay", decoupled_weight_decay)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=decoupled_weight_decay,
            l1=l1,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults)

    def state_names(self, group: dict) -> list[str]:
        names = ["exp_avg", "exp_avg_sq"]
        return names + ["max_exp_avg_sq"] if group["amsgrad"] else names

    def hyperparameters(self, group: dict) -> dict:
        return dict(betas=group["betas"], eps=group["eps"], amsgrad=group["amsgrad"])

    def coefficients(self, group: dict, step: int) -> dict:
        return adam_coefficients(step, group["lr"], group["betas"])


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay, drop-in for
    ``torch.optim.AdamW`` (default ``weight_decay=1e-2``).

    The decay shrinks the weights directly, ``θ ← θ·(1 − lr·weight_decay)``, before Adam's update,
    instead of adding ``weight_decay·θ`` to the gradient (which Adam would then rescale).
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        l1: float = 0.0,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
            l1=l1,
            state_dtype=state_dtype,
        )


def _item(value):
    return float(value.item()) if isinstance(value, Tensor) and value.numel() == 1 else value

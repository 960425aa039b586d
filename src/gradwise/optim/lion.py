"""Lion (Chen et al., 2023): the sign of an interpolated momentum, one state buffer."""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine
from gradwise.optim.base import Optimizer
from gradwise.optim.nadam import checked_betas


def lion(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    betas: tuple[float, float],
    lr: float | Tensor,
) -> None:
    r"""One Lion step, in place ("Symbolic Discovery of Optimization Algorithms", Chen et al.,
    NeurIPS 2023, algorithm 2).

    With ``g`` the gradient, ``β1, β2 = betas``, ``η = lr``::

        c = β1·m + (1 − β1)·g                    (the update's interpolation)
        θ ← θ − η·sign(c)                        (every coordinate moves by exactly η)
        m ← β2·m + (1 − β2)·g                    (exp_avg: the momentum, with β2 > β1)

    Weight decay (decoupled, as AdamW's: ``θ ← θ·(1 − η·λ)``) comes before, from the base class.
    Because every step has the same size per coordinate, Lion wants a learning rate 3-10×
    smaller than AdamW's and a weight decay 3-10× larger (the paper's advice).

    ``c`` is ``β1·m`` plus ``(1 − β1)·g``, two roundings, as the reference (``lion-pytorch``)
    computes it: a different rounding could flip the sign of a ``c`` near zero.
    """
    beta1, beta2 = betas
    exp_avg = state["exp_avg"]
    direction = engine.add_scaled_(exp_avg * beta1, grad, 1 - beta1).sign_()
    engine.sub_scaled_(param, direction, lr)
    engine.add_scaled_(exp_avg.mul_(beta2), grad, 1 - beta2)


class Lion(Optimizer):
    """Lion, drop-in for ``lion_pytorch.Lion`` (same arguments and defaults).

    ``use_triton=True`` is refused (gradwise compiles its own kernels), and so is
    ``decoupled_weight_decay=True`` (``lion-pytorch``'s decay divided by the initial learning
    rate), which is not supported. Complex parameters are refused: ``lion-pytorch`` takes the
    complex sign ``z/|z|``, where gradwise's engine treats a complex number as two real ones.
    Extras: ``l1`` (proximal L1), ``state_dtype`` (the momentum's dtype), ``fused`` (the
    engine's compiled update).
    """

    rule = staticmethod(lion)
    has_step = False

    def __init__(
        self,
        params,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        use_triton: bool = False,
        decoupled_weight_decay: bool = False,
        *,
        fused: bool | None = None,
        l1: float = 0.0,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        checks.positive("Lion", "lr", lr)
        betas = checked_betas("Lion", betas)
        for flag, why in (
            ("use_triton", "gradwise compiles its own kernels; leave it False"),
            ("decoupled_weight_decay", "the decay divided by the initial lr is not supported"),
        ):
            if checks.flag("Lion", flag, locals()[flag]):
                raise NotImplementedError(f"Lion: {flag}=True is refused: {why}")
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            # the base class's decoupled decay, θ ← θ·(1 − lr·λ): Lion's only kind
            decoupled_weight_decay=True,
            maximize=False,
            fused=fused,
            l1=l1,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.is_complex():
                    raise TypeError(
                        "Lion: complex parameters are not supported (lion-pytorch takes the "
                        f"complex sign); received a {p.dtype} parameter"
                    )

    def state_names(self, group: dict) -> list[str]:
        return ["exp_avg"]

    def hyperparameters(self, group: dict) -> dict:
        return {"betas": group["betas"]}

    def coefficients(self, group: dict, step) -> dict:
        return {"lr": group["lr"]}

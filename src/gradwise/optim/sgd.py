"""Gradient descent: plain, with momentum, and with Nesterov momentum — one rule."""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine
from gradwise.optim.base import Optimizer, torch_words


def sgd(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    momentum: float,
    dampening: float,
    nesterov: bool,
    first: bool,
    lr: float | Tensor,
) -> None:
    r"""One step of (momentum) gradient descent, in place.

    With ``g`` the gradient ∇J(θ), ``μ = momentum``, ``τ = dampening``, ``η = lr``::

        b ← g                          on the first step (``first``; μ ≠ 0)
        b ← μ·b + (1 − τ)·g            afterwards
        d = g            if μ = 0
        d = b            with momentum
        d = g + μ·b      with Nesterov momentum
        θ ← θ − η·d

    Batch, stochastic and mini-batch gradient descent are this rule fed gradients of the whole
    set, of one sample, or of a mini-batch.

    Differences: PyTorch's SGD is the same. Keras writes momentum as ``v ← μ·v − η·g; θ ← θ + v``,
    which is this rule with the learning rate folded into the buffer (equal when ``η`` is
    constant). The spec's "momentum" is the ``μ·b + g`` accumulation above (``τ = 0``).
    """
    if engine.nonzero(momentum):
        buf = state["momentum_buffer"]
        if first:
            buf.copy_(grad)
        else:
            engine.add_scaled_(buf.mul_(momentum), grad, 1 - dampening)
        grad = engine.added_scaled(grad, buf, momentum) if nesterov else buf
    engine.sub_scaled_(param, grad, lr)


class SGD(Optimizer):
    """Gradient descent with optional (Nesterov) momentum, drop-in for ``torch.optim.SGD``.

    Arguments as ``torch.optim.SGD`` (same defaults), plus ``l1`` (proximal L1 strength, applied
    as ``θ ← sign(θ)·max(|θ| − lr·l1, 0)`` after each update). ``foreach``/``fused`` are accepted
    and ignored: the engine picks the fastest path.

    Example::

        >>> import torch, gradwise.optim as go
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> opt = go.SGD([w], lr=0.1, momentum=0.9)
        >>> (w ** 2).sum().backward(); _ = opt.step()
        >>> w.detach()
        tensor([ 0.8000, -1.6000])
    """

    rule = staticmethod(sgd)
    sparse_grads = True
    has_step = False

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        l1: float = 0.0,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        checks.at_least("SGD", "momentum", momentum, 0.0, also=torch_words("momentum", momentum))
        checks.in_range("SGD", "dampening", dampening, 0.0, 1.0, closed_high=True)
        checks.flag("SGD", "nesterov", nesterov)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                "SGD: nesterov=True requires momentum > 0 and dampening = 0; "
                f"received momentum={momentum!r}, dampening={dampening!r}"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
            l1=l1,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults)

    def state_names(self, group: dict) -> list[str]:
        return ["momentum_buffer"] if group["momentum"] != 0 else []

    def hyperparameters(self, group: dict) -> dict:
        return dict(
            momentum=group["momentum"], dampening=group["dampening"], nesterov=group["nesterov"]
        )

    def coefficients(self, group: dict, step: int) -> dict:
        return {"lr": group["lr"], "first": step == 1}

"""LAMB (You et al., 2020): Adam's direction, scaled per tensor by a trust ratio ‖θ‖/‖update‖."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine
from gradwise.optim.base import Optimizer, torch_words
from gradwise.optim.nadam import checked_betas

#: the largest weight norm a trust ratio takes (``pytorch_optimizer.Lamb.clamp``)
CLAMP = 10.0


def tensor_norms(x: Tensor, sizes: list[int] | None) -> Tensor:
    """The L2 norm of each tensor in ``x``: a segmented reduction over a flat buffer whose
    consecutive tensors have ``sizes`` elements (a 1-D tensor of norms), or of ``x`` as one
    tensor when ``sizes`` is None (0-d)."""
    if sizes is None:
        return torch.linalg.vector_norm(x)
    return torch.stack(torch._foreach_norm(x.split(sizes)))


def sub_scaled_per_tensor_(
    param: Tensor,
    x: Tensor,
    factors: Tensor,
    scale: float,
    sizes: list[int] | None,
    *,
    scratch: bool = False,
) -> None:
    """``θ_i ← θ_i − scale·factor_i·x_i`` for each tensor ``i`` (see :func:`tensor_norms`);
    ``scratch``: ``x`` is a temporary that may be overwritten (no other one of its size)."""
    if sizes is None:
        engine.sub_scaled_(param, x.mul_(factors) if scratch else x * factors, scale)
        return
    parts, factors = x.split(sizes), list(factors.unbind())
    if scratch:
        torch._foreach_mul_(parts, factors)
    else:
        parts = torch._foreach_mul(parts, factors)
    torch._foreach_add_(list(param.split(sizes)), parts, alpha=-scale)


def lamb(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    weight_decouple: bool,
    fixed_decay: bool,
    grad_averaging: bool,
    adam: bool,
    rectify: bool,
    lr: float,
    step_size: float,
    rectified: bool,
    grad_scale: float | Tensor,
    sizes: list[int] | None = None,
) -> None:
    r"""One LAMB step, in place ("Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes", You et al., ICLR 2020, algorithm 2, version 3 of the paper).

    With ``g`` the gradient (times ``grad_scale`` with ``pre_norm``), ``β1, β2 = betas``,
    ``λ = weight_decay``, ``η = lr``, ``t`` the step, and for each tensor ``θ`` of the group::

        θ ← θ·(1 − λ·η)       (weight_decouple; θ·(1 − λ) with fixed_decay)
        m ← β1·m + β3·g       (exp_avg; β3 = 1 − β1 with grad_averaging, else 1)
        v ← β2·v + (1 − β2)·g²                   (exp_avg_sq; no bias correction)
        u = m / (sqrt(v) + ε)  (+ λ·θ when the decay is not decoupled: inside the ratio)
        r = ‖θ‖' / (‖u‖ + ε), ‖θ‖' = min(‖θ‖, 10); r = 1 if either norm is 0 (or adam=True)
        θ ← θ − s·r·u,  s = step_size = η / (1 − β1^t)   (η alone with adam_debias)

    With ``rectify`` (RAdam's rectification, ``rectified`` when the variance is tractable,
    ``step_size`` then ``η·ρ_t/(1 − β1^t)``, and ≤ 0 while the step is skipped) the direction
    is ``d = m/(sqrt(v) + ε)`` (or ``m`` before the threshold), ``r = ‖θ‖'/(‖θ − s·d‖ + ε)``
    and ``θ ← θ − s·r·d``; a coupled decay is then not applied at all. The norms are per
    tensor: over a flat buffer, a segmented reduction over its tensors' ``sizes``.

    Differences: the reference (``pytorch_optimizer.Lamb``) places the weight decay and the
    bias correction as above, which other LAMBs do not (NVIDIA's corrects both moments).
    """
    beta1, beta2 = betas
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    if isinstance(grad_scale, Tensor) or grad_scale != 1:
        grad = grad * grad_scale
    if weight_decouple and weight_decay != 0:
        param.mul_(1 - weight_decay * (1 if fixed_decay else lr))
    engine.add_scaled_(exp_avg.mul_(beta1), grad, 1 - beta1 if grad_averaging else 1)
    engine.addcmul_(exp_avg_sq.mul_(beta2), grad, grad, 1 - beta2)
    if rectify:
        if step_size <= 0:
            return
        direction = exp_avg / engine.sqrt_plus(exp_avg_sq, eps) if rectified else exp_avg
        update = param - direction * step_size
    else:  # one temporary the size of θ: 1/(sqrt(v) + ε), then times m, in place
        direction = update = engine.sqrt_plus(exp_avg_sq, eps).reciprocal_().mul_(exp_avg)
        if not weight_decouple and weight_decay > 0:
            engine.add_scaled_(update, param, weight_decay)
    weight_norm = tensor_norms(param, sizes).clamp_(max=CLAMP)
    update_norm = tensor_norms(update, sizes)
    if adam:
        ratio = torch.ones_like(weight_norm)
    else:
        ratio = torch.where(
            (weight_norm != 0) & (update_norm != 0), weight_norm / (update_norm + eps), 1.0
        )
    scratch = direction is not exp_avg  # m itself before rectification's threshold
    sub_scaled_per_tensor_(param, direction, ratio, step_size, sizes, scratch=scratch)


class Lamb(Optimizer):
    """LAMB, drop-in for ``pytorch_optimizer.Lamb`` (same arguments and defaults; its
    ``adam_debias`` keyword too). On the engine's flat buffers the trust ratios of all the
    tensors of a piece come from one segmented reduction, without a loop over tensors.

    Refused: the reference's other keyword extras (``adanorm``, ``adanorm_r`` and any unknown
    keyword, which the reference silently keeps). ``foreach`` is accepted and ignored. Not
    kept: the reference's diagnostic per-tensor ``weight_norm``, ``adam_norm`` and
    ``trust_ratio`` state entries (outputs only; dropped from a loaded state dict).

    >>> import torch, gradwise.optim as go
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> w.grad = torch.ones(3)
    >>> go.Lamb([w], lr=0.01, weight_decay=0.01).step()
    """

    rule = staticmethod(lamb)
    has_step = False
    decay_in_rule = True  # inside the trust ratio, or a shrink by λ·η or λ

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        weight_decouple: bool = True,
        fixed_decay: bool = False,
        rectify: bool = False,
        degenerated_to_sgd: bool = False,
        n_sma_threshold: int = 5,
        grad_averaging: bool = True,
        max_grad_norm: float = 1.0,
        adam: bool = False,
        pre_norm: bool = False,
        eps: float = 1e-6,
        foreach: bool | None = None,
        maximize: bool = False,
        *,
        adam_debias: bool = False,
        **kwargs,
    ) -> None:
        for key, value in kwargs.items():
            if key in ("adanorm", "adanorm_r"):
                raise NotImplementedError(
                    f"Lamb: {key}={value!r} is refused: AdaNorm's gradient rescaling is not "
                    "supported"
                )
            raise TypeError(
                f"Lamb: unexpected keyword argument {key}={value!r} (the reference keeps "
                "unknown keywords without using them; gradwise refuses them)"
            )
        betas = checked_betas("Lamb", betas)
        checks.at_least("Lamb", "eps", eps, 0.0, also=torch_words("eps", eps))
        checks.at_least("Lamb", "max_grad_norm", max_grad_norm, 0.0)
        checks.number("Lamb", "n_sma_threshold", n_sma_threshold)
        flags = dict(
            weight_decouple=weight_decouple,
            fixed_decay=fixed_decay,
            rectify=rectify,
            degenerated_to_sgd=degenerated_to_sgd,
            grad_averaging=grad_averaging,
            adam=adam,
            pre_norm=pre_norm,
            maximize=maximize,
            adam_debias=adam_debias,
        )
        for flag, value in flags.items():
            checks.flag("Lamb", flag, value)
        defaults = dict(
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
            eps=eps,
            foreach=foreach,
            n_sma_threshold=n_sma_threshold,
            **flags,
            fused=False,  # per-tensor reductions: never a fused elementwise kernel
        )
        self._sizes: dict[int, tuple[list, dict]] = {}
        self._grad_scale: float | Tensor = 1.0
        super().__init__(params, defaults)

    def state_names(self, group: dict) -> list[str]:
        return ["exp_avg", "exp_avg_sq"]

    def hyperparameters(self, group: dict) -> dict:
        keys = ("betas", "eps", "weight_decay", "weight_decouple", "fixed_decay")
        return {
            **{k: group[k] for k in keys},
            **{k: group[k] for k in ("grad_averaging", "adam", "rectify")},
        }

    def coefficients(self, group: dict, step) -> dict:
        """The step size of the group's step ``t`` (RAdam's rectification with ``rectify``)."""
        t, lr = group["step"], group["lr"]
        beta1, beta2 = group["betas"]
        step_size, rectified = lr, False
        if group["rectify"]:
            rho_max = 2.0 / (1.0 - beta2) - 1.0
            beta2_t = beta2**t
            rho = rho_max - 2 * t * beta2_t / (1.0 - beta2_t)
            rectified = rho >= group["n_sma_threshold"]
            if rectified:
                rt = math.sqrt(
                    (1.0 - beta2_t)
                    * (rho - 4)
                    / (rho_max - 4)
                    * (rho - 2)
                    / rho
                    * rho_max
                    / (rho_max - 2)
                )
            else:
                rt = 1.0 if group["degenerated_to_sgd"] else -1.0
            step_size = lr * rt
        if not group["adam_debias"]:
            step_size = step_size / (1.0 - math.pow(beta1, t))
        return dict(lr=lr, step_size=step_size, rectified=rectified, grad_scale=self._grad_scale)

    def piece_arguments(self, seg, where: slice) -> dict:
        """The sizes of the tensors in the flat piece ``where``, each alignment gap between
        them a tensor of its own: with ``eps = 0`` a gap's update is 0/0, which must not reach
        a parameter's norms."""
        cached = self._sizes.get(id(seg))
        if cached is None or cached[0] is not seg.slices:
            cached = self._sizes[id(seg)] = (seg.slices, {})
        key = (where.start, where.stop)
        sizes = cached[1].get(key)
        if sizes is None:
            inside = [sl for sl in seg.slices if where.start <= sl.start < where.stop]
            ends = {where.start, where.stop}
            ends.update(min(end, where.stop) for sl in inside for end in (sl.start, sl.stop))
            bounds = sorted(ends)
            sizes = cached[1][key] = [b - a for a, b in zip(bounds, bounds[1:])]
        return {"sizes": sizes}

    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._grad_scale = self._pre_norm_scale() if self.defaults["pre_norm"] else 1.0
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
        super().step()
        return loss

    def _pre_norm_scale(self) -> float | Tensor:
        """``pre_norm``: min(1, max_grad_norm / (‖g‖ + ε)), ‖g‖ over every gradient, in
        float32 as the reference computes it; 1 when ``max_grad_norm`` is 0."""
        max_norm, eps = self.defaults["max_grad_norm"], self.defaults["eps"]
        if max_norm == 0:
            return 1.0
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return 1.0
        norms = torch.stack([n.float() for n in torch._foreach_norm(grads)])
        total = norms.square_().sum().sqrt_().add_(eps)
        return torch.clamp(max_norm / total, max=1.0)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for key in ("weight_norm", "adam_norm", "trust_ratio"):
                state.pop(key, None)

"""Schedule-Free AdamW and SGD (Defazio et al., 2024): no learning-rate schedule to choose."""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine
from gradwise.optim.base import Optimizer
from gradwise.optim.nadam import checked_betas


def schedulefree_sgd(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    momentum: float,
    lr: float,
    ckp1: float,
) -> None:
    r"""One Schedule-Free SGD step, in place ("The Road Less Scheduled", Defazio, Yang, Mehta,
    Mishchenko, Khaled & Cutkosky, NeurIPS 2024, algorithm 1).

    Three sequences: ``z`` (plain SGD), ``x`` (the average of the ``z``, which is evaluated)
    and ``y`` (where the gradient is taken, and what the parameter θ holds in train mode). With
    ``g`` the gradient at ``y`` (L2 decay ``λ·y`` included, by the base class), ``β = momentum``,
    ``γ = lr`` (after warmup), ``c = ckp1`` the average's weight of this step::

        z_{t+1} = z_t − γ·g
        x_{t+1} = (1 − c)·x_t + c·z_{t+1}
        y_{t+1} = (1 − β)·z_{t+1} + β·x_{t+1}

    computed without ``x``, from ``y = (1 − β)·z + β·x``::

        y ← y + c·(z − y)                         (lerp, with the old z)
        y ← y + γ·(β·(1 − c) − 1)·g
        z ← z − γ·g

    ``c = w_t / Σ w``, ``w_t = t^r · (max lr so far)^weight_lr_power``.
    """
    z = state["z"]
    engine.lerp_(param, z, ckp1)
    engine.add_scaled_(param, grad, lr * (momentum * (1 - ckp1) - 1))
    engine.sub_scaled_(z, grad, lr)


def schedulefree_adamw(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    lr: float,
    ckp1: float,
    bias_correction2: float,
) -> None:
    r"""One Schedule-Free AdamW step, in place (Defazio et al., NeurIPS 2024, algorithm 1 with
    Adam's preconditioning).

    :func:`schedulefree_sgd`'s three sequences, with ``g`` divided by Adam's denominator and the
    decay taken at ``y`` after that. With ``β1, β2 = betas``, ``λ = weight_decay``, ``t`` the
    step::

        v ← β2·v + (1 − β2)·g²                   (exp_avg_sq)
        u = g / (sqrt(v / (1 − β2^t)) + ε) + λ·y
        then schedulefree_sgd's update with u for g and β1 for the momentum

    Differences: no first moment (the averaging plays its part); the decay is neither L2 in
    the gradient nor AdamW's shrink of θ, but added to the normalized gradient at ``y``, as
    the reference (``schedulefree.AdamWScheduleFree``) does.
    """
    beta1, beta2 = betas
    exp_avg_sq = state["exp_avg_sq"]
    engine.addcmul_(exp_avg_sq.mul_(beta2), grad, grad, 1 - beta2)
    update = grad / engine.sqrt_plus(engine.div_scalar(exp_avg_sq, bias_correction2), eps)
    if engine.nonzero(weight_decay):
        engine.add_scaled_(update, param, weight_decay)
    schedulefree_sgd(param, update, state, momentum=beta1, lr=lr, ckp1=ckp1)


#: the reference's per-group bookkeeping, kept in each param group as it keeps it
GROUP_STATE = dict(k=0, train_mode=False, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)


class ScheduleFree(Optimizer):
    """What Schedule-Free AdamW and SGD share: the weights of the average, counted per group in
    the reference's keys (``k``, ``weight_sum``, ``lr_max``, ``scheduled_lr``), and the switch
    between ``y`` (:meth:`train`) and ``x`` (:meth:`eval`) in the parameters.

    Call ``optimizer.train()`` before training steps and ``optimizer.eval()`` before evaluating,
    checkpointing or exporting (``gradwise.train.fit`` does both); :meth:`step` refuses to run
    in eval mode, as the reference does. A new optimizer starts in eval mode.
    """

    has_step = False

    def momentum_of(self, group: dict) -> float:
        """β, the interpolation between ``z`` and ``x`` that gives ``y``."""
        raise NotImplementedError

    def init_state(self, param: Tensor, group: dict) -> dict[str, Tensor]:
        state = super().init_state(param, group)
        state["z"] = param.detach().clone(memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def train(self) -> None:
        """Parameters to ``y``, where gradients are taken: ``y = x + (1 − β)·(z − x)``."""
        self._switch(True)

    @torch.no_grad()
    def eval(self) -> None:
        """Parameters to ``x``, the average that is evaluated: ``x = y + (1 − 1/β)·(z − y)``."""
        self._switch(False)

    def _switch(self, train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == train:
                continue
            beta = self.momentum_of(group)
            weight = 1 - beta if train else 1 - 1 / beta
            for p in group["params"]:
                z = self.state.get(p, {}).get("z")
                if z is not None:
                    p.lerp_(z.to(p.device), weight)
            group["train_mode"] = train

    def step(self, closure=None):
        """One update (refused in eval mode); returns the closure's loss."""
        if not self.param_groups[0]["train_mode"]:
            raise RuntimeError(
                f"{type(self).__name__}: step() was called in eval mode; call "
                "optimizer.train() before training steps and optimizer.eval() before "
                "evaluating or saving (the optimizer was not in train mode when step is called)"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            k = group["k"]
            warmup = group["warmup_steps"]
            lr = group["lr"] * ((k + 1) / warmup if k < warmup else 1.0)
            group["scheduled_lr"] = lr
            group["lr_max"] = max(lr, group["lr_max"])
            group["weight_sum"] = group["weight_sum"] + average_weight(group, k + 1)
            group["k"] = k + 1
        super().step()
        return loss

    def coefficients(self, group: dict, step) -> dict:
        """This step's rate and average weight, from the group's counters (``k`` is the step
        now being taken: :meth:`step` counts it before the update)."""
        weight, total = average_weight(group, group["k"]), group["weight_sum"]
        return {"lr": group["scheduled_lr"], "ckp1": weight / total if total != 0 else 0.0}


def average_weight(group: dict, k: int) -> float:
    """``w_k = k^r · lr_max^weight_lr_power``, step ``k``'s weight in the average ``x``."""
    return (k ** group["r"]) * (group["lr_max"] ** group["weight_lr_power"])


def _checked(name: str, warmup_steps, r, weight_lr_power) -> None:
    checks.integer(name, "warmup_steps", warmup_steps, low=0)
    checks.number(name, "r", r)
    checks.number(name, "weight_lr_power", weight_lr_power)


class AdamWScheduleFree(ScheduleFree):
    """Schedule-Free AdamW, drop-in for ``schedulefree.AdamWScheduleFree`` (same arguments and
    defaults, the same per-group keys and ``z``/``exp_avg_sq`` state, so state dicts move
    either way). ``foreach`` is accepted and ignored. Extra: ``fused`` (the engine's compiled
    update). ``betas[0] = 0`` is refused (:meth:`eval` divides by it).

    >>> import torch, gradwise.optim as go
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> opt = go.AdamWScheduleFree([w], lr=0.01)
    >>> opt.train(); w.sum().backward(); opt.step(); opt.eval()
    """

    rule = staticmethod(schedulefree_adamw)
    decay_in_rule = True  # at y, after Adam's normalization

    def __init__(
        self,
        params,
        lr: float | Tensor = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = True,
        *,
        fused: bool | None = None,
    ) -> None:
        name = "AdamWScheduleFree"
        betas = checked_betas(name, betas)
        checks.at_least(name, "eps", eps, 0.0)
        if betas[0] == 0:
            checks.refuse(name, "betas[0]", "in (0, 1) (eval() divides by it)", betas[0])
        _checked(name, warmup_steps, r, weight_lr_power)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            r=r,
            warmup_steps=warmup_steps,
            weight_lr_power=weight_lr_power,
            weight_decay=weight_decay,
            foreach=foreach,
            **GROUP_STATE,
            maximize=False,
            fused=fused,
        )
        super().__init__(params, defaults)

    def momentum_of(self, group: dict) -> float:
        return group["betas"][0]

    def state_names(self, group: dict) -> list[str]:
        return ["z", "exp_avg_sq"]

    def hyperparameters(self, group: dict) -> dict:
        return dict(betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"])

    def coefficients(self, group: dict, step) -> dict:
        return {
            **super().coefficients(group, step),
            "bias_correction2": 1 - group["betas"][1] ** group["k"],
        }


class SGDScheduleFree(ScheduleFree):
    """Schedule-Free SGD, drop-in for ``schedulefree.SGDScheduleFree`` (same arguments and
    defaults, the same per-group keys and ``z`` state). Its weight decay is L2 in the gradient
    at ``y``, the base class's. ``foreach`` is accepted and ignored. Extra: ``fused``.
    """

    rule = staticmethod(schedulefree_sgd)

    def __init__(
        self,
        params,
        lr: float | Tensor = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2,
        foreach: bool | None = True,
        *,
        fused: bool | None = None,
    ) -> None:
        name = "SGDScheduleFree"
        checks.number(name, "momentum", momentum)
        if not 0 < momentum < 1:
            checks.refuse(
                name,
                "momentum",
                "in (0, 1)",
                momentum,
                also=f"Momentum must be between 0 and 1 exclusive: {momentum}",
            )
        _checked(name, warmup_steps, r, weight_lr_power)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            r=r,
            warmup_steps=warmup_steps,
            weight_lr_power=weight_lr_power,
            weight_decay=weight_decay,
            foreach=foreach,
            **GROUP_STATE,
            maximize=False,
            fused=fused,
        )
        super().__init__(params, defaults)

    def momentum_of(self, group: dict) -> float:
        return group["momentum"]

    def state_names(self, group: dict) -> list[str]:
        return ["z"]

    def hyperparameters(self, group: dict) -> dict:
        return {"momentum": group["momentum"]}

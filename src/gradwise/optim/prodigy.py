"""Prodigy (Mishchenko & Defazio, 2024): Adam whose learning rate d estimates itself."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim import engine
from gradwise.optim.base import Optimizer
from gradwise.optim.nadam import checked_betas

#: the group entries the d estimate keeps, 0-d float64 tensors on the parameters' device while
#: training (no host sync per step) and numbers in a state dict, as the reference keeps them
D_STATE = ("d", "d_max", "d_numerator", "d_denom", "d_hat")
#: the estimate's two passes over the parameters, around its one global reduction
ESTIMATE, DESCEND = 1, 2


def reads_numbers(device: torch.device) -> bool:
    """Whether a step reads its scalars as Python numbers: on the CPU, where reading a tensor
    is no device sync (once per phase and group), and numbers let the elementwise operations
    take their one-pass forms. Elsewhere the scalars stay 0-d tensors on the device."""
    return device.type == "cpu"


def prodigy(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    phase: int,
    beta1: float,
    beta2: float,
    beta3: float,
    weight_decay: float,
    decouple: bool,
    first_scale: float | Tensor = 0.0,
    second_scale: float | Tensor = 0.0,
    s_scale: float | Tensor = 0.0,
    numerator_scale: float | Tensor = 0.0,
    numerator: Tensor | None = None,
    denominator: Tensor | None = None,
    active: bool = True,
    root_eps: float | Tensor = 0.0,
    decay_scale: float | Tensor = 0.0,
    step_scale: float | Tensor = 0.0,
) -> None:
    r"""One half of a Prodigy step, in place ("Prodigy: An Expeditiously Adaptive
    Parameter-Free Learner", Mishchenko & Defazio, ICML 2024, algorithm 5).

    With ``g`` the gradient (``+ λ·θ`` when the decay is not ``decouple``\d),
    ``β1, β2 = betas``, ``β3 = beta3`` (default ``sqrt(β2)``), ``λ = weight_decay``,
    ``η = lr``, ``d`` the current estimate of the distance to the solution, ``d0`` its start,
    ``dlr = d·η`` (times ``sqrt(1 − β2^t)/(1 − β1^t)`` with ``use_bias_correction``), ``θ0``
    the parameters at their first step (``p0``)::

        phase ESTIMATE, for every tensor:
          N += (d/d0)·dlr·⟨g, θ0 − θ⟩             (into numerator; the numerator's new part)
          m ← β1·m + d·(1 − β1)·g                 (exp_avg, absent when β1 = 0)
          v ← β2·v + d²·(1 − β2)·g²               (exp_avg_sq)
          s ← β3·s + (d/d0)·dlr·g                 ((d/d0)·d with safeguard_warmup)
          D += Σ|s|                               (into denominator)
        between the phases, once for all tensors (:meth:`Prodigy.step`):
          numerator ← β3·numerator + N,  d̂ = d_coef·numerator / D
          d ← max(d, d̂) while d = d0;  d_max ← max(d_max, d̂);  d ← min(d_max, d·growth_rate)
        phase DESCEND, for every tensor, with the new d and the old dlr:
          θ ← θ − λ·dlr·θ                          (decouple)
          θ ← θ − dlr·m / (sqrt(v) + d·ε)          (β1 = 0: θ − dlr·d·g / (sqrt(v) + d·ε))

    The products of scalars come from :func:`prodigy_coefficients`, once per step:
    ``first_scale = d·(1 − β1)``, ``second_scale = d²·(1 − β2)``, ``s_scale``,
    ``numerator_scale = (d/d0)·dlr``; ``root_eps = d·ε``, ``decay_scale = λ·dlr``,
    ``step_scale = dlr`` (``dlr·d`` when β1 = 0). ``numerator`` and ``denominator`` are 0-d
    float64 accumulators on the parameters' device: the estimate's reduction over every
    parameter stays there, read by no ``.item()``. A group whose lr is 0 is not ``active``: its
    moments stay, but it still decays in DESCEND, as in the reference.
    """
    if not decouple and weight_decay != 0:
        grad = engine.added_scaled(grad, param, weight_decay)
    exp_avg_sq = state["exp_avg_sq"]
    if phase == DESCEND:
        denom = engine.sqrt_plus(exp_avg_sq, root_eps)
        if decouple and weight_decay != 0:
            engine.sub_scaled_(param, param, decay_scale)
        engine.sub_scaled_ratio_(param, state["exp_avg"] if beta1 > 0 else grad, denom, step_scale)
        return
    if not active:
        return
    s, p0 = state["s"], state["p0"]
    engine.add_scaled_(
        numerator, torch.dot(grad.reshape(-1), (p0 - param).reshape(-1)), numerator_scale
    )
    if beta1 > 0:
        engine.add_scaled_(state["exp_avg"].mul_(beta1), grad, first_scale)
    engine.addcmul_(exp_avg_sq.mul_(beta2), grad, grad, second_scale)
    engine.add_scaled_(s.mul_(beta3), grad, s_scale)
    denominator.add_(s.abs().sum())


def prodigy_coefficients(
    phase: int,
    d: Tensor,
    dlr: Tensor,
    d0: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    safeguard_warmup: bool,
    numbers: bool,
) -> dict[str, float | Tensor]:
    """A phase's products of scalars for :func:`prodigy` (see its equations), from the
    estimate ``d`` and ``dlr`` (0-d float64 tensors): as such tensors, or with ``numbers`` as
    Python floats (on the CPU, where reading a tensor is no device sync and the elementwise
    operations take a number as an argument instead of a tensor)."""
    beta1, beta2 = betas
    if phase == ESTIMATE:
        d_ratio = d / d0
        values = {
            "first_scale": d * (1 - beta1),
            "second_scale": d * d * (1 - beta2),
            "s_scale": d_ratio * (d if safeguard_warmup else dlr),
            "numerator_scale": d_ratio * dlr,
        }
    else:
        values = {
            "root_eps": d * eps,
            "decay_scale": weight_decay * dlr,
            "step_scale": dlr if beta1 > 0 else dlr * d,
        }
    if numbers:
        values = dict(zip(values, torch.stack(list(values.values())).tolist()))
    return values


class Prodigy(Optimizer):
    """Prodigy, drop-in for ``prodigyopt.Prodigy`` (same arguments and defaults, the same
    per-group entries; state dicts move either way).

    A step is two passes of the engine over the parameters (:func:`prodigy`'s two phases)
    around one reduction, which stays on the device: ``d``, ``d_max``, ``d_numerator``,
    ``d_denom`` and ``d_hat`` are 0-d float64 tensors in the param groups while training
    (numbers in a state dict). On an accelerator the only host sync is on the steps before
    the first update, whose skip (no gradient yet) depends on the reduction, as in the
    reference. On the CPU, where reading a tensor syncs nothing, each pass reads its products
    of scalars as numbers once per group (:func:`reads_numbers`), so that the elementwise
    operations run in their one-pass forms (``addcdiv_`` with a number, not a multiply, a
    divide and a subtract through a temporary).

    Refused: ``slice_p`` other than 1 (the estimate on every p-th element only: an
    approximation the engine's flat buffers do not make) and ``fsdp_in_use=True``
    (the reference's own all-reduce; gradwise shards with PyTorch's FSDP2). Differences:
    ``p0`` and ``s`` are kept in the parameter's shape and saved flattened, as the reference
    saves them; ``p0`` is kept whole for an all-zero parameter (the reference keeps a 0-d
    zero); each parameter's saved ``step`` is its group's ``k``.

    >>> import torch, gradwise.optim as go
    >>> w = torch.nn.Parameter(torch.ones(3))
    >>> w.grad = torch.ones(3)
    >>> go.Prodigy([w]).step()
    """

    rule = staticmethod(prodigy)
    has_step = False
    decay_in_rule = True  # coupled in both phases; decoupled scaled by dlr, not lr

    def __init__(
        self,
        params,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0,
        decouple: bool = True,
        use_bias_correction: bool = False,
        safeguard_warmup: bool = False,
        d0: float = 1e-6,
        d_coef: float = 1.0,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        slice_p: int = 1,
    ) -> None:
        name = "Prodigy"
        checks.positive(name, "lr", lr)
        betas = checked_betas(name, betas)
        if beta3 is not None:
            checks.in_range(name, "beta3", beta3, 0.0, 1.0, closed_high=True)
        checks.positive(name, "eps", eps)
        checks.positive(name, "d0", d0)
        checks.positive(name, "d_coef", d_coef)
        if isinstance(growth_rate, bool) or not isinstance(growth_rate, int | float):
            checks.refuse(name, "growth_rate", "a number > 0 (inf: unbounded)", growth_rate)
        if not growth_rate > 0:
            checks.refuse(name, "growth_rate", "a number > 0 (inf: unbounded)", growth_rate)
        for flag in ("decouple", "use_bias_correction", "safeguard_warmup", "fsdp_in_use"):
            checks.flag(name, flag, locals()[flag])
        if fsdp_in_use:
            raise NotImplementedError(
                "Prodigy: fsdp_in_use=True is refused: the reference's own all-reduce of the "
                "estimate is not supported (shard with PyTorch's FSDP2 instead)"
            )
        if checks.integer(name, "slice_p", slice_p, low=1) != 1:
            raise NotImplementedError(
                f"Prodigy: slice_p={slice_p} is refused: only slice_p=1 (the estimate on "
                "every element) is supported"
            )
        defaults = dict(
            lr=lr,
            betas=betas,
            beta3=beta3,
            eps=eps,
            weight_decay=weight_decay,
            d=d0,
            d0=d0,
            d_max=d0,
            d_numerator=0.0,
            d_coef=d_coef,
            k=0,
            growth_rate=growth_rate,
            use_bias_correction=use_bias_correction,
            decouple=decouple,
            safeguard_warmup=safeguard_warmup,
            fsdp_in_use=fsdp_in_use,
            slice_p=slice_p,
            maximize=False,
            fused=False,  # a global reduction between two passes: no fused elementwise kernel
        )
        self._arguments: dict[int, dict] = {}
        super().__init__(params, defaults)

    def state_names(self, group: dict) -> list[str]:
        first = self.param_groups[0] if self.param_groups else group
        names = ["s", "p0", "exp_avg_sq"]
        return ["exp_avg", *names] if first["betas"][0] > 0 else names

    def init_state(self, param: Tensor, group: dict) -> dict[str, Tensor]:
        state = super().init_state(param, group)
        state["p0"] = param.detach().clone()
        return state

    def hyperparameters(self, group: dict) -> dict:
        return {}

    def coefficients(self, group: dict, step) -> dict:
        """This pass's arguments (see :meth:`step`), for every piece of the group alike."""
        return self._arguments[id(group)]

    def step(self, closure=None):
        """One update: the estimate's pass, its reduction and the descent's pass."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self.param_groups
        if all(p.grad is None for g in groups for p in g["params"]):
            return loss  # no gradient, no progress: nothing counted or decayed, as the reference
        first = groups[0]
        beta1, beta2 = first["betas"]
        beta3 = first["beta3"] if first["beta3"] is not None else math.sqrt(beta2)
        k, lr = first["k"], max(g["lr"] for g in groups)
        for g in groups:
            if g["lr"] not in (lr, 0.0):
                raise RuntimeError(
                    "Prodigy: param groups' lr must all be the same, or 0; received lr="
                    f"{g['lr']!r} beside {lr!r} (setting different lr values in different "
                    "parameter groups is only supported for values of 0)"
                )
        device = next((p.device for g in groups for p in g["params"]), torch.device("cpu"))

        def scalar(value) -> Tensor:
            return torch.as_tensor(value, dtype=torch.float64, device=device)

        d, d_max = scalar(first["d"]), scalar(first["d_max"])
        correction = 1.0
        if first["use_bias_correction"]:
            correction = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1))
        dlr = d * lr * correction
        numbers = reads_numbers(device)
        numerator = torch.zeros((), dtype=torch.float64, device=device)
        denominator = torch.zeros((), dtype=torch.float64, device=device)
        shared = dict(beta1=beta1, beta2=beta2, beta3=beta3, decouple=first["decouple"])

        def arguments(phase: int, g: dict, d: Tensor, dlr: Tensor) -> dict:
            return dict(
                shared,
                phase=phase,
                weight_decay=g["weight_decay"],
                **prodigy_coefficients(
                    phase,
                    d,
                    dlr,
                    g["d0"],
                    (beta1, beta2),
                    g["eps"],
                    g["weight_decay"],
                    g["safeguard_warmup"],
                    numbers,
                ),
            )

        for g in groups:
            self._arguments[id(g)] = dict(
                arguments(ESTIMATE, g, d, dlr),
                numerator=numerator,
                denominator=denominator,
                active=g["lr"] > 0,
            )
        super().step()
        numerator = scalar(first["d_numerator"]) * beta3 + numerator
        progressed = denominator != 0
        if k == 0 and not bool(progressed):  # no gradient yet: no update, as the reference
            return loss
        d_hat = first["d_coef"] * numerator / denominator
        new_d = torch.where(d == groups[-1]["d0"], torch.maximum(d, d_hat), d)
        new_max = torch.maximum(d_max, d_hat)
        new_d = torch.minimum(new_max, new_d * first["growth_rate"])
        # after the first update D > 0 always (s is never all zero again): kept on the device
        new_d = torch.where(progressed, new_d, d)
        new_max = torch.where(progressed, new_max, d_max)
        descent_dlr = torch.where(progressed, dlr, 0.0)
        for g in groups:
            g.update(d_numerator=numerator, d_denom=denominator, d=new_d, d_max=new_max)
            g["d_hat"] = d_hat
            self._arguments[id(g)] = arguments(DESCEND, g, new_d, descent_dlr)
        super().step()
        for g in groups:
            g["k"] += 1
        self._arguments = {}
        return loss

    def state_dict(self) -> dict:
        """The reference's layout: the estimate's entries as numbers, ``s`` and ``p0`` flat,
        a ``step`` per parameter."""
        sd = super().state_dict()
        for group in sd["param_groups"]:
            for key in D_STATE:
                if isinstance(group.get(key), Tensor):
                    group[key] = group[key].item()
            for index in group["params"]:
                state = sd["state"].get(index)
                if isinstance(state, dict) and "s" in state:
                    state["s"], state["p0"] = state["s"].reshape(-1), state["p0"].reshape(-1)
                    state["step"] = group["k"]
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Either layout: ``s`` and ``p0`` back in their parameter's shape (a 0-d ``p0``, the
        reference's for an all-zero parameter, as zeros); ``step`` dropped (see above)."""
        states = dict(state_dict["state"])
        for saved, group in zip(state_dict["param_groups"], self.param_groups):
            for index, param in zip(saved["params"], group["params"]):
                state = states.get(index)
                if not isinstance(state, dict) or "s" not in state:
                    continue
                state = {n: v for n, v in state.items() if n != "step"}
                state["s"] = state["s"].reshape(param.shape)
                p0 = state["p0"]
                if p0.numel() == 1 and param.numel() != 1:
                    p0 = p0.expand(param.shape)
                state["p0"] = p0.reshape(param.shape).clone()
                states[index] = state
        super().load_state_dict({**state_dict, "state": states})

"""Muon (Jordan et al., 2024): a matrix's momentum, orthogonalized by Newton–Schulz iterations."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim.shaped import ShapedOptimizer

#: Keller Jordan's quintic Newton–Schulz coefficients (a, b, c), torch's defaults
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
#: the iterations of the Newton–Schulz orthogonalization, torch's default
NS_STEPS = 5
#: the floor of the Frobenius norm the iteration's input is divided by, torch's default
EPS = 1e-7
#: the learning-rate adjustments torch's ``adjust_lr_fn`` takes (None: "original")
ADJUST_LR_FNS = ("original", "match_rms_adamw")


def newton_schulz(
    x: Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    r"""The orthogonalization of a matrix ``x`` (``U·Vᵀ`` of its SVD ``U·S·Vᵀ``, roughly), in
    ``dtype`` (bfloat16, as torch), by a quintic Newton–Schulz iteration; a new tensor. ``x``
    may be a batch of same-shape matrices (a first dimension): each is orthogonalized on its
    own, with batched products.

    With ``a, b, c = coefficients``, and ``X`` the matrix transposed to be wide (rows ≤
    columns, so that ``X·Xᵀ`` is the smaller Gram matrix)::

        X ← X / max(‖X‖_F, eps)                     (singular values ≤ 1)
        repeat steps times:
            A = X·Xᵀ
            X ← a·X + (b·A + c·A·A)·X               (σ ← a·σ + b·σ³ + c·σ⁵ on each one)

    The coefficients maximize the slope at zero rather than converge: the singular values end
    in about [0.7, 1.2], not at 1, which does not hurt training (Jordan's post). The products
    are matrix products in ``dtype`` (``addmm``: each ``b·A + c·A·A`` rounded once), as in
    torch. A CPU without bfloat16 instructions multiplies bfloat16 matrices ~35× slower than
    float32 ones (128×128: 1.9 against 0.05 ms): float32 is the faster choice there.
    """
    if x.dim() == 3 and x.size(0) == 1:  # a batch of one: the matrix's own products
        return newton_schulz(x[0], coefficients, steps, eps, dtype).unsqueeze(0)
    a, b, c = coefficients
    wide = x.size(-2) <= x.size(-1)
    y = x.to(dtype) if wide else x.to(dtype).mT
    if x.dim() == 2:
        norm, addmm = y.norm(), torch.addmm
    else:  # a batch of same-shape matrices: each its own norm, batched products
        norm, addmm = torch.linalg.vector_norm(y, dim=(-2, -1), keepdim=True), torch.baddbmm
    y = y / norm.clamp(min=eps)  # not in place: x may be a bfloat16 momentum buffer
    for _ in range(steps):
        gram = y @ y.mT
        y = addmm(y, addmm(gram, gram, gram, beta=b, alpha=c), y, beta=a)
    return y if wide else y.mT


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """The step size of an ``A×B`` matrix, for an orthogonalized update of the same RMS
    whatever its shape: ``lr·sqrt(max(1, A/B))`` ("original", Jordan's; the default) or
    ``0.2·lr·sqrt(max(A, B))`` ("match_rms_adamw", Moonshot's: AdamW's update RMS, so that
    AdamW's lr and decay carry over)."""
    rows, cols = shape[0], shape[1]
    if adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * math.sqrt(max(rows, cols))
    else:
        ratio = math.sqrt(max(1, rows / cols))
    return lr * ratio


def muon(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    momentum: float,
    nesterov: bool,
    ns_coefficients: tuple[float, float, float],
    ns_steps: int,
    eps: float,
    lr: float,
    weight_decay: float,
    step_size: float,
    ns_dtype: torch.dtype = torch.bfloat16,
) -> None:
    r"""One Muon step of a matrix, in place ("Muon: An optimizer for hidden layers in neural
    networks", Jordan et al., 2024, kellerjordan.github.io/posts/muon; "Muon is Scalable for
    LLM Training", Liu et al., 2025, for ``match_rms_adamw``).

    SGD with momentum whose update is replaced by the nearest semi-orthogonal matrix (all its
    singular values ≈ 1): every direction of the matrix moves by the same amount. With ``G``
    the gradient, ``μ = momentum``, ``γ = lr``, ``λ = weight_decay``::

        B ← μ·B + (1 − μ)·G                      (momentum_buffer)
        M = (1 − μ)·G + μ·B  with nesterov,  else  M = B
        O = NS(M)                                (:func:`newton_schulz`, in ns_dtype)
        θ ← θ·(1 − γ·λ)                          (decoupled weight decay)
        θ ← θ − γ'·O,   γ' = step_size = adjusted_lr(γ, adjust_lr_fn, shape of θ)

    Differences: the momentum is an exponential average (``B ← μ·B + (1 − μ)·G``), as torch
    and Jordan's code compute it, where torch's docstring and Jordan's post write
    ``B ← μ·B + G``: ``M`` is then ``1 − μ`` times theirs, a factor the normalization in
    :func:`newton_schulz` removes (exactly, unless ``‖M‖_F < eps``). The iteration's input is
    not divided in place: with ``nesterov=False`` and a bfloat16 parameter, torch's division
    reaches its momentum buffer itself (left with norm 1 after each step); gradwise's keeps the
    average.
    """
    buf = state["momentum_buffer"]
    buf.lerp_(grad, 1 - momentum)
    direction = grad.lerp(buf, momentum) if nesterov else buf
    ortho = newton_schulz(direction, ns_coefficients, ns_steps, eps, ns_dtype)
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    param.add_(ortho, alpha=-step_size)


class Muon(ShapedOptimizer):
    """Muon, drop-in for ``torch.optim.Muon`` (same arguments and defaults), for the 2-D
    parameters of hidden layers; optimize the others (biases, embeddings, the output layer)
    with AdamW, as torch's documentation advises.

    Its rule orthogonalizes a whole matrix, so it runs per tensor (small matrices of one shape
    stacked into a batch), never on the engine's flat buffers; the state is torch's
    ``momentum_buffer``. A parameter that is not 2-D is refused
    when it is given (at construction or ``add_param_group``), complex parameters and sparse
    gradients at ``step()``, as torch refuses them. Extras: ``maximize``, ``l1`` (proximal L1),
    ``state_dtype`` (the momentum's dtype), ``ns_dtype`` (the orthogonalization's, bfloat16
    as torch's: float32 is much faster on a CPU without bfloat16 instructions).

    >>> import torch
    >>> from gradwise.optim.muon import Muon
    >>> w = torch.nn.Parameter(torch.ones(3, 2))
    >>> w.grad = torch.ones(3, 2)
    >>> Muon([w], lr=0.02).step()
    """

    rule = staticmethod(muon)
    has_step = False
    batched = True  # same-shape matrices orthogonalized together (batched matrix products)
    decay_in_rule = True  # θ·(1 − γ·λ) with γ unadjusted, in the rule

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
        eps: float = EPS,
        ns_steps: int = NS_STEPS,
        adjust_lr_fn: str | None = None,
        *,
        maximize: bool = False,
        l1: float = 0.0,
        state_dtype: torch.dtype | None = None,
        ns_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        name = "Muon"
        if ns_dtype not in (torch.bfloat16, torch.float32, torch.float64):
            checks.refuse(
                name, "ns_dtype", "torch.bfloat16, torch.float32 or torch.float64", ns_dtype
            )
        checks.at_least(
            name, "momentum", momentum, 0.0, also=f"momentum should be >= 0 but is: {momentum}"
        )
        checks.flag(name, "nesterov", nesterov)
        if (
            not isinstance(ns_coefficients, tuple | list)
            or len(ns_coefficients) != 3
            or not all(isinstance(v, numbers.Real) for v in ns_coefficients)
        ):
            raise ValueError(
                f"{name}: ns_coefficients must be three numbers (a, b, c); received "
                f"ns_coefficients={ns_coefficients!r} (Coefficients must be a tuple of exactly "
                "3 values)"
            )
        checks.number(name, "eps", eps)
        checks.integer(name, "ns_steps", ns_steps, 0)
        if ns_steps >= 100:
            checks.refuse(
                name,
                "ns_steps",
                "an integer in [0, 100)",
                ns_steps,
                also="Number of steps must be less than 100 for computational efficiency",
            )
        if adjust_lr_fn is not None and adjust_lr_fn not in ADJUST_LR_FNS:
            checks.refuse(
                name,
                "adjust_lr_fn",
                "None or one of " + ", ".join(repr(f) for f in ADJUST_LR_FNS),
                adjust_lr_fn,
                also=f"Adjust learning rate function {adjust_lr_fn} is not supported",
            )
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_coefficients=tuple(ns_coefficients),
            eps=eps,
            ns_steps=ns_steps,
            adjust_lr_fn=adjust_lr_fn,
            maximize=maximize,
            l1=l1,
            state_dtype=state_dtype,
            ns_dtype=ns_dtype,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """As ``torch.optim.Optimizer.add_param_group``, refusing a parameter that is not 2-D."""
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            tensor = p[1] if isinstance(p, tuple) else p  # (name, parameter) pairs too
            if isinstance(tensor, Tensor) and tensor.dim() != 2:
                raise ValueError(
                    "Muon: every parameter must be 2-D (a matrix: optimize the others with "
                    f"AdamW); received a parameter of shape {tuple(tensor.shape)} (Muon only "
                    "supports 2D parameters whereas we found a parameter with size: "
                    f"{tensor.size()})"
                )
        param_group["params"] = params
        super().add_param_group(param_group)

    def state_names(self, group: dict) -> list[str]:
        return ["momentum_buffer"]

    def init_state(self, param: Tensor, group: dict) -> dict[str, Tensor]:
        dtype = group.get("state_dtype") or param.dtype
        return {"momentum_buffer": torch.zeros_like(param, dtype=dtype)}

    def hyperparameters(self, group: dict) -> dict:
        keys = ("momentum", "nesterov", "ns_coefficients", "ns_steps", "eps", "weight_decay")
        keys += ("ns_dtype",)
        return {**{k: group[k] for k in keys}, "lr": group["lr"]}

    def tensor_coefficients(self, group: dict, param: Tensor, step: float) -> dict:
        return {"step_size": adjusted_lr(group["lr"], group["adjust_lr_fn"], param.shape)}

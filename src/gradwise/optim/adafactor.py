"""Adafactor (Shazeer & Stern, 2018): a matrix's second moments as a row and a column factor."""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim.shaped import ShapedOptimizer, step_counter


def mean_square(x: Tensor, dim: int) -> Tensor:
    """The mean of ``x²`` along ``dim`` (kept), as ``‖x‖²/n``: no ``x²`` the size of ``x``."""
    return torch.linalg.vector_norm(x, dim=dim, keepdim=True).square_().div_(x.size(dim))


def tensor_norms(x: Tensor) -> Tensor:
    """The L2 norm of each tensor of the batch ``x`` (along its first dimension), as float64:
    the arithmetic on them is torch's on the numbers it reads back (Python floats)."""
    return torch.linalg.vector_norm(x.reshape(x.size(0), -1), dim=1).double()


def adafactor(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    d: float,
    eps1: float,
    eps2: float,
    weight_decay: float,
    lr: float,
    rho: float,
    beta2_complement: float,
) -> None:
    r"""One Adafactor step of a batch of same-shape tensors, in place ("Adafactor: Adaptive
    Learning Rates with Sublinear Memory Cost", Shazeer & Stern, ICML 2018, algorithms 4 and 5,
    with PyTorch's placement of ε1).

    ``param``, ``grad`` and the state hold ``k`` tensors stacked along a first dimension (a
    parameter alone is a batch of one): every norm and mean below is per tensor, so a step of
    many same-shape tensors is a few batched operations, with no number read back per tensor.

    A matrix's second moments ``V`` (one per element, as Adam's) are kept as a rank-1 product
    of a row factor ``R`` and a column factor ``C``: memory ``n + m`` instead of ``n·m``. A
    tensor of more dimensions is a batch of matrices (its last two); a vector keeps ``V`` whole.
    With ``G`` the gradient, ``t`` the step, ``τ = beta2_decay``, ``γ = lr``, ``λ =
    weight_decay``, mean and RMS taken over a tensor's elements (or along one dimension)::

        β̂2 = 1 − t^τ                           (beta2_complement = 1 − β̂2 = t^τ)
        ρ_t = min(γ, 1/√t)                      (rho: the relative step size)
        α_t = max(ε2, RMS(θ))·ρ_t               (the step, relative to θ's scale)
        θ ← θ·(1 − γ·λ)                         (decoupled weight decay, after α_t)
        R ← β̂2·R + (1 − β̂2)·mean_cols(G²)      (row_var, shape [..., n, 1])
        C ← β̂2·C + (1 − β̂2)·mean_rows(G²)      (col_var, shape [..., 1, m])
        V̂ = R·C / max(mean(R), ε1)              (matrices; vectors: V ← β̂2·V + (1 − β̂2)·G²)
        U = G / sqrt(max(V̂, ε1²))
        θ ← θ − α_t · U / max(1, RMS(U)/d)      (update clipping at threshold d)

    Differences: PyTorch's ε1 is applied to ``mean(R)`` and to ``V̂``, not added to ``G²``
    (the paper's and Transformers' placement), and means replace the paper's sums; ``γ`` caps
    ``ρ_t`` (the paper: 0.01) and scales the decay. ``ε1 = None`` (PyTorch's default) is the
    machine epsilon of the group's first parameter's dtype (:meth:`Adafactor.group_arguments`).
    Tensors with no elements are left alone (PyTorch divides by their size, zero).
    """
    if param.numel() == 0:
        return
    root_n = param[0].numel() ** 0.5
    alpha = tensor_norms(param).div_(root_n).clamp_(min=eps2).mul_(rho)
    if weight_decay != 0:
        param.mul_(1 - lr * weight_decay)
    if grad.dim() > 2:  # a batch of matrices (or of batches of matrices)
        row_var, col_var = state["row_var"], state["col_var"]
        row_var.lerp_(mean_square(grad, -1), beta2_complement)
        col_var.lerp_(mean_square(grad, -2), beta2_complement)
        estimate = (row_var @ col_var).div_(row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))
    else:
        variance = state["variance"]
        variance.lerp_(grad * grad, beta2_complement)
        estimate = variance.clone()
    step = estimate.clamp_(min=eps1 * eps1).rsqrt_().mul_(grad)
    clipping = tensor_norms(step).div_(root_n * d).clamp_(min=1.0)
    sub_scaled_each_(param, step, alpha.div_(clipping))


def sub_scaled_each_(param: Tensor, x: Tensor, scales: Tensor) -> None:
    """``θ_i ← θ_i − s_i·x_i`` for each tensor ``i`` of the batch, rounded as torch's
    ``θ.add_(x, alpha=−s)`` rounds it: ``s`` to the tensors' arithmetic dtype, then one fused
    multiply-add. A batch of one does exactly that, and so does a float64 batch, one tensor at
    a time; a larger float32 or lower-precision one computes ``θ − s·x`` in float64 (the product
    of two float32 numbers is exact there) and rounds it once."""
    if param.size(0) == 1 or x.dtype == torch.float64:
        for p, t, s in zip(param.unbind(0), x.unbind(0), scales.tolist()):
            p.add_(t, alpha=-s)
        return
    opmath = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    scales = scales.to(opmath).double().view(-1, *([1] * (x.dim() - 1)))
    param.copy_(param.double().addcmul_(x.double(), scales, value=-1))


class Adafactor(ShapedOptimizer):
    """Adafactor, drop-in for ``torch.optim.Adafactor`` (same arguments and defaults).

    Its rule needs each tensor's shape (the factored moments of a matrix), so it never runs on
    the engine's flat buffers: the tensors of one shape are stepped together, as a batch. The
    state is torch's: ``step``, and ``row_var``/``col_var`` for a tensor of two or more
    dimensions, ``variance`` for one of fewer. Extras: ``l1`` (proximal L1), ``state_dtype``
    (the moments' dtype). ``foreach`` is
    accepted and ignored. Complex parameters and sparse gradients are refused at ``step()``, as
    torch refuses them.

    >>> import torch
    >>> from gradwise.optim.adafactor import Adafactor
    >>> w = torch.nn.Parameter(torch.ones(3, 2))
    >>> w.grad = torch.ones(3, 2)
    >>> Adafactor([w]).step()
    """

    rule = staticmethod(adafactor)
    batched = True  # same-shape tensors stepped together: no number read back per tensor
    decay_in_rule = True  # after α_t, which reads θ before the decay

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-2,
        beta2_decay: float = -0.8,
        eps: tuple[float | None, float] = (None, 1e-3),
        d: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        l1: float = 0.0,
        state_dtype: torch.dtype | None = None,
    ) -> None:
        name = "Adafactor"
        decay = checks.number(name, "beta2_decay", beta2_decay)
        if decay > 0:
            checks.refuse(
                name,
                "beta2_decay",
                "<= 0",
                beta2_decay,
                also=f"beta2_decay should be <= 0 but is: {beta2_decay}",
            )
        if not isinstance(eps, tuple | list) or len(eps) != 2:
            raise ValueError(
                f"{name}: eps must be a pair (eps1 or None, eps2); received eps={eps!r}"
            )
        if eps[0] is not None:
            checks.at_least(
                name, "eps[0]", eps[0], 0.0, also=f"epsilon1 should be >= 0 but is: {eps[0]}"
            )
        checks.at_least(
            name, "eps[1]", eps[1], 0.0, also=f"epsilon2 should be >= 0 but is: {eps[1]}"
        )
        checks.at_least(name, "d", d, 1.0, also=f"Clipping threshold d should be >= 1 but is: {d}")
        defaults = dict(
            lr=lr,
            beta2_decay=beta2_decay,
            eps=tuple(eps),
            d=d,
            weight_decay=weight_decay,
            foreach=foreach,
            maximize=maximize,
            l1=l1,
            state_dtype=state_dtype,
        )
        super().__init__(params, defaults)

    def state_names(self, group: dict) -> list[str]:
        return ["row_var", "col_var", "variance"]

    def init_state(self, param: Tensor, group: dict) -> dict[str, Tensor]:
        """``step`` (0), and zero moments: a row and a column factor for a tensor of two or more
        dimensions (its last one, then its second-to-last one, reduced to 1), else a whole one."""
        dtype = group.get("state_dtype") or param.dtype
        state = {"step": step_counter()}
        if param.dim() > 1:
            rows, cols = list(param.shape), list(param.shape)
            rows[-1] = cols[-2] = 1
            state["row_var"] = param.new_zeros(rows, dtype=dtype)
            state["col_var"] = param.new_zeros(cols, dtype=dtype)
        else:
            state["variance"] = torch.zeros_like(param, dtype=dtype)
        return state

    def group_arguments(self, group: dict, params: list[Tensor]) -> dict:
        """The group's constants; ``eps1 = None`` becomes the machine epsilon of the first
        parameter's dtype, for the whole group, as torch takes it."""
        eps1, eps2 = group["eps"]
        if eps1 is None:
            eps1 = torch.finfo(params[0].dtype).eps
        return dict(
            d=group["d"], eps1=eps1, eps2=eps2, weight_decay=group["weight_decay"], lr=group["lr"]
        )

    def tensor_coefficients(self, group: dict, param: Tensor, step: float) -> dict:
        return dict(
            rho=min(group["lr"], 1 / step**0.5), beta2_complement=step ** group["beta2_decay"]
        )

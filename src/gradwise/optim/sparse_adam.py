"""SparseAdam: Adam on the rows a sparse gradient touches, and on no other."""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim.adam import adam_coefficients
from gradwise.optim.torch_api import torch_words

#: what SparseAdam takes besides ``params`` (torch.optim.SparseAdam's arguments, all of them)
ARGUMENTS = ("lr", "betas", "eps", "maximize")

#: gradwise options SparseAdam refuses, and why: torch's class has none of them, and each would
#: be a new algorithm on rows that only some steps touch, not an option of this one
REFUSED = {
    "weight_decay": "a decay of the touched rows only is not Adam's L2 or AdamW's decay",
    "l1": "a proximal step on the touched rows only is not the L1 penalty's",
    "decoupled_weight_decay": "there is no weight decay to decouple",
    "amsgrad": "no maximum of the second moment is kept",
}


def sparse_adam(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    *,
    betas: tuple[float, float],
    eps: float,
    step_size: float,
) -> None:
    r"""One SparseAdam step on the touched rows, in place (Adam: Kingma & Ba, 2015; the lazy
    row-wise update of sparse embeddings, as ``torch.optim.SparseAdam``).

    ``param``, ``grad`` and ``state`` hold the rows that the sparse gradient touches, gathered
    (one row per index of the coalesced gradient); the rows it leaves out are not moved, and their
    moments do not decay. With ``g`` the gradient's row, ``β1, β2 = betas``, ``η = lr``,
    ``ε = eps``, ``t`` the parameter's step count::

        m ← m + (1 − β1)·(g − m)                       (exp_avg)
        v ← v + (1 − β2)·(g² − v)                      (exp_avg_sq)
        θ ← θ − η·sqrt(1 − β2^t)/(1 − β1^t) · m / (sqrt(v) + ε)

    ``step_size`` is ``η·sqrt(1 − β2^t)/(1 − β1^t)``, from :func:`~gradwise.optim.adam.
    adam_coefficients` (Adam's ``step_size·root_correction``).

    Differences: ε is added to ``sqrt(v)`` before the bias correction (the paper's "efficient"
    form, as PyTorch's SparseAdam), where :func:`~gradwise.optim.adam.adam` adds it to
    ``sqrt(v̂)``; the two differ while ``t`` is small. ``t`` counts the steps where the parameter
    had a gradient, touched rows or not, so a row's bias correction is not its own (PyTorch's
    choice; TensorFlow's LazyAdam does the same).
    """
    beta1, beta2 = betas
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.add_(grad.sub(exp_avg).mul_(1 - beta1))
    exp_avg_sq.add_(grad.pow(2).sub_(exp_avg_sq).mul_(1 - beta2))
    param.sub_(exp_avg.div(exp_avg_sq.sqrt().add_(eps)).mul_(step_size))


class SparseAdam(torch.optim.Optimizer):
    """SparseAdam, drop-in for ``torch.optim.SparseAdam`` (same arguments and defaults), for
    parameters whose gradients are sparse, as ``nn.Embedding(sparse=True)`` gives them.

    Each step gathers the rows a parameter's coalesced gradient touches, runs
    :func:`sparse_adam` on them and writes them back: the cost follows the gradient's rows, not
    the parameter's size. A dense gradient is refused (use Adam), as are sparse or complex
    parameters, as PyTorch refuses them; a step that is refused changes no parameter.

    It subclasses ``torch.optim.Optimizer``, not gradwise's engine-backed base: the engine lays
    a group out as flat buffers and updates every element of them, which is the one thing
    SparseAdam must not do; and the state stays PyTorch's (``step`` a Python int), so state
    dicts move between the two unchanged.

    Refused, since ``torch.optim.SparseAdam`` has none of them: ``weight_decay``, ``l1``,
    ``decoupled_weight_decay``, ``amsgrad`` (in the constructor, and in a param group unless 0).

    Example::

        >>> import torch, gradwise.optim.sparse_adam as gs
        >>> emb = torch.nn.Embedding(4, 2, sparse=True)
        >>> opt = gs.SparseAdam(emb.parameters(), lr=0.1)
        >>> before = emb.weight.detach().clone()
        >>> emb(torch.tensor([1])).sum().backward(); _ = opt.step()
        >>> (emb.weight.detach() != before).any(dim=1).tolist()
        [False, True, False, False]
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        maximize: bool = False,
        **refused,
    ) -> None:
        name = type(self).__name__
        checks.not_options(name, refused, REFUSED, ARGUMENTS, "torch.optim.SparseAdam")
        _check_lr(name, lr)
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise ValueError(
                f"{name}: betas must be a pair (beta1, beta2); received betas={betas!r}"
            )
        for i, beta in enumerate(betas):
            checks.in_range(
                name, f"betas[{i}]", beta, 0.0, 1.0, also=torch_words(f"betas[{i}]", beta)
            )
        if checks.number(name, "eps", eps) <= 0:
            checks.refuse(name, "eps", "> 0", eps, also=torch_words("eps", eps))
        checks.flag(name, "maximize", maximize)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, maximize=maximize)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        name = type(self).__name__
        checks.not_group_options(name, param_group, REFUSED, "torch.optim.SparseAdam")
        where = len(self.param_groups)
        super().add_param_group(param_group)
        params = self.param_groups[-1]["params"]
        sparse = [[where, i] for i, p in enumerate(params) if p.is_sparse]
        complex_ = [[where, i] for i, p in enumerate(params) if p.is_complex()]
        if sparse or complex_:
            del self.param_groups[-1]  # refused: the group is not kept
            what, found = ("sparse", sparse) if sparse else ("complex", complex_)
            words = (
                f"Sparse params at indices {sparse}: SparseAdam requires dense parameter tensors"
                if sparse
                else f"Complex params at indices {complex_}: SparseAdam does not support "
                "complex parameters"
            )
            raise ValueError(
                f"{name}: params must be dense real tensors; received {what} params at "
                f"(group, index) {found} ({words})"
            )

    @torch.no_grad()
    def step(self, closure=None):
        """One update of the touched rows of every parameter that has a (sparse) gradient;
        returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:  # first, so that a refused step changes nothing
            for p in group["params"]:
                if p.grad is not None and not p.grad.is_sparse:
                    raise RuntimeError(
                        "SparseAdam does not support dense gradients, please consider Adam "
                        f"instead (a dense gradient of shape {tuple(p.grad.shape)})"
                    )
        for group in self.param_groups:
            lr = group["lr"]
            if isinstance(lr, Tensor):  # a 0-d tensor, as torch.optim's _to_scalar leaves it
                lr = lr.reshape(())
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1  # counted even for an empty gradient, as PyTorch counts it
                self._update_rows(p, p.grad, state, group, lr)
        return loss

    def _update_rows(
        self, p: Tensor, grad: Tensor, state: dict, group: dict, lr: float | Tensor
    ) -> None:
        """:func:`sparse_adam` on the rows ``grad`` touches: gathered, updated, written back.
        The gradient is coalesced first: the update is not linear, so a row's gradients must
        be summed before it (duplicate indices, as ``nn.Embedding`` gives them, add up)."""
        grad = grad.coalesce()
        values = grad.values()
        if values.numel() == 0:
            return
        if group.get("maximize", False):  # absent from old checkpoints, as torch reads it
            values = -values
        buffers = {n: state[n] for n in ("exp_avg", "exp_avg_sq")}
        if grad.sparse_dim() == 0:  # one value for the whole tensor: one row of a stack of one
            p, buffers = p.unsqueeze(0), {n: t.unsqueeze(0) for n, t in buffers.items()}
            rows = (torch.zeros(values.shape[0], dtype=torch.long, device=p.device),)
        else:
            rows = tuple(grad.indices())
        param, gathered = p[rows], {n: t[rows] for n, t in buffers.items()}
        coefficients = adam_coefficients(state["step"], lr, group["betas"])
        step_size = coefficients["step_size"] * coefficients["root_correction"]
        sparse_adam(
            param, values, gathered, betas=group["betas"], eps=group["eps"], step_size=step_size
        )
        p.index_put_(rows, param)
        for n, t in buffers.items():
            t.index_put_(rows, gathered[n])


def _check_lr(owner: str, lr) -> None:
    """``lr > 0``, a number or a 1-element tensor, as torch.optim.SparseAdam wants it."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(
                f"{owner}: lr must be a number or a 1-element tensor; received a tensor of "
                f"shape {tuple(lr.shape)} (Tensor lr must be 1-element)"
            )
        lr = float(lr.item())
    if checks.number(owner, "lr", lr) <= 0:
        checks.refuse(owner, "lr", "> 0", lr, also=torch_words("lr", lr))

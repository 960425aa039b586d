"""L-BFGS (Liu & Nocedal, 1989), with an optional strong-Wolfe line search."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim.torch_api import torch_words

#: what LBFGS takes besides ``params`` (torch.optim.LBFGS's arguments, all of them)
ARGUMENTS = (
    "lr",
    "max_iter",
    "max_eval",
    "tolerance_grad",
    "tolerance_change",
    "history_size",
    "line_search_fn",
)

#: gradwise options LBFGS refuses, and why: torch's class has none of them
REFUSED = {
    "weight_decay": "put an L2 term in the closure's loss: the line search must see the "
    "objective it minimizes",
    "l1": "|θ| is not differentiable at 0, so neither the curvature pairs nor the line "
    "search's Wolfe conditions hold with it; a proximal step after the search would leave "
    "the search's loss wrong",
    "maximize": "negate the closure's loss",
}

#: the line searches ``line_search_fn`` names (None: a fixed step of ``lr``)
LINE_SEARCHES = ("strong_wolfe",)

#: a curvature pair is kept only where ``yᵀs`` exceeds this (PyTorch's and minFunc's value)
CURVATURE_MIN = 1e-10


def lbfgs_direction(
    grad: Tensor,
    steps: list[Tensor],
    grad_changes: list[Tensor],
    inverse_curvatures: list[Tensor],
    gamma: Tensor | float,
    alphas: list,
) -> Tensor:
    r"""The L-BFGS direction ``d = −H·g``, by the two-loop recursion ("On the limited memory
    BFGS method for large scale optimization", Liu & Nocedal, Math. Programming 1989; Nocedal &
    Wright, "Numerical Optimization", Algorithm 7.4).

    ``H`` is the BFGS inverse-Hessian estimate built from the last ``m`` pairs
    ``s_i = θ_{i+1} − θ_i`` (``steps``, ``old_stps`` in the state), ``y_i = g_{i+1} − g_i``
    (``grad_changes``, ``old_dirs``), with ``ρ_i = 1/(y_iᵀs_i)`` (``inverse_curvatures``,
    ``ro``), starting from ``H₀ = γ·I``, ``γ = y_{m−1}ᵀs_{m−1} / y_{m−1}ᵀy_{m−1}`` (``gamma``,
    ``H_diag``)::

        q ← −g
        for i = m−1 … 0:   α_i = ρ_i·s_iᵀq;   q ← q − α_i·y_i
        r ← γ·q
        for i = 0 … m−1:   β_i = ρ_i·y_iᵀr;   r ← r + (α_i − β_i)·s_i
        d = r

    ``alphas`` (``al`` in the state) receives the ``α_i``; only its first ``m`` entries are
    written.
    """
    q = grad.neg()
    for i in reversed(range(len(steps))):
        alphas[i] = steps[i].dot(q) * inverse_curvatures[i]
        q.add_(grad_changes[i], alpha=-alphas[i])
    r = torch.mul(q, gamma)
    for i in range(len(steps)):
        beta = grad_changes[i].dot(r) * inverse_curvatures[i]
        r.add_(steps[i], alpha=alphas[i] - beta)
    return r


def cubic_minimizer(x1, f1, g1, x2, f2, g2, bounds=None):
    r"""The minimizer of the cubic through ``(x1, f1)`` and ``(x2, f2)`` with slopes ``g1``,
    ``g2``, clamped to ``bounds`` (default: between ``x1`` and ``x2``); the middle of the bounds
    where the cubic has no minimizer (Nocedal & Wright, eq. 3.59). With ``a < b`` the two points
    sorted::

        d1 = g_a + g_b − 3·(f_a − f_b)/(a − b)
        d2 = sqrt(d1² − g_a·g_b)
        x* = b − (b − a)·(g_b + d2 − d1)/(g_b − g_a + 2·d2)

    Values may be numbers or 0-d tensors, and keep their kind (the line search's slopes are
    tensors in the parameters' dtype).
    """
    if x1 <= x2:
        (a, fa, ga), (b, fb, gb) = (x1, f1, g1), (x2, f2, g2)
    else:
        (a, fa, ga), (b, fb, gb) = (x2, f2, g2), (x1, f1, g1)
    low, high = bounds if bounds is not None else (a, b)
    d1 = ga + gb - 3 * (fa - fb) / (a - b)
    d2_square = d1**2 - ga * gb
    if not d2_square >= 0:  # no minimizer (or not a number): bisect
        return (low + high) / 2.0
    d2 = d2_square.sqrt() if isinstance(d2_square, Tensor) else math.sqrt(d2_square)
    return min(max(b - (b - a) * ((gb + d2 - d1) / (gb - ga + 2 * d2)), low), high)


def strong_wolfe(
    evaluate: Callable[[float | Tensor], tuple[float, Tensor]],
    t: float | Tensor,
    d: Tensor,
    f: float,
    g: Tensor,
    gtd: Tensor,
    *,
    c1: float = 1e-4,
    c2: float = 0.9,
    tolerance_change: float = 1e-9,
    max_ls: int = 25,
) -> tuple[float, Tensor, float | Tensor, int]:
    r"""A step length ``t`` along ``d`` that meets the strong Wolfe conditions (Nocedal &
    Wright, "Numerical Optimization", Algorithms 3.5 and 3.6; minFunc's ``WolfeLineSearch``,
    as PyTorch's LBFGS ports it).

    ``evaluate(t)`` returns the loss and the flat gradient at ``θ + t·d`` (and leaves θ as it
    was); ``f``, ``g``, ``gtd = gᵀd`` are their values at ``t = 0``. The conditions::

        f(t) ≤ f + c1·t·gtd                  (sufficient decrease, Armijo)
        |g(t)ᵀd| ≤ −c2·gtd                   (curvature, strong form)

    First the step grows (each trial the cubic minimizer of the last two points, within
    ``[t + 0.01·(t − t_prev), 10·t]``) until an interval is known to hold an acceptable ``t``;
    then the interval shrinks (cubic minimizer, kept at least a tenth of the interval from its
    ends when it lands close to them twice) until a ``t`` meets both conditions, the interval
    is shorter than ``tolerance_change`` (times ``max|d|``), or ``max_ls`` evaluations are
    spent. Returns ``(f(t), g(t), t, evaluations)`` of the best point found.
    """
    d_norm = d.abs().max()
    start = (0, f, g.clone(memory_format=torch.contiguous_format), gtd)

    def trial(t):
        f_t, g_t = evaluate(t)
        return t, f_t, g_t, g_t.dot(d)

    def sufficient(point) -> bool:  # Armijo
        return not point[1] > f + c1 * point[0] * gtd

    def curved(point) -> bool:  # strong curvature condition
        return abs(point[3]) <= -c2 * gtd

    new = trial(t)
    evaluations, tries, done = 1, 0, False
    previous = start
    bracket = None
    while tries < max_ls:  # grow the step until [previous, new] holds an acceptable one
        if not sufficient(new) or (tries > 1 and new[1] >= previous[1]):
            bracket = [previous, new]
            break
        if curved(new):
            bracket, done = [new], True
            break
        if new[3] >= 0:  # the slope turned: a minimum lies behind
            bracket = [previous, new]
            break
        t_prev, t = previous[0], new[0]
        grown = cubic_minimizer(*_cubic(previous), *_cubic(new), (t + 0.01 * (t - t_prev), t * 10))
        previous, new = new, trial(grown)
        evaluations += 1
        tries += 1
    if tries == max_ls:
        bracket = [start, new]
    low, high = _ends(bracket)
    close_twice = False
    while not done and tries < max_ls:  # shrink [bracket] around an acceptable step
        if abs(bracket[1][0] - bracket[0][0]) * d_norm < tolerance_change:
            break
        t = cubic_minimizer(*_cubic(bracket[0]), *_cubic(bracket[1]))
        left, right = min(bracket[0][0], bracket[1][0]), max(bracket[0][0], bracket[1][0])
        margin = 0.1 * (right - left)
        if min(right - t, t - left) < margin:  # close to an end: no progress if it stays there
            if close_twice or t >= right or t <= left:
                t = right - margin if abs(t - right) < abs(t - left) else left + margin
                close_twice = False
            else:
                close_twice = True
        else:
            close_twice = False
        new = trial(t)
        evaluations += 1
        tries += 1
        if not sufficient(new) or new[1] >= bracket[low][1]:
            bracket[high] = new
            low, high = _ends(bracket)
        else:
            if curved(new):
                done = True
            elif new[3] * (bracket[high][0] - bracket[low][0]) >= 0:
                bracket[high] = bracket[low]
            bracket[low] = new
    t, f_t, g_t, _ = bracket[low]
    return f_t, g_t, t, evaluations


def _cubic(point: tuple) -> tuple:
    """A line-search point ``(t, f, g, gᵀd)`` as :func:`cubic_minimizer`'s ``(x, f, slope)``."""
    return point[0], point[1], point[3]


def _ends(bracket: list) -> tuple[int, int]:
    """Positions of the lower and the higher loss in a bracket (the first on a tie)."""
    return (0, 1) if bracket[0][1] <= bracket[-1][1] else (1, 0)


class LBFGS(torch.optim.Optimizer):
    r"""L-BFGS, drop-in for ``torch.optim.LBFGS`` (same arguments and defaults, one param
    group, a closure at every step).

    Each ``step(closure)`` runs up to ``max_iter`` iterations on all parameters as one flat
    vector θ, calling ``closure()`` (which must zero the gradients, compute the loss, call
    ``backward()`` and return the loss) for each evaluation::

        d_k = −H_k·g_k               (:func:`lbfgs_direction`; d_0 = −g_0)
        θ_{k+1} = θ_k + t_k·d_k      (t_k = lr, or the strong-Wolfe step: :func:`strong_wolfe`;
                                      the very first t is min(1, 1/‖g_0‖₁)·lr)
        s_k = t_k·d_k, y_k = g_{k+1} − g_k, kept (at most history_size pairs) if y_kᵀs_k > 1e-10

    An iteration stops the step early when ``max|g| ≤ tolerance_grad``, when ``gᵀd >
    −tolerance_change``, when ``max|t·d| ≤ tolerance_change``, when the loss changed by less
    than ``tolerance_change``, or when ``max_eval`` evaluations are spent (default
    ``max_iter·5//4``). The history, the last direction and step, and the counters
    ``func_evals`` and ``n_iter`` live in the state of the first parameter, as in PyTorch, so
    state dicts move between the two unchanged.

    It subclasses ``torch.optim.Optimizer``, not gradwise's engine-backed base: there is no
    elementwise rule to apply to a group's buffers. The update is a loop of dot products and
    closure calls over one flat vector, and its state is global (lists of flat tensors), not
    per parameter.

    Refused, as ``torch.optim.LBFGS`` has none of them: ``weight_decay`` and ``l1`` (put the
    penalty in the closure's loss instead, where the line search sees it; for ``l1``, whose
    ``|θ|`` has no derivative at 0, use a smooth optimizer), ``maximize`` (negate the loss),
    and a second param group, as PyTorch refuses it.

    Differences: as PyTorch's, the line search's Wolfe constants are fixed (``c1 = 1e-4``,
    ``c2 = 0.9``), and so is its own interval tolerance (``1e-9``: ``tolerance_change`` does not
    reach it); ``line_search_fn`` other than None and ``"strong_wolfe"`` is refused at
    construction, where PyTorch raises at the first step. This is the two-loop L-BFGS of Liu &
    Nocedal (1989) with minFunc's choices (initial step, curvature threshold, line search), as
    in PyTorch; SciPy's ``L-BFGS-B`` differs (bounds, its own line search and stopping tests).

    Example::

        >>> import torch, gradwise.optim.lbfgs as gl
        >>> x = torch.nn.Parameter(torch.tensor([-1.5, 2.0]))
        >>> opt = gl.LBFGS([x], line_search_fn="strong_wolfe")
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        ...     loss.backward()
        ...     return loss
        >>> for _ in range(5):
        ...     _ = opt.step(closure)
        >>> x.detach().round(decimals=4)
        tensor([1., 1.])
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1,
        max_iter: int = 20,
        max_eval: int | None = None,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_size: int = 100,
        line_search_fn: str | None = None,
        **refused,
    ) -> None:
        name = type(self).__name__
        checks.not_options(name, refused, REFUSED, ARGUMENTS, "torch.optim.LBFGS")
        _check_lr(name, lr)
        checks.integer(name, "max_iter", max_iter, 1)
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        checks.integer(name, "max_eval", max_eval, 1)
        _check_tolerance(name, "tolerance_grad", tolerance_grad)
        _check_tolerance(name, "tolerance_change", tolerance_change)
        checks.integer(name, "history_size", history_size, 1)
        _check_line_search(name, line_search_fn)
        defaults = dict(
            lr=lr,
            max_iter=max_iter,
            max_eval=max_eval,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            history_size=history_size,
            line_search_fn=line_search_fn,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        name = type(self).__name__
        checks.not_group_options(name, param_group, REFUSED, "torch.optim.LBFGS")
        super().add_param_group(param_group)  # its own checks first, as in torch's order
        if len(self.param_groups) > 1:
            del self.param_groups[-1]
            raise ValueError(
                f"{name}: takes one param group (all parameters form one vector); received a "
                f"param group number {len(self.param_groups) + 1} (LBFGS doesn't support "
                "per-parameter options (parameter groups))"
            )

    @torch.no_grad()
    def step(self, closure=None):
        """Up to ``max_iter`` L-BFGS iterations; returns the loss ``closure()`` gave first."""
        if closure is None:
            raise TypeError(
                "LBFGS: step() needs a closure that zeroes the gradients, computes the loss, "
                "calls backward() and returns the loss; received closure=None"
            )
        group = self.param_groups[0]
        params = group["params"]
        _check_line_search(type(self).__name__, group["line_search_fn"], RuntimeError)
        evaluate = torch.enable_grad()(closure)
        lr = group["lr"]
        if isinstance(lr, Tensor):  # a 0-d tensor, as torch.optim's _to_scalar leaves it
            lr = lr.reshape(())
        max_iter, max_eval = group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        history_size = group["history_size"]

        state = self.state[params[0]]  # the state is global: kept with the first parameter
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        first_loss = evaluate()
        loss = float(first_loss)
        evaluations = 1
        state["func_evals"] += 1
        flat_grad = flat_gradient(params)
        if flat_grad.abs().max() <= tolerance_grad:  # already optimal
            return first_loss
        optimal = False

        d, t = state.get("d"), state.get("t")
        grad_changes, steps = state.get("old_dirs"), state.get("old_stps")
        inverse_curvatures, gamma = state.get("ro"), state.get("H_diag")
        prev_flat_grad, prev_loss = state.get("prev_flat_grad"), state.get("prev_loss")

        for iteration in range(1, max_iter + 1):
            state["n_iter"] += 1
            if state["n_iter"] == 1:  # steepest descent, and an empty history
                d = flat_grad.neg()
                grad_changes, steps, inverse_curvatures, gamma = [], [], [], 1
            else:
                y, s = flat_grad.sub(prev_flat_grad), d.mul(t)
                ys = y.dot(s)
                if ys > CURVATURE_MIN:  # a pair that keeps H positive definite
                    if len(grad_changes) == history_size:
                        del grad_changes[0], steps[0], inverse_curvatures[0]
                    grad_changes.append(y)
                    steps.append(s)
                    inverse_curvatures.append(1.0 / ys)
                    gamma = ys / y.dot(y)
                alphas = state.setdefault("al", [None] * history_size)
                d = lbfgs_direction(
                    flat_grad, steps, grad_changes, inverse_curvatures, gamma, alphas
                )
            if prev_flat_grad is None:
                prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
            else:
                prev_flat_grad.copy_(flat_grad)
            prev_loss = loss

            # the first step of all is scaled down by the gradient's size (d = −g then)
            t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if state["n_iter"] == 1 else lr
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:  # not a descent direction, to tolerance
                break

            used = 0
            if group["line_search_fn"] is not None:
                start = [p.clone(memory_format=torch.contiguous_format) for p in params]

                def along(t_trial, start=start, d=d):
                    move(params, t_trial, d)
                    f_trial = float(evaluate())
                    g_trial = flat_gradient(params)
                    for p, x in zip(params, start, strict=True):
                        p.copy_(x)
                    return f_trial, g_trial

                loss, flat_grad, t, used = strong_wolfe(
                    along, t, d, loss, flat_grad, gtd, max_ls=max_eval - evaluations
                )
                move(params, t, d)
                optimal = flat_grad.abs().max() <= tolerance_grad
            else:
                move(params, t, d)
                if iteration != max_iter:  # the last iteration's loss is the next step's first
                    loss = float(evaluate())
                    flat_grad = flat_gradient(params)
                    optimal = flat_grad.abs().max() <= tolerance_grad
                    used = 1
            evaluations += used
            state["func_evals"] += used

            if iteration == max_iter or evaluations >= max_eval or optimal:
                break
            if d.mul(t).abs().max() <= tolerance_change:  # the step no longer moves θ
                break
            if abs(loss - prev_loss) < tolerance_change:  # nor the loss
                break

        state["d"], state["t"] = d, t
        state["old_dirs"], state["old_stps"] = grad_changes, steps
        state["ro"], state["H_diag"] = inverse_curvatures, gamma
        state["prev_flat_grad"], state["prev_loss"] = prev_flat_grad, prev_loss
        return first_loss


def flat_gradient(params: list[Tensor]) -> Tensor:
    """The gradients of ``params`` as one new flat vector: a missing gradient as zeros, a sparse
    one made dense, a complex one as its real and imaginary parts (as ``move`` steps θ)."""
    pieces = []
    for p in params:
        if p.grad is None:
            piece = p.new_zeros(p.numel())
        elif p.grad.is_sparse:
            piece = p.grad.to_dense().reshape(-1)
        else:
            piece = p.grad.reshape(-1)
        pieces.append(torch.view_as_real(piece).reshape(-1) if piece.is_complex() else piece)
    return torch.cat(pieces)


def move(params: list[Tensor], t: float | Tensor, d: Tensor) -> None:
    """``θ ← θ + t·d`` in place, with ``d`` flat over ``params`` (complex ones as pairs)."""
    offset = 0
    for p in params:
        real = torch.view_as_real(p) if p.is_complex() else p
        n = real.numel()
        real.add_(d[offset : offset + n].view_as(real), alpha=t)
        offset += n


def _check_line_search(owner: str, value, exc: type[Exception] = ValueError) -> None:
    if value is not None and value not in LINE_SEARCHES:
        checks.refuse(
            owner,
            "line_search_fn",
            "None or " + ", ".join(repr(name) for name in LINE_SEARCHES),
            value,
            exc,
            also="only 'strong_wolfe' is supported",
        )


def _check_tolerance(owner: str, name: str, value) -> None:
    """A real number, infinite ones included: PyTorch's tests pass ``tolerance_grad=±inf`` to
    stop at once or never; a negative tolerance turns its test off."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        checks.refuse(owner, name, "a real number", value, TypeError)
    if math.isnan(value):
        checks.refuse(owner, name, "a number (not NaN)", value)


def _check_lr(owner: str, lr) -> None:
    """``lr ≥ 0``, a number or a 1-element tensor, as torch.optim.LBFGS wants it."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(
                f"{owner}: lr must be a number or a 1-element tensor; received a tensor of "
                f"shape {tuple(lr.shape)} (Tensor lr must be 1-element)"
            )
        lr = float(lr.item())
    checks.at_least(owner, "lr", lr, 0.0, also=torch_words("lr", lr))

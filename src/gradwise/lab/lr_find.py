"""The learning-rate range test (Smith, 2017; fastai's ``lr_find``), restoring what it touches.

Train for a few ``steps`` while the rate grows exponentially from ``start_lr`` to ``end_lr``::

    lr_i = start_lr · (end_lr / start_lr) ** (i / (steps − 1))          i = 0 … steps − 1

and record each batch's loss. A running bias-corrected moving average of the loss::

    avg_i = β · avg_{i−1} + (1 − β) · loss_i          running_i = avg_i / (1 − β^(i+1))

stops the test once the loss diverges (``running_i > diverge · min running``, or a NaN/inf loss).
The curve that is plotted and searched is the loss smoothed by the same average run forward and
then backward (no lag). **The suggested rate is a tenth of the rate at that smoothed loss's
minimum** (``rule="minimum/10"``; fastai's ``lr_min``); ``rule="steepest"`` suggests instead the
rate where it falls fastest (most negative ``d smoothed / d log10(lr)``; fastai's ``steep``).

Afterwards the model's parameters and buffers, its train/eval mode, its gradients, the optimizer's
state and rates, and the global torch random state are exactly what they were before.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gradwise import checks
from gradwise.errors import ConfigError
from gradwise.train.loop import optimizer_mode
from gradwise.train.metrics import LOSSES
from gradwise.train.smoothing import MovingAverage, zero_lag_smooth

RULES = {
    "minimum/10": "a tenth of the rate at the smoothed loss's minimum",
    "steepest": "the rate of steepest descent of the smoothed loss",
}
"""The suggestion rules of :func:`lr_find` (its ``rule`` argument), as written on its plot."""


@dataclass
class LRFindResult:
    """What :func:`lr_find` measured.

    ``lrs``, ``losses`` and ``smoothed`` have one entry per step taken. ``min_loss_lr`` is the
    rate at the smoothed loss's minimum (near the edge of stability: too large to train with),
    ``steepest_lr`` the rate where the smoothed loss falls fastest against ``log(lr)``, and
    ``suggestion`` the rate that ``rule`` picks from them (``None`` when the loss never fell).
    ``stopped`` says why the test ended.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    min_loss_lr: float | None
    steepest_lr: float | None
    stopped: str
    rule: str = "minimum/10"

    @property
    def rule_text(self) -> str:
        """The rule in words."""
        return RULES[self.rule]

    def plot(self, path: str | Path, title: str = "") -> Path:
        """Draw the loss against the rate (log scale) with the suggestion marked; see
        :func:`gradwise.lab.plots.plot_lr_find`."""
        from gradwise.lab.plots import plot_lr_find

        return plot_lr_find(self, path, title=title)

    def to_csv(self, path: str | Path) -> Path:
        """``step,lr,loss,smoothed`` rows."""
        path = Path(path)
        with open(path, "w") as f:
            f.write("step,lr,loss,smoothed\n")
            for i, (lr, loss, avg) in enumerate(zip(self.lrs, self.losses, self.smoothed)):
                f.write(f"{i},{lr:.6g},{loss:.6g},{avg:.6g}\n")
        return path


def lr_find(
    model: nn.Module,
    data,
    *,
    optimizer: torch.optim.Optimizer | Callable | None = None,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    batch_size: int | str = 32,
    smoothing: float = 0.8,
    diverge: float = 4.0,
    penalty: Callable[[], Tensor] | None = None,
    seed: int = 0,
    rule: str = "minimum/10",
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
) -> LRFindResult:
    """Run the learning-rate range test on ``model`` and suggest a rate.

    The rate grows exponentially from ``start_lr`` to ``end_lr`` over ``steps`` optimizer steps
    (one batch each)::

        lr_i = start_lr · (end_lr / start_lr) ** (i / (steps − 1))

    The test stops when a running moving average of the loss (factor ``smoothing``, β) exceeds
    ``diverge`` times its minimum so far, or a loss is NaN or infinite. The recorded losses are
    then smoothed by the same average run forward and backward (which cancels the moving
    average's lag of ``β / (1 − β)`` steps); losses after the divergence threshold was first
    approached are capped at it, so the blow-up does not bleed backwards.

    **Suggestion rule** (``rule``):

    * ``"minimum/10"`` (default): a tenth of the rate at which the smoothed loss is lowest. At
      the minimum the rate is already at the edge of stability (a few steps more and the loss
      climbs); a tenth of it trains fast and stays stable. fastai's ``lr_min`` is the same rule.
    * ``"steepest"``: the rate of steepest descent of the smoothed loss, i.e. the most negative
      ``d smoothed / d log10(lr)``, looked for from a tenth of the way in up to the minimum
      (fastai's ``steep``).

    The two agree within a factor of two or so when the loss falls over a short span of rates
    (digits' MLP with Adam: 3.1e-3 and 1.9e-3, both train as well as the default 1e-3), but where
    it falls slowly over several decades the steepest point lands early and too low. MNIST-1D's
    CNN with Adam, seeds 0-2: ``steepest`` gave 4.3e-4 to 1.9e-3, ``minimum/10`` 3.8e-3 to
    7.9e-3; trained for 30 epochs (2 seeds), 4.3e-4 reached 37% test accuracy, 1e-3 59%, 3e-3
    83%, 7.9e-3 92% (``docs/gallery.md``). Hence the default.

    Args:
        model: any ``nn.Module``; it is trained during the test and restored afterwards
            (parameters, buffers, gradients and train/eval mode).
        data: ``(x, y)`` tensors, a :class:`gradwise.train.data.Dataset` (its training split), or
            an iterable of ``(x, y)`` batches (cycled if shorter than ``steps``).
        optimizer: an optimizer of the model's parameters (its state and rates are restored
            afterwards; param groups keep their ratio of rates), a function ``params ->
            optimizer``, or ``None`` for :class:`gradwise.optim.Adam`.
        loss: ``"cross_entropy"``, ``"mse"`` or a function ``(output, target) -> loss``.
        start_lr: the low end of the range, ``0 < start_lr < end_lr``.
        end_lr: the high end of the range.
        steps: the most steps to take (>= 5).
        batch_size: rows per batch for tensor data: an integer or ``"full"``.
        smoothing: β of the moving average, in [0, 1) (0.8: about 5 steps).
        diverge: stop when the smoothed loss exceeds this multiple of its minimum (> 1).
        penalty: ``penalty()`` is added to each batch's loss (e.g. an L2 term).
        seed: seeds the batch order and, during the test only, torch's global generator.
        rule: ``"minimum/10"`` or ``"steepest"``: how the suggestion is picked (above).
        augment: ``augment(x, generator) -> x'`` applied to each batch's inputs, as ``fit``
            applies it in training (e.g. :class:`~gradwise.train.augment.RandomShift`).

    Returns:
        an :class:`LRFindResult` (rates, raw and smoothed losses, suggestion, ``.plot(path)``).

    Example::

        >>> import torch
        >>> from gradwise.lab import lr_find
        >>> from gradwise.optim import SGD
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> x = torch.randn(256, 4); y = (x[:, 0] > 0).long()
        >>> net = torch.nn.Linear(4, 2)
        >>> found = lr_find(net, (x, y), optimizer=SGD(net.parameters(), lr=0.1), steps=60)
        >>> 1e-4 < found.suggestion < 10
        True
    """
    owner = "lr_find"
    if not isinstance(model, nn.Module):
        checks.refuse(owner, "model", "a torch.nn.Module", model, TypeError)
    start_lr = checks.positive(owner, "start_lr", start_lr)
    end_lr = checks.positive(owner, "end_lr", end_lr)
    if end_lr <= start_lr:
        checks.refuse(owner, "end_lr", f"> start_lr ({start_lr:g})", end_lr)
    steps = checks.integer(owner, "steps", steps, low=5)
    smoothing = checks.in_range(owner, "smoothing", smoothing, 0.0, 1.0)
    diverge = checks.number(owner, "diverge", diverge)
    if diverge <= 1:
        checks.refuse(owner, "diverge", "> 1", diverge)
    seed = checks.integer(owner, "seed", seed, low=0)
    rule = checks.choice(owner, "rule", rule, tuple(RULES))
    if isinstance(loss, str):
        loss_fn = LOSSES[checks.choice(owner, "loss", loss, tuple(LOSSES))]
    elif callable(loss):
        loss_fn = loss
    else:
        checks.refuse(owner, "loss", "'cross_entropy', 'mse' or a function", loss, TypeError)
    if optimizer is None:
        from gradwise.optim import Adam

        optimizer = Adam(model.parameters(), lr=start_lr)
    elif not isinstance(optimizer, torch.optim.Optimizer):
        if not callable(optimizer):
            checks.refuse(
                owner, "optimizer", "an optimizer, a function params -> optimizer or None",
                optimizer, TypeError,
            )  # fmt: skip
        optimizer = optimizer(model.parameters())
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batches = _batches(data, batch_size, device, seed)
    if augment is not None:  # the batches as training sees them (see fit's augment)
        shifts = torch.Generator().manual_seed(seed)
        batches = ((augment(xb, shifts), yb) for xb, yb in batches)

    saved = _Snapshot(model, optimizer)
    bases = [float(g["lr"]) for g in optimizer.param_groups]
    ratios = [b / bases[0] if bases[0] > 0 else 1.0 for b in bases]
    lrs: list[float] = []
    losses: list[float] = []
    stopped = f"reached end_lr={end_lr:g}"
    best, best_at = math.inf, 0
    try:
        torch.manual_seed(seed)
        model.train()
        optimizer_mode(optimizer, "train")  # Schedule-Free steps in train mode
        running = MovingAverage(smoothing)
        for i in range(steps):
            lr = start_lr * (end_lr / start_lr) ** (i / (steps - 1))
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = lr * ratio
            xb, yb = next(batches)
            optimizer.zero_grad(set_to_none=True)
            batch_loss = loss_fn(model(xb), yb)
            if penalty is not None:
                batch_loss = batch_loss + penalty()
            value = float(batch_loss.detach())
            if not math.isfinite(value):
                stopped = f"the loss became {value} at lr={lr:.3g}"
                break
            batch_loss.backward()
            optimizer.step()
            smooth = running.add(value)
            lrs.append(lr)
            losses.append(value)
            if smooth < best:
                best, best_at = smooth, i
            if smooth > diverge * best:
                stopped = (
                    f"diverged at lr={lr:.3g} (running loss {smooth:.3g} > "
                    f"{diverge:g} x its minimum {best:.3g})"
                )
                break
    finally:
        saved.restore()
    # past the divergence threshold every value means "diverged": cap them, or the backward pass
    # would smear the blow-up over the steps before it
    cap = diverge * best
    capped = [v if i <= best_at else min(v, cap) for i, v in enumerate(losses)]
    smoothed = zero_lag_smooth(capped, smoothing)
    steepest_lr, min_loss_lr = suggest(lrs, smoothed)
    if steepest_lr is None:  # the loss never fell: no rate to suggest
        suggestion = None
    elif rule == "steepest":
        suggestion = steepest_lr
    else:
        suggestion = min_loss_lr / 10
    return LRFindResult(
        lrs, losses, smoothed, suggestion, min_loss_lr, steepest_lr, stopped, rule=rule
    )


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None]:
    """``(steepest, minimum)``: the rate where ``smoothed`` falls fastest against ``log(lr)``,
    looked for up to its minimum, and the rate at its minimum (``None``s for too short a curve
    or one that never falls)."""
    if len(smoothed) < 3:
        return None, None
    values = np.asarray(smoothed, dtype=np.float64)
    logs = np.log10(np.asarray(lrs, dtype=np.float64))
    low = int(np.argmin(values))
    skip = len(values) // 10  # the first steps: the moving average has seen little yet
    if low <= skip + 1:
        return None, float(lrs[low])
    slope = np.gradient(values, logs)
    steepest = skip + int(np.argmin(slope[skip : low + 1]))
    if slope[steepest] >= 0:
        return None, float(lrs[low])
    return float(lrs[steepest]), float(lrs[low])


# --------------------------------------------------------------------------------- internals


class _Snapshot:
    """Exact copies of what the test changes, put back by :meth:`restore`."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.model_state = copy.deepcopy(model.state_dict())
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())
        self.training = {name: m.training for name, m in model.named_modules()}
        self.grads = [
            (p, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()
        ]
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        self.model.load_state_dict(self.model_state)
        self.optimizer.load_state_dict(self.optimizer_state)
        for name, module in self.model.named_modules():
            module.training = self.training.get(name, module.training)
        for p, grad in self.grads:
            if grad is None:
                p.grad = None
            elif p.grad is not None and p.grad.shape == grad.shape:
                p.grad.copy_(grad)
            else:
                p.grad = grad.clone()
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def _batches(data, batch_size, device: torch.device, seed: int):
    """An endless iterator of ``(x, y)`` batches on ``device``."""
    if hasattr(data, "x_train") and hasattr(data, "y_train"):
        data = (data.x_train, data.y_train)
    if (
        isinstance(data, tuple | list)
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        x, y = data
        if len(x) != len(y) or len(x) == 0:
            raise ConfigError(
                f"lr_find: data must be non-empty x and y of the same length; "
                f"received {len(x)} and {len(y)} rows"
            )
        n = len(x)
        if str(batch_size).lower() == "full":
            size = n
        else:
            size = min(checks.integer("lr_find", "batch_size", batch_size, low=1), n)
        return _tensor_batches(x.to(device), y.to(device), size, seed)
    if isinstance(data, Iterable):
        return _cycle(data, device)
    raise ConfigError(
        "lr_find: data must be (x, y) tensors, a Dataset or an iterable of (x, y) batches; "
        f"received {type(data).__name__}"
    )


def _tensor_batches(x: Tensor, y: Tensor, size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    n = len(x)
    while True:
        if size >= n:
            yield x, y
            continue
        order = torch.randperm(n, generator=generator).to(x.device)
        for i in range(0, n - size + 1, size):  # whole batches only: equal noise at every step
            idx = order[i : i + size]
            yield x[idx], y[idx]


def _cycle(loader, device: torch.device):
    while True:
        empty = True
        for xb, yb in loader:
            empty = False
            yield xb.to(device), yb.to(device)
        if empty:
            raise ConfigError("lr_find: data yielded no batches")


def lr_find_for(
    config,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    rule: str = "minimum/10",
) -> LRFindResult:
    """The range test on a resolved :class:`~gradwise.train.config.TrainConfig`'s data, model and
    optimizer (with its L2 penalty), as ``gradwise lr-find`` runs it; the global random state
    is left as it was."""
    from gradwise.regularization import l2_penalty, weight_params
    from gradwise.train.augment import RandomShift
    from gradwise.train.config import parse_batch_size
    from gradwise.train.run import build_data, build_model, build_optimizer

    data = build_data(config)
    model = build_model(config, data)
    optimizer = build_optimizer(config, model)
    weights = weight_params(model)
    penalty = (lambda: l2_penalty(weights, config.l2)) if config.l2 else None
    with torch.random.fork_rng():
        return lr_find(
            model,
            data,
            optimizer=optimizer,
            loss="cross_entropy" if data.task == "classification" else "mse",
            start_lr=start_lr,
            end_lr=end_lr,
            steps=steps,
            batch_size=parse_batch_size(config.batch_size),
            penalty=penalty,
            seed=config.seed,
            rule=rule,
            augment=RandomShift(config.augment_shift) if config.augment_shift else None,
        )

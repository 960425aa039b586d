"""``fit()``: batch, stochastic and mini-batch gradient descent on any ``nn.Module``."""

from __future__ import annotations

import contextlib
import copy
import math
import operator
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradwise import checks
from gradwise.errors import CheckpointError, ConfigError, GradwiseError
from gradwise.train import checkpoint as ckpt
from gradwise.train import distributed, native
from gradwise.train.callbacks import Callback
from gradwise.train.history import History
from gradwise.train.progress import Progress

_GRAD = operator.attrgetter("grad")

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": nn.functional.cross_entropy,
    "mse": nn.functional.mse_loss,
}
NAN_POLICIES = ("raise", "skip")


class Diverged(GradwiseError, FloatingPointError):
    """The loss, a gradient or a parameter became NaN or infinite.

    ``step`` is the optimizer step at fault (1-based), ``where`` what held the value (``"the
    loss"``, ``"the gradient of <name>"`` or ``"parameter <name>"``).
    """

    def __init__(self, message: str, step: int | None = None, where: str | None = None) -> None:
        super().__init__(message)
        self.step, self.where = step, where


class SkippedStepWarning(RuntimeWarning):
    """A step was dropped because its loss or a gradient was NaN or infinite (``"skip"``)."""


#: ``nan_policy="skip"`` warns for this many skipped steps per ``fit()``, then only counts them
SKIP_WARNINGS = 5
#: ``nan_policy="skip"`` raises :class:`Diverged` after an epoch's worth of steps in a row were
#: skipped, and at least this many: the run cannot recover
MIN_SKIPS_IN_A_ROW = 10


@dataclass
class TrainState:
    """What callbacks see at the end of an epoch."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    history: History
    epoch: int = 0
    step: int = 0
    stop: str | None = None
    extra: dict = field(default_factory=dict)


def fit(
    model: nn.Module,
    train,
    *,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
    optimizer: torch.optim.Optimizer | Callable | None = None,
    scheduler=None,
    epochs: int = 10,
    batch_size: int | str = 32,
    val=None,
    metrics: Sequence[str] = ("accuracy",),
    callbacks: Iterable[Callback] = (),
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: bool = True,
    nan_policy: str = "raise",
    monitor: str = "val_loss",
    scheduler_interval: str = "step",
    penalty: Callable[[], Tensor] | None = None,
    extra_state: dict | None = None,
) -> History:
    """Train ``model`` on ``train`` and return its :class:`History`.

    ``train`` and ``val`` are ``(x, y)`` pairs of tensors (batched by slicing, reshuffled every
    epoch from a generator seeded by ``seed``) or any iterable of ``(x, y)`` batches such as a
    ``DataLoader``. The spec's three kinds of gradient descent:

    * ``batch_size="full"``: batch gradient descent, one step per epoch on the whole set;
    * ``batch_size=1``: stochastic gradient descent, one sample per step;
    * ``batch_size=n``: mini-batch gradient descent.

    ``optimizer`` is an optimizer of the model's parameters or a function ``params -> optimizer``
    (default: ``gradwise.optim.Adam`` with lr 1e-3). ``scheduler`` is a
    :class:`gradwise.schedules.Scheduler` (stepped every step, or every epoch with
    ``scheduler_interval="epoch"``; its plateau is fed ``monitor`` after each epoch) or a
    ``torch.optim.lr_scheduler`` object (``ReduceLROnPlateau`` is fed ``monitor``).

    With ``checkpoint_dir`` a checkpoint (model, optimizer, scheduler, random states, history,
    callbacks) is written atomically every ``checkpoint_every`` epochs and at the end;
    ``resume=True`` continues from it, ending with exactly the weights an uninterrupted run gets.
    On ``KeyboardInterrupt`` the last finished epoch is checkpointed if it was not yet (with
    ``checkpoint_every > 1``) before the interrupt propagates.

    A NaN or infinite loss or gradient stops the run naming the step and the parameter
    (``nan_policy="raise"``, :class:`Diverged`) or drops that step (``"skip"``: counted in
    ``history.skipped_steps``, warned with :class:`SkippedStepWarning`) without touching optimizer
    or scheduler state. Parameters that became NaN or infinite (an overflowing learning rate), or
    an epoch's worth of skipped steps in a row, are :class:`Diverged` under either policy; NaN or
    infinite weights are never written to a checkpoint.
    ``penalty()`` (e.g. an L1/L2 term from :mod:`gradwise.regularization`) is added to the
    training loss of every step; ``extra_state`` is stored in each checkpoint.

    Started by a launcher on several processes (``torchrun``, ``gradwise train --nproc N``:
    ``WORLD_SIZE > 1`` in the environment), ``fit`` joins the process group and trains with
    ``DistributedDataParallel`` (:mod:`gradwise.train.distributed`): ``batch_size`` is the global
    batch, each rank trains on its part of every batch of the shared shuffled order, and the
    result equals the single-process run's to float rounding (``loss`` must be a mean over the
    batch). Only rank 0 shows progress and writes checkpoints. A user's loader is iterated as
    it is on each rank: shard it yourself (``DistributedSampler``), with the same number of
    batches on every rank.
    """
    checks.integer("fit", "epochs", epochs, low=1)
    checks.integer("fit", "checkpoint_every", checkpoint_every, low=1)
    checks.choice("fit", "nan_policy", nan_policy, NAN_POLICIES)
    checks.choice("fit", "scheduler_interval", scheduler_interval, ("step", "epoch"))
    loss_fn = _loss(loss)
    for name in metrics:
        checks.choice("fit", "metrics", name, tuple(METRICS))
    dev = resolve_device(device)
    ctx = distributed.setup(device)  # None unless started on several processes
    if ctx is not None:
        dev = ctx.device
    model.to(dev)
    if optimizer is None:
        from gradwise.optim import Adam

        optimizer = Adam(model.parameters(), lr=1e-3)
    elif not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer(model.parameters())
    callbacks = list(callbacks)
    data = _Batches(train, batch_size, dev, "train")
    val_data = _Batches(val, "full", dev, "val") if val is not None else None
    if ctx is not None and data.loader is None and data.batch_size < ctx.world_size:
        raise ConfigError(
            f"fit: batch_size is the global batch and must be at least the number of processes "
            f"({ctx.world_size}); received batch_size={batch_size}"
        )

    history = History()
    shuffle = torch.Generator().manual_seed(seed)
    start_epoch, step = 0, 0
    if resume:
        if checkpoint_dir is None:
            raise ConfigError("fit: resume=True needs checkpoint_dir; received checkpoint_dir=None")
        # distributed: rank 0 reads it and every rank gets its copy (no shared disk needed)
        payload = distributed.from_main(_load_latest, checkpoint_dir)
        start_epoch, step, history = _restore(
            payload, model, optimizer, scheduler, shuffle, callbacks
        )
        if ctx is not None:
            distributed.restore_rng(payload, ctx)
    else:
        torch.manual_seed(seed)
    state = TrainState(model, optimizer, scheduler, history, start_epoch, step)
    for cb in callbacks:
        cb.on_fit_start(state)

    rank_rng: dict = {}  # distributed: every rank's random state, gathered at each checkpoint

    def payload(next_epoch: int) -> dict:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": next_epoch,
            "step": state.step,
            "history": history.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state(), **rank_rng},
            "callbacks": [cb.state_dict() for cb in callbacks],
            "extra": extra_state or {},
        }

    params = [p for group in optimizer.param_groups for p in group["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    faults = _Faults(nan_policy, history, params, names, data.steps_per_epoch, ctx is None)
    unsaved = None  # a copy of the last finished epoch's checkpoint while it is not on disk
    track_accuracy = "accuracy" in metrics
    clock_base = history.wall_time
    started = time.perf_counter()
    shard = forward = fault = None
    dropout = contextlib.nullcontext()
    if ctx is not None:
        distributed.check_optimizer(optimizer)
        forward, shard = distributed.wrap(model, ctx), distributed.Shard(ctx)
        dropout = distributed.GlobalDropout(model, shard)  # the global batch's masks
        fault = distributed.fault_hook(ctx)
        progress = progress and ctx.is_main
    bar = Progress(enabled=progress, epochs=epochs, steps_per_epoch=data.steps_per_epoch)
    try:
        with bar, dropout:
            for epoch in range(start_epoch, epochs):
                state.epoch = epoch
                if fault is not None:
                    fault(epoch)
                model.train()
                correct = _Correct(dev)
                tally = correct if track_accuracy else None
                sizes: list[int] = []
                losses: list[Tensor | float] = []  # floats from the native record
                lrs: list[float] = []
                bar.start_epoch(epoch)
                for batch, (xb, yb) in enumerate(data.epoch(shuffle, shard), 1):
                    optimizer.zero_grad(set_to_none=False)
                    if shard is None:
                        out = model(xb)
                        batch_loss = loss_fn(out, yb)
                    else:  # DDP; the loss weighted so that its gradient average is the batch's
                        out = forward(xb)
                        batch_loss = shard.loss(loss_fn, out, yb)
                    if penalty is not None:
                        batch_loss = batch_loss + penalty()
                    batch_loss.backward()
                    # the NaN/inf guard of the loss and every gradient; on the CPU it also
                    # records the loss (and counts the right predictions) in the same call
                    kept = faults.check_step(batch_loss, out, yb, losses, tally)
                    if kept == _Faults.NONFINITE:
                        faults.at(state.step + 1, epoch + 1, batch)
                        if faults.loss(batch_loss) or faults.gradients(batch_loss):
                            continue
                        kept = _Faults.UNRECORDED
                    optimizer.step()
                    state.step += 1
                    faults.consecutive = 0
                    lr = optimizer.param_groups[0]["lr"]
                    if scheduler is not None and scheduler_interval == "step":
                        _scheduler_step(scheduler)
                    if kept == _Faults.UNRECORDED:
                        losses.append(batch_loss.detach())
                    lrs.append(lr)
                    sizes.append(yb.shape[0])  # (``len`` of a tensor runs Python code)
                    if track_accuracy and kept != _Faults.COUNTED:
                        correct.add(out, yb)
                    if bar.enabled:
                        bar.advance(batch_loss, lr)
                if ctx is None:
                    row = _epoch_row(history, epoch, state.step, losses, lrs, sizes)
                    if track_accuracy and sizes:
                        row["train_accuracy"] = float(correct.total()) / sum(sizes)
                else:  # summed over the ranks: the same row on every rank
                    right = correct.total() if track_accuracy else None
                    losses, sizes, right = distributed.reduce_epoch(losses, sizes, right, dev)
                    row = _epoch_row(history, epoch, state.step, losses, lrs, sizes)
                    if right is not None and sum(sizes):
                        row["train_accuracy"] = right / sum(sizes)
                if val_data is not None:
                    row.update(evaluate(model, val_data, loss_fn, metrics, prefix="val_"))
                row["lr"] = optimizer.param_groups[0]["lr"]
                row["elapsed"] = clock_base + time.perf_counter() - started
                history.epochs.append(row)
                if scheduler is not None:
                    _scheduler_epoch_end(scheduler, row, monitor, scheduler_interval)
                for cb in callbacks:
                    cb.on_epoch_end(state)
                bar.end_epoch(row)
                faults.parameters(state.step)  # never checkpoint NaN/inf weights
                last = epoch + 1 == epochs or state.stop is not None
                due = (epoch + 1) % checkpoint_every == 0 or last
                if checkpoint_dir is not None and ctx is not None:
                    rank_rng = distributed.prepare_checkpoint(optimizer)  # on every rank
                if checkpoint_dir is not None and (ctx is None or ctx.is_main):
                    if due:
                        ckpt.save(payload(epoch + 1), checkpoint_dir)
                        unsaved = None
                    else:
                        unsaved = copy.deepcopy(payload(epoch + 1))
                if checkpoint_dir is not None and ctx is not None and due:
                    distributed.barrier()  # on disk before any rank starts the next epoch
                if state.stop is not None:
                    history.stopped = state.stop
                    break
    except KeyboardInterrupt:
        if unsaved is not None:
            ckpt.save(unsaved, checkpoint_dir)
        raise
    except RuntimeError as e:
        if ctx is not None and distributed.is_comm_failure(e):
            raise distributed.lost_contact(ctx, e, checkpoint_dir) from None
        raise
    return history


def evaluate(model: nn.Module, data, loss_fn, metrics=("accuracy",), prefix: str = "") -> dict:
    """Mean loss and metrics of ``model`` on ``data`` (``(x, y)`` or batches), in eval mode."""
    if isinstance(loss_fn, str):
        loss_fn = _loss(loss_fn)
    if not isinstance(data, _Batches):
        device = next(model.parameters()).device
        data = _Batches(data, "full", device, "data")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    sums = dict.fromkeys(metrics, 0.0)
    with torch.no_grad():
        for xb, yb in data.chunks(8192):
            out = model(xb)
            n = len(yb)
            total += float(loss_fn(out, yb)) * n
            for name in metrics:
                sums[name] += float(METRICS[name](out, yb)) * n
            count += n
    model.train(was_training)
    result = {f"{prefix}loss": total / max(count, 1)}
    result.update({f"{prefix}{k}": v / max(count, 1) for k, v in sums.items()})
    return result


METRICS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "accuracy": lambda out, y: (out.argmax(1) == y).float().mean(),
    "mae": lambda out, y: (out - y).abs().mean(),
    "rmse": lambda out, y: ((out - y) ** 2).mean().sqrt(),
}


# --------------------------------------------------------------------------------- internals


class _Batches:
    """Batches of in-memory ``(x, y)`` tensors (sliced after a shuffle per epoch) or a loader's."""

    def __init__(self, data, batch_size, device: torch.device, what: str) -> None:
        self.loader = None
        if (
            isinstance(data, tuple | list)
            and len(data) == 2
            and all(isinstance(t, Tensor) for t in data)
        ):
            x, y = data
            if len(x) != len(y):
                raise ConfigError(
                    f"fit: {what} x and y must have the same length; received {len(x)} and {len(y)}"
                )
            if len(x) == 0:
                raise ConfigError(f"fit: {what} set is empty")
            self.x, self.y = x.to(device), y.to(device)
            n = len(x)
            if batch_size == "full":
                self.batch_size = n
            else:
                size = checks.integer("fit", "batch_size", batch_size, low=1)
                if size > n:
                    raise ConfigError(
                        f"fit: batch_size must be at most the {what} set's size ({n}) or 'full'; "
                        f"received batch_size={size}"
                    )
                self.batch_size = size
            self.steps_per_epoch = math.ceil(n / self.batch_size)
        elif isinstance(data, Iterable):
            self.loader, self.device = data, device
            try:
                self.steps_per_epoch = len(data)
            except TypeError:
                self.steps_per_epoch = None
        else:
            raise ConfigError(
                f"fit: {what} must be an (x, y) pair of tensors or an iterable of batches; "
                f"received {type(data).__name__}"
            )

    def epoch(self, generator: torch.Generator, shard: distributed.Shard | None = None):
        if self.loader is not None:
            for xb, yb in self.loader:
                yield xb.to(self.device), yb.to(self.device)
            return
        if shard is not None:
            yield from self._shards(generator, shard)
            return
        n, bs = len(self.x), self.batch_size
        if bs >= n:
            yield self.x, self.y
            return
        order = torch.randperm(n, generator=generator).to(self.x.device)
        xs, ys = self.x[order], self.y[order]
        for i in range(0, n, bs):
            yield xs[i : i + bs], ys[i : i + bs]

    def _shards(self, generator: torch.Generator, shard: distributed.Shard):
        """This rank's rows of each global batch: the same permutation as :meth:`epoch`."""
        n, bs = len(self.x), self.batch_size
        if bs >= n:
            start, stop = shard.split(n)
            yield self.x[start:stop], self.y[start:stop]
            return
        order = torch.randperm(n, generator=generator).to(self.x.device)
        for i in range(0, n, bs):
            batch = order[i : i + bs]
            start, stop = shard.split(len(batch))
            mine = batch[start:stop]
            yield self.x[mine], self.y[mine]

    def chunks(self, size: int):
        if self.loader is not None:
            for xb, yb in self.loader:
                yield xb.to(self.device), yb.to(self.device)
            return
        for i in range(0, len(self.x), size):
            yield self.x[i : i + size], self.y[i : i + size]


def _loss(loss) -> Callable[[Tensor, Tensor], Tensor]:
    if callable(loss):
        return loss
    return LOSSES[checks.choice("fit", "loss", loss, tuple(LOSSES))]


def resolve_device(device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"fit: device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; received device={device!r}"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"fit: device={device!r} was asked for but CUDA is not available here")
    return dev


def _first_nonfinite(tensors: list[Tensor | None]) -> int | None:
    """Index of the first tensor holding a NaN or an infinity (``None`` entries skipped).

    Screened with one multi-tensor kernel (the one ``GradScaler`` uses, scaling by exactly 1);
    only when it finds something are the tensors looked at one by one.
    """
    present = [t.detach() for t in tensors if t is not None]
    if not present or _all_finite(present):
        return None
    for i, t in enumerate(tensors):
        if t is not None and not bool(torch.isfinite(t).all()):
            return i
    return None


def _nonfinite_grad(params: list[Tensor]) -> int | None:
    """Index of the first parameter whose gradient holds a NaN or an infinity, else None."""
    return _first_nonfinite([p.grad for p in params])


def _all_finite(tensors: list[Tensor]) -> bool:
    device = tensors[0].device
    found = torch.zeros(1, device=device, dtype=torch.float32)  # the kernel's dtype, whatever
    one = torch.ones(1, device=device, dtype=torch.float32)  # torch's default dtype is
    if all(t.is_floating_point() for t in tensors):
        try:
            torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, one)
            return not bool(found)
        except RuntimeError:  # several devices: one tensor at a time
            pass
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class _Correct:
    """An epoch's count of correct training predictions, reduced in batches of batches.

    Each step's outputs are kept (detached) and their argmax taken once per ``FOLD`` elements,
    not once per step: on a small model the per-step argmax cost ~6 µs of a 0.4 ms step."""

    FOLD = 1 << 20  # elements of kept outputs (4 MiB in float32) before they are reduced

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.outputs: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.kept = 0
        self.count: Tensor | None = None
        #: the count of :meth:`_Faults.check_step`'s native calls (CPU), which add to it in place
        self.counted = torch.zeros((), dtype=torch.int64)

    def add(self, out: Tensor, labels: Tensor) -> None:
        self.outputs.append(out.detach())
        self.labels.append(labels)
        self.kept += out.numel()
        if self.kept >= self.FOLD:
            self._fold()

    def _fold(self) -> None:
        if self.outputs:
            right = (torch.cat(self.outputs).argmax(1) == torch.cat(self.labels)).sum()
            self.count = right if self.count is None else self.count + right
            self.outputs, self.labels, self.kept = [], [], 0

    def total(self) -> Tensor:
        """The count so far, a 0-d tensor on the outputs' device (zero when nothing was seen)."""
        self._fold()
        if self.count is None:
            return self.counted.to(self.device)
        return self.count + self.counted.to(self.count.device)


class _Faults:
    """Checks for NaN / inf in the loss, the gradients and the parameters, and the policy."""

    #: what :meth:`check_step` answers: NaN/inf found (nothing recorded); all finite, and the
    #: step's loss not recorded / recorded / recorded and its right predictions counted
    NONFINITE, UNRECORDED, RECORDED, COUNTED = 0, 1, 2, 3

    def __init__(
        self, policy, history: History, params: list[Tensor], names: dict, per_epoch, record=True
    ):
        self.policy, self.history, self.params, self.names = policy, history, params, names
        #: ``"skip"`` gives up after this many skipped steps in a row: the run has diverged
        self.limit = max(MIN_SKIPS_IN_A_ROW, per_epoch or 0)
        self.warned = self.consecutive = 0
        device = params[0].device if params else torch.device("cpu")
        flag = dict(device=device, dtype=torch.float32)  # what the kernel takes, always
        self.found, self.one = torch.zeros(1, **flag), torch.ones(1, **flag)
        self.step = self.epoch = self.batch = 0
        # the native helpers serve CPU parameters (once they are built)
        self.native = device.type == "cpu" and bool(params)
        self.recording = record

    def at(self, step: int, epoch: int, batch: int) -> None:
        """The step about to be taken (1-based) and where it is: epoch and batch, 1-based."""
        self.step, self.epoch, self.batch = step, epoch, batch

    @property
    def place(self) -> str:
        return f"step {self.step} (epoch {self.epoch}, batch {self.batch})"

    def _name(self, i: int) -> str:
        return self.names.get(id(self.params[i]), f"parameter {i}")

    def check_step(self, loss: Tensor, out, labels, losses: list, tally: _Correct | None) -> int:
        """Whether the loss and every gradient are finite, and what of the step was recorded.

        With the native helper (CPU parameters, one process): one call checks them, appends the
        loss's value to ``losses`` and, given ``tally``, adds the batch's right predictions to
        it (``COUNTED``, or ``RECORDED`` where ``out``/``labels`` are not class scores and
        indices). Otherwise ``UNRECORDED`` (the caller records) or ``NONFINITE``."""
        helpers = native.helpers() if self.native and self.recording else None
        if helpers is not None:
            right = tally.counted if tally is not None else None
            answer = helpers.record(self.params, loss, out, labels, right, losses)
            if answer >= 0:
                return answer
        return self.UNRECORDED if self.all_finite(loss.detach()) else self.NONFINITE

    def all_finite(self, loss: Tensor) -> bool:
        """Whether the loss and every gradient are finite: one native call (CPU), else one
        multi-tensor kernel and one sync."""
        helpers = native.helpers() if self.native else None
        if helpers is not None:
            answer = helpers.all_finite(self.params, loss)
            if answer >= 0:
                return answer == 1
        tensors = [loss]
        tensors += [g for g in map(_GRAD, self.params) if g is not None]
        try:  # (a per-step device comparison of every tensor would cost more than the kernel)
            torch._amp_foreach_non_finite_check_and_unscale_(tensors, self.found, self.one)
        except RuntimeError:  # tensors on several devices (or of a dtype the kernel refuses)
            self.found.zero_()
            return _first_nonfinite(tensors) is None
        if not bool(self.found):
            return True
        self.found.zero_()  # stays zero while everything is finite
        return False

    def loss(self, loss: Tensor) -> bool:
        """A non-finite loss: overflowed parameters, or raise / skip per policy (True)."""
        if bool(torch.isfinite(loss.detach())):
            return False
        self.parameters(self.step - 1)
        self._handle("the loss", f"the loss is {float(loss.detach())} at {self.place}")
        return True

    def gradients(self, loss: Tensor) -> bool:
        """Whether a gradient is non-finite (then raise, or count the step as skipped)."""
        bad = _nonfinite_grad(self.params)
        if bad is None:
            return False
        where = f"the gradient of {self._name(bad)}"
        value = float(loss.detach())
        self._handle(where, f"{where} holds NaN or inf at {self.place} (loss {value:.4g})")
        return True

    def parameters(self, step: int) -> None:
        """Raise :class:`Diverged` (whatever the policy) if a parameter is NaN or infinite."""
        bad = _first_nonfinite(self.params)
        if bad is None:
            return
        name = self._name(bad)
        raise Diverged(
            f"training diverged: parameter {name} holds NaN or inf after step {step} (the update "
            "overflowed); lower the learning rate",
            step,
            f"parameter {name}",
        )

    def _handle(self, where: str, message: str) -> None:
        if self.policy == "raise":
            raise Diverged(
                f"training diverged: {message}; lower the learning rate, or set nan_policy to "
                "'skip' to drop such steps",
                self.step,
                where,
            )
        self.history.skipped_steps += 1
        self.consecutive += 1
        if self.consecutive >= self.limit:
            raise Diverged(
                f"training diverged: {self.consecutive} steps in a row had a NaN or inf loss or "
                f"gradient (nan_policy='skip'), the last: {message}; lower the learning rate",
                self.step,
                where,
            )
        if self.warned < SKIP_WARNINGS:
            self.warned += 1
            more = (
                "; further skipped steps are only counted" if self.warned == SKIP_WARNINGS else ""
            )
            warnings.warn(f"step skipped: {message}{more}", SkippedStepWarning, stacklevel=4)


def _scheduler_step(scheduler) -> None:
    if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step()


def _scheduler_epoch_end(scheduler, row: dict, monitor: str, interval: str) -> None:
    value = row.get(monitor, row.get("train_loss"))
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(value)
        return
    if interval == "epoch":
        scheduler.step()
    if getattr(scheduler, "plateau", None) is not None:
        scheduler.report(value)


def _epoch_row(history, epoch, step, losses, lrs, sizes):
    """Append the epoch's steps to the history; its row: the mean train loss."""
    values = _loss_values(losses)
    first_step = step - len(values) + 1
    for i, (value, lr) in enumerate(zip(values, lrs)):
        history.steps.append({"step": first_step + i, "epoch": epoch + 1, "loss": value, "lr": lr})
    seen = sum(sizes)
    row = {"epoch": epoch + 1, "step": step}
    row["train_loss"] = sum(v * n for v, n in zip(values, sizes)) / seen if seen else math.nan
    return row


def _loss_values(losses: list) -> list[float]:
    """The epoch's step losses as floats: those the native record kept already are; tensors
    (detached losses) are read with one stack, one device sync."""
    tensors = [v for v in losses if isinstance(v, Tensor)]
    if not tensors:
        return losses
    read = iter(torch.stack(tensors).tolist())
    return [next(read) if isinstance(v, Tensor) else v for v in losses]


def _load_latest(folder) -> dict:
    return ckpt.load_latest(folder)[0]


def _restore(payload, model, optimizer, scheduler, shuffle, callbacks):
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(
            f"the checkpoint was written for a different model and cannot be resumed ({first})"
        ) from None
    try:
        optimizer.load_state_dict(payload["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(
            f"the checkpoint's optimizer state does not fit this optimizer ({e})"
        ) from None
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["rng"]["torch"])
    shuffle.set_state(payload["rng"]["shuffle"])
    for cb, st in zip(callbacks, payload.get("callbacks", [])):
        cb.load_state_dict(st)
    return int(payload["epoch"]), int(payload["step"]), History.from_state_dict(payload["history"])

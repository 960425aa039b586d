"""``fit()``: batch, stochastic and mini-batch gradient descent on any ``nn.Module``.

The loop itself is here; its parts each have their module: the batches
(:mod:`~gradwise.train.batches`), the record of the steps (:mod:`~gradwise.train.record`), the
NaN/inf policy (:mod:`~gradwise.train.faults`), the checkpoints (:mod:`~gradwise.train.resume`)
and the process group (:mod:`~gradwise.train.distributed`, through :class:`_Processes`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradwise import checks
from gradwise.errors import ConfigError
from gradwise.train import arguments, distributed
from gradwise.train.batches import Batches, check_targets, check_val_targets
from gradwise.train.callbacks import EMA, Callback, LossScaling, TensorBoard, monitored
from gradwise.train.faults import Faults
from gradwise.train.history import History
from gradwise.train.metrics import (  # noqa: F401 (evaluate's names, from here before)
    LOSSES,
    METRICS,
    confusion_counts,
    confusion_matrix,
    evaluate,
    loss_function,
    macro_f1,
)
from gradwise.train.progress import Progress
from gradwise.train.record import NONFINITE, UNRECORDED, EpochRecord
from gradwise.train.resume import FitCheckpoints

NAN_POLICIES = ("raise", "skip")
#: ``fit(precision=...)``: float32; bfloat16 autocast (no loss scaling needed); float16 autocast
#: with a dynamic loss scale (``GradScaler``; made for CUDA, slow on the CPU)
PRECISIONS = ("32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
    loss: Tensor | None = None  # the last step's loss (detached), for on_step_end
    extra: dict = field(default_factory=dict)
    # the model the epoch's validation numbers are of: an EMA's average, else ``model``
    evaluated: nn.Module | None = None


def fit(
    model: nn.Module,
    train,
    *,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
    optimizer: torch.optim.Optimizer | Callable | None = None,
    scheduler=None,
    epochs: int = 10,
    batch_size: int | str | None = None,
    val=None,
    metrics: Sequence[str] | None = None,
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
    threads: int | None = None,
    clip_grad_norm: float | None = None,
    precision: str = "32",
    ema: float | None = None,
    tensorboard: str | Path | None = None,
    accumulate: int = 1,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
) -> History:
    """Train ``model`` on ``train`` and return its :class:`History`.

    ``train`` and ``val`` are ``(x, y)`` pairs of tensors (batched by slicing, reshuffled every
    epoch from a generator seeded by ``seed``) or any iterable of ``(x, y)`` batches such as a
    ``DataLoader``. The spec's three kinds of gradient descent:

    * ``batch_size="full"``: batch gradient descent, one step per epoch on the whole set;
    * ``batch_size=1``: stochastic gradient descent, one sample per step;
    * ``batch_size=n``: mini-batch gradient descent (default: 32; a loader batches itself).

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
    infinite weights are never written to a checkpoint (:mod:`gradwise.train.faults`).
    ``penalty()`` (e.g. an L1/L2 term from :mod:`gradwise.regularization`) is added to the
    training loss of every step; ``extra_state`` is stored in each checkpoint. ``metrics``:
    names among ``accuracy`` and ``f1`` (one name alone too); by default accuracy, and none
    with ``loss="mse"``. Arguments and in-memory data are checked before the first step
    (:mod:`gradwise.train.arguments`; validation targets against the model's outputs).

    Started by a launcher on several processes (``torchrun``, ``gradwise train --nproc N``:
    ``WORLD_SIZE > 1`` in the environment), ``fit`` joins the process group and trains with
    ``DistributedDataParallel`` (:mod:`gradwise.train.distributed`): ``batch_size`` is the global
    batch, each rank trains on its part of every batch of the shared shuffled order, and the
    result equals the single-process run's to float rounding (``loss`` must be a mean over the
    batch). Only rank 0 shows progress and writes checkpoints. A user's loader is iterated as
    it is on each rank: shard it yourself (``DistributedSampler``), with the same number of
    batches on every rank.

    ``threads``: PyTorch's CPU threads while fitting. By default (None) one for a model under
    :data:`SMALL_MODEL_PARAMS` parameters (its operations are too small to gain from threads,
    and lose badly when another process is busy on a core), unless ``OMP_NUM_THREADS`` is set;
    PyTorch's own choice for larger ones. The count from before is restored when ``fit``
    returns. ``gradwise train`` uses the same rule.

    ``clip_grad_norm``: before each step the gradients are scaled down so that their global
    L2 norm is at most this (``torch.nn.utils.clip_grad_norm_``). ``precision="bf16"``: the
    forward pass runs under ``torch.autocast`` in bfloat16 (the loss, the backward pass's
    accumulation and the weights stay float32; validation runs in float32). ``"fp16"``: the
    same in float16, with a dynamic loss scale (``torch.amp.GradScaler``: a step whose scaled
    gradients overflow is skipped and the scale halved; the scale is checkpointed). ``ema``:
    the decay of an exponential moving average of the weights
    (:class:`~gradwise.train.callbacks.EMA`), which validation evaluates and which the model
    ends with. ``tensorboard``: a folder to log
    to (:class:`~gradwise.train.callbacks.TensorBoard`). ``accumulate=k``: gradient
    accumulation, one optimizer step per ``k`` batches, each batch's loss weighted by its share
    of the group's rows (the last group of an epoch may hold fewer batches, and its last batch
    fewer rows), so that with a mean loss a step equals one on the group's rows as one batch
    (a loader's batches, whose sizes are not known ahead, weigh one over the group's batches);
    steps (and a scheduler's steps, the
    recorded losses and ``state.step``) count optimizer steps. An optimizer with ``train()``
    and ``eval()`` methods (Schedule-Free's) is put in train mode before each epoch's steps
    and in eval mode at its end, so that validation, callbacks, checkpoints and the model
    ``fit`` returns see its averaged weights. ``augment``: ``augment(x, generator) -> x'``
    applied to each training batch's inputs (e.g. :class:`~gradwise.train.augment.RandomShift`),
    with the generator that shuffles them, so that a resumed run draws what an uninterrupted
    one draws; validation and test data are never augmented. Callbacks (``callbacks``) are
    called at the start, after every step, at each epoch's end and at the end
    (:class:`~gradwise.train.callbacks.Callback`).
    """
    checks.integer("fit", "epochs", epochs, low=1)
    if threads is not None:
        checks.integer("fit", "threads", threads, low=1)
    checks.integer("fit", "checkpoint_every", checkpoint_every, low=1)
    checks.choice("fit", "nan_policy", nan_policy, NAN_POLICIES)
    checks.choice("fit", "scheduler_interval", scheduler_interval, ("step", "epoch"))
    checks.choice("fit", "precision", precision, PRECISIONS)
    checks.integer("fit", "accumulate", accumulate, low=1)
    if clip_grad_norm is not None:
        checks.positive("fit", "clip_grad_norm", clip_grad_norm)
    arguments.check_objects(model, optimizer, scheduler, penalty, checkpoint_dir)
    loss_fn = loss_function(loss)
    metrics = arguments.metrics_for(loss, metrics)
    for name in metrics:
        checks.choice("fit", "metrics", name, (*METRICS, "f1"))
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
    arguments.check_optimizer(model, optimizer, scheduler)
    callbacks = list(callbacks)
    if ema is not None:  # first: its average is in the model before the others' on_fit_end
        callbacks.insert(0, EMA(ema))
    if precision == "fp16":
        callbacks.append(LossScaling(dev.type))
    if tensorboard is not None and (ctx is None or ctx.is_main):
        callbacks.append(TensorBoard(tensorboard))
    if augment is not None and not callable(augment):
        checks.refuse("fit", "augment", "None or a callable augment(x, generator) -> x", augment)
    data = Batches(train, 32 if batch_size is None else batch_size, dev, "train", augment)
    arguments.check_batch_size(data, batch_size)
    val_data = Batches(val, "full", dev, "val") if val is not None else None
    arguments.check_inputs(model, data, val_data)
    if ctx is not None and data.loader is None:
        distributed.check_global_batch("fit", data.batch_size, ctx.world_size, batch_size)

    history = History()
    shuffle = torch.Generator().manual_seed(seed)
    checkpoints = FitCheckpoints(checkpoint_dir, checkpoint_every, ctx, extra_state)
    start_epoch, step = 0, 0
    if resume:
        start_epoch, step, history = checkpoints.resume(
            model, optimizer, scheduler, shuffle, callbacks
        )
    else:
        torch.manual_seed(seed)
    state = TrainState(model, optimizer, scheduler, history, start_epoch, step)
    for cb in callbacks:
        cb.on_fit_start(state)

    params = [p for group in optimizer.param_groups for p in group["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    faults = Faults(nan_policy, history, params, names, data.steps_per_epoch)
    loop = _Loop(
        state,
        data,
        val_data,
        loss_fn,
        metrics,
        shuffle,
        callbacks,
        faults,
        checkpoints,
        penalty=penalty,
        monitor=monitor,
        scheduler_interval=scheduler_interval,
        clip_grad_norm=clip_grad_norm,
        autocast=(
            torch.autocast(dev.type, dtype=AUTOCAST_DTYPES[precision])
            if precision in AUTOCAST_DTYPES
            else None
        ),
        accumulate=accumulate,
    )
    processes = _Processes(ctx, model, optimizer, dev)
    bar = Progress(
        enabled=progress and processes.main, epochs=epochs, steps_per_epoch=loop.steps_per_epoch
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(training_threads(model, threads) or previous_threads)
    try:
        with bar, processes.dropout:
            loop.run(start_epoch, epochs, processes, bar)
        if not loop.ended:  # no epoch left to run (a finished run resumed)
            loop.end(state)
    except KeyboardInterrupt:
        checkpoints.interrupted()
        raise
    except RuntimeError as e:
        if ctx is not None and distributed.is_comm_failure(e):
            raise distributed.lost_contact(ctx, e, checkpoint_dir) from None
        raise
    finally:
        torch.set_num_threads(previous_threads)
    return history


#: below this many parameters a model's operations are too small to gain from intra-op threads
#: (and lose badly when another process is busy on a core): by default such a model trains on one
SMALL_MODEL_PARAMS = 1_000_000


def training_threads(model: nn.Module, threads: int | None) -> int | None:
    """The torch thread count to train ``model`` with: ``threads`` if given; else one for a
    model under :data:`SMALL_MODEL_PARAMS` parameters unless ``OMP_NUM_THREADS`` is set; else
    None (PyTorch's own choice)."""
    if threads is not None:
        return threads
    if "OMP_NUM_THREADS" in os.environ:
        return None
    return 1 if sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS else None


class _Processes:
    """fit()'s side of the process group: in a distributed run (``ctx``) the model's DDP
    wrapper, this rank's share of each batch and its loss weight, the global batch's dropout
    masks, the epochs' sums over the ranks; in one process, the model as it is."""

    def __init__(self, ctx, model: nn.Module, optimizer, device: torch.device) -> None:
        self.ctx, self.model, self.device = ctx, model, device
        self.forward = model
        self.shard: distributed.Shard | None = None
        self.dropout: Any = contextlib.nullcontext()
        self.fault_hook = None
        self.main = ctx is None or ctx.is_main
        if ctx is not None:
            distributed.check_optimizer(optimizer)
            self.forward, self.shard = distributed.wrap(model, ctx), distributed.Shard(ctx)
            self.dropout = distributed.GlobalDropout(model, self.shard)  # the global batch's
            self.fault_hook = distributed.fault_hook(ctx)

    def reduce(self):
        """What sums an epoch's record over the ranks (None in one process)."""
        if self.ctx is None:
            return None
        return lambda losses, sizes, right: distributed.reduce_epoch(
            losses, sizes, right, self.device
        )


class _Loop:
    """The epochs of one ``fit()``: the steps of each, then its row, scheduler, callbacks,
    parameter check and checkpoint."""

    def __init__(
        self,
        state: TrainState,
        data: Batches,
        val_data: Batches | None,
        loss_fn,
        metrics,
        shuffle: torch.Generator,
        callbacks: list,
        faults: Faults,
        checkpoints: FitCheckpoints,
        *,
        penalty,
        monitor: str,
        scheduler_interval: str,
        clip_grad_norm: float | None,
        autocast,
        accumulate: int = 1,
    ) -> None:
        self.state, self.data, self.val_data = state, data, val_data
        self.loss_fn, self.metrics, self.shuffle = loss_fn, metrics, shuffle
        self.callbacks, self.faults, self.checkpoints = callbacks, faults, checkpoints
        self.penalty, self.monitor, self.interval = penalty, monitor, scheduler_interval
        self.ended = False  # whether on_fit_end was called (see end)
        self.clip_grad_norm, self.autocast, self.accumulate = clip_grad_norm, autocast, accumulate
        self.scaler = next((cb.scaler for cb in callbacks if isinstance(cb, LossScaling)), None)
        batches = data.steps_per_epoch
        #: optimizer steps per epoch (None for a loader without a length)
        self.steps_per_epoch = None if batches is None else math.ceil(batches / accumulate)
        #: the callbacks that do something after a step (the others cost nothing per step)
        self.step_callbacks = [
            cb for cb in callbacks if type(cb).on_step_end is not Callback.on_step_end
        ]
        self.clock_base = state.history.wall_time
        self.started = time.perf_counter()
        #: the built-in loss whose targets the first batch checks (check_targets), then None
        self.unchecked = next((k for k, f in LOSSES.items() if f is loss_fn), None)

    def run(self, start_epoch: int, epochs: int, processes: _Processes, bar: Progress) -> None:
        state = self.state
        for epoch in range(start_epoch, epochs):
            state.epoch = epoch
            if processes.fault_hook is not None:
                processes.fault_hook(epoch)
            if self.accumulate > 1 or self.scaler is not None:
                record = self._train_epoch_general(epoch, processes, bar)
            else:
                record = self._train_epoch(epoch, processes, bar)
            self._end_epoch(epoch, record, processes, bar, last=epoch + 1 == epochs)
            if state.stop is not None:
                state.history.stopped = state.stop
                break

    def _train_epoch(self, epoch: int, processes: _Processes, bar: Progress) -> EpochRecord:
        """One epoch's steps (a step with NaN/inf is dropped or raises, per the policy)."""
        state, faults = self.state, self.faults
        model, optimizer, scheduler = state.model, state.optimizer, state.scheduler
        step_scheduler = scheduler is not None and self.interval == "step"
        model.train()
        optimizer_mode(optimizer, "train")  # Schedule-Free: the parameters at y
        clip, step_callbacks = self.clip_grad_norm, self.step_callbacks
        record = EpochRecord(
            faults.params,
            processes.device,
            "accuracy" in self.metrics,
            native=faults.native and processes.ctx is None,
        )
        bar.start_epoch(epoch)
        for batch, (xb, yb) in enumerate(self.data.epoch(self.shuffle, processes.shard), 1):
            optimizer.zero_grad(set_to_none=False)
            out, batch_loss = self._forward_loss(xb, yb, processes)
            batch_loss.backward()
            # the NaN/inf guard of the loss and every gradient; on the CPU the native record
            # also records the loss (and counts the right predictions) in the same call
            kept = record.check(batch_loss, out, yb)
            if kept is None:
                kept = UNRECORDED if faults.all_finite(batch_loss.detach()) else NONFINITE
            if kept == NONFINITE:
                if faults.at_fault(batch_loss, state.step + 1, epoch + 1, batch):
                    continue
                kept = UNRECORDED
            if clip is not None:
                nn.utils.clip_grad_norm_(faults.params, clip)
            optimizer.step()
            state.step += 1
            faults.stepped()
            if step_callbacks:
                state.loss = batch_loss.detach()
                for cb in step_callbacks:
                    cb.on_step_end(state)
            lr = optimizer.param_groups[0]["lr"]
            if step_scheduler:
                _scheduler_step(scheduler)
            record.add(kept, batch_loss, out, yb, lr)
            if bar.enabled:
                bar.advance(batch_loss, lr)
        return record

    def _forward_loss(self, xb: Tensor, yb: Tensor, processes: _Processes):
        """The batch's outputs (float32) and loss, with the penalty; bfloat16 autocast on
        the forward pass where asked. DDP: the loss weighted so that the ranks' gradient
        average is the batch's."""
        if self.autocast is None:
            out = processes.forward(xb)
        else:
            with self.autocast:
                out = processes.forward(xb)
            out = out.float()
        if self.unchecked is not None:
            check_targets(out, yb, self.unchecked, self.data)
            if self.val_data is not None:  # now, not after an epoch of training
                check_val_targets(out, self.val_data, self.unchecked)
            self.unchecked = None
        shard = processes.shard
        loss = self.loss_fn(out, yb) if shard is None else shard.loss(self.loss_fn, out, yb)
        if self.penalty is not None:
            loss = loss + self.penalty()
        return out, loss

    def _train_epoch_general(self, epoch: int, processes: _Processes, bar: Progress) -> EpochRecord:
        """One epoch with gradient accumulation (see ``fit(accumulate=)``) and/or a loss scale
        (``precision="fp16"``): the gradients of a group of batches add up, each batch's loss
        divided by the group's size, before one step. A NaN/inf in any batch of a group drops
        the whole group (``"skip"``) or raises; with a loss scale, only the loss is checked
        (the scaler skips steps whose scaled gradients overflow)."""
        state, faults, k, scaler = self.state, self.faults, self.accumulate, self.scaler
        model, optimizer, scheduler = state.model, state.optimizer, state.scheduler
        step_scheduler = scheduler is not None and self.interval == "step"
        model.train()
        optimizer_mode(optimizer, "train")  # Schedule-Free: the parameters at y
        record = EpochRecord(
            faults.params, processes.device, "accuracy" in self.metrics, native=False
        )
        batches = self.data.steps_per_epoch
        bar.start_epoch(epoch)
        group = size = rows = 0
        total, poisoned = None, False
        for batch, (xb, yb) in enumerate(self.data.epoch(self.shuffle, processes.shard), 1):
            if (batch - 1) % k == 0:  # a new group
                optimizer.zero_grad(set_to_none=False)
                size = k if batches is None else min(k, batches - batch + 1)
                group, rows, total, poisoned = 0, 0, None, False
                group_rows = self._group_rows(batch, size)
            out, batch_loss = self._forward_loss(xb, yb, processes)
            # each batch weighs its rows' share of the group's (k, for k batches alike: bitwise
            # the division by k; a loader's batches, not known ahead, weigh 1/k each)
            share_of = size if group_rows is None else group_rows / self.data.rows(batch)
            part = batch_loss / share_of
            (part if scaler is None else scaler.scale(part)).backward()
            group += 1
            finite = (
                bool(torch.isfinite(batch_loss.detach()))
                if scaler is not None
                else faults.all_finite(batch_loss.detach())
            )
            if not poisoned and not finite:
                poisoned = faults.at_fault(
                    batch_loss, state.step + 1, epoch + 1, batch, gradients=scaler is None
                )
            share = batch_loss.detach() / share_of
            total = share if total is None else total + share
            rows += yb.shape[0]
            if record.accuracy:
                record.correct.add(out, yb)
            if group < size and batch != batches:
                continue
            if poisoned:
                continue
            if scaler is not None:
                scaler.unscale_(optimizer)  # the true gradients, for clipping and the step
            if self.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(faults.params, self.clip_grad_norm)
            if scaler is None:
                optimizer.step()
            else:  # skipped when the scaled gradients overflowed; the scale adapts
                scaler.step(optimizer)
                scaler.update()
            state.step += 1
            faults.stepped()
            lr = optimizer.param_groups[0]["lr"]
            if step_scheduler:
                _scheduler_step(scheduler)
            record.add_step(total, rows, lr)
            if self.step_callbacks:
                state.loss = total
                for cb in self.step_callbacks:
                    cb.on_step_end(state)
            if bar.enabled:
                bar.advance(total, lr)
        return record

    def _group_rows(self, first: int, size: int) -> int | None:
        """The rows of the ``size`` batches from the ``first``-th (None for a loader's)."""
        rows = [self.data.rows(b) for b in range(first, first + size)]
        return None if None in rows else sum(rows)

    def _end_epoch(
        self, epoch: int, record: EpochRecord, processes: _Processes, bar: Progress, last: bool
    ) -> None:
        state = self.state
        history, optimizer, scheduler = state.history, state.optimizer, state.scheduler
        # Schedule-Free: the parameters at x, the average, for validation, callbacks, the
        # checkpoint and whatever follows fit() (export, predict)
        optimizer_mode(optimizer, "eval")
        row = record.row(history, epoch, state.step, processes.reduce())
        state.evaluated = next(
            (m for cb in self.callbacks if (m := getattr(cb, "eval_model", None)) is not None),
            state.model,
        )  # an EMA's average, when there is one
        if self.val_data is not None:
            numbers = evaluate(state.evaluated, self.val_data, self.loss_fn, self.metrics, "val_")
            row.update(numbers)
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["elapsed"] = self.clock_base + time.perf_counter() - self.started
        history.epochs.append(row)
        if scheduler is not None:
            _scheduler_epoch_end(scheduler, state, self.monitor, self.interval)
        for cb in self.callbacks:
            cb.on_epoch_end(state)
        bar.end_epoch(row)
        self.faults.parameters(state.step)  # never checkpoint NaN/inf weights
        self.faults.loss_growth(state.step)  # nor a diverged run's
        last = last or state.stop is not None
        if last:  # before the last checkpoint: what on_fit_end puts in the model is saved
            self.end(state)
        self.checkpoints.end_epoch(state, self.shuffle, self.callbacks, last)

    def end(self, state: TrainState) -> None:
        """Every callback's ``on_fit_end``, once."""
        self.ended = True
        for cb in self.callbacks:
            cb.on_fit_end(state)


def optimizer_mode(optimizer, mode: str) -> None:
    """``optimizer.train()`` or ``optimizer.eval()`` (``mode``) where the optimizer has them:
    a Schedule-Free optimizer's parameters hold the point where gradients are taken in train
    mode and the average that is evaluated in eval mode. Nothing for the others."""
    switch = getattr(optimizer, mode, None)
    if callable(switch):
        switch()


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


def _scheduler_step(scheduler) -> None:
    if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step()


def _scheduler_epoch_end(scheduler, state: TrainState, monitor: str, interval: str) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(_monitored(state, monitor))
        return
    if interval == "epoch":
        scheduler.step()
    if getattr(scheduler, "plateau", None) is not None:
        scheduler.report(_monitored(state, monitor))


def _monitored(state: TrainState, monitor: str) -> float:
    """What a plateau is fed: ``monitor``'s value (the default ``val_loss`` without validation
    data: the training loss); a name the epoch's row lacks is refused, not replaced."""
    if monitor == "val_loss" and "val_loss" not in state.history.epochs[-1]:
        return state.history.epochs[-1]["train_loss"]
    return monitored("fit", monitor, state)

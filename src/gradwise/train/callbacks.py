"""Callbacks: small objects the fit loop calls at the start, after each optimizer step, at the
end of each epoch and at the end.

A callback sees the :class:`~gradwise.train.loop.TrainState` (model, optimizer, scheduler, history,
epoch, step, ...) and may set ``state.stop`` with a reason. Callbacks with memory implement
``state_dict()``/``load_state_dict()`` so a resumed run continues them exactly.

Built in: :class:`EarlyStopping`, :class:`BestCheckpoint` (the best epoch's weights, written
atomically), :class:`EMA` (an exponential moving average of the weights, which validation and
the end of the fit use) and :class:`TensorBoard` (each step's loss and lr and each epoch's row).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from gradwise import checks
from gradwise.errors import ConfigError
from gradwise.train import checkpoint


class Callback:
    """Base class: override the hooks you need."""

    def on_fit_start(self, state) -> None:
        """Called once before the first epoch (also when resuming)."""

    def on_step_end(self, state) -> None:
        """Called after each optimizer step (``state.step`` counts them; ``state.loss`` is the
        step's loss, a detached tensor: reading it as a number waits for the device)."""

    def on_epoch_end(self, state) -> None:
        """Called after each epoch, once its metrics are in ``state.history.epochs[-1]``."""

    def on_fit_end(self, state) -> None:
        """Called once when training ends, after the last epoch or a stop (``state.stop`` says
        why; None after the last epoch), before the last checkpoint is written: what it leaves
        in the model is saved. Not called when ``fit`` raises."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def monitored(owner: str, monitor: str, state) -> float:
    """The value of ``monitor`` in the epoch's row; refused, with the names there are, where it
    has none (a misspelt name, or ``val_loss`` without validation data)."""
    row = state.history.epochs[-1]
    value = row.get(monitor)
    if value is None:
        names = ", ".join(k for k, v in row.items() if k not in ("epoch", "step") and v is not None)
        validated = any(k.startswith("val_") for k in row)
        hint = "; give fit() val= data" if monitor.startswith("val_") and not validated else ""
        raise ConfigError(
            f"{owner}: monitor={monitor!r} is not among the epoch's numbers ({names}){hint}"
        )
    return value


def _weights(state) -> dict:
    """A copy of the weights the epoch's numbers are of: an EMA's average when there is one
    (validation evaluates it, and it is what the fit leaves in the model), else the model's."""
    model = state.evaluated if state.evaluated is not None else state.model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best=True`` the weights of the best epoch are put back at the end (after a
    stop, or when the epochs run out), before the last checkpoint; with ``fit(ema=...)``, the
    average of that epoch, which its numbers are of.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 10,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best: bool = True,
    ) -> None:
        self.monitor = monitor
        self.patience = checks.integer("EarlyStopping", "patience", patience, low=1)
        self.min_delta = checks.at_least("EarlyStopping", "min_delta", min_delta, 0.0)
        mode = checks.choice("EarlyStopping", "mode", mode, ("auto", "min", "max"))
        self.mode = mode if mode != "auto" else ("min" if "loss" in monitor else "max")
        self.restore_best = checks.flag("EarlyStopping", "restore_best", restore_best)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = -1
        self.wait = 0
        self.best_weights = None

    def on_epoch_end(self, state) -> None:
        value = monitored("EarlyStopping", self.monitor, state)
        better = (
            value < self.best - self.min_delta
            if self.mode == "min"
            else value > self.best + self.min_delta
        )
        if better:
            self.best, self.best_epoch, self.wait = value, state.epoch, 0
            if self.restore_best:
                self.best_weights = _weights(state)
            return
        self.wait += 1
        if self.wait >= self.patience:
            state.stop = (
                f"early stopping: {self.monitor} did not improve for {self.patience} epochs "
                f"(best {self.best:.4g} at epoch {self.best_epoch + 1})"
            )

    def on_fit_end(self, state) -> None:
        if self.restore_best and self.best_weights is not None:
            state.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.wait = state["wait"]
        self.best_weights = state["best_weights"]


def _better(mode: str, value: float, best: float, min_delta: float = 0.0) -> bool:
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _mode(owner: str, monitor: str, mode: str) -> str:
    mode = checks.choice(owner, "mode", mode, ("auto", "min", "max"))
    return mode if mode != "auto" else ("min" if "loss" in monitor else "max")


class BestCheckpoint(Callback):
    """Keep the weights of the best epoch so far by ``monitor`` in ``path``, written atomically
    (a crash mid-write leaves the previous best): ``{"model": state_dict, "epoch": n,
    monitor: value}``, loadable with ``torch.load(path, weights_only=True)``. With
    ``fit(ema=...)``, the average's weights, which the epoch's numbers are of."""

    def __init__(self, path: str | Path, monitor: str = "val_loss", mode: str = "auto") -> None:
        self.path = Path(path)
        self.monitor = monitor
        self.mode = _mode("BestCheckpoint", monitor, mode)
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, state) -> None:
        value = monitored("BestCheckpoint", self.monitor, state)
        if not _better(self.mode, value, self.best):
            return
        self.best = value
        weights = {k: v.cpu() for k, v in _weights(state).items()}
        checkpoint.atomic_save(
            {"model": weights, "epoch": state.epoch + 1, self.monitor: value}, self.path
        )

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]


class EMA(Callback):
    """An exponential moving average of the weights (and buffers), updated after every step::

        θ_ema ← decay·θ_ema + (1 − decay)·θ

    (``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``; the first step
    copies θ). Validation after each epoch evaluates the average, and at the end of the fit the
    model's weights become the average, before the last checkpoint, so what is tested, saved
    and exported is the average; the checkpoint keeps the model's own weights too, which a
    resumed run trains on from.
    """

    def __init__(self, decay: float = 0.999) -> None:
        self.decay = checks.in_range("EMA", "decay", decay, 0.0, 1.0)
        self.average: nn.Module | None = None
        self._pending: dict | None = None  # a checkpoint's average, until there is a model
        # the model's own weights when the fit put the average in their place (on_fit_end):
        # a resumed run trains on from them, as an uninterrupted one would
        self.trained: dict | None = None

    def on_fit_start(self, state) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if self.average is None:
            self.average = AveragedModel(
                state.model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True
            )
        if self._pending is not None:
            self.average.load_state_dict(self._pending)
            self._pending = None
        if self.trained is not None:  # the checkpoint's model is the average: train on from
            state.model.load_state_dict(self.trained)  # the weights that made it
            self.trained = None

    def on_step_end(self, state) -> None:
        self.average.update_parameters(state.model)

    @property
    def eval_model(self) -> nn.Module | None:
        """The model that validation evaluates: the average (once there is one)."""
        if self.average is None or int(self.average.n_averaged) == 0:
            return None
        return self.average.module

    def on_fit_end(self, state) -> None:
        if self.eval_model is not None:
            self.trained = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
            state.model.load_state_dict(self.average.module.state_dict())

    def state_dict(self) -> dict:
        average = None if self.average is None else self.average.state_dict()
        return {"average": average, "trained": self.trained}

    def load_state_dict(self, state: dict) -> None:
        self._pending = state["average"]  # applied once on_fit_start has built the average
        self.trained = state.get("trained")  # None in checkpoints of older releases


class LossScaling(Callback):
    """float16 training's dynamic loss scale (``torch.amp.GradScaler``), kept in checkpoints so
    that a resumed run goes on with the same scale. ``fit(precision="fp16")`` adds it."""

    def __init__(self, device: str) -> None:
        self.scaler = torch.amp.GradScaler(device)

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scaler.load_state_dict(state)


class TensorBoard(Callback):
    """Log to ``log_dir`` for TensorBoard (``tensorboard --logdir LOG_DIR``), through
    ``torch.utils.tensorboard.SummaryWriter``: each step's loss and lr (``train/loss``,
    ``train/lr``, at step numbers) and every number of each epoch's row (``epoch/...``, at
    epoch numbers). Needs the ``tensorboard`` package (``pip install 'gradwise[tensorboard]'``).
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(
                "TensorBoard logging needs the tensorboard package: "
                "pip install 'gradwise[tensorboard]' (or pip install tensorboard)"
            ) from None
        self.log_dir = Path(log_dir)
        self._writer_class = SummaryWriter
        self.writer = None
        self.logged_steps = 0

    def on_fit_start(self, state) -> None:
        self.writer = self._writer_class(log_dir=str(self.log_dir))

    def on_epoch_end(self, state) -> None:
        steps = state.history.steps
        for row in steps[self.logged_steps :]:
            self.writer.add_scalar("train/loss", row["loss"], row["step"])
            self.writer.add_scalar("train/lr", row["lr"], row["step"])
        self.logged_steps = len(steps)
        row = state.history.epochs[-1]
        for key, value in row.items():
            if key not in ("epoch", "step") and isinstance(value, int | float):
                self.writer.add_scalar(f"epoch/{key}", value, row["epoch"])
        self.writer.flush()

    def on_fit_end(self, state) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def state_dict(self) -> dict:
        return {"logged_steps": self.logged_steps}

    def load_state_dict(self, state: dict) -> None:
        self.logged_steps = state["logged_steps"]

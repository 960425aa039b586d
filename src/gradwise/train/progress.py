"""The trainer's progress bar (rich): epoch, step, loss, metric, learning rate and ETA.

Quiet when disabled or when the output is not a terminal. Redraws at most ~10 times a second, so
it costs nothing per step beyond a clock read.
"""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

REFRESH_SECONDS = 0.1


class Progress:
    def __init__(self, *, enabled: bool, epochs: int, steps_per_epoch: int | None) -> None:
        console = Console(stderr=True)
        self.enabled = enabled and console.is_terminal
        self.epochs = epochs
        self.total = steps_per_epoch * epochs if steps_per_epoch else None
        self._last = 0.0
        self._pending = 0
        self._fields = {"epoch": "", "loss": "", "metric": "", "lr": ""}
        if self.enabled:
            self._bar = RichProgress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[metric]}"),
                TextColumn("lr {task.fields[lr]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._task = None

    def __enter__(self) -> Progress:
        if self.enabled:
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, **self._fields)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._flush()
            self._bar.__exit__(*exc)

    def start_epoch(self, epoch: int) -> None:
        self._fields["epoch"] = f"{epoch + 1}/{self.epochs}"

    def advance(self, loss, lr: float) -> None:
        if not self.enabled:
            return
        self._pending += 1
        now = time.perf_counter()
        if now - self._last >= REFRESH_SECONDS:
            value = loss.detach() if isinstance(loss, torch.Tensor) else loss  # no autograd warning
            self._fields["loss"] = f"{float(value):.4f}"
            self._fields["lr"] = f"{lr:.2e}"
            self._flush()
            self._last = now

    def end_epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        acc = row.get("val_accuracy", row.get("train_accuracy"))
        which = "val" if "val_accuracy" in row else "train"
        self._fields["metric"] = f"{which} acc {acc:.3f}" if acc is not None else ""
        self._fields["loss"] = f"{row['train_loss']:.4f}"
        self._flush()

    def _flush(self) -> None:
        self._bar.update(self._task, advance=self._pending, **self._fields)
        self._pending = 0

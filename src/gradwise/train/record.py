"""``fit()``'s record of an epoch's steps: the loss and learning rate of each step, the batch
sizes and the right predictions, and the epoch's row of the history.

On the CPU in one process, the native record (:mod:`gradwise.train.native`) checks a step for
NaN/inf, records its loss and counts its right predictions in one call, which saves a small
model several Python calls per step; everywhere else the step is checked and recorded here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradwise.train import native
from gradwise.train.history import History

#: what a step's check answers (the native record's codes): NaN/inf found (nothing recorded);
#: all finite, and the step's loss not recorded / recorded / recorded and its right predictions
#: counted
NONFINITE, UNRECORDED, RECORDED, COUNTED = 0, 1, 2, 3


def right_predictions(out: Tensor, labels: Tensor) -> Tensor:
    """For each row of class scores ``out``, whether its largest score is at its label."""
    return out.argmax(1) == labels


class Correct:
    """An epoch's count of correct training predictions, reduced in batches of batches.

    Each step's outputs are kept (detached) and their argmax taken once per ``FOLD`` elements,
    not once per step, which on a small model is a noticeable part of a step."""

    FOLD = 1 << 20  # elements of kept outputs (4 MiB in float32) before they are reduced

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.outputs: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.kept = 0
        self.count: Tensor | None = None
        #: the count of the native record's calls (CPU), which add to it in place
        self.counted = torch.zeros((), dtype=torch.int64)

    def add(self, out: Tensor, labels: Tensor) -> None:
        self.outputs.append(out.detach())
        self.labels.append(labels)
        self.kept += out.numel()
        if self.kept >= self.FOLD:
            self._fold()

    def _fold(self) -> None:
        if self.outputs:
            right = right_predictions(torch.cat(self.outputs), torch.cat(self.labels)).sum()
            self.count = right if self.count is None else self.count + right
            self.outputs, self.labels, self.kept = [], [], 0

    def total(self) -> Tensor:
        """The count so far, a 0-d tensor on the outputs' device (zero when nothing was seen)."""
        self._fold()
        if self.count is None:
            return self.counted.to(self.device)
        return self.count + self.counted.to(self.count.device)


class EpochRecord:
    """The steps of one epoch as ``fit()`` takes them: :meth:`check` a step, :meth:`add` it once
    it is taken, :meth:`row` at the end of the epoch.

    ``native``: whether the native record may serve (CPU parameters, one process);
    ``accuracy``: whether right predictions are counted."""

    def __init__(
        self, params: list[Tensor], device: torch.device, accuracy: bool, native: bool
    ) -> None:
        self.params, self.accuracy, self.native = params, accuracy, native
        self.correct = Correct(device)
        self.sizes: list[int] = []
        self.losses: list[Tensor | float] = []  # floats from the native record
        self.lrs: list[float] = []

    def check(self, loss: Tensor, out, labels) -> int | None:
        """The native record of a step: :data:`NONFINITE`, or the step checked finite and its
        loss recorded (:data:`RECORDED`; :data:`COUNTED` with its right predictions, where
        ``out``/``labels`` are class scores and indices). None where the native record cannot
        tell (the caller checks, and :meth:`add` records)."""
        helpers = native.helpers() if self.native else None
        if helpers is None:
            return None
        right = self.correct.counted if self.accuracy else None
        answer = helpers.record(self.params, loss, out, labels, right, self.losses)
        return answer if answer >= 0 else None

    def add(self, kept: int, loss: Tensor, out: Tensor, labels: Tensor, lr: float) -> None:
        """A step taken, with what its check (``kept``) recorded already."""
        if kept == UNRECORDED:
            self.losses.append(loss.detach())
        self.lrs.append(lr)
        self.sizes.append(labels.shape[0])  # (``len`` of a tensor runs Python code)
        if self.accuracy and kept != COUNTED:
            self.correct.add(out, labels)

    def add_step(self, loss: Tensor, rows: int, lr: float) -> None:
        """A step taken on ``rows`` rows whose loss is ``loss`` (detached), with its right
        predictions counted already (gradient accumulation: several batches a step)."""
        self.losses.append(loss)
        self.lrs.append(lr)
        self.sizes.append(rows)

    def row(self, history: History, epoch: int, step: int, reduce=None) -> dict:
        """Append the epoch's steps to ``history``; the epoch's row: mean train loss and, when
        counted, train accuracy. ``reduce(losses, sizes, right)`` sums them over the processes
        of a distributed run, so that every rank writes the same row."""
        if reduce is None:
            row = epoch_row(history, epoch, step, self.losses, self.lrs, self.sizes)
            if self.accuracy and self.sizes:
                row["train_accuracy"] = float(self.correct.total()) / sum(self.sizes)
            return row
        right = self.correct.total() if self.accuracy else None
        losses, sizes, right = reduce(self.losses, self.sizes, right)
        row = epoch_row(history, epoch, step, losses, self.lrs, sizes)
        if right is not None and sum(sizes):
            row["train_accuracy"] = right / sum(sizes)
        return row


def epoch_row(history: History, epoch: int, step: int, losses, lrs, sizes) -> dict:
    """Append the epoch's steps to the history; its row: the mean train loss."""
    values = loss_values(losses)
    first_step = step - len(values) + 1
    for i, (value, lr) in enumerate(zip(values, lrs)):
        history.steps.append({"step": first_step + i, "epoch": epoch + 1, "loss": value, "lr": lr})
    seen = sum(sizes)
    row = {"epoch": epoch + 1, "step": step}
    row["train_loss"] = sum(v * n for v, n in zip(values, sizes)) / seen if seen else math.nan
    return row


def loss_values(losses: list) -> list[float]:
    """The epoch's step losses as floats: those the native record kept already are; tensors
    (detached losses) are read with one stack, one device sync."""
    tensors = [v for v in losses if isinstance(v, Tensor)]
    if not tensors:
        return losses
    read = iter(torch.stack(tensors).tolist())
    return [next(read) if isinstance(v, Tensor) else v for v in losses]

"""``fit()``'s checkpoints: what one holds, when one is written, and resuming from one.

A checkpoint holds the model, optimizer, scheduler, random states, history, callbacks and the
caller's ``extra_state``; it is written atomically (:mod:`gradwise.train.checkpoint`) every
``checkpoint_every`` epochs and at the end. Between two written checkpoints the last finished
epoch's is kept in memory, so that Ctrl-C can still write it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from gradwise.errors import CheckpointError, ConfigError
from gradwise.train import checkpoint as ckpt
from gradwise.train import distributed
from gradwise.train.history import History


class FitCheckpoints:
    """The checkpoints of one ``fit()`` in ``folder`` (None: none are written), one every
    ``every`` epochs; ``ctx`` is the distributed :class:`~gradwise.train.distributed.Context`
    or None. Only rank 0 writes; every rank resumes from rank 0's checkpoint."""

    def __init__(self, folder: str | Path | None, every: int, ctx, extra_state: dict | None):
        self.folder, self.every, self.ctx, self.extra = folder, every, ctx, extra_state or {}
        #: a copy of the last finished epoch's checkpoint while it is not on disk
        self.unsaved: dict | None = None
        #: distributed: every rank's random state, gathered at each checkpoint
        self.rank_rng: dict = {}

    def resume(self, model, optimizer, scheduler, shuffle: torch.Generator, callbacks):
        """Restore everything from the latest checkpoint: ``(next epoch, step, history)``."""
        if self.folder is None:
            raise ConfigError("fit: resume=True needs checkpoint_dir; received checkpoint_dir=None")
        # distributed: rank 0 reads it and every rank gets its copy (no shared disk needed)
        payload = distributed.from_main(_load_latest, self.folder)
        restored = _restore(payload, model, optimizer, scheduler, shuffle, callbacks)
        if self.ctx is not None:
            distributed.restore_rng(payload, self.ctx)
        return restored

    def end_epoch(self, state, shuffle: torch.Generator, callbacks, last: bool) -> None:
        """After epoch ``state.epoch``: write its checkpoint when due (every ``every`` epochs,
        and the ``last``), else keep it in memory."""
        if self.folder is None:
            return
        epoch = state.epoch
        due = (epoch + 1) % self.every == 0 or last
        if self.ctx is not None:
            self.rank_rng = distributed.prepare_checkpoint(state.optimizer)  # on every rank
        if self.ctx is None or self.ctx.is_main:
            if due:
                ckpt.save(self._payload(state, shuffle, callbacks, epoch + 1), self.folder)
                self.unsaved = None
            else:
                self.unsaved = copy.deepcopy(self._payload(state, shuffle, callbacks, epoch + 1))
        if self.ctx is not None and due:
            distributed.barrier()  # on disk before any rank starts the next epoch

    def interrupted(self) -> None:
        """Ctrl-C: write the last finished epoch's checkpoint if it is not on disk yet."""
        if self.unsaved is not None:
            ckpt.save(self.unsaved, self.folder)

    def _payload(self, state, shuffle: torch.Generator, callbacks, next_epoch: int) -> dict:
        return {
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
            "epoch": next_epoch,
            "step": state.step,
            "history": state.history.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "shuffle": shuffle.get_state(),
                **self.rank_rng,
            },
            "callbacks": [cb.state_dict() for cb in callbacks],
            "extra": self.extra,
        }


def _load_latest(folder) -> dict:
    return ckpt.load_latest(folder)[0]


def _restore(payload, model, optimizer, scheduler, shuffle, callbacks):
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).strip().splitlines()]
        first = (lines[1] if len(lines) > 1 else lines[0]).rstrip(". ")  # not the header
        more = len(lines) - 2
        first += f"; {more} more difference{'s' if more > 1 else ''}" if more > 0 else ""
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

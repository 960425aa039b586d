"""``fit()``'s arguments checked before anything runs: the objects it is handed (model,
optimizer, scheduler, penalty, checkpoint folder) and its data's inputs against the model, so
that a mistake is one line naming the argument, not a traceback from deep inside torch after an
epoch of training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from gradwise import checks
from gradwise.errors import ConfigError


def check_objects(model, optimizer, scheduler, penalty, checkpoint_dir) -> None:
    """What ``fit`` is handed, before it is used: a module, an optimizer or a function making
    one, a scheduler with a ``step()``, a callable penalty, a folder for checkpoints."""
    if not isinstance(model, nn.Module):
        checks.refuse("fit", "model", "a torch.nn.Module", model, TypeError)
    if optimizer is not None and not (
        isinstance(optimizer, torch.optim.Optimizer) or callable(optimizer)
    ):
        allowed = "an optimizer or a function model_parameters -> optimizer (None: Adam 1e-3)"
        checks.refuse("fit", "optimizer", allowed, optimizer, TypeError)
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        allowed = "a gradwise.schedules.Scheduler or a torch.optim.lr_scheduler object (or None)"
        checks.refuse("fit", "scheduler", allowed, scheduler, TypeError)
    if penalty is not None and not callable(penalty):
        checks.refuse("fit", "penalty", "a function () -> loss term (or None)", penalty, TypeError)
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    if folder is not None and folder.exists() and not folder.is_dir():
        checks.refuse("fit", "checkpoint_dir", "a folder (or None)", str(checkpoint_dir))


def check_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> None:
    """An optimizer that holds none of the model's trainable parameters would train nothing,
    without a word: refused. (One that holds some of them is a choice: the rest stay as they
    are.) A scheduler made for another optimizer would set rates nobody reads: refused."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if trainable and not trainable & held:
        raise ConfigError(
            f"fit: the optimizer ({type(optimizer).__name__}) holds none of the model's "
            f"{len(trainable)} trainable parameter tensors, so training would change nothing; "
            "make it from model.parameters(), or pass a function model_parameters -> optimizer"
        )
    its = getattr(scheduler, "optimizer", None)  # its groups among the stepped ones: read
    stepped = {id(group) for group in optimizer.param_groups}  # (Combined holds its members')
    if its is not None and not all(id(g) in stepped for g in getattr(its, "param_groups", [])):
        raise ConfigError(
            f"fit: the scheduler ({type(scheduler).__name__}) was made for another optimizer "
            f"than the one fit() steps ({type(optimizer).__name__}), so it would set rates "
            "nobody reads; make it from that optimizer (pass the optimizer object, not a "
            "function making one, to make a scheduler for it first)"
        )


def check_batch_size(data, batch_size) -> None:
    """A ``batch_size`` given with a loader, which makes its own batches, would be ignored."""
    if data.loader is not None and batch_size is not None:
        raise ConfigError(
            f"fit: batch_size is for in-memory (x, y) data; a loader makes its own batches "
            f"(DataLoader(..., batch_size={batch_size!r})); received batch_size={batch_size!r} "
            "with one"
        )


def metrics_for(loss, metrics: Sequence[str] | str | None) -> tuple[str, ...]:
    """The metrics to record: one name as itself; by default (None) accuracy for a
    classification loss and none for ``"mse"``, whose accuracy would mean nothing."""
    if metrics is None:
        return () if loss == "mse" else ("accuracy",)
    return (metrics,) if isinstance(metrics, str) else tuple(metrics)


def check_inputs(model: nn.Module, data, val_data) -> None:
    """In-memory inputs of the model's floating dtype (a float64 ``x`` meets float32 weights
    as a dtype mismatch deep in the first layer), and validation inputs shaped as the training
    ones."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    for batches in (data, val_data):
        x = getattr(batches, "x", None)
        if x is not None and dtype is not None and x.is_floating_point() and x.dtype != dtype:
            raise ConfigError(
                f"fit: {batches.what} x is {x.dtype} and the model's parameters are {dtype}; "
                f"convert one of them (x.to({dtype}))"
            )
    x, xv = getattr(data, "x", None), getattr(val_data, "x", None)
    if x is not None and xv is not None and x.shape[1:] != xv.shape[1:]:
        raise ConfigError(
            f"fit: val x has rows of shape {tuple(xv.shape[1:])} and train x rows of shape "
            f"{tuple(x.shape[1:])}; they must match"
        )

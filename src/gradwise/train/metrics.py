"""Evaluation: a model's mean loss and metrics on a dataset (accuracy, RMSE, MAE, macro F1),
and its confusion counts. ``fit()`` validates with :func:`evaluate`; ``gradwise train`` tests
with it."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from gradwise import checks
from gradwise.train.batches import Batches
from gradwise.train.record import right_predictions

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": nn.functional.cross_entropy,
    "mse": nn.functional.mse_loss,
}


def evaluate(model: nn.Module, data, loss_fn, metrics=("accuracy",), prefix: str = "") -> dict:
    """Mean loss and metrics of ``model`` on ``data`` (``(x, y)`` or batches), in eval mode.
    ``"f1"`` is the macro F1 of the whole set's confusion matrix (:func:`macro_f1`)."""
    if isinstance(loss_fn, str):
        loss_fn = loss_function(loss_fn)
    if not isinstance(data, Batches):
        device = next(model.parameters()).device
        data = Batches(data, "full", device, "data")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    averaged = [name for name in metrics if name != "f1"]
    sums = dict.fromkeys(averaged, 0.0)
    counts = None
    with torch.no_grad():
        for xb, yb in data.chunks(8192):
            out = model(xb)
            n = len(yb)
            total += float(loss_fn(out, yb)) * n
            for name in averaged:
                sums[name] += float(METRICS[name](out, yb)) * n
            if "f1" in metrics:
                chunk = confusion_counts(out, yb)
                counts = chunk if counts is None else counts + chunk
            count += n
    model.train(was_training)
    result = {f"{prefix}loss": total / max(count, 1)}
    for name in metrics:
        value = macro_f1(counts) if name == "f1" else sums[name] / max(count, 1)
        result[f"{prefix}{name}"] = value
    return result


def confusion_counts(out: Tensor, labels: Tensor) -> Tensor:
    """``counts[i, j]``: how many rows of class ``i`` the scores ``out`` predict as ``j``."""
    classes = out.shape[1]
    pairs = labels.long() * classes + out.argmax(1)
    return torch.bincount(pairs, minlength=classes * classes).view(classes, classes).cpu()


def confusion_matrix(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The confusion counts (:func:`confusion_counts`) of ``model`` on ``(x, y)``, eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    data = Batches((x, y), "full", device, "data")
    counts = None
    with torch.no_grad():
        for xb, yb in data.chunks(8192):
            chunk = confusion_counts(model(xb), yb)
            counts = chunk if counts is None else counts + chunk
    model.train(was_training)
    return counts


def macro_f1(counts: Tensor) -> float:
    """The mean over classes of F1 = 2·TP / (2·TP + FP + FN), from confusion counts (rows: true
    class, columns: predicted). A class never true nor predicted is left out of the mean (its
    F1 is undefined), as scikit-learn's ``f1_score(average="macro", labels=present)`` does."""
    counts = counts.double()
    tp = counts.diagonal()
    denominator = counts.sum(0) + counts.sum(1)  # 2·TP + FP + FN
    present = denominator > 0
    if not present.any():
        return math.nan
    return float((2 * tp[present] / denominator[present]).mean())


METRICS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "accuracy": lambda out, y: right_predictions(out, y).float().mean(),
    "mae": lambda out, y: (out - y).abs().mean(),
    "rmse": lambda out, y: ((out - y) ** 2).mean().sqrt(),
}


def loss_function(loss) -> Callable[[Tensor, Tensor], Tensor]:
    if callable(loss):
        return loss
    return LOSSES[checks.choice("fit", "loss", loss, tuple(LOSSES))]

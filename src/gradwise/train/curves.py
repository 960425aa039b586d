"""The training curves of a run (``curves.png``): loss, the first metric and the learning rate
against the step.

Drawn with matplotlib's object API (``matplotlib.figure.Figure``), not pyplot: writing a PNG needs
no display and leaves the user's backend alone (a notebook keeps its own).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from gradwise.train.history import History
from gradwise.train.smoothing import smooth


def plot_history(history: History, path: str | Path, title: str = "") -> Path:
    """Loss, accuracy (or the first metric) and learning rate against step, train and val."""
    steps = [r["step"] for r in history.steps]
    losses = [r["loss"] for r in history.steps]
    epochs = history.epochs
    ep_steps = [r["step"] for r in epochs]
    metric = next(
        (k[4:] for r in epochs for k in r if k.startswith("val_") and k != "val_loss"),
        next(
            (k[6:] for r in epochs for k in r if k.startswith("train_") and k != "train_loss"), None
        ),
    )
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    ax = axes[0]
    if steps:
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, lw=0.8, label="train (per step)")
        ax.plot(steps, smooth(losses), color="tab:blue", lw=1.2, label="train (smoothed)")
    if any(r.get("val_loss") is not None for r in epochs):
        ax.plot(
            ep_steps,
            [r.get("val_loss") for r in epochs],
            "o-",
            color="tab:orange",
            ms=3,
            label="validation",
        )
    ax.set(xlabel="step", ylabel="loss", title="Loss")
    if losses and min(losses) > 0 and max(losses) / max(min(losses), 1e-12) > 20:
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)

    ax = axes[1]
    if metric is not None:
        for prefix, color, label in (
            ("train_", "tab:blue", "train"),
            ("val_", "tab:orange", "validation"),
        ):
            ys = [r.get(prefix + metric) for r in epochs]
            if any(y is not None for y in ys):
                ax.plot(ep_steps, ys, "o-", color=color, ms=3, label=label)
        ax.set(xlabel="step", ylabel=metric, title=metric.capitalize() + " (per epoch)")
        ax.legend()
    else:
        ax.set_axis_off()
    ax.grid(alpha=0.3)

    ax = axes[2]
    lrs = [r["lr"] for r in history.steps]
    if steps:
        ax.plot(steps, lrs, color="tab:green")
        positive = [v for v in lrs if v > 0]
        if positive and max(positive) / min(positive) > 20:
            ax.set_yscale("log")
        elif lrs and min(lrs) == max(lrs) and lrs[0] > 0:  # constant: from 0, not a ±5% zoom
            ax.set_ylim(0, 1.25 * lrs[0])
            ax.text(0.5, 0.5, f"constant {lrs[0]:g}", transform=ax.transAxes, ha="center")
    ax.set(xlabel="step", ylabel="learning rate", title="Learning rate")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_confusion(counts, names: list[str], path: str | Path, title: str = "") -> Path:
    """The test set's confusion matrix (``confusion.png``): rows the true class, columns the
    predicted one, each cell its count and its share of the row (the row's recall on the
    diagonal), shaded by that share."""
    import numpy as np

    counts = np.asarray(counts, dtype=np.int64)
    rows = counts.sum(1, keepdims=True)
    share = counts / np.maximum(rows, 1)
    size = max(4.5, 0.55 * len(names) + 2.5)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ticks = range(len(names))
    ax.set_xticks(ticks, names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right")
    ax.set_yticks(ticks, names)
    ax.set(xlabel="predicted", ylabel="true")
    if len(names) <= 20:
        for i in ticks:
            for j in ticks:
                color = "white" if share[i, j] > 0.6 else "black"
                text = f"{counts[i, j]}\n{share[i, j]:.0%}" if counts[i, j] else "·"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    heading = f"Test confusion matrix · accuracy {accuracy:.2%}"
    ax.set_title(f"{title}\n{heading}" if title else heading)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path

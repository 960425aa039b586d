"""PNG plots of runs (matplotlib, no display needed).

Figures are made with matplotlib's object API (``matplotlib.figure.Figure``), not pyplot: writing
a PNG needs no display and leaves the user's backend alone (a notebook keeps its own).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from gradwise.train.history import History
from gradwise.train.smoothing import smooth

COLORS = list(colormaps["tab10"].colors) + list(colormaps["tab20"].colors[1::2])


def _save(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG with a 256-colour palette (a third of the size, same look)."""
    import io

    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    try:
        from PIL import Image

        image = Image.open(buffer).convert("RGB")
        image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    except Exception:  # no Pillow (matplotlib needs it, but be safe): the plain PNG
        path.write_bytes(buffer.getvalue())
    return path


def lr_text(lr: float) -> str:
    """A rate written short: ``1e-3``, ``3e-4``, ``0.05``, ``0.1``."""
    if lr == 0:
        return "0"
    if lr < 0.01 or lr >= 100:
        mantissa, exponent = f"{lr:.1e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return f"{lr:.3g}"


def plot_lr_find(result, path: str | Path, title: str = "") -> Path:
    """The range test's loss (raw and smoothed) against the rate on a log axis, with the
    suggestion, the smoothed minimum and the steepest descent marked and the rule written out."""
    import numpy as np

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    lrs, losses, smoothed = result.lrs, result.losses, result.smoothed

    def on_curve(lr):
        return float(np.interp(np.log(lr), np.log(lrs), smoothed))

    if lrs:
        ax.plot(lrs, losses, color="tab:blue", alpha=0.3, lw=0.8, label="loss (per batch)")
        ax.plot(lrs, smoothed, color="tab:blue", lw=2, label="smoothed loss")
        ax.set_xscale("log")
        # the diverging tail would squash the interesting part: cap the view above the start
        top = max(smoothed[0], min(smoothed)) * 1.3
        bottom = min(min(losses), min(smoothed))
        ax.set_ylim(bottom - 0.05 * (top - bottom), top)
    if result.min_loss_lr is not None:
        label = f"minimum of smoothed loss: lr = {lr_text(result.min_loss_lr)}"
        ax.plot([result.min_loss_lr], [on_curve(result.min_loss_lr)], "s", color="tab:gray",
                ms=7, label=label)  # fmt: skip
    if result.steepest_lr is not None and result.rule != "steepest":
        ax.plot([result.steepest_lr], [on_curve(result.steepest_lr)], "^", color="tab:purple",
                ms=7, label=f"steepest descent: lr = {lr_text(result.steepest_lr)}")  # fmt: skip
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="tab:red", ls="--", lw=1)
        ax.plot([result.suggestion], [on_curve(result.suggestion)], "o", color="tab:red", ms=9,
                label=f"suggestion: lr = {lr_text(result.suggestion)}")  # fmt: skip
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss")
    ax.set_title(
        (title + "\n" if title else "")
        + f"Learning-rate range test · suggestion = {result.rule_text}",
        fontsize=10,
    )
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3, which="both")
    ax.text(0.99, 0.98, f"{len(lrs)} steps; {result.stopped}", transform=ax.transAxes,
            ha="right", va="top", fontsize=8, color="0.35")  # fmt: skip
    return _save(fig, path)


def plot_schedule(
    steps: list[int],
    curves: list[tuple[str, list[float]]],
    path: str | Path,
    *,
    title: str = "",
    cuts: list[int] = (),
    log: bool = False,
    ylabel: str = "learning rate",
) -> Path:
    """Learning rate against step, one line per ``(label, values)``; plateau ``cuts`` marked."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for (label, values), color, style in zip(curves, COLORS, ("-", "--", "-.", ":") * 8):
        ax.plot(steps, values, style, color=color, lw=2, label=label)
    for i, cut in enumerate(cuts):
        ax.axvline(cut, color="0.5", ls=":", lw=1, label="plateau cut" if i == 0 else None)
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel=ylabel + (" (log scale)" if log else ""), title=title)
    ax.grid(alpha=0.3)
    if len(curves) > 1 or cuts:
        ax.legend()
    return _save(fig, path)


def _mean_range_curves(histories: list[History], key: str):
    """Epoch-aligned mean, min and max of ``key`` over runs (cut to the shortest run)."""
    import numpy as np

    n = min(len(h.epochs) for h in histories)
    rows = [[h.epochs[j].get(key) for j in range(n)] for h in histories]
    if n == 0 or any(v is None for row in rows for v in row):
        return None
    values = np.asarray(rows, dtype=float)
    return values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def _step_curve(histories: list[History], log_x: bool, key: str = "loss", points: int = 600):
    """A per-step record (``"loss"``: smoothed by a bias-corrected moving average over about one
    epoch, at most 100 steps; ``"lr"``: as is) as ``(steps, seconds, mean, min, max)`` over runs,
    thinned to
    ``points`` points (spaced evenly on a log axis when ``log_x``). Seconds are interpolated
    between the epoch ends' wall-clock times."""
    import numpy as np

    n = min(len(h.steps) for h in histories)
    if n == 0:
        return None
    per_epoch = max(1, round(n / max(1, min(len(h.epochs) for h in histories))))
    beta = 1 - 1 / min(max(per_epoch, 1), 100) if key == "loss" else 0.0
    curves = np.asarray([smooth([r[key] for r in h.steps[:n]], beta) for h in histories])
    steps = np.asarray([r["step"] for r in histories[0].steps[:n]], dtype=float)
    if n > points:
        if log_x:
            index = np.unique(np.geomspace(1, n, points).astype(int) - 1)
        else:
            index = np.unique(np.linspace(0, n - 1, points).astype(int))
        curves, steps = curves[:, index], steps[index]
    times = np.mean(
        [
            np.interp(
                steps,
                [0.0] + [e["step"] for e in h.epochs],
                [0.0] + [e["elapsed"] for e in h.epochs],
            )
            for h in histories
        ],
        axis=0,
    )
    return steps, times, curves.mean(axis=0), curves.min(axis=0), curves.max(axis=0)


def plot_comparison(comparison, path: str | Path, title: str = "") -> Path:
    """Training and validation loss and metric against step and against wall time, one colour
    per configuration: the mean over seeds as a line, their spread (min to max) as a band.

    Validation values and training accuracy are per epoch; the training loss is per step,
    smoothed over about an epoch (so batch, stochastic and mini-batch descent can be compared
    from their first step). Step and time axes go logarithmic when the runs' lengths differ by
    more than 30x, the loss axis when the losses span more than 20x. Diverged runs are left out
    (drawn dotted, from their partial histories, only when every run of a configuration
    diverged)."""
    import numpy as np
    from matplotlib.lines import Line2D

    metric = comparison.metric
    # a learning-rate column when a schedule moves the rate and the configurations' rates differ
    first_runs = [next(iter(comparison.runs_of(label)), None) for label in comparison.labels]
    rate_curves = {tuple(s["lr"] for s in r.history.steps) for r in first_runs if r is not None}
    show_lr = len(rate_curves) > 1 and any(len(set(curve)) > 1 for curve in rate_curves)
    ncols = 3 if show_lr else 2
    fig = Figure(figsize=(6.5 * ncols, 9.5), layout="constrained")
    axes = fig.subplots(2, ncols)
    handles, groups = [], []
    for i, label in enumerate(comparison.labels):
        color = COLORS[i % len(COLORS)]
        runs = comparison.runs_of(label)
        ok = [r for r in runs if not r.diverged and r.history.epochs]
        partial = not ok
        use = ok or [r for r in runs if r.history.epochs]
        n_div = sum(r.diverged for r in runs)
        name = label + (f"  ({n_div}/{len(runs)} diverged)" if n_div else "")
        handles.append(Line2D([], [], color=color, lw=2.5, ls=":" if partial else "-", label=name))
        if use:
            groups.append((color, partial, [r.history for r in use]))
    ends = [
        (min(h.epochs[-1]["step"] for h in hs), min(h.wall_time for h in hs)) for *_, hs in groups
    ]
    wide_steps = bool(ends) and max(e[0] for e in ends) / max(min(e[0] for e in ends), 1) > 30
    wide_times = bool(ends) and max(e[1] for e in ends) / max(min(e[1] for e in ends), 1e-9) > 30
    loss_values, rate_values, first_rates = [], [], []
    for color, partial, histories in groups:
        n = min(len(h.epochs) for h in histories)
        x_step = np.asarray([histories[0].epochs[j]["step"] for j in range(n)], dtype=float)
        x_time = np.mean([[h.epochs[j]["elapsed"] for j in range(n)] for h in histories], axis=0)
        lines = []
        train_loss = _step_curve(histories, wide_steps)
        if train_loss is not None:
            steps, times, mean, low, high = train_loss
            lines.append((0, "--", 1.3, (steps, times), mean, low, high))
        rates = _step_curve(histories, wide_steps, key="lr") if show_lr else None
        if rates is not None:
            steps, times, mean, low, high = rates
            lines.append((2, "-", 1.5, (steps, times), mean, low, high))
        for col, key, style, width in (
            (0, "val_loss", "-", 1.8),
            (1, f"train_{metric}", "--", 1.3),
            (1, f"val_{metric}", "-", 1.8),
        ):
            curve = _mean_range_curves(histories, key)
            if curve is not None:
                lines.append((col, style, width, (x_step, x_time), *curve))
        for col, style, width, xs, mean, low, high in lines:
            if col == 0:
                loss_values.extend(v for v in mean if np.isfinite(v))
            if col == 2:
                rate_values.extend(v for v in mean if np.isfinite(v) and v > 0)
                first_rates.append(mean[0])
            for row in (0, 1):
                ax = axes[row, col]
                ax.plot(xs[row], mean, ":" if partial else style, color=color, lw=width,
                        marker="o" if len(mean) <= 3 else None, ms=4)  # fmt: skip
                if len(histories) > 1:
                    ax.fill_between(xs[row], low, high, color=color, alpha=0.13, lw=0)
    log_loss = (
        bool(loss_values) and min(loss_values) > 0 and max(loss_values) / min(loss_values) > 20
    )
    # rates that start a decade or more apart: a log axis, or the small ones vanish
    positive = [r for r in first_rates if r > 0]
    log_lr = bool(positive) and bool(rate_values) and max(positive) / min(positive) >= 10
    metric_name = "accuracy" if metric == "accuracy" else metric.upper()
    for row, (xlabel, wide) in enumerate(
        (("step (optimizer updates)", wide_steps), ("wall time (s, training loop)", wide_times))
    ):
        panels = [("loss", "Loss"), (metric_name, metric_name)]
        if show_lr:
            panels.append(("learning rate", "Learning rate"))
        for col, (ylabel, what) in enumerate(panels):
            ax = axes[row, col]
            against = "step" if row == 0 else "wall time"
            ax.set_title(f"{what[0].upper() + what[1:]} against {against}")
            ax.set_xlabel(xlabel + (" — log scale" if wide else ""))
            ax.set_ylabel(ylabel + (" (log scale)" if col == 0 and log_loss else ""))
            if wide:
                ax.set_xscale("log")
            if col == 0 and log_loss:
                ax.set_yscale("log")
            if col == 2 and log_lr:
                ax.set_yscale("log")
                ax.set_ylim(bottom=max(min(rate_values), max(rate_values) * 1e-4) / 1.5)
                ax.set_ylabel("learning rate (log scale)")
            ax.grid(alpha=0.3, which="both" if wide else "major")
            if col == 1 and comparison.target is not None and metric == "accuracy":
                ax.axhline(comparison.target, color="0.4", ls=":", lw=1)
    if metric == "accuracy":  # zoom past the low start, keeping every curve's later part
        later = []
        for line in axes[0, 1].get_lines():
            ys = np.asarray(line.get_ydata(), dtype=float)
            later.extend(v for v in ys[len(ys) // 5 :] if np.isfinite(v))
        if later:
            low, high = min(later), max(later)
            for ax in axes[:, 1]:
                ax.set_ylim(max(0.0, low - 0.05 * max(high - low, 0.2)), min(1.005, high + 0.02))
    style = [
        Line2D([], [], color="0.3", ls="-", lw=1.8, label="validation"),
        Line2D([], [], color="0.3", ls="--", lw=1.3, label="train (loss: per step, smoothed)"),
    ]
    if comparison.target is not None and metric == "accuracy":
        target = f"target accuracy {comparison.target:.1%}".replace(".0%", "%")
        style.append(Line2D([], [], color="0.4", ls=":", lw=1, label=target))
    fig.legend(
        handles=handles + style,
        loc="outside lower center",
        ncol=min(4, len(handles) + 2),
        fontsize=9,
        frameon=False,
    )
    seeds = sorted({r.seed for r in comparison.runs})
    fig.suptitle(
        (title + "\n" if title else "")
        + f"lines: mean over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}, "
        "bands: min to max over the seeds; training loss per step (smoothed), the rest per epoch",
        fontsize=11,
    )
    return _save(fig, path)

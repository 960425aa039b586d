"""The report of a search: ``best.toml``, ``summary.md``, Optuna's plots, and the retrain of
the best configuration beside the defaults (:func:`write_report`, :class:`TuneResult`)."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from gradwise.errors import GradwiseError
from gradwise.train.config import OPTIMIZER_OPTIONS, TrainConfig

#: the trials summary.md lists
TOP = 10
#: the plots written, Optuna's matplotlib function for each
PLOTS = {
    "history.png": "plot_optimization_history",
    "importances.png": "plot_param_importances",
    "parallel.png": "plot_parallel_coordinate",
}


@dataclass
class TuneResult:
    """What a search found: the study (name, storage), the trial counts, the best trial's
    number, validation accuracy and configuration, and the retrain's test accuracy over seeds
    (``{"tuned": (mean, std), "defaults": (mean, std)}``; empty without a retrain)."""

    study: str
    storage: str
    completed: int
    pruned: int
    failed: int
    best_trial: int
    best_value: float
    best_config: TrainConfig
    out: Path
    retrain: dict = field(default_factory=dict)
    seeds: list = field(default_factory=list)
    plots: list = field(default_factory=list)
    wall_time: float = 0.0


def trial_config(trial) -> TrainConfig:
    return TrainConfig.from_dict(tomllib.loads(trial.user_attrs["config"]), source="trial")


def write_report(
    study,
    out: Path,
    *,
    base: TrainConfig,
    storage: str,
    jobs: int,
    retrain_seeds: int,
    plots: bool,
    wall_time: float,
    command: str | None,
    on_retrain=None,
) -> TuneResult:
    import optuna

    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == states.COMPLETE]
    if not done:
        raise GradwiseError(
            f"tune: no trial of the study {study.study_name!r} has finished yet; nothing to "
            "report (give more --trials or --time)"
        )
    best = max(done, key=lambda t: (t.value, -t.number))
    best_config = dataclasses.replace(trial_config(best), threads=None)
    (out / "best.toml").write_text(
        f"# gradwise tune: trial {best.number} of study {study.study_name!r}, validation "
        f"accuracy {best.value:.4f}\n# gradwise train --config best.toml\n" + best_config.to_toml()
    )
    result = TuneResult(
        study=study.study_name,
        storage=storage,
        completed=len(done),
        pruned=sum(t.state == states.PRUNED for t in trials),
        failed=sum(t.state == states.FAIL for t in trials),
        best_trial=best.number,
        best_value=float(best.value),
        best_config=best_config,
        out=out,
        wall_time=wall_time,
    )
    if plots:
        result.plots = write_plots(study, out)
    if retrain_seeds:
        if on_retrain is not None:
            on_retrain(best.number)
        result.seeds, result.retrain = retrain(best_config, base, retrain_seeds, jobs, out)
    (out / "summary.md").write_text(summary_markdown(result, done, command))
    return result


def write_plots(study, out: Path) -> list[str]:
    """Optuna's matplotlib plots as PNGs; a plot Optuna cannot draw yet (importances need two
    finished trials that differ) is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization import matplotlib as oplt

    written = []
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():  # Optuna's notes on too few trials per value
                warnings.simplefilter("ignore")
                kwargs = {"target_name": "validation accuracy"}  # not "Objective Value"
                if function == "plot_parallel_coordinate":
                    kwargs["params"] = top_params(study)
                ax = getattr(oplt, function)(study, **kwargs)
            first = ax.flat[0] if hasattr(ax, "flat") else ax
            if function == "plot_optimization_history":  # trials are whole numbers
                first.xaxis.set_major_locator(MaxNLocator(integer=True))
            figure = first.figure
            figure.set_size_inches(10, 6)
            figure.tight_layout()
            figure.savefig(out / name, dpi=100)
            plt.close(figure)
            written.append(name)
        except Exception:  # too few trials for this plot
            plt.close("all")
    return written


def top_params(study, n: int = 6) -> list[str] | None:
    """The parameters the parallel-coordinates plot shows: the ``n`` most important
    (all of them when importances cannot be computed yet)."""
    import optuna

    try:
        importances = optuna.importance.get_param_importances(study)
    except Exception:
        return None
    return list(importances)[:n] or None


def retrain(best: TrainConfig, base: TrainConfig, seeds: int, jobs: int, out: Path):
    """The best configuration and the defaults trained with ``seeds`` seeds on the search's
    train/validation split; their test accuracy, mean and std."""
    from gradwise.lab.compare import compare

    defaults = dataclasses.replace(base, threads=None).resolved()
    chosen = list(range(base.seed, base.seed + seeds))
    comparison = compare(
        {"tuned": best, "defaults": defaults},
        seeds=chosen,
        jobs=min(jobs, 2 * seeds),
        out=out / "retrain",
        title=f"gradwise tune: the best configuration vs the defaults, {seeds} seeds",
    )
    rows = {}
    for row in comparison.summary():
        rows[row["label"]] = (row["test_accuracy_mean"], row["test_accuracy_std"])
    return chosen, rows


def pct(value, std=None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    if std is None:
        return f"{100 * value:.2f}%"
    return f"{100 * value:.2f} ± {100 * (std if math.isfinite(std) else 0.0):.2f}%"


#: the settings summary.md shows for each trial
COLUMNS = (
    "optimizer",
    "lr",
    "momentum",
    "betas",
    "weight_decay",
    "l1",
    "dropout",
    "augment_shift",
    "init",
    "batch_size",
    "epochs",
    "schedule",
    "width",
)


def describe_setting(config: TrainConfig, name: str) -> str:
    if name == "width":
        widths = config.channels if config.model == "cnn1d" else config.hidden
        return "×".join(map(str, widths))
    value = getattr(config, name)
    if name in OPTIMIZER_OPTIONS and config.optimizer not in OPTIMIZER_OPTIONS[name]:
        return ""
    if name == "betas":
        return f"{value[0]:.3g},{value[1]:.4g}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def summary_markdown(result: TuneResult, done: list, command: str | None) -> str:
    best = result.best_config
    lines = [
        f"# gradwise tune: {best.dataset} · {best.model}",
        "",
    ]
    if command:
        lines += [f"`{command}`", ""]
    lines += [
        f"Study `{result.study}` in `{result.storage}`: {result.completed} trials completed, "
        f"{result.pruned} pruned, {result.failed} failed; this search ran "
        f"{result.wall_time:.0f} s.",
        "",
        "Trials are chosen on the **validation** accuracy (the last epoch's); the test "
        "accuracy is shown for the report only and never used by the search.",
        "",
        f"## Best: trial {result.best_trial} (validation {pct(result.best_value)})",
        "",
        "`gradwise train --config best.toml`:",
        "",
        "```toml",
        best.to_toml().rstrip(),
        "```",
        "",
    ]
    if result.retrain:
        seeds = ", ".join(map(str, result.seeds))
        tuned, defaults = result.retrain.get("tuned"), result.retrain.get("defaults")
        lines += [
            f"## Retrained with seeds {seeds} (same train/validation split)",
            "",
            "| configuration | test accuracy (mean ± std) |",
            "|---|---|",
            f"| tuned (best.toml) | {pct(*tuned)} |",
            f"| defaults | {pct(*defaults)} |",
            "",
            "Each run's curves: `retrain/` (a `gradwise compare` report).",
            "",
        ]
    top = sorted(done, key=lambda t: (-t.value, t.number))[:TOP]
    lines += [
        f"## Top {len(top)} trials",
        "",
        "| trial | val acc | test acc | " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * (3 + len(COLUMNS)),
    ]
    for trial in top:
        config = trial_config(trial)
        cells = [describe_setting(config, name) for name in COLUMNS]
        value = "diverged" if trial.user_attrs.get("diverged") else pct(trial.value)
        lines.append(
            f"| {trial.number} | {value} | "
            f"{pct(trial.user_attrs.get('test_accuracy'))} | " + " | ".join(cells) + " |"
        )
    if result.plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({name})" for name in result.plots]
    return "\n".join(lines) + "\n"

"""``gradwise tune``: search training configurations with Optuna (``gradwise.lab.tune``)."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import click

from gradwise.cli.options import OneLineErrors, friendly, interruptible, no_empty_folder_left
from gradwise.errors import ConfigError


def parse_duration(text: str | None) -> float | None:
    """``"10m"``, ``"90s"``, ``"1h"``, ``"1h30m"`` or a number of seconds, in seconds."""
    if text is None:
        return None
    number = r"(\d+(?:\.\d+)?)"
    parts = re.fullmatch(rf"\s*(?:{number}h)?\s*(?:{number}m)?\s*(?:{number}s?)?\s*", text)
    if not text.strip() or parts is None or not any(parts.groups()):
        raise ConfigError(f"--time: expected a duration like 10m, 90s or 1h; received {text!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if total <= 0:
        raise ConfigError(f"--time must be positive; received {text!r}")
    return total


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


@click.command("tune", cls=OneLineErrors)
@click.option("--dataset", default="digits", show_default=True, help="Bundled dataset.")
@click.option("--model", help="mlp or cnn1d.  [default: the dataset's model]")
@click.option("--trials", type=int, help="Stop at this many finished trials (earlier ones count).")
@click.option("--time", "time_text", help="Search for this long, e.g. 10m, 90s, 1h.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Worker processes.")
@click.option(
    "--storage",
    help="Optuna storage to share with other machines: postgresql://..., mysql://..., "
    "sqlite:///FILE or journal:FILE (see docs/scaling.md).  [default: OUT/study.db]",
)
@click.option("--study", help="Study name.  [default: gradwise-<dataset>-<model>]")
@click.option(
    "--space",
    type=click.Path(dir_okay=False),
    help="TOML file overriding the search ranges, e.g. lr = [1e-4, 1e-2], epochs = 40.",
)
@click.option(
    "--pruner",
    type=click.Choice(["median", "hyperband", "none"]),
    default="median",
    show_default=True,
    help="Optuna pruner fed each trial's validation accuracy.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed and split.")
@click.option(
    "--seeds",
    type=int,
    default=3,
    show_default=True,
    help="Retrain the best configuration and the defaults with this many seeds (0: not).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Output folder; run the same command again to continue its study.  "
    "[default: runs/tune-<dataset>-<model>]",
)
@friendly
def tune_command(
    dataset, model, trials, time_text, jobs, storage, study, space, pruner, seed, seeds, out
):
    """Search training configurations with Optuna.

    It searches the optimizer, lr, schedule, momentum or betas, weight decay, L1, dropout,
    init, batch size, epochs, width and depth (override the ranges with --space). Each trial
    trains as `gradwise train` would and reports its validation accuracy to Optuna's pruner;
    the test set is never used to choose. Writes OUT/best.toml (run it with `gradwise train
    --config OUT/best.toml`), OUT/summary.md (the top 10 trials) and Optuna's plots as PNGs,
    then retrains the best configuration with --seeds seeds beside the defaults. Stopped
    (Ctrl-C), it continues when run again with the same --out. Needs Optuna: pip install
    'gradwise[tune]'.

    Example: gradwise tune --dataset mnist1d --model cnn1d --time 10m --jobs 2 --out runs/t
    """
    from gradwise.lab.tune.search import need_optuna

    need_optuna()
    from gradwise.lab.tune import tune

    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be at least 1; received --trials {trials}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1; received --jobs {jobs}")
    if seeds < 0:
        raise ConfigError(f"--seeds must be 0 or more; received --seeds {seeds}")
    if space is not None and not Path(space).exists():
        raise ConfigError(f"--space: file {space} does not exist")
    budget = parse_duration(time_text)
    folder = Path(out) if out else Path("runs") / f"tune-{dataset}-{model or 'default'}"
    where = storage or str(folder / "study.db")
    state = {"finished": 0, "reported": False, "retraining": False}

    def kept() -> str:
        if state["reported"]:
            return f"the report is complete: {folder / 'summary.md'}"
        return (
            f"the study keeps its {state['finished']} finished trial(s) in {where}; run the "
            "same command again to continue (the trials in flight are lost)"
            + ("; the retrain was cut short" if state["retraining"] else "")
        )

    def on_progress(progress) -> None:
        state["finished"] = progress.completed + progress.pruned
        for trial in progress.new:
            what = trial.state.name.lower()
            value = f" val {trial.value:.2%}" if trial.value is not None else ""
            seconds = trial.user_attrs.get("train_time")
            took = f" in {seconds:.1f} s" if seconds is not None else ""
            best = (
                f"best {progress.best:.2%} (trial {progress.best_trial})"
                if progress.best is not None
                else "no trial completed yet"
            )
            finished = progress.completed + progress.pruned
            goal = f"/{progress.trials_goal}" if progress.trials_goal else ""
            left = f" · {clock(progress.left_s)} left" if progress.left_s is not None else ""
            click.echo(
                f"trial {trial.number} {what}:{value}{took} · {finished}{goal} finished "
                f"({progress.pruned} pruned) · {best}{left}",
                err=True,
            )
        if progress.left_s == 0 and progress.running and not state.get("draining"):
            state["draining"] = True
            click.echo(f"time is up: finishing the {progress.running} trial(s) in flight", err=True)

    def on_retrain(best_trial: int) -> None:
        state["retraining"] = True
        click.echo(
            f"retraining the best configuration (trial {best_trial}) and the defaults with "
            f"{seeds} seed(s) ...",
            err=True,
        )

    def on_start(url: str, name: str, earlier: int) -> None:
        goals = ([f"{trials} trials"] if trials else []) + (
            [f"{clock(budget)} of search"] if budget else []
        )
        goal = " or ".join(goals)
        again = f", continuing from its {earlier} finished trials" if earlier else ""
        click.echo(
            f"tune: {dataset} · {model or 'default model'} · {goal or '20 trials'} · "
            f"{jobs} worker(s) · study {name} in {url}{again} -> {folder}",
            err=True,
        )

    command = "gradwise tune " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    with interruptible(kept), no_empty_folder_left(folder):
        result = tune(
            dataset,
            model,
            out=folder,
            trials=trials,
            time_budget=budget,
            jobs=jobs,
            storage=storage,
            study=study,
            space=space,
            pruner=pruner,
            seed=seed,
            retrain_seeds=seeds,
            on_progress=on_progress,
            on_retrain=on_retrain,
            on_start=on_start,
            command=command,
        )
        state["reported"] = True
    print_result(result)


def print_result(result) -> None:
    from gradwise.lab.tune.report import pct

    click.echo(
        f"study {result.study}: {result.completed} completed, {result.pruned} pruned, "
        f"{result.failed} failed"
    )
    click.echo(f"best: trial {result.best_trial}, validation accuracy {pct(result.best_value)}")
    if result.retrain:
        seeds = ",".join(map(str, result.seeds))
        click.echo(f"test accuracy over seeds {seeds} (same split):")
        click.echo(f"  tuned    {pct(*result.retrain['tuned'])}")
        click.echo(f"  defaults {pct(*result.retrain['defaults'])}")
    click.echo(f"run it: gradwise train --config {result.out / 'best.toml'}")
    plots = ", ".join(str(result.out / p) for p in result.plots)
    click.echo(f"report: {result.out / 'summary.md'}" + (f"; plots: {plots}" if plots else ""))

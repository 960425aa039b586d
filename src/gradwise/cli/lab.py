"""The lab's experiments on a training configuration: ``gradwise lr-find`` and ``gradwise compare``.

Both take every ``gradwise train`` option (the shared ``train_options``), so a range test or a
comparison is described exactly like a training run.
"""

from __future__ import annotations

import contextlib
import math
import shlex
import time
from pathlib import Path

import click

from gradwise.cli.options import (
    OneLineErrors,
    config_from_options,
    did_you_mean,
    friendly,
    interruptible,
    leave_out,
    no_empty_folder_left,
    table_console,
    train_options,
)
from gradwise.errors import ConfigError


def _command_line(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the options that were given (for reports)."""
    parts = ["gradwise", ctx.info_name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP") or value is None:
            continue
        if isinstance(param, click.Argument):
            values = value if isinstance(value, tuple) else (value,)
            parts += [shlex.quote(str(v)) for v in values]
            continue
        if param.is_flag:
            if param.secondary_opts and not value:
                parts.append(param.secondary_opts[0])
            elif value:
                parts.append(param.opts[0])
            continue
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        parts += [param.opts[0], shlex.quote(str(value))]
    return " ".join(parts)


def _csv(name: str, value: str | None, sep: str = ",") -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(sep)]
    if not items or any(not v for v in items):
        raise ConfigError(f"--{name}: empty item in {value!r} (separate items with {sep!r})")
    return items


def _floats(name: str, value: str | None) -> list[float] | None:
    items = _csv(name, value)
    if items is None:
        return None
    out = []
    for item in items:
        try:
            number = float(item)
        except ValueError:
            raise ConfigError(f"--{name}: {item!r} is not a number (in {value!r})") from None
        if not math.isfinite(number) or number <= 0:
            raise ConfigError(f"--{name}: rates must be positive numbers; received {item!r}")
        out.append(number)
    return out


def _run_folder(kind: str, config) -> Path:
    data = Path(config.data).stem if config.data else config.dataset
    return Path("runs") / f"{kind}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


# ------------------------------------------------------------------------------------ lr-find


@leave_out(  # lr-find sets the rate itself, for a few batches, and stops at divergence
    "lr", "epochs", "schedule", "plateau", "plateau_patience", "plateau_factor", "early_stop",
    "nan_policy", "clip_grad_norm", "precision", "ema", "tensorboard", "accumulate",
)  # fmt: skip
@click.command("lr-find", cls=OneLineErrors)
@train_options
@click.option(
    "--start-lr", type=float, default=1e-7, show_default=True, help="Rate of the first step."
)
@click.option(
    "--end-lr", type=float, default=10.0, show_default=True, help="Rate of the last step."
)
@click.option(
    "--steps", type=int, default=100, show_default=True, help="Most steps (batches) to take."
)
@click.option(
    "--rule",
    type=click.Choice(["minimum/10", "steepest"]),
    default="minimum/10",
    show_default=True,
    help="Suggest a tenth of the rate at the smoothed loss's minimum, or the rate of its "
    "steepest descent.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Folder for lr_find.png and lr_find.csv.  [default: runs/lr-find-<dataset>-<time>]",
)
@friendly
def lr_find_command(start_lr, end_lr, steps, rule, out, **options):
    """Find a learning rate: the range test.

    Trains the configured model for a few batches while the rate grows exponentially from
    --start-lr to --end-lr, stops when the loss diverges, and suggests a rate: a tenth of the
    rate at which the smoothed loss is lowest (--rule minimum/10), or the rate where it falls
    fastest against log(rate) (--rule steepest). Draws lr_find.png (loss against rate, log
    scale, suggestion marked) and writes lr_find.csv. Nothing is trained for keeps: the test
    only measures. Takes every `gradwise train` option.
    """
    from gradwise.lab.lr_find import lr_find_for

    ctx = click.get_current_context()
    folder = Path(out) if out else None  # named once the configuration is known
    files = ("lr_find.png", "lr_find.csv")
    with interruptible(lambda: _files_kept(folder, files, "lr-find writes them at its end")):
        config = config_from_options(dict(options)).resolved()
        folder = folder or _run_folder("lr-find", config)
        result = lr_find_for(config, start_lr, end_lr, steps, rule)
        folder.mkdir(parents=True, exist_ok=True)
        name = Path(config.data).name if config.data else config.dataset
        title = f"{name} · {config.model} · {config.optimizer} · batch {config.batch_size}"
        result.plot(folder / "lr_find.png", title=title)
        result.to_csv(folder / "lr_find.csv")
        _print_lr_find(ctx, result, title, folder, start_lr, end_lr)


def _print_lr_find(ctx, result, title: str, folder: Path, start_lr: float, end_lr: float):
    from rich.table import Table

    from gradwise.lab.plots import lr_text

    table = Table(title="gradwise lr-find", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("setup", title)
    table.add_row("range", f"{lr_text(start_lr)} to {lr_text(end_lr)}, {len(result.lrs)} steps")
    table.add_row("stopped", result.stopped)
    if result.suggestion is not None:
        table.add_row(
            "suggested lr", f"[bold green]{lr_text(result.suggestion)}[/]  ({result.rule_text})"
        )
    else:
        table.add_row("suggested lr", "none: the loss never fell; widen the range or add --steps")
    if result.min_loss_lr is not None:
        table.add_row(
            "loss minimum at", f"{lr_text(result.min_loss_lr)} (near the edge of stability)"
        )
    if result.steepest_lr is not None:
        table.add_row("steepest descent at", lr_text(result.steepest_lr))
    table.add_row("plot", str(folder / "lr_find.png"))
    table_console().print(table)
    if result.suggestion is not None:
        line = _command_line(ctx).replace(f"gradwise {ctx.info_name}", "gradwise train", 1)
        for flag in ("--start-lr", "--end-lr", "--steps", "--rule", "--out"):
            line = _drop_option(line, flag)
        click.echo(f"train with it:  {line} --lr {lr_text(result.suggestion)}")


def _files_kept(folder: Path | None, names: tuple[str, ...], when: str) -> str:
    """What an interrupted command kept of the files ``names`` in ``folder``, on one line."""
    found = [str(folder / name) for name in names if folder and (folder / name).exists()]
    if found:
        return f"kept {', '.join(found)}"
    return f"nothing was written ({when})"


def _drop_option(line: str, flag: str) -> str:
    words = shlex.split(line)
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word == flag:
            skip = True
            continue
        out.append(word)
    return " ".join(shlex.quote(w) for w in out)


# ------------------------------------------------------------------------------------ compare


@click.command("compare", cls=OneLineErrors)
@train_options
@click.option(
    "--optimizers",
    help="Optimizers to compare, e.g. sgd,momentum,rmsprop,adam (each at its default rate "
    "unless --lrs is given).",
)
@click.option("--lrs", help="Learning rates to compare, e.g. 1e-3,1e-2,1e-1.")
@click.option(
    "--batch-sizes",
    help="Batch modes: full (batch descent), 1 (stochastic), N (mini-batch), e.g. full,1,64.",
)
@click.option(
    "--schedules",
    help="Schedules separated by ';' (they contain commas), e.g. "
    "'none;step:200:0.5;exp:0.998;cosine;plateau'. 'plateau' or a '+plateau' suffix adds "
    "reduce-on-plateau.",
)
@click.option(
    "--inits", help="Init schemes, e.g. he,xavier,small (auto, lecun, orthogonal, normal, torch)."
)
@click.option(
    "--regularizers",
    help="Regularizers, e.g. none,l1=1e-4,l2=1e-3,wd=1e-2,dropout=0.2 (join with + to combine).",
)
@click.option(
    "--seeds",
    type=int,
    default=3,
    show_default=True,
    help="Runs of each configuration (seed, seed+1, ...).",
)
@click.option("--jobs", type=int, help="Runs in parallel, one process each.  [default: the cores]")
@click.option(
    "--target-accuracy",
    type=float,
    help="Report steps and time to this validation accuracy (0-1).  "
    "[default: 95% of the best configuration's, rounded down]",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Report folder.  [default: runs/compare-<dataset>-<time>]",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@friendly
def compare_command(
    optimizers,
    lrs,
    batch_sizes,
    schedules,
    inits,
    regularizers,
    seeds,
    jobs,
    target_accuracy,
    out,
    no_progress,
    **options,
):
    """Compare configurations: every combination of the lists given, each over several seeds.

    Trains the same model on the same data under each configuration (the cartesian product of
    --optimizers, --lrs, --batch-sizes, --schedules, --inits, --regularizers; every other
    setting from the usual train options), one process per run, at most --jobs at a time.
    Writes a report folder: curves.png, summary.md, summary.csv, runs.csv and each run's
    history in runs/<configuration>-seed<k>/.

    Example: gradwise compare --dataset digits --optimizers sgd,momentum,rmsprop,adam --epochs 10
    """

    from gradwise.init import SCHEMES
    from gradwise.lab.compare import compare, default_jobs, grid
    from gradwise.train.config import OPTIMIZERS

    ctx = click.get_current_context()
    pairs = {
        "optimizers": "optimizer",
        "lrs": "lr",
        "batch_sizes": "batch_size",
        "schedules": "schedule",
        "inits": "init",
    }
    for many, one in pairs.items():
        if ctx.params.get(many) is not None and options.get(one) is not None:
            raise ConfigError(
                f"give --{one.replace('_', '-')} or --{many.replace('_', '-')}, not both"
            )
    for one, many, sep in (("batch_size", "batch-sizes", ","), ("schedule", "schedules", ";")):
        if sep in str(options.get(one) or ""):
            raise ConfigError(
                f"--{one.replace('_', '-')} takes one value; for several, use --{many} "
                f"{options[one]!r}"
            )
    if options.get("nan_policy") == "skip":
        raise ConfigError(
            "compare stops a run at its first NaN/inf to flag it as diverged; "
            "drop --nan-policy skip"
        )
    if regularizers is not None:
        given = [k for k in ("l1", "l2", "weight_decay", "dropout") if options.get(k) is not None]
        if given:
            names = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ConfigError(f"--regularizers sets l1, l2, wd and dropout itself; drop {names}")
    optimizer_list = _csv("optimizers", optimizers)
    for name in optimizer_list or ():
        if name not in OPTIMIZERS:
            raise ConfigError(
                f"--optimizers: unknown optimizer {name!r}{did_you_mean(name, OPTIMIZERS)}; "
                f"allowed: {', '.join(OPTIMIZERS)}"
            )
    init_list = _csv("inits", inits)
    for name in init_list or ():
        if name not in SCHEMES:
            raise ConfigError(
                f"--inits: unknown init {name!r}{did_you_mean(name, SCHEMES)}; "
                f"allowed: {', '.join(SCHEMES)}"
            )
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1; received --seeds {seeds}")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"--jobs must be at least 1; received --jobs {jobs}")
    if target_accuracy is not None and not 0 <= target_accuracy <= 1:
        raise ConfigError(
            f"--target-accuracy must be in [0, 1] (e.g. 0.95); received {target_accuracy:g}"
        )
    base = config_from_options(dict(options))
    configs = grid(
        base,
        optimizers=optimizer_list,
        lrs=_floats("lrs", lrs),
        batch_sizes=_csv("batch-sizes", batch_sizes),
        schedules=_csv("schedules", schedules, sep=";"),
        inits=init_list,
        regularizers=_csv("regularizers", regularizers),
    )
    folder, total, finished, reported = Path(out) if out else None, 0, 0, False

    def kept() -> str:
        return _runs_kept(folder, finished, total, reported)

    with interruptible(kept):
        first = next(iter(configs.values())).resolved()
        folder = folder or _run_folder("compare", first)
        jobs = jobs or default_jobs()
        total = len(configs) * seeds
        click.echo(
            f"compare: {len(configs)} configuration(s) x {seeds} seed(s) = {total} runs, "
            f"{min(jobs, total)} at a time -> {folder}",
            err=True,
        )
        with _progress_bar(total, no_progress) as on_result:

            def count(record, done, of):
                nonlocal finished
                finished = done
                on_result(record, done, of)

            with no_empty_folder_left(folder):
                result = compare(
                    configs,
                    seeds=range(first.seed, first.seed + seeds),
                    jobs=jobs,
                    out=folder,
                    target_accuracy=target_accuracy,
                    on_result=count,
                    command=_command_line(ctx),
                )
        reported = True
        _print_comparison(result, folder)


def _runs_kept(folder: Path | None, finished: int, total: int, reported: bool) -> str:
    """What an interrupted comparison kept, on one line."""
    if reported:
        return f"the report is complete: {folder / 'summary.md'}"
    if not finished:
        return "no run had finished; no report written"
    return (
        f"{finished} of {total} runs had finished; they are kept in {folder / 'runs'} "
        "(no report written; the unfinished runs' folders are partial)"
    )


@contextlib.contextmanager
def _progress_bar(total: int, no_progress: bool):
    """A progress bar of the runs on stderr (in a terminal); yields the ``on_result`` that
    moves it."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    bar = Progress(
        TextColumn("runs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[last]}"),
        console=console,
        disable=no_progress or not console.is_terminal,
    )
    with bar:
        task = bar.add_task("compare", total=total, last="")

        def on_result(record, done, total):
            if record.diverged:
                last = f"[red]{record.label} seed {record.seed}: diverged[/]"
            else:
                acc = record.history.last(record.metric_key)
                last = f"{record.label} seed {record.seed}: {record.metric_key} {acc:.3f}"
            bar.update(task, completed=done, last=last)

        yield on_result


def _print_comparison(result, folder: Path) -> None:
    from rich.table import Table

    from gradwise.lab.compare import fmt_mean_std

    metric = result.metric
    pct = metric == "accuracy"
    short = "acc" if pct else metric
    table = Table(
        title=result.title,
        title_justify="left",
        caption=f"{metric}: mean ± std over seeds; final and best on the validation split, "
        "test on the test set",
        caption_justify="left",
    )
    table.add_column("configuration", style="bold", no_wrap=True)
    table.add_column(f"final {short}", justify="right")
    table.add_column(f"best {short}", justify="right")
    table.add_column(f"test {short}", justify="right")
    if result.target is not None:
        target = f"{result.target:.1%}".replace(".0%", "%")
        table.add_column(f"steps to {target}", justify="right")
        table.add_column(f"time to {target}", justify="right")
    table.add_column("time", justify="right")
    table.add_column("diverged", justify="right")
    for row in result.summary():
        cells = [row["label"]]
        for name in (f"final_{metric}", f"best_{metric}", f"test_{metric}"):
            cells.append(fmt_mean_std(row[f"{name}_mean"], row[f"{name}_std"], pct, compact=True))
        if result.target is not None:
            ok = row["runs"] - row["diverged"]
            reached = "" if row["reached"] == ok else f" ({row['reached']}/{ok})"
            steps = row["steps_to_target"]
            cells.append("—" if math.isnan(steps) else f"{steps:.0f}{reached}")
            seconds = row["time_to_target"]
            cells.append("—" if math.isnan(seconds) else f"{seconds:.2f} s")
        cells.append(f"{row['train_time_mean']:.2f} s" if row["runs"] > row["diverged"] else "—")
        cells.append(f"[red]{row['diverged']}/{row['runs']}[/]" if row["diverged"] else "0")
        table.add_row(*cells)
    console = table_console()
    console.print(table)
    console.print(
        f"{len(result.runs)} runs in {result.wall_time:.1f} s "
        f"({result.jobs} at a time). Report: {folder / 'summary.md'}, {folder / 'curves.png'}"
    )

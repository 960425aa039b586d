"""``gradwise train``: train a model into a run folder, on one process or several, and resume it.

A run stopped by Ctrl-C or SIGTERM keeps its last finished epoch and ends with exit code 130 (143
for SIGTERM) after saying how to resume; a run that diverges (NaN / inf) ends like bad input, one
line and exit code 2, naming the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path

import click

from gradwise.cli.options import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    OneLineErrors,
    config_from_options,
    friendly,
    sigterm_as_interrupt,
    train_options,
    warnings_as_lines,
)
from gradwise.errors import GradwiseError


def _run_name(config) -> str:
    data = Path(config.data).stem if config.data else config.dataset
    return f"{data}-{config.optimizer}-{time.strftime('%Y%m%d-%H%M%S')}"


@click.command("train", cls=OneLineErrors)
@train_options
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Run folder.  [default: runs/<dataset>-<optimizer>-<time>]",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False),
    help="Continue the run in this folder from its last checkpoint, with its saved configuration; "
    "with --epochs N (more than it had) a finished run goes on to N epochs.",
)
@click.option(
    "--init-from",
    type=click.Path(file_okay=False, exists=True),
    help="Start a new run from the trained weights of this run folder (a fresh optimizer and "
    "schedule); the model must have the same shapes.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    help="Train on N processes of this machine with DDP (through torch.distributed.run; "
    "gloo on CPU, NCCL on GPUs); --batch-size stays the global batch.  "
    "[default: 1, or the run's own with --resume / --config]",
)
@click.option(
    "--zero/--no-zero",
    default=None,
    help="With several processes: shard the optimizer state across them "
    "(torch's ZeroRedundancyOptimizer).",
)
@click.option(
    "--dist-timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a process waits for the others before giving up (a rank that died or hangs).  "
    "[default: 300]",
)
@friendly
def train_command(out, resume_dir, no_progress, nproc, dist_timeout, **options):
    """Train a model and write a run folder: config.toml, model.json, metrics.csv,
    history.jsonl, checkpoint.pt, curves.png and confusion.png.

    With no options: an MLP on the bundled digits set with Adam.

    A run can be stopped at any moment (Ctrl-C, kill, power cut) and continued with
    `gradwise train --resume DIR`, ending with the weights an uninterrupted run gets.

    `--nproc N` trains on N processes (see docs/scaling.md); so does
    `torchrun --nproc-per-node N -m gradwise train ...`. The run folder remembers N.
    """
    from gradwise.train import checkpoint as ckpt
    from gradwise.train import distributed
    from gradwise.train.faults import Diverged
    from gradwise.train.run import at_chance, load_run_config, run

    launched = distributed.env_world_size() > 1
    if nproc is not None and launched:
        raise GradwiseError(
            "--nproc starts the processes itself; under torchrun (or another launcher) leave "
            "it out: the launcher's --nproc-per-node decides"
        )
    if dist_timeout is not None:
        os.environ[distributed.TIMEOUT_ENV] = str(dist_timeout)  # the launched processes too
    main_rank = distributed.is_main()
    if launched:
        distributed.setup()  # joins the others: rank 0 decides the run folder and reads it
    if resume_dir is not None:
        epochs = options.pop("epochs")  # the one setting a resumed run takes: more epochs
        given = [k for k, v in options.items() if v is not None]
        if given or out:
            names = ", ".join("--" + k.replace("_", "-") for k in given + (["out"] if out else []))
            raise GradwiseError(
                f"--resume takes the run's saved configuration; drop {names} "
                f"(or start a new run with --config {Path(resume_dir) / 'config.toml'})"
            )
        config = distributed.from_main(load_run_config, resume_dir, epochs)
        out, resume = Path(resume_dir), True
        if not ckpt.exists(out) and main_rank and (launched or (nproc or config.nproc) == 1):
            click.echo(f"gradwise: {out} has no checkpoint yet; starting the run over", err=True)
    else:
        config = config_from_options(options)
        out, resume = Path(out) if out else Path("runs") / _run_name(config), False
    processes = nproc or config.nproc
    if processes > 1 and not launched:
        _launch(config, out, resume, processes, no_progress)
        return
    if launched:
        out = Path(distributed.broadcast_object(str(out)))  # rank 0's default name everywhere
        world = distributed.env_world_size()
        if resume and main_rank and world != config.nproc:
            _remember_nproc(out, config, world)
    elif resume and nproc is not None and nproc != config.nproc:
        _remember_nproc(out, config, nproc)
    terminated: list[bool] = []
    try:
        # SIGTERM as Ctrl-C: the last finished epoch is kept and the resume command shown
        sigterm = sigterm_as_interrupt(terminated) if not launched else contextlib.nullcontext()
        with _warnings_as_lines(), sigterm:
            result = run(config, out, progress=not no_progress, resume=resume)
    except KeyboardInterrupt:
        if main_rank:
            _interrupted(out, "terminated (SIGTERM)" if terminated else "interrupted")
        sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
    except Diverged as e:
        if not main_rank:  # every rank diverges at the same step: rank 0 says it
            sys.exit(EXIT_USAGE)
        raise Diverged(f"{e}. {_last_good(out)}", e.step, e.where) from None
    except distributed.DistributedError as e:
        raise distributed.DistributedError(
            f"{e}; continue with: gradwise train --resume {out}"
        ) from None
    if main_rank:
        _print_summary(result)
        hint = (
            "Try another --lr (gradwise lr-find suggests one), more --epochs or another --optimizer"
        )
        kept = f"; the run is kept in {out}" if out is not None else ""
        chance = at_chance(result)
        if chance is not None:  # not a success (a diverging loss raised Diverged in fit)
            raise GradwiseError(f"the model did not learn: {chance}. {hint}{kept}")


def _interrupted(out: Path, what: str = "interrupted") -> None:
    """What Ctrl-C (or SIGTERM) leaves behind, and how to continue."""
    from gradwise.train import checkpoint as ckpt

    if ckpt.exists(out):
        where = f"The last checkpoint (end of the last finished epoch) is in {out}"
    elif (out / "config.toml").exists():
        where = f"No epoch had finished, so there is no checkpoint in {out} yet"
    else:
        click.echo(f"\n{what} before the run started; nothing was written", err=True)
        return
    click.echo(f"\n{what}. {where}; continue with: gradwise train --resume {out}", err=True)


def _launch(config, out: Path, resume: bool, nproc: int, no_progress: bool) -> None:
    """``gradwise train`` on ``nproc`` processes: check the configuration and the run folder
    here, then start ``python -m gradwise train`` on each through ``torch.distributed.run``."""
    from gradwise.train import distributed, launch
    from gradwise.train.config import parse_batch_size
    from gradwise.train.run import prepare_out

    if resume:
        if nproc != config.nproc:
            _remember_nproc(out, config, nproc)
        args = ["train", "--resume", str(out)]
    else:
        resolved = dataclasses.replace(config.resolved(), nproc=nproc)
        batch_size = parse_batch_size(resolved.batch_size)
        if batch_size != "full":
            distributed.check_global_batch("train", batch_size, nproc, batch_size, as_flags=True)
        prepare_out(out, resolved, resume=False)  # refuses a folder that holds another run
        args = ["train", "--config", str(out / "config.toml"), "--out", str(out)]
    if no_progress:
        args.append("--no-progress")
    try:
        launch.launch(args, nproc)
    except KeyboardInterrupt:  # rank 0 has said what was kept and how to continue
        sys.exit(EXIT_INTERRUPTED)
    except launch.LaunchFailed as e:
        causes = [f for f in e.failures if f[2] != "SIGTERM"] or e.failures
        codes = {code for _, code, _ in causes}
        if codes == {EXIT_INTERRUPTED}:
            sys.exit(EXIT_INTERRUPTED)
        if codes == {EXIT_USAGE}:
            sys.exit(EXIT_USAGE)  # the processes said why, one line each
        raise launch.LaunchFailed(
            f"{e}; {distributed.describe_checkpoint(out)}; continue with: "
            f"gradwise train --resume {out}",
            e.failures,
        ) from None


def _remember_nproc(out: Path, config, nproc: int) -> None:
    """A resumed run continues on ``nproc`` processes: its config.toml says so from now on."""
    from gradwise.train import checkpoint as ckpt

    ckpt.atomic_write_text(out / "config.toml", dataclasses.replace(config, nproc=nproc).to_toml())


def _last_good(out: Path) -> str:
    """Where the last good checkpoint of a run folder is (after a divergence)."""
    from gradwise.train import checkpoint as ckpt

    try:
        payload, path, _ = ckpt.load_latest(out)
    except GradwiseError:
        return f"No checkpoint was written to {out} (it diverged in the first epoch)"
    return f"The last good checkpoint (epoch {payload.get('epoch')}) is kept in {path}"


@contextlib.contextmanager
def _warnings_as_lines():
    """Show the trainer's warnings (e.g. skipped NaN steps) as ``gradwise: warning: ...`` lines."""
    from gradwise.train import distributed
    from gradwise.train.faults import SkippedStepWarning

    # every rank skips the same steps: rank 0 says it
    with warnings_as_lines(SkippedStepWarning, shown=distributed.is_main()):
        yield


def _print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    h, c = result.history, result.config
    table = Table(title="gradwise train", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    data = c.data or c.dataset
    table.add_row(
        "data",
        f"{data} ({len(result.data.x_train)} train, "
        f"{0 if result.data.x_val is None else len(result.data.x_val)} val, "
        f"{len(result.data.x_test)} test)",
    )
    table.add_row("model", f"{c.model} · {c.optimizer} lr={c.lr:g} · batch {c.batch_size}")
    for key in ("test_accuracy", "test_f1", "test_rmse", "test_mae", "test_loss"):
        if key in h.summary:
            value = h.summary[key]
            table.add_row(
                "test macro F1" if key == "test_f1" else key.replace("_", " "),
                f"{value:.2%}" if key.endswith("accuracy") else f"{value:.4f}",
            )
    if h.epochs:
        table.add_row("epochs · steps", f"{h.epochs[-1]['epoch']} · {h.summary['steps']}")
    training, process = h.summary["train_time"], h.summary["total_time"]
    # a resumed run's training time counts its earlier processes' too; this one's does not
    where = "in all" if process >= training else "in this process (resumed)"
    table.add_row("time", f"{training:.2f} s training, {process:.2f} s {where}")
    if h.stopped:
        table.add_row("stopped", h.stopped)
    if h.skipped_steps:
        table.add_row("skipped steps", str(h.skipped_steps))
    table.add_row("run folder", str(result.out))
    Console().print(table)

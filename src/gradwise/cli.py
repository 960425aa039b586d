"""The ``gradwise`` command line: train, lr-find, compare, schedule, bench.

Bad input ends with one line on stderr, ``gradwise: error: ...``, and exit code 2 (no traceback;
set ``GRADWISE_DEBUG=1`` to see one). A training run that diverges (NaN / inf) ends the same way;
Ctrl-C ends ``gradwise train`` with exit code 130 after saying how to resume.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import click

from gradwise import __version__
from gradwise.errors import GradwiseError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM (kill, timeout, a job scheduler)


def _error(message: str) -> None:
    text = " ".join(str(message).split())
    rank = _rank_prefix()
    if text.startswith(rank[1:-2] + " "):  # the message names its rank already
        rank = ""
    click.echo(f"gradwise: error: {rank}{text}", err=True)


def _rank_prefix() -> str:
    """``"[rank N] "`` in a process other than rank 0 of a distributed run, else ``""``."""
    from gradwise.train import distributed

    if distributed.env_world_size() > 1 and not distributed.is_main():
        return f"[rank {distributed.env_rank()}] "
    return ""


def friendly(fn):
    """Turn gradwise's input errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (GradwiseError, ValueError, TypeError, OSError, MemoryError) as e:
            if os.environ.get("GRADWISE_DEBUG"):
                raise
            if isinstance(e, MemoryError):
                message = "out of memory; use a smaller model, batch size or data file"
            elif isinstance(e, OSError) and e.strerror:
                where = f": {e.filename}" if e.filename else ""
                message = f"{e.strerror}{where}"
            else:
                message = str(e) or type(e).__name__
            _error(message)
            sys.exit(EXIT_USAGE)

    return wrapper


class OneLineErrors(click.Command):
    """A command whose usage errors (bad option values, unknown options) are one line too:
    ``gradwise: error: ...`` and exit code 2, instead of click's usage block."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            if os.environ.get("GRADWISE_DEBUG"):
                raise
            _error(f"{e.format_message()} (see gradwise {self.name} --help)")
            ctx.exit(EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gradwise")
def main() -> None:
    """gradwise: train neural networks well and fast on PyTorch.

    Start with `gradwise train` (digits, an MLP and Adam, under 10 seconds).
    """


def csv_ints(ctx, param, value):
    if value is None:
        return None
    try:
        items = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not items or any(v < 1 for v in items):
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return items


def _betas(ctx, param, value):
    if value is None:
        return None
    try:
        b1, b2 = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected two numbers like 0.9,0.999, got {value!r}") from None
    return (b1, b2)


def train_options(fn):
    """The options that describe a training configuration (shared by train, lr-find, compare)."""
    from gradwise.train.run import INITS, MODELS, OPTIMIZERS

    options = [
        click.option(
            "--dataset",
            help="Bundled dataset: digits, mnist1d, spirals, moons, regression.  [default: digits]",
        ),
        click.option(
            "--data",
            type=click.Path(dir_okay=False),
            help="Your own data: a .csv, .npz (x, y) or .pt file, instead of --dataset.",
        ),
        click.option("--target", help="CSV column to predict.  [default: the last column]"),
        click.option(
            "--model",
            type=click.Choice(MODELS),
            help="Model builder.  [default: per dataset: mlp, cnn1d for mnist1d]",
        ),
        click.option("--hidden", callback=csv_ints, help="MLP hidden widths, e.g. 128,128."),
        click.option("--channels", callback=csv_ints, help="cnn1d channels per conv layer."),
        click.option(
            "--activation",
            help="relu, leaky_relu, gelu, silu, tanh, sigmoid, selu, elu.  [default: relu]",
        ),
        click.option("--dropout", type=float, help="Dropout rate after each hidden layer."),
        click.option(
            "--init",
            type=click.Choice(INITS),
            help="Weight init; auto = He for ReLU-like, Xavier for tanh/sigmoid, LeCun for SELU.",
        ),
        click.option(
            "--optimizer", type=click.Choice(OPTIMIZERS), help="Update rule.  [default: adam]"
        ),
        click.option("--lr", type=float, help="Learning rate.  [default: per optimizer]"),
        click.option("--momentum", type=float, help="Momentum (momentum, nesterov, rmsprop)."),
        click.option("--betas", callback=_betas, help="Adam's β1,β2.  [default: 0.9,0.999]"),
        click.option("--eps", type=float, help="ε of Adam/RMSprop/Adagrad."),
        click.option(
            "--weight-decay",
            type=float,
            help="The optimizer's weight decay (coupled; decoupled for adamw), on weights only.",
        ),
        click.option(
            "--l1",
            type=float,
            help="L1 strength, as the optimizer's proximal step (exact zeros), on weights only.",
        ),
        click.option("--l2", type=float, help="L2 penalty λ/2·Σθ² added to the loss, on weights."),
        click.option("--batch-size", help="full (batch GD), 1 (stochastic) or N (mini-batch)."),
        click.option("--epochs", type=int, help="Passes over the training set."),
        click.option(
            "--schedule",
            help="LR schedule, e.g. 'warmup:100,cosine' or 'step:300:0.5'"
            " (see `gradwise schedule --help`); steps are batches.",
        ),
        click.option(
            "--plateau/--no-plateau",
            default=None,
            help="Reduce the LR when the validation loss stalls (on top of --schedule).",
        ),
        click.option(
            "--plateau-patience",
            type=int,
            help="Epochs without improvement before a cut.  [default: 5]",
        ),
        click.option(
            "--plateau-factor",
            type=float,
            help="Multiply the LR by this at each cut.  [default: 0.5]",
        ),
        click.option(
            "--early-stop",
            type=int,
            help="Stop after N epochs without validation improvement (0: never).",
        ),
        click.option("--seed", type=int, help="Seed for init, shuffling and dropout."),
        click.option("--device", help="auto, cpu, cuda or cuda:N.  [default: auto]"),
        click.option(
            "--threads",
            type=int,
            help="torch threads.  [default: 1 for models under 1M parameters, else torch's]",
        ),
        click.option(
            "--val-fraction",
            type=float,
            help="Share of the training rows held out for validation.  [default: 0.1]",
        ),
        click.option(
            "--nan-policy",
            type=click.Choice(["raise", "skip"]),
            help="On a NaN/inf loss or gradient: stop (raise) or drop the step (skip).",
        ),
        click.option(
            "--config",
            "config_file",
            type=click.Path(dir_okay=False),
            help="Read settings from a TOML file (a run's config.toml); options given "
            "here override it.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


CONFIG_OPTIONS = (
    "dataset",
    "data",
    "target",
    "model",
    "hidden",
    "channels",
    "activation",
    "dropout",
    "init",
    "optimizer",
    "lr",
    "momentum",
    "betas",
    "eps",
    "weight_decay",
    "l1",
    "l2",
    "batch_size",
    "epochs",
    "schedule",
    "plateau",
    "plateau_patience",
    "plateau_factor",
    "early_stop",
    "seed",
    "device",
    "threads",
    "val_fraction",
    "nan_policy",
    "zero",
)


def config_from_options(options: dict):
    """A TrainConfig from a config file (if any) overridden by the options given."""
    from gradwise.train.run import TrainConfig

    config_file = options.pop("config_file", None)
    base = TrainConfig.from_toml(config_file) if config_file else TrainConfig()
    values = {k: v for k, v in options.items() if k in CONFIG_OPTIONS and v is not None}
    if "batch_size" in values:
        values["batch_size"] = str(values["batch_size"])
    if "dataset" in values and "data" not in values:
        values["data"] = None
    if values.get("data") is not None and not Path(values["data"]).exists():
        from gradwise.errors import DataError

        raise DataError(f"--data: file {values['data']} does not exist")
    import dataclasses

    return dataclasses.replace(base, **values)


def _run_name(config) -> str:
    data = Path(config.data).stem if config.data else config.dataset
    return f"{data}-{config.optimizer}-{time.strftime('%Y%m%d-%H%M%S')}"


@main.command(cls=OneLineErrors)
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
    help="Continue the run in this folder from its last checkpoint, with its saved configuration.",
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
def train(out, resume_dir, no_progress, nproc, dist_timeout, **options):
    """Train a model and write a run folder: config.toml, metrics.csv, history.jsonl,
    checkpoint.pt and curves.png.

    With no options: an MLP on the bundled digits set with Adam.

    A run can be stopped at any moment (Ctrl-C, kill, power cut) and continued with
    `gradwise train --resume DIR`, ending with the weights an uninterrupted run gets.

    `--nproc N` trains on N processes (see docs/scaling.md); so does
    `torchrun --nproc-per-node N -m gradwise train ...`. The run folder remembers N.
    """
    from gradwise.train import checkpoint as ckpt
    from gradwise.train import distributed
    from gradwise.train.loop import Diverged
    from gradwise.train.run import load_run_config, run

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
        given = [k for k, v in options.items() if v is not None]
        if given or out:
            names = ", ".join("--" + k.replace("_", "-") for k in given + (["out"] if out else []))
            raise GradwiseError(
                f"--resume takes the run's saved configuration; drop {names} "
                f"(or start a new run with --config {Path(resume_dir) / 'config.toml'})"
            )
        config = distributed.from_main(load_run_config, resume_dir)
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
        with _warnings_as_lines(), _sigterm_as_interrupt(terminated, enabled=not launched):
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


@contextlib.contextmanager
def _sigterm_as_interrupt(terminated: list[bool], enabled: bool = True):
    """SIGTERM handled as Ctrl-C: the last finished epoch is kept and the resume command shown
    (a checkpoint being written is finished first, as for Ctrl-C). ``terminated`` records it."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        terminated.append(True)
        on_interrupt = signal.getsignal(signal.SIGINT)
        if callable(on_interrupt):  # Python's default raises KeyboardInterrupt; a checkpoint
            on_interrupt(signal.SIGINT, frame)  # write in progress holds it until it is done
        else:  # SIGINT ignored (started in the background): stop all the same
            raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # no signals here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


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
    import dataclasses

    from gradwise.train import distributed
    from gradwise.train.run import parse_batch_size, prepare_out

    if resume:
        if nproc != config.nproc:
            _remember_nproc(out, config, nproc)
        args = ["train", "--resume", str(out)]
    else:
        resolved = dataclasses.replace(config.resolved(), nproc=nproc)
        batch_size = parse_batch_size(resolved.batch_size)
        if batch_size != "full" and batch_size < nproc:
            raise GradwiseError(
                f"--batch-size is the global batch and must be at least --nproc ({nproc}); "
                f"received --batch-size {batch_size}"
            )
        prepare_out(out, resolved, resume=False)  # refuses a folder that holds another run
        args = ["train", "--config", str(out / "config.toml"), "--out", str(out)]
    if no_progress:
        args.append("--no-progress")
    try:
        distributed.launch(args, nproc)
    except KeyboardInterrupt:  # rank 0 has said what was kept and how to continue
        sys.exit(EXIT_INTERRUPTED)
    except distributed.LaunchFailed as e:
        causes = [f for f in e.failures if f[2] != "SIGTERM"] or e.failures
        codes = {code for _, code, _ in causes}
        if codes == {EXIT_INTERRUPTED}:
            sys.exit(EXIT_INTERRUPTED)
        if codes == {EXIT_USAGE}:
            sys.exit(EXIT_USAGE)  # the processes said why, one line each
        raise distributed.LaunchFailed(
            f"{e}; {distributed.describe_checkpoint(out)}; continue with: "
            f"gradwise train --resume {out}",
            e.failures,
        ) from None


def _remember_nproc(out: Path, config, nproc: int) -> None:
    """A resumed run continues on ``nproc`` processes: its config.toml says so from now on."""
    import dataclasses

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
    from gradwise.train.loop import SkippedStepWarning

    quiet = not distributed.is_main()  # every rank skips the same steps: rank 0 says it

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SkippedStepWarning):
            if not quiet:
                click.echo(f"gradwise: warning: {message}", err=True)
        else:
            original(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", SkippedStepWarning)
        original = warnings.showwarning
        warnings.showwarning = show
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
    for key in ("test_accuracy", "test_rmse", "test_loss"):
        if key in h.summary:
            value = h.summary[key]
            table.add_row(
                key.replace("_", " "),
                f"{value:.2%}" if key.endswith("accuracy") else f"{value:.4f}",
            )
    if h.epochs:
        table.add_row("epochs · steps", f"{h.epochs[-1]['epoch']} · {h.summary['steps']}")
    table.add_row(
        "time", f"{h.summary['train_time']:.2f} s training, {h.summary['total_time']:.2f} s in all"
    )
    if h.stopped:
        table.add_row("stopped", h.stopped)
    if h.skipped_steps:
        table.add_row("skipped steps", str(h.skipped_steps))
    table.add_row("run folder", str(result.out))
    Console().print(table)


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args):
    """Time gradwise against torch.optim: whole training iterations, or the step alone.

    `gradwise bench --train-step [...]` times whole iterations as users write them (default
    zero_grad, forward, backward, step) on four models; same code as
    benchmarks/train_step.py (`gradwise bench --train-step --help` lists its options).
    `gradwise bench [...]` times optimizer.step() alone; same code as
    benchmarks/optim_step.py (`gradwise bench --help`: --quick, --threads, --json PATH, ...).
    """
    args = list(args)
    if "--train-step" in args:
        from gradwise.lab.train_step import main as train_step_main

        args.remove("--train-step")
        sys.exit(train_step_main(args, prog="gradwise bench --train-step"))
    from gradwise.bench import main as bench_main

    sys.exit(bench_main(args))


@main.command(cls=OneLineErrors)
@click.option("--clear", is_flag=True, help="Delete the cached kernels (all, or see --older-than).")
@click.option(
    "--older-than",
    "older_than",
    type=click.FloatRange(min=0),
    metavar="DAYS",
    help="With --clear: only the kernels not built or loaded in the last DAYS days.",
)
def cache(clear, older_than):
    """Show or clear the cache of compiled optimizer kernels.

    A fused kernel is built once per machine and configuration (10-30 s) and loads in
    milliseconds afterwards; the cache is $GRADWISE_KERNEL_CACHE (default
    ~/.cache/gradwise/kernels). Clearing it is always safe: what is needed is built again.
    """
    from rich.console import Console
    from rich.table import Table

    from gradwise.optim import kernels

    if older_than is not None and not clear:
        _error("--older-than DAYS goes with --clear (see gradwise cache --help)")
        sys.exit(EXIT_USAGE)
    folder = kernels.cache_dir()
    if clear:
        files, size = kernels.clear_cache(older_than)
        click.echo(f"removed {files} file(s), {size / 2**20:.1f} MiB, from {folder}")
        return
    entries = kernels.cache_entries()
    by_name: dict[str, list[dict]] = {}
    for entry in entries:
        by_name.setdefault(entry["name"], []).append(entry)
    table = Table(title=f"{folder}", title_justify="left")
    for column in ("kernels of", "files", "MiB", "last used"):
        table.add_column(column, justify="left" if column == "kernels of" else "right")
    for name, group in sorted(by_name.items()):
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(max(e["used"] for e in group)))
        mib = sum(e["bytes"] for e in group) / 2**20
        table.add_row(name, str(len(group)), f"{mib:.1f}", used)
    total = sum(e["bytes"] for e in entries) / 2**20
    table.add_section()
    table.add_row("all", str(len(entries)), f"{total:.1f}", "")
    Console().print(table)


def _register_lab_commands() -> None:
    """lr-find, compare and schedule live in gradwise.cli_lab."""
    try:
        from gradwise import cli_lab
    except ImportError:  # pragma: no cover - while the lab is being written
        return
    for command in cli_lab.COMMANDS:
        main.add_command(command)


_register_lab_commands()

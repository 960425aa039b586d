"""What several ``gradwise`` commands share: exit codes, one-line errors, the training options.

Bad input ends with one line on stderr, ``gradwise: error: ...``, and exit code 2 (no traceback;
set ``GRADWISE_DEBUG=1`` to see one): :func:`friendly` does it for errors raised while a command
runs, :class:`OneLineErrors` for click's own usage errors. :func:`train_options` is the one
definition of the options that describe a training configuration (train, lr-find and compare
take them all), and :func:`config_from_options` turns them into a ``TrainConfig``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import functools
import os
import shutil
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import click

from gradwise.errors import ConfigError, DataError, GradwiseError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM (kill, timeout, a job scheduler)


#: gradwise.optim classes that the trainer does not run, and why (``--optimizer`` says so)
PYTHON_ONLY = {
    "lbfgs": "LBFGS (gradwise.optim.LBFGS) re-evaluates the loss through a closure at every "
    "step and is made for full batches: use it from Python",
    "sparseadam": "SparseAdam (gradwise.optim.SparseAdam) takes sparse gradients "
    "(nn.Embedding(sparse=True)), which the trainer's models do not make: use it from Python",
}


class OptimizerChoice(click.Choice):
    """``click.Choice`` of the optimizer names, which says why a name of a Python-only class
    (:data:`PYTHON_ONLY`) is not one of them."""

    def convert(self, value, param, ctx):
        why = PYTHON_ONLY.get(str(value).lower())
        if why is not None:
            self.fail(f"{value!r}: {why}; the trainer's optimizers are {', '.join(self.choices)}")
        return super().convert(value, param, ctx)


def echo_error(message: str) -> None:
    """``gradwise: error: MESSAGE`` on stderr, on one line, naming the rank in a distributed run."""
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
            echo_error(message)
            sys.exit(EXIT_USAGE)

    return wrapper


@contextlib.contextmanager
def no_empty_folder_left(folder):
    """``folder``, if what follows makes it and fails before writing any file into it, is
    removed again: a command refused or stopped at once leaves nothing behind."""
    made = Path(folder).absolute()  # the outermost folder of its path that is not there yet
    while not made.parent.exists():
        made = made.parent
    existed = made.exists()
    try:
        yield
    except BaseException:
        if not existed and made.is_dir() and not any(p.is_file() for p in made.rglob("*")):
            shutil.rmtree(made, ignore_errors=True)
        raise


@contextlib.contextmanager
def writing(option: str, path):
    """An ``OSError`` while writing ``path``, the value of ``option``, said as that option's
    (``--out /proc/x.csv: cannot write it (No such file or directory)``)."""
    try:
        yield
    except OSError as e:
        raise ConfigError(f"{option} {path}: cannot write it ({e.strerror or e})") from None


@contextlib.contextmanager
def sigterm_as_interrupt(terminated: list[bool]):
    """SIGTERM handled as Ctrl-C (``KeyboardInterrupt``) for the duration; ``terminated``
    records that it came. It goes through the current SIGINT handler, so that a checkpoint
    being written is finished first, as for Ctrl-C. Only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        terminated.append(True)
        on_interrupt = signal.getsignal(signal.SIGINT)
        if callable(on_interrupt):
            on_interrupt(signal.SIGINT, frame)
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


@contextlib.contextmanager
def interruptible(kept: Callable[[], str]):
    """Ctrl-C or SIGTERM ends the command with one line on stderr, ``gradwise: interrupted:
    KEPT`` (``terminated (SIGTERM)`` for SIGTERM), and exit code 130 (143); ``kept()`` says,
    when it happens, what the command had written and keeps."""
    terminated: list[bool] = []
    try:
        with sigterm_as_interrupt(terminated):
            yield
    except KeyboardInterrupt:
        what = "terminated (SIGTERM)" if terminated else "interrupted"
        click.echo(f"\ngradwise: {what}: {kept()}", err=True)
        sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


def did_you_mean(word: str, choices) -> str:
    """``" (did you mean 'X'?)"`` for the choice nearest to ``word`` (difflib; options are
    compared without their dashes), else ``""``."""
    names = {str(c).lstrip("-"): str(c) for c in choices}
    near = difflib.get_close_matches(str(word).lstrip("-"), list(names), n=1, cutoff=0.6)
    return f" (did you mean {names[near[0]]!r}?)" if near else ""


def usage_error_line(e: click.UsageError, args=(), ctx: click.Context | None = None) -> str:
    """A click usage error as one line: its message, a suggestion for a near miss (an option,
    a choice or a command name; the plural option, e.g. ``--optimizers`` for a list given to
    ``--optimizer``) and where to read more. ``args``: the command's own arguments, for the
    value given; ``ctx``: the command's context, where the error has none."""
    ctx = e.ctx or ctx
    message = e.format_message().rstrip(".")
    command = ctx.command if ctx else None
    if isinstance(e, click.NoSuchOption) and command is not None:
        names = [opt for param in command.params for opt in param.opts + param.secondary_opts]
        message = f"No such option: {e.option_name}{did_you_mean(e.option_name, names)}"
    elif isinstance(e, click.BadParameter) and isinstance(e.param, click.Option):
        value = _value_given(args, e.param)
        plural = [p for p in command.params if p.name == f"{e.param.name}s"] if command else []
        if plural and (value is None or "," in value):
            message += f" (for several values, use {plural[0].opts[0]})"
        elif isinstance(e.param.type, click.Choice) and value is not None:
            message += did_you_mean(value, e.param.type.choices)
    where = f"{ctx.command_path} --help" if ctx else "gradwise --help"
    return f"{message} (see {where})"


def _value_given(args, param: click.Parameter) -> str | None:
    """The value last given to the option ``param`` in ``args`` (``--opt V`` or ``--opt=V``)."""
    value = None
    for i, arg in enumerate(args):
        for opt in param.opts:
            if arg == opt and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(f"{opt}="):
                value = arg[len(opt) + 1 :]
    return value


class OneLineErrors(click.Command):
    """A command whose usage errors (bad option values, unknown options) are one line too:
    ``gradwise: error: ...`` (see :func:`usage_error_line`) and exit code 2, instead of click's
    usage block."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, list(args))
        except click.UsageError as e:
            if os.environ.get("GRADWISE_DEBUG"):
                raise
            echo_error(usage_error_line(e, args, ctx))
            ctx.exit(EXIT_USAGE)


class OneLineArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are gradwise's one line and exit code 2 too (for the
    commands whose options argparse reads: ``gradwise bench``), with the nearest option
    suggested for an unknown one."""

    def error(self, message: str):
        unknown = message.partition("unrecognized arguments: ")[2].split()
        if unknown and unknown[0].startswith("-"):
            names = [opt for action in self._actions for opt in action.option_strings]
            message = f"No such option: {unknown[0]}{did_you_mean(unknown[0], names)}"
        echo_error(f"{message} (see {self.prog} --help)")
        sys.exit(EXIT_USAGE)


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


#: an example of each pair option, torch's defaults
PAIR_EXAMPLES = {"betas": "0.9,0.999", "etas": "0.5,1.2", "step_sizes": "1e-6,50"}


def _pair(ctx, param, value):
    if value is None:
        return None
    try:
        first, second = (float(v) for v in value.split(","))
    except ValueError:
        example = PAIR_EXAMPLES.get(param.name, "0.9,0.999")
        raise click.BadParameter(
            f"expected two numbers separated by a comma (e.g. {example}), got {value!r}"
        ) from None
    return (first, second)


def hyperparameter_options() -> list:
    """One click option per hyperparameter that only some optimizers take
    (:data:`gradwise.train.optimizers.HYPERPARAMETERS`), its help naming those optimizers."""
    from gradwise.train.optimizers import HYPERPARAMETERS, defaults_text, users_text

    options = []
    for name, hyper in HYPERPARAMETERS.items():
        flag = "--" + name.replace("_", "-")
        help = f"{hyper.help} For {users_text(name)}."
        if hyper.kind == "flag":
            option = click.option(f"{flag}/--no-{flag[2:]}", default=None, help=help)
            options.append(option)
            continue
        help += f"  [default: {defaults_text(name)}]"
        if hyper.kind == "pair":
            option = click.option(flag, callback=_pair, help=help)
        elif hyper.kind == "int":
            option = click.option(flag, type=int, help=help)
        else:
            option = click.option(flag, type=float, help=help)
        options.append(option)
    return options


def train_options(fn):
    """The options that describe a training configuration (shared by train, lr-find, compare)."""
    from gradwise.init import SCHEMES
    from gradwise.train.config import OPTIMIZERS

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
            help="mlp, cnn1d, or your own builder module:function or path/to/file.py:function, "
            "called as function(input_shape, n_outputs) -> nn.Module.  "
            "[default: per dataset: mlp, cnn1d for mnist1d]",
        ),
        click.option("--hidden", callback=csv_ints, help="MLP hidden widths, e.g. 128,128."),
        click.option("--channels", callback=csv_ints, help="cnn1d channels per conv layer."),
        click.option(
            "--activation",
            help="relu, leaky_relu, gelu, silu, tanh, sigmoid, selu, elu.  [default: relu]",
        ),
        click.option("--dropout", type=float, help="Dropout rate after each hidden layer."),
        click.option(
            "--augment-shift",
            type=int,
            help="Shift each training sample by up to this many positions, a new random shift "
            "each epoch (sequences: mnist1d).  [default: 0, none]",
        ),
        click.option(
            "--init",
            type=click.Choice(SCHEMES),
            help="Weight init; auto = He for ReLU-like, Xavier for tanh/sigmoid, LeCun for SELU.",
        ),
        click.option(
            "--optimizer", type=OptimizerChoice(OPTIMIZERS), help="Update rule.  [default: adam]"
        ),
        click.option("--lr", type=float, help="Learning rate.  [default: per optimizer]"),
        *hyperparameter_options(),
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
            "--clip-grad-norm",
            type=float,
            help="Clip the gradients' global L2 norm to this before each step.",
        ),
        click.option(
            "--precision",
            type=click.Choice(["32", "bf16", "fp16"]),
            help="32; bf16: the forward pass in bfloat16 autocast; fp16: in float16, with a "
            "dynamic loss scale (for CUDA).  [default: 32]",
        ),
        click.option(
            "--ema",
            type=float,
            help="Keep an EMA of the weights with this decay (e.g. 0.999); validate and end "
            "with it.",
        ),
        click.option(
            "--accumulate",
            type=int,
            help="Add up the gradients of N batches before each step.  [default: 1]",
        ),
        click.option(
            "--tensorboard/--no-tensorboard",
            default=None,
            help="Log to RUN/tensorboard for TensorBoard (needs the tensorboard package).",
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


def leave_out(*names: str):
    """A decorator that removes the options ``names`` (parameter names, e.g. ``"early_stop"``)
    from a command: the training options that do not apply to it."""

    def decorate(command: click.Command) -> click.Command:
        unknown = set(names) - {param.name for param in command.params}
        if unknown:
            raise ValueError(f"leave_out: {command.name} has no option {sorted(unknown)}")
        command.params = [param for param in command.params if param.name not in names]
        return command

    return decorate


CONFIG_OPTIONS = (
    "dataset",
    "data",
    "target",
    "model",
    "hidden",
    "channels",
    "activation",
    "dropout",
    "augment_shift",
    "init",
    "optimizer",
    "lr",
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
    "init_from",
    "clip_grad_norm",
    "precision",
    "ema",
    "tensorboard",
    "accumulate",
)


def config_from_options(options: dict):
    """A TrainConfig from a config file (if any) overridden by the options given."""
    from gradwise.train.config import TrainConfig
    from gradwise.train.optimizers import HYPERPARAMETERS

    config_file = options.pop("config_file", None)
    base = TrainConfig.from_toml(config_file) if config_file else TrainConfig()
    names = (*CONFIG_OPTIONS, *HYPERPARAMETERS)
    values = {k: v for k, v in options.items() if k in names and v is not None}
    if values.get("optimizer", base.optimizer) != base.optimizer:
        base = _for_optimizer(base, values["optimizer"])
    if "batch_size" in values:
        values["batch_size"] = str(values["batch_size"])
    if "dataset" in values and "data" in values:
        raise ConfigError(
            f"--dataset {values['dataset']} and --data {values['data']}: --data trains on your "
            "file instead of a bundled dataset; give one of them"
        )
    if "dataset" in values:
        values["data"] = None
    if values.get("data") is not None and not Path(values["data"]).exists():
        raise DataError(f"--data: file {values['data']} does not exist")
    return dataclasses.replace(base, **values).with_absolute_paths()


def _for_optimizer(config, optimizer: str):
    """``config`` (a file's, for another optimizer) without the settings that ``optimizer``
    does not take: a run's config.toml holds its optimizer's settings, and reused with
    ``--optimizer`` they would otherwise be refused as having no effect. The settings both
    take (the learning rate, weight decay, ...) carry over."""
    from gradwise.train.config import OPTIMIZER_OPTIONS, OPTION_DEFAULTS

    dropped = {
        name: OPTION_DEFAULTS[name]
        for name, taking in OPTIMIZER_OPTIONS.items()
        if optimizer not in taking
    }
    return dataclasses.replace(config, **dropped)


@contextlib.contextmanager
def warnings_as_lines(*categories: type[Warning], shown: bool = True):
    """While a command runs: warnings of ``categories`` as one line on stderr each, ``gradwise:
    warning: ...``, every time one is given (none where not ``shown``: another process of the
    run says them); any other warning as Python shows it."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, categories):
            original(message, category, filename, lineno, file, line)
        elif shown:
            click.echo(f"gradwise: warning: {message}", err=True)

    with warnings.catch_warnings():  # restores the filters and showwarning after
        for category in categories:
            warnings.simplefilter("always", category)
        warnings.showwarning = show
        yield


def table_console():
    """A console for tables: the terminal's width, or 160 columns when piped (no wrapping)."""
    from rich.console import Console

    out = Console()
    return out if out.is_terminal else Console(width=160)

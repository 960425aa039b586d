"""The ``gradwise`` command line: train, lr-find, compare, schedule, bench, cache, export,
predict.

This package holds the top-level click group, :func:`main` (the ``gradwise`` console script and
``python -m gradwise``), and registers the commands in :data:`COMMANDS`; each command group lives
in its own module (:mod:`~gradwise.cli.train`, :mod:`~gradwise.cli.lab`, ...), imported only when
one of its commands runs (:class:`~gradwise.cli.group.LazyGroup`: ``gradwise --help`` does not
import torch), and what they share in :mod:`~gradwise.cli.options`. Command modules import only
``options``, never each other or this package's :func:`main`.

Bad input ends with one line on stderr, ``gradwise: error: ...``, and exit code 2 (no traceback;
set ``GRADWISE_DEBUG=1`` to see one). A training run that diverges (NaN / inf) ends the same way;
Ctrl-C ends ``gradwise train`` with exit code 130 after saying how to resume. gradwise's own
warnings (:class:`~gradwise.errors.CheckpointWarning`: a damaged checkpoint passed over) are one
line each, ``gradwise: warning: ...``.
"""

from __future__ import annotations

import click

from gradwise import __version__
from gradwise.cli.group import LazyGroup

#: The commands: name -> (module, click command in it, the one line ``gradwise --help`` shows).
#: To add a command, add its line; tests/test_cli.py checks that each one imports and that its
#: line is the first sentence of its docstring.
COMMANDS = {
    "train": (
        "gradwise.cli.train",
        "train_command",
        "Train a model and write a run folder: config.toml, model.json, metrics.csv, "
        "history.jsonl, checkpoint.pt, curves.png and confusion.png.",
    ),
    "lr-find": ("gradwise.cli.lab", "lr_find_command", "Find a learning rate: the range test."),
    "compare": (
        "gradwise.cli.lab",
        "compare_command",
        "Compare configurations: every combination of the lists given, each over several seeds.",
    ),
    "schedule": (
        "gradwise.cli.schedule",
        "schedule_command",
        "Plot learning-rate schedules before training, and print a few values.",
    ),
    "bench": (
        "gradwise.cli.bench",
        "bench_command",
        "Time gradwise against torch.optim: whole training iterations, or the step alone.",
    ),
    "cache": (
        "gradwise.cli.cache",
        "cache_command",
        "Show or clear the cache of compiled optimizer kernels.",
    ),
    "export": (
        "gradwise.cli.export",
        "export_command",
        "Export the trained model of the run folder RUN (its latest checkpoint).",
    ),
    "predict": (
        "gradwise.cli.predict",
        "predict_command",
        "Predict the rows of a CSV file with the model of the run folder RUN (or a file from "
        "`gradwise export`).",
    ),
    "tune": ("gradwise.cli.tune", "tune_command", "Search training configurations with Optuna."),
}


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="gradwise")
@click.pass_context
def main(ctx: click.Context) -> None:
    """gradwise: train neural networks well and fast on PyTorch.

    Start with `gradwise train` (digits, an MLP and Adam, under 10 seconds).
    """
    from gradwise.cli.options import warnings_as_lines
    from gradwise.errors import CheckpointWarning

    ctx.with_resource(warnings_as_lines(CheckpointWarning))

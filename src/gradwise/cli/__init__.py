"""The ``gradwise`` command line: train, lr-find, compare, schedule, bench, cache.

This package holds the top-level click group, :func:`main` (the ``gradwise`` console script and
``python -m gradwise``), and registers the commands; each command group lives in its own module
(:mod:`~gradwise.cli.train`, :mod:`~gradwise.cli.lab`, :mod:`~gradwise.cli.schedule`,
:mod:`~gradwise.cli.bench`, :mod:`~gradwise.cli.cache`), and what they share in
:mod:`~gradwise.cli.options`. Command modules import only ``options``, never each other or this
package's :func:`main`.

Bad input ends with one line on stderr, ``gradwise: error: ...``, and exit code 2 (no traceback;
set ``GRADWISE_DEBUG=1`` to see one). A training run that diverges (NaN / inf) ends the same way;
Ctrl-C ends ``gradwise train`` with exit code 130 after saying how to resume.
"""

from __future__ import annotations

import click

from gradwise import __version__
from gradwise.cli import bench, cache, export, lab, predict, schedule, train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gradwise")
def main() -> None:
    """gradwise: train neural networks well and fast on PyTorch.

    Start with `gradwise train` (digits, an MLP and Adam, under 10 seconds).
    """


main.add_command(train.train_command)
main.add_command(lab.lr_find_command)
main.add_command(lab.compare_command)
main.add_command(schedule.schedule_command)
main.add_command(bench.bench_command)
main.add_command(cache.cache_command)
main.add_command(export.export_command)
main.add_command(predict.predict_command)

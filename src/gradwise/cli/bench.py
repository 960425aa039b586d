"""``gradwise bench``: the benchmarks of gradwise against torch.optim, behind one command.

The arguments go untouched to the harness's own argparse command line (so that ``gradwise bench``
and ``python benchmarks/*.py`` take the same options): ``--train-step`` picks
:mod:`gradwise.lab.train_step` (whole iterations), otherwise :mod:`gradwise.lab.bench` (the step
alone). Its errors are one line too (:class:`~gradwise.cli.options.OneLineArgumentParser`).
"""

from __future__ import annotations

import sys

import click

from gradwise.cli.options import OneLineArgumentParser


@click.command(
    "bench",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_command(args):
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
        prog = "gradwise bench --train-step"
        sys.exit(train_step_main(args, prog=prog, parser_class=OneLineArgumentParser))
    if {"-h", "--help"} & set(args):  # the step's options follow; say where the others are
        click.echo(
            "gradwise bench --train-step [...] times whole training iterations (its options: "
            "gradwise bench --train-step --help).\ngradwise bench [...] times optimizer.step() "
            "alone, with the options below.\n"
        )
    from gradwise.lab.bench import main as bench_main

    sys.exit(bench_main(args, prog="gradwise bench", parser_class=OneLineArgumentParser))

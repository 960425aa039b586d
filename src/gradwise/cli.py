"""The ``gradwise`` command line (placeholder until the commands land)."""

import click

from gradwise import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gradwise")
def main() -> None:
    """gradwise: train neural networks well and fast on PyTorch."""

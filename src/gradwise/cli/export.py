"""``gradwise export``: write a run's trained model as a file other programs load."""

from __future__ import annotations

import contextlib

import click

from gradwise.cli.options import OneLineErrors, friendly, writing


@click.command("export", cls=OneLineErrors)
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pt", "safetensors", "onnx"]),
    default="pt",
    show_default=True,
    help="pt: state_dict + config for torch.load(weights_only=True); safetensors; onnx "
    "(needs pip install 'gradwise[onnx]').",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="File to write.  [default: RUN/model.<format>]",
)
@friendly
def export_command(run, fmt, out):
    """Export the trained model of the run folder RUN (its latest checkpoint).

    Load it back with `gradwise.load(FILE)` (pt, safetensors) or `gradwise.load(RUN)`: the
    nn.Module in eval mode, rebuilt from the saved model configuration. Inputs are standardized
    features, as in training; `gradwise predict` does that for a CSV.
    """
    from gradwise.train.export import export

    with writing("--out", out) if out is not None else contextlib.nullcontext():
        path = export(run, fmt, out)
    click.echo(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB, {fmt})")

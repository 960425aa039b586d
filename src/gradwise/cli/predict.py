"""``gradwise predict``: a trained model's predictions for new rows of a CSV file."""

from __future__ import annotations

import click

from gradwise.cli.options import OneLineErrors, friendly, writing


@click.command("predict", cls=OneLineErrors)
@click.argument("run", type=click.Path(exists=True))
@click.option(
    "--data",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="CSV (or TSV) with a header row: the training data's feature columns, by name "
    "(other columns, e.g. the target, are ignored).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="CSV file to write.  [default: standard output]",
)
@friendly
def predict_command(run, data, out):
    """Predict the rows of a CSV file with the model of the run folder RUN (or a file from
    `gradwise export`).

    The features are standardized with the training data's statistics, as in training. Writes
    one row per input row: for classification `label` (the class name of the training CSV) and
    `p_<class>` probabilities; for regression `prediction`, in the target's own units.
    """
    from pathlib import Path

    from gradwise.train.predict import predict_csv

    text = predict_csv(run, data)
    if out is None:
        click.echo(text, nl=False)
        return
    with writing("--out", out):
        Path(out).write_text(text)
    click.echo(f"wrote {text.count(chr(10)) - 1} predictions to {out}")

"""``gradwise schedule``: plot learning-rate schedules before training.

The rates come from the library's own schedule objects (:func:`schedule_rates`), so the plot is
what ``gradwise train --schedule`` will do.
"""

from __future__ import annotations

import math

import click

from gradwise.cli.options import OneLineErrors, csv_ints, friendly, table_console
from gradwise.errors import ConfigError


@click.command("schedule", cls=OneLineErrors)
@click.argument("texts", nargs=-1, required=True, metavar="SCHEDULE...")
@click.option("--steps", type=int, default=1000, show_default=True, help="Steps to draw.")
@click.option(
    "--plateau-at",
    callback=csv_ints,
    help="Steps at which a reduce-on-plateau cut happens, e.g. 400,700 (to see what cuts do).",
)
@click.option(
    "--factor",
    type=float,
    default=0.5,
    show_default=True,
    help="Each plateau cut multiplies by this.",
)
@click.option("--base-lr", type=float, default=1e-3, show_default=True, help="The base rate.")
@click.option("--log", "log_scale", is_flag=True, help="Log scale for the rate.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default="lr.png",
    show_default=True,
    help="PNG to write.",
)
@friendly
def schedule_command(texts, steps, plateau_at, factor, base_lr, log_scale, out):
    """Plot learning-rate schedules before training, and print a few values.

    SCHEDULE is the text that `gradwise train --schedule` takes: segments joined by commas,
    run one after another, each counting steps from its own start:

    \b
      constant                      1, forever
      constant:N[:VALUE]            VALUE (default 1) for N steps
      warmup:N[:START]              linear from START (default 0) to 1 over N steps
      cosine:N[:FINAL]              half a cosine from 1 to FINAL (default 0) over N steps
      onecycle:N[:PCT_START]        one cycle over N steps (PyTorch's OneCycleLR shape)
      step:SIZE[:GAMMA]             x GAMMA (default 0.1) every SIZE steps, forever
      multistep:M1/M2/...[:GAMMA]   x GAMMA at steps M1, M2, ..., forever
      exp:GAMMA                     GAMMA ** t, forever

    cosine and onecycle without N last until --steps. Give several schedules to overlay them.
    --plateau-at shows what reduce-on-plateau cuts (--plateau in train) do on top: the rate is
    base x schedule(t) x factor^(cuts so far). In `gradwise train` a step is one batch.

    \b
    Examples:
      gradwise schedule "warmup:100,cosine:900" --plateau-at 400,700 --steps 1000 --out lr.png
      gradwise schedule "step:300:0.5" "exp:0.998" "cosine" --steps 1000
    """
    from gradwise.lab.plots import lr_text, plot_schedule

    if steps < 1:
        raise ConfigError(f"--steps must be at least 1; received --steps {steps}")
    if not 0 < factor < 1:
        raise ConfigError(f"--factor must be in (0, 1); received --factor {factor:g}")
    if not (math.isfinite(base_lr) and base_lr > 0):
        raise ConfigError(f"--base-lr must be a positive number; received --base-lr {base_lr:g}")
    cuts = sorted(set(plateau_at or ()))
    for cut in cuts:
        if cut > steps:
            raise ConfigError(f"--plateau-at: step {cut} is past --steps {steps}")
    curves = []
    for text in texts:
        curves.append((text, schedule_rates(text, steps, base_lr)))
        if cuts:
            at = ",".join(map(str, cuts))
            rates = schedule_rates(text, steps, base_lr, cuts=cuts, factor=factor)
            curves.append((f"{text} + plateau cuts at {at} (x{factor:g})", rates))
    xs = list(range(steps + 1))
    title = "Learning-rate schedule" + ("s" if len(texts) > 1 else f": {texts[0]}")
    title += f"  (base lr {lr_text(base_lr)})"
    path = plot_schedule(xs, curves, out, title=title, cuts=cuts, log=log_scale)

    from rich.table import Table

    marks = sorted(
        {0, steps, *cuts, *(c - 1 for c in cuts if c > 0)}
        | {round(steps * f) for f in (0.1, 0.25, 0.5, 0.75, 0.9)}
    )
    table = Table(title="learning rate at", title_justify="left")
    table.add_column("step", justify="right")
    for label, _ in curves:
        table.add_column(label, justify="right")
    for t in marks:
        table.add_row(str(t), *(f"{rates[t]:.4g}" for _, rates in curves))
    table_console().print(table)
    click.echo(f"plot: {path}")


def schedule_rates(
    text: str, steps: int, base_lr: float, *, cuts=(), factor: float = 0.5
) -> list[float]:
    """The rates a :class:`gradwise.schedules.Scheduler` sets at steps ``0 … steps`` for the
    schedule ``text``, with a plateau cut (of ``factor``) forced at each step in ``cuts``: the
    library's own objects, so the plot is what training will do."""
    import torch

    from gradwise.schedules import Plateau, Scheduler, parse

    schedule = parse(text, total_steps=steps)
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=base_lr)
    plateau = Plateau(factor=factor, patience=0, threshold=0.0) if cuts else None
    scheduler = Scheduler(optimizer, schedule, plateau=plateau)
    if plateau is not None:
        scheduler.report(0.0)  # the best value: every later report is worse, so it cuts
    rates = []
    for t in range(steps + 1):
        if t in cuts:
            scheduler.report(math.inf)
        rates.append(scheduler.lrs[0])
        scheduler.step()
    return rates

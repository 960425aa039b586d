"""``gradwise bench`` and ``benchmarks/optim_step.py``: the step benchmark's argparse command
line (parse, run, print the table, optionally write JSON)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from gradwise.lab.bench.config import (
    DEFAULT_OPTIMIZERS,
    IMPLEMENTATIONS,
    OPTIMIZERS,
    Config,
    quick_config,
)
from gradwise.lab.bench.machine import available_cores, loadavg
from gradwise.lab.bench.render import render, write_json
from gradwise.lab.bench.runner import run
from gradwise.lab.bench.workloads import WORKLOADS


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser(
    prog: str = "optim_step", parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser
) -> argparse.ArgumentParser:
    """The argparse parser, named ``prog``, of class ``parser_class`` (``gradwise bench``
    passes one whose errors are one line)."""
    p = parser_class(
        prog=prog,
        description="Time optimizer.step(): torch for-loop / foreach / fused vs gradwise.",
    )
    p.add_argument("--quick", action="store_true", help="few rounds; finishes in under a minute")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch threads (default: all {available_cores()} cores available)",
    )
    p.add_argument(
        "--optimizers",
        type=_csv,
        default=list(DEFAULT_OPTIMIZERS),
        help=f"comma-separated, from {','.join(OPTIMIZERS)} "
        f"(default: {','.join(DEFAULT_OPTIMIZERS)})",
    )
    p.add_argument(
        "--workloads",
        type=_csv,
        default=list(WORKLOADS),
        help=f"comma-separated, from {','.join(WORKLOADS)} (default: all)",
    )
    p.add_argument(
        "--impls",
        type=_csv,
        default=list(IMPLEMENTATIONS),
        help=f"comma-separated implementations, from: {', '.join(IMPLEMENTATIONS)}",
    )
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (11; quick: 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (3; quick: 1)")
    p.add_argument(
        "--scale", type=float, default=1.0, help="shrink the workloads (e.g. 0.25); flagged"
    )
    p.add_argument("--no-bandwidth", action="store_true", help="skip the bandwidth measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", default=None, help="write all results as JSON")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {
        "workloads": args.workloads,
        "optimizers": args.optimizers,
        "implementations": args.impls,
        "threads": args.threads,
        "scale": args.scale,
        "bandwidth": not args.no_bandwidth,
        "seed": args.seed,
    }
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    if args.warmup is not None:
        overrides["warmup"] = args.warmup
    return quick_config(**overrides) if args.quick else Config(**overrides)


def main(
    argv: Sequence[str] | None = None,
    prog: str = "optim_step",
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> int:
    """Command-line entry point: parse ``argv``, run, print the table, optionally write JSON
    (``prog`` and ``parser_class``: see :func:`build_parser`)."""
    from rich.console import Console

    parser = build_parser(prog, parser_class)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        console = Console() if sys.stdout.isatty() else Console(width=132)
        err = Console(stderr=True, soft_wrap=True)
        cores = available_cores()
        threads = cfg.threads or cores
        err.print(
            f"[dim]load average at start: {loadavg()} · {threads} thread(s) of {cores} cores"
            f"{' · quick mode' if cfg.quick else ''}[/]"
        )
        results = run(cfg, log=lambda msg: err.print(f"[dim]{msg}[/]", highlight=False))
    except ValueError as exc:
        parser.error(str(exc))
    err.print(f"[dim]load average at end: {results['machine']['loadavg_end']}[/]")
    console.print(render(results))
    if args.json:
        write_json(results, args.json)
        err.print(f"[dim]wrote {args.json}[/]")
    return 0

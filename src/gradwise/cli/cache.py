"""``gradwise cache``: show or clear the disk cache of compiled optimizer kernels."""

from __future__ import annotations

import sys
import time

import click

from gradwise.cli.options import EXIT_USAGE, OneLineErrors, echo_error


@click.command("cache", cls=OneLineErrors)
@click.option("--clear", is_flag=True, help="Delete the cached kernels (all, or see --older-than).")
@click.option(
    "--older-than",
    "older_than",
    type=click.FloatRange(min=0),
    metavar="DAYS",
    help="With --clear: only the kernels not built or loaded in the last DAYS days.",
)
def cache_command(clear, older_than):
    """Show or clear the cache of compiled optimizer kernels.

    A fused kernel is built once per machine and configuration (a C kernel in ~0.3 s, an
    ahead-of-time one in ~20 s) and loads in milliseconds afterwards; the cache is
    $GRADWISE_KERNEL_CACHE (default ~/.cache/gradwise/kernels). Clearing it is always safe:
    what is needed is built again.
    """
    from rich.console import Console
    from rich.table import Table

    from gradwise.optim import kernels

    if older_than is not None and not clear:
        echo_error("--older-than DAYS goes with --clear (see gradwise cache --help)")
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

"""The step benchmark's report: the results dict as a rich table, or as JSON on disk."""

from __future__ import annotations

import json
import os
from typing import Any


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3g}" if ms < 1 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def render(results: dict[str, Any]):
    """The results as a ``rich.table.Table`` (rows grouped by workload and optimizer)."""
    from rich.table import Table

    m = results["machine"]
    bw = m.get("bandwidth_gbs")
    caption = [
        f"{m['cpu_model']} · {m['threads']} thread(s) of {m['cores_available']} · torch "
        f"{m['torch']} · load {m['loadavg_start']} → {m['loadavg_end']}",
        (
            f"bandwidth a += s*b: {bw:.1f} GB/s at the start and end; % bw is against the "
            "probes taken in each row group's own rounds"
            if bw
            else "bandwidth not measured"
        ),
        f"{results['config']['rounds']} interleaved rounds; spread = interquartile range; "
        "×faster = best torch ms / ms; faults/step = minor page faults (fresh memory)",
    ]
    caption += [f"note: {n}" for n in results["notes"]]
    caption += [f"[bold red]warning: {w}[/]" for w in results["warnings"]]
    title = "optimizer.step()" + (" — quick mode" if results["config"].get("quick") else "")
    table = Table(title=title, caption="\n".join(caption), caption_justify="left")
    table.add_column("workload")
    table.add_column("optimizer", no_wrap=True)
    table.add_column("implementation", no_wrap=True)
    table.add_column("ms/step", justify="right")
    table.add_column("spread (IQR)", justify="right")
    table.add_column("×faster", justify="right")
    table.add_column("GB/s", justify="right")
    table.add_column("% bw", justify="right")
    table.add_column("faults/step", justify="right")
    previous = None
    for r in results["results"]:
        key = (r["workload"], r["optimizer"])
        first_of_group = key != previous
        if first_of_group and previous is not None:
            table.add_section()
        first_of_workload = previous is None or previous[0] != r["workload"]
        previous = key
        speed = r["speedup_vs_best_torch"]
        fast = f"{speed:.2f}×" if speed is not None else "–"
        if speed is not None and speed >= 1.0 and r["implementation"].startswith("gradwise"):
            fast = f"[green]{fast}[/]"
        frac = r["bandwidth_fraction"]
        flag = "" if r["params_finite"] else " [red](non-finite!)[/]"
        table.add_row(
            r["workload_label"] if first_of_workload and first_of_group else "",
            r["optimizer_label"] if first_of_group else "",
            r["implementation"] + flag,
            _fmt_ms(r["ms_median"]),
            f"{_fmt_ms(r['ms_q1'])}–{_fmt_ms(r['ms_q3'])}",
            fast,
            f"{r['gbs']:.1f}",
            f"{100 * frac:.0f}%" if frac is not None else "–",
            f"{faults:.0f}" if (faults := r.get("minor_faults_per_step")) is not None else "–",
        )
    return table


def write_json(results: dict[str, Any], path: str | os.PathLike) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")

"""The Markdown table of BENCHMARKS.md from an ``optim_step.py --json`` result.

python benchmarks/table_optim_step.py docs/optim_step.json
"""

from __future__ import annotations

import json
import sys

COLUMNS = ("torch for-loop", "torch foreach", "torch fused", "gradwise", "gradwise eager")


def _ms(value: float | None, bold: bool = False) -> str:
    if value is None:
        return "—"
    text = f"{value:.3f}" if value < 1 else f"{value:.2f}"
    return f"**{text}**" if bold else text


def _ratio(value: float) -> str:
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"**{value:.{digits}f}×**"


def table(results: dict) -> str:
    groups: dict[tuple[str, str], dict[str, dict]] = {}
    for row in results["results"]:
        key = (row["workload_label"], row["optimizer_label"])
        groups.setdefault(key, {})[row["implementation"]] = row
    lines = [
        "| workload | optimizer | "
        + " | ".join(f"**{c}**" if c == "gradwise" else c for c in COLUMNS)
        + " | gradwise vs best torch | gradwise GB/s (% of the group's a+=s·b GB/s) |",
        "|---" * (len(COLUMNS) + 4) + "|",
    ]
    for (workload, optimizer), impls in groups.items():
        ours = impls.get("gradwise")
        cells = [
            _ms(impls[c]["ms_median"] if c in impls else None, c == "gradwise") for c in COLUMNS
        ]
        if ours is None:
            tail = ["—", "—"]
        else:
            fraction = ours.get("bandwidth_fraction")
            probe = ours.get("bandwidth_gbs")
            bandwidth = f"{ours['gbs']:.1f}"
            if fraction is not None and probe:
                bandwidth += f" ({100 * fraction:.0f}% of {probe:.0f})"
            tail = [_ratio(ours["speedup_vs_best_torch"]), bandwidth]
        lines.append("| " + " | ".join([workload, optimizer, *cells, *tail]) + " |")
    return "\n".join(lines)


def main(path: str) -> None:
    with open(path) as f:
        print(table(json.load(f)))


if __name__ == "__main__":
    main(*sys.argv[1:])

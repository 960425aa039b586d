"""BENCHMARKS.md's whole-iteration table from a ``train_step.py --json`` file.

python benchmarks/table_train_step.py docs/train_step_t1.json
"""

from __future__ import annotations

import json
import sys


def table(results: dict) -> str:
    rows = results["rows"]
    names = ("torch", "gradwise", "gradwise views", "heavyball")
    impls = [i for i in names if any(i in r["ms"] for r in rows)]
    ratio_cols = [i for i in impls if i != "torch"]
    head = ["model", "optimizer", "reference", *(f"{i} ms" for i in impls)]
    head += [f"ratio {i}" for i in ratio_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        reference = r.get("reference", "torch.optim").replace("torch.optim.", "torch ")
        cells = [r["model"], r["optimizer"], reference]
        cells += [f"{r['ms'][i]:.1f}" if i in r["ms"] else "–" for i in impls]
        cells += [
            "–"
            if i not in r["ratio"]
            else f"**{r['ratio'][i]:.3f}×**"
            if i == "gradwise"
            else f"{r['ratio'][i]:.3f}×"
            for i in ratio_cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    geo = results.get("geomean_ratio", {})
    if geo:
        cells = [
            "geometric mean",
            "",
            "",
            *("" for _ in impls),
            *(f"{geo[i]:.3f}×" if i in geo else "" for i in ratio_cols),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    cfg = results["config"]
    lines.append("")
    lines.append(
        f"{cfg['threads']} thread(s), median of {cfg['rounds']} interleaved rounds of "
        f"{cfg['iterations']} iterations, torch {cfg['torch']}; load average "
        f"{_load(results['loadavg']['start'])} → {_load(results['loadavg']['end'])}."
    )
    return "\n".join(lines)


def _load(values) -> str:
    return "?" if not values else f"{values[0]:.2f}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        print(table(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

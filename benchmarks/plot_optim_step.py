"""Bar chart of an ``optim_step.py --json`` result: ms per step of every implementation.

python benchmarks/plot_optim_step.py optim_step.json docs/optim_step.png
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "torch for-loop": "#bbbbbb",
    "torch foreach": "#888888",
    "torch fused": "#444444",
    "gradwise eager": "#9ecae1",
    "gradwise (separate grads)": "#6baed6",
    "gradwise": "#08519c",
}


def main(src: str, out: str) -> None:
    with open(src) as f:
        results = json.load(f)
    rows = results["results"]
    workloads = list(dict.fromkeys(r["workload_label"] for r in rows))
    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    impls = [i for i in COLORS if any(r["implementation"] == i for r in rows)]
    fig, axes = plt.subplots(
        1, len(workloads), figsize=(5.2 * len(workloads), 5.0), constrained_layout=True
    )
    axes = axes if len(workloads) > 1 else [axes]
    width = 0.8 / len(impls)
    for ax, wl in zip(axes, workloads):
        for j, impl in enumerate(impls):
            xs, ys = [], []
            for i, opt in enumerate(optimizers):
                match = [
                    r
                    for r in rows
                    if r["workload_label"] == wl
                    and r["optimizer"] == opt
                    and r["implementation"] == impl
                ]
                if match:
                    xs.append(i + (j - (len(impls) - 1) / 2) * width)
                    ys.append(match[0]["ms_median"])
            ax.bar(xs, ys, width, color=COLORS[impl], label=impl)
        ax.set_yscale("log")
        ax.set_xticks(range(len(optimizers)), optimizers)
        ax.set_ylabel("ms per optimizer.step() (log scale, lower is better)")
        ax.set_title(wl)
        ax.grid(axis="y", alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(impls), fontsize=9)
    machine = results.get("machine", {})
    fig.suptitle(
        f"Optimizer step: gradwise vs torch.optim — {machine.get('cpu_model', '')}, "
        f"threads: {machine.get('threads', '?')}, torch {machine.get('torch', '')}"
    )
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:3])

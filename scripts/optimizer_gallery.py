"""Every optimizer gradwise trains by name, on MNIST-1D, each at the rate its own range test
suggests: docs/gallery/optimizers-lrfind-mnist1d.png and the table of docs/optimizers.md.

    python scripts/optimizer_gallery.py [--model cnn1d] [--seeds 2] [--jobs 2] [--out DIR]

For each name: ``lr_find_for`` (the range test ``gradwise lr-find`` runs) on the dataset's
default model and batch, then one ``compare`` of all of them at those rates, with the dataset's
defaults otherwise (schedule, epochs, dropout), except that Schedule-Free trains with a
constant rate (it replaces the schedule). A name whose loss never fell in the range test keeps
its default rate (said in the output). Rprop is left out unless named: it follows the sign of
each gradient, a full-batch method that mini-batches make noisy (README's optimizer table).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

from gradwise.lab import compare, lr_find_for
from gradwise.train.config import OPTIMIZERS, TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mnist1d")
    parser.add_argument("--model", default=None, help="default: the dataset's")
    parser.add_argument("--optimizers", default=",".join(n for n in OPTIMIZERS if n != "rprop"))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="runs/gallery/optimizers-lrfind")
    parser.add_argument("--docs", default="docs/gallery", help="where the PNG is copied")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs, rates = {}, {}
    for name in args.optimizers.split(","):
        own = {"schedule": "constant"} if name.startswith("schedulefree") else {}
        config = TrainConfig(dataset=args.dataset, model=args.model, optimizer=name, **own)
        config = dataclasses.replace(config, threads=1).resolved()
        found = lr_find_for(config).suggestion
        rates[name] = {"default": config.lr, "lr_find": found}
        lr = found if found is not None else config.lr
        print(f"{name:20s} default {config.lr:.3g}  lr-find {found}  -> {lr:.3g}", flush=True)
        configs[f"{name} lr={lr:.2g}"] = TrainConfig(
            dataset=args.dataset, model=args.model, optimizer=name, lr=lr, **own
        )
    (out / "rates.json").write_text(json.dumps(rates, indent=1))
    compare(
        configs,
        seeds=args.seeds,
        jobs=args.jobs,
        out=out,
        title=f"Every optimizer on {args.dataset}, each at its lr-find rate",
        command="python scripts/optimizer_gallery.py",
    )
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "curves.png", docs / f"optimizers-lrfind-{args.dataset}.png")
    print(f"wrote {out}/summary.md and {docs}/optimizers-lrfind-{args.dataset}.png")


if __name__ == "__main__":
    main()

"""End to end: gradwise's ``fit()`` against a minimal hand-written PyTorch loop (and Lightning).

Every contender trains the same model (same initial weights) on the same data with the same
batch size, epochs and optimizer class; one training is one round, and the contenders run
interleaved in one process (A, B, C, then C, B, A, ...: a slow drift of the machine cancels within a
pair of rounds). The table gives the median wall time per training, its ratio to the minimal
loop's median, and the median of the per-round ratios ("paired").

    python benchmarks/fit_overhead.py                    # digits MLP and mnist1d CNN
    python benchmarks/fit_overhead.py --threads 1 --rounds 15 --json fit.json

Contenders:
  minimal loop     shuffle once per epoch, slice batches, zero_grad/forward/backward/step
                   (gradwise.optim.Adam, the optimizer fit() uses)
  gradwise fit     gradwise.train.fit(progress=False): also records per-step loss and rate,
                   train accuracy, validation-free epochs, NaN/inf guard of loss and gradients
  lightning        Trainer.fit on a LightningModule with the same model and a DataLoader
                   (only if the lightning package is installed)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn

import gradwise.optim as go
from gradwise.train import fit, load_dataset
from gradwise.train.models import cnn1d, mlp

WORKLOADS = {
    "digits-mlp": dict(dataset="digits", batch_size=32, epochs=20, lr=1e-3),
    "mnist1d-cnn": dict(dataset="mnist1d", batch_size=100, epochs=10, lr=1e-2),
}


def make_model(name: str, data) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    if name == "mnist1d-cnn":
        return cnn1d(data.n_features, data.n_classes, generator=generator)
    return mlp(data.n_features, data.n_classes, hidden=(128, 128), generator=generator)


def minimal_loop(model, x, y, *, lr, epochs, batch_size, seed=0):
    opt = go.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        xs, ys = x[order], y[order]
        for i in range(0, n, batch_size):
            opt.zero_grad(set_to_none=False)
            nn.functional.cross_entropy(
                model(xs[i : i + batch_size]), ys[i : i + batch_size]
            ).backward()
            opt.step()


def gradwise_fit(model, x, y, *, lr, epochs, batch_size, seed=0):
    fit(
        model,
        (x, y),
        optimizer=go.Adam(model.parameters(), lr=lr),
        epochs=epochs,
        batch_size=batch_size,
        progress=False,
        seed=seed,
    )


def lightning_fit(model, x, y, *, lr, epochs, batch_size, seed=0):
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            xb, yb = batch
            return nn.functional.cross_entropy(self.model(xb), yb)

        def configure_optimizers(self):
            return go.Adam(self.model.parameters(), lr=lr)

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(), loader)


def lightning_available() -> bool:
    try:
        import lightning  # noqa: F401
    except ImportError:
        return False
    return True


def run(workloads, rounds: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    contenders = {"minimal loop": minimal_loop, "gradwise fit": gradwise_fit}
    if lightning_available():
        import logging
        import warnings

        logging.getLogger("lightning").setLevel(logging.ERROR)
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
        contenders["lightning"] = lightning_fit
    results = {
        "threads": threads,
        "rounds": rounds,
        "load_start": os.getloadavg(),
        "torch": torch.__version__,
        "workloads": {},
    }
    for name in workloads:
        spec = WORKLOADS[name]
        data = load_dataset(spec["dataset"])
        x, y = data.x_train, data.y_train
        kw = dict(lr=spec["lr"], epochs=spec["epochs"], batch_size=spec["batch_size"])
        times: dict[str, list[float]] = {c: [] for c in contenders}
        for fn in contenders.values():  # warm-up: first-call costs out of the timings
            fn(make_model(name, data), x, y, **dict(kw, epochs=1))
        order = list(contenders.items())
        for r in range(rounds):  # A B C, C B A, A B C, ...: a drift within a pair cancels
            for label, fn in order if r % 2 == 0 else order[::-1]:
                model = make_model(name, data)
                t = time.perf_counter()
                fn(model, x, y, **kw)
                times[label].append(time.perf_counter() - t)
        base = statistics.median(times["minimal loop"])
        steps = spec["epochs"] * -(-len(x) // spec["batch_size"])
        results["workloads"][name] = {
            "steps": steps,
            **{
                label: {
                    "median_s": statistics.median(ts),
                    "samples_s": ts,
                    "ratio": statistics.median(ts) / base,
                    # the same round's times, side by side: robust to the machine's slow drift
                    "ratio_paired": statistics.median(
                        t / m for t, m in zip(ts, times["minimal loop"])
                    ),
                }
                for label, ts in times.items()
            },
        }
    results["load_end"] = os.getloadavg()
    return results


def render(results: dict) -> str:
    lines = [
        f"threads {results['threads']}, {results['rounds']} interleaved rounds, "
        f"torch {results['torch']}, load {results['load_start']} -> {results['load_end']}",
        f"{'workload':<14}{'contender':<15}{'median s':>10}{'x minimal':>11}{'paired':>9}"
        f"{'ms/step':>9}",
    ]
    for name, row in results["workloads"].items():
        for label, r in row.items():
            if label == "steps":
                continue
            lines.append(
                f"{name:<14}{label:<15}{r['median_s']:>10.3f}{r['ratio']:>10.3f}x"
                f"{r['ratio_paired']:>8.3f}x{1e3 * r['median_s'] / row['steps']:>9.3f}"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    names = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    results = run(names, args.rounds, args.threads)
    print(render(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

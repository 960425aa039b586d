"""Peak memory of training: gradwise against torch.optim's fastest path, each in its own process.

    python benchmarks/train_memory.py                         # wide-mlp and resnet18, Adam, 3 runs
    python benchmarks/train_memory.py --models transformer --optimizers sgd,adamw --runs 5

Each run is a fresh Python process that builds the model (``gradwise.lab.train_step.MODELS``),
trains it for ``--iterations`` whole iterations with the default ``zero_grad()``, and reports its
peak resident set size (``ru_maxrss``). Reported: the median over ``--runs`` processes, and
gradwise's peak over torch's. A kernel that gradwise builds in the background is built by a child
process of its own, whose memory is not counted (it is not the training's).

Constructing a ``torch.optim`` optimizer imports Dynamo (~73 MiB resident); gradwise imports it
only when something uses it. ``--import-dynamo`` imports it first in every process, as a
program that calls ``torch.compile`` does, so that only the training's own memory differs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, resource, sys, torch
if sys.argv[5] == "1":
    import torch._dynamo
from gradwise.lab.train_step import MODELS, Trainer
torch.set_num_threads(1)
model, optimizer, impl, iterations = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
spec = MODELS[model]
torch.manual_seed(0)
trainer = Trainer(impl, optimizer, spec.build(), spec.batch(torch.Generator().manual_seed(0)))
trainer.run(iterations)
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_mib(model: str, optimizer: str, impl: str, iterations: int, dynamo: bool) -> float:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, model, optimizer, impl, str(iterations), str(int(dynamo))],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="train_memory", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="wide-mlp,resnet18")
    p.add_argument("--optimizers", default="adam")
    p.add_argument("--impls", default="torch,gradwise,gradwise views")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument(
        "--import-dynamo",
        action="store_true",
        help="import torch._dynamo first in every process (as a torch.compile user has)",
    )
    args = p.parse_args(argv)
    impls = args.impls.split(",")
    print("| model | optimizer | " + " | ".join(f"{i} peak MiB" for i in impls) + " | ratios |")
    print("|---" * (3 + len(impls)) + "|")
    for model in args.models.split(","):
        for optimizer in args.optimizers.split(","):
            peaks = {}
            for impl in impls:
                runs = [
                    peak_mib(model, optimizer, impl, args.iterations, args.import_dynamo)
                    for _ in range(args.runs)
                ]
                peaks[impl] = statistics.median(runs)
            ratios = ", ".join(
                f"{i}/torch {peaks[i] / peaks['torch']:.3f}" for i in impls if i != "torch"
            )
            cells = " | ".join(f"{peaks[i]:.0f}" for i in impls)
            print(f"| {model} | {optimizer} | {cells} | {ratios} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

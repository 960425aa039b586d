"""A fresh install's first training run: gradwise against torch fused, timed from process start.

    python benchmarks/first_run.py                  # 3 runs each, alternating, 1 thread
    python benchmarks/first_run.py --runs 5 --threads 2
    python benchmarks/first_run.py --device cuda    # on a GPU: Inductor's cache emptied too
    python benchmarks/first_run.py --device cuda --warm   # a later run: the caches kept

Each run is a new Python process with an **empty kernel cache** (a new temporary
``GRADWISE_KERNEL_CACHE``, so nothing gradwise built before is found) that imports torch and
gradwise, builds a 1.3M-parameter MLP (256 → 1024 → 1024 → 10) and trains it with
``gradwise.train.fit`` for 1,000 steps (batch 32, 8 epochs of 4,000 synthetic samples), with
``torch.optim.Adam(fused=True)`` or gradwise's ``Adam`` (default arguments). Reported: the wall
time of each process, and the ratio of the medians (> 1: gradwise faster). Whatever gradwise
builds in the background (its fused kernel, its native helpers) is built by child processes
while it trains; they are counted only as far as they slow the training down.

On a GPU (``--device cuda``) gradwise compiles its update in the process with ``torch.compile``
(Inductor → Triton), which caches what it builds on disk; each run then also gets empty
``TORCHINDUCTOR_CACHE_DIR`` and ``TRITON_CACHE_DIR``. With ``--warm`` every run shares one set of
caches, filled by an untimed run of each implementation first: a user's later runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
from gradwise.train import fit
import gradwise.optim as go
gen = torch.Generator().manual_seed(0)
x = torch.randn(4000, 256, generator=gen)
y = (x[:, :10].argmax(1) + (x[:, 10] > 1).long()) % 10
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(256, 1024), torch.nn.ReLU(),
    torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
    torch.nn.Linear(1024, 10),
)
if sys.argv[1] == "torch":
    make = lambda params: torch.optim.Adam(params, lr=1e-3, fused=True)
else:
    make = lambda params: go.Adam(params, lr=1e-3)
h = fit(
    model, (x, y), optimizer=make, epochs=8, batch_size=32, progress=False, device=sys.argv[3]
)
print(len(h.steps), h.epochs[-1]["train_accuracy"])
"""


def wait_for_background_builds(timeout_s: float = 300) -> None:
    """Builds a run started in child processes go on after it ends (they fill the cache for the
    next run); the next run starts once they are over, so that it has the machine to itself."""
    from pathlib import Path

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = False
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes()
            except OSError:
                continue
            if b"child_main" in text or b"child_build" in text:
                busy = True
                break
        if not busy:
            return
        time.sleep(0.5)


def one_run(impl: str, threads: int, device: str = "cpu", cache: str | None = None):
    """One process's wall time and what it printed; its caches in ``cache`` (None: new)."""
    with tempfile.TemporaryDirectory() as fresh:
        cache = cache or fresh
        env = {
            **os.environ,
            "GRADWISE_KERNEL_CACHE": cache,
            "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor"),
            "TRITON_CACHE_DIR": os.path.join(cache, "triton"),
        }
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", CHILD, impl, str(threads), device],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        took = time.perf_counter() - start
        wait_for_background_builds()
        return took, done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="first_run", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--warm", action="store_true", help="caches kept between runs (see above)")
    args = p.parse_args(argv)
    times: dict[str, list[float]] = {"torch": [], "gradwise": []}
    shared = tempfile.TemporaryDirectory() if args.warm else None
    cache = shared.name if shared else None
    if shared:
        for impl in times:
            took, _ = one_run(impl, args.threads, args.device, cache)
            print(f"untimed first run {impl}: {took:.2f} s")
    for r in range(args.runs):
        for impl in ("torch", "gradwise") if r % 2 == 0 else ("gradwise", "torch"):
            took, out = one_run(impl, args.threads, args.device, cache)
            times[impl].append(took)
            print(f"run {r + 1} {impl}: {took:.2f} s (steps, last train accuracy: {out})")
    t, g = statistics.median(times["torch"]), statistics.median(times["gradwise"])
    print(f"median: torch fused {t:.2f} s, gradwise {g:.2f} s, ratio {t / g:.3f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())

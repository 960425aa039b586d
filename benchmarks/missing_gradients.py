"""Whole iterations where some parameters get no gradient: gradwise against torch fused.

Fine-tuning hands the optimizer a model whose backbone is frozen (``requires_grad_(False)``
after ``Adam(model.parameters())``), multi-task training uses one head per batch, and gradual
unfreezing switches layers on mid-run. torch's optimizers pass over a parameter whose ``.grad``
is None; gradwise parts such a group into segments that each step flat (see docs/design.md).

Every case trains a 300-block net (``Linear(64, 64) + LayerNorm``, 1,200 tensors, plus a
head), batch 16, Adam with default arguments and the default ``zero_grad()``, against
``torch.optim.Adam(fused=True)``: the same initial weights and batches, interleaved in one
process (A, B, then B, A, ...), median of the rounds; the ratio is torch's time / gradwise's.

    python benchmarks/missing_gradients.py                 # 1 thread, 21 rounds
    python benchmarks/missing_gradients.py --rounds 5      # quick

Cases:
  all trained        every parameter has a gradient at every step (the reference point)
  unused layer       a second head the forward never uses (its gradient is always None)
  frozen backbone    every block frozen before the first step, only the head trains
  frozen mid-run     the first 150 blocks frozen after 5 steps
  head every other   a second head used on odd steps only (its gradient is None on even ones)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

import gradwise.optim as go

BLOCKS, WIDTH, BATCH = 300, 64, 16
CASES = ("all trained", "unused layer", "frozen backbone", "frozen mid-run", "head every other")


class Net(nn.Module):
    def __init__(self, case: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(
            *(nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.LayerNorm(WIDTH)) for _ in range(BLOCKS))
        )
        self.head = nn.Linear(WIDTH, 10)
        if case in ("unused layer", "head every other"):
            self.other_head = nn.Linear(WIDTH, 10)

    def forward(self, x: torch.Tensor, step: int, case: str) -> torch.Tensor:
        h = self.blocks(x)
        use_other = case == "head every other" and step % 2 == 1
        return self.other_head(h) if use_other else self.head(h)


def freeze(net: Net, case: str, step: int) -> None:
    if case == "frozen backbone" and step == 0:
        net.blocks.requires_grad_(False)
    if case == "frozen mid-run" and step == 5:
        net.blocks[: BLOCKS // 2].requires_grad_(False)


class Contender:
    def __init__(self, name: str, case: str) -> None:
        self.name, self.case, self.net, self.steps = name, case, Net(case), 0
        params = self.net.parameters()
        self.opt = torch.optim.Adam(params, fused=True) if name == "torch" else go.Adam(params)
        self.x = torch.randn(BATCH, WIDTH, generator=torch.Generator().manual_seed(1))

    def iteration(self) -> None:
        freeze(self.net, self.case, self.steps)
        self.opt.zero_grad()
        self.net(self.x, self.steps, self.case).square().mean().backward()
        self.opt.step()
        self.steps += 1

    def time(self, iterations: int) -> float:
        start = time.perf_counter()
        for _ in range(iterations):
            self.iteration()
        return (time.perf_counter() - start) / iterations


def measure(case: str, rounds: int, iterations: int, warmup: int) -> dict:
    contenders = [Contender("torch", case), Contender("gradwise", case)]
    for c in contenders:
        for _ in range(warmup):
            c.iteration()
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        for c in contenders if r % 2 == 0 else contenders[::-1]:
            times[c.name].append(c.time(iterations))
    ms = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
    paired = statistics.median(t / g for t, g in zip(times["torch"], times["gradwise"]))
    return dict(case=case, **{f"{k} ms": v for k, v in ms.items()}, paired=paired)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=3, help="iterations per round")
    parser.add_argument("--warmup", type=int, default=8, help="past the mid-run freeze (5)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()}")
    print("| case | torch fused ms | gradwise ms | ratio | paired ratio |")
    print("|---|---|---|---|---|")
    for case in CASES:
        row = measure(case, args.rounds, args.iterations, args.warmup)
        t, g = row["torch ms"], row["gradwise ms"]
        print(f"| {case} | {t:.2f} | {g:.2f} | **{t / g:.3f}×** | {row['paired']:.3f}× |")
    print(
        f"\n{args.threads} thread(s), median of {args.rounds} interleaved rounds of "
        f"{args.iterations} iterations, torch {torch.__version__}; load average at end: "
        f"{os.getloadavg()}"
    )


if __name__ == "__main__":
    main()

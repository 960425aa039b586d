"""Where a whole iteration's time goes: ``zero_grad()`` + forward + backward, and ``step()``,
timed apart for torch.optim's fastest path and gradwise, interleaved in one process.

    python benchmarks/iteration_parts.py --model transformer --optimizer adamw --rounds 41

``benchmarks/train_step.py`` times the whole iteration; when a row there is within a few percent
of 1.0, this says whether the step or the rest moved. Both models start from the same weights;
gradwise's parameters live in its flat buffers (views), torch's in tensors of their own, so the
forward and backward columns also show what that layout costs (nothing measurable so far).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from gradwise.lab import train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="transformer", choices=sorted(train_step.MODELS))
    parser.add_argument("--optimizer", default="adam", choices=sorted(train_step.OPTIMIZERS))
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = train_step.MODELS[args.model]
    base = spec.build()
    x, y = spec.batch(torch.Generator().manual_seed(0))
    models = {impl: copy.deepcopy(base) for impl in ("torch", "gradwise")}
    opts = {
        impl: train_step._make_optimizer(impl, args.optimizer, m.parameters())
        for impl, m in models.items()
    }

    def forward_backward(impl: str) -> None:
        opts[impl].zero_grad()
        train_step._loss(models[impl](x), y).backward()

    for _ in range(5):  # warm up, and start gradwise's kernel build if it needs one
        for impl in opts:
            forward_backward(impl)
            opts[impl].step()
    from gradwise.optim import kernels

    kernels.wait_for_builds(600)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for impl in opts:
            start = time.perf_counter()
            forward_backward(impl)
            middle = time.perf_counter()
            opts[impl].step()
            end = time.perf_counter()
            times.setdefault((impl, "forward+backward"), []).append(middle - start)
            times.setdefault((impl, "step"), []).append(end - middle)
    print(f"{args.model} × {args.optimizer}, {args.threads} thread(s), median of {args.rounds}")
    for part in ("forward+backward", "step"):
        ms = {impl: statistics.median(times[impl, part]) * 1e3 for impl in opts}
        ratio = ms["torch"] / ms["gradwise"]
        print(
            f"  {part:17s} torch {ms['torch']:8.2f} ms  gradwise {ms['gradwise']:8.2f} ms  "
            f"ratio {ratio:.3f}×"
        )
    print(f"  gradwise's fused kernel loaded: {bool(kernels.loaded())}")


if __name__ == "__main__":
    main()

"""Where a whole iteration's time goes: ``zero_grad()`` + forward + backward, and ``step()``,
timed apart for torch.optim's fastest path and gradwise, interleaved in one process.

    python benchmarks/iteration_parts.py --model transformer --optimizer adamw --rounds 41
    python benchmarks/iteration_parts.py --model resnet18 --device cuda --rounds 21

``benchmarks/train_step.py`` times the whole iteration; when a row there is within a few percent
of 1.0, this says whether the step or the rest moved. All models start from the same weights.
gradwise's parameters live in its flat buffers (views), torch's in tensors of their own; a
third contender, ``torch, flat``, is torch's optimizer on a model laid out as gradwise lays one
out (each parameter a view of one flat buffer, at the same aligned places), so that the
forward and backward columns show what that layout costs apart from the step.

Columns: ``iteration`` is the whole iteration, timed as a training loop runs it (on CUDA,
synchronized once per iteration, so that the CPU's launches and the GPU's work overlap as
they do in training); ``forward+backward`` and ``step`` are the parts, each timed alone (on
CUDA, synchronized before and after, so each includes its GPU work and not the other's).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from gradwise.lab import train_step
from gradwise.optim import layout

PARTS = ("iteration", "forward+backward", "step")


def laid_out_flat(model: nn.Module) -> nn.Module:
    """``model`` with every parameter moved into one flat buffer, at the places gradwise's
    layout gives it (:func:`gradwise.optim.layout.plan_layout`); values unchanged."""
    params = list(model.parameters())
    slices, length, _ = layout.plan_layout(params)
    flat = torch.zeros(length, dtype=params[0].dtype, device=params[0].device)
    for p, where in zip(params, slices):
        view = flat[where].view_as(p)
        view.copy_(p.detach())
        p.data = view
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="transformer", choices=sorted(train_step.MODELS))
    parser.add_argument("--optimizer", default="adam", choices=sorted(train_step.OPTIMIZERS))
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:  # a long run's steady state: the compiled step from the second step
        from gradwise.optim import plans

        plans.COMPILE_AFTER_S = 0.0
    torch.manual_seed(0)
    spec = train_step.MODELS[args.model]
    base = spec.build().to(device)
    x, y = (t.to(device) for t in spec.batch(torch.Generator().manual_seed(0)))
    models = {
        "torch": copy.deepcopy(base),
        "torch, flat": laid_out_flat(copy.deepcopy(base)),
        "gradwise": copy.deepcopy(base),
    }
    opts = {
        impl: train_step._make_optimizer(impl.split(",")[0], args.optimizer, m.parameters())
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
    for r in range(args.rounds):
        for impl in opts if r % 2 == 0 else list(opts)[::-1]:
            sync()
            start = time.perf_counter()
            for _ in range(3):  # whole iterations, as a training loop runs them
                forward_backward(impl)
                opts[impl].step()
            sync()
            whole = (time.perf_counter() - start) / 3
            start = time.perf_counter()
            forward_backward(impl)
            sync()
            middle = time.perf_counter()
            opts[impl].step()
            sync()
            end = time.perf_counter()
            for part, seconds in zip(PARTS, (whole, middle - start, end - middle)):
                times.setdefault((impl, part), []).append(seconds)
    print(
        f"{args.model} × {args.optimizer} on {device.type}, {args.threads} thread(s), "
        f"median of {args.rounds} rounds; ratio = torch's ms / gradwise's"
    )
    for part in PARTS:
        ms = {impl: statistics.median(times[impl, part]) * 1e3 for impl in opts}
        cells = "  ".join(f"{impl} {value:8.3f} ms" for impl, value in ms.items())
        print(f"  {part:17s} {cells}  ratio {ms['torch'] / ms['gradwise']:.3f}×")
    print(f"  gradwise's fused kernel loaded: {bool(kernels.loaded())}")


if __name__ == "__main__":
    main()

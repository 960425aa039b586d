"""What the step benchmark updates: parameter-shape workloads, as an optimizer sees a model.

A workload is only shapes (float32); the runner makes the tensors, so a workload can be scaled
down (``scale`` < 1, flagged in its label) for tests and quick checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    """A list of parameter shapes (float32), as an optimizer sees a model."""

    name: str
    label: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def tensors(self) -> int:
        return len(self.shapes)


def resnet18_shapes(width: float = 1.0, classes: int = 1000) -> list[tuple[int, ...]]:
    """The 62 parameter shapes of torchvision's ResNet-18 (``width`` scales the channels).

    conv1 + bn1, four stages of two BasicBlocks (conv3x3-bn-conv3x3-bn, plus a 1x1 conv + bn
    downsample in the first block of stages 2-4), and the fc layer; convolutions have no bias.
    """

    def ch(c: int) -> int:
        return max(1, round(c * width))

    def bn(c: int) -> list[tuple[int, ...]]:
        return [(c,), (c,)]  # weight, bias

    shapes: list[tuple[int, ...]] = [(ch(64), 3, 7, 7), *bn(ch(64))]
    cin = ch(64)
    for stage, planes in enumerate((64, 128, 256, 512)):
        cout = ch(planes)
        for block in range(2):
            shapes += [(cout, cin, 3, 3), *bn(cout), (cout, cout, 3, 3), *bn(cout)]
            if block == 0 and stage > 0:
                shapes += [(cout, cin, 1, 1), *bn(cout)]
            cin = cout
    shapes += [(classes, cin), (classes,)]
    return shapes


def _scaled(label: str, scale: float) -> str:
    return label if scale == 1 else f"{label} [scaled ×{scale:g}]"


def make_workload(name: str, scale: float = 1.0) -> Workload:
    """One of :data:`WORKLOADS`; ``scale`` < 1 shrinks it (and says so in its label)."""
    if scale <= 0:
        raise ValueError(f"make_workload: scale must be > 0; received scale={scale}")
    if name == "one-tensor":
        n = max(1, round(16 * 2**20 * scale))
        shapes = [(n,)]
        label = "one tensor, 16M" if scale == 1 else f"one tensor, {n:,}"
    elif name == "resnet18":
        width = math.sqrt(scale)
        shapes = resnet18_shapes(width, classes=max(1, round(1000 * width)))
        label = "ResNet-18, 62 tensors"
    elif name == "small-2000":
        per = max(1, round(512 * scale))
        shapes = [(per,)] * 2000
        label = "2000 tensors × 512" if scale == 1 else f"2000 tensors × {per}"
    else:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    return Workload(name, _scaled(label, scale), tuple(shapes))


#: workload names, in display order
WORKLOADS = ("one-tensor", "resnet18", "small-2000")

"""The models the whole-iteration benchmarks train (:mod:`gradwise.lab.train_step`,
``benchmarks/iteration_parts.py``, ``benchmarks/train_memory.py``): a wide MLP (few large
tensors), a ResNet-18-shaped CNN, a deep narrow net (many small tensors) and a small transformer,
each with a batch of its inputs and targets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class _Block(nn.Module):
    """ResNet's basic block: two 3×3 convolutions with batch norm, plus the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


def resnet18(classes: int = 1000) -> nn.Module:
    """ResNet-18 (He et al., 2016): 62 parameter tensors, 11.7M parameters."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_Block(cin, cout, stride), _Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


class TinyTransformer(nn.Module):
    """A small encoder-only transformer language model (pre-norm), 102 parameter tensors."""

    def __init__(self, vocab: int = 1000, d: int = 128, layers: int = 8, seq: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.position = nn.Parameter(torch.randn(seq, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, 4, 4 * d, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.encoder(self.embed(tokens) + self.position)
        return self.head(self.norm(h)).flatten(0, 1)


@dataclass(frozen=True)
class Model:
    name: str
    description: str
    build: Callable[[], nn.Module]
    batch: Callable[[torch.Generator], tuple[Tensor, Tensor]]


def _deep_narrow() -> nn.Module:
    return nn.Sequential(*(m for _ in range(300) for m in (nn.Linear(64, 64), nn.LayerNorm(64))))


MODELS = {
    "wide-mlp": Model(
        "wide-mlp",
        "4 × Linear(2048, 2048), batch 8: 16.8M parameters in 8 tensors",
        lambda: nn.Sequential(*(nn.Linear(2048, 2048) for _ in range(4))),
        lambda g: (torch.randn(8, 2048, generator=g), torch.randn(8, 2048, generator=g)),
    ),
    "wide-mlp-67m": Model(
        "wide-mlp-67m",
        "4 × Linear(4096, 4096), batch 8: 67M parameters in 8 tensors (for a GPU)",
        lambda: nn.Sequential(*(nn.Linear(4096, 4096) for _ in range(4))),
        lambda g: (torch.randn(8, 4096, generator=g), torch.randn(8, 4096, generator=g)),
    ),
    "resnet18": Model(
        "resnet18",
        "ResNet-18 on 8 images of 32×32: 11.7M parameters in 62 tensors",
        resnet18,
        lambda g: (
            torch.randn(8, 3, 32, 32, generator=g),
            torch.randint(0, 1000, (8,), generator=g),
        ),
    ),
    "deep-narrow": Model(
        "deep-narrow",
        "300 × (Linear(64, 64) + LayerNorm), batch 16: 1.3M parameters in 1,200 tensors",
        _deep_narrow,
        lambda g: (torch.randn(16, 64, generator=g), torch.randn(16, 64, generator=g)),
    ),
    "transformer": Model(
        "transformer",
        "8-layer transformer, d = 128, 8 sequences of 32 tokens: 2.6M parameters in 102 tensors",
        TinyTransformer,
        lambda g: (
            torch.randint(0, 1000, (8, 32), generator=g),
            torch.randint(0, 1000, (8 * 32,), generator=g),
        ),
    ),
}

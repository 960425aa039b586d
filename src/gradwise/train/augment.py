"""Data augmentation of training batches: random shifts of sequences.

A signal such as an MNIST-1D digit means the same a few positions to the left or right. A
convolution sees that by construction; a multilayer perceptron, which gives each position its
own weights, must learn it from examples. Showing it each training sample shifted by a random
amount, drawn anew every epoch, is that lesson. On MNIST-1D's MLP (3 × 430 units, dropout 0.35,
Adam with a cosine schedule, 95 epochs) shifts of up to 4 positions raise test accuracy from
74.3% to 83.8% (one seed).

Augmentations are callables ``augment(x, generator) -> x'`` that :func:`gradwise.train.fit`
applies to each training batch's inputs (never to validation or test data), drawing from the
generator that also shuffles the batches: a run resumed from a checkpoint draws the same shifts
as one that was not interrupted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks


class RandomShift:
    r"""Each sample moved along its last axis by its own random whole number of positions,
    drawn uniformly from ``[-max_shift, max_shift]``, the edge value repeated into the gap::

        x'[..., i] = x[..., clamp(i − s, 0, L − 1)],   s ~ U{−max_shift, ..., max_shift}

    for inputs of shape ``(batch, L)`` or ``(batch, channels, L)`` (one shift per sample, the
    same for all its channels).

    >>> import torch
    >>> x = torch.arange(5.0).repeat(2, 1)
    >>> y = RandomShift(2)(x, torch.Generator().manual_seed(0))
    >>> y.shape == x.shape
    True
    """

    def __init__(self, max_shift: int) -> None:
        self.max_shift = checks.integer("RandomShift", "max_shift", max_shift, low=1)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if x.dim() < 2:
            raise ValueError(
                f"RandomShift: inputs must be (batch, length) or (batch, channels, length); "
                f"received shape {tuple(x.shape)}"
            )
        length = x.shape[-1]
        shifts = torch.randint(
            -self.max_shift, self.max_shift + 1, (x.shape[0],), generator=generator
        ).to(x.device)
        positions = torch.arange(length, device=x.device)
        source = (positions - shifts[:, None]).clamp_(0, length - 1)  # (batch, length)
        source = source.view(x.shape[0], *(1,) * (x.dim() - 2), length).expand_as(x)
        return torch.gather(x, -1, source)

    def __repr__(self) -> str:
        return f"RandomShift({self.max_shift})"

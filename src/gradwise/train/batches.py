"""The batches ``fit()`` trains on: in-memory ``(x, y)`` tensors, sliced after a seeded shuffle
each epoch (and split among the processes of a distributed run), or a user's loader as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from gradwise import checks
from gradwise.errors import ConfigError
from gradwise.train import distributed


class Batches:
    """Batches of in-memory ``(x, y)`` tensors (sliced after a shuffle per epoch) or a loader's;
    with ``augment`` (``augment(x, generator) -> x'``, e.g. :class:`~gradwise.train.augment.
    RandomShift`), each epoch's inputs augmented with the shuffle's generator."""

    def __init__(
        self,
        data,
        batch_size,
        device: torch.device,
        what: str,
        augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    ) -> None:
        self.loader, self.augment, self.what = None, augment, what
        if isinstance(data, tuple | list) and any(type(t).__module__ == "numpy" for t in data):
            raise ConfigError(
                f"fit: {what} must be torch tensors (or an iterable of batches); received "
                "numpy arrays: torch.from_numpy(x).float(), torch.from_numpy(y)"
            )
        if isinstance(data, Tensor):  # iterable, but its rows are not batches
            raise ConfigError(
                f"fit: {what} must be an (x, y) pair of tensors or an iterable of batches; "
                f"received one tensor of shape {tuple(data.shape)} (its targets missing?)"
            )
        if (
            isinstance(data, tuple | list)
            and len(data) == 2
            and all(isinstance(t, Tensor) for t in data)
        ):
            x, y = data
            if len(x) != len(y):
                raise ConfigError(
                    f"fit: {what} x and y must have the same length; received {len(x)} and {len(y)}"
                )
            if len(x) == 0:
                raise ConfigError(f"fit: {what} set is empty")
            self.x, self.y = x.to(device), y.to(device)
            n = len(x)
            if batch_size == "full":
                self.batch_size = n
            else:
                size = checks.integer("fit", "batch_size", batch_size, low=1)
                if size > n:
                    raise ConfigError(
                        f"fit: batch_size must be at most the {what} set's size ({n}) or 'full'; "
                        f"received batch_size={size}"
                    )
                self.batch_size = size
            self.steps_per_epoch = math.ceil(n / self.batch_size)
        elif isinstance(data, Iterable):
            self.loader, self.device = data, device
            try:
                self.steps_per_epoch = len(data)
            except TypeError:
                self.steps_per_epoch = None
        else:
            raise ConfigError(
                f"fit: {what} must be an (x, y) pair of tensors or an iterable of batches; "
                f"received {type(data).__name__}"
            )

    def rows(self, batch: int) -> int | None:
        """How many rows the ``batch``-th batch of an epoch (from 1) holds, all ranks together;
        None for a loader's batches, which are not known ahead."""
        if self.loader is not None:
            return None
        n, bs = len(self.x), self.batch_size
        return max(0, min(bs, n - (batch - 1) * bs))

    def epoch(self, generator: torch.Generator, shard: distributed.Shard | None = None):
        """One epoch's batches, shuffled (and augmented) with ``generator``."""
        batches = self._epoch(generator, shard)
        if self.augment is None:
            return batches
        return ((self.augment(xb, generator), yb) for xb, yb in batches)

    def _epoch(self, generator: torch.Generator, shard: distributed.Shard | None):
        if self.loader is not None:
            yield from self._loaded()
            return
        if shard is not None:
            yield from self._shards(generator, shard)
            return
        n, bs = len(self.x), self.batch_size
        if bs >= n:
            yield self.x, self.y
            return
        order = torch.randperm(n, generator=generator).to(self.x.device)
        xs, ys = self.x[order], self.y[order]
        for i in range(0, n, bs):
            yield xs[i : i + bs], ys[i : i + bs]

    def _shards(self, generator: torch.Generator, shard: distributed.Shard):
        """This rank's rows of each global batch: the same permutation as :meth:`epoch`."""
        n, bs = len(self.x), self.batch_size
        if bs >= n:
            start, stop = shard.split(n)
            yield self.x[start:stop], self.y[start:stop]
            return
        order = torch.randperm(n, generator=generator).to(self.x.device)
        for i in range(0, n, bs):
            batch = order[i : i + bs]
            start, stop = shard.split(len(batch))
            mine = batch[start:stop]
            yield self.x[mine], self.y[mine]

    def _loaded(self):
        """The loader's batches on the device; a loader that gives none is refused (it would
        train or validate on nothing)."""
        count = 0
        for count, (xb, yb) in enumerate(self.loader, 1):  # noqa: B007 (counted)
            yield xb.to(self.device), yb.to(self.device)
        if count == 0:
            raise ConfigError(f"fit: the {self.what} loader gave no batches (is it empty?)")

    def chunks(self, size: int):
        if self.loader is not None:
            yield from self._loaded()
            return
        for i in range(0, len(self.x), size):
            yield self.x[i : i + size], self.y[i : i + size]


def check_val_targets(out: Tensor, val: Batches, loss: str) -> None:
    """:func:`check_targets` for in-memory validation targets, given a training batch's
    outputs ``out`` (the model's outputs for them would have its shape past the rows)."""
    if val.loader is not None:
        return
    try:
        check_targets(out.new_empty((len(val.y), *out.shape[1:])), val.y, loss, val)
    except ConfigError as e:
        raise ConfigError(f"fit: val: {str(e).removeprefix('fit: ')}") from None


def check_targets(out: Tensor, y: Tensor, loss: str, data: Batches) -> None:
    """Before the first step, for fit's built-in losses: targets that would fail deep inside
    torch, or broadcast without a word, refused with what was expected. ``out`` and ``y`` are
    the first batch's outputs and targets; the label range is checked over all of ``data``'s
    targets where they are in memory."""
    shape, got = tuple(out.shape), tuple(y.shape)
    if loss == "mse" and got != shape:
        hint = " (y.unsqueeze(1) makes it (n, 1))" if y.dim() == 1 and shape[1:] == (1,) else ""
        raise ConfigError(
            f"fit: loss='mse' compares outputs and targets of one shape; the model outputs "
            f"{shape} and the targets are {got}{hint}"
        )
    if loss != "cross_entropy":
        return
    if y.is_floating_point():  # class probabilities, of the outputs' shape
        if got != shape:
            raise ConfigError(
                f"fit: loss='cross_entropy' takes class indices (integers: y.long()) or class "
                f"probabilities of the outputs' shape {shape}; received {y.dtype} targets of "
                f"shape {got}"
            )
        return
    if y.dtype not in (torch.int64, torch.uint8):
        raise ConfigError(
            f"fit: loss='cross_entropy' takes class indices as int64 (y.long()); received {y.dtype}"
        )
    labels = data.y if data.loader is None else y
    labels = labels[labels != -100]  # torch's ignore_index
    classes = shape[1] if len(shape) > 1 else shape[0]
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ConfigError(
            f"fit: the labels must be class indices 0..{classes - 1} for the model's {classes} "
            f"outputs; received labels from {int(labels.min())} to {int(labels.max())}"
        )

"""The ``Schedule`` base class, :class:`Product` (what ``a * b`` builds, so it lives beside the
operator), and the few math helpers that let one formula serve a Python number and a tensor of
steps alike."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable

import torch

from gradwise import checks

Steps = float | torch.Tensor
"""A step count as a float, or a floating tensor of step counts."""


# ---------------------------------------------------------------------------------------------
# One formula, two kinds of input: these helpers pick ``math`` or ``torch`` by the input's type.


def cos(x: Steps) -> Steps:
    return torch.cos(x) if isinstance(x, torch.Tensor) else math.cos(x)


def minimum(x: Steps, c: float) -> Steps:
    return x.clamp(max=c) if isinstance(x, torch.Tensor) else min(x, c)


def maximum(x: Steps, c: float) -> Steps:
    return x.clamp(min=c) if isinstance(x, torch.Tensor) else max(x, c)


def full(like: Steps, value: float) -> Steps:
    """``value``, shaped like ``like`` when that is a tensor."""
    return torch.full_like(like, value) if isinstance(like, torch.Tensor) else value


def where(cond: bool | torch.Tensor, then: Callable[[], Steps], other: Callable[[], Steps]):
    """``then()`` where ``cond`` holds, else ``other()``; a Python ``cond`` evaluates one branch
    only, a tensor ``cond`` evaluates both and selects element-wise."""
    if isinstance(cond, torch.Tensor):
        return torch.where(cond, then(), other())
    return then() if cond else other()


# ---------------------------------------------------------------------------------------------


def signature_repr(obj: object, owner: str | None = None) -> str:
    """``Name(required, ..., keyword=value, ...)`` from the constructor's signature: required
    arguments positionally, the others only where they differ from their defaults. Tuples show
    as lists, so the text reads like the call that built ``obj``."""
    parts = []
    for p in inspect.signature(type(obj)).parameters.values():
        value = getattr(obj, p.name)
        shown = list(value) if isinstance(value, tuple) else value
        if p.default is inspect.Parameter.empty:
            parts.append(repr(shown))
        elif not (type(value) is type(p.default) and value == p.default):
            parts.append(f"{p.name}={shown!r}")
    return f"{owner or type(obj).__name__}({', '.join(parts)})"


class Schedule:
    """A multiplier of the base learning rate as a pure function of the step count ``t``.

    Call it with ``t = 0, 1, 2, ...`` (a number) to get a float, or with a tensor of steps to
    get a tensor of multipliers of the same shape (float64 for integer steps; a floating tensor
    keeps its dtype). There is no hidden state: ``schedule(t)`` is the same whenever it is
    asked. ``a * b`` is ``Product(a, b)``.

    Subclasses implement :meth:`evaluate` once, for ``t`` a float or a floating tensor, with the
    helpers of this module where the two differ.
    """

    def evaluate(self, t: Steps) -> Steps:  # pragma: no cover - abstract
        """The multiplier at ``t`` (a float or a floating tensor of steps >= 0), without the
        checks and conversions of calling the schedule: what schedules built from others call."""
        raise NotImplementedError

    def __call__(self, t):
        owner = type(self).__name__
        if isinstance(t, torch.Tensor):
            if t.dtype == torch.bool or t.is_complex():
                checks.refuse(owner, "t", "a tensor of real step counts", t, TypeError)
            x = t if t.is_floating_point() else t.to(torch.float64)
            if x.numel() and not bool(((x >= 0) & torch.isfinite(x)).all()):
                checks.refuse(owner, "t", "finite and >= 0 in every element", t)
            return self.evaluate(x)
        if not isinstance(t, numbers.Real) or isinstance(t, bool):
            checks.refuse(
                owner, "t", "a step count (a number >= 0) or a tensor of them", t, TypeError
            )
        return float(self.evaluate(checks.at_least(owner, "t", t, 0)))

    def __mul__(self, other: Schedule) -> Schedule:
        if not isinstance(other, Schedule):
            return NotImplemented
        return Product(self, other)

    def _key(self) -> tuple:
        names = inspect.signature(type(self)).parameters
        return (type(self), *(getattr(self, n) for n in names))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schedule) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return signature_repr(self)


def check_schedule(owner: str, name: str, value: object) -> Schedule:
    """A :class:`Schedule` instance."""
    if not isinstance(value, Schedule):
        checks.refuse(owner, name, "a Schedule (e.g. Cosine(1000))", value, TypeError)
    return value


class Product(Schedule):
    """The product of two schedules at the same step (also written ``a * b``).

    ::

        m(t) = a(t) · b(t)

    Differences: PyTorch's ``ChainedScheduler`` multiplies recursive schedulers' updates; Keras
    has no product.

    Example::

        >>> p = Product(StepDecay(10, gamma=0.5), Warmup(4))
        >>> p(2), p(12)
        (0.5, 0.5)
    """

    def __init__(self, a: Schedule, b: Schedule) -> None:
        self.a = check_schedule("Product", "a", a)
        self.b = check_schedule("Product", "b", b)

    def evaluate(self, t: Steps) -> Steps:
        return self.a.evaluate(t) * self.b.evaluate(t)

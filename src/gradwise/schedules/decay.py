"""Constant, step, multi-step, exponential and cosine decay, each one closed form."""

from __future__ import annotations

import bisect
import math

import torch

from gradwise import checks
from gradwise.schedules.base import Schedule, Steps, cos, full, minimum


class Constant(Schedule):
    """The same multiplier at every step.

    ::

        m(t) = value

    Differences: PyTorch's ``ConstantLR(factor, total_iters)`` is ``Constant(factor)`` for
    ``total_iters`` steps, then ``Constant()``: ``Sequence([(Constant(factor), total_iters),
    (Constant(), None)])``.

    Example::

        >>> Constant()(10), Constant(0.5)(10)
        (1.0, 0.5)
    """

    def __init__(self, value: float = 1.0) -> None:
        self.value = checks.at_least("Constant", "value", value, 0)

    def evaluate(self, t: Steps) -> Steps:
        return full(t, self.value)


class StepDecay(Schedule):
    """Multiply by ``gamma`` every ``step_size`` steps.

    ::

        m(t) = gamma ^ ⌊t / step_size⌋

    Differences: PyTorch's ``StepLR(step_size, gamma)`` gives the same rates (it multiplies the
    previous rate, so the last bits can differ). Keras's ``ExponentialDecay(decay_steps=step_size,
    decay_rate=gamma, staircase=True)`` is the same curve.

    Example::

        >>> s = StepDecay(30, gamma=0.5)
        >>> s(0), s(29), s(30), s(65)
        (1.0, 1.0, 0.5, 0.25)
    """

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = checks.integer("StepDecay", "step_size", step_size, low=1)
        self.gamma = checks.in_range("StepDecay", "gamma", gamma, 0, 1, closed_high=True)

    def evaluate(self, t: Steps) -> Steps:
        return self.gamma ** (t // self.step_size)


class MultiStepDecay(Schedule):
    """Multiply by ``gamma`` at each of the ``milestones`` (strictly increasing step counts).

    ::

        m(t) = gamma ^ #{ i : milestones[i] <= t }

    Differences: PyTorch's ``MultiStepLR(milestones, gamma)`` is the same; it also accepts
    repeated or unsorted milestones, which are refused here. Keras's ``PiecewiseConstantDecay``
    takes the values instead of a factor.

    Example::

        >>> s = MultiStepDecay([10, 20], gamma=0.5)
        >>> s(9), s(10), s(25)
        (1.0, 0.5, 0.25)
    """

    def __init__(self, milestones, gamma: float = 0.1) -> None:
        owner = "MultiStepDecay"
        if isinstance(milestones, str | bytes) or not hasattr(milestones, "__iter__"):
            checks.refuse(owner, "milestones", "a list of step counts", milestones, TypeError)
        ms = tuple(
            checks.integer(owner, f"milestones[{i}]", m, low=1) for i, m in enumerate(milestones)
        )
        if not ms:
            checks.refuse(owner, "milestones", "a non-empty list of step counts", list(ms))
        if any(b <= a for a, b in zip(ms, ms[1:])):
            checks.refuse(owner, "milestones", "strictly increasing", list(ms))
        self.milestones = ms
        self.gamma = checks.in_range(owner, "gamma", gamma, 0, 1, closed_high=True)

    def evaluate(self, t: Steps) -> Steps:
        if isinstance(t, torch.Tensor):
            edges = torch.tensor(self.milestones, dtype=t.dtype, device=t.device)
            passed = torch.searchsorted(edges, t.contiguous(), right=True).to(t.dtype)
        else:
            passed = bisect.bisect_right(self.milestones, t)
        return self.gamma**passed


class ExponentialDecay(Schedule):
    """Multiply by ``gamma`` every step.

    ::

        m(t) = gamma ^ t

    Differences: PyTorch's ``ExponentialLR(gamma)`` is the same. Keras's
    ``ExponentialDecay(decay_steps=1, decay_rate=gamma)`` is the same; ``decay_steps=k`` there is
    ``gamma ** (1 / k)`` here.

    Example::

        >>> round(ExponentialDecay(0.9)(2), 12)
        0.81
    """

    def __init__(self, gamma: float) -> None:
        self.gamma = checks.in_range("ExponentialDecay", "gamma", gamma, 0, 1, closed_high=True)

    def evaluate(self, t: Steps) -> Steps:
        return self.gamma**t


class Cosine(Schedule):
    """Half a cosine from 1 down to ``final`` over ``total_steps`` steps, then ``final``.

    ::

        m(t) = final + (1 − final) · (1 + cos(π · min(t, total_steps) / total_steps)) / 2

    Differences: PyTorch's ``CosineAnnealingLR(T_max=total_steps, eta_min=final·base_lr)`` is
    the same for ``t <= T_max``; past it PyTorch's curve rises again (a period of ``2·T_max``)
    while this one holds ``final``. Keras's ``CosineDecay(decay_steps=total_steps,
    alpha=final)`` is the same (without its warmup; use ``Warmup``).

    Example::

        >>> c = Cosine(100, final=0.1)
        >>> c(0), round(c(50), 12), c(100), c(500)
        (1.0, 0.55, 0.1, 0.1)
    """

    def __init__(self, total_steps: int, final: float = 0.0) -> None:
        self.total_steps = checks.integer("Cosine", "total_steps", total_steps, low=1)
        self.final = checks.in_range("Cosine", "final", final, 0, 1, closed_high=True)

    def evaluate(self, t: Steps) -> Steps:
        T, f = self.total_steps, self.final
        return f + (1 - f) * (1 + cos(math.pi * minimum(t, T) / T)) / 2

"""The one-cycle policy: up from a low rate to the base rate, then far below it."""

from __future__ import annotations

import math

from gradwise import checks
from gradwise.schedules.base import Schedule, Steps, cos, full, minimum, where


class OneCycle(Schedule):
    """One cycle over ``total_steps`` steps: rise from ``1/div_factor`` to 1, then anneal to
    ``1/(div_factor·final_div_factor)``; the base rate is the peak (PyTorch's ``max_lr``).

    With ``T = total_steps``, ``p = pct_start·T − 1`` (the step of the peak), ``lo = 1/div_factor``,
    ``end = lo/final_div_factor`` and ``A(a, b, x)`` the ``anneal`` curve from ``a`` to ``b``::

        m(t) = A(lo, 1, t / p)                              for t <= p
        m(t) = A(1, end, min(1, (t − p) / (T − 1 − p)))     for t > p
        A(a, b, x) = b + (a − b) · (1 + cos(π·x)) / 2       anneal="cos"
        A(a, b, x) = a + (b − a) · x                        anneal="linear"

    so the multiplier starts at ``lo`` (when ``p > 0``), peaks at 1 at step ``p`` and reaches
    ``end`` at step ``T − 1``, which it holds afterwards.

    Differences: PyTorch's ``OneCycleLR(max_lr=base_lr, total_steps, pct_start, anneal_strategy,
    div_factor, final_div_factor, three_phase=False)`` gives the same rates for
    ``t = 0 .. T − 1``; it raises after ``T`` steps where this holds ``end``. Momentum is not
    cycled here (``cycle_momentum=False`` there). The base rate is the peak, so set the group's
    ``lr`` to PyTorch's ``max_lr``.

    Example::

        >>> c = OneCycle(100, pct_start=0.25, div_factor=10)
        >>> round(c(0), 12), c(24), round(c(99), 12)
        (0.1, 1.0, 1e-05)
    """

    def __init__(
        self,
        total_steps: int,
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        anneal: str = "cos",
    ) -> None:
        owner = "OneCycle"
        self.total_steps = checks.integer(owner, "total_steps", total_steps, low=1)
        self.pct_start = checks.in_range(owner, "pct_start", pct_start, 0, 1, closed_high=True)
        self.div_factor = checks.positive(owner, "div_factor", div_factor)
        self.final_div_factor = checks.positive(owner, "final_div_factor", final_div_factor)
        self.anneal = checks.choice(owner, "anneal", anneal, ("cos", "linear"))

    def _anneal(self, a: float, b: float, x: Steps) -> Steps:
        if self.anneal == "cos":
            return b + (a - b) * (1 + cos(math.pi * x)) / 2
        return a + (b - a) * x

    def evaluate(self, t: Steps) -> Steps:
        lo = 1 / self.div_factor
        end = lo / self.final_div_factor
        peak = self.pct_start * self.total_steps - 1
        fall = self.total_steps - 1 - peak

        def rise():  # a rise of length 0 is at its peak already
            return self._anneal(lo, 1.0, t / peak if peak > 0 else full(t, 1.0))

        def anneal():
            return self._anneal(
                1.0, end, minimum((t - peak) / fall, 1.0) if fall > 0 else full(t, 1.0)
            )

        return where(t <= peak, rise, anneal)

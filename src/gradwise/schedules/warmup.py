"""Linear warmup in front of any schedule."""

from __future__ import annotations

from gradwise import checks
from gradwise.schedules.base import Schedule, Steps, check_schedule, maximum, where
from gradwise.schedules.decay import Constant


class Warmup(Schedule):
    """Rise linearly from ``start`` to 1 over ``steps`` steps, then run ``then`` from its step 0.

    ::

        m(t) = start + (1 − start) · t / steps     for t < steps
        m(t) = then(t − steps)                     for t >= steps

    Differences: PyTorch's ``LinearLR(start_factor=start, end_factor=1, total_iters=steps)`` is
    ``Warmup(steps, start=start)`` (PyTorch refuses ``start_factor=0``); what follows the warmup
    there needs ``SequentialLR``, here it is ``then``. Keras's ``CosineDecay(warmup_steps=...)``
    warms up to a target rate from ``initial_learning_rate``: here the target is the base rate.

    Example::

        >>> w = Warmup(4, then=Cosine(10))
        >>> [round(w(t), 3) for t in (0, 2, 4, 9, 14)]
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    def __init__(self, steps: int, then: Schedule = Constant(), start: float = 0.0) -> None:  # noqa: B008
        self.steps = checks.integer("Warmup", "steps", steps, low=1)
        self.then = check_schedule("Warmup", "then", then)
        self.start = checks.in_range("Warmup", "start", start, 0, 1, closed_high=True)

    def evaluate(self, t: Steps) -> Steps:
        n, s = self.steps, self.start
        return where(
            t < n,
            lambda: s + (1 - s) * t / n,
            lambda: self.then.evaluate(maximum(t - n, 0.0)),
        )

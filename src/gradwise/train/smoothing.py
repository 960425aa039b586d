"""The bias-corrected exponential moving average: the one smoothing of training curves (the
run's curves.png) and of the lab's plots and learning-rate range test.

::

    avg_i = β · avg_{i−1} + (1 − β) · x_i,   avg_0 = 0          smoothed_i = avg_i / (1 − β^i)

The correction divides out the weight the zero start still holds, so the first values are not
pulled towards 0 (what TensorBoard's smoothing slider shows). :class:`MovingAverage` takes the
values one at a time (the range test stops on the running value); :func:`smooth` runs it over a
list; :func:`zero_lag_smooth` runs it forward and then backward, which cancels its lag.
"""

from __future__ import annotations

__all__ = ["MovingAverage", "smooth", "zero_lag_smooth"]


class MovingAverage:
    """The bias-corrected moving average of factor ``beta`` (β in [0, 1)), one value at a time.

    >>> avg = MovingAverage(0.5)
    >>> avg.add(2.0), avg.add(4.0)
    (2.0, 3.3333333333333335)
    """

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.count = 0
        self.avg = 0.0

    def add(self, value: float) -> float:
        """Take in ``value``; return the bias-corrected average of the values so far."""
        self.count += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * value
        return self.avg / (1 - self.beta**self.count)


def smooth(values: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (what TensorBoard's smoothing slider does)."""
    avg = MovingAverage(beta)
    return [avg.add(v) for v in values]


def zero_lag_smooth(values: list[float], beta: float) -> list[float]:
    """The bias-corrected moving average run forward, then backward over the result.

    One pass of ``avg_i = β · avg_{i−1} + (1 − β) · x_i`` lags ``β / (1 − β)`` steps behind the
    data (9 steps for β = 0.9, about 0.7 decade of rate in a 100-step test over 8 decades); the
    backward pass cancels that lag, so features of the curve stay at the rates where they happened.
    """
    return smooth(smooth(values, beta)[::-1], beta)[::-1]

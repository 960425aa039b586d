"""Schedules run one after another (:class:`Sequence`)."""

from __future__ import annotations

import bisect
import itertools

import torch

from gradwise import checks
from gradwise.schedules.base import Schedule, Steps, check_schedule, maximum


class Sequence(Schedule):
    """Run schedules one after another; each counts steps from its own start.

    ``segments`` is a list of ``(schedule, steps)`` pairs. With ``s_k`` the sum of the lengths
    before segment ``k``::

        m(t) = schedule_k(t − s_k)      for s_k <= t < s_k + steps_k

    The last segment runs forever, so its ``steps`` may be ``None`` (a number there is
    allowed and ignored).

    Differences: PyTorch's ``SequentialLR(schedulers, milestones)`` joins schedulers at
    milestones; its sub-schedulers mutate the rate in turn, here each segment is a pure function
    of its local step. Keras has no join.

    Example::

        >>> s = Sequence([(Warmup(10), 10), (Cosine(90), None)])
        >>> [round(s(t), 3) for t in (0, 5, 10, 55, 100, 1000)]
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    """

    def __init__(self, segments) -> None:
        owner = "Sequence"
        if isinstance(segments, str | bytes) or not hasattr(segments, "__iter__"):
            checks.refuse(
                owner, "segments", "a list of (schedule, steps) pairs", segments, TypeError
            )
        segments = list(segments)
        if not segments:
            checks.refuse(
                owner, "segments", "a non-empty list of (schedule, steps) pairs", segments
            )
        checked = []
        for i, seg in enumerate(segments):
            if not isinstance(seg, tuple | list) or len(seg) != 2:
                checks.refuse(owner, f"segments[{i}]", "a (schedule, steps) pair", seg, TypeError)
            schedule, steps = seg
            check_schedule(owner, f"segments[{i}][0]", schedule)
            last = i == len(segments) - 1
            if steps is not None or not last:
                if steps is None:
                    checks.refuse(
                        owner,
                        f"segments[{i}][1]",
                        "a number of steps (only the last may be None)",
                        steps,
                    )
                steps = checks.integer(owner, f"segments[{i}][1]", steps, low=1)
            checked.append((schedule, steps))
        self.segments = tuple(checked)
        self._starts = [0, *itertools.accumulate(n for _, n in self.segments[:-1])]

    def evaluate(self, t: Steps) -> Steps:
        schedules = [s for s, _ in self.segments]
        if not isinstance(t, torch.Tensor):
            k = bisect.bisect_right(self._starts, t) - 1
            return schedules[k].evaluate(t - self._starts[k])
        out = schedules[0].evaluate(t)
        for schedule, start in zip(schedules[1:], self._starts[1:]):
            out = torch.where(t >= start, schedule.evaluate(maximum(t - start, 0.0)), out)
        return out

    def __repr__(self) -> str:
        return f"Sequence([{', '.join(f'({s!r}, {n!r})' for s, n in self.segments)}])"

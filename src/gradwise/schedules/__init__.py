"""Learning-rate schedules: multipliers of each param group's base rate as pure functions of the
step count, their joins, reduce-on-plateau as a factor of its own, and the :class:`Scheduler`
that sets an optimizer's rates from them::

    lr(t) = max(min_lr, base_lr · schedule(t) · plateau.scale)

Example::

    >>> import torch
    >>> from gradwise.schedules import Cosine, Plateau, Scheduler, Warmup
    >>> w = torch.nn.Parameter(torch.zeros(3))
    >>> opt = torch.optim.SGD([w], lr=0.1)
    >>> sched = Scheduler(opt, Warmup(100, then=Cosine(900)), plateau=Plateau(patience=5))
    >>> # per batch: opt.step(); sched.step()     per validation: sched.report(val_loss)

Text form for the command line: :func:`parse` (``"warmup:100,cosine:900"``) and :func:`describe`.
"""

from gradwise.schedules.base import Product, Schedule
from gradwise.schedules.combine import Sequence
from gradwise.schedules.decay import Constant, Cosine, ExponentialDecay, MultiStepDecay, StepDecay
from gradwise.schedules.language import FORMS, describe, parse
from gradwise.schedules.onecycle import OneCycle
from gradwise.schedules.plateau import Plateau
from gradwise.schedules.scheduler import Scheduler
from gradwise.schedules.warmup import Warmup

__all__ = [
    "FORMS",
    "Constant",
    "Cosine",
    "ExponentialDecay",
    "MultiStepDecay",
    "OneCycle",
    "Plateau",
    "Product",
    "Schedule",
    "Scheduler",
    "Sequence",
    "StepDecay",
    "Warmup",
    "describe",
    "parse",
]

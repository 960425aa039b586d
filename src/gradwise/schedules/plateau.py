"""Reduce-on-plateau as a multiplier of its own, so it composes with any schedule."""

from __future__ import annotations

import math
import numbers

import torch

from gradwise import checks
from gradwise.errors import CheckpointError
from gradwise.schedules.base import signature_repr

_STATE_KEYS = ("scale", "best", "bad_steps", "cooldown_left")


class Plateau:
    """Watch a metric and cut a ``scale`` (starting at 1) by ``factor`` when it stops improving.

    Feed it one value per evaluation with :meth:`update`. With ``best`` the best value so far,
    a value ``v`` is an improvement when::

        mode="min", threshold_mode="rel":   v < best · (1 − threshold)
        mode="min", threshold_mode="abs":   v < best − threshold
        mode="max", threshold_mode="rel":   v > best · (1 + threshold)
        mode="max", threshold_mode="abs":   v > best + threshold

    An improvement sets ``best = v``; any other value (NaN included) is a bad step. Bad steps
    during the ``cooldown`` updates after a cut are not counted. When more than ``patience``
    bad steps have been counted::

        scale ← max(scale · factor, min_scale)

    and the cooldown starts. The rate a :class:`Scheduler` sets is ``base · schedule(t) · scale``.

    Differences: every argument means what it means in PyTorch's ``ReduceLROnPlateau``, which
    gives the same rates when nothing else schedules them (its ``min_lr`` is ``Scheduler``'s
    ``min_lr``). PyTorch cuts the optimizer's current rate, so it cannot be combined with another
    scheduler; here the cut is a factor of its own that multiplies any schedule. PyTorch's
    ``eps`` (ignore cuts smaller than ``eps``) is not needed: ``min_scale`` bounds the factor.
    Keras's ``ReduceLROnPlateau`` counts ``patience`` differently (a cut after ``patience`` bad
    epochs, not more than ``patience``) and compares with ``min_delta`` only.

    Example::

        >>> p = Plateau(patience=1)
        >>> [p.update(v) for v in (1.0, 0.5, 0.6, 0.7)], p.scale
        ([False, False, False, True], 0.1)
    """

    def __init__(
        self,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_scale: float = 0.0,
    ) -> None:
        owner = "Plateau"
        self.mode = checks.choice(owner, "mode", mode, ("min", "max"))
        self.factor = checks.in_range(owner, "factor", factor, 0, 1)
        self.patience = checks.integer(owner, "patience", patience, low=0)
        self.threshold = checks.at_least(owner, "threshold", threshold, 0)
        self.threshold_mode = checks.choice(owner, "threshold_mode", threshold_mode, ("rel", "abs"))
        self.cooldown = checks.integer(owner, "cooldown", cooldown, low=0)
        self.min_scale = checks.in_range(owner, "min_scale", min_scale, 0, 1, closed_high=True)
        self.scale = 1.0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.bad_steps = 0
        self.cooldown_left = 0

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats ``best`` by the threshold."""
        best, th = self.best, self.threshold
        if self.mode == "min":
            return value < (best * (1 - th) if self.threshold_mode == "rel" else best - th)
        return value > (best * (1 + th) if self.threshold_mode == "rel" else best + th)

    def update(self, value) -> bool:
        """Record one metric value (a number or a one-element tensor); return whether ``scale``
        was just cut."""
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            checks.refuse("Plateau", "value", "a number or a one-element tensor", value, TypeError)
        value = float(value)
        if self.improves(value):
            self.best = value
            self.bad_steps = 0
        else:
            self.bad_steps += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_steps = 0
        if self.bad_steps <= self.patience:
            return False
        old = self.scale
        self.scale = max(old * self.factor, self.min_scale)
        self.cooldown_left = self.cooldown
        self.bad_steps = 0
        return self.scale < old

    def state_dict(self) -> dict:
        """The running state (``scale``, ``best``, ``bad_steps``, ``cooldown_left``); the
        arguments are configuration and stay with the constructor."""
        return {k: getattr(self, k) for k in _STATE_KEYS}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"Plateau: state_dict lacks {', '.join(missing)}")
        self.scale = float(state["scale"])
        self.best = float(state["best"])
        self.bad_steps = int(state["bad_steps"])
        self.cooldown_left = int(state["cooldown_left"])

    def __repr__(self) -> str:
        return signature_repr(self)

"""Bind a schedule (and optionally a plateau) to an optimizer's param groups."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gradwise import checks
from gradwise.errors import CheckpointError, ConfigError
from gradwise.schedules.base import Schedule, check_schedule
from gradwise.schedules.decay import Constant
from gradwise.schedules.plateau import Plateau


class Scheduler:
    """Set every param group's learning rate from a schedule, a plateau and a floor.

    For group ``i`` with base rate ``base_i`` (its ``lr`` when the scheduler was built, kept in
    the group as ``initial_lr``)::

        lr_i(t) = max(min_lr_i, base_i · schedule(t) · plateau.scale)

    The rates are set at construction (``t = 0``) and again by each :meth:`step` (which advances
    ``t``: call it per batch or per epoch, as you like) and each :meth:`report` (which feeds the
    plateau a metric). So warmup, then cosine, cut further whenever validation stalls, is one
    object. ``schedule`` may be a :class:`Schedule` or mini-language text (see :func:`parse`).

    Works with any optimizer whose ``param_groups`` are dicts with ``"lr"`` (gradwise's and
    ``torch.optim``'s). Groups added to the optimizer later are adopted with their ``lr`` then
    as base rate.

    Differences: PyTorch needs ``SequentialLR``/``ChainedScheduler`` to join schedules and cannot
    put ``ReduceLROnPlateau`` on top of them; Keras's schedules and ``ReduceLROnPlateau`` callback
    refuse to mix. Like PyTorch, an ``initial_lr`` already in a group (e.g. from a loaded
    optimizer ``state_dict``) is taken as its base rate.

    Example::

        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> opt = torch.optim.SGD([w], lr=0.1)
        >>> sched = Scheduler(opt, "warmup:2,cosine:4", plateau=Plateau(patience=0))
        >>> sched.lrs
        [0.0]
        >>> for _ in range(4):  # t = 4: half-way down the cosine
        ...     sched.step()
        >>> round(sched.lrs[0], 6)
        0.05
        >>> sched.report(1.0), sched.report(2.0), round(sched.lrs[0], 6)
        (False, True, 0.005)
    """

    def __init__(
        self,
        optimizer,
        schedule: Schedule | str = Constant(),  # noqa: B008
        plateau: Plateau | None = None,
        min_lr: float | list[float] = 0.0,
    ) -> None:
        owner = "Scheduler"
        groups = getattr(optimizer, "param_groups", None)
        if not isinstance(groups, list) or not all(
            isinstance(g, Mapping) and "lr" in g for g in groups
        ):
            checks.refuse(
                owner,
                "optimizer",
                "an optimizer with param_groups (dicts with 'lr')",
                optimizer,
                TypeError,
            )
        if isinstance(schedule, str):
            from gradwise.schedules.language import parse

            schedule = parse(schedule)
        self.optimizer = optimizer
        self.schedule = check_schedule(owner, "schedule", schedule)
        if plateau is not None and not isinstance(plateau, Plateau):
            checks.refuse(owner, "plateau", "a Plateau or None", plateau, TypeError)
        self.plateau = plateau
        if isinstance(min_lr, list | tuple):
            if len(min_lr) != len(groups):
                checks.refuse(owner, "min_lr", f"a number or {len(groups)} numbers", min_lr)
            self.min_lr: float | list[float] = [
                checks.at_least(owner, f"min_lr[{i}]", v, 0) for i, v in enumerate(min_lr)
            ]
        else:
            self.min_lr = checks.at_least(owner, "min_lr", min_lr, 0)
        self.base_lrs: list[float] = []
        self.t = 0
        self._apply()

    def _min_lrs(self) -> list[float]:
        n = len(self.optimizer.param_groups)
        if not isinstance(self.min_lr, list):
            return [self.min_lr] * n
        if len(self.min_lr) != n:
            raise ConfigError(
                f"Scheduler: min_lr has {len(self.min_lr)} values but the optimizer now has "
                f"{n} param groups; give one min_lr for all or set scheduler.min_lr"
            )
        return self.min_lr

    def _apply(self) -> None:
        groups = self.optimizer.param_groups
        for group in groups[len(self.base_lrs) :]:
            lr = group["lr"]
            group.setdefault("initial_lr", lr.clone() if isinstance(lr, torch.Tensor) else lr)
            self.base_lrs.append(float(group["initial_lr"]))
        factor = self.factor
        for group, base, floor in zip(groups, self.base_lrs, self._min_lrs()):
            lr = max(floor, base * factor)
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    @property
    def factor(self) -> float:
        """``schedule(t) · plateau.scale``: the multiplier of the base rates now (before the
        ``min_lr`` floor)."""
        scale = self.plateau.scale if self.plateau is not None else 1.0
        return self.schedule(self.t) * scale

    @property
    def lrs(self) -> list[float]:
        """The param groups' current rates."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def step(self) -> None:
        """Advance ``t`` by one and set the rates for it."""
        self.t += 1
        self._apply()

    def report(self, metric) -> bool:
        """Feed the plateau one metric value and set the rates; return whether it cut them."""
        if self.plateau is None:
            raise ConfigError(
                "Scheduler: report() needs a plateau; build Scheduler(..., plateau=Plateau(...))"
            )
        reduced = self.plateau.update(metric)
        self._apply()
        return reduced

    def state_dict(self) -> dict:
        """``t``, the base rates and the plateau's state: all that resuming needs besides the
        schedule itself (configuration, passed to the constructor again)."""
        return {
            "t": self.t,
            "base_lrs": list(self.base_lrs),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned and set the rates it implies."""
        missing = [k for k in ("t", "base_lrs", "plateau") if k not in state]
        if missing:
            raise CheckpointError(f"Scheduler: state_dict lacks {', '.join(missing)}")
        groups = self.optimizer.param_groups
        if len(state["base_lrs"]) != len(groups):
            raise CheckpointError(
                f"Scheduler: state_dict has {len(state['base_lrs'])} base rates but the optimizer "
                f"has {len(groups)} param groups"
            )
        if (state["plateau"] is None) != (self.plateau is None):
            saved, here = ("a", "none") if state["plateau"] is not None else ("no", "a")
            raise CheckpointError(
                f"Scheduler: state_dict holds {saved} plateau state but this scheduler has {here} "
                "plateau"
            )
        self.t = int(state["t"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        for group, base in zip(groups, self.base_lrs):
            group["initial_lr"] = base
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])
        self._apply()

    def __repr__(self) -> str:
        extra = "" if self.plateau is None else f", plateau={self.plateau!r}"
        extra += "" if self.min_lr == 0 else f", min_lr={self.min_lr!r}"
        return f"Scheduler({type(self.optimizer).__name__}, {self.schedule!r}{extra})"

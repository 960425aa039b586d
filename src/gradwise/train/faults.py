"""``fit()``'s fault policy: NaN and infinities in the loss, the gradients and the parameters.

A NaN or infinite loss or gradient stops the run naming the step and the parameter
(``nan_policy="raise"``, :class:`Diverged`) or drops that step (``"skip"``, warned with
:class:`SkippedStepWarning`). Parameters that became NaN or infinite, or an epoch's worth of
skipped steps in a row, are :class:`Diverged` under either policy.

The checks themselves are :func:`finite` (one tensor) and :func:`all_finite` (many: one
multi-tensor kernel and one device sync, tensor by tensor only where the kernel cannot serve).
"""

from __future__ import annotations

import math
import operator
import warnings

import torch
from torch import Tensor

from gradwise.errors import GradwiseError
from gradwise.train import native
from gradwise.train.history import History

_GRAD = operator.attrgetter("grad")


class Diverged(GradwiseError, FloatingPointError):
    """The loss, a gradient or a parameter became NaN or infinite.

    ``step`` is the optimizer step at fault (1-based), ``where`` what held the value (``"the
    loss"``, ``"the gradient of <name>"`` or ``"parameter <name>"``).
    """

    def __init__(self, message: str, step: int | None = None, where: str | None = None) -> None:
        super().__init__(message)
        self.step, self.where = step, where


class SkippedStepWarning(RuntimeWarning):
    """A step was dropped because its loss or a gradient was NaN or infinite (``"skip"``)."""


#: ``nan_policy="skip"`` warns for this many skipped steps per ``fit()``, then only counts them
SKIP_WARNINGS = 5
#: ``nan_policy="skip"`` raises :class:`Diverged` after an epoch's worth of steps in a row were
#: skipped, and at least this many: the run cannot recover
MIN_SKIPS_IN_A_ROW = 10
#: an epoch whose mean training loss is over this many times the first step's diverged, NaN or
#: not (``--lr 1e6`` with Adam: 4.5e18 after a first loss of 2.3)
LOSS_GROWTH = 10.0


def finite(tensor: Tensor) -> bool:
    """Whether ``tensor`` holds no NaN and no infinity."""
    return bool(torch.isfinite(tensor).all())


def all_finite(tensors: list[Tensor], flag: tuple[Tensor, Tensor] | None = None) -> bool:
    """Whether every tensor of ``tensors`` (not empty) holds no NaN and no infinity.

    Screened with one multi-tensor kernel (the one ``GradScaler`` uses, scaling by exactly 1)
    and one sync: a per-tensor comparison on the device would cost more. ``flag`` is the
    kernel's ``(found, one)`` pair of one-element float32 tensors, kept by a caller that checks
    every step (``found`` is left zero); tensors on several devices, or of a dtype the kernel
    refuses, are looked at one by one."""
    if all(t.is_floating_point() for t in tensors):
        if flag is None:
            device = tensors[0].device
            flag = (  # the kernel's dtype, whatever torch's default dtype is
                torch.zeros(1, device=device, dtype=torch.float32),
                torch.ones(1, device=device, dtype=torch.float32),
            )
        found, one = flag
        try:
            torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, one)
        except RuntimeError:  # several devices: one tensor at a time
            found.zero_()
        else:
            if not bool(found):
                return True
            found.zero_()
            return False
    return all(finite(t) for t in tensors)


def first_nonfinite(tensors: list[Tensor | None]) -> int | None:
    """Index of the first tensor holding a NaN or an infinity (``None`` entries skipped): all
    screened at once (:func:`all_finite`), looked at one by one only when it finds something."""
    present = [t.detach() for t in tensors if t is not None]
    if not present or all_finite(present):
        return None
    for i, t in enumerate(tensors):
        if t is not None and not finite(t):
            return i
    return None


class Faults:
    """Checks for NaN / inf in the loss, the gradients and the parameters, and the policy."""

    def __init__(self, policy, history: History, params: list[Tensor], names: dict, per_epoch):
        self.policy, self.history, self.params, self.names = policy, history, params, names
        #: ``"skip"`` gives up after this many skipped steps in a row: the run has diverged
        self.limit = max(MIN_SKIPS_IN_A_ROW, per_epoch or 0)
        self.warned = self.consecutive = 0
        device = params[0].device if params else torch.device("cpu")
        flag = dict(device=device, dtype=torch.float32)  # what the kernel takes, always
        self.flag = (torch.zeros(1, **flag), torch.ones(1, **flag))
        self.step = self.epoch = self.batch = 0
        #: the native helpers serve CPU parameters (once they are built)
        self.native = device.type == "cpu" and bool(params)

    def all_finite(self, loss: Tensor) -> bool:
        """Whether the loss and every gradient are finite: one native call (CPU), else
        :func:`all_finite`."""
        helpers = native.helpers() if self.native else None
        if helpers is not None:
            answer = helpers.all_finite(self.params, loss)
            if answer >= 0:
                return answer == 1
        tensors = [loss]
        tensors += [g for g in map(_GRAD, self.params) if g is not None]
        return all_finite(tensors, self.flag)

    def at_fault(
        self, loss: Tensor, step: int, epoch: int, batch: int, gradients: bool = True
    ) -> bool:
        """A step (1-based ``step``, ``epoch`` and ``batch``) whose loss or gradients are not all
        finite: :class:`Diverged`, or True when the step is to be dropped (``"skip"``); False
        when a closer look finds everything finite after all. ``gradients=False``: the loss
        alone (a loss scaler deals with overflowing float16 gradients itself)."""
        self.step, self.epoch, self.batch = step, epoch, batch
        return self._loss(loss) or (gradients and self._gradients(loss))

    def stepped(self) -> None:
        """A step was taken: the count of skipped steps in a row starts over."""
        self.consecutive = 0

    @property
    def place(self) -> str:
        return f"step {self.step} (epoch {self.epoch}, batch {self.batch})"

    def _name(self, i: int) -> str:
        return self.names.get(id(self.params[i]), f"parameter {i}")

    def _loss(self, loss: Tensor) -> bool:
        """A non-finite loss: overflowed parameters, or raise / skip per policy (True)."""
        if finite(loss.detach()):
            return False
        self.parameters(self.step - 1)
        self._handle("the loss", f"the loss is {float(loss.detach())} at {self.place}")
        return True

    def _gradients(self, loss: Tensor) -> bool:
        """Whether a gradient is non-finite (then raise, or count the step as skipped)."""
        bad = first_nonfinite([p.grad for p in self.params])
        if bad is None:
            return False
        where = f"the gradient of {self._name(bad)}"
        value = float(loss.detach())
        self._handle(where, f"{where} holds NaN or inf at {self.place} (loss {value:.4g})")
        return True

    def loss_growth(self, step: int) -> None:
        """Raise :class:`Diverged` if the last epoch's mean training loss is over
        :data:`LOSS_GROWTH` times the run's first step's (both finite: NaN and inf are caught
        per step). Checked before the epoch's checkpoint, so the last one kept is good."""
        h = self.history
        if not h.steps or not h.epochs:
            return
        first, last = h.steps[0]["loss"], h.epochs[-1].get("train_loss")
        if last is None or not (math.isfinite(first) and math.isfinite(last)):
            return
        if last > LOSS_GROWTH * max(first, 1e-12):
            epoch = h.epochs[-1]["epoch"]
            raise Diverged(
                f"training diverged: the training loss grew from {first:.4g} at the first step "
                f"to {last:.4g} in epoch {epoch} (over {LOSS_GROWTH:g}x); lower the learning "
                "rate",
                step,
                "the training loss",
            )

    def parameters(self, step: int) -> None:
        """Raise :class:`Diverged` (whatever the policy) if a parameter is NaN or infinite."""
        bad = first_nonfinite(self.params)
        if bad is None:
            return
        name = self._name(bad)
        raise Diverged(
            f"training diverged: parameter {name} holds NaN or inf after step {step} (the update "
            "overflowed); lower the learning rate",
            step,
            f"parameter {name}",
        )

    def _handle(self, where: str, message: str) -> None:
        if self.policy == "raise":
            raise Diverged(
                f"training diverged: {message}; lower the learning rate, or set nan_policy to "
                "'skip' to drop such steps",
                self.step,
                where,
            )
        self.history.skipped_steps += 1
        self.consecutive += 1
        if self.consecutive >= self.limit:
            raise Diverged(
                f"training diverged: {self.consecutive} steps in a row had a NaN or inf loss or "
                f"gradient (nan_policy='skip'), the last: {message}; lower the learning rate",
                self.step,
                where,
            )
        if self.warned < SKIP_WARNINGS:
            self.warned += 1
            more = (
                "; further skipped steps are only counted" if self.warned == SKIP_WARNINGS else ""
            )
            # attributed to fit()'s caller: _handle, _loss or _gradients, at_fault, the epoch
            # and the epochs of fit()'s loop, fit
            warnings.warn(f"step skipped: {message}{more}", SkippedStepWarning, stacklevel=7)

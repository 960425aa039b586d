"""fit()'s native helpers: the NaN/inf guard and the step's bookkeeping in one call (CPU).

* ``all_finite(params, loss)``: whether the loss and every gradient are finite, without
  building the list of gradients and reading back a device flag as PyTorch's multi-tensor check
  does: on a small model that is a noticeable part of a step.
* ``record(params, loss, out, labels, right, losses)``: that guard, then the loss's value
  appended to the epoch's list and the batch's right predictions (as ``torch.argmax`` picks
  them) added to ``right``, in place of two ``detach()`` calls, list appends and a kept output
  per step in Python.

They are in ``native.cpp`` beside this file, written against PyTorch's public extension API, and
built like the engine's helpers (:class:`gradwise.optim.native.Extension`): once per machine, in
a child process, while the Python versions serve.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from gradwise.optim.native import Extension

TRAINER = Extension("train", Path(__file__).with_name("native.cpp"))


def helpers(wait: bool = False) -> ModuleType | None:
    """fit()'s compiled helpers, or None while they are not (yet) built here."""
    return TRAINER.get(wait)

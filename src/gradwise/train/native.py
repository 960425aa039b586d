"""fit()'s native helpers: the NaN/inf guard and the step's bookkeeping in one call (CPU).

* ``all_finite(params, loss)``: whether the loss and every gradient are finite. PyTorch's
  multi-tensor check plus building its list and reading its flag took ~13 µs a step on a
  6-tensor MLP whose whole step takes 0.4 ms.
* ``record(params, loss, out, labels, right, losses)``: that guard, then the loss's value
  appended to the epoch's list and the batch's right predictions (as ``torch.argmax`` picks
  them) added to ``right``, which in Python took two ``detach()`` calls, list appends and a kept
  output per step.

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

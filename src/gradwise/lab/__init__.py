"""Experiments: the learning-rate finder, the comparison bench, and their plots.

* :func:`lr_find` — the learning-rate range test; suggests a rate (a tenth of the rate at
  the smoothed loss's minimum) and restores the model and optimizer afterwards;
  :func:`lr_find_for` runs it on a training configuration, as ``gradwise lr-find`` does.
* :func:`compare` — trains configurations x seeds in parallel processes and summarizes them
  (``curves.png``, ``summary.md``, ``summary.csv``); :func:`grid` builds the configurations.
* :func:`tune` — searches configurations with Optuna (``gradwise[tune]``) and reports the best.
"""

from gradwise.lab.compare import Comparison, RunRecord, compare, grid
from gradwise.lab.lr_find import RULES, LRFindResult, lr_find, lr_find_for
from gradwise.lab.tune import tune

__all__ = [
    "RULES",
    "Comparison",
    "LRFindResult",
    "RunRecord",
    "compare",
    "grid",
    "lr_find",
    "lr_find_for",
    "tune",
]

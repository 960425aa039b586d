"""The comparison bench: the same model on the same data under several configurations x seeds.

:func:`compare` trains every configuration once per seed, each run in its own process (at most
``jobs`` at a time, one torch thread each), and returns a :class:`Comparison` that summarizes the
runs (final and best accuracy mean ± std, steps and time to a target accuracy, diverged runs
flagged) and draws their curves. :func:`grid` builds the configurations from lists of choices
(optimizers x rates x batch modes x schedules x inits x regularizers) with short labels.

The code is in three modules: :mod:`~gradwise.lab.compare.records` (the runs, the summary and
the report files), :mod:`~gradwise.lab.compare.runner` (the runs in a process pool) and
:mod:`~gradwise.lab.compare.grids` (building, labelling and parsing configurations).
"""

from gradwise.lab.compare.grids import REGULARIZERS as REGULARIZERS
from gradwise.lab.compare.grids import grid, parse_regularizer, parse_schedule_choice
from gradwise.lab.compare.grids import label_configs as label_configs
from gradwise.lab.compare.records import Comparison, RunRecord
from gradwise.lab.compare.records import fmt_mean_std as fmt_mean_std
from gradwise.lab.compare.records import mean_std as mean_std
from gradwise.lab.compare.runner import compare
from gradwise.lab.compare.runner import default_jobs as default_jobs
from gradwise.lab.compare.runner import slug as slug
from gradwise.lab.compare.runner import train_one as train_one

__all__ = [
    "Comparison",
    "RunRecord",
    "compare",
    "grid",
    "parse_regularizer",
    "parse_schedule_choice",
]

"""``gradwise tune``: search training configurations with Optuna (an optional dependency:
``pip install 'gradwise[tune]'``).

* :func:`tune` — draws configurations from a :class:`Space` (optimizer, lr, schedule, momentum
  or betas, weight decay, L1, dropout, init, batch size, epochs, width and depth), trains each
  one as ``gradwise train`` would, prunes the poor ones on their validation accuracy, and
  writes ``best.toml``, ``summary.md`` and Optuna's plots; the best configuration is then
  retrained with several seeds beside the defaults.
* :class:`Space` — the search space and its ``--space FILE.toml`` overrides.
"""

from gradwise.lab.tune.report import TuneResult
from gradwise.lab.tune.search import PRUNERS, Progress, open_storage, tune
from gradwise.lab.tune.space import KEYS, SCHEDULES, Space, default_space

__all__ = [
    "KEYS",
    "PRUNERS",
    "SCHEDULES",
    "Progress",
    "Space",
    "TuneResult",
    "default_space",
    "open_storage",
    "tune",
]

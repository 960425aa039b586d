"""Training: fit loop, batch modes, callbacks, metrics, checkpoints, data and model builders."""

from gradwise.train.callbacks import Callback, EarlyStopping
from gradwise.train.data import DATASETS, Dataset, load_dataset
from gradwise.train.faults import Diverged
from gradwise.train.files import load_file
from gradwise.train.history import History
from gradwise.train.loop import fit
from gradwise.train.metrics import evaluate
from gradwise.train.models import cnn1d, mlp

__all__ = [
    "DATASETS",
    "Callback",
    "Dataset",
    "Diverged",
    "EarlyStopping",
    "History",
    "cnn1d",
    "evaluate",
    "fit",
    "load_dataset",
    "load_file",
    "mlp",
]

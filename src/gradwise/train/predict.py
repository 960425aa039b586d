"""Predictions in the data's own terms: class names and probabilities, or original units.

A run's ``model.json`` (:mod:`gradwise.train.export`) holds the feature names and the
standardization statistics of its training data; :func:`predict_csv` reads the feature columns of
a new CSV by name (other columns, e.g. the target, are ignored), standardizes them with
:func:`gradwise.train.data.scale`, runs the model and writes, per row:

- classification: ``label`` (the class name, as in the training CSV) and ``p_<class>`` for each
  class (softmax probabilities);
- regression: ``prediction`` (``prediction_1`` ... for several targets), in the target's units.

:func:`original_units_errors` gives a regression model's RMSE and MAE in the target's units (what
``gradwise train`` reports as ``test_rmse`` and ``test_mae``).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gradwise.errors import DataError
from gradwise.train.data import scale, unscale


def read_features(path: str | Path, description: dict) -> Tensor:
    """The standardized features of a CSV / TSV file's rows, columns chosen by the training
    data's feature names (or, without names, the first ``input_shape[0]`` columns)."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".tsv"):
        raise DataError(f"{path}: predict reads .csv or .tsv files; received {path.suffix!r}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a CSV file (not UTF-8 text)") from None
    reader = csv.reader(io.StringIO(text), delimiter="\t" if path.suffix == ".tsv" else ",")
    rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header row and at least one data row")
    header = [h.strip() for h in rows[0][1]]
    n = description["input_shape"][0]
    names = description.get("feature_names")
    if names:
        missing = [name for name in names if name not in header]
        if missing:
            shown = ", ".join(missing[:5]) + (
                f" (and {len(missing) - 5} more)" * (len(missing) > 5)
            )
            raise DataError(
                f"{path}: missing feature column(s) {shown}; the model was trained on "
                f"{len(names)} named features"
            )
        columns = [header.index(name) for name in names]
    elif len(header) >= n:
        columns = list(range(n))
    else:
        raise DataError(f"{path}: {len(header)} columns; the model takes {n} features")
    x = np.empty((len(rows) - 1, len(columns)))
    for i, (line, row) in enumerate(rows[1:]):
        if len(row) != len(header):
            raise DataError(
                f"{path}: line {line} has {len(row)} fields; the header has {len(header)}"
            )
        for j, c in enumerate(columns):
            try:
                x[i, j] = float(row[c])
            except ValueError:
                x[i, j] = math.nan
            if not math.isfinite(x[i, j]):
                raise DataError(
                    f"{path}: line {line}, column {header[c]!r}: {row[c]!r} is not a finite number"
                )
    s = description["scaling"]
    return torch.from_numpy(scale(x, np.array(s["mean"]), np.array(s["std"]))).float()


def predict(model: nn.Module, description: dict, x: Tensor) -> tuple[list[str], list[list]]:
    """``(column names, rows)`` of predictions for standardized features ``x``."""
    model.eval()
    with torch.no_grad():
        out = model(x.to(_device(model))).float().cpu()
    if description["task"] == "classification":
        names = description["class_names"]
        probabilities = out.softmax(dim=1)
        labels = probabilities.argmax(dim=1).tolist()
        rows = [
            [names[k], *(f"{p:.6g}" for p in ps)]
            for k, ps in zip(labels, probabilities.tolist(), strict=True)
        ]
        return ["label", *(f"p_{name}" for name in names)], rows
    s = description["scaling"]
    values = unscale(out.reshape(len(out), -1).double(), _t(s["y_mean"]), _t(s["y_std"]))
    k = values.shape[1]
    columns = ["prediction"] if k == 1 else [f"prediction_{i + 1}" for i in range(k)]
    return columns, [[f"{v:.7g}" for v in row] for row in values.tolist()]


def predict_csv(run: str | Path, data: str | Path) -> str:
    """The predictions of the model in run folder (or exported file) ``run`` for the rows of the
    CSV file ``data``, as CSV text."""
    from gradwise.train.export import load_with_description

    model, description = load_with_description(run)
    columns, rows = predict(model, description, read_features(data, description))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def original_units_errors(model: nn.Module, x: Tensor, y: Tensor, y_mean, y_std) -> dict:
    """``{"rmse", "mae"}`` of a regression model on standardized ``(x, y)``, in the target's
    original units (predictions and targets unstandardized with ``y_mean``, ``y_std``)."""
    model.eval()
    with torch.no_grad():
        pred = model(x.to(_device(model))).float().cpu().reshape(y.shape)
    error = unscale(pred.double(), _t(y_mean), _t(y_std)) - unscale(
        y.double(), _t(y_mean), _t(y_std)
    )
    return {"rmse": float(error.pow(2).mean().sqrt()), "mae": float(error.abs().mean())}


def _t(values) -> Tensor:
    return torch.as_tensor(values, dtype=torch.float64)


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")

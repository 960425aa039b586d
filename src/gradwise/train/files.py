"""User data files for the trainer: CSV / TSV, NumPy ``.npz`` and PyTorch ``.pt`` / ``.pth``.

:func:`load_file` reads a file, checks it (every problem reported with the file, the row or key
and what is allowed), infers the task where asked to, and splits and scales it into a
:class:`~gradwise.train.data.Dataset` exactly as the bundled datasets are (see
:mod:`gradwise.train.data`): ``seed`` chooses the test rows (``test_fraction`` of all rows, unless
the file gives its own split) and the validation rows (``val_fraction`` of the rest).
"""

from __future__ import annotations

import csv
import functools
import io
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gradwise import checks
from gradwise.errors import DataError
from gradwise.train.data import Dataset, assemble, shorten

#: values of ``task`` accepted by :func:`load_file`
TASKS: tuple[str, ...] = ("auto", "classification", "regression")
#: file types accepted by :func:`load_file`
FILE_TYPES: tuple[str, ...] = (".csv", ".tsv", ".npz", ".pt", ".pth")

_MAX_AUTO_CLASSES = 20  # task="auto": a CSV integer target with at most this many values is classes
_MISSING = ("", "na", "n/a", "null", "none", "?")  # CSV cells read as missing
_INT = re.compile(r"[+-]?\d+")


# ---------------------------------------------------------------------------------------------
# User files
# ---------------------------------------------------------------------------------------------


def load_file(
    path: str | Path,
    *,
    target: str | int | None = None,
    task: str = "auto",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    standardize: bool = True,
    n_classes: int | None = None,
) -> Dataset:
    """A dataset from a CSV, NPZ or ``.pt`` file, split and scaled like the bundled ones.

    File types:
        ``.csv`` / ``.tsv``: a header row naming the columns, then one row per example, comma (tab)
        separated. ``target`` picks the target column by name (or index); default the last column.
        Every other column is a feature and must be numeric. The cells ``""``, ``NA``, ``N/A``,
        ``null``, ``None`` and ``?`` count as missing, which is an error.
        ``.npz``: arrays ``x`` (rows, features) and ``y``; or pre-split ``x_train``, ``y_train``
        with optional ``x_val``, ``y_val``, ``x_test``, ``y_test``.
        ``.pt`` / ``.pth``: a dict with the same keys holding tensors, saved with ``torch.save``;
        it is read with ``torch.load(weights_only=True)``, never as an arbitrary pickle.

    Task:
        ``"auto"`` picks classification for string targets, for integer CSV targets with at most
        20 distinct values and for integer / bool arrays; regression for other numbers. In a CSV,
        class labels (strings or integers) are mapped to 0..K-1 in sorted order and kept in
        ``class_names``. In NPZ / ``.pt`` files integer labels are already class indices and must be
        ``>= 0``. ``n_classes``, when given, makes integer labels class indices in every file type
        and they must lie in ``[0, n_classes)``.

    Splits:
        ``test_fraction`` of all rows is held out for testing, then ``val_fraction`` of the rest for
        validation, both chosen by ``seed`` and stratified for classification. Splits present in a
        pre-split file are used as given. Either fraction may be 0 (no such split).

    Raises:
        DataError: a one-line message naming the file and the problem (missing or empty file,
            unsupported type, unknown target column, non-numeric feature, missing or non-finite
            values, a single class, bad labels, mismatched lengths, too few rows to split).
    """
    owner = "load_file"
    if target is not None and (isinstance(target, bool) or not isinstance(target, str | int)):
        checks.refuse(owner, "target", "a column name, an index or None", target, TypeError)
    task = checks.choice(owner, "task", task, TASKS)
    seed = checks.integer(owner, "seed", seed, 0)
    val_fraction = checks.in_range(owner, "val_fraction", val_fraction, 0.0, 1.0)
    test_fraction = checks.in_range(owner, "test_fraction", test_fraction, 0.0, 1.0)
    standardize = checks.flag(owner, "standardize", standardize)
    if n_classes is not None:
        n_classes = checks.integer(owner, "n_classes", n_classes, 2)

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file (a directory?); give a .csv, .npz or .pt file")
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise DataError(
            f"{path}: unsupported file type {suffix or '(no extension)'!r}; use .csv or .tsv "
            "(header row, numeric features), .npz (arrays x, y) or .pt (dict of tensors x, y)"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")

    if suffix in (".csv", ".tsv"):
        parts = _read_csv(path, "\t" if suffix == ".tsv" else ",", -1 if target is None else target)
    else:
        if target is not None:
            raise DataError(f"{path}: target= is for CSV files; an {suffix} file names x and y")
        parts = _read_arrays(str(path), _read_npz(path) if suffix == ".npz" else _read_pt(path))
    task, ys, n_classes, class_names = _targets(str(path), parts, task, n_classes)
    x = parts.x
    return assemble(
        path.stem,
        task,
        x["train"],
        ys["train"],
        x_val=x.get("val"),
        y_val=ys.get("val"),
        x_test=x.get("test"),
        y_test=ys.get("test"),
        seed=seed,
        test_seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        standardize=standardize,
        n_classes=n_classes,
        feature_names=parts.feature_names,
        class_names=class_names,
        source=str(path),
    )


@dataclass
class _Parts:
    """What a file holds, checked but before the task is decided: per split ("train" for unsplit
    rows, "val", "test") finite float64 features and raw targets (numbers or strings)."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    y_name: dict[str, str]  # how messages call each split's targets
    where: Callable[[str, int], str]  # (split, row) -> "line 7" or "row 6"
    feature_names: tuple[str, ...] | None = None
    labels_are_values: bool = False  # CSV: integer labels are mapped, not class indices


def _read_csv(path: Path, delimiter: str, target: str | int) -> _Parts:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a CSV file (not UTF-8 text); expected a header row") from None
    if "\x00" in text:
        raise DataError(f"{path}: not a CSV file (binary content); expected a header row")
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected a header row and data rows")
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows, lines = [], []
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{path}: not a valid CSV file ({e})") from None

    sep = "tab" if delimiter == "\t" else repr(delimiter)
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise DataError(
            f"{path}: the header has 1 column; a CSV needs feature columns and a target column "
            f"separated by {sep}"
        )
    if all(_is_number(h) for h in header):
        raise DataError(
            f"{path}: the first row {shorten(','.join(header), 60)!r} looks like data; add a "
            "header row naming the columns"
        )
    if "" in header:
        raise DataError(
            f"{path}: column {header.index('') + 1} has no name in the header (an index column "
            "written by pandas?); name it or drop it"
        )
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise DataError(f"{path}: duplicate column names in the header: {', '.join(duplicates)}")
    if len(rows) == 1:
        raise DataError(f"{path}: the file has a header but no data rows")
    for row, line in zip(rows[1:], lines[1:]):
        if len(row) != len(header):
            raise DataError(
                f"{path}: line {line} has {len(row)} fields but the header has {len(header)} "
                f"(separator {sep})"
            )
    if isinstance(target, str) and target not in header:
        raise DataError(
            f"{path}: no target column {target!r}; the columns are: "
            f"{shorten(', '.join(header), 300)}"
        )
    if isinstance(target, int) and not -len(header) <= target < len(header):
        raise DataError(
            f"{path}: target column index {target} is out of range for {len(header)} columns"
        )
    t = header.index(target) if isinstance(target, str) else target % len(header)

    table = np.char.strip(np.array(rows[1:], dtype=str))
    line_of = lines[1:]
    missing = np.isin(np.char.lower(table), _MISSING)
    if missing.any():
        i, j = (int(v) for v in np.argwhere(missing)[0])
        raise DataError(
            f"{path}: missing value in column {header[j]!r} at line {line_of[i]} "
            f"({_count(int(missing.sum()), 'missing cell')} in all); fill them in or drop the rows"
        )
    features = [j for j in range(len(header)) if j != t]
    columns = []
    for j in features:
        try:
            columns.append(table[:, j].astype(np.float64))
        except ValueError:
            i = next(i for i, cell in enumerate(table[:, j]) if not _is_number(cell))
            raise DataError(
                f"{path}: column {header[j]!r} is not numeric (e.g. {str(table[i, j])!r} at line "
                f"{line_of[i]}); features must be numbers: encode or drop the column"
            ) from None
    x = np.stack(columns, axis=1)
    bad = ~np.isfinite(x)
    if bad.any():
        i, k = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(
            f"{path}: column {header[features[k]]!r} has a non-finite value ({x[i, k]}) at line "
            f"{line_of[i]} ({int(bad.sum())} NaN/inf cells in all); features must be finite"
        )

    cells = table[:, t]
    if all(_INT.fullmatch(c) for c in cells.tolist()):
        y = cells.astype(np.int64)
    elif all(_is_number(c) for c in cells.tolist()):
        y = cells.astype(np.float64)
    else:
        y = cells
    return _Parts(
        {"train": x},
        {"train": y},
        {"train": f"target {header[t]!r}"},
        lambda split, i: f"line {line_of[i]}",
        feature_names=tuple(header[j] for j in features),
        labels_are_values=True,
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise DataError(
                f"{path}: not a valid .npz file (not a zip archive); save one with "
                "numpy.savez(path, x=x, y=y)"
            )
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:  # object arrays need pickle, which is refused
        raise DataError(
            f"{path}: holds object arrays, which need pickle and are refused ({_first_line(e)}); "
            "store numeric or string arrays x and y"
        ) from None
    except Exception as e:
        raise DataError(
            f"{path}: not a valid .npz file ({type(e).__name__}: {_first_line(e)}); save one with "
            "numpy.savez(path, x=x, y=y)"
        ) from None


def _read_pt(path: Path) -> dict[str, np.ndarray]:
    with path.open("rb") as f:
        if f.read(4)[:1] not in (b"P", b"\x80"):  # torch.save's zip archive, or a legacy pickle
            raise DataError(
                f"{path}: not a valid .pt file (not written by torch.save); save a dict of "
                "tensors, e.g. torch.save({'x': x, 'y': y}, path)"
            )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(
            f"{path}: holds Python objects that torch.load(weights_only=True) refuses to unpickle; "
            "save a dict of tensors, e.g. torch.save({'x': x, 'y': y}, path)"
        ) from None
    except Exception as e:
        raise DataError(
            f"{path}: not a valid .pt file ({type(e).__name__}: "
            f"{_first_line(e)}); save a dict of tensors, e.g. torch.save({{'x': x, 'y': y}}, path)"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: holds a {type(obj).__name__}, not a dict; save a dict of tensors, "
            "e.g. torch.save({'x': x, 'y': y}, path)"
        )
    out = {}
    for key, value in obj.items():
        if isinstance(value, Tensor):
            value = value.detach().cpu()
            out[str(key)] = (value.float() if value.dtype in _HALF else value).numpy()
        elif key in _ARRAY_KEYS:
            raise DataError(f"{path}: {key!r} is a {type(value).__name__}; store tensors")
    return out


_HALF = (torch.float16, torch.bfloat16)
_ARRAY_KEYS = ("x", "y", "x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def _read_arrays(source: str, arrays: dict[str, np.ndarray]) -> _Parts:
    """Check the arrays of an NPZ / ``.pt`` file: keys, shapes, dtypes, lengths, finiteness."""
    if "x" in arrays and "x_train" in arrays:
        raise DataError(f"{source}: has both 'x' and 'x_train'; use one layout")
    presplit = (
        "x" not in arrays and "y" not in arrays and ("x_train" in arrays or "y_train" in arrays)
    )
    keys = {"train": ("x_train", "y_train") if presplit else ("x", "y")}
    for split in ("val", "test"):
        if f"x_{split}" in arrays or f"y_{split}" in arrays:
            keys[split] = (f"x_{split}", f"y_{split}")
    x, y = {}, {}
    for split, (xk, yk) in keys.items():
        for k in (xk, yk):
            if k not in arrays:
                raise DataError(
                    f"{source}: no array {k!r} (keys: {', '.join(sorted(arrays)) or 'none'}); "
                    "need 'x' and 'y', or 'x_train' and 'y_train' (with optional x_val, y_val, "
                    "x_test, y_test)"
                )
        x[split], y[split] = _features(source, xk, arrays[xk]), arrays[yk]
        rows = len(y[split]) if y[split].ndim else "no"
        if rows != len(x[split]):
            raise DataError(
                f"{source}: {xk} has {len(x[split])} rows but {yk} has {rows}; they must match"
            )
    widths = {keys[s][0]: a.shape[1] for s, a in x.items()}
    if len(set(widths.values())) > 1:
        listed = ", ".join(f"{k} has {n}" for k, n in widths.items())
        raise DataError(f"{source}: the splits differ in their number of features ({listed})")
    return _Parts(x, y, {s: k[1] for s, k in keys.items()}, lambda split, i: f"row {i}")


def _features(source: str, key: str, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: {key} has dtype {x.dtype}; features must be numeric")
    if x.ndim != 2:
        raise DataError(
            f"{source}: {key} has shape {x.shape}; features must be 2-D (rows, features): "
            "use x.reshape(-1, 1) for one feature, x.reshape(len(x), -1) for images"
        )
    if 0 in x.shape:
        raise DataError(f"{source}: {key} has shape {x.shape}; it needs rows and features")
    x = x.astype(np.float64)
    _check_finite(source, key, x)
    return x


def _targets(
    source: str, parts: _Parts, task: str, n_classes: int | None
) -> tuple[str, dict[str, np.ndarray], int | None, tuple[str, ...] | None]:
    """Decide the task and turn raw targets into class indices (int64) or values (float64, 2-D).

    Returns ``(task, targets per split, n_classes, class_names)``.
    """
    ys = parts.y
    kinds = {y.dtype.kind for y in ys.values()}
    text = bool(kinds & set("US"))
    if not kinds <= set("biufUS") or (text and len(kinds) > 1):
        dtypes = ", ".join(sorted({str(y.dtype) for y in ys.values()}))
        raise DataError(f"{source}: targets have dtype {dtypes}; use all numbers or all strings")
    if task == "auto":
        few = (
            n_classes is not None
            or len(np.unique(np.concatenate(list(ys.values())))) <= _MAX_AUTO_CLASSES
        )
        if text or kinds == {"b"}:
            task = "classification"
        elif "f" in kinds:
            task = "regression"
        else:  # integers: labels in arrays; in a CSV, labels only when there are few values
            task = "classification" if few or not parts.labels_are_values else "regression"

    if task == "regression":
        if n_classes is not None:
            raise ValueError(
                f"load_file: n_classes is for classification, but {source} holds a regression "
                f"target; received n_classes={n_classes}"
            )
        out = {}
        for split, y in ys.items():
            if text:
                i = next(i for i, v in enumerate(y.tolist()) if not _is_number(v))
                raise DataError(
                    f"{source}: {parts.y_name[split]} is not numeric (e.g. {y[i].item()!r} at "
                    f"{parts.where(split, i)}); task='regression' needs numbers"
                )
            out[split] = y.astype(np.float64).reshape(len(y), -1)
            where = functools.partial(parts.where, split)
            _check_finite(source, parts.y_name[split], out[split], where)
        return task, out, None, None

    out = {}
    for split, y in ys.items():
        name = parts.y_name[split]
        y = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
        if y.ndim != 1:
            raise DataError(f"{source}: {name} has shape {y.shape}; class labels must be 1-D")
        if y.dtype.kind == "f":
            bad = ~np.isfinite(y) | (y != np.round(y))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"{source}: {name} has a label that is not an integer ({y[i]}) at "
                    f"{parts.where(split, i)}; class labels must be integers or strings"
                )
            y = y.astype(np.int64)
        out[split] = y
    distinct = np.unique(np.concatenate(list(out.values())))
    first = next(iter(out))
    if len(distinct) < 2:
        raise DataError(
            f"{source}: {parts.y_name[first]} has a single class ({distinct[0].item()!r}); "
            "classification needs at least 2 classes"
        )
    if text or (parts.labels_are_values and n_classes is None):  # map sorted values to 0..K-1
        if n_classes is not None and len(distinct) > n_classes:
            raise DataError(
                f"{source}: labels out of range: {len(distinct)} distinct labels in "
                f"{parts.y_name[first]} but n_classes={n_classes}"
            )
        k = n_classes or len(distinct)
        names = tuple(str(v) for v in distinct.tolist())
        names += tuple(str(i) for i in range(len(names), k))
        return task, {s: np.searchsorted(distinct, y) for s, y in out.items()}, k, names
    k = n_classes if n_classes is not None else int(distinct[-1]) + 1
    for split, y in out.items():
        i = int(np.argmin(y))
        if y[i] < 0:
            raise DataError(
                f"{source}: {parts.y_name[split]} has a negative label {y[i]} at "
                f"{parts.where(split, i)}; class labels must be integers 0..n_classes-1"
            )
        i = int(np.argmax(y))
        if y[i] >= k:
            raise DataError(
                f"{source}: {parts.y_name[split]} has label {y[i]} at {parts.where(split, i)}, "
                f"out of range for n_classes={k}; labels must be in 0..{k - 1}"
            )
    return task, {s: y.astype(np.int64) for s, y in out.items()}, k, None


def _check_finite(source: str, key: str, a: np.ndarray, where=lambda i: f"row {i}") -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        row, *col = (int(v) for v in np.argwhere(bad)[0])
        at = where(row) + (f", column {col[0]}" if a.ndim > 1 and a.shape[1] > 1 else "")
        raise DataError(
            f"{source}: {key} has a non-finite value ({a[bad][0]}) at {at} "
            f"({int(bad.sum())} NaN/inf values in all); values must be finite"
        )


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()  # no terminal colors
    return shorten(text[0], 160) if text else ""

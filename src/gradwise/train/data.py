"""Data for the trainer: bundled datasets that work offline (user files: :mod:`.files`).

Every loader returns a :class:`Dataset` of torch tensors split into train / validation / test, with
the features standardized by the training split's per-feature mean and std (kept on the dataset, so
new data can be put on the same scale with :meth:`Dataset.standardize`).

Bundled datasets (``load_dataset(name)``), nothing downloaded:

==============  ==============  ========  =======  ==========================================
name            task            features  classes  rows (train + val / test, val_fraction=0.1)
==============  ==============  ========  =======  ==========================================
``digits``      classification  64        10       1438 / 359  (UCI 8x8 digits, 1797 images)
``mnist1d``     classification  40        10       4000 / 1000 (MNIST-1D's published split)
``spirals``     classification  2         3        720 / 180   (three interleaved arms)
``moons``       classification  2         2        800 / 200   (two half circles, noise 0.1)
``regression``  regression      8         --       1600 / 400  (smooth function + noise)
==============  ==============  ========  =======  ==========================================

Splits are fixed and reproducible. A bundled dataset is a fixed benchmark: the same rows and the
same test set whatever ``seed`` is (MNIST-1D keeps its published 4000 / 1000 split; the others hold
out a fixed, stratified 20%). ``seed`` chooses which training rows become the validation set, a
``val_fraction`` of them (stratified for classification). For a user's file ``seed`` chooses both
the test rows (``test_fraction`` of all rows) and the validation rows (``val_fraction`` of the
rest).

Example::

    >>> from gradwise.train.data import load_dataset
    >>> data = load_dataset("digits", seed=0)
    >>> data.x_train.shape, data.y_train.dtype, data.n_classes
    (torch.Size([1294, 64]), torch.int64, 10)
"""

from __future__ import annotations

import functools
import gzip
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from torch import Tensor

from gradwise import checks
from gradwise.errors import DataError

#: names accepted by :func:`load_dataset`
DATASETS: tuple[str, ...] = ("digits", "mnist1d", "spirals", "moons", "regression")
#: the bundled datasets whose features are positions along one axis (a signal), which a shift
#: moves (:class:`~gradwise.train.augment.RandomShift`); digits' are an 8×8 image's pixels, the
#: others' unordered columns
SEQUENCES: tuple[str, ...] = ("mnist1d",)

_TEST_FRACTION = 0.2  # bundled datasets without a published split
_BUNDLED_SEED = 20_201_201  # fixes the rows and test split of the bundled datasets


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------


@dataclass(repr=False, eq=False)
class Dataset:
    """Train / validation / test tensors and what is known about them.

    Features are float32 of shape ``(rows, n_features)``. Targets are int64 class indices of shape
    ``(rows,)`` for classification, float32 of shape ``(rows, outputs)`` for regression. ``x_val``
    and ``y_val`` are ``None`` when ``val_fraction=0``; ``x_test`` and ``y_test`` are ``None`` only
    for a file loaded with ``test_fraction=0``.

    ``mean`` and ``std`` (float32, shape ``(n_features,)``) are the training split's statistics that
    were applied to every split: ``x = (raw - mean) / std`` (identity when ``standardize=False``;
    a constant feature keeps ``std = 1``). For regression ``y_mean`` and ``y_std`` do the same for
    the targets; :meth:`unstandardize_target` maps predictions back to the original units.
    """

    name: str
    task: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor | None
    y_val: Tensor | None
    x_test: Tensor | None
    y_test: Tensor | None
    n_classes: int | None
    mean: Tensor
    std: Tensor
    y_mean: Tensor | None = None
    y_std: Tensor | None = None
    feature_names: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        """``(x_train, y_train)``, the form :func:`gradwise.train.fit` takes."""
        return self.x_train, self.y_train

    @property
    def val(self) -> tuple[Tensor, Tensor] | None:
        return None if self.x_val is None else (self.x_val, self.y_val)

    @property
    def test(self) -> tuple[Tensor, Tensor] | None:
        return None if self.x_test is None else (self.x_test, self.y_test)

    def standardize(self, x) -> Tensor:
        """New raw features ``(rows, n_features)`` scaled like this data: ``(x - mean) / std``."""
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.shape[-1:] != (self.n_features,):
            raise DataError(
                f"{self.name}: expected {self.n_features} features; received shape {tuple(x.shape)}"
            )
        return scale(x, self.mean, self.std)

    def unstandardize_target(self, y) -> Tensor:
        """Regression outputs back in the target's original units: ``y * y_std + y_mean``."""
        if self.task != "regression":
            raise DataError(f"{self.name}: unstandardize_target is for regression datasets")
        return unscale(torch.as_tensor(y, dtype=torch.float32), self.y_mean, self.y_std)

    def scaling(self) -> dict:
        """The statistics applied to this data, as plain lists (for a run folder's files):
        ``mean``, ``std`` and, for regression, ``y_mean``, ``y_std`` (else None)."""
        plain = {"mean": self.mean, "std": self.std, "y_mean": self.y_mean, "y_std": self.y_std}
        return {k: None if v is None else v.tolist() for k, v in plain.items()}

    def sizes(self) -> dict[str, int]:
        """Rows in each split (0 for a split that is absent)."""
        return {
            "train": len(self.x_train),
            "val": 0 if self.x_val is None else len(self.x_val),
            "test": 0 if self.x_test is None else len(self.x_test),
        }

    def describe(self) -> str:
        """A few lines: task, sizes, classes and scaling."""
        outputs = 1 if self.y_train.ndim == 1 else self.y_train.shape[1]
        kind = (
            f"{self.n_classes} classes"
            if self.task == "classification"
            else f"{outputs} target{'s' * (outputs > 1)}"
        )
        s = self.sizes()
        lines = [
            f"{self.name}: {self.task}, {self.n_features} features, {kind}",
            f"  train {s['train']} rows, validation {s['val']} rows, test {s['test']} rows",
        ]
        if self.task == "classification":
            counts = torch.bincount(self.y_train, minlength=self.n_classes).tolist()
            names = self.class_names or tuple(str(i) for i in range(self.n_classes))
            shown = ", ".join(f"{n}: {c}" for n, c in zip(names, counts, strict=True))
            lines.append(f"  train rows per class: {shorten(shown, 200)}")
        scaled = bool((self.std != 1).any() or (self.mean != 0).any())
        lines.append(
            "  features standardized with the training mean and std"
            if scaled
            else "  features not standardized"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        s = self.sizes()
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, n_features={self.n_features}, "
            f"n_classes={self.n_classes}, train={s['train']}, val={s['val']}, test={s['test']})"
        )


# ---------------------------------------------------------------------------------------------
# Bundled datasets
# ---------------------------------------------------------------------------------------------


def load_dataset(
    name: str, *, seed: int = 0, val_fraction: float = 0.1, standardize: bool = True
) -> Dataset:
    """A bundled dataset (see :data:`DATASETS` and the module docstring), split and scaled.

    Args:
        name: ``"digits"``, ``"mnist1d"``, ``"spirals"``, ``"moons"`` or ``"regression"``.
        seed: chooses the validation rows among the training rows; the test set never changes.
        val_fraction: share of the training rows held out for validation, in [0, 1); 0 means no
            validation set (``x_val is None``).
        standardize: scale features (and regression targets) by the training statistics.

    Raises:
        DataError: for an unknown name (the message lists the available ones).
    """
    owner = "load_dataset"
    seed = checks.integer(owner, "seed", seed, 0)
    val_fraction = checks.in_range(owner, "val_fraction", val_fraction, 0.0, 1.0)
    standardize = checks.flag(owner, "standardize", standardize)
    if name not in _BUNDLED:
        hint = " (for a data file use load_file)" if isinstance(name, str) and "." in name else ""
        raise DataError(
            f"unknown dataset {name!r}{hint}; available datasets: {', '.join(DATASETS)}"
        )
    raw = _BUNDLED[name]()
    return assemble(
        name,
        raw.task,
        raw.x,
        raw.y,
        x_test=raw.x_test,
        y_test=raw.y_test,
        seed=seed,
        test_seed=_BUNDLED_SEED,
        val_fraction=val_fraction,
        test_fraction=_TEST_FRACTION,
        standardize=standardize,
        n_classes=raw.n_classes,
        feature_names=raw.feature_names,
        class_names=raw.class_names,
    )


@dataclass(frozen=True)
class _Raw:
    task: str
    x: np.ndarray
    y: np.ndarray
    n_classes: int | None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    feature_names: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None


def _package_file(name: str):
    return resources.files("gradwise.train").joinpath("datasets", name)


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.flags.writeable = False


@functools.cache
def _digits() -> _Raw:
    with _package_file("digits.csv.gz").open("rb") as f, gzip.open(f, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    x, y = table[:, :64].astype(np.float32), table[:, 64]
    _readonly(x, y)
    return _Raw(
        "classification",
        x,
        y,
        10,
        feature_names=tuple(f"pixel_{r}_{c}" for r in range(8) for c in range(8)),
        class_names=tuple(str(d) for d in range(10)),
    )


@functools.cache
def _mnist1d() -> _Raw:
    with _package_file("mnist1d.npz").open("rb") as f, np.load(f, allow_pickle=False) as z:
        arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    arrays["y_train"] = arrays["y_train"].astype(np.int64)
    arrays["y_test"] = arrays["y_test"].astype(np.int64)
    _readonly(*arrays.values())
    return _Raw(
        "classification",
        arrays["x_train"],
        arrays["y_train"],
        10,
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        class_names=tuple(str(d) for d in range(10)),
    )


@functools.cache
def _spirals(per_class: int = 300, arms: int = 3) -> _Raw:
    """Three spiral arms (as in CS231n): radius grows linearly while the angle turns 4 radians."""
    rng = np.random.default_rng(_BUNDLED_SEED)
    r = np.linspace(0.0, 1.0, per_class)
    arm_points = []
    for k in range(arms):
        t = np.linspace(4.0 * k, 4.0 * (k + 1), per_class) + rng.normal(0.0, 0.2, per_class)
        arm_points.append(np.stack([r * np.sin(t), r * np.cos(t)], axis=1))
    x = np.concatenate(arm_points)
    y = np.repeat(np.arange(arms), per_class)
    return _shuffled("classification", x, y, arms, rng, ("x0", "x1"))


@functools.cache
def _moons(per_class: int = 500, noise: float = 0.1) -> _Raw:
    """Two interleaving half circles with Gaussian noise of std ``noise``."""
    rng = np.random.default_rng(_BUNDLED_SEED)
    a, b = rng.uniform(0.0, math.pi, (2, per_class))
    upper = np.stack([np.cos(a), np.sin(a)], axis=1)
    lower = np.stack([1.0 - np.cos(b), 0.5 - np.sin(b)], axis=1)
    x = np.concatenate([upper, lower]) + rng.normal(0.0, noise, (2 * per_class, 2))
    y = np.repeat(np.arange(2), per_class)
    return _shuffled("classification", x, y, 2, rng, ("x0", "x1"))


@functools.cache
def _regression(rows: int = 2000, noise: float = 0.1) -> _Raw:
    """``y = sin(pi x0 x1) + 2 (x2 - 0.5)^2 + x3 - 0.5 x4 + tanh(2 x5) cos(pi x6) + 0.5 x7^2 + e``.

    ``x`` is uniform on [-1, 1]^8 and ``e`` is Gaussian with std ``noise``.
    """
    rng = np.random.default_rng(_BUNDLED_SEED)
    x = rng.uniform(-1.0, 1.0, (rows, 8))
    f = (
        np.sin(math.pi * x[:, 0] * x[:, 1])
        + 2.0 * (x[:, 2] - 0.5) ** 2
        + x[:, 3]
        - 0.5 * x[:, 4]
        + np.tanh(2.0 * x[:, 5]) * np.cos(math.pi * x[:, 6])
        + 0.5 * x[:, 7] ** 2
    )
    y = (f + rng.normal(0.0, noise, rows))[:, None]
    return _shuffled("regression", x, y, None, rng, tuple(f"x{i}" for i in range(8)))


def _shuffled(task, x, y, n_classes, rng, feature_names) -> _Raw:
    order = rng.permutation(len(x))
    x, y = x[order].astype(np.float32), y[order]
    y = y.astype(np.int64 if task == "classification" else np.float32)
    _readonly(x, y)
    names = tuple(str(k) for k in range(n_classes)) if n_classes else None
    return _Raw(task, x, y, n_classes, feature_names=feature_names, class_names=names)


_BUNDLED: dict[str, Callable[[], _Raw]] = {
    "digits": _digits,
    "mnist1d": _mnist1d,
    "spirals": _spirals,
    "moons": _moons,
    "regression": _regression,
}


def shorten(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Splitting and scaling
# ---------------------------------------------------------------------------------------------


def _holdout(
    y: np.ndarray, fraction: float, rng: np.random.Generator, stratify: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held)``, sorted, with ``round(fraction * len(y))`` rows held (>= 1 if
    ``fraction > 0``). Stratified: each class gives its share (largest remainders get the rounding),
    and keeps at least one row."""
    n = len(y)
    k = math.floor(fraction * n + 0.5)
    if fraction > 0:
        k = max(k, 1)
    if not stratify:
        order = rng.permutation(n)
        held = np.sort(order[:k])
    else:
        classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
        quota = counts * fraction
        cap = counts - 1
        take = np.minimum(np.floor(quota).astype(np.int64), cap)
        for c in np.argsort(-(quota - take), kind="stable"):
            if take.sum() >= k:
                break
            if take[c] < cap[c]:
                take[c] += 1
        held = np.sort(
            np.concatenate(
                [
                    rng.permutation(np.flatnonzero(inverse == c))[: take[c]]
                    for c in range(len(classes))
                ]
            )
        )
    keep = np.setdiff1d(np.arange(n), held, assume_unique=True)
    return keep, held


def assemble(
    name: str,
    task: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    seed: int,
    test_seed: int,
    val_fraction: float,
    test_fraction: float,
    standardize: bool,
    n_classes: int | None,
    feature_names: tuple[str, ...] | None = None,
    class_names: tuple[str, ...] | None = None,
    source: str | None = None,
) -> Dataset:
    """Split what is not split yet, check every requested split has rows, standardize, to torch."""
    source = source or name
    stratify = task == "classification"
    carve_test = x_test is None and test_fraction > 0
    carve_val = x_val is None and val_fraction > 0
    need = 1 + carve_test + carve_val
    if len(x) < need:
        raise DataError(
            f"{source}: too few rows to split: {len(x)} rows cannot make train"
            + (f", validation (val_fraction={val_fraction:g})" if carve_val else "")
            + (f", test (test_fraction={test_fraction:g})" if carve_test else "")
            + f"; need at least {need} rows"
            + (", or no validation split (val_fraction 0: --val-fraction 0)" if carve_val else "")
            + (", or no test split (test_fraction=0 in load_file)" if carve_test else "")
        )
    if carve_test:
        keep, held = _holdout(y, test_fraction, np.random.default_rng((test_seed, 1)), stratify)
        x, y, x_test, y_test = x[keep], y[keep], x[held], y[held]
    if carve_val:
        keep, held = _holdout(y, val_fraction, np.random.default_rng((seed, 2)), stratify)
        x, y, x_val, y_val = x[keep], y[keep], x[held], y[held]
    for split, rows in (("test", x_test), ("validation", x_val)):
        if rows is not None and len(rows) == 0:
            raise DataError(
                f"{source}: too few rows to split: the {split} set would be empty (stratified by "
                "class, each class keeps a training row); add rows or set its fraction to 0"
            )

    x64 = x.astype(np.float64)
    mean, std = np.zeros(x.shape[1]), np.ones(x.shape[1])
    y_mean = y_std = None
    if standardize:
        mean, std = x64.mean(axis=0), x64.std(axis=0)
        std[std < 1e-12 * np.maximum(1.0, np.abs(mean))] = 1.0  # constant feature: only center it
    if task == "regression":
        y_mean, y_std = np.zeros(y.shape[1]), np.ones(y.shape[1])
        if standardize:
            y64 = y.astype(np.float64)
            y_mean, y_std = y64.mean(axis=0), y64.std(axis=0)
            y_std[y_std < 1e-12 * np.maximum(1.0, np.abs(y_mean))] = 1.0

    def features(a):
        return None if a is None else _f32(scale(a.astype(np.float64), mean, std))

    def targets(a):
        if a is None:
            return None
        if task == "classification":
            return torch.from_numpy(np.array(a, dtype=np.int64))  # a copy: never read-only
        return _f32(scale(a.astype(np.float64), y_mean, y_std))

    return Dataset(
        name=name,
        task=task,
        x_train=features(x),
        y_train=targets(y),
        x_val=features(x_val),
        y_val=targets(y_val),
        x_test=features(x_test),
        y_test=targets(y_test),
        n_classes=n_classes if task == "classification" else None,
        mean=_f32(mean),
        std=_f32(std),
        y_mean=None if y_mean is None else _f32(y_mean),
        y_std=None if y_std is None else _f32(y_std),
        feature_names=feature_names,
        class_names=class_names,
    )


def scale(x, mean, std):
    """Features (or targets) on the training data's scale: ``(x - mean) / std``; NumPy arrays or
    tensors. The one place of this formula: training data, new data and predictions use it."""
    return (x - mean) / std


def unscale(y, mean, std):
    """The inverse of :func:`scale`: ``y * std + mean`` (predictions in original units)."""
    return y * std + mean


def _f32(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

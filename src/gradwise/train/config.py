"""The configuration of a training run: :class:`TrainConfig`, its defaults, checks and TOML form.

Every setting of a run lives in :class:`TrainConfig`; ``None`` stands for "the default for this
dataset, model and optimizer" until :meth:`TrainConfig.resolved` fills it in. A run folder's
``config.toml`` holds the resolved configuration (:meth:`TrainConfig.to_toml`), so that reading
it back (:meth:`TrainConfig.from_toml`) repeats or continues the run.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from gradwise import checks
from gradwise.errors import ConfigError
from gradwise.init import SCHEMES
from gradwise.train.data import DATASETS, SEQUENCES
from gradwise.train.models import ACTIVATIONS
from gradwise.train.optimizers import (
    HYPERPARAMETERS,
    SPECS,
    check_hyperparameters,
    is_given,
    resolved_value,
    users,
    users_text,
)

#: every name of ``--optimizer`` (one entry each in :data:`gradwise.train.optimizers.SPECS`)
OPTIMIZERS = tuple(SPECS)
MODELS = ("mlp", "cnn1d")
#: the settings that shape a built-in model, and the models each one shapes. Given to another
#: model (a user's ``module:function`` builds its own layers and takes none of them) with a
#: value other than its default, they are refused: a setting accepted and then ignored would
#: train something else than what was asked
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "hidden": ("mlp",),
    "channels": ("cnn1d",),
    "activation": MODELS,
    "dropout": MODELS,
    "init": MODELS,
}

#: default learning rate of each optimizer name
OPTIMIZER_LR = {name: spec.lr for name, spec in SPECS.items()}

#: gradwise's defaults for each bundled dataset; a nested dict holds a model's own defaults.
#: ``lr`` maps optimizer names to the dataset's default rate (else OPTIMIZER_LR's).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": dict(model="mlp", hidden=(128, 128), epochs=20, batch_size="32"),
    "mnist1d": dict(
        model="cnn1d",
        batch_size="100",
        lr=dict(adam=1e-2, adamw=1e-2, rmsprop=3e-3),
        schedule="cosine",
        cnn1d=dict(channels=(32, 32, 32), dropout=0.2, epochs=160),
        mlp=dict(hidden=(256, 256), dropout=0.3, epochs=100),
    ),
    "spirals": dict(model="mlp", hidden=(64, 64), epochs=100, batch_size="32"),
    "moons": dict(model="mlp", hidden=(32, 32), epochs=40, batch_size="32"),
    "regression": dict(model="mlp", hidden=(64, 64), epochs=60, batch_size="32"),
}
#: what a setting left as None becomes when neither the dataset nor the model says otherwise
FALLBACKS: dict[str, Any] = dict(
    model="mlp",
    hidden=(128, 128),
    channels=(32, 32, 32),
    dropout=0.0,
    epochs=20,
    batch_size="32",
)


#: options that only some optimizers use, and which ones: given to another, they are refused
#: (an option accepted and then ignored would train something else than what was asked)
OPTIMIZER_OPTIONS = {name: users(name) for name in HYPERPARAMETERS}
#: what each of those options is when it is not given
OPTION_DEFAULTS = dict.fromkeys(HYPERPARAMETERS)


def options_given(config: TrainConfig) -> dict[str, bool]:
    """For each option of :data:`OPTIMIZER_OPTIONS`, whether ``config`` sets it (a zero
    momentum or weight decay is the same as none; Adam's betas are every run's)."""
    return {name: is_given(name, getattr(config, name)) for name in HYPERPARAMETERS}


def check_model(model: str) -> str:
    """A built-in model (:data:`MODELS`) or a user's ``module:function`` or
    ``path/to/file.py:function`` (called as ``function(input_shape, n_outputs)``, see
    :func:`gradwise.train.export.user_builder`)."""
    if isinstance(model, str) and ":" in model:
        return model
    return checks.choice("train", "model", model, (*MODELS, "module:function"))


def refuse_shift_off_sequences(owner: str, dataset: str, shift) -> None:
    """A ``ConfigError`` when a bundled ``dataset`` whose features are not a signal
    (:data:`~gradwise.train.data.SEQUENCES`) is given a nonzero ``augment_shift`` (a number, or
    a tune range): shifting an image's flattened pixels or a table's columns means nothing."""
    if shift != 0 and dataset in DATASETS and dataset not in SEQUENCES:
        raise ConfigError(
            f"{owner}: augment_shift={shift!r} shifts a signal's positions; dataset {dataset!r} "
            f"is not a sequence (it applies to {', '.join(SEQUENCES)} or a data file whose "
            "columns are one)"
        )


def without_unused_model_options(values: dict, defaults: dict) -> dict:
    """``values`` (a configuration's settings, its model resolved) with the settings of
    :data:`MODEL_OPTIONS` that its model does not take set to None; a ``ConfigError`` names the
    first of them given a value other than its default (``defaults``: what the dataset, the
    model and :data:`FALLBACKS` give; earlier releases wrote those into every config.toml)."""
    model = values["model"]
    for option, models in MODEL_OPTIONS.items():
        value = values[option]
        if model in models or value is None:
            continue
        default = defaults.get(option, getattr(TrainConfig, option))
        if option in ("hidden", "channels"):
            value, default = tuple(value), tuple(default)
        if value != default:
            raise ConfigError(
                f"train: {option}={value!r} has no effect with model={model!r}; it applies to "
                f"model {' or '.join(repr(m) for m in models)}"
            )
        values[option] = None
    return values


def refuse_unused_options(config: TrainConfig) -> None:
    """A ``ConfigError`` naming the first option that ``config.optimizer`` would ignore."""
    given = options_given(config)
    for option, taking in OPTIMIZER_OPTIONS.items():
        if given[option] and config.optimizer not in taking:
            value = getattr(config, option)
            hint = " (SGD with momentum is --optimizer momentum)" if option == "momentum" else ""
            raise ConfigError(
                f"train: {option}={value!r} has no effect with optimizer={config.optimizer!r}; "
                f"it applies to {users_text(option)}{hint}"
            )


@dataclass
class TrainConfig:
    """Every setting of a run. ``None`` means "the default for this dataset and optimizer"."""

    dataset: str = "digits"
    data: str | None = None
    target: str | None = None
    model: str | None = None
    hidden: tuple[int, ...] | None = None
    channels: tuple[int, ...] | None = None
    activation: str = "relu"
    dropout: float | None = None
    init: str = "auto"
    optimizer: str = "adam"
    lr: float | None = None
    # the hyperparameters only some optimizers take (train/optimizers.HYPERPARAMETERS), under
    # their constructors' names; None: the optimizer's default
    momentum: float | None = None
    betas: tuple[float, float] | None = None
    eps: float | None = None
    weight_decay: float | None = None
    momentum_decay: float | None = None
    decoupled_weight_decay: bool | None = None
    rho: float | None = None
    etas: tuple[float, float] | None = None
    step_sizes: tuple[float, float] | None = None
    lambd: float | None = None
    alpha: float | None = None
    t0: float | None = None
    warmup_steps: int | None = None
    d_coef: float | None = None
    l1: float = 0.0
    l2: float = 0.0
    #: shift each training sample by up to this many positions (a sequence's features:
    #: :class:`~gradwise.train.augment.RandomShift`); 0: no augmentation
    augment_shift: int = 0
    batch_size: str | None = None
    epochs: int | None = None
    schedule: str | None = None
    plateau: bool = False
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    early_stop: int = 0
    seed: int = 0
    #: the seed that chooses the validation rows (and a data file's test rows); None: ``seed``.
    #: Set it to train several seeds on one split (``gradwise tune``'s retrain does)
    split_seed: int | None = None
    val_fraction: float = 0.1
    device: str = "auto"
    threads: int | None = None
    nan_policy: str = "raise"
    checkpoint_every: int = 1
    #: a run folder whose trained weights start this run (a fresh optimizer); None: a fresh init
    init_from: str | None = None
    #: the largest global L2 norm of the gradients before each step (None: no clipping)
    clip_grad_norm: float | None = None
    #: "32", or "bf16": the forward pass under bfloat16 autocast
    precision: str = "32"
    #: the decay of an exponential moving average of the weights (None: none)
    ema: float | None = None
    #: log to the run folder's tensorboard/ for TensorBoard
    tensorboard: bool = False
    #: batches whose gradients add up before each optimizer step (gradient accumulation)
    accumulate: int = 1
    #: shard the optimizer state across the processes (``ZeroRedundancyOptimizer``)
    zero: bool = False
    #: the number of processes the run trains on: recorded by :func:`gradwise.train.run.run`
    #: from the launcher's environment; ``gradwise train`` starts that many (``--resume``,
    #: ``--config``)
    nproc: int = 1
    extra: dict = field(default_factory=dict)

    # ---------------------------------------------------------------------------- resolution
    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` replaced by the dataset's, model's and optimizer's
        defaults (:data:`DATASET_DEFAULTS`, :data:`FALLBACKS`, :data:`OPTIMIZER_LR`)."""
        checks.choice("train", "optimizer", self.optimizer, OPTIMIZERS)
        refuse_unused_options(self)
        if self.data is None:
            checks.choice("train", "dataset", self.dataset, tuple(DATASETS))
        dataset = dict(DATASET_DEFAULTS.get(self.dataset, {})) if self.data is None else {}
        values = dataclasses.asdict(self)
        model = values["model"] or dataset.get("model", FALLBACKS["model"])
        values["model"] = check_model(model)
        layered = {**FALLBACKS, **dataset, **dataset.get(model, {})}
        for key in FALLBACKS:
            if values[key] is None:
                values[key] = layered[key]
        if values["schedule"] is None:
            values["schedule"] = layered.get("schedule")
        if values["lr"] is None:
            values["lr"] = layered.get("lr", {}).get(self.optimizer, OPTIMIZER_LR[self.optimizer])
        for name in HYPERPARAMETERS:
            values[name] = resolved_value(self.optimizer, name, values[name])
        values = without_unused_model_options(values, layered)
        for key in ("hidden", "channels"):
            if values[key] is not None:
                values[key] = tuple(values[key])
        values["batch_size"] = str(values["batch_size"])
        config = TrainConfig(**values)
        config.validate()
        return config

    def validate(self) -> None:
        owner = "train"
        check_model(self.model)
        if self.init is not None:  # None: a user's model, which initializes itself
            checks.choice(owner, "init", self.init, SCHEMES)
        checks.choice(owner, "nan_policy", self.nan_policy, ("raise", "skip"))
        if self.dropout is not None:
            checks.in_range(owner, "dropout", self.dropout, 0.0, 1.0)
        checks.in_range(owner, "val_fraction", self.val_fraction, 0.0, 0.9, closed_high=True)
        checks.at_least(owner, "lr", self.lr, 0.0)
        for name in ("l1", "l2", "weight_decay", "momentum"):
            checks.at_least(owner, name, getattr(self, name), 0.0)
        check_hyperparameters(self)
        checks.integer(owner, "augment_shift", self.augment_shift, low=0)
        if self.data is None:
            refuse_shift_off_sequences(owner, self.dataset, self.augment_shift)
        checks.integer(owner, "epochs", self.epochs, low=1)
        checks.integer(owner, "early_stop", self.early_stop, low=0)
        checks.integer(owner, "plateau_patience", self.plateau_patience, low=0)
        checks.in_range(owner, "plateau_factor", self.plateau_factor, 0.0, 1.0)
        if self.threads is not None:
            checks.integer(owner, "threads", self.threads, low=1)
        if checks.integer(owner, "seed", self.seed, low=0) >= 2**64:
            checks.refuse(owner, "seed", "an integer in [0, 2**64)", self.seed)
        if (
            self.split_seed is not None
            and checks.integer(owner, "split_seed", self.split_seed, low=0) >= 2**64
        ):
            checks.refuse(owner, "split_seed", "an integer in [0, 2**64)", self.split_seed)
        if self.activation is not None:
            checks.choice(owner, "activation", self.activation, tuple(ACTIVATIONS))
        checks.integer(owner, "checkpoint_every", self.checkpoint_every, low=1)
        if self.clip_grad_norm is not None:
            checks.positive(owner, "clip_grad_norm", self.clip_grad_norm)
        checks.integer(owner, "accumulate", self.accumulate, low=1)
        checks.choice(owner, "precision", self.precision, ("32", "bf16", "fp16"))
        if self.ema is not None:
            checks.in_range(owner, "ema", self.ema, 0.0, 1.0)
        if checks.flag(owner, "tensorboard", self.tensorboard):
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                raise ConfigError(
                    "train: tensorboard=True needs the tensorboard package: "
                    "pip install 'gradwise[tensorboard]'"
                )
        checks.flag(owner, "zero", self.zero)
        checks.integer(owner, "nproc", self.nproc, low=1)
        parse_batch_size(self.batch_size)
        if self.target is not None and self.data is None:
            raise ConfigError(
                f"train: target names a column of a --data CSV file; the bundled dataset "
                f"{self.dataset!r} has its own target; received target={self.target!r}"
            )
        for name in ("hidden", "channels"):
            for width in getattr(self, name) or ():
                checks.integer(owner, name, width, low=1)

    def with_absolute_paths(self) -> TrainConfig:
        """A copy whose file paths (``data``, ``init_from``, a ``path/file.py:function`` model)
        are absolute, so that its run resumes and repeats from any directory."""
        paths = {"data": self.data, "init_from": self.init_from}
        values = {k: str(Path(v).resolve()) for k, v in paths.items() if v is not None}
        where, _, function = (self.model or "").rpartition(":")
        if where.endswith(".py"):
            values["model"] = f"{Path(where).resolve()}:{function}"
        return dataclasses.replace(self, **values)

    # ---------------------------------------------------------------------------- TOML files
    def to_toml(self) -> str:
        values = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        if not values.get("extra"):
            values.pop("extra", None)
        # settings most runs leave at their default (a run on one process, no augmentation),
        # left out of their files
        for key, default in (("zero", False), ("nproc", 1), ("augment_shift", 0)):
            if values.get(key) == default:
                values.pop(key)
        return tomli_w.dumps(values)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"{source}: unknown setting(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(known))}"
            )
        clean = {}
        for key, value in values.items():
            clean[key] = _coerce(source, key, value, cls.__dataclass_fields__[key].default)
        return cls(**clean)

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        return cls.from_dict(values, source=str(path))


def _coerce(source: str, key: str, value, default):
    """Check a config file's value against the setting's type (TOML has no tuples or None)."""
    expected = _setting_types().get(key, type(default))
    if expected is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list; received {key}={value!r}")
        return tuple(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is str and key == "batch_size" and isinstance(value, int):
        return str(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(
            f"{source}: {key} must be of type {expected.__name__}; received {key}={value!r}"
        )
    return value


@functools.cache
def _setting_types() -> dict[str, type]:
    """Each setting's type, from :class:`TrainConfig`'s annotations (``X | None``: ``X``;
    ``tuple[int, ...]``: ``tuple``), so that every setting a run writes reads back."""
    found = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        if isinstance(hint, types.UnionType):
            (hint,) = (kind for kind in typing.get_args(hint) if kind is not type(None))
        found[name] = typing.get_origin(hint) or hint
    return found


def parse_batch_size(text: str) -> int | str:
    """``"full"`` (batch gradient descent), ``"1"`` (stochastic) or ``"N"`` (mini-batch)."""
    if str(text).strip().lower() == "full":
        return "full"
    try:
        size = int(str(text))
    except ValueError:
        size = 0
    if size < 1:
        raise ConfigError(
            "train: batch_size must be 'full', 1 or a positive integer; "
            f"received batch_size={text!r}"
        )
    return size

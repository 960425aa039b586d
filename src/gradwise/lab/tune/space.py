"""The search space of ``gradwise tune``: which settings a trial draws, from which ranges.

A :class:`Space` holds, for each key of :data:`KEYS`, either a range ``(low, high)``
(numbers: ``lr``, ``weight_decay``, ``augment_shift``, ...), a list of choices
(``optimizer``, ``schedule``, ...) or one fixed value. ``lr`` and ``weight_decay`` may differ
per optimizer (a table ``{adam = [1e-4, 3e-2], ...}``). A range whose low end is 0
(``weight_decay = [0, 1e-3]``, ``l1``) is "off, or log-uniform over ``[high / 1000, high]``".
:meth:`Space.suggest` turns an Optuna trial into a :class:`~gradwise.train.config.TrainConfig`:
only the options the drawn optimizer uses are drawn (momentum for SGD with momentum, Nesterov
and RMSprop; betas for the Adam family and Lion; weight decay for all but Rprop), as
``TrainConfig`` refuses the others. The other hyperparameters of an optimizer (Adadelta's
``rho``, ...) keep their defaults. ``augment_shift`` (random shifts of the training samples) is
searched on sequences (MNIST-1D) only.

A TOML file (``--space FILE.toml``) overrides the defaults key by key::

    optimizer = ["adam", "adamw", "nadam", "lion"]   # any of train.config.OPTIMIZERS
    lr = [1e-4, 3e-2]              # or a table per optimizer: lr = {adam = [1e-4, 3e-2]}
    epochs = 40                    # fixed
    schedule = ["cosine", "warmup+cosine"]
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path
from typing import Any

from gradwise.errors import ConfigError
from gradwise.init import SCHEMES
from gradwise.train.config import (
    OPTIMIZER_LR,
    OPTIMIZER_OPTIONS,
    OPTIMIZERS,
    TrainConfig,
    refuse_shift_off_sequences,
)
from gradwise.train.data import SEQUENCES
from gradwise.train.optimizers import SPECS

#: the schedules a trial chooses among, and their text in the schedule language
#: (``warmup+cosine`` warms up over ``warmup`` x the run's steps, then decays to 0)
SCHEDULES = ("constant", "cosine", "warmup+cosine", "onecycle")

#: the optimizers a search draws from unless ``--space`` names others (any of OPTIMIZERS): the
#: seven the README's searches were measured with; each name more spreads a search's trials
#: thinner, and digits' defaults put none of the others ahead (README's optimizer table)
DEFAULT_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")

#: keys whose value is a list of choices (or one fixed value)
CHOICE_KEYS = ("optimizer", "schedule", "init", "batch_size")
#: keys whose value is a range [low, high] (or one fixed value); the log-scale ones and integers
RANGE_KEYS = (
    "lr",
    "weight_decay",
    "l1",
    "dropout",
    "augment_shift",
    "momentum",
    "beta1",
    "beta2",
    "warmup",
    "epochs",
    "width",
    "depth",
)
LOG_KEYS = ("lr", "weight_decay", "l1")
INT_KEYS = ("epochs", "width", "depth", "augment_shift")
#: the smallest whole number an integer key takes (1 unless named here: 0 shifts nothing)
INT_LOWEST = {"augment_shift": 0}
#: keys that may hold a table per optimizer
PER_OPTIMIZER = ("lr", "weight_decay")
KEYS = CHOICE_KEYS + RANGE_KEYS


def default_space(dataset: str, model: str) -> dict[str, Any]:
    """The default ranges for a dataset and model: every optimizer at rates around its usual
    ones, a width and depth around the model's defaults, epochs around the dataset's."""
    from gradwise.train.config import DATASET_DEFAULTS

    defaults = DATASET_DEFAULTS.get(dataset, {})
    epochs = int(defaults.get(model, {}).get("epochs", defaults.get("epochs", 20)))
    if model == "cnn1d":
        width, depth = [16, 96], [2, 4]
    else:
        width, depth = [32, 512], [1, 3]
    return {
        "optimizer": list(DEFAULT_OPTIMIZERS),
        # an optimizer without its own range here: its default rate / 30 to x 10
        "lr": {
            **{name: [OPTIMIZER_LR[name] / 30, OPTIMIZER_LR[name] * 10] for name in OPTIMIZERS},
            "sgd": [1e-2, 0.5],
            "momentum": [1e-3, 0.2],
            "nesterov": [1e-3, 0.2],
            "adagrad": [1e-3, 0.2],
            "rmsprop": [1e-4, 1e-2],
            "adam": [1e-4, 3e-2],
            "adamw": [1e-4, 3e-2],
        },
        "momentum": [0.8, 0.99],
        "beta1": [0.8, 0.95],
        "beta2": [0.99, 0.9999],
        # coupled (L2 in the gradient), or decoupled (adamw, lion): larger; none for Rprop
        "weight_decay": {name: _decay_range(name) for name in OPTIMIZERS},
        "l1": [0, 1e-4],
        "dropout": [0.0, 0.5],
        # random shifts of a signal's training samples: a sequence's lesson an MLP lacks
        "augment_shift": [0, 8] if dataset in SEQUENCES else 0,
        "init": ["auto", "he", "xavier", "orthogonal"],
        # the dataset's own batch size among them, so that the defaults are one of the trials
        "batch_size": sorted({32, 64, 128, int(defaults.get("batch_size", 32))}),
        "schedule": list(SCHEDULES),
        "warmup": [0.01, 0.2],
        "epochs": [max(2, epochs // 4), max(3, epochs)],
        "width": width,
        "depth": depth,
    }


def _decay_range(optimizer: str) -> list[float] | float:
    if optimizer not in OPTIMIZER_OPTIONS["weight_decay"]:
        return 0.0
    return [1e-3, 0.3] if SPECS[optimizer].decoupled else [0, 1e-3]


@dataclasses.dataclass(frozen=True)
class Space:
    """A checked search space: ``values`` maps each key of :data:`KEYS` to a range, a list of
    choices or a fixed value (per optimizer for ``lr`` and ``weight_decay``)."""

    values: dict

    @classmethod
    def build(
        cls, dataset: str, model: str, overrides: dict | None = None, source: str = "space"
    ) -> Space:
        """The default space for ``dataset`` and ``model`` with ``overrides`` applied, checked:
        an unknown key, an empty range or choice, an unknown optimizer or a bad number is a
        ``ConfigError`` naming it."""
        values = {**default_space(dataset, model), **(overrides or {})}
        checked = _check(values, source, set(overrides or {}))
        refuse_shift_off_sequences(source, dataset, checked["augment_shift"])
        return cls(checked)

    @classmethod
    def from_toml(cls, path: str | Path, dataset: str, model: str) -> Space:
        path = Path(path)
        try:
            overrides = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"tune: space file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"tune: space file {path} is not valid TOML: {e}") from None
        return cls.build(dataset, model, overrides, source=str(path))

    def to_json(self) -> str:
        return json.dumps(self.values, sort_keys=True)

    # ------------------------------------------------------------------------------ sampling
    def suggest(self, trial, base: TrainConfig, n_train: int) -> TrainConfig:
        """The configuration an Optuna ``trial`` draws: ``base`` with the space's settings.
        ``n_train``: the training rows (a warmup's length is a share of the run's steps)."""
        optimizer = self._pick(trial, "optimizer")
        values: dict[str, Any] = {"optimizer": optimizer}
        values["lr"] = self._number(trial, "lr", optimizer)
        if optimizer in OPTIMIZER_OPTIONS["momentum"]:
            values["momentum"] = self._number(trial, "momentum")
        if optimizer in OPTIMIZER_OPTIONS["betas"]:
            values["betas"] = (self._number(trial, "beta1"), self._number(trial, "beta2"))
        if optimizer in OPTIMIZER_OPTIONS["weight_decay"]:
            values["weight_decay"] = self._number(trial, "weight_decay", optimizer)
        values["l1"] = self._number(trial, "l1")
        values["dropout"] = self._number(trial, "dropout")
        values["augment_shift"] = int(self._number(trial, "augment_shift"))
        values["init"] = self._pick(trial, "init")
        batch = int(self._pick(trial, "batch_size"))
        batch = min(batch, n_train)
        values["batch_size"] = str(batch)
        epochs = int(self._number(trial, "epochs"))
        values["epochs"] = epochs
        width, depth = int(self._number(trial, "width")), int(self._number(trial, "depth"))
        values["channels" if base.model == "cnn1d" else "hidden"] = (width,) * depth
        schedule = self._pick(trial, "schedule")
        steps = math.ceil(n_train / batch) * epochs
        if schedule == "warmup+cosine":
            warmup = max(1, round(self._number(trial, "warmup") * steps))
            values["schedule"] = f"warmup:{warmup},cosine"
        else:
            values["schedule"] = schedule
        return dataclasses.replace(base, **values)

    def first_trial(self, base: TrainConfig) -> dict[str, Any] | None:
        """Optuna parameters close to ``base``'s defaults (clamped into the space), to try
        first: the search starts from the defaults. None when the space leaves them out."""
        resolved = base.resolved()
        optimizer = resolved.optimizer
        choices = self.values["optimizer"]
        if optimizer not in _as_list(choices):
            return None
        params: dict[str, Any] = {}
        widths = resolved.channels if base.model == "cnn1d" else resolved.hidden
        wanted = {
            "optimizer": optimizer,
            "lr": resolved.lr,
            "momentum": resolved.momentum,
            "beta1": resolved.betas[0],
            "beta2": resolved.betas[1],
            "weight_decay": resolved.weight_decay,
            "l1": resolved.l1,
            "dropout": resolved.dropout,
            "augment_shift": resolved.augment_shift,
            "init": resolved.init,
            "batch_size": resolved.batch_size,
            "schedule": resolved.schedule or "constant",
            "epochs": resolved.epochs,
            "width": max(widths) if widths else None,
            "depth": len(widths),
        }
        if optimizer not in OPTIMIZER_OPTIONS["momentum"]:
            del wanted["momentum"]
        if optimizer not in OPTIMIZER_OPTIONS["betas"]:
            del wanted["beta1"], wanted["beta2"]
        if optimizer not in OPTIMIZER_OPTIONS["weight_decay"]:
            del wanted["weight_decay"]
        for key, value in wanted.items():
            spec = self.spec(key, optimizer)
            if isinstance(spec, list) and key in CHOICE_KEYS:
                value = str(value) if key == "batch_size" else value
                labels = [str(c) for c in spec]
                if str(value) not in labels:
                    if key in ("schedule", "init"):
                        return None
                    continue
                params[key] = spec[labels.index(str(value))]
            elif isinstance(spec, list):
                low, high = spec
                if low == 0 and key in LOG_KEYS:
                    params[f"{key}_on"] = bool(value)
                    if value:
                        params[self._name(key, optimizer)] = min(max(value, high / 1000), high)
                    continue
                if value is None:
                    continue
                clamped = min(max(value, low), high)
                params[self._name(key, optimizer)] = (
                    int(round(clamped)) if key in INT_KEYS else float(clamped)
                )
        return params

    # ------------------------------------------------------------------------------ helpers
    def fixed_budget(self, base: TrainConfig) -> TrainConfig:
        """``base`` with the run length the space fixes (``epochs = N``, not a range): the
        defaults that the best configuration is compared against then train as long as every
        trial did (with the dataset's own epochs they would train longer)."""
        epochs = self.values["epochs"]
        if isinstance(epochs, list):
            return base
        return dataclasses.replace(base, epochs=int(epochs))

    def spec(self, key: str, optimizer: str | None = None):
        value = self.values[key]
        if isinstance(value, dict):
            return value[optimizer]
        return value

    def _name(self, key: str, optimizer: str | None) -> str:
        return f"{key}_{optimizer}" if isinstance(self.values[key], dict) else key

    def _pick(self, trial, key: str):
        spec = self.values[key]
        if not isinstance(spec, list):
            return spec
        return trial.suggest_categorical(key, spec)

    def _number(self, trial, key: str, optimizer: str | None = None):
        spec = self.spec(key, optimizer)
        name = self._name(key, optimizer)
        if not isinstance(spec, list):
            return spec
        low, high = spec
        if key in INT_KEYS:
            return trial.suggest_int(name, int(low), int(high), log=key == "width")
        if key in LOG_KEYS:
            if low == 0:  # off, or log-uniform over the top three decades
                if not trial.suggest_categorical(f"{key}_on", [False, True]):
                    return 0.0
                low = high / 1000
            return trial.suggest_float(name, low, high, log=True)
        return trial.suggest_float(name, low, high)


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _check(values: dict, source: str, given: set) -> dict:
    """``values`` checked and normalized (ranges as [low, high] lists of numbers)."""
    for key in values:
        if key not in KEYS:
            from difflib import get_close_matches

            near = get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(
                f"{source}: unknown space key {key!r}{hint}; allowed: {', '.join(KEYS)}"
            )
    out: dict[str, Any] = {}
    optimizers = _as_list(values["optimizer"])
    for key in CHOICE_KEYS:
        value = values[key]
        items = _as_list(value)
        if not items:
            raise ConfigError(f"{source}: {key} is an empty list; give at least one choice")
        allowed = {
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
            "init": SCHEMES,
        }.get(key)
        for item in items:
            if key == "batch_size":
                if isinstance(item, bool) or not isinstance(item, int) or item < 1:
                    raise ConfigError(
                        f"{source}: batch_size choices are positive integers; received {item!r}"
                    )
            elif item not in allowed:
                raise ConfigError(
                    f"{source}: unknown {key} {item!r}; allowed: {', '.join(allowed)}"
                )
        out[key] = list(dict.fromkeys(items)) if isinstance(value, list) else value
    for key in RANGE_KEYS:
        value = values[key]
        if isinstance(value, dict):
            if key not in PER_OPTIMIZER:
                raise ConfigError(f"{source}: {key} takes a range [low, high] or one value")
            unknown = sorted(set(value) - set(OPTIMIZERS))
            if unknown:
                raise ConfigError(
                    f"{source}: {key} has a range for unknown optimizer(s) "
                    f"{', '.join(unknown)}; allowed: {', '.join(OPTIMIZERS)}"
                )
            if key in given:  # a table replaces the defaults of the optimizers it names
                value = {**default_space("digits", "mlp")[key], **value}
            out[key] = {
                name: _range(source, f"{key}.{name}", key, value[name])
                for name in OPTIMIZERS
                if name in value
            }
            missing = [name for name in optimizers if name not in out[key]]
            if missing:
                raise ConfigError(f"{source}: {key} has no range for {', '.join(missing)}")
        else:
            out[key] = _range(source, key, key, value)
    return out


def _range(source: str, name: str, key: str, value):
    """A range [low, high] or a fixed number, checked."""
    if isinstance(value, list):
        if len(value) != 2 or not all(_is_number(v) for v in value):
            raise ConfigError(
                f"{source}: {name} must be a range [low, high] or one number; received {value!r}"
            )
        low, high = (float(v) for v in value)
        if not low < high:
            raise ConfigError(
                f"{source}: {name} is an empty range [{value[0]}, {value[1]}]; give low < high "
                "(or one number to fix it)"
            )
        if low < 0 or (key in LOG_KEYS and low == 0 and high <= 0):
            raise ConfigError(f"{source}: {name} must not be negative; received {value!r}")
        if key in INT_KEYS:
            lowest = INT_LOWEST.get(key, 1)
            if low < lowest or low != int(low) or high != int(high):
                raise ConfigError(
                    f"{source}: {name} takes whole numbers >= {lowest}; received {value!r}"
                )
            return [int(low), int(high)]
        if key in ("dropout", "momentum", "beta1", "beta2", "warmup") and high >= 1:
            raise ConfigError(f"{source}: {name} must stay below 1; received {value!r}")
        return [low, high]
    if not _is_number(value) or value < 0:
        raise ConfigError(
            f"{source}: {name} must be a range [low, high] or one number; received {value!r}"
        )
    if key in INT_KEYS:
        lowest = INT_LOWEST.get(key, 1)
        if value != int(value) or value < lowest:
            raise ConfigError(
                f"{source}: {name} takes a whole number >= {lowest}; received {value!r}"
            )
        return int(value)
    return float(value)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

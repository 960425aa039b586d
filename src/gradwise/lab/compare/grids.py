"""The configurations of a comparison: :func:`grid` (the cartesian product of lists of choices,
labelled), :func:`label_configs` (labels for a list), and the parsers of the schedule and
regularizer choices."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence

from gradwise import checks
from gradwise.errors import ConfigError
from gradwise.train.config import OPTIMIZER_OPTIONS, OPTION_DEFAULTS, TrainConfig, options_given

#: regularizer words of :func:`grid` and the TrainConfig field each sets
REGULARIZERS = {"l1": "l1", "l2": "l2", "wd": "weight_decay", "dropout": "dropout"}


def _options_for_some(base: TrainConfig, optimizers: Sequence[str] | None) -> dict[str, dict]:
    """For a grid over several optimizers: an option of ``base`` that only some of them use
    (``momentum``, ``betas``, ``eps``) applies to those, and is reset for the others, as
    ``{optimizer: {option: default}}``. An option that none of them uses is refused."""
    if not optimizers or len(optimizers) < 2:
        return {}
    given = options_given(base)
    resets: dict[str, dict] = {}
    for option, users in OPTIMIZER_OPTIONS.items():
        if not given[option]:
            continue
        if not any(name in users for name in optimizers):
            raise ConfigError(
                f"compare: {option}={getattr(base, option)!r} has no effect with any of the "
                f"optimizers {', '.join(optimizers)}; it applies to {', '.join(users)}"
            )
        for name in optimizers:
            if name not in users:
                resets.setdefault(name, {})[option] = OPTION_DEFAULTS[option]
    return resets


def grid(
    base: TrainConfig | None = None,
    *,
    optimizers: Sequence[str] | None = None,
    lrs: Sequence[float] | None = None,
    batch_sizes: Sequence[str | int] | None = None,
    schedules: Sequence[str] | None = None,
    inits: Sequence[str] | None = None,
    regularizers: Sequence[str] | None = None,
) -> dict[str, TrainConfig]:
    """Every combination of the lists given (their cartesian product), labelled.

    ``base`` holds every other setting. ``lrs`` left out gives each optimizer its own default
    rate. ``batch_sizes``: ``"full"`` (batch descent), ``1`` (stochastic), ``n`` (mini-batch).
    ``schedules``: texts of :func:`gradwise.schedules.parse`; ``"none"`` for a constant rate;
    ``"plateau"`` or a suffix ``+plateau`` adds reduce-on-plateau (see
    :func:`parse_schedule_choice`). ``regularizers``: ``"none"``, ``"l1=1e-4"`` (proximal L1),
    ``"l2=1e-3"`` (L2 penalty), ``"wd=1e-2"`` (weight decay), ``"dropout=0.2"``, or several
    joined by ``+`` (see :func:`parse_regularizer`).

    A label names the optimizer and its rate when either varies, then each other setting that
    varies: ``"adam lr=1e-3"``, ``"sgd lr=0.1 batch 64"``, ``"cosine"``, ``"he init"``,
    ``"l2=1e-3"``.

    Example::

        >>> list(grid(optimizers=["sgd", "adam"], lrs=[0.01, 0.1]))
        ['sgd lr=0.01', 'sgd lr=0.1', 'adam lr=0.01', 'adam lr=0.1']
        >>> list(grid(batch_sizes=["full", 1, 64]))
        ['batch full', 'batch 1', 'batch 64']
    """
    from gradwise.lab.plots import lr_text

    base = base if base is not None else TrainConfig()
    if not isinstance(base, TrainConfig):
        checks.refuse("grid", "base", "a TrainConfig or None", base, TypeError)
    lists = {
        "optimizer": _choices("optimizers", optimizers),
        "lr": _choices("lrs", lrs),
        "batch_size": _choices("batch_sizes", batch_sizes),
        "schedule": _choices("schedules", schedules),
        "init": _choices("inits", inits),
        "regularizer": _choices("regularizers", regularizers),
    }
    unused_by = _options_for_some(base, lists["optimizer"])
    varies = {k: v is not None and len(v) > 1 for k, v in lists.items()}
    show_opt = varies["optimizer"] or varies["lr"] or not any(varies.values())
    configs: dict[str, TrainConfig] = {}
    keys = list(lists)
    for combo in itertools.product(*(lists[k] or [None] for k in keys)):
        choice = dict(zip(keys, combo))
        changes: dict = {}
        parts: list[str] = []
        if choice["optimizer"] is not None:
            changes["optimizer"] = choice["optimizer"]
            changes["lr"] = None  # that optimizer's default unless lrs says otherwise
            changes.update(unused_by.get(choice["optimizer"], {}))
        if choice["lr"] is not None:
            changes["lr"] = checks.positive("grid", "lrs[]", choice["lr"])
        if choice["batch_size"] is not None:
            changes["batch_size"] = str(choice["batch_size"]).strip().lower()
        if choice["schedule"] is not None:
            schedule, plateau = parse_schedule_choice(choice["schedule"])
            changes["schedule"], changes["plateau"] = schedule, plateau
        if choice["init"] is not None:
            changes["init"] = choice["init"]
        if choice["regularizer"] is not None:
            changes.update(parse_regularizer(choice["regularizer"]))
        config = dataclasses.replace(base, **changes)
        resolved = config.resolved()
        if show_opt:
            parts.append(f"{resolved.optimizer} lr={lr_text(resolved.lr)}")
        if varies["batch_size"]:
            parts.append(f"batch {resolved.batch_size}")
        if varies["schedule"]:
            parts.append(_schedule_label(choice["schedule"]))
        if varies["init"]:
            parts.append(f"{resolved.init} init")
        if varies["regularizer"]:
            parts.append(_regularizer_label(choice["regularizer"]))
        label = " ".join(parts)
        if label in configs:
            label = f"{label} #{sum(k.startswith(label) for k in configs) + 1}"
        configs[label] = config
    return configs


def label_configs(configs: list[TrainConfig]) -> dict[str, TrainConfig]:
    """Label configurations by the settings that tell them apart (``"adam lr=1e-3 batch 64"``)."""
    from gradwise.lab.plots import lr_text

    resolved = [c.resolved() for c in configs]
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("extra",)]
    differ = [f for f in fields if len({repr(getattr(c, f)) for c in resolved}) > 1]
    labels: dict[str, TrainConfig] = {}
    for config, r in zip(configs, resolved):
        parts = []
        if not differ or "optimizer" in differ or "lr" in differ:
            parts.append(f"{r.optimizer} lr={lr_text(r.lr)}")
        for name in differ:
            if name in ("optimizer", "lr"):
                continue
            value = getattr(r, name)
            if name == "batch_size":
                parts.append(f"batch {value}")
            elif isinstance(value, tuple):
                parts.append(f"{name}={','.join(map(str, value))}")
            else:
                parts.append(f"{name}={value}")
        label = " ".join(parts)
        if label in labels:
            label = f"{label} #{sum(k.startswith(label) for k in labels) + 1}"
        labels[label] = config
    return labels


def parse_schedule_choice(text: str) -> tuple[str | None, bool]:
    """``(schedule text, plateau)`` from a schedule choice: ``"none"`` / ``"constant"`` (a
    constant rate), ``"plateau"`` (a constant rate cut on plateaus), ``"cosine+plateau"``, or any
    text of :func:`gradwise.schedules.parse` (checked here)."""
    from gradwise.schedules import parse

    raw = str(text).strip()
    body, plateau = raw, False
    if body.lower().endswith("+plateau"):
        body, plateau = body[: -len("+plateau")].strip(), True
    if body.lower() == "plateau":
        return "constant", True
    if body.lower() in ("none", "constant", ""):
        if not body and not plateau:
            raise ConfigError(f"schedules: empty schedule in {text!r}")
        return "constant", plateau  # not None: None means the dataset's default schedule
    parse(body, total_steps=1_000_000)  # ConfigError naming the bad segment
    return body, plateau


def parse_regularizer(text: str) -> dict:
    """TrainConfig settings from ``"none"``, ``"l1=1e-4"``, ``"l2=1e-3"``, ``"wd=1e-2"``,
    ``"dropout=0.2"`` or several joined by ``+`` (``"l2=1e-3+dropout=0.2"``); every other
    regularizer is set to 0 so that ``"none"`` means none."""
    values = {"l1": 0.0, "l2": 0.0, "weight_decay": 0.0, "dropout": 0.0}
    raw = str(text).strip().lower()
    if raw in ("none", "0", ""):
        return values
    for part in raw.split("+"):
        name, sep, number = part.partition("=")
        name = name.strip()
        if name not in REGULARIZERS or not sep:
            raise ConfigError(
                f"regularizers: cannot read {part.strip()!r} in {text!r}; "
                "allowed: none, l1=X, l2=X, wd=X, dropout=P (several joined by +)"
            )
        try:
            value = float(number)
        except ValueError:
            raise ConfigError(
                f"regularizers: {name} needs a number; received {part.strip()!r}"
            ) from None
        if not math.isfinite(value) or value < 0 or (name == "dropout" and value >= 1):
            allowed = "in [0, 1)" if name == "dropout" else ">= 0"
            raise ConfigError(f"regularizers: {name} must be {allowed}; received {name}={number}")
        values[REGULARIZERS[name]] = value
    return values


def _choices(name: str, values) -> list | None:
    if values is None:
        return None
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        checks.refuse("grid", name, "a list", values, TypeError)
    values = list(values)
    if not values:
        raise ConfigError(f"grid: {name} is empty; leave it out or give at least one value")
    return values


def _schedule_label(text: str) -> str:
    return str(text).strip() or "constant"


def _regularizer_label(text: str) -> str:
    raw = str(text).strip().lower()
    return "no reg." if raw in ("none", "0", "") else raw

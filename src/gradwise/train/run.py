"""A whole training run from one configuration: data, model, optimizer, schedule, fit, outputs.

This is what ``gradwise train`` runs and what the lab repeats over configurations and seeds.
Every setting lives in :class:`TrainConfig`; ``config.toml`` in the run folder holds the resolved
configuration, so ``gradwise train --config runs/x/config.toml`` repeats a run and
``gradwise train --resume runs/x`` continues one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
import torch

from gradwise import checks, optim
from gradwise.errors import ConfigError, DataError
from gradwise.regularization import l2_penalty, param_groups
from gradwise.train import checkpoint as ckpt
from gradwise.train import distributed
from gradwise.train.callbacks import EarlyStopping
from gradwise.train.data import DATASETS, Dataset, load_dataset
from gradwise.train.files import load_file
from gradwise.train.history import History
from gradwise.train.loop import evaluate, fit, resolve_device
from gradwise.train.models import ACTIVATIONS, cnn1d, conv_lengths, mlp

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
MODELS = ("mlp", "cnn1d")
INITS = ("auto", "he", "xavier", "lecun", "orthogonal", "normal", "small", "torch")

#: default learning rate of each optimizer name
OPTIMIZER_LR = {
    "sgd": 0.1,
    "momentum": 0.05,
    "nesterov": 0.05,
    "adagrad": 0.05,
    "rmsprop": 1e-3,
    "adam": 1e-3,
    "adamw": 1e-3,
}

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
OPTIMIZER_OPTIONS = {
    "momentum": ("momentum", "nesterov", "rmsprop"),
    "betas": ("adam", "adamw"),
    "eps": ("adagrad", "rmsprop", "adam", "adamw"),
}
DEFAULT_BETAS = (0.9, 0.999)
#: what each of those options is when it is not given
OPTION_DEFAULTS = {"momentum": None, "betas": DEFAULT_BETAS, "eps": None}


def options_given(config: TrainConfig) -> dict[str, bool]:
    """For each option of :data:`OPTIMIZER_OPTIONS`, whether ``config`` sets it (a zero
    momentum is the same as none)."""
    return {
        "momentum": config.momentum not in (None, 0, 0.0),
        "betas": tuple(config.betas) != DEFAULT_BETAS,
        "eps": config.eps is not None,
    }


def refuse_unused_options(config: TrainConfig) -> None:
    """A ``ConfigError`` naming the first option that ``config.optimizer`` would ignore."""
    given = options_given(config)
    for option, users in OPTIMIZER_OPTIONS.items():
        if given[option] and config.optimizer not in users:
            value = getattr(config, option)
            hint = " (SGD with momentum is --optimizer momentum)" if option == "momentum" else ""
            raise ConfigError(
                f"train: {option}={value!r} has no effect with optimizer={config.optimizer!r}; "
                f"it applies to {', '.join(users)}{hint}"
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
    momentum: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float | None = None
    weight_decay: float | None = None
    l1: float = 0.0
    l2: float = 0.0
    batch_size: str | None = None
    epochs: int | None = None
    schedule: str | None = None
    plateau: bool = False
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    early_stop: int = 0
    seed: int = 0
    val_fraction: float = 0.1
    device: str = "auto"
    threads: int | None = None
    nan_policy: str = "raise"
    checkpoint_every: int = 1
    #: shard the optimizer state across the processes (``ZeroRedundancyOptimizer``)
    zero: bool = False
    #: the number of processes the run trains on: recorded by :func:`run` from the launcher's
    #: environment; ``gradwise train`` starts that many (``--resume``, ``--config``)
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
        checks.choice("train", "model", model, MODELS)
        values["model"] = model
        layered = {**FALLBACKS, **dataset, **dataset.get(model, {})}
        for key in FALLBACKS:
            if values[key] is None:
                values[key] = layered[key]
        if values["schedule"] is None:
            values["schedule"] = layered.get("schedule")
        if values["lr"] is None:
            values["lr"] = layered.get("lr", {}).get(self.optimizer, OPTIMIZER_LR[self.optimizer])
        if values["momentum"] is None:
            values["momentum"] = 0.9 if self.optimizer in ("momentum", "nesterov") else 0.0
        if values["weight_decay"] is None:
            values["weight_decay"] = 1e-2 if self.optimizer == "adamw" else 0.0
        for key in ("hidden", "channels", "betas"):
            values[key] = tuple(values[key])
        values["batch_size"] = str(values["batch_size"])
        config = TrainConfig(**values)
        config.validate()
        return config

    def validate(self) -> None:
        owner = "train"
        checks.choice(owner, "model", self.model, MODELS)
        checks.choice(owner, "init", self.init, INITS)
        checks.choice(owner, "nan_policy", self.nan_policy, ("raise", "skip"))
        checks.in_range(owner, "dropout", self.dropout, 0.0, 1.0)
        checks.in_range(owner, "val_fraction", self.val_fraction, 0.0, 0.9, closed_high=True)
        checks.at_least(owner, "lr", self.lr, 0.0)
        for name in ("l1", "l2", "weight_decay", "momentum"):
            checks.at_least(owner, name, getattr(self, name), 0.0)
        checks.integer(owner, "epochs", self.epochs, low=1)
        checks.integer(owner, "early_stop", self.early_stop, low=0)
        checks.integer(owner, "plateau_patience", self.plateau_patience, low=0)
        checks.in_range(owner, "plateau_factor", self.plateau_factor, 0.0, 1.0)
        if self.threads is not None:
            checks.integer(owner, "threads", self.threads, low=1)
        if checks.integer(owner, "seed", self.seed, low=0) >= 2**64:
            checks.refuse(owner, "seed", "an integer in [0, 2**64)", self.seed)
        checks.choice(owner, "activation", self.activation, tuple(ACTIVATIONS))
        checks.integer(owner, "checkpoint_every", self.checkpoint_every, low=1)
        checks.flag(owner, "zero", self.zero)
        checks.integer(owner, "nproc", self.nproc, low=1)
        parse_batch_size(self.batch_size)
        if self.target is not None and self.data is None:
            raise ConfigError(
                f"train: target names a column of a --data CSV file; the bundled dataset "
                f"{self.dataset!r} has its own target; received target={self.target!r}"
            )
        for name in ("hidden", "channels"):
            for width in getattr(self, name):
                checks.integer(owner, name, width, low=1)

    # ---------------------------------------------------------------------------- TOML files
    def to_toml(self) -> str:
        values = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        if not values.get("extra"):
            values.pop("extra", None)
        for key, default in (("zero", False), ("nproc", 1)):  # a one-process run's file as before
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
    expected = {
        "hidden": tuple,
        "channels": tuple,
        "betas": tuple,
        "lr": float,
        "dropout": float,
        "momentum": float,
        "eps": float,
        "weight_decay": float,
        "epochs": int,
        "batch_size": str,
        "data": str,
        "target": str,
        "model": str,
        "schedule": str,
        "threads": int,
        "extra": dict,
    }.get(key, type(default))
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


# ------------------------------------------------------------------------------------ builders


def build_data(config: TrainConfig) -> Dataset:
    if config.data is not None:
        check_fits_in_memory(config.data)
        return load_file(
            config.data, target=config.target, seed=config.seed, val_fraction=config.val_fraction
        )
    return load_dataset(config.dataset, seed=config.seed, val_fraction=config.val_fraction)


def build_model(config: TrainConfig, data: Dataset) -> torch.nn.Module:
    out = data.n_classes if data.task == "classification" else 1
    generator = torch.Generator().manual_seed(config.seed)
    if config.model == "cnn1d":
        return cnn1d(
            data.n_features,
            out,
            channels=config.channels,
            activation=config.activation,
            dropout=config.dropout,
            init=config.init,
            generator=generator,
        )
    return mlp(
        data.n_features,
        out,
        hidden=config.hidden,
        activation=config.activation,
        dropout=config.dropout,
        init=config.init,
        generator=generator,
    )


def build_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The named optimizer; weight decay and L1 apply to weights, not to biases or norms."""
    groups = param_groups(model, weight_decay=config.weight_decay)
    for group in groups:  # L1 on the weights, not on biases and norms
        group["l1"] = config.l1 if any(p.dim() > 1 for p in group["params"]) else 0.0
    name, lr = config.optimizer, config.lr
    eps = {} if config.eps is None else {"eps": config.eps}
    if name in ("sgd", "momentum", "nesterov"):
        cls, kwargs = (
            optim.SGD,
            dict(momentum=config.momentum if name != "sgd" else 0.0, nesterov=name == "nesterov"),
        )
    elif name == "adagrad":
        cls, kwargs = optim.Adagrad, eps
    elif name == "rmsprop":
        cls, kwargs = optim.RMSprop, dict(momentum=config.momentum, **eps)
    else:
        cls = optim.AdamW if name == "adamw" else optim.Adam
        kwargs = dict(betas=config.betas, **eps)
    if config.zero and distributed.launched():  # one process has nothing to shard
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(groups, optimizer_class=cls, lr=lr, **kwargs)
    return cls(groups, lr=lr, **kwargs)


def build_scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
    from gradwise.schedules import Plateau, Scheduler, parse

    if config.schedule is None and not config.plateau:
        return None
    text = config.schedule or "constant"
    total = steps_per_epoch * config.epochs
    schedule = parse(text, total_steps=total)
    plateau = (
        Plateau(factor=config.plateau_factor, patience=config.plateau_patience)
        if config.plateau
        else None
    )
    return Scheduler(optimizer, schedule, plateau=plateau)


# ---------------------------------------------------------------------------------------- run


@dataclass
class RunResult:
    config: TrainConfig
    history: History
    out: Path | None
    model: torch.nn.Module
    data: Dataset


def run(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    progress: bool = True,
    resume: bool = False,
    plots: bool = True,
) -> RunResult:
    """Train per ``config``; with ``out``, write config, metrics, history, checkpoint and plots.

    Started by a launcher on several processes (``torchrun``, ``gradwise train --nproc N``),
    every process calls it: they train together (:func:`fit` with DDP, ``batch_size`` the global
    batch, ``config.zero`` shards the optimizer state) and only rank 0 writes the run folder.
    """
    config = config.resolved()
    started = time.perf_counter()
    resolve_device(config.device)  # refuse a bad device before anything is loaded or written
    ctx = distributed.setup(config.device)
    config = dataclasses.replace(config, nproc=ctx.world_size if ctx is not None else 1)
    main = ctx is None or ctx.is_main
    data = build_data(config)
    batch_size = parse_batch_size(config.batch_size)
    n_train = len(data.x_train)
    if batch_size != "full" and batch_size > n_train:
        raise ConfigError(
            f"train: batch_size must be at most the training set's size ({n_train} rows) or "
            f"'full'; received batch_size={batch_size}"
        )
    if batch_size != "full" and batch_size < config.nproc:
        raise ConfigError(
            f"train: batch_size is the global batch and must be at least the number of processes "
            f"({config.nproc}); received batch_size={batch_size}"
        )
    check_model_fits_in_memory(config, data, n_train if batch_size == "full" else batch_size)
    model = build_model(config, data)
    _set_threads(config, model)
    optimizer = build_optimizer(config, model)
    steps = 1 if batch_size == "full" else math.ceil(n_train / batch_size)
    scheduler = build_scheduler(config, optimizer, steps)
    classification = data.task == "classification"
    callbacks = [EarlyStopping(patience=config.early_stop)] if config.early_stop else []
    weights = [p for n, p in model.named_parameters() if p.dim() > 1]
    penalty = (lambda: l2_penalty(weights, config.l2)) if config.l2 else None
    out_path = Path(out) if out is not None else None
    if out_path is not None:  # rank 0's machine holds the run folder
        resume = distributed.from_main(_prepare_run_folder, out_path, config, resume)
    history = fit(
        model,
        (data.x_train, data.y_train),
        val=(data.x_val, data.y_val) if data.x_val is not None else None,
        loss="cross_entropy" if classification else "mse",
        metrics=("accuracy",) if classification else ("rmse",),
        optimizer=optimizer,
        scheduler=scheduler,
        epochs=config.epochs,
        batch_size=batch_size,
        callbacks=callbacks,
        checkpoint_dir=out_path,
        checkpoint_every=config.checkpoint_every,
        resume=resume,
        seed=config.seed,
        device=config.device,
        progress=progress,
        nan_policy=config.nan_policy,
        penalty=penalty,
        extra_state={"config": config.to_toml()},
    )
    test = evaluate(
        model,
        (data.x_test, data.y_test),
        "cross_entropy" if classification else "mse",
        ("accuracy",) if classification else ("rmse",),
        prefix="test_",
    )
    history.summary.update(test)
    history.summary["steps"] = history.epochs[-1]["step"] if history.epochs else 0
    history.summary["train_time"] = history.wall_time
    history.summary["total_time"] = time.perf_counter() - started
    if out_path is not None and main:
        history.to_csv(out_path / "metrics.csv")
        history.to_jsonl(out_path / "history.jsonl")
        if plots:
            from gradwise.lab.plots import plot_history

            plot_history(history, out_path / "curves.png", title=_title(config))
    return RunResult(config, history, out_path, model, data)


#: below this many parameters a model's operations are too small to gain from intra-op threads
#: (and lose badly when another process is busy on a core): ``threads=None`` uses one
SMALL_MODEL_PARAMS = 1_000_000


def _set_threads(config: TrainConfig, model: torch.nn.Module) -> None:
    """``config.threads`` torch threads; by default (None) one for small models, unless
    ``OMP_NUM_THREADS`` says otherwise, and PyTorch's choice for large ones."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    elif "OMP_NUM_THREADS" not in os.environ and (
        sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
    ):
        torch.set_num_threads(1)


def _title(config: TrainConfig) -> str:
    data = Path(config.data).name if config.data else config.dataset
    return (
        f"{data} · {config.model} · {config.optimizer} lr={config.lr:g} · batch {config.batch_size}"
    )


#: what a run writes into its folder (a fresh run refuses a folder that holds any of them)
RUN_FILES = (ckpt.CURRENT, ckpt.PREVIOUS, "metrics.csv", "history.jsonl", "curves.png")


def _prepare_run_folder(out: Path, config: TrainConfig, resume: bool) -> bool:
    """:func:`prepare_out`; whether there is a checkpoint to resume from (a run stopped before
    its first checkpoint has nothing to lose: it starts over)."""
    prepare_out(out, config, resume)
    return resume and ckpt.exists(out)


def prepare_out(out: Path, config: TrainConfig, resume: bool) -> None:
    """Check the run folder can be written, and never overwrite another run's files."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} is a file, not a folder; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f"{ckpt.TMP_PREFIX}{os.getpid()}.write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"output folder {out} is not writable ({e.strerror or e}); choose another --out"
        ) from None
    ckpt.remove_stale_tmp(out)
    if resume:
        return
    text = config.to_toml()
    held = [name for name in RUN_FILES if (out / name).exists()]
    saved = out / "config.toml"
    if held or (saved.exists() and saved.read_bytes() != text.encode()):
        what = ", ".join(held) if held else "the config.toml of another run"
        raise ConfigError(
            f"output folder {out} already holds a run ({what}); continue it with --resume {out} "
            "or choose another --out"
        )
    ckpt.atomic_write_text(saved, text)


def load_run_config(folder: str | Path) -> TrainConfig:
    """The configuration saved in a run folder (for ``--resume``)."""
    folder = Path(folder)
    path = folder / "config.toml"
    if not folder.is_dir():
        raise ConfigError(f"cannot resume: {folder} is not a folder (no such run)")
    if not path.exists():
        raise ConfigError(f"cannot resume: {folder} has no config.toml (is it a gradwise run?)")
    return TrainConfig.from_toml(path)


# ------------------------------------------------------------------------------ memory bounds

#: peak memory of loading a file, as a multiple of its size (CSV: text, cells, float64 arrays,
#: tensors) or of its arrays' size as float64 (NPZ), measured with gradwise's loaders
_CSV_FACTOR, _ARRAY_FACTOR, _PT_FACTOR = 24, 5, 5


def available_memory() -> int | None:
    """Bytes this process can still allocate: the machine's available memory, capped by a cgroup
    (container) limit; ``None`` where it cannot be told."""
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit, used in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            cap = int(Path(limit).read_text().split()[0]) - int(Path(used).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        free = min(free, max(cap, 0))
    return free


def estimate_load_bytes(path: str | Path) -> int:
    """About how much memory loading the data file ``path`` takes (from its size or headers)."""
    import numpy as np

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    suffix = path.suffix.lower()
    if suffix == ".npz":
        total = 0
        try:
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    with z.open(info) as f:
                        version = np.lib.format.read_magic(f)
                        read = (
                            np.lib.format.read_array_header_1_0
                            if version == (1, 0)
                            else np.lib.format.read_array_header_2_0
                        )
                        shape, _, _ = read(f, max_header_size=1 << 20)
                    total += math.prod(shape) * 8
        except Exception:  # not a valid npz: the loader reports it
            return size * _ARRAY_FACTOR
        return max(total, size) * _ARRAY_FACTOR
    if suffix in (".pt", ".pth"):
        return size * _PT_FACTOR
    return size * _CSV_FACTOR


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MiB"


def check_fits_in_memory(path: str | Path) -> None:
    """Refuse, before reading it, a data file that would not fit in the memory available."""
    need, free = estimate_load_bytes(path), available_memory()
    if free is not None and need > free:
        raise DataError(
            f"{path}: too large to load: it needs about {_gib(need)} of memory and "
            f"{_gib(free)} is available; use a smaller file or a machine with more memory"
        )


def check_model_fits_in_memory(config: TrainConfig, data: Dataset, rows_per_step: int) -> None:
    """Refuse a model (weights, gradients, optimizer state, activations) that cannot fit."""
    out = data.n_classes if data.task == "classification" else data.y_train.shape[-1]
    if config.model == "cnn1d":
        lengths = conv_lengths(data.n_features, len(config.channels), 5, 2, 2)
        chans = [1, *config.channels]
        params = sum(a * b * 5 + b for a, b in zip(chans, chans[1:]))
        params += chans[-1] * lengths[-1] * out + out
        widths = [c * n for c, n in zip(config.channels, lengths[1:])]
    else:
        sizes = [data.n_features, *config.hidden, out]
        params = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
        widths = list(config.hidden)
    # weights, gradients, two optimizer buffers, one spare; activations kept for backward (x3)
    need = 4 * (5 * params + 3 * rows_per_step * (sum(widths) + out))
    free = available_memory()
    if free is not None and need > free:
        raise ConfigError(
            f"train: the model is too large for this machine: {params:,} parameters and their "
            f"activations need about {_gib(need)} of memory and {_gib(free)} is available; use "
            "smaller --hidden / --channels or --batch-size"
        )

"""A whole training run from one configuration: data, model, optimizer, schedule, fit, outputs.

This is what ``gradwise train`` runs and what the lab repeats over configurations and seeds.
Every setting lives in :class:`~gradwise.train.config.TrainConfig`; ``config.toml`` in the run
folder holds the resolved configuration, so ``gradwise train --config runs/x/config.toml``
repeats a run and ``gradwise train --resume runs/x`` continues one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gradwise.errors import ConfigError
from gradwise.regularization import l2_penalty, param_groups, weight_params
from gradwise.train import checkpoint as ckpt
from gradwise.train import distributed
from gradwise.train.augment import RandomShift
from gradwise.train.callbacks import Callback, EarlyStopping
from gradwise.train.config import TrainConfig, parse_batch_size
from gradwise.train.data import Dataset, load_dataset
from gradwise.train.export import build, describe, save_description, start_from
from gradwise.train.files import load_file
from gradwise.train.history import History
from gradwise.train.loop import fit, resolve_device, training_threads
from gradwise.train.memory import check_fits_in_memory, check_model_fits_in_memory
from gradwise.train.metrics import confusion_matrix, evaluate
from gradwise.train.optimizers import constructor, users
from gradwise.train.predict import original_units_errors

# ------------------------------------------------------------------------------------ builders


def build_data(config: TrainConfig) -> Dataset:
    """The data ``config`` names, split by ``config.split_seed`` (else ``config.seed``)."""
    seed = config.seed if config.split_seed is None else config.split_seed
    if config.data is not None:
        check_fits_in_memory(config.data)
        return load_file(
            config.data, target=config.target, seed=seed, val_fraction=config.val_fraction
        )
    return load_dataset(config.dataset, seed=seed, val_fraction=config.val_fraction)


def build_model(config: TrainConfig, data: Dataset) -> torch.nn.Module:
    """The model ``config`` names for ``data``, initialized from ``config.seed`` (built from its
    description, as :func:`gradwise.load` builds it again)."""
    return build(describe(config, data), torch.Generator().manual_seed(config.seed))


def build_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The named optimizer (:data:`gradwise.train.optimizers.SPECS`) with ``config``'s
    hyperparameters; weight decay and L1 apply to weights, not to biases or norms."""
    groups = param_groups(model, weight_decay=config.weight_decay)
    weights = {id(p) for p in weight_params(model)}
    for group in groups:  # L1 on the weights, not on biases and norms (a group is one or other)
        group["l1"] = config.l1 if id(group["params"][0]) in weights else 0.0
    cls, kwargs = constructor(config)
    kwargs.pop("weight_decay", None)  # the groups' own: the weights decay, biases and norms not
    if config.optimizer not in users("weight_decay"):  # it has none (Rprop): no key either
        for group in groups:
            del group["weight_decay"]
    if config.optimizer == "muon":
        groups = muon_groups(groups)
        if not any(group.get("use_muon") for group in groups):
            raise ConfigError(
                f"optimizer 'muon' gives Muon the hidden layers' weight matrices (every 2-D "
                f"weight but the first and the last); model '{config.model}' has none, so "
                "AdamW would train it all: use --optimizer adamw, or a model with hidden "
                "linear layers (mlp)"
            )
    lr = config.lr
    if config.zero and distributed.launched():  # one process has nothing to shard
        if config.optimizer == "muon":
            raise ConfigError(
                "--zero shards one optimizer's state; optimizer 'muon' is two (Muon and AdamW): "
                "train it without --zero"
            )
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(groups, optimizer_class=cls, lr=lr, **kwargs)
    return cls(groups, lr=lr, **kwargs)


def muon_groups(groups: list[dict]) -> list[dict]:
    """``groups`` (weights first, in the model's order) with the hidden layers' 2-D weights
    in groups of their own marked ``use_muon`` (:class:`~gradwise.optim.MuonWithAdamW`):
    every 2-D weight but the first (the input layer, which sees the data's raw scale) and the
    last (the output layer), as Muon's authors train. Convolution kernels, biases, norms and
    those two layers stay with AdamW."""
    matrices = [p for group in groups for p in group["params"] if p.dim() == 2]
    hidden = {id(p) for p in matrices[1:-1]}
    marked = []
    for group in groups:
        muon = [p for p in group["params"] if id(p) in hidden]
        rest = [p for p in group["params"] if id(p) not in hidden]
        if muon:
            marked.append({**group, "params": muon, "use_muon": True})
        if rest:
            marked.append({**group, "params": rest})
    return marked


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
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Train per ``config``; with ``out``, write config, metrics, history, checkpoint and plots.

    Started by a launcher on several processes (``torchrun``, ``gradwise train --nproc N``),
    every process calls it: they train together (:func:`fit` with DDP, ``batch_size`` the global
    batch, ``config.zero`` shards the optimizer state) and only rank 0 writes the run folder.
    ``callbacks`` go to :func:`fit` after the configuration's own (``gradwise tune`` reports
    each epoch to its pruner with one).
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
    if batch_size != "full":  # refused before the run folder is written
        distributed.check_global_batch("train", batch_size, config.nproc, batch_size)
    if config.augment_shift >= data.n_features:
        raise ConfigError(
            f"train: augment_shift must be less than the {data.n_features} positions of a "
            f"sample; received augment_shift={config.augment_shift}"
        )
    check_model_fits_in_memory(config, data, n_train if batch_size == "full" else batch_size)
    model = build_model(config, data)
    if config.init_from is not None:  # a resumed run's checkpoint replaces these weights
        start_from(model, config.init_from)
    _set_threads(config, model)
    optimizer = build_optimizer(config, model)
    batches = 1 if batch_size == "full" else math.ceil(n_train / batch_size)
    steps = math.ceil(batches / config.accumulate)  # optimizer steps an epoch
    scheduler = build_scheduler(config, optimizer, steps)
    classification = data.task == "classification"
    callbacks = [
        *([EarlyStopping(patience=config.early_stop)] if config.early_stop else []),
        *callbacks,
    ]
    weights = weight_params(model)
    penalty = (lambda: l2_penalty(weights, config.l2)) if config.l2 else None
    out_path = Path(out) if out is not None else None
    if out_path is not None:  # rank 0's machine holds the run folder
        resume = distributed.from_main(_prepare_run_folder, out_path, config, resume)
        if main and not resume:  # what gradwise.load, export and predict need besides weights
            save_description(out_path, describe(config, data))
    history = fit(
        model,
        (data.x_train, data.y_train),
        val=(data.x_val, data.y_val) if data.x_val is not None else None,
        loss="cross_entropy" if classification else "mse",
        metrics=("accuracy", "f1") if classification else ("rmse",),
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
        threads=config.threads,
        clip_grad_norm=config.clip_grad_norm,
        precision=config.precision,
        ema=config.ema,
        tensorboard=out_path / "tensorboard" if config.tensorboard and out_path else None,
        accumulate=config.accumulate,
        augment=RandomShift(config.augment_shift) if config.augment_shift else None,
    )
    if out_path is not None and main and resume:  # the checkpoint fitted the model: a run
        save_description(out_path, describe(config, data))  # of an older gradwise gets it too
    test = evaluate(
        model,
        (data.x_test, data.y_test),
        "cross_entropy" if classification else "mse",
        ("accuracy", "f1") if classification else ("rmse",),
        prefix="test_",
    )
    history.summary.update(test)
    if not classification:  # in the target's units, not the standardized ones it trains on
        errors = original_units_errors(model, data.x_test, data.y_test, data.y_mean, data.y_std)
        history.summary.update({f"test_{k}": v for k, v in errors.items()})
    history.summary["steps"] = history.epochs[-1]["step"] if history.epochs else 0
    history.summary["train_time"] = history.wall_time
    history.summary["total_time"] = time.perf_counter() - started
    if out_path is not None and main:
        history.to_csv(out_path / "metrics.csv")
        history.to_jsonl(out_path / "history.jsonl")
        if plots:
            from gradwise.train.curves import plot_history  # matplotlib: only when plotting

            plot_history(history, out_path / "curves.png", title=_title(config))
            if classification:
                from gradwise.train.curves import plot_confusion

                counts = confusion_matrix(model, data.x_test, data.y_test)
                names = data.class_names or [str(i) for i in range(data.n_classes)]
                plot_confusion(counts, names, out_path / "confusion.png", title=_title(config))
    return RunResult(config, history, out_path, model, data)


#: a classifier whose final training accuracy is at most this many times chance (the share of
#: the most common training class) learned nothing
CHANCE_FACTOR = 1.5


def at_chance(result: RunResult) -> str | None:
    """Why a finished classifier learned nothing, or None: the accuracy of its final weights is
    at most :data:`CHANCE_FACTOR` times chance, the share of the most common class, or chance
    plus a quarter of the way to 100% where that is lower (two balanced classes: 62.5%).
    Reporting such a run as a success would be garbage (``--optimizer sgd --batch-size 1`` on
    digits: 9.72% validation accuracy against a chance of 10.42%). The accuracy is the last
    epoch's on the validation set, else the test set's, else the training accuracy (an average
    over the epoch, while the model was still learning: a one-epoch run that ends at 87.5% can
    average 48%)."""
    epoch = result.history.epochs[-1] if result.history.epochs else {}
    data = result.data
    measured = [
        (name, accuracy, labels)
        for name, accuracy, labels in (
            ("validation", epoch.get("val_accuracy"), data.y_val),
            ("test", result.history.summary.get("test_accuracy"), data.y_test),
            ("training", epoch.get("train_accuracy"), data.y_train),
        )
        if accuracy is not None and labels is not None and len(labels) > 0
    ]
    if not measured:
        return None
    name, accuracy, labels = measured[0]
    chance = float(torch.bincount(torch.as_tensor(labels).long()).max()) / len(labels)
    bar = min(CHANCE_FACTOR * chance, chance + (1 - chance) / 4)
    if accuracy <= bar:
        return (
            f"its {name} accuracy {accuracy:.2%} is at most {CHANCE_FACTOR:g}x chance "
            f"({chance:.2%}, always answering the most common class)"
        )
    return None


def _set_threads(config: TrainConfig, model: torch.nn.Module) -> None:
    """The process's torch threads for this run, by fit()'s rule (``loop.training_threads``)."""
    threads = training_threads(model, config.threads)
    if threads is not None:
        torch.set_num_threads(threads)


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
    # a run's config.toml and model.json without a checkpoint or metrics: a run that stopped in
    # its first epoch (diverged, interrupted), with nothing to continue; a new run takes over
    stopped_early = not held and (out / "model.json").exists()
    if held or (saved.exists() and saved.read_bytes() != text.encode() and not stopped_early):
        what = ", ".join(held) if held else "the config.toml of another run"
        raise ConfigError(
            f"output folder {out} already holds a run ({what}); continue it with --resume {out} "
            "or choose another --out"
        )
    ckpt.atomic_write_text(saved, text)


def load_run_config(folder: str | Path, epochs: int | None = None) -> TrainConfig:
    """The configuration saved in a run folder (for ``--resume``); with ``epochs``, extended to
    that many epochs (at least its own) and saved so. The schedule is built again for the new
    total, so a cosine decay spans all ``epochs`` from then on (see the README)."""
    folder = Path(folder)
    path = folder / "config.toml"
    if not folder.is_dir():
        raise ConfigError(f"cannot resume: {folder} is not a folder (no such run)")
    if not path.exists():
        raise ConfigError(f"cannot resume: {folder} has no config.toml (is it a gradwise run?)")
    config = TrainConfig.from_toml(path)
    if epochs is None or epochs == config.epochs:
        return config
    if epochs < (config.epochs or 1):
        raise ConfigError(
            f"train: --epochs with --resume extends a run: at least its {config.epochs} epochs; "
            f"received epochs={epochs}"
        )
    config = dataclasses.replace(config, epochs=epochs)
    ckpt.atomic_write_text(path, config.to_toml())
    return config

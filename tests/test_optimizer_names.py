"""Every optimizer name of ``--optimizer`` (``train/optimizers.SPECS``) works wherever the first
seven do: ``gradwise train`` (flags and ``--config`` files), ``fit`` through ``train.run``,
``compare``, ``lr-find`` and ``tune``'s search space; each one's own hyperparameters reach the
optimizer it builds, and one given to an optimizer that does not take it is refused in one line."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from gradwise.cli import main
from gradwise.errors import ConfigError
from gradwise.train.config import OPTIMIZER_OPTIONS, OPTIMIZERS, TrainConfig
from gradwise.train.optimizers import HYPERPARAMETERS, SPECS
from gradwise.train.run import build_optimizer, run

NEW = (
    "nadam",
    "radam",
    "adamax",
    "adadelta",
    "rprop",
    "asgd",
    "lion",
    "schedulefree-adamw",
    "schedulefree-sgd",
    "lamb",
    "prodigy",
    "adafactor",
    "muon",
)

#: for each name, values other than the defaults of every hyperparameter it takes
#: (one value per hyperparameter; betas differ between the Adam family and Lion)
CHOSEN = {
    "momentum": 0.8,
    "betas": (0.85, 0.995),
    "eps": 1e-7,
    "weight_decay": 1e-3,
    "momentum_decay": 5e-3,
    "decoupled_weight_decay": True,
    "rho": 0.8,
    "etas": (0.4, 1.3),
    "step_sizes": (1e-5, 10.0),
    "lambd": 2e-4,
    "alpha": 0.7,
    "t0": 100.0,
    "warmup_steps": 7,
    "d_coef": 0.5,
}
FLAGS = {
    "momentum": "0.8",
    "betas": "0.85,0.995",
    "eps": "1e-7",
    "weight_decay": "1e-3",
    "momentum_decay": "5e-3",
    "rho": "0.8",
    "etas": "0.4,1.3",
    "step_sizes": "1e-5,10",
    "lambd": "2e-4",
    "alpha": "0.7",
    "t0": "100",
    "warmup_steps": "7",
    "d_coef": "0.5",
}


def flags_for(optimizer: str) -> list[str]:
    """The command-line flags setting each hyperparameter ``optimizer`` takes to CHOSEN's value."""
    args = []
    for name in SPECS[optimizer].takes:
        flag = "--" + name.replace("_", "-")
        args += [flag] if name == "decoupled_weight_decay" else [flag, FLAGS[name]]
    return args


def test_every_hyperparameter_is_a_setting_with_a_flag_and_a_value_here():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(HYPERPARAMETERS) <= fields
    assert set(CHOSEN) == set(HYPERPARAMETERS) == set(FLAGS) | {"decoupled_weight_decay"}
    assert set(NEW) <= set(OPTIMIZERS) and tuple(SPECS) == OPTIMIZERS
    for spec in SPECS.values():
        assert set(spec.takes) <= set(HYPERPARAMETERS)


@pytest.mark.parametrize("optimizer", NEW)
def test_each_new_name_trains_digits(optimizer):
    """Five epochs on digits with the name's defaults: far above chance (10%); at 5 epochs the
    slowest starters (RAdam's rectified warm-up, Lion at 1e-4, Rprop made for full batches) are
    near 88%, the others over 95%."""
    config = TrainConfig(dataset="digits", optimizer=optimizer, epochs=5, threads=1)
    result = run(config, None, progress=False, plots=False)
    assert result.history.summary["test_accuracy"] > 0.85
    assert result.config.lr == SPECS[optimizer].lr


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_hyperparameter_reaches_the_optimizer(optimizer):
    """Every hyperparameter the name takes, set to a value other than its default, is what the
    built optimizer's param groups hold (weight decay on the weights' group only)."""
    values = {name: CHOSEN[name] for name in SPECS[optimizer].takes}
    config = TrainConfig(optimizer=optimizer, lr=0.01, **values).resolved()
    if optimizer == "muon":  # Muon's settings reach its group, AdamW's the others
        model = torch.nn.Sequential(*(torch.nn.Linear(3, 3) for _ in range(3)))
        opt = build_optimizer(config, model)
        hidden, weights, biases = opt.param_groups
        assert hidden["params"] == [model[1].weight] and hidden["momentum"] == 0.8
        assert weights["params"] == [model[0].weight, model[2].weight]
        assert hidden["weight_decay"] == weights["weight_decay"] == 1e-3
        assert weights["betas"] == (0.85, 0.995) and weights["eps"] == 1e-7
        assert hidden["lr"] == weights["lr"] == biases["lr"] == 0.01
        assert biases["weight_decay"] == 0.0 and "momentum" not in weights
        return
    opt = build_optimizer(config, torch.nn.Linear(3, 2))
    assert type(opt).__name__ == SPECS[optimizer].cls
    weights, biases = opt.param_groups
    assert weights["lr"] == 0.01
    for name, value in values.items():
        assert weights[name] == value, name
    if "weight_decay" in values:
        assert biases["weight_decay"] == 0.0
    else:
        assert "weight_decay" not in weights  # Rprop has none


def test_defaults_are_the_classes_or_gradwise_s_own():
    """Left out, a hyperparameter is the class's default (or gradwise's, where it has one)."""
    lion = build_optimizer(TrainConfig(optimizer="lion").resolved(), torch.nn.Linear(3, 2))
    assert lion.param_groups[0]["betas"] == (0.9, 0.99)
    assert lion.param_groups[0]["lr"] == 1e-4
    nadam = build_optimizer(TrainConfig(optimizer="nadam").resolved(), torch.nn.Linear(3, 2))
    assert nadam.param_groups[0]["momentum_decay"] == 4e-3
    assert nadam.param_groups[0]["decoupled_weight_decay"] is False
    adamw = TrainConfig(optimizer="adamw").resolved()
    assert adamw.weight_decay == 1e-2 and adamw.betas == (0.9, 0.999)


def test_a_hyperparameter_the_optimizer_does_not_take_is_refused():
    """Every (hyperparameter, name) pair where the name does not take it: refused, naming the
    option, the optimizer and the ones that take it."""
    refused = 0
    for name, taking in OPTIMIZER_OPTIONS.items():
        for optimizer in OPTIMIZERS:
            config = TrainConfig(optimizer=optimizer, **{name: CHOSEN[name]})
            if optimizer in taking:
                config.resolved()
                continue
            with pytest.raises(ConfigError) as error:
                config.resolved()
            message = str(error.value)
            assert f"{name}=" in message, message
            assert f"has no effect with optimizer='{optimizer}'; it applies to " in message
            refused += 1
    assert refused > 80


def _train(tmp_path, *args: str):
    return CliRunner().invoke(
        main, ["train", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run"), *args]
    )


def _saved_groups(tmp_path) -> list[dict]:
    payload = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    saved = payload["optimizer"]
    parts = saved.get("optimizers", [saved])  # Combined: several
    return [group for part in parts for group in part["param_groups"]]


@pytest.mark.parametrize("optimizer", NEW)
def test_train_flags_reach_the_optimizer(tmp_path, optimizer):
    """``gradwise train --optimizer NAME`` with each of its flags: the run's checkpoint holds
    the optimizer's param groups with those values."""
    done = _train(tmp_path, "--optimizer", optimizer, *flags_for(optimizer))
    assert done.exit_code == 0, done.output
    groups = _saved_groups(tmp_path)  # muon: Muon's settings in its group, AdamW's in theirs
    for name in SPECS[optimizer].takes:
        assert any(g.get(name) == pytest.approx(CHOSEN[name]) for g in groups), name
    assert f'optimizer = "{optimizer}"' in (tmp_path / "run" / "config.toml").read_text()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--rho", "0.5"], "rho=0.5 has no effect with optimizer='adam'; it applies to adadelta"),
        (
            ["--optimizer", "rprop", "--weight-decay", "0.1"],
            "weight_decay=0.1 has no effect with optimizer='rprop'; it applies to every "
            "optimizer but rprop",
        ),
        (["--optimizer", "lion", "--eps", "1e-6"], "eps=1e-06 has no effect with optimizer='lion'"),
        (["--optimizer", "sgd", "--etas", "0.4,1.3"], r"etas=\(0.4, 1.3\) .* applies to rprop"),
        (["--optimizer", "adam", "--decoupled-weight-decay"], "applies to nadam, radam"),
        (["--optimizer", "adadelta", "--rho", "2"], "rho must be in"),
        (["--optimizer", "rprop", "--etas", "1.5"], "'--etas': expected two numbers"),
        (["--optimizer", "lbfgs"], "LBFGS .*closure.*use it from Python; the trainer's optim"),
        (["--optimizer", "sparseadam"], "SparseAdam .*sparse gradients.*use it from Python"),
    ],
)
def test_train_refuses_in_one_line(tmp_path, args, match):
    import re

    done = _train(tmp_path, *args)
    assert done.exit_code == 2, done.output
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gradwise: error: "), done.stderr
    assert re.search(match, lines[0]), lines[0]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_config_file_takes_them(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('dataset = "moons"\noptimizer = "rprop"\netas = [0.4, 1.3]\nepochs = 1\n')
    done = _train(tmp_path, "--config", str(config), "--step-sizes", "1e-5,10")
    assert done.exit_code == 0, done.output
    group = _saved_groups(tmp_path)[0]
    assert group["etas"] == pytest.approx((0.4, 1.3))
    assert group["step_sizes"] == pytest.approx((1e-5, 10.0))
    saved = TrainConfig.from_toml(tmp_path / "run" / "config.toml")
    assert saved.etas == (0.4, 1.3) and saved.step_sizes == (1e-5, 10.0)
    config.write_text('optimizer = "asgd"\nt0 = "soon"\n')
    done = _train(tmp_path, "--config", str(config))
    assert done.exit_code == 2 and "t0 must be of type float" in done.stderr


def test_compare_grid_gives_each_its_own_options():
    """A grid over several names: an option applies to those that take it and is reset for the
    others; betas left out are each name's own."""
    from gradwise.lab import grid

    base = TrainConfig(dataset="moons", rho=0.8, betas=(0.8, 0.99))
    configs = grid(base, optimizers=["adadelta", "lion", "rprop"])
    resolved = {c.optimizer: c.resolved() for c in configs.values()}
    assert resolved["adadelta"].rho == 0.8 and resolved["lion"].rho is None
    assert resolved["lion"].betas == (0.8, 0.99)
    assert grid(TrainConfig(), optimizers=["lion"])["lion lr=1e-4"].resolved().betas == (
        0.9,
        0.99,
    )
    with pytest.raises(ConfigError, match="rho=0.8 has no effect with any of the"):
        grid(base, optimizers=["lion", "rprop"])


def test_compare_and_lr_find_commands_take_them(tmp_path):
    done = CliRunner().invoke(
        main,
        ["compare", "--dataset", "moons", "--optimizers", "lion,adadelta", "--epochs", "1",
         "--seeds", "1", "--jobs", "1", "--no-progress", "--out", str(tmp_path / "cmp")],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    summary = (tmp_path / "cmp" / "summary.md").read_text()
    assert "lion lr=1e-4" in summary and "adadelta lr=1" in summary
    done = CliRunner().invoke(
        main,
        ["lr-find", "--dataset", "moons", "--optimizer", "nadam", "--momentum-decay", "5e-3",
         "--steps", "20", "--out", str(tmp_path / "lr")],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert (tmp_path / "lr" / "lr_find.csv").exists()


def test_tune_space_can_name_them():
    """A --space file may list any name: each trial draws only the options its optimizer
    takes (no weight decay for Rprop, betas for Lion)."""
    optuna = pytest.importorskip("optuna")
    from gradwise.lab.tune.space import DEFAULT_OPTIMIZERS, Space

    space = Space.build("digits", "mlp", {"optimizer": list(NEW)})
    assert set(DEFAULT_OPTIMIZERS) <= set(OPTIMIZERS)
    base = TrainConfig(dataset="digits")
    for optimizer in NEW:
        params = {"optimizer": optimizer, **space.first_trial(dataclasses.replace(
            base, optimizer=optimizer))}  # fmt: skip
        config = space.suggest(optuna.trial.FixedTrial(params), base, n_train=1000)
        resolved = config.resolved()
        assert resolved.optimizer == optimizer
        if optimizer == "rprop":
            assert resolved.weight_decay == 0.0
        if optimizer == "lion":
            assert resolved.betas == (0.9, 0.99)
    with pytest.raises(ConfigError, match="unknown optimizer 'adamm'"):
        Space.build("digits", "mlp", {"optimizer": ["adamm"]})


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_name_has_a_range_test(optimizer):
    """``lr_find_for`` (what ``gradwise lr-find`` runs) on every name: Schedule-Free steps in
    train mode there too; the model and optimizer are left as they were."""
    from gradwise.lab import lr_find_for

    config = TrainConfig(dataset="moons", optimizer=optimizer, threads=1).resolved()
    result = lr_find_for(config, steps=12)
    assert len(result.lrs) > 0

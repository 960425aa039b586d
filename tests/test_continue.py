"""Continuing runs (--resume --epochs N, --init-from) from any directory, and a user's own model
(--model module:function / path/file.py:function) through resume, export, load and predict."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import gradwise
from gradwise.cli import main as cli
from gradwise.train import checkpoint as ckpt
from gradwise.train.history import History

USER_MODEL = """
import torch

CALLS = []

def build(input_shape, n_outputs):
    CALLS.append((input_shape, n_outputs))
    return torch.nn.Sequential(
        torch.nn.Linear(input_shape[0], 8), torch.nn.Tanh(), torch.nn.Linear(8, n_outputs)
    )

def not_a_model(input_shape, n_outputs):
    return "a string"

def one_too_wide(input_shape, n_outputs):
    return torch.nn.Linear(input_shape[0], n_outputs + 1)
"""


def gradwise_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args):
    result = gradwise_cli(*args, "--no-progress")
    assert result.exit_code == 0, result.output
    return result


def one_line_error(result, match):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and re.search(match, lines[0]), result.output


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with a CSV, a model file and a config file; the tests start in it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3)).round(3)
    y = (x @ [1.0, -2.0, 0.5] * 100 + 1000).round(2)
    with open(tmp_path / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows([["a", "b", "c", "y"], *(list(r) + [t] for r, t in zip(x, y))])
    (tmp_path / "mymodel.py").write_text(USER_MODEL)
    (tmp_path / "my.toml").write_text('data = "data.csv"\nhidden = [8]\nbatch_size = "16"\n')
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def weights(run):
    return ckpt.load_latest(run)[0]["model"]


def epochs_of(run):
    return History.from_jsonl(run / "history.jsonl").epochs


@pytest.mark.parametrize("schedule", [None, "cosine"])
def test_resume_with_more_epochs_extends_a_finished_run_from_another_folder(
    project, monkeypatch, schedule
):
    sched = ("--schedule", schedule) if schedule else ()
    ok("train", "--config", "my.toml", "--epochs", "2", "--out", "short", *sched)
    ok("train", "--config", "my.toml", "--epochs", "4", "--out", "long", *sched)
    monkeypatch.chdir(project / "elsewhere")  # relative --config and --data: paths were saved
    ok("train", "--resume", "../short", "--epochs", "4")
    short, long = project / "short", project / "long"
    assert "epochs = 4" in (short / "config.toml").read_text()
    assert [e["epoch"] for e in epochs_of(short)] == [1, 2, 3, 4]
    if schedule is None:  # a constant rate: exactly the run that had 4 epochs from the start
        for name, tensor in weights(long).items():
            assert torch.equal(weights(short)[name], tensor), name
    else:  # the cosine is rebuilt over 4 epochs: epochs 3-4 follow the 4-epoch schedule
        lrs = [e["lr"] for e in epochs_of(short)]
        expected = [e["lr"] for e in epochs_of(long)]
        assert lrs[2:] == pytest.approx(expected[2:]) and lrs[1] != pytest.approx(expected[1])


def test_every_setting_a_run_writes_reads_back():
    """Every setting of TrainConfig, given a value, goes through config.toml and back unchanged:
    its type is read from the dataclass's annotations. Before, settings whose default is None
    and that a hand-kept table missed (clip_grad_norm, ema) were refused when read back, so such
    a run could not be resumed or reused with --config."""
    import dataclasses
    import tomllib

    from gradwise.train.config import TrainConfig, _setting_types

    samples = {str: "8", tuple: (3, 2), float: 0.5, int: 3, bool: True, dict: {"k": 1}}
    values = {name: samples[kind] for name, kind in _setting_types().items()}
    config = TrainConfig(**values)
    back = TrainConfig.from_dict(tomllib.loads(config.to_toml()))
    assert dataclasses.asdict(back) == dataclasses.asdict(config)


def test_a_run_with_clipping_and_an_average_resumes(project):
    ok(
        "train",
        "--config",
        "my.toml",
        "--epochs",
        "1",
        "--clip-grad-norm",
        "1",
        "--ema",
        "0.9",
        "--out",
        "run",
    )
    ok("train", "--resume", "run", "--epochs", "2")
    assert [e["epoch"] for e in epochs_of(project / "run")] == [1, 2]
    ok("train", "--config", "run/config.toml", "--epochs", "1", "--out", "again")


def test_a_runs_config_reused_with_another_optimizer_drops_what_that_one_does_not_take(project):
    """A run's config.toml holds its optimizer's settings (momentum = 0.9 for momentum): with
    --optimizer adam they are dropped, not refused as having no effect; the settings both take
    (the learning rate) carry over, and one given as a flag is still refused."""
    ok("train", "--config", "my.toml", "--optimizer", "momentum", "--lr", "0.05", "--epochs", "1",
       "--out", "sgd")  # fmt: skip
    ok("train", "--config", "sgd/config.toml", "--optimizer", "adam", "--out", "adam")
    config = (project / "adam" / "config.toml").read_text()
    assert 'optimizer = "adam"' in config and "lr = 0.05" in config
    assert "momentum = 0.9" not in config
    one_line_error(
        gradwise_cli(
            "train",
            "--config",
            "sgd/config.toml",
            "--optimizer",
            "adam",
            "--momentum",
            "0.5",
            "--out",
            "bad",
        ),  # fmt: skip
        "momentum=0.5 has no effect",
    )


def test_resume_refuses_fewer_epochs_and_other_options(project):
    ok("train", "--config", "my.toml", "--epochs", "2", "--out", "run")
    one_line_error(gradwise_cli("train", "--resume", "run", "--epochs", "1"), "at least its 2")
    one_line_error(gradwise_cli("train", "--resume", "run", "--lr", "1"), "drop --lr")


def test_saved_paths_are_absolute(project):
    ok("train", "--data", "data.csv", "--model", "mymodel.py:build", "--epochs", "1", "--out", "r")
    text = (project / "r" / "config.toml").read_text()
    assert f'data = "{project / "data.csv"}"' in text
    assert f'model = "{project / "mymodel.py"}:build"' in text


def test_init_from_starts_from_the_runs_weights(project):
    ok("train", "--config", "my.toml", "--epochs", "2", "--out", "first")
    # lr 0: the new run's weights stay the loaded ones
    ok("train", "--config", "my.toml", "--init-from", "first", "--lr", "0", "--epochs", "1",
       "--out", "second")  # fmt: skip
    for name, tensor in weights(project / "first").items():
        assert torch.equal(weights(project / "second")[name], tensor), name
    assert f'init_from = "{project / "first"}"' in (project / "second" / "config.toml").read_text()
    result = gradwise_cli("train", "--config", "my.toml", "--hidden", "4", "--init-from", "first")
    one_line_error(result, r"other shapes: fc1.bias is \(8,\) there, \(4,\) here")


def test_a_users_model_file_trains_resumes_exports_and_predicts(project, monkeypatch, tmp_path):
    ok("train", "--data", "data.csv", "--model", "mymodel.py:build", "--epochs", "2", "--out", "r")
    monkeypatch.chdir(project / "elsewhere")
    ok("train", "--resume", "../r", "--epochs", "3")
    assert len(epochs_of(project / "r")) == 3
    model = gradwise.load(project / "r")
    assert isinstance(model[1], torch.nn.Tanh) and model[0].in_features == 3
    assert gradwise_cli("export", "../r", "--format", "pt", "--out", "m.pt").exit_code == 0
    assert torch.load("m.pt", weights_only=True)["config"]["model"].endswith("mymodel.py:build")
    x = torch.randn(4, 3)
    with torch.no_grad():
        assert torch.equal(gradwise.load("m.pt")(x), model(x))
    answer = gradwise_cli("predict", "../r", "--data", project / "data.csv")
    assert answer.exit_code == 0 and answer.output.splitlines()[0] == "prediction"
    assert len(answer.output.splitlines()) == 121


def test_a_users_model_module(project, monkeypatch):
    pkg = project / "pkg"
    pkg.mkdir()
    (pkg / "nets.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(pkg))
    ok("train", "--data", "data.csv", "--model", "nets:build", "--epochs", "1", "--out", "r")
    import nets

    assert nets.CALLS[0] == ((3,), 1)  # input_shape, n_outputs
    assert 'model = "nets:build"' in (project / "r" / "config.toml").read_text()


@pytest.mark.parametrize(
    ("model", "match"),
    [
        ("mymodel.py:nope", r"mymodel.py has no function 'nope'"),
        ("mymodel.py:not_a_model", r"must return an nn.Module; it returned str"),
        ("mymodel.py:one_too_wide", r"must map \(rows, \*input_shape\) to \(rows, 1\); .*\(2, 2\)"),
        ("missing.py:build", r"file .*missing.py does not exist"),
        ("no_such_module_xyz:build", r"cannot import module 'no_such_module_xyz'"),
        ("transformer", r"model must be one of 'mlp', 'cnn1d', 'module:function'"),
    ],
)
def test_a_bad_model_spec_is_one_line(project, model, match):
    one_line_error(gradwise_cli("train", "--data", "data.csv", "--model", model), match)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--hidden", "4"),
        ("--channels", "8,8"),
        ("--activation", "tanh"),
        ("--dropout", "0.2"),
        ("--init", "xavier"),
    ],
)
def test_a_users_model_refuses_the_builtin_models_settings(project, option, value):
    """A user's model builds its own layers: a width, activation, dropout or init scheme given
    with it would be ignored, so it is refused in one line and nothing is trained."""
    result = gradwise_cli(
        "train", "--data", "data.csv", "--model", "mymodel.py:build", option, value, "--out", "r"
    )
    name = option.removeprefix("--")
    one_line_error(result, rf"{name}=.* has no effect with model='.*mymodel.py:build'")
    assert not (project / "r").exists()


def test_a_users_models_config_names_none_of_the_builtin_models_settings(project, monkeypatch):
    """Its config.toml leaves the built-in models' settings out; a config.toml that names them
    at their defaults (as earlier releases wrote every run's) still resumes."""
    ok("train", "--data", "data.csv", "--model", "mymodel.py:build", "--epochs", "1", "--out", "r")
    saved = project / "r" / "config.toml"
    text = saved.read_text()
    for key in ("hidden", "channels", "activation", "dropout", "init"):
        assert f"\n{key} = " not in text, key
    saved.write_text(
        text + 'hidden = [128, 128]\nchannels = [32, 32, 32]\nactivation = "relu"\n'
        'dropout = 0.0\ninit = "auto"\n'
    )
    ok("train", "--resume", "r", "--epochs", "2")
    assert len(epochs_of(project / "r")) == 2

"""The ``gradwise`` group as a whole: ``--help`` starts without torch, every registered command
imports, and every command's usage errors are one line, exit code 2, with a suggestion for a near
miss."""

import importlib
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from gradwise.cli import COMMANDS, main


def test_help_does_not_import_torch():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['gradwise', '--help']\n"
        "try:\n"
        "    runpy.run_module('gradwise', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "Commands:" in done.stdout and "lr-find" in done.stdout
    assert done.stdout.strip().endswith("torch imported: False"), done.stdout + done.stderr


def test_version_is_single_sourced_and_printed_without_torch():
    import importlib.metadata

    import gradwise

    code = (
        "import runpy, sys\n"
        "sys.argv = ['gradwise', '--version']\n"
        "try:\n"
        "    runpy.run_module('gradwise', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stdout.strip().splitlines()
    assert lines == [f"gradwise, version {gradwise.__version__}", "torch imported: False"], lines
    # pyproject.toml takes the version from __version__ ([tool.hatch.version]); an editable
    # install made before a version bump shows the old one until it is reinstalled
    assert importlib.metadata.version("gradwise") == gradwise.__version__


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_registered_command_imports_and_lists_its_own_first_line(name):
    module, attribute, line = COMMANDS[name]
    command = getattr(importlib.import_module(module), attribute)
    assert isinstance(command, click.Command) and command.name == name
    assert line == command.get_short_help_str(limit=1000)


def _one_line_error(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith("gradwise: error: "), result.output
    return line


@pytest.mark.parametrize(
    "args, suggestion",
    [
        (["trian"], "did you mean 'train'?"),
        (["--verison"], "did you mean '--version'?"),
        (["train", "--optimzer", "adam"], "did you mean '--optimizer'?"),
        (["train", "--optimizer", "adamm"], "did you mean 'adam'?"),
        (["compare", "--optimizer", "sgd,adam"], "use --optimizers"),
        (["compare", "--lr", "1e-3,1e-2"], "use --lrs"),
        (["compare", "--batch-size", "full,64"], "use --batch-sizes"),
        (["compare", "--optimizers", "sgd,adamm"], "did you mean 'adam'?"),
        (["compare", "--seed", "1", "--sedes", "2"], "did you mean '--seeds'?"),
        (["lr-find", "--end-rl", "1"], "did you mean '--end-lr'?"),
        (["lr-find", "--rule", "minimum"], "did you mean 'minimum/10'?"),
        (["schedule", "cosine", "--stesp", "10"], "did you mean '--steps'?"),
        (["schedule"], "Missing argument 'SCHEDULE...'"),
        (["bench", "--quik"], "did you mean '--quick'?"),
        (["bench", "--train-step", "--modls", "mlp"], "did you mean '--models'?"),
        (["cache", "--cleer"], "did you mean '--clear'?"),
    ],
)
def test_usage_errors_are_one_line_with_a_suggestion(args, suggestion):
    assert suggestion in _one_line_error(args)


def test_lr_find_leaves_out_the_options_that_do_not_apply():
    result = CliRunner().invoke(main, ["lr-find", "--help"])
    assert result.exit_code == 0
    for option in ("--epochs", "--early-stop", "--plateau", "--schedule", "--nan-policy"):
        assert f"{option} " not in result.output
    assert "--start-lr" in result.output and "--optimizer" in result.output
    assert "No such option: --epochs" in _one_line_error(["lr-find", "--epochs", "3"])


def test_bench_is_named_gradwise_bench():
    result = CliRunner().invoke(main, ["bench", "--help"])
    assert result.exit_code == 0
    assert result.output.startswith("gradwise bench --train-step [...] times whole training")
    assert "\nusage: gradwise bench " in result.output  # the step's options, after that line

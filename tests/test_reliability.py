"""Reliability (issue 7): crash safety, integrity, untrusted files, numerical faults, bad input and
resource bounds, each tried systematically from the tables below.

``docs/reliability.md`` reports what this file tries; its counts come from these tables
(``python tests/test_reliability.py`` prints them, and a test checks the document agrees).

Subprocess tests run ``python -m gradwise train`` (the console script's code) with
``OMP_NUM_THREADS=1``; the kill and interrupt tests are marked ``slow`` (they still run in CI).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import gradwise.init as gi
import gradwise.optim as go
import gradwise.schedules as gs
from gradwise.cli import main as cli
from gradwise.errors import CheckpointError, CheckpointWarning
from gradwise.train import checkpoint as ckpt
from gradwise.train import run as run_module
from gradwise.train.config import TrainConfig
from gradwise.train.faults import Diverged, SkippedStepWarning
from gradwise.train.loop import fit

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
NAN, INF = float("nan"), float("inf")


# =============================================================================================
# helpers
# =============================================================================================


def tree(root: Path) -> dict[str, object]:
    """Every file under ``root``: relative path -> sha256 of its bytes (size and mtime for the
    huge sparse files of the resource tests)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st_ = p.stat()
            big = st_.st_size > 1 << 26
            out[str(p.relative_to(root))] = (
                (st_.st_size, st_.st_mtime_ns)
                if big
                else hashlib.sha256(p.read_bytes()).hexdigest()
            )
    return out


def assert_one_line_error(stderr: str, match: str | None = None) -> str:
    """stderr is exactly one line ``gradwise: error: ...`` (no traceback); returns it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith("gradwise: error: ")]
    assert len(errors) == 1, stderr
    assert all(line.startswith("gradwise: ") for line in lines), stderr
    if match is not None:
        import re

        assert re.search(match, errors[0]), f"{match!r} not in {errors[0]!r}"
    return errors[0]


def invoke(args: list[str]):
    return CliRunner().invoke(cli, ["train", *args])


def write_checkpoint_bytes(path: Path, body: bytes, version: int = 1) -> None:
    """A checkpoint in the version 1 layout (a header line, then any payload bytes), which
    gradwise still reads: a valid checksum over whatever ``body`` is."""
    digest = hashlib.sha256(body).hexdigest().encode()
    path.write_bytes(b"GRADWISE-CHECKPOINT %d sha256=" % version + digest + b"\n" + body)


def evil_pickle(marker: Path) -> bytes:
    """torch.save bytes whose unpickling would run ``touch marker``."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    torch.save({"model": Evil()}, buf)
    return buf.getvalue()


# =============================================================================================
# bad input, category 1-3: optimizer, schedule and init arguments (library)
# =============================================================================================

P = [nn.Parameter(torch.zeros(3))]

#: (optimizer, keyword arguments) that must be refused
OPTIMIZER_CASES: list[tuple[str, dict]] = [
    *[
        (name, kw)
        for name in ("SGD", "Adagrad", "RMSprop", "Adam", "AdamW")
        for kw in (
            dict(lr=-0.1),
            dict(lr=NAN),
            dict(lr=INF),
            dict(lr="0.1"),
            dict(lr=True),
            dict(weight_decay=-1e-4),
            dict(l1=-1.0),
            dict(maximize="yes"),
        )
    ],
    ("SGD", dict(momentum=-0.9)),
    ("SGD", dict(dampening=2.0)),
    ("SGD", dict(nesterov=True)),  # needs momentum > 0
    ("SGD", dict(nesterov=1, momentum=0.9)),
    ("Adagrad", dict(lr_decay=-1.0)),
    ("Adagrad", dict(initial_accumulator_value=-1.0)),
    ("Adagrad", dict(eps=-1e-10)),
    ("RMSprop", dict(alpha=1.5)),
    ("RMSprop", dict(alpha=-0.1)),
    ("RMSprop", dict(eps=-1e-8)),
    ("RMSprop", dict(momentum=-0.5)),
    ("RMSprop", dict(centered="no")),
    ("Adam", dict(betas=(1.0, 0.999))),
    ("Adam", dict(betas=(0.9, -0.1))),
    ("Adam", dict(betas=(0.9,))),
    ("Adam", dict(betas="0.9,0.999")),
    ("Adam", dict(eps=-1e-8)),
    ("Adam", dict(amsgrad="y")),
    ("AdamW", dict(betas=(1.5, 0.9))),
    ("AdamW", dict(weight_decay=NAN)),
    ("AdamW", dict(eps="tiny")),
]


@pytest.mark.parametrize(("name", "kwargs"), OPTIMIZER_CASES, ids=lambda v: str(v))
def test_optimizer_arguments_out_of_range_or_of_wrong_type(name, kwargs):
    with pytest.raises((ValueError, TypeError)) as info:
        getattr(go, name)(P, **kwargs)
    message = str(info.value)
    arg = next(iter(kwargs)) if "nesterov" not in kwargs else "nesterov"
    assert "\n" not in message and arg in message and name in message


#: (description, call) that must be refused
SCHEDULE_CASES: list[tuple[str, Callable]] = [
    ("StepDecay(0)", lambda: gs.StepDecay(0)),
    ("StepDecay(1.5)", lambda: gs.StepDecay(1.5)),
    ("StepDecay(10, gamma=1.5)", lambda: gs.StepDecay(10, gamma=1.5)),
    ("StepDecay(10, gamma=-0.1)", lambda: gs.StepDecay(10, gamma=-0.1)),
    ("ExponentialDecay(-0.1)", lambda: gs.ExponentialDecay(-0.1)),
    ("ExponentialDecay(nan)", lambda: gs.ExponentialDecay(NAN)),
    ("ExponentialDecay('0.9')", lambda: gs.ExponentialDecay("0.9")),
    ("Cosine(0)", lambda: gs.Cosine(0)),
    ("Cosine(-5)", lambda: gs.Cosine(-5)),
    ("Cosine(10, final=2)", lambda: gs.Cosine(10, final=2)),
    ("Warmup(0)", lambda: gs.Warmup(0)),
    ("Warmup(10, start=2)", lambda: gs.Warmup(10, start=2)),
    ("Warmup(10, then=3)", lambda: gs.Warmup(10, then=3)),
    ("OneCycle(0)", lambda: gs.OneCycle(0)),
    ("OneCycle(10, pct_start=1.5)", lambda: gs.OneCycle(10, pct_start=1.5)),
    ("OneCycle(10, div_factor=0)", lambda: gs.OneCycle(10, div_factor=0)),
    ("OneCycle(10, anneal='x')", lambda: gs.OneCycle(10, anneal="x")),
    ("MultiStepDecay([5, 3])", lambda: gs.MultiStepDecay([5, 3])),
    ("MultiStepDecay(5)", lambda: gs.MultiStepDecay(5)),
    ("MultiStepDecay([0])", lambda: gs.MultiStepDecay([0])),
    ("Constant(-1)", lambda: gs.Constant(-1)),
    ("Plateau(factor=2)", lambda: gs.Plateau(factor=2)),
    ("Plateau(mode='x')", lambda: gs.Plateau(mode="x")),
    ("Plateau(patience=-1)", lambda: gs.Plateau(patience=-1)),
    ("Plateau(threshold_mode='x')", lambda: gs.Plateau(threshold_mode="x")),
    ("Plateau(cooldown=-1)", lambda: gs.Plateau(cooldown=-1)),
    ("Sequence([])", lambda: gs.Sequence([])),
    ("Sequence('x')", lambda: gs.Sequence("x")),
    ("Scheduler(None)", lambda: gs.Scheduler(None)),
    ("Scheduler(opt, min_lr=-1)", lambda: gs.Scheduler(go.SGD(P, lr=0.1), min_lr=-1)),
    ("Scheduler(opt, plateau=3)", lambda: gs.Scheduler(go.SGD(P, lr=0.1), plateau=3)),
    ("parse('bogus')", lambda: gs.parse("bogus")),
    ("parse('step:0')", lambda: gs.parse("step:0")),
    ("parse('cosine:abc')", lambda: gs.parse("cosine:abc")),
    ("parse('warmup')", lambda: gs.parse("warmup")),
    ("parse('exp:2')", lambda: gs.parse("exp:2")),
    ("parse('')", lambda: gs.parse("")),
    ("parse('step:10:0.5:9')", lambda: gs.parse("step:10:0.5:9")),
    ("parse(3)", lambda: gs.parse(3)),
]


@pytest.mark.parametrize(("text", "call"), SCHEDULE_CASES, ids=[c[0] for c in SCHEDULE_CASES])
def test_schedule_arguments_out_of_range_or_of_wrong_type(text, call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and ("must be" in message or "allowed" in message), message


M33 = torch.zeros(3, 3)
#: (description, call) that must be refused
INIT_CASES: list[tuple[str, Callable]] = [
    ("xavier_uniform_(1-D tensor)", lambda: gi.xavier_uniform_(torch.zeros(3))),
    ("xavier_normal_('x')", lambda: gi.xavier_normal_("x")),
    ("he_normal_(mode='x')", lambda: gi.he_normal_(M33.clone(), mode="x")),
    ("he_normal_(nonlinearity='x')", lambda: gi.he_normal_(M33.clone(), nonlinearity="x")),
    ("he_uniform_(mode=3)", lambda: gi.he_uniform_(M33.clone(), mode=3)),
    ("lecun_normal_(generator=3)", lambda: gi.lecun_normal_(M33.clone(), generator=3)),
    ("lecun_uniform_([1, 2])", lambda: gi.lecun_uniform_([1, 2])),
    ("gain('bogus')", lambda: gi.gain("bogus")),
    ("gain('leaky_relu', 'x')", lambda: gi.gain("leaky_relu", "x")),
    ("orthogonal_(1-D tensor)", lambda: gi.orthogonal_(torch.zeros(3))),
    ("orthogonal_(gain=nan)", lambda: gi.orthogonal_(M33.clone(), gain=NAN)),
    ("variance_scaling_(scale=-1)", lambda: gi.variance_scaling_(M33.clone(), scale=-1)),
    ("variance_scaling_(scale=inf)", lambda: gi.variance_scaling_(M33.clone(), scale=INF)),
    ("variance_scaling_(distribution='x')", lambda: gi.variance_scaling_(M33, distribution="x")),
    ("init_model(scheme='x')", lambda: gi.init_model(nn.Linear(2, 2), scheme="x")),
    ("init_model('x')", lambda: gi.init_model("x")),
    ("zeros_(3)", lambda: gi.zeros_(3)),
]


@pytest.mark.parametrize(("text", "call"), INIT_CASES, ids=[c[0] for c in INIT_CASES])
def test_init_arguments_out_of_range_or_of_wrong_type(text, call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "must be" in message, message


#: documented ranges of optimizer hyperparameters: (optimizer, argument) -> allowed(value)
OPTIMIZER_RANGES: dict[tuple[str, str], Callable[[float], bool]] = {
    ("SGD", "lr"): lambda v: v >= 0,
    ("SGD", "momentum"): lambda v: v >= 0,
    ("SGD", "dampening"): lambda v: 0 <= v <= 1,
    ("SGD", "weight_decay"): lambda v: v >= 0,
    ("Adagrad", "lr_decay"): lambda v: v >= 0,
    ("Adagrad", "initial_accumulator_value"): lambda v: 0 <= v <= torch.finfo(torch.float32).max,
    ("Adagrad", "eps"): lambda v: v >= 0,
    ("RMSprop", "alpha"): lambda v: 0 <= v <= 1,
    ("RMSprop", "eps"): lambda v: v >= 0,
    ("Adam", "eps"): lambda v: v >= 0,
    ("Adam", "l1"): lambda v: v >= 0,
    ("AdamW", "weight_decay"): lambda v: v >= 0,
}
PROPERTY_EXAMPLES = {"optimizer arguments": 200, "CLI option values": 150, "checkpoint bytes": 60}


@settings(max_examples=PROPERTY_EXAMPLES["optimizer arguments"], deadline=None)
@given(
    key=st.sampled_from(sorted(OPTIMIZER_RANGES)),
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(10**6), 10**6),
        st.booleans(),
        st.text(max_size=5),
        st.none(),
        st.lists(st.floats(0, 1), max_size=2),
    ),
)
def test_property_optimizer_arguments_are_checked(key, value):
    """Any value: the optimizer is built with a value in the documented range, or the error
    names the optimizer and the argument (one line, ValueError or TypeError)."""
    name, arg = key
    try:
        opt = getattr(go, name)(P, **{arg: value})
    except (ValueError, TypeError) as e:
        message = str(e)
        assert "\n" not in message and name in message and arg in message, message
        return
    accepted = opt.param_groups[0][arg]
    assert not isinstance(value, bool | str | list) and value is not None
    assert math.isfinite(accepted) and OPTIMIZER_RANGES[key](accepted)


# =============================================================================================
# bad input, categories 4-9: the command line, data files, config files, output folders,
# resuming, resource bounds. Each runs `gradwise train` (CliRunner) in a folder holding an
# earlier run and the input files, and checks: exit code 2, one line `gradwise: error: ...`
# naming the problem, and every file in the folder unchanged (nothing added or removed).
# =============================================================================================


@dataclass(frozen=True)
class CliCase:
    id: str
    args: tuple[str, ...]  # "{d}" stands for the sandbox folder
    match: str  # regex the error line must contain
    setup: Callable[[Path], None] | None = None  # writes input files into the sandbox


# a run that learns in one epoch (a classifier at chance accuracy exits 2)
SMALL = ("--dataset", "moons", "--hidden", "8", "--epochs", "1", "--lr", "0.03", "--no-progress")

CLI_CASES: list[CliCase] = [
    CliCase("epochs-zero", ("--epochs", "0"), r"epochs must be an integer >= 1"),
    CliCase("epochs-negative", ("--epochs", "-3"), r"epochs must be an integer >= 1"),
    CliCase("epochs-text", ("--epochs", "ten"), r"'--epochs'.*'ten' is not a valid integer"),
    CliCase("epochs-float", ("--epochs", "2.5"), r"'--epochs'.*not a valid integer"),
    CliCase("lr-negative", ("--lr", "-0.1"), r"lr must be >= 0; received lr=-0.1"),
    CliCase("lr-text", ("--lr", "fast"), r"'--lr'.*not a valid float"),
    CliCase("lr-nan", ("--lr", "nan"), r"lr must be finite"),
    CliCase("lr-inf", ("--lr", "1e400"), r"lr must be finite"),
    CliCase("batch-size-zero", ("--batch-size", "0"), r"batch_size must be 'full', 1 or a pos"),
    CliCase("batch-size-negative", ("--batch-size", "-8"), r"batch_size must be 'full'"),
    CliCase("batch-size-text", ("--batch-size", "half"), r"batch_size must be 'full'"),
    CliCase("hidden-zero", ("--hidden", "0"), r"'--hidden'.*positive integers"),
    CliCase("hidden-negative", ("--hidden", "32,-1"), r"'--hidden'.*positive integers"),
    CliCase("hidden-text", ("--hidden", "wide"), r"'--hidden'.*comma-separated integers"),
    CliCase("channels-zero", ("--model", "cnn1d", "--channels", "0"), r"'--channels'"),
    CliCase("dropout-one", ("--dropout", "1"), r"dropout must be in \[0, 1\)"),
    CliCase("dropout-negative", ("--dropout", "-0.5"), r"dropout must be in \[0, 1\)"),
    CliCase(
        "momentum-negative",
        ("--optimizer", "momentum", "--momentum", "-0.9"),
        r"momentum must be >= 0",
    ),
    CliCase("betas-out-of-range", ("--betas", "1.5,0.9"), r"betas\[0\] must be in \[0, 1\)"),
    CliCase("betas-one-number", ("--betas", "0.9"), r"'--betas'.*two numbers"),
    CliCase(
        "etas-one-number",
        ("--optimizer", "rprop", "--etas", "0.5"),
        r"'--etas'.*two numbers .*\(e\.g\. 0\.5,1\.2\)",
    ),
    CliCase(
        "model-not-a-builder",
        ("--model", "os:getcwd"),
        r"model: calling os:getcwd\(input_shape, n_outputs\) failed: .*takes no arguments",
    ),
    CliCase("eps-negative", ("--eps", "-1e-8"), r"eps must be >= 0"),
    CliCase("weight-decay-negative", ("--weight-decay", "-0.01"), r"weight_decay must be >= 0"),
    CliCase("l1-negative", ("--l1", "-1"), r"l1 must be >= 0"),
    CliCase("l2-negative", ("--l2", "-1"), r"l2 must be >= 0"),
    CliCase("seed-negative", ("--seed", "-1"), r"seed must be an integer >= 0"),
    CliCase("seed-too-large", ("--seed", str(2**64)), r"seed must be an integer in \[0, 2\*\*64\)"),
    CliCase(
        "plateau-factor-too-big",
        ("--plateau", "--plateau-factor", "1.5"),
        r"plateau_factor must be in \[0, 1\)",
    ),
    CliCase("plateau-patience-negative", ("--plateau-patience", "-1"), r"plateau_patience"),
    CliCase("early-stop-negative", ("--early-stop", "-2"), r"early_stop must be an integer >= 0"),
    CliCase("optimizer-unknown", ("--optimizer", "adamq"), r"'--optimizer'.*'adamq'.*'sgd'"),
    CliCase("model-unknown", ("--model", "resnet"), r"model must be one of 'mlp'.*model='resnet'"),
    CliCase("init-unknown", ("--init", "zeros"), r"'--init'.*'zeros'.*'he'"),
    CliCase(
        "dataset-unknown",
        ("--dataset", "cifar"),
        r"dataset must be one of 'digits'.*received dataset='cifar'",
    ),
    CliCase("activation-unknown", ("--activation", "swish"), r"activation must be one of"),
    CliCase("schedule-unknown", ("--schedule", "fast"), r"unknown schedule name 'fast'"),
    CliCase("schedule-zero-steps", ("--schedule", "warmup:0"), r"not a number of steps >= 1"),
    CliCase("schedule-growth", ("--schedule", "exp:2"), r"gamma must be in \[0, 1\]"),
    CliCase("device-unknown", ("--device", "tpu"), r"device must be 'auto', 'cpu'"),
    CliCase("nan-policy-unknown", ("--nan-policy", "ignore"), r"'--nan-policy'.*'raise'"),
    CliCase("option-unknown", ("--learning-rate", "0.1"), r"No such option.*--learning-rate"),
    CliCase("argument-extra", ("digits",), r"unexpected extra argument"),
    CliCase("option-without-value", ("--epochs",), r"'--epochs' requires an argument"),
    CliCase("target-without-data", ("--target", "y"), r"target names a column of a --data"),
    CliCase("device-cuda-absent", ("--device", "cuda"), r"CUDA is not available"),  # CPU only
]


def _csv(text: str, name: str = "data.csv") -> Callable[[Path], None]:
    def write(d: Path) -> None:
        (d / name).write_text(text)

    return write


def _bytes(data: bytes, name: str) -> Callable[[Path], None]:
    def write(d: Path) -> None:
        (d / name).write_bytes(data)

    return write


def _npz(name: str = "data.npz", **arrays) -> Callable[[Path], None]:
    def write(d: Path) -> None:
        np.savez(d / name, **arrays)

    return write


def _pt(obj_fn: Callable[[Path], object], name: str = "data.pt") -> Callable[[Path], None]:
    def write(d: Path) -> None:
        torch.save(obj_fn(d), d / name)

    return write


def _pt_evil(d: Path) -> None:
    (d / "evil.pt").write_bytes(evil_pickle(d / "pwned"))


def _good_rows(n: int = 30) -> str:
    return "a,b,label\n" + "".join(f"{i % 7},{(i * 3) % 5},{i % 2}\n" for i in range(n))


_X = np.arange(40, dtype=np.float64).reshape(20, 2)
_Y = np.arange(20) % 2


def _data(file: str, *extra: str) -> tuple[str, ...]:
    return ("--data", f"{{d}}/{file}", *extra, "--hidden", "8", "--epochs", "1", "--no-progress")


DATA_CASES: list[CliCase] = [
    CliCase("missing-file", _data("nope.csv"), r"file .*nope.csv does not exist"),
    CliCase(
        "and-a-dataset",
        _data("data.csv", "--dataset", "moons"),
        r"--dataset moons and --data .*data.csv: .*give one of them",
        _csv(_good_rows()),
    ),
    CliCase("a-directory", _data("run"), r"'--data'.*is a directory"),
    CliCase("empty-file", _data("data.csv"), r"the file is empty", _csv("")),
    CliCase("blank-lines-only", _data("data.csv"), r"the file is empty", _csv("\n \n\n")),
    CliCase(
        "not-csv-binary",
        _data("data.csv"),
        r"not a CSV file",
        _bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "data.csv"),
    ),
    CliCase(
        "not-csv-latin1", _data("data.csv"), r"not a CSV file", _bytes(b"a,b\n\xe9,1\n", "data.csv")
    ),
    CliCase("header-only", _data("data.csv"), r"header but no data rows", _csv("a,b,label\n")),
    CliCase(
        "no-header", _data("data.csv"), r"looks like data; add a header", _csv("1,2,0\n3,4,1\n")
    ),
    CliCase("one-column", _data("data.csv"), r"header has 1 column", _csv("label\n1\n0\n")),
    CliCase(
        "non-numeric-cell",
        _data("data.csv"),
        r"column 'a' is not numeric \(e.g. 'seven' at line 3\)",
        _csv("a,b,label\n1,2,0\nseven,2,1\n" + _good_rows()[10:]),
    ),
    CliCase(
        "missing-cell-empty",
        _data("data.csv"),
        r"missing value in column 'b' at line 3",
        _csv("a,b,label\n1,2,0\n3,,1\n4,5,0\n"),
    ),
    CliCase(
        "missing-cell-NA",
        _data("data.csv"),
        r"missing value in column 'a'",
        _csv("a,b,label\n1,2,0\nNA,4,1\n4,5,0\n"),
    ),
    CliCase(
        "nan-cell",
        _data("data.csv"),
        r"column 'b' has a non-finite value \(nan\) at line 3",
        _csv("a,b,label\n1,2,0\n3,nan,1\n4,5,0\n"),
    ),
    CliCase(
        "inf-cell",
        _data("data.csv"),
        r"column 'a' has a non-finite value \(inf\)",
        _csv("a,b,label\n1,2,0\ninf,4,1\n4,5,0\n"),
    ),
    CliCase(
        "ragged-row",
        _data("data.csv"),
        r"line 3 has 2 fields but the header has 3",
        _csv("a,b,label\n1,2,0\n3,1\n4,5,0\n"),
    ),
    CliCase(
        "single-class",
        _data("data.csv"),
        r"single class.*at least 2 classes",
        _csv("a,b,label\n" + "".join(f"{i},{i},cat\n" for i in range(20))),
    ),
    CliCase(
        "too-few-rows",
        _data("data.csv"),
        r"too few rows to split",
        _csv("a,b,label\n1,2,0\n3,4,1\n"),
    ),
    CliCase(
        "target-column-unknown",
        _data("data.csv", "--target", "price"),
        r"no target column 'price'; the columns are: a, b, label",
        _csv(_good_rows()),
    ),
    CliCase(
        "unsupported-extension",
        _data("data.txt"),
        r"unsupported file type '.txt'",
        _csv(_good_rows(), "data.txt"),
    ),
    CliCase(
        "npz-not-a-zip",
        _data("data.npz"),
        r"not a valid .npz file",
        _bytes(b"a,b\n1,2\n", "data.npz"),
    ),
    CliCase(
        "npz-length-mismatch",
        _data("data.npz"),
        r"x has 20 rows but y has 19; they must match",
        _npz(x=_X, y=_Y[:19]),
    ),
    CliCase("npz-no-y", _data("data.npz"), r"no array 'y'", _npz(x=_X)),
    CliCase("npz-1d-features", _data("data.npz"), r"features must be 2-D", _npz(x=_X[:, 0], y=_Y)),
    CliCase(
        "npz-nan-feature",
        _data("data.npz"),
        r"x has a non-finite value \(nan\) at row 3",
        _npz(x=np.where(np.arange(40).reshape(20, 2) == 6, NAN, _X), y=_Y),
    ),
    CliCase(
        "npz-inf-target",
        _data("data.npz"),
        r"y has a non-finite value \(inf\)",
        _npz(x=_X, y=np.where(np.arange(20) == 4, INF, np.linspace(0, 1, 20))),
    ),
    CliCase(
        "npz-label-out-of-range",
        _data("data.npz"),
        r"negative label -1 at row 5",
        _npz(x=_X, y=np.where(np.arange(20) == 5, -1, _Y)),
    ),
    CliCase(
        "npz-single-class", _data("data.npz"), r"single class", _npz(x=_X, y=np.zeros(20, int))
    ),
    CliCase(
        "npz-object-array",
        _data("data.npz"),
        r"holds object arrays, which need pickle and are refused",
        _npz(x=_X, y=np.array([{"a": 1}] * 20, dtype=object)),
    ),
    CliCase(
        "npz-text-features",
        _data("data.npz"),
        r"x has dtype <U1; features must be numeric",
        _npz(x=np.full((20, 2), "a"), y=_Y),
    ),
    CliCase(
        "pt-code-in-pickle",
        _data("evil.pt"),
        r"refuses to unpickle",
        _pt_evil,
    ),
    CliCase(
        "pt-not-a-dict",
        _data("data.pt"),
        r"holds a Tensor, not a dict",
        _pt(lambda d: torch.zeros(3)),
    ),
    CliCase(
        "pt-garbage",
        _data("data.pt"),
        r"not a valid .pt file",
        _bytes(b"PK\x03\x04garbage" * 10, "data.pt"),
    ),
]


def _toml(text: str) -> Callable[[Path], None]:
    return _csv(text, "config.toml")


def _config(*extra: str) -> tuple[str, ...]:
    return ("--config", "{d}/config.toml", "--no-progress", *extra)


CONFIG_CASES: list[CliCase] = [
    CliCase("missing-file", _config(), r"config file .*config.toml does not exist"),
    CliCase("a-directory", ("--config", "{d}/run"), r"'--config'.*is a directory"),
    CliCase("not-toml", _config(), r"is not valid TOML", _toml("epochs: 3\n")),
    CliCase("binary", _config(), r"is not valid TOML", _bytes(b"\xff\xfe\x00", "config.toml")),
    CliCase(
        "unknown-key",
        _config(),
        r"unknown setting\(s\) learning_rate; allowed: .*lr",
        _toml("learning_rate = 0.1\n"),
    ),
    CliCase(
        "lr-text",
        _config(),
        r"lr must be of type float; received lr='fast'",
        _toml('lr = "fast"\n'),
    ),
    CliCase("epochs-float", _config(), r"epochs must be of type int", _toml("epochs = 1.5\n")),
    CliCase("hidden-not-list", _config(), r"hidden must be a list", _toml("hidden = 32\n")),
    CliCase(
        "hidden-text-items", _config(), r"hidden must be an integer", _toml('hidden = ["a"]\n')
    ),
    CliCase(
        "nan-policy-number", _config(), r"nan_policy must be of type str", _toml("nan_policy = 1\n")
    ),
    CliCase("plateau-text", _config(), r"plateau must be of type bool", _toml('plateau = "yes"\n')),
    CliCase("extra-not-table", _config(), r"extra must be of type dict", _toml('extra = "x"\n')),
    CliCase("lr-negative", _config(), r"lr must be >= 0", _toml("lr = -1.0\n")),
    CliCase(
        "optimizer-unknown",
        _config(),
        r"optimizer must be one of 'sgd'",
        _toml('optimizer = "adamq"\n'),
    ),
    CliCase("betas-one-number", _config(), r"betas must be a pair", _toml("betas = [0.9]\n")),
]


def _file_at(name: str, text: str = "notes\n") -> Callable[[Path], None]:
    return _csv(text, name)


OUTPUT_CASES: list[CliCase] = [
    CliCase(
        "under-a-regular-file",
        (*SMALL, "--out", "{d}/notes.txt/run"),
        r"output folder .*notes.txt/run is not writable \(Not a directory\)",
        _file_at("notes.txt"),
    ),
    CliCase(
        "is-a-regular-file",
        (*SMALL, "--out", "{d}/notes.txt"),
        r"'--out'.*is a file",
        _file_at("notes.txt"),
    ),
    CliCase("in-proc", (*SMALL, "--out", "/proc/gradwise-run"), r"/proc/gradwise-run is not writ"),
    CliCase("in-sys", (*SMALL, "--out", "/sys/gradwise-run"), r"/sys/gradwise-run is not writable"),
    CliCase(
        "holds-a-run",
        (*SMALL, "--out", "{d}/run"),
        r"already holds a run \(checkpoint.pt.*\); continue it with --resume",
    ),
    CliCase(
        "holds-another-config",
        (*SMALL, "--out", "{d}/other"),
        r"already holds a run \(the config.toml of another run\)",
        lambda d: (d / "other").mkdir() or (d / "other" / "config.toml").write_text("seed = 3\n"),
    ),
    CliCase(
        "holds-run-files",
        (*SMALL, "--out", "{d}/other"),
        r"already holds a run \(metrics.csv\)",
        lambda d: (d / "other").mkdir() or (d / "other" / "metrics.csv").write_text("epoch\n"),
    ),
]


def _corrupt(name: str, how: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def write(d: Path) -> None:
        path = d / "run" / name
        path.write_bytes(how(path.read_bytes()))

    return write


def _both_corrupt(d: Path) -> None:
    _corrupt(ckpt.CURRENT, lambda b: b[: len(b) // 2])(d)
    _corrupt(ckpt.PREVIOUS, lambda b: b[:-1] + bytes([b[-1] ^ 1]))(d)


def _other_model(d: Path) -> None:
    path = d / "run" / "config.toml"
    path.write_text(path.read_text().replace("hidden = [\n    8,\n]", "hidden = [\n    16,\n]"))
    assert "16" in path.read_text()


def _planted(version: int = 1) -> Callable[[Path], None]:
    def write(d: Path) -> None:
        (d / "run" / ckpt.PREVIOUS).unlink()
        write_checkpoint_bytes(d / "run" / ckpt.CURRENT, evil_pickle(d / "pwned"), version)

    return write


def _future_version(d: Path) -> None:
    path = d / "run" / ckpt.CURRENT
    stamp_at = path.read_bytes().rfind(ckpt.MAGIC)
    body = path.read_bytes()[: stamp_at - 2] + b"\0\0"  # the payload, its comment removed
    (d / "run" / ckpt.PREVIOUS).unlink()
    path.write_bytes(ckpt.stamped(body, version=3))


RESUME_CASES: list[CliCase] = [
    CliCase("no-such-folder", ("--resume", "{d}/nope"), r"cannot resume: .*nope is not a folder"),
    CliCase(
        "empty-folder",
        ("--resume", "{d}/empty"),
        r"cannot resume: .*empty has no config.toml",
        lambda d: (d / "empty").mkdir(),
    ),
    CliCase(
        "a-regular-file",
        ("--resume", "{d}/notes.txt"),
        r"'--resume'.*is a file",
        _file_at("notes.txt"),
    ),
    CliCase(
        "with-options",
        ("--resume", "{d}/run", "--lr", "0.5"),
        r"--resume takes the run's saved configuration; drop --lr",
    ),
    CliCase(
        "both-checkpoints-corrupted",
        ("--resume", "{d}/run"),
        r"cannot resume from .*run: .*corrupted or truncated.*corrupted or truncated",
        _both_corrupt,
    ),
    CliCase(
        "different-model",
        ("--resume", "{d}/run"),
        r"written for a different model and cannot be resumed",
        _other_model,
    ),
    CliCase(
        "code-in-checkpoint", ("--resume", "{d}/run"), r"not plain data and was refused", _planted()
    ),
    CliCase(
        "future-format-version",
        ("--resume", "{d}/run"),
        r"has checkpoint format version 3; this gradwise reads versions 1 to 2",
        _future_version,
    ),
    CliCase(
        "config-damaged",
        ("--resume", "{d}/run"),
        r"config.toml is not valid TOML",
        lambda d: (d / "run" / "config.toml").write_text("hidden = [\n"),
    ),
]


def _sparse(name: str, size: int) -> Callable[[Path], None]:
    def write(d: Path) -> None:
        with open(d / name, "wb") as f:
            f.write(b"a,b,label\n1,2,0\n")
            f.truncate(size)  # a sparse file: takes no disk space

    return write


def _npz_claiming(shape: tuple[int, ...]) -> Callable[[Path], None]:
    """An .npz whose x.npy header claims ``shape`` (the data itself is not there)."""

    def write(d: Path) -> None:
        with zipfile.ZipFile(d / "huge.npz", "w") as z:
            for key, shp in (("x", shape), ("y", shape[:1])):
                buf = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    buf, {"descr": "<f8", "fortran_order": False, "shape": shp}
                )
                z.writestr(f"{key}.npy", buf.getvalue())

    return write


RESOURCE_CASES: list[CliCase] = [
    CliCase(
        "csv-larger-than-memory",
        _data("huge.csv"),
        r"huge.csv: too large to load: it needs about .* GiB of memory and .* is available",
        _sparse("huge.csv", 1 << 40),
    ),
    CliCase(
        "npz-larger-than-memory",
        _data("huge.npz"),
        r"huge.npz: too large to load",
        _npz_claiming((10**9, 10**3)),
    ),
    CliCase(
        "batch-larger-than-set",
        (*SMALL, "--batch-size", "100000"),
        r"batch_size must be at most the training set's size \(720 rows\) or 'full'",
    ),
    CliCase(
        "model-larger-than-memory",
        ("--hidden", "100000000,100000000", "--no-progress"),
        r"the model is too large for this machine: .* parameters",
    ),
]

CLI_TABLES: dict[str, list[CliCase]] = {
    "CLI options": CLI_CASES,
    "data files": DATA_CASES,
    "config files": CONFIG_CASES,
    "output folders": OUTPUT_CASES,
    "resuming": RESUME_CASES,
    "resource bounds": RESOURCE_CASES,
}


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory) -> Path:
    """A finished small run (2 epochs), the folder every bad-input case must leave alone."""
    out = tmp_path_factory.mktemp("earlier") / "run"
    config = TrainConfig(dataset="moons", hidden=(8,), epochs=2)
    run_module.run(config, out, progress=False, plots=False)
    return out


@pytest.fixture
def sandbox(tmp_path, monkeypatch, earlier_run) -> Path:
    shutil.copytree(earlier_run, tmp_path / "run")
    (tmp_path / "keep.csv").write_text(_good_rows())
    monkeypatch.chdir(tmp_path)  # so that a default runs/<name> folder would show up too
    return tmp_path


@pytest.mark.parametrize(
    "case",
    [c for cases in CLI_TABLES.values() for c in cases],
    ids=[f"{table}:{c.id}" for table, cases in CLI_TABLES.items() for c in cases],
)
def test_bad_input_gets_one_line_and_exit_code_2_and_damages_nothing(case: CliCase, sandbox):
    if case.id == "device-cuda-absent" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if case.setup is not None:
        case.setup(sandbox)
    before = tree(sandbox)
    result = invoke([a.replace("{d}", str(sandbox)) for a in case.args])
    assert result.exit_code == 2, (result.output, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert_one_line_error(result.stderr, case.match)
    assert result.stdout == ""
    assert tree(sandbox) == before  # nothing changed, added or removed
    assert not (sandbox / "pwned").exists()


@pytest.mark.slow
def test_bad_input_in_a_real_process_prints_no_traceback(tmp_path):
    """The same one-line errors from a real `gradwise train` process (not CliRunner)."""
    (tmp_path / "data.csv").write_text("a,b,label\n1,nan,0\n3,4,1\n")
    for args, match in (
        (["--epochs", "ten"], r"'--epochs'"),
        (["--data", str(tmp_path / "data.csv")], r"non-finite value"),
        (["--out", "/proc/gradwise-run", "--epochs", "1"], r"not writable"),
    ):
        proc = gradwise_train(args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert_one_line_error(proc.stderr, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]


@settings(
    max_examples=PROPERTY_EXAMPLES["CLI option values"],
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    option=st.sampled_from(
        [
            "--epochs",
            "--lr",
            "--batch-size",
            "--hidden",
            "--dropout",
            "--momentum",
            "--betas",
            "--eps",
            "--weight-decay",
            "--l1",
            "--l2",
            "--seed",
            "--plateau-factor",
            "--plateau-patience",
            "--early-stop",
            "--schedule",
            "--device",
            "--activation",
            "--dataset",
        ]
    ),
    value=st.one_of(
        st.integers(-(10**30), 10**30).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=12),
        st.lists(st.integers(-3, 300), min_size=1, max_size=3).map(lambda v: ",".join(map(str, v))),
    ),
)
def test_property_any_option_value_is_accepted_or_refused_in_one_line(option, value, tmp_path):
    """Whatever the value, `gradwise train --OPTION=VALUE` either gets to training with a valid,
    buildable configuration, or stops with exit code 2 and one line naming the option."""

    class Reached(Exception):
        pass

    def fake_run(config, out, **kwargs):  # what run() checks before it loads data
        config = config.resolved()
        run_module.resolve_device(config.device)
        opt = run_module.build_optimizer(config, nn.Linear(2, 2))
        run_module.build_scheduler(config, opt, 10)
        raise Reached

    with mock.patch.object(run_module, "run", fake_run):
        result = invoke([f"{option}={value}", "--out", str(tmp_path / "out")])
    if isinstance(result.exception, Reached):
        event("accepted")
        return
    event("refused")
    assert result.exit_code == 2, (option, value, result.exception)
    line = assert_one_line_error(result.stderr)
    name = option[2:]
    assert name in line or name.replace("-", "_") in line, (option, value, line)
    assert not (tmp_path / "out").exists()


# =============================================================================================
# integrity: corrupted checkpoints are detected, reported in one line, and skipped
# =============================================================================================


def _flip(i: int) -> Callable[[bytes], bytes]:
    return lambda b: b[:i] + bytes([b[i] ^ 0x10]) + b[i + 1 :]


def _stamp_at(b: bytes) -> int:
    """Where a checkpoint's stamp (its zip comment, the file's last bytes) starts."""
    return b.rfind(ckpt.MAGIC)


#: (name, damage to a checkpoint file's bytes, error message)
CORRUPTIONS: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("empty file", lambda b: b"", r"not a gradwise checkpoint"),
    ("only the stamp left", lambda b: b[_stamp_at(b) :], r"not a gradwise checkpoint"),
    ("truncated to half", lambda b: b[: len(b) // 2], r"corrupted or truncated"),
    ("last byte missing", lambda b: b[:-1], r"corrupted or truncated"),
    ("bytes appended", lambda b: b + b"\x00" * 7, r"corrupted or truncated"),
    ("bit flipped in the payload", lambda b: _flip(len(b) // 2)(b), r"corrupted or truncated"),
    ("bit flipped in the last byte", lambda b: _flip(len(b) - 1)(b), r"corrupted or truncated"),
    ("bit flipped in the checksum", lambda b: _flip(len(b) - 5)(b), r"corrupted"),
    ("magic changed", lambda b: _flip(_stamp_at(b))(b), r"corrupted or truncated"),
    ("stamp removed", lambda b: b[: _stamp_at(b)], r"corrupted or truncated"),
    ("comment length changed", lambda b: _flip(_stamp_at(b) - 2)(b), r"corrupted or truncated"),
    ("format version 3", lambda b: b.replace(b" 2 sha256", b" 3 sha256", 1), r"version 3"),
    ("random bytes", lambda b: bytes(random.Random(0).randrange(256) for _ in range(4096)), r"."),
    ("text file", lambda b: b"model = 'fine'\n", r"not a gradwise checkpoint"),
]
#: checkpoints with a valid header and checksum whose payload is refused
PLANTED: list[tuple[str, Callable[[Path], bytes], str]] = [
    (
        "pickle that runs code",
        lambda d: evil_pickle(d / "pwned"),
        r"not plain data and was refused \(Trying to load unsupported GLOBAL posix.system",
    ),
    ("plain pickle, not torch.save", lambda d: pickle.dumps({"a": 1}), r"was refused"),
    ("not a dict", lambda d: _saved([1, 2, 3]), r"holds a list"),
    ("garbage payload", lambda d: b"\x00" * 100, r"was refused \(Unsupported operand 0\)"),
    ("zip that is not torch.save's", lambda d: _zip_bytes(), r"torch cannot read"),
]


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hello")
    return buf.getvalue()


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_torch_load_reads_a_checkpoint_as_it_is(tmp_path):
    """The stamp is the zip's comment: ``torch.load(weights_only=True)`` reads checkpoint.pt
    directly, to the payload gradwise's own loader gives."""
    ckpt.save({"n": 1, "w": torch.arange(10.0)}, tmp_path)
    plain = torch.load(tmp_path / ckpt.CURRENT, weights_only=True)
    checked = ckpt.load_file(tmp_path / ckpt.CURRENT)
    assert plain["n"] == checked["n"] == 1 and torch.equal(plain["w"], checked["w"])
    assert ckpt.is_checkpoint(tmp_path / ckpt.CURRENT)


def test_a_version_1_checkpoint_still_loads(tmp_path):
    body = io.BytesIO()
    torch.save({"n": 5}, body)
    write_checkpoint_bytes(tmp_path / ckpt.CURRENT, body.getvalue(), version=1)
    assert ckpt.load_file(tmp_path / ckpt.CURRENT) == {"n": 5}
    assert ckpt.is_checkpoint(tmp_path / ckpt.CURRENT)


@pytest.mark.parametrize(("name", "damage", "match"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupted_checkpoint_is_detected_and_resume_falls_back(tmp_path, name, damage, match):
    ckpt.save({"n": 1, "w": torch.arange(1000.0)}, tmp_path)
    ckpt.save({"n": 2, "w": torch.arange(1000.0) * 2}, tmp_path)
    current = tmp_path / ckpt.CURRENT
    current.write_bytes(damage(current.read_bytes()))
    with pytest.raises(CheckpointError, match=match) as info:
        ckpt.load_file(current)
    assert "\n" not in str(info.value)
    with pytest.warns(CheckpointWarning, match=r"checkpoint\.pt .*; using .*checkpoint\.prev\.pt"):
        payload, path, problems = ckpt.load_latest(tmp_path)
    assert payload["n"] == 1 and path.name == ckpt.PREVIOUS and len(problems) == 1
    prev = tmp_path / ckpt.PREVIOUS
    prev.write_bytes(damage(prev.read_bytes()))
    with pytest.raises(CheckpointError, match="cannot resume from"):
        ckpt.load_latest(tmp_path)


@pytest.mark.parametrize(("name", "body", "match"), PLANTED, ids=[c[0] for c in PLANTED])
def test_planted_checkpoint_payload_is_refused_and_runs_no_code(tmp_path, name, body, match):
    write_checkpoint_bytes(tmp_path / ckpt.CURRENT, body(tmp_path))
    with pytest.raises(CheckpointError, match=match):
        ckpt.load_file(tmp_path / ckpt.CURRENT)
    with pytest.raises(CheckpointError, match="cannot resume"):
        ckpt.load_latest(tmp_path)
    assert not (tmp_path / "pwned").exists()


@settings(max_examples=PROPERTY_EXAMPLES["checkpoint bytes"], deadline=None)
@given(data=st.data())
def test_property_any_truncation_or_byte_change_is_detected(data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ck")
    ckpt.save({"w": torch.arange(64.0), "step": 3}, folder)
    good = (folder / ckpt.CURRENT).read_bytes()
    if data.draw(st.booleans(), label="truncate"):
        bad = good[: data.draw(st.integers(0, len(good) - 1), label="length")]
    else:
        i = data.draw(st.integers(0, len(good) - 1), label="position")
        new = data.draw(st.integers(0, 255).filter(lambda v: v != good[i]), label="byte")
        bad = good[:i] + bytes([new]) + good[i + 1 :]
    (folder / ckpt.CURRENT).write_bytes(bad)
    with pytest.raises(CheckpointError):
        ckpt.load_file(folder / ckpt.CURRENT)


def blobs(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    y = torch.arange(n) % 3
    return centers[y] + 0.6 * torch.randn(n, 2, generator=g), y


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


def train_blobs(epochs, folder=None, resume=False, **kw):
    x, y = blobs()
    model = net()
    opt = go.Adam(model.parameters(), lr=0.01)
    fit(
        model,
        (x, y),
        optimizer=opt,
        epochs=epochs,
        batch_size=24,
        progress=False,
        seed=5,
        checkpoint_dir=folder,
        resume=resume,
        **kw,
    )
    return model, opt


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert_same_state(a[k], b[k])
        elif isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        elif isinstance(a[k], list):
            assert len(a[k]) == len(b[k])
            for u, v in zip(a[k], b[k]):
                assert_same_state({0: u}, {0: v})
        else:
            assert a[k] == b[k], k


def test_resume_after_the_newest_checkpoint_is_corrupted_is_still_bit_exact(tmp_path):
    reference, ref_opt = train_blobs(6)
    train_blobs(6, tmp_path)
    current = tmp_path / ckpt.CURRENT
    current.write_bytes(current.read_bytes()[:-100])  # the epoch-6 checkpoint is damaged
    with pytest.warns(CheckpointWarning, match="corrupted or truncated"):
        model, opt = train_blobs(6, tmp_path, resume=True)  # redoes epoch 6 from epoch 5
    assert_same_state(reference.state_dict(), model.state_dict())
    assert_same_state(ref_opt.state_dict(), opt.state_dict())
    assert ckpt.load_file(current)["epoch"] == 6


def test_the_cli_says_when_a_damaged_checkpoint_is_passed_over(tmp_path):
    """A damaged checkpoint.pt: export (and resume) use checkpoint.prev.pt, an epoch older, and
    say so on one line; a silent fallback would hand over older weights as the latest."""
    out = tmp_path / "run"
    args = ["--dataset", "moons", "--hidden", "8", "--epochs", "2", "--lr", "0.03", "--no-progress"]
    done = CliRunner().invoke(cli, ["train", *args, "--out", str(out)])
    assert done.exit_code == 0, done.output
    current = out / ckpt.CURRENT
    current.write_bytes(current.read_bytes()[:-100])
    done = CliRunner().invoke(cli, ["export", str(out), "--out", str(tmp_path / "model.pt")])
    assert done.exit_code == 0, done.output
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    assert line.startswith("gradwise: warning: ") and "checkpoint.pt is corrupted" in line
    assert "checkpoint.prev.pt" in line


# =============================================================================================
# crash safety inside one process: SIGINT held back during a write, stray temp files,
# Ctrl-C checkpoints the last finished epoch
# =============================================================================================


def test_sigint_during_a_checkpoint_write_lands_after_it(tmp_path, monkeypatch):
    ckpt.save({"n": 1}, tmp_path)
    real_fsync = os.fsync
    sent = []

    def fsync_and_interrupt(fd):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the write
        real_fsync(fd)

    monkeypatch.setattr(ckpt.os, "fsync", fsync_and_interrupt)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save({"n": 2}, tmp_path)
        time.sleep(1)  # the held-back SIGINT arrives when save() returns, not later
    assert sent
    assert ckpt.load_file(tmp_path / ckpt.CURRENT)["n"] == 2
    assert ckpt.load_file(tmp_path / ckpt.PREVIOUS)["n"] == 1
    assert not list(tmp_path.glob(ckpt.TMP_PREFIX + "*"))


def test_stray_temporary_files_are_never_read_and_are_cleaned(tmp_path):
    ckpt.save({"n": 1}, tmp_path)
    dead = tmp_path / f"{ckpt.TMP_PREFIX}999999999.{ckpt.CURRENT}"  # no such process
    dead.write_bytes(b"half a checkpoint")
    assert ckpt.load_latest(tmp_path)[0]["n"] == 1
    ckpt.save({"n": 2}, tmp_path)
    assert not dead.exists() and ckpt.load_latest(tmp_path)[0]["n"] == 2


def test_a_failed_write_leaves_the_checkpoints_as_they_were(tmp_path, monkeypatch):
    ckpt.save({"n": 1}, tmp_path)
    ckpt.save({"n": 2}, tmp_path)
    before = tree(tmp_path)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ckpt.save({"n": 3}, tmp_path)
    assert tree(tmp_path) == before


def test_checkpoint_pt_is_never_missing_during_a_save(tmp_path, monkeypatch):
    """Between writing the new file and renaming it, both names hold a complete checkpoint."""
    ckpt.save({"n": 1}, tmp_path)
    seen = []
    real_replace = os.replace

    def replace_and_look(src, dst):
        seen.append(sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")))
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace_and_look)
    ckpt.save({"n": 2}, tmp_path)
    assert all(ckpt.CURRENT in names for names in seen)


def test_ctrl_c_checkpoints_the_last_finished_epoch_and_resume_is_bit_exact(tmp_path):
    reference, ref_opt = train_blobs(7, checkpoint_every=3)
    x, y = blobs()
    calls = {"n": 0}

    def loss(out, target):
        calls["n"] += 1
        if calls["n"] == 4 * 10 + 5:  # epoch 5, batch 5: epochs 1-4 done, only 3 on disk
            raise KeyboardInterrupt
        return nn.functional.cross_entropy(out, target)

    with pytest.raises(KeyboardInterrupt):
        train_blobs(7, tmp_path, checkpoint_every=3, loss=loss)
    assert ckpt.load_file(tmp_path / ckpt.CURRENT)["epoch"] == 4
    model, opt = train_blobs(7, tmp_path, resume=True, checkpoint_every=3)
    assert_same_state(reference.state_dict(), model.state_dict())
    assert_same_state(ref_opt.state_dict(), opt.state_dict())


def test_cli_ctrl_c_before_any_checkpoint_says_how_to_resume(sandbox):
    def interrupted(config, out, **kwargs):
        Path(out).mkdir(parents=True)
        ckpt.atomic_write_text(Path(out) / "config.toml", config.resolved().to_toml())
        raise KeyboardInterrupt

    with mock.patch.object(run_module, "run", interrupted):
        result = invoke([*SMALL, "--out", "fresh"])
    assert result.exit_code == 130
    assert "No epoch had finished" in result.stderr
    assert "continue with: gradwise train --resume fresh" in result.stderr
    # ... and that command starts the run over from its saved configuration
    result = invoke(["--resume", "fresh", "--no-progress"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "has no checkpoint yet; starting the run over" in result.stderr
    assert ckpt.load_file(sandbox / "fresh" / ckpt.CURRENT)["epoch"] == 1


def test_cli_ctrl_c_before_the_run_started_says_nothing_was_written(sandbox):
    def interrupted(config, out, **kwargs):
        raise KeyboardInterrupt

    before = tree(sandbox)
    with mock.patch.object(run_module, "run", interrupted):
        result = invoke([*SMALL, "--out", "fresh"])
    assert result.exit_code == 130
    assert "interrupted before the run started; nothing was written" in result.stderr
    assert tree(sandbox) == before


# =============================================================================================
# numerical faults
# =============================================================================================


class PoisonGrad:
    """A gradient hook that turns the gradient of one parameter into ``value`` at call ``at``."""

    def __init__(self, param, at: int, value: float) -> None:
        self.calls, self.at, self.value = 0, at, value
        param.register_hook(self)

    def __call__(self, grad):
        self.calls += 1
        return torch.full_like(grad, self.value) if self.calls == self.at else grad


def _batches(poison: int | None = None):
    x, y = blobs(120)
    batches = [(x[i : i + 12].clone(), y[i : i + 12]) for i in range(0, 120, 12)]
    if poison is not None:
        batches[poison][0][3, 1] = NAN
    return batches


def _nan_loss_raise():
    with pytest.raises(Diverged, match=r"the loss is nan at step 4 \(epoch 1, batch 4\)") as e:
        fit(net(), _batches(poison=3), epochs=1, progress=False)
    assert e.value.step == 4 and e.value.where == "the loss"


def _inf_loss_raise():
    model = net()
    with pytest.raises(Diverged, match=r"the loss is inf at step 1"):
        fit(model, _batches(), epochs=1, progress=False, loss=lambda o, t: (o.sum() * 0 + 1) * INF)


def _nan_grad_raise():
    model = net()
    PoisonGrad(model[2].weight, at=6, value=NAN)
    with pytest.raises(Diverged, match=r"the gradient of 2.weight holds NaN or inf at step 6"):
        fit(model, _batches(), epochs=1, progress=False)


def _inf_grad_raise():
    model = net()
    PoisonGrad(model[0].bias, at=2, value=INF)
    with pytest.raises(Diverged, match=r"the gradient of 0.bias holds NaN or inf at step 2") as e:
        fit(model, _batches(), epochs=1, progress=False)
    assert e.value.where == "the gradient of 0.bias"


def _skip_equals_dropping_the_batch(poison_grad: bool):
    """nan_policy='skip' gives exactly the weights and optimizer state of a run without it."""
    model, reference = net(), net()
    opt, ref_opt = go.Adam(model.parameters(), lr=0.01), go.Adam(reference.parameters(), lr=0.01)
    if poison_grad:
        PoisonGrad(model[0].weight, at=5, value=NAN)
        batches = _batches()
    else:
        batches = _batches(poison=4)
    with pytest.warns(SkippedStepWarning, match=r"step skipped: .* at step 5 \(epoch 1, batch 5\)"):
        h = fit(model, batches, optimizer=opt, epochs=1, progress=False, nan_policy="skip")
    assert h.skipped_steps == 1 and len(h.steps) == 9
    fit(reference, _batches()[:4] + _batches()[5:], optimizer=ref_opt, epochs=1, progress=False)
    assert_same_state(reference.state_dict(), model.state_dict())
    assert_same_state(ref_opt.state_dict(), opt.state_dict())


def _overflowing_lr(policy: str):
    model = net()
    with pytest.raises(Diverged, match="training diverged"):
        fit(
            model,
            _batches(),
            optimizer=go.SGD(model.parameters(), lr=1e30),
            epochs=30,
            progress=False,
            nan_policy=policy,
        )


def _divergence_keeps_the_checkpoint(tmp_path: Path):
    model = net()
    fit(model, _batches(), epochs=2, progress=False, checkpoint_dir=tmp_path)
    before = tree(tmp_path)
    PoisonGrad(model[0].weight, at=3, value=NAN)
    with pytest.raises(Diverged):
        fit(model, _batches(), epochs=4, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert tree(tmp_path) == before


def _inf_weights_never_checkpointed(tmp_path: Path):
    model = net()
    model.register_parameter("unused", nn.Parameter(torch.zeros(2)))  # not in the loss
    fit(model, _batches(), epochs=1, progress=False, checkpoint_dir=tmp_path)
    before = tree(tmp_path)

    class Overflow(torch.optim.SGD):  # an update that overflows without any NaN loss or grad
        def step(self, closure=None):
            super().step(closure)
            with torch.no_grad():
                model.unused.fill_(INF)

    with pytest.raises(Diverged, match=r"parameter unused holds NaN or inf after step 10"):
        fit(
            model,
            _batches(),
            optimizer=Overflow(model.parameters(), lr=0.01),
            epochs=2,
            progress=False,
            checkpoint_dir=tmp_path,
            nan_policy="skip",
        )
    assert tree(tmp_path) == before


#: (name, check) — each injects NaN / inf somewhere and checks the outcome
NAN_CASES: list[tuple[str, Callable]] = [
    ("NaN loss, raise: names the step", lambda tmp: _nan_loss_raise()),
    ("inf loss, raise: names the step", lambda tmp: _inf_loss_raise()),
    ("NaN gradient, raise: names step and parameter", lambda tmp: _nan_grad_raise()),
    ("inf gradient, raise: names step and parameter", lambda tmp: _inf_grad_raise()),
    ("NaN loss, skip: warned, counted, state clean", lambda t: _skip_equals_dropping_the_batch(0)),
    (
        "NaN gradient, skip: warned, counted, state clean",
        lambda t: _skip_equals_dropping_the_batch(1),
    ),
    ("overflowing lr, raise: Diverged", lambda tmp: _overflowing_lr("raise")),
    ("overflowing lr, skip: Diverged after a run of skips", lambda tmp: _overflowing_lr("skip")),
    ("divergence leaves the last checkpoint unchanged", _divergence_keeps_the_checkpoint),
    ("inf weights are never checkpointed", _inf_weights_never_checkpointed),
]


@pytest.mark.filterwarnings("ignore::gradwise.train.faults.SkippedStepWarning")
@pytest.mark.parametrize(("name", "check"), NAN_CASES, ids=[c[0] for c in NAN_CASES])
def test_numerical_faults(name, check, tmp_path):
    check(tmp_path)


CLI_DIVERGENCE = [
    # (args, error line, whether a checkpoint is kept)
    (
        ("--optimizer", "sgd", "--lr", "3", "--schedule", "warmup:150", "--hidden", "32"),
        r"training diverged: the training loss grew from .* in epoch 3 \(over 10x\).*"
        r"The last good checkpoint \(epoch 2\) is kept in",
        True,
    ),
    (
        ("--optimizer", "sgd", "--lr", "1e12", "--hidden", "32", "--epochs", "3"),
        r"training diverged: the loss is nan at step \d .*No checkpoint was written",
        False,
    ),
    (
        ("--optimizer", "sgd", "--lr", "1e12", "--hidden", "32", "--nan-policy", "skip"),
        r"training diverged: the training loss grew from .* in epoch 1 .*No checkpoint was written",
        False,
    ),
]


@pytest.mark.parametrize(
    ("args", "match", "kept"), CLI_DIVERGENCE, ids=["growth-later", "nan", "skip-growth"]
)
def test_cli_divergence_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, args, match, kept):
    out = tmp_path / "run"
    with mock.patch.object(ckpt, "save", wraps=ckpt.save) as save:
        result = invoke([*args, "--epochs", "8", "--no-progress", "--out", str(out)])
    assert result.exit_code == 2, (result.stderr, result.exception)
    assert_one_line_error(result.stderr, match)
    assert save.called == kept
    if kept:
        payload, path, problems = ckpt.load_latest(out)
        assert path.name == ckpt.CURRENT and not problems
        assert all(torch.isfinite(t).all() for t in payload["model"].values())
    if "skip" in args:
        assert "gradwise: warning: step skipped:" in result.stderr
    if not kept:  # the folder holds nothing to continue: a run with a sane rate may take it over
        again = invoke(["--optimizer", "sgd", "--hidden", "32", "--epochs", "1", "--out", str(out)])
        assert again.exit_code == 0, again.stderr
        assert "lr = 0.1" in (out / "config.toml").read_text()


class _NanFromEpoch2:
    """Twelve batches an epoch; from the second epoch on their inputs are NaN."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x, self.y = (
            torch.randn(96, 4, generator=gen),
            torch.randint(0, 2, (96,), generator=gen),
        )
        self.epochs = 0

    def __len__(self):
        return 12

    def __iter__(self):
        self.epochs += 1
        for i in range(12):
            x = self.x[8 * i : 8 * (i + 1)]
            yield (x * float("nan") if self.epochs > 1 else x), self.y[8 * i : 8 * (i + 1)]


def test_skip_gives_up_after_an_epoch_of_skipped_steps_and_keeps_the_last_good_checkpoint(
    tmp_path,
):
    from gradwise.train import fit

    model = torch.nn.Linear(4, 2)
    with pytest.warns(SkippedStepWarning), pytest.raises(Diverged, match=r"12 steps in a row"):
        fit(model, _NanFromEpoch2(), epochs=3, nan_policy="skip", checkpoint_dir=tmp_path,
            progress=False)  # fmt: skip
    payload, _, _ = ckpt.load_latest(tmp_path)
    assert payload["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in payload["model"].values())


# =============================================================================================
# crash safety across processes: SIGKILL at random moments and inside checkpoint writes,
# SIGINT while the progress bar runs; every resume ends with the uninterrupted run's weights
# =============================================================================================

EPOCHS = 20
RUN_ARGS = ("--dataset", "digits", "--hidden", "32", "--epochs", str(EPOCHS), "--batch-size", "16")
KILL_SEED = 20240607
#: the kills of one run, in order: ("startup", _) kills at a random moment of start-up;
#: ("training", _) at a random moment after the process wrote its first checkpoint;
#: ("checkpoint", POINT:N) inside its N-th checkpoint write (see gradwise.train.checkpoint)
KILL_PLAN: list[tuple[str, str | None]] = [
    ("startup", None),
    ("checkpoint", "mid_tmp_write:3"),
    ("training", None),
    ("checkpoint", "after_tmp_write:2"),
    ("training", None),
    ("checkpoint", "after_prev_link:2"),
    ("training", None),
    ("startup", None),
]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWISE_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="100", **extra)
    return env


def gradwise_train(args, cwd=None, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradwise", "train", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        **popen,
    )


def final_state(folder: Path) -> dict:
    payload = ckpt.load_file(folder / ckpt.CURRENT)
    return {"model": payload["model"], "optimizer": payload["optimizer"], "epoch": payload["epoch"]}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = gradwise_train([*RUN_ARGS, "--no-progress", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    return final_state(out)


def _signature(path: Path):
    try:
        st_ = path.stat()
    except FileNotFoundError:
        return None
    return (st_.st_ino, st_.st_mtime_ns, st_.st_size)


@pytest.mark.slow
def test_sigkill_at_random_moments_and_inside_checkpoint_writes_then_resume_is_bit_exact(
    tmp_path, reference_run
):
    rng = random.Random(KILL_SEED)
    out = tmp_path / "run"
    outcomes = []
    for kind, point in KILL_PLAN:
        if ckpt.exists(out) and ckpt.load_file(out / ckpt.CURRENT)["epoch"] == EPOCHS:
            break  # a machine fast enough to finish between kills: the rest has nothing to kill
        fresh = not (out / "config.toml").exists()
        args = [*RUN_ARGS, "--out", str(out)] if fresh else ["--resume", str(out)]
        env = _env(GRADWISE_TEST_CRASH_IN_CHECKPOINT=point) if point else _env()
        before = _signature(out / ckpt.CURRENT)
        proc = subprocess.Popen(
            [sys.executable, "-m", "gradwise", "train", *args, "--no-progress"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if kind == "startup":
            time.sleep(rng.uniform(0.0, 1.0))
        elif kind == "training":
            deadline = time.monotonic() + 120
            while _signature(out / ckpt.CURRENT) == before and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.1))  # about 0 to 2 epochs later
        if kind != "checkpoint":
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=120)
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
        assert rc in (0, -signal.SIGKILL), stderr
        assert "Traceback" not in stderr
        if kind == "checkpoint":
            assert rc == -signal.SIGKILL and list(out.glob(ckpt.TMP_PREFIX + "*")), point
        # the last good checkpoint is on disk, under its own name (no fallback needed)
        epoch = ckpt.load_file(out / ckpt.CURRENT)["epoch"] if ckpt.exists(out) else 0
        outcomes.append((kind, point, rc, epoch))
    done = gradwise_train(["--resume", str(out), "--no-progress"])
    assert done.returncode == 0, done.stderr
    assert_same_state(reference_run, final_state(out))
    assert not list(out.glob(ckpt.TMP_PREFIX + "*"))  # stray temp files were cleaned
    killed = [o for o in outcomes if o[2] == -signal.SIGKILL]
    assert len(killed) >= len(KILL_PLAN) - 2, outcomes  # a late kill may find the run finished
    print("kills:", outcomes)


def _read_all(fd: int, sink: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return
        if not chunk:
            return
        sink.append(chunk)


@pytest.mark.slow
def test_sigint_with_the_progress_bar_stops_cleanly_and_resume_is_bit_exact(
    tmp_path, reference_run
):
    import pty

    out = tmp_path / "run"
    master, slave = pty.openpty()  # stderr is a terminal: the progress bar is on
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradwise", "train", *RUN_ARGS, "--out", str(out)],
        env=_env(TERM="xterm"),
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(master, chunks), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not (out / ckpt.CURRENT).exists():
        assert proc.poll() is None, b"".join(chunks).decode(errors="replace")
        assert time.monotonic() < deadline
        time.sleep(0.002)
    time.sleep(random.Random(KILL_SEED).uniform(0.05, 0.3))
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    rc = proc.wait(timeout=60)
    reader.join(timeout=5)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert rc == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert f"interrupted. The last checkpoint (end of the last finished epoch) is in {out}" in text
    assert f"continue with: gradwise train --resume {out}" in text
    epoch = ckpt.load_file(out / ckpt.CURRENT)["epoch"]
    assert 1 <= epoch < EPOCHS
    assert not list(out.glob(ckpt.TMP_PREFIX + "*"))
    done = gradwise_train(["--resume", str(out), "--no-progress"])
    assert done.returncode == 0, done.stderr
    assert_same_state(reference_run, final_state(out))


@pytest.mark.slow
def test_sigterm_keeps_the_last_epoch_and_resume_is_bit_exact(tmp_path, reference_run):
    """kill / timeout / a job scheduler: SIGTERM stops the run as Ctrl-C does, exit 143."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradwise", "train", *RUN_ARGS, "--out", str(out), "--no-progress"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (out / ckpt.CURRENT).exists():
        assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
        assert time.monotonic() < deadline
        time.sleep(0.002)
    time.sleep(random.Random(KILL_SEED + 1).uniform(0.05, 0.3))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    text = err.decode(errors="replace")
    assert proc.returncode == 143, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert "terminated (SIGTERM). The last checkpoint (end of the last finished epoch)" in text
    assert f"continue with: gradwise train --resume {out}" in text
    assert 1 <= ckpt.load_file(out / ckpt.CURRENT)["epoch"] < EPOCHS
    assert not list(out.glob(ckpt.TMP_PREFIX + "*"))
    done = gradwise_train(["--resume", str(out), "--no-progress"])
    assert done.returncode == 0, done.stderr
    assert_same_state(reference_run, final_state(out))


# =============================================================================================
# the numbers in docs/reliability.md
# =============================================================================================


def counts_table() -> str:
    """The bad-input and fault counts as the Markdown table of docs/reliability.md."""
    rows = [
        ("optimizer arguments", len(OPTIMIZER_CASES)),
        ("schedule arguments", len(SCHEDULE_CASES)),
        ("init arguments", len(INIT_CASES)),
        *((name, len(cases)) for name, cases in CLI_TABLES.items()),
    ]
    lines = ["| bad input: category | table cases |", "|---|---:|"]
    lines += [f"| {name} | {n} |" for name, n in rows]
    lines.append(f"| **total** | **{sum(n for _, n in rows)}** |")
    lines += ["", "| property test (hypothesis) | examples per run |", "|---|---:|"]
    lines += [f"| {name} | {n} |" for name, n in PROPERTY_EXAMPLES.items()]
    kills = {kind: sum(k == kind for k, _ in KILL_PLAN) for kind in ("startup", "training")}
    points = [p.split(":")[0] for k, p in KILL_PLAN if k == "checkpoint"]
    lines += [
        "",
        "| fault injected | count |",
        "|---|---:|",
        f"| SIGKILL at a random moment of start-up | {kills['startup']} |",
        f"| SIGKILL at a random moment of training | {kills['training']} |",
        f"| SIGKILL inside a checkpoint write ({', '.join(points)}) | {len(points)} |",
        "| SIGINT (Ctrl-C) with the progress bar on | 1 |",
        "| SIGTERM during training (kill, timeout, a job scheduler) | 1 |",
        "| SIGINT inside a checkpoint write (in-process) | 1 |",
        "| checkpoint write failing with a full disk (in-process) | 1 |",
        "| KeyboardInterrupt mid-epoch with an unsaved finished epoch (in-process) | 1 |",
        f"| checkpoint corruptions (damaged bytes) | {len(CORRUPTIONS)} |",
        f"| planted checkpoint payloads (valid checksum) | {len(PLANTED)} |",
        f"| NaN / inf injections (library) | {len(NAN_CASES)} |",
        f"| divergences from the command line | {len(CLI_DIVERGENCE)} |",
    ]
    return "\n".join(lines)


def test_docs_report_the_current_counts():
    text = DOC.read_text()
    start, end = "<!-- counts: start -->\n", "\n<!-- counts: end -->"
    assert start in text and end in text
    assert text.split(start)[1].split(end)[0].strip() == counts_table(), (
        "docs/reliability.md is out of date: run python tests/test_reliability.py and paste"
    )


if __name__ == "__main__":
    print(counts_table())


@pytest.mark.parametrize(
    ("how", "optimizer", "option"),
    [
        ("flag", "sgd", "momentum"),
        ("flag", "adagrad", "betas"),
        ("flag", "sgd", "eps"),
        ("toml", "rmsprop", "betas"),
        ("toml", "adam", "momentum"),
        ("resume", "sgd", "momentum"),
    ],
)
def test_an_option_the_optimizer_ignores_is_refused_from_flags_toml_and_resume(
    tmp_path, how, optimizer, option
):
    """The same one-line refusal (exit 2, nothing trained) whether the ignored option comes as a
    flag, as a key of a --config file, or from the config.toml of a run being resumed."""
    flag = {"momentum": "0.9", "betas": "0.8,0.99", "eps": "1e-6"}[option]
    toml = {"momentum": "0.9", "betas": "[0.8, 0.99]", "eps": "1e-6"}[option]
    out = tmp_path / "run"
    if how == "flag":
        args = ["--optimizer", optimizer, f"--{option}", flag, "--out", str(out)]
    elif how == "toml":
        config = tmp_path / "c.toml"
        config.write_text(f'optimizer = "{optimizer}"\n{option} = {toml}\nepochs = 1\n')
        args = ["--config", str(config), "--out", str(out)]
    else:
        done = invoke(["--optimizer", optimizer, "--epochs", "1", "--out", str(out)])
        assert done.exit_code == 0, done.output
        saved = out / "config.toml"  # edited by hand: the resumed run must not train with it
        saved.write_text(saved.read_text().replace("momentum = 0.0", f"momentum = {toml}"))
        args = ["--resume", str(out)]
    refused(args, rf"{option}=.* has no effect with optimizer='{optimizer}'", out, how)


@pytest.mark.parametrize(
    ("how", "model", "option"),
    [("flag", "mlp", "channels"), ("toml", "cnn1d", "hidden"), ("resume", "mlp", "channels")],
)
def test_a_setting_the_model_ignores_is_refused_from_flags_toml_and_resume(
    tmp_path, how, model, option
):
    """An MLP has no channels and a 1-D CNN no hidden widths: given one (other than the default
    an earlier release wrote into every config.toml), the run is refused in one line (exit 2)
    as a flag, a --config key or a resumed run's config.toml. A run's config.toml names only
    its own model's widths."""
    out = tmp_path / "run"
    dataset = ["--dataset", "mnist1d"] if model == "cnn1d" else []
    if how == "flag":
        args = [*dataset, "--model", model, f"--{option}", "8,8", "--out", str(out)]
    elif how == "toml":
        config = tmp_path / "c.toml"
        config.write_text(f'dataset = "mnist1d"\nmodel = "{model}"\n{option} = [8, 8]\n')
        args = ["--config", str(config), "--out", str(out)]
    else:
        done = invoke([*dataset, "--model", model, "--epochs", "1", "--out", str(out)])
        assert done.exit_code == 0, done.output
        saved = out / "config.toml"
        text = saved.read_text()
        assert "hidden = [" in text and "channels = [" not in text
        saved.write_text(text + f"{option} = [8, 8]\n")  # edited by hand
        args = ["--resume", str(out)]
    refused(args, rf"{option}=\(8, 8\) has no effect with model='{model}'", out, how)


def refused(args: list[str], message: str, out: Path, how: str) -> None:
    """``gradwise train ARGS`` ends with exit 2 and one line matching ``message``, having
    trained nothing (a resumed run keeps the checkpoint it had)."""
    done = CliRunner().invoke(cli, ["train", *args])
    assert done.exit_code == 2, done.output
    assert_one_line_error(done.stderr, message)
    if how != "resume":
        assert not (out / "checkpoint.pt").exists()


def test_a_run_that_learned_nothing_is_not_reported_as_a_success(tmp_path):
    """A loss that explodes without a NaN (--lr 1e6) stops the run at the end of the epoch, before
    its checkpoint: exit 2, one line, no diverged weights on disk. A classifier whose training
    accuracy (the final weights', on the validation set) is at most 1.5x chance (SGD on single
    samples; a rate of 1e-9) prints its summary, keeps its folder and exits 2 with one line
    saying so."""
    out = tmp_path / "run"
    done = CliRunner().invoke(cli, ["train", "--lr", "1e6", "--epochs", "2", "--out", str(out)])
    assert done.exit_code == 2, done.output
    assert_one_line_error(
        done.stderr, r"training diverged: the training loss grew from .* in epoch 1 \(over 10x\)"
    )
    assert not (out / "checkpoint.pt").exists()

    for args in (["--batch-size", "1", "--epochs", "2"], ["--lr", "1e-9", "--epochs", "1"]):
        out = tmp_path / args[1]
        done = CliRunner().invoke(cli, ["train", "--optimizer", "sgd", *args, "--out", str(out)])
        assert done.exit_code == 2, done.output
        line = assert_one_line_error(
            done.stderr,
            r"the model did not learn: its validation accuracy .* is at most 1.5x chance",
        )
        assert "gradwise lr-find" in line and str(out) in line
        assert (out / "metrics.csv").exists() and (out / "checkpoint.pt").exists()
        assert "test accuracy" in done.stdout  # the summary came first


def test_fit_raises_when_the_loss_explodes_and_keeps_the_last_good_checkpoint(tmp_path):
    """fit() from Python: the epoch whose mean loss is over 10x the first step's raises
    Diverged before its checkpoint; the previous epoch's stays the latest."""
    from gradwise.train import fit
    from gradwise.train.callbacks import Callback
    from gradwise.train.checkpoint import load_latest
    from gradwise.train.faults import Diverged

    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    class Explode(Callback):  # after the first epoch, a rate that makes the loss explode
        def on_epoch_end(self, state):
            state.optimizer.param_groups[0]["lr"] = 1e4

    with pytest.raises(Diverged, match=r"the training loss grew from .* in epoch 2 "):
        fit(model, (x, y), optimizer=opt, epochs=6, batch_size=8, checkpoint_dir=tmp_path,
            callbacks=[Explode()], progress=False)  # fmt: skip
    payload, _, _ = load_latest(tmp_path)
    assert payload["epoch"] == 1

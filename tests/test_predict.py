"""gradwise predict: class names and original units; regression metrics in the target's units."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import gradwise
from gradwise.cli import main as cli
from gradwise.train.config import TrainConfig
from gradwise.train.run import run

SPECIES = ("setosa", "versicolor", "virginica")


def gradwise_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def houses(tmp_path_factory):
    """A regression CSV in large units (prices ~1e5) and a short run on it."""
    d = tmp_path_factory.mktemp("houses")
    rng = np.random.default_rng(0)
    size, rooms = rng.uniform(50, 250, 200).round(1), rng.integers(1, 6, 200)
    price = (1000 * size + 15000 * rooms + rng.normal(0, 5000, 200)).round()
    data = write_csv(d / "houses.csv", ["size", "rooms", "price"], zip(size, rooms, price))
    result = run(TrainConfig(data=str(data), epochs=5, hidden=(16,)), d / "run", progress=False)
    return d, result, price


@pytest.fixture(scope="module")
def flowers(tmp_path_factory):
    """A classification CSV with string class names, and a short run on it."""
    d = tmp_path_factory.mktemp("flowers")
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 150)
    x = (rng.normal(size=(150, 2)) + np.array([[0, 0], [3, 0], [0, 3]])[y]).round(3)
    rows = [(a, b, SPECIES[c]) for (a, b), c in zip(x, y)]
    data = write_csv(d / "flowers.csv", ["petal", "sepal", "species"], rows)
    out = d / "run"
    result = gradwise_cli("train", "--data", data, "--epochs", "5", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    return d, out


def test_regression_test_metrics_are_in_the_targets_units(houses):
    _, result, prices = houses
    data, summary = result.data, result.history.summary
    with torch.no_grad():
        p = result.model.eval()(data.x_test).numpy().ravel().astype(np.float64)
    t = data.y_test.numpy().ravel().astype(np.float64)
    m, s = float(data.y_mean[0]), float(data.y_std[0])
    # the test targets back in dollars are rows of the CSV
    assert set(np.round(t * s + m)) <= set(prices)
    rmse = np.sqrt(np.mean(((p * s + m) - (t * s + m)) ** 2))
    mae = np.mean(np.abs((p * s + m) - (t * s + m)))
    assert summary["test_rmse"] == pytest.approx(rmse, rel=1e-5)
    assert summary["test_mae"] == pytest.approx(mae, rel=1e-5)
    assert summary["test_rmse"] > 1000  # dollars, not standardized units
    assert summary["test_rmse"] == pytest.approx(s * np.sqrt(np.mean((p - t) ** 2)), rel=1e-5)


def test_predict_regression_gives_the_targets_units(houses, tmp_path):
    d, result, _ = houses
    rows = [(3, 100.0), (5, 200.0), (1, 60.5)]
    new = write_csv(tmp_path / "new.csv", ["rooms", "size"], rows)  # columns in another order
    answer = gradwise_cli("predict", d / "run", "--data", new)
    assert answer.exit_code == 0, answer.output
    table = list(csv.reader(io.StringIO(answer.output)))
    assert table[0] == ["prediction"] and len(table) == 4
    description = json.loads((d / "run" / "model.json").read_text())
    mean, std = (np.array(description["scaling"][k]) for k in ("mean", "std"))
    raw = np.array([[size, rooms] for rooms, size in rows])
    with torch.no_grad():
        scaled = gradwise.load(d / "run")(torch.tensor((raw - mean) / std, dtype=torch.float32))
    y_mean, y_std = description["scaling"]["y_mean"][0], description["scaling"]["y_std"][0]
    expected = scaled.numpy().ravel() * y_std + y_mean
    got = np.array([float(r[0]) for r in table[1:]])
    assert got == pytest.approx(expected, rel=1e-5)


def test_predict_classification_gives_class_names_and_probabilities(flowers, tmp_path):
    d, out = flowers
    new = write_csv(
        tmp_path / "new.csv",
        ["species", "sepal", "petal"],  # the target column is ignored, the others found by name
        [("?", 0, 0), ("?", 0, 3), ("?", 3, 0)],
    )
    preds = tmp_path / "preds.csv"
    answer = gradwise_cli("predict", out, "--data", new, "--out", preds)
    assert answer.exit_code == 0, answer.output
    assert answer.output.strip() == f"wrote 3 predictions to {preds}"
    table = list(csv.reader(preds.open()))
    assert table[0] == ["label", "p_setosa", "p_versicolor", "p_virginica"]
    assert [r[0] for r in table[1:]] == ["setosa", "versicolor", "virginica"]
    for row in table[1:]:
        p = [float(v) for v in row[1:]]
        assert sum(p) == pytest.approx(1, abs=1e-5)
        assert SPECIES[int(np.argmax(p))] == row[0]


def test_predict_from_an_exported_file(flowers, tmp_path):
    d, out = flowers
    assert gradwise_cli("export", out, "--format", "safetensors").exit_code == 0
    new = write_csv(tmp_path / "new.csv", ["petal", "sepal"], [(3, 0)])
    answer = gradwise_cli("predict", out / "model.safetensors", "--data", new)
    assert answer.exit_code == 0, answer.output
    assert answer.output.splitlines()[1].startswith("versicolor,")


@pytest.mark.parametrize(
    ("header", "rows", "match"),
    [
        (["petal"], [(1,)], r"missing feature column\(s\) sepal"),
        (["petal", "sepal"], [(1, "tall")], r"line 2, column 'sepal': 'tall' is not a finite"),
        (["petal", "sepal"], [(1, 2, 3)], r"line 2 has 3 fields; the header has 2"),
    ],
)
def test_predict_errors_are_one_line(flowers, tmp_path, header, rows, match):
    _, out = flowers
    new = write_csv(tmp_path / "new.csv", header, rows)
    answer = gradwise_cli("predict", out, "--data", new)
    assert answer.exit_code == 2
    lines = answer.output.strip().splitlines()
    assert len(lines) == 1 and re.search(match, lines[0]), answer.output


def test_an_out_that_cannot_be_written_is_named(flowers, tmp_path):
    """predict's and export's --out under a regular file: the option is named, not only the
    OS's words."""
    _, out = flowers
    new = write_csv(tmp_path / "new.csv", ["petal", "sepal"], [(3, 0)])
    for args in (("predict", out, "--data", new), ("export", out)):
        answer = gradwise_cli(*args, "--out", new / "x.out")
        assert answer.exit_code == 2
        lines = answer.output.strip().splitlines()
        assert len(lines) == 1, answer.output
        # export makes the folders it needs first: the OS then says "File exists"
        said = re.escape(f"--out {new}/x.out: cannot write it (")
        assert re.search(said + r"(Not a directory|File exists)\)", lines[0]), lines[0]

"""The lab: lr_find (exact restoration, a sane suggestion), compare (report files whose numbers
match the run histories, diverged runs flagged, the process pool), grid labels, and the
lr-find / compare / schedule commands."""

from __future__ import annotations

import copy
import csv
import json
import math
import statistics

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from gradwise import optim
from gradwise.cli import main
from gradwise.cli.schedule import schedule_rates
from gradwise.errors import ConfigError
from gradwise.lab import Comparison, compare, grid, lr_find
from gradwise.lab.compare import mean_std, parse_regularizer, parse_schedule_choice, slug
from gradwise.lab.lr_find import suggest
from gradwise.train.history import History
from gradwise.train.run import TrainConfig
from gradwise.train.smoothing import zero_lag_smooth

TINY = TrainConfig(dataset="moons", hidden=(8,), epochs=2, batch_size="64")


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as compare's workers use: on a busy 2-core machine two threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _toy(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2)
    )


def _assert_same_state(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same_state(u, v, f"{path}[{i}]")
    else:
        assert a == b, path


# ------------------------------------------------------------------------------------ lr_find


@pytest.mark.parametrize(
    "make", [lambda p: optim.Adam(p, lr=1e-3), lambda p: optim.SGD(p, lr=0.1, momentum=0.9)]
)
def test_lr_find_restores_model_optimizer_and_rng_exactly(make):
    x, y = _toy()
    model = _net()
    opt = make(model.parameters())
    for _ in range(3):  # the optimizer has state (moments, step counts) before the test
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:64]), y[:64]).backward()
        opt.step()
    model.eval()
    twin = copy.deepcopy(model)
    twin_opt = make(twin.parameters())
    twin_opt.load_state_dict(opt.state_dict())
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()

    result = lr_find(model, (x, y), optimizer=opt, steps=40, start_lr=1e-5, end_lr=10.0)
    assert len(result.lrs) >= 5

    _assert_same_state(model_state, model.state_dict())
    _assert_same_state(opt_state, opt.state_dict())
    assert not model.training and not any(m.training for m in model.modules())
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)
    assert torch.equal(torch.get_rng_state(), rng)
    # and training goes on exactly as it would have without the test
    model.train()
    twin.train()
    for net, o in ((model, opt), (twin, twin_opt)):
        torch.manual_seed(1)
        for _ in range(3):
            o.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_lr_find_restores_none_grads_and_fresh_optimizer():
    x, y = _toy()
    model = nn.Linear(6, 2)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    before = copy.deepcopy(model.state_dict())
    lr_find(model, (x, y), optimizer=opt, steps=20)
    assert all(p.grad is None for p in model.parameters())
    assert opt.state_dict()["state"] == {}
    assert opt.param_groups[0]["lr"] == 1e-3
    _assert_same_state(before, model.state_dict())


def test_lr_find_suggests_a_sane_rate_on_a_toy_problem():
    x, y = _toy(1024)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = optim.SGD(model.parameters(), lr=0.1)
    result = lr_find(model, (x, y), optimizer=opt, end_lr=1e3)
    assert result.rule == "minimum/10" and "minimum" in result.rule_text
    # plain SGD on a standardized logistic problem learns with rates of ~1e-2..1
    assert 1e-3 < result.suggestion < 3.0
    assert result.suggestion == pytest.approx(result.min_loss_lr / 10)
    assert result.steepest_lr < result.min_loss_lr
    assert result.stopped.startswith("diverged") or "loss became" in result.stopped
    # rates grow exponentially from start_lr by the same factor each step
    ratios = np.diff(np.log(result.lrs))
    assert np.allclose(ratios, ratios[0]) and result.lrs[0] == pytest.approx(1e-7)
    i = result.lrs.index(result.min_loss_lr)
    assert result.smoothed[i] == min(result.smoothed) < result.smoothed[0]
    steep = lr_find(model, (x, y), optimizer=opt, end_lr=1e3, rule="steepest")
    assert steep.suggestion == steep.steepest_lr == result.steepest_lr


def test_lr_find_accepts_datasets_loaders_and_factories(tmp_path):
    from gradwise.train.data import load_dataset

    data = load_dataset("moons")
    model = nn.Linear(2, 2)
    result = lr_find(model, data, optimizer=lambda p: optim.SGD(p, lr=0.1), steps=20)
    assert len(result.lrs) >= 5
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.x_train, data.y_train), batch_size=100
    )
    result = lr_find(model, loader, steps=30)  # default optimizer, loader cycled
    assert len(result.losses) == len(result.lrs) == len(result.smoothed)
    png = result.plot(tmp_path / "lr.png", title="moons")
    assert png.stat().st_size > 10_000
    rows = _read_csv(result.to_csv(tmp_path / "lr.csv"))
    assert len(rows) == len(result.lrs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(start_lr=1.0, end_lr=0.1), "end_lr must be > start_lr"),
        (dict(steps=2), "steps must be an integer >= 5"),
        (dict(smoothing=1.0), r"smoothing must be in \[0, 1\)"),
        (dict(loss="hinge"), "loss"),
        (dict(diverge=0.5), "diverge must be > 1"),
        (dict(rule="valley"), "rule must be one of"),
    ],
)
def test_lr_find_rejects_bad_arguments(kwargs, match):
    x, y = _toy(64)
    with pytest.raises(ValueError, match=match):
        lr_find(nn.Linear(6, 2), (x, y), **kwargs)


def test_steepest_descent_is_looked_for_before_the_minimum():
    lrs = list(np.logspace(-6, 0, 61))
    logs = np.log10(lrs)
    curve = 2.0 - 1.5 / (1 + np.exp(-(logs + 3) * 3))  # falls fastest at lr = 1e-3
    curve = curve + np.where(logs > -1, (logs + 1) * 20, 0)  # then blows up past 0.1
    steepest, minimum = suggest(lrs, list(curve))
    assert steepest == pytest.approx(1e-3, rel=0.3)
    assert minimum == pytest.approx(0.1, rel=0.3)
    assert suggest(lrs, list(np.linspace(1, 2, 61))) == (None, lrs[0])  # never falls
    # the forward-backward average has no lag: a symmetric bump stays where it is
    bump = [0.0] * 20 + [1.0] + [0.0] * 20
    smoothed = zero_lag_smooth(bump, 0.8)
    assert int(np.argmax(smoothed)) == 20


# ------------------------------------------------------------------------------------ compare


def _histories(out):
    found = {}
    for path in sorted((out / "runs").glob("*/history.jsonl")):
        found[path.parent.name] = History.from_jsonl(path)
    return found


def test_compare_writes_the_report_and_its_numbers_match_the_histories(tmp_path):
    configs = grid(TINY, optimizers=["sgd", "adam"])
    assert list(configs) == ["sgd lr=0.1", "adam lr=1e-3"]
    seen = []
    result = compare(
        configs,
        seeds=2,
        jobs=1,
        out=tmp_path,
        target_accuracy=0.5,
        on_result=lambda r, done, total: seen.append((r.label, r.seed, done, total)),
    )
    assert sorted(seen) == sorted(
        [("sgd lr=0.1", 0, 1, 4), ("adam lr=1e-3", 0, 2, 4), ("sgd lr=0.1", 1, 3, 4),
         ("adam lr=1e-3", 1, 4, 4)]
    )  # fmt: skip
    for name in ("curves.png", "summary.md", "summary.csv", "runs.csv"):
        assert (tmp_path / name).stat().st_size > 0
    histories = _histories(tmp_path)
    assert sorted(histories) == [
        "adam-lr_1e-3-seed0", "adam-lr_1e-3-seed1", "sgd-lr_0.1-seed0", "sgd-lr_0.1-seed1"
    ]  # fmt: skip
    for folder in (tmp_path / "runs").iterdir():
        assert (folder / "config.toml").exists() and (folder / "metrics.csv").exists()
        assert not (folder / "checkpoint.pt").exists()

    rows = _read_csv(tmp_path / "summary.csv")
    assert [r["label"] for r in rows] == ["sgd lr=0.1", "adam lr=1e-3"]
    for row, prefix in zip(rows, ("sgd-lr_0.1", "adam-lr_1e-3")):
        runs = [histories[f"{prefix}-seed{k}"] for k in (0, 1)]
        finals = [h.epochs[-1]["val_accuracy"] for h in runs]
        bests = [max(e["val_accuracy"] for e in h.epochs) for h in runs]
        tests = [h.summary["test_accuracy"] for h in runs]
        assert float(row["final_accuracy_mean"]) == pytest.approx(statistics.mean(finals), 1e-5)
        assert float(row["final_accuracy_std"]) == pytest.approx(statistics.stdev(finals), abs=1e-6)
        assert float(row["best_accuracy_mean"]) == pytest.approx(statistics.mean(bests), 1e-5)
        assert float(row["test_accuracy_mean"]) == pytest.approx(statistics.mean(tests), 1e-5)
        assert int(row["runs"]) == 2 and int(row["diverged"]) == 0
        assert row["optimizer"] in ("sgd", "adam") and row["epochs"] == "2"
        hits = [next((e["step"] for e in h.epochs if e["val_accuracy"] >= 0.5), None) for h in runs]
        reached = [s for s in hits if s is not None]
        assert int(row["reached"]) == len(reached)
        if reached:
            assert float(row["steps_to_target"]) == pytest.approx(statistics.mean(reached))
    per_run = _read_csv(tmp_path / "runs.csv")
    assert len(per_run) == 4 and {r["diverged"] for r in per_run} == {"False"}
    md = (tmp_path / "summary.md").read_text()
    assert "| `sgd lr=0.1` |" in md and "| `adam lr=1e-3` |" in md
    assert f"{100 * result.summary()[0]['final_accuracy_mean']:.1f} ±" in md
    assert "steps to 50%" in md
    loaded = Comparison.load(tmp_path)  # the report folder alone gives the same summary back
    assert loaded.labels == result.labels and loaded.target == 0.5
    for a, b in zip(loaded.summary(), result.summary()):
        assert a["final_accuracy_mean"] == b["final_accuracy_mean"]
        assert a["reached"] == b["reached"] and a["train_time_mean"] == b["train_time_mean"]
    loaded.plot(tmp_path / "again.png")


def test_compare_flags_diverged_runs_and_keeps_the_others(tmp_path):
    configs = grid(TINY, lrs=[0.05, 1e12], optimizers=["sgd"])
    result = compare(configs, seeds=2, jobs=1, out=tmp_path, target_accuracy=0.5)
    rows = {row["label"]: row for row in result.summary()}
    assert rows["sgd lr=1e12"]["diverged"] == 2
    assert math.isnan(rows["sgd lr=1e12"]["final_accuracy_mean"])
    assert rows["sgd lr=0.05"]["diverged"] == 0
    bad = [r for r in result.runs if r.diverged]
    assert len(bad) == 2 and all("diverged" in r.reason for r in bad)
    md = (tmp_path / "summary.md").read_text()
    assert "**2/2**" in md and "## Diverged runs" in md
    per_run = _read_csv(tmp_path / "runs.csv")
    assert sum(r["diverged"] == "True" for r in per_run) == 2
    assert (tmp_path / "runs" / "sgd-lr_1e12-seed0" / "history.jsonl").exists()
    assert (tmp_path / "curves.png").exists()


def test_compare_runs_in_parallel_processes_with_the_same_results(tmp_path):
    configs = grid(dataclasses_replace(TINY, epochs=1), optimizers=["sgd", "adam"])
    pooled = compare(configs, seeds=1, jobs=2)
    alone = compare(configs, seeds=1, jobs=1)
    assert pooled.jobs == 2
    for a, b in zip(pooled.summary(), alone.summary()):
        assert a["label"] == b["label"]
        assert a["final_accuracy_mean"] == b["final_accuracy_mean"]
        assert a["final_val_loss_mean"] == pytest.approx(b["final_val_loss_mean"], rel=1e-6)


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_compare_default_target_and_errors():
    configs = grid(dataclasses_replace(TINY, epochs=1), optimizers=["adam"])
    result = compare(configs, seeds=1, jobs=1)
    best = result.summary()[0]["best_accuracy_mean"]
    assert result.target == pytest.approx(math.floor(0.95 * best * 100) / 100)
    with pytest.raises(ConfigError, match="configs is empty"):
        compare({}, seeds=1)
    with pytest.raises(ValueError, match="seeds must be an integer >= 1"):
        compare(configs, seeds=0)
    with pytest.raises(ValueError, match="optimizer"):
        compare([TrainConfig(optimizer="adamm")], seeds=1)


def test_grid_labels_and_choices():
    labels = list(grid(TINY, batch_sizes=["full", 1, 64]))
    assert labels == ["batch full", "batch 1", "batch 64"]
    configs = grid(TINY, schedules=["none", "step:10:0.5", "cosine+plateau", "plateau"])
    assert list(configs) == ["none", "step:10:0.5", "cosine+plateau", "plateau"]
    assert configs["cosine+plateau"].schedule == "cosine" and configs["cosine+plateau"].plateau
    assert configs["plateau"].schedule == "constant" and configs["plateau"].plateau
    assert configs["none"].schedule == "constant" and not configs["none"].plateau
    configs = grid(TINY, inits=["he", "xavier"], regularizers=["none", "l2=1e-3+dropout=0.2"])
    assert list(configs) == [
        "he init no reg.", "he init l2=1e-3+dropout=0.2", "xavier init no reg.",
        "xavier init l2=1e-3+dropout=0.2",
    ]  # fmt: skip
    config = configs["xavier init l2=1e-3+dropout=0.2"]
    assert (config.init, config.l2, config.dropout, config.l1) == ("xavier", 1e-3, 0.2, 0.0)
    assert list(grid(TINY, lrs=[1e-3, 0.1])) == ["adam lr=1e-3", "adam lr=0.1"]
    assert list(grid(TINY)) == ["adam lr=1e-3"]
    assert slug("sgd lr=0.1 batch full") == "sgd-lr_0.1-batch-full"


@pytest.mark.parametrize(
    "text, match",
    [("l3=1", "cannot read 'l3=1'"), ("l2=x", "needs a number"), ("dropout=1.5", "dropout must")],
)
def test_regularizer_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_regularizer(text)


def test_schedule_choice_errors():
    with pytest.raises(ConfigError, match="unknown schedule name 'bogus'"):
        parse_schedule_choice("bogus:3")
    assert parse_schedule_choice("warmup:10,cosine") == ("warmup:10,cosine", False)


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    mean, std = mean_std([5.0])  # one seed: no sample std, and the tables show none
    assert mean == 5.0 and math.isnan(std)
    from gradwise.lab.compare.records import fmt_mean_std

    assert fmt_mean_std(0.972, std, percent=True) == "97.2 %"
    assert fmt_mean_std(0.972, 0.004, percent=True) == "97.2 ± 0.4 %"
    assert all(math.isnan(v) for v in mean_std([]))


# ----------------------------------------------------------------------------------- schedule


def test_schedule_rates_follow_the_closed_form_and_the_plateau_cuts():
    rates = schedule_rates("warmup:100,cosine:900", 1000, 1e-3)
    assert rates[0] == 0 and rates[100] == pytest.approx(1e-3)
    t = 550
    assert rates[t] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * (t - 100) / 900)))
    cut = schedule_rates("warmup:100,cosine:900", 1000, 1e-3, cuts=[400, 700], factor=0.5)
    assert cut[399] == rates[399]
    assert cut[400] == pytest.approx(rates[400] / 2) and cut[699] == pytest.approx(rates[699] / 2)
    assert cut[700] == pytest.approx(rates[700] / 4)


def test_schedule_command_plots_and_prints(tmp_path):
    out = tmp_path / "lr.png"
    result = CliRunner().invoke(
        main,
        ["schedule", "warmup:100,cosine:900", "--plateau-at", "400,700", "--steps", "1000",
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 10_000
    assert "0.00075" in result.output  # the rate at the first cut, before it
    result = CliRunner().invoke(
        main, ["schedule", "step:300:0.5", "exp:0.998", "cosine", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args, match",
    [
        (["schedule", "warmup:100,bogus:3"], "unknown schedule name 'bogus'"),
        (["schedule", "cosine", "--steps", "0"], "--steps must be at least 1"),
        (["schedule", "cosine", "--plateau-at", "2000"], "past --steps"),
        (["schedule", "cosine", "--factor", "2"], "--factor must be in"),
    ],
)
def test_schedule_command_bad_input(args, match, tmp_path):
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and line.startswith("gradwise: error:") and match in line


# ------------------------------------------------------------------------------ lr-find / compare


def test_lr_find_command(tmp_path):
    result = CliRunner().invoke(
        main, ["lr-find", "--dataset", "moons", "--optimizer", "sgd", "--steps", "60",
               "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lr_find.png").stat().st_size > 10_000
    assert (tmp_path / "lr_find.csv").exists()
    assert "suggested lr" in result.output
    assert "train with it:  gradwise train --dataset moons --optimizer sgd --lr" in result.output


def test_compare_command(tmp_path):
    result = CliRunner().invoke(
        main,
        ["compare", "--dataset", "moons", "--hidden", "8", "--optimizers", "sgd,adam",
         "--seeds", "2", "--epochs", "1", "--jobs", "1", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = _read_csv(tmp_path / "summary.csv")
    assert [r["label"] for r in rows] == ["sgd lr=0.1", "adam lr=1e-3"]
    assert "sgd lr=0.1" in result.output and "diverged" in result.output
    md = (tmp_path / "summary.md").read_text()
    assert (
        "gradwise compare --dataset moons --hidden 8 --epochs 1 --optimizers sgd,adam --seeds 2"
        in md
    )
    lines = (tmp_path / "runs" / "adam-lr_1e-3-seed1" / "history.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["kind"] == "summary"


@pytest.mark.parametrize(
    "args, match",
    [
        (["--optimizers", "sgd,adamm"], "unknown optimizer 'adamm'"),
        (["--optimizer", "sgd", "--optimizers", "sgd,adam"], "not both"),
        (["--schedules", "cosine;bogus:1"], "unknown schedule name 'bogus'"),
        (["--lrs", "0.1,fast"], "'fast' is not a number"),
        (["--regularizers", "none,l7=1"], "cannot read 'l7=1'"),
        (["--regularizers", "l2=1e-3", "--l2", "1e-4"], "drop --l2"),
        (["--seeds", "0"], "--seeds must be at least 1"),
        (["--target-accuracy", "95"], "--target-accuracy must be in [0, 1]"),
        (["--inits", "he,magic"], "unknown init 'magic'"),
        (["--batch-sizes", "full,0"], "batch_size must be"),
        (["--nan-policy", "skip"], "drop --nan-policy skip"),
    ],
)
def test_compare_command_bad_input(args, match, tmp_path):
    result = CliRunner().invoke(
        main, ["compare", "--dataset", "moons", "--epochs", "1", "--out", str(tmp_path), *args]
    )
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith("gradwise: error:") and match in line
    assert not (tmp_path / "summary.csv").exists()


def test_lr_find_command_bad_input(tmp_path):
    result = CliRunner().invoke(
        main, ["lr-find", "--start-lr", "1", "--end-lr", "0.1", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and "end_lr must be > start_lr" in line


def test_a_grid_applies_an_optimizer_option_where_it_applies():
    """`gradwise compare --optimizers sgd,momentum,adam --momentum 0.95`: the momentum run gets
    0.95, the others train as they would without it (not refused, not silently given it); an
    option none of the grid's optimizers uses is refused."""
    import dataclasses

    from gradwise.errors import ConfigError
    from gradwise.lab import grid
    from gradwise.train.run import TrainConfig

    base = dataclasses.replace(TrainConfig(), momentum=0.95, betas=(0.8, 0.99))
    configs = grid(base, optimizers=["sgd", "momentum", "adam"])
    by_optimizer = {c.optimizer: c.resolved() for c in configs.values()}
    assert by_optimizer["momentum"].momentum == 0.95
    assert by_optimizer["sgd"].momentum == 0.0 and by_optimizer["adam"].momentum == 0.0
    assert by_optimizer["adam"].betas == (0.8, 0.99)
    assert by_optimizer["sgd"].betas == (0.9, 0.999)
    with pytest.raises(ConfigError, match="momentum=0.95 has no effect with any of the"):
        grid(base, optimizers=["sgd", "adam"])


@pytest.mark.parametrize(
    "args",
    [
        ["compare", "--data", "nan.csv", "--target", "y", "--optimizers", "sgd,adam"],
        ["tune", "--storage", "bogus://x", "--trials", "1"],
    ],
    ids=["compare-bad-data", "tune-bad-storage"],
)
def test_a_command_that_fails_at_once_leaves_no_empty_folder(args, tmp_path, monkeypatch):
    """compare and tune make their report folder (under runs/) before the data or the storage
    is found wrong: the folders they made, still empty, go again with the error."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nan.csv").write_text("a,b,y\n1,nan,0\n2,3,1\n")
    result = CliRunner().invoke(main, [*args, "--no-progress"] if args[0] == "compare" else args)
    assert result.exit_code == 2, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.csv"]

"""fit()'s training features against hand-written loops that do the same with PyTorch's own
tools: gradient clipping, bfloat16 autocast, an EMA of the weights, callbacks after each step
and at the end, the best-epoch checkpoint, TensorBoard logging, and macro F1."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import gradwise.optim as go
from gradwise.train import fit
from gradwise.train.callbacks import BestCheckpoint, Callback
from gradwise.train.loop import confusion_counts, evaluate, macro_f1

CLOSE = dict(rtol=1e-5, atol=1e-6)


def data(n: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()  # 3 classes
    return x, y


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def hand_loop(net: nn.Module, x, y, epochs: int, *, clip=None, autocast=False, ema=None):
    """Full-batch SGD with momentum, written out: what fit(batch_size="full") should do."""
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    average = None
    if ema is not None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        average = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True)
    for _ in range(epochs):
        opt.zero_grad()
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = net(x)
            out = out.float()
        else:
            out = net(x)
        F.cross_entropy(out, y).backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        if average is not None:
            average.update_parameters(net)
    if average is not None:
        net.load_state_dict(average.module.state_dict())
    return net


def fit_full(net, x, y, epochs, **kw):
    return fit(
        net,
        (x, y),
        optimizer=lambda p: go.SGD(p, lr=0.5, momentum=0.9),
        batch_size="full",
        epochs=epochs,
        progress=False,
        **kw,
    )


def assert_same(a: nn.Module, b: nn.Module, **tol) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.detach(), pb.detach(), msg=name, **(tol or CLOSE))


def test_clip_grad_norm_is_torchs_clipping_before_each_step():
    x, y = data()
    ours = model()
    history = fit_full(ours, x, y, 5, clip_grad_norm=0.05)
    assert_same(ours, hand_loop(model(), x, y, 5, clip=0.05))
    unclipped = model()
    fit_full(unclipped, x, y, 5)
    assert not torch.allclose(unclipped[0].weight, ours[0].weight)  # the clip mattered
    assert len(history.epochs) == 5


def test_bfloat16_autocast_forward_with_float32_weights():
    x, y = data()
    ours = model()
    history = fit_full(ours, x, y, 5, precision="bf16")
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    assert_same(ours, hand_loop(model(), x, y, 5, autocast=True))
    full = model()
    fit_full(full, x, y, 5)
    assert not torch.equal(full[0].weight, ours[0].weight)  # bfloat16 did run
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]


def test_an_unknown_precision_is_refused_with_the_choices():
    x, y = data()
    refused = r"precision must be one of '32', 'bf16', 'fp16'; received precision='16'"
    with pytest.raises(ValueError, match=refused):
        fit_full(model(), x, y, 1, precision="16")


def test_ema_validates_the_average_and_ends_with_it(tmp_path):
    x, y = data()
    ours = model()
    history = fit_full(ours, x, y, 6, ema=0.8, val=(x[:32], y[:32]))
    want = hand_loop(model(), x, y, 6, ema=0.8)
    assert_same(ours, want)
    # the last epoch's validation loss is the average's (the weights the model ends with)
    val_loss = evaluate(want, (x[:32], y[:32]), "cross_entropy")["loss"]
    assert history.epochs[-1]["val_loss"] == pytest.approx(val_loss, rel=1e-5)


def test_ema_resumes_exactly(tmp_path):
    x, y = data()
    whole = model()
    fit_full(whole, x, y, 6, ema=0.8, checkpoint_dir=tmp_path / "whole")
    split = model()
    fit_full(split, x, y, 3, ema=0.8, checkpoint_dir=tmp_path / "split")
    fit_full(split, x, y, 6, ema=0.8, checkpoint_dir=tmp_path / "split", resume=True)
    assert_same(whole, split, rtol=0, atol=0)


def overfitting():
    """Training data and a validation set of unrelated labels: the validation loss is lowest
    early, then grows while the model fits its training set."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 10, generator=g)
    y = (x[:, :3].sum(1) > 0).long()
    xv, yv = torch.randn(100, 10, generator=g), (torch.randn(100, generator=g) > 0).long()

    def net():
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 2))

    return x, y, (xv, yv), net


def val_loss_of(net, val) -> float:
    return evaluate(net, val, "cross_entropy")["loss"]


@pytest.mark.parametrize("ema", [None, 0.5])
@pytest.mark.parametrize("patience", [3, 100], ids=["stopped", "epochs-ran-out"])
def test_early_stopping_and_best_checkpoint_keep_the_weights_their_numbers_are_of(
    tmp_path, ema, patience
):
    """The weights EarlyStopping puts back and BestCheckpoint writes are those the best epoch's
    validation numbers are of: with ``ema``, the average (they used to keep the raw weights,
    and the EMA's end then replaced what EarlyStopping restored: 1.655 where the best epoch
    had 0.732). EarlyStopping restores at the end when the epochs run out too, and the run's
    last checkpoint holds what the model ends with."""
    from gradwise.train import checkpoint as ckpt
    from gradwise.train.callbacks import EarlyStopping

    x, y, val, net = overfitting()
    best_file = tmp_path / "best.pt"
    ours = net()
    history = fit(
        ours,
        (x, y),
        val=val,
        epochs=15,
        ema=ema,
        optimizer=lambda p: torch.optim.Adam(p, 1e-2),
        callbacks=[EarlyStopping(patience=patience), BestCheckpoint(best_file)],
        checkpoint_dir=tmp_path / "run",
        progress=False,
    )
    best = min(row["val_loss"] for row in history.epochs)
    assert best < history.epochs[-1]["val_loss"]  # it overfits: the last epoch is not the best
    assert val_loss_of(ours, val) == pytest.approx(best, rel=1e-6)
    saved = torch.load(best_file, weights_only=True)
    kept = net()
    kept.load_state_dict(saved["model"])
    assert saved["val_loss"] == best and val_loss_of(kept, val) == pytest.approx(best, rel=1e-6)
    last = ckpt.load_latest(tmp_path / "run")[0]["model"]
    assert all(torch.equal(last[k], v) for k, v in ours.state_dict().items())


def test_an_ema_runs_checkpoint_holds_the_average_and_a_resumed_run_trains_on_from_its_weights(
    tmp_path,
):
    """The last checkpoint of a run with ``ema`` holds the average, which the fit leaves in the
    model (gradwise.load, export and predict read it; they used to get the raw weights), and
    the raw weights beside it, which a resumed run trains on from: extended to 6 epochs it
    equals a 6-epoch run."""
    from gradwise.train import checkpoint as ckpt

    x, y = data()
    short = model()
    fit_full(short, x, y, 3, ema=0.8, checkpoint_dir=tmp_path / "short")
    saved = ckpt.load_latest(tmp_path / "short")[0]["model"]
    assert all(torch.equal(saved[k], v) for k, v in short.state_dict().items())
    assert_same(short, hand_loop(model(), x, y, 3, ema=0.8))
    fit_full(short, x, y, 6, ema=0.8, checkpoint_dir=tmp_path / "short", resume=True)
    whole = model()
    fit_full(whole, x, y, 6, ema=0.8)
    assert_same(whole, short, rtol=0, atol=0)


@pytest.mark.parametrize("where", ["early-stopping", "best-checkpoint", "plateau"])
def test_a_monitor_the_epochs_row_lacks_is_refused_with_the_names_it_has(tmp_path, where):
    """A misspelt ``monitor`` (``val_acc`` for ``val_accuracy``) was passed over: early stopping
    never stopped, the best checkpoint was never written, and the plateau was fed the training
    loss. Refused after the first epoch, naming the numbers there are."""
    from gradwise.errors import ConfigError
    from gradwise.schedules import Constant, Plateau, Scheduler
    from gradwise.train.callbacks import EarlyStopping

    x, y, val, net = overfitting()
    m = net()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    kw = {
        "early-stopping": dict(callbacks=[EarlyStopping(monitor="val_acc")]),
        "best-checkpoint": dict(callbacks=[BestCheckpoint(tmp_path / "b.pt", monitor="val_acc")]),
        "plateau": dict(
            scheduler=Scheduler(opt, Constant(), plateau=Plateau(mode="max")), monitor="val_acc"
        ),
    }[where]
    named = r"monitor='val_acc' is not among the epoch's numbers \(train_loss, .*val_accuracy"
    with pytest.raises(ConfigError, match=named):
        fit(m, (x, y), val=val, epochs=3, optimizer=opt, progress=False, **kw)
    with pytest.raises(ConfigError, match=r"monitor='val_loss' .*; give fit\(\) val= data"):
        fit(net(), (x, y), epochs=2, callbacks=[EarlyStopping()], progress=False)


class Counter(Callback):
    def __init__(self):
        self.steps, self.losses, self.ends, self.starts = 0, [], 0, 0

    def on_fit_start(self, state):
        self.starts += 1

    def on_step_end(self, state):
        self.steps += 1
        assert state.step == self.steps
        self.losses.append(float(state.loss))

    def on_fit_end(self, state):
        self.ends += 1


def test_callbacks_are_called_after_each_step_and_once_at_the_end():
    x, y = data()
    counter = Counter()
    history = fit(model(), (x, y), batch_size=32, epochs=2, callbacks=[counter], progress=False)
    assert counter.starts == 1 and counter.ends == 1
    assert counter.steps == 6 == history.epochs[-1]["step"]
    assert counter.losses == pytest.approx([s["loss"] for s in history.steps])


def test_best_checkpoint_keeps_the_best_epochs_weights(tmp_path):
    x, y = data()
    path = tmp_path / "best.pt"
    net = model()
    history = fit(
        net,
        (x, y),
        val=(x[:40], y[:40]),
        optimizer=lambda p: go.SGD(p, lr=3.0),  # large: the validation loss goes up and down
        batch_size=16,
        epochs=8,
        callbacks=[BestCheckpoint(path)],
        progress=False,
    )
    saved = torch.load(path, weights_only=True)
    losses = [row["val_loss"] for row in history.epochs]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert saved["epoch"] == best + 1 and saved["val_loss"] == losses[best]
    net.load_state_dict(saved["model"])
    assert evaluate(net, (x[:40], y[:40]), "cross_entropy")["loss"] == pytest.approx(losses[best])


def test_macro_f1_by_hand_and_on_a_model():
    # rows: true class; columns: predicted
    counts = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    # class 0: 2·5 / (2·5 + 2 + 1) = 10/13; class 1: 6 / (6 + 1 + 2) = 6/9; class 2 absent
    assert macro_f1(counts) == pytest.approx((10 / 13 + 6 / 9) / 2)
    out = torch.tensor([[2.0, 0, 0], [0, 1, 0], [0, 3, 0], [0, 0, 1]])
    labels = torch.tensor([0, 1, 0, 2])
    assert confusion_counts(out, labels).tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    x, y = data()
    net = model()
    fit_full(net, x, y, 10)
    scores = evaluate(net, (x, y), "cross_entropy", ("accuracy", "f1"))
    pred = net(x).argmax(1)
    f1s = []
    for c in range(3):
        tp = ((pred == c) & (y == c)).sum().item()
        fp = ((pred == c) & (y != c)).sum().item()
        fn = ((pred != c) & (y == c)).sum().item()
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    assert scores["f1"] == pytest.approx(sum(f1s) / len(f1s))


def test_tensorboard_logs_each_step_and_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x, y = data()
    history = fit(
        model(),
        (x, y),
        val=(x[:32], y[:32]),
        batch_size=32,
        epochs=2,
        tensorboard=tmp_path / "tb",
        progress=False,
    )
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [s["step"] for s in history.steps]
    assert [e.value for e in losses] == pytest.approx([s["loss"] for s in history.steps])
    val = events.Scalars("epoch/val_loss")
    assert [e.value for e in val] == pytest.approx([r["val_loss"] for r in history.epochs])


def test_the_cli_flags_reach_fit_and_the_run_folder(tmp_path):
    """``gradwise train --clip-grad-norm --precision bf16 --ema --tensorboard``: the settings are
    in config.toml (so --resume keeps them), the run logs for TensorBoard, and a classifier's
    folder holds its test confusion matrix; the summary reports the macro F1."""
    pytest.importorskip("tensorboard")
    import tomllib

    from click.testing import CliRunner

    from gradwise.cli import main

    out = tmp_path / "run"
    args = ["train", "--epochs", "2", "--hidden", "16", "--out", str(out), "--no-progress"]
    flags = ["--clip-grad-norm", "1", "--precision", "bf16", "--ema", "0.9", "--tensorboard"]
    flags += ["--accumulate", "2"]  # 41 batches of 32 an epoch: 21 steps
    result = CliRunner().invoke(main, args + flags)
    assert result.exit_code == 0, result.output
    config = tomllib.loads((out / "config.toml").read_text())
    flat = {k: v for table in config.values() if isinstance(table, dict) for k, v in table.items()}
    flat.update(config)
    assert flat["clip_grad_norm"] == 1.0 and flat["precision"] == "bf16" and flat["ema"] == 0.9
    assert any((out / "tensorboard").iterdir())
    assert (out / "confusion.png").stat().st_size > 10_000
    assert "test macro F1" in result.output
    assert "2 · 42" in result.output and flat["accumulate"] == 2
    bad = CliRunner().invoke(main, ["train", "--ema", "1.5", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2
    assert "ema must be in [0, 1); received ema=1.5" in bad.output


@pytest.mark.parametrize("n", [96, 100, 90])
def test_gradient_accumulation_equals_a_larger_batch(n):
    """accumulate=3 with batches of 8 is one step per 24 rows: the same steps as batches of 24
    (no dropout, a mean loss), to float rounding. 100: each epoch's last group has fewer
    batches, and its last batch 4 rows; 90: the last group holds 3 batches of 8, 8 and 2 rows,
    each weighted by its rows (they used to weigh a third each: 2e-2 off)."""
    x, y = data(n)
    ours, big = model(), model()
    adam = lambda p: go.Adam(p, lr=0.01)  # noqa: E731
    a = fit(ours, (x, y), batch_size=8, accumulate=3, epochs=3, optimizer=adam, progress=False)
    if n != 100:  # batches of 24 over the same shuffled order, the last one short for 90
        b = fit(big, (x, y), batch_size=24, epochs=3, optimizer=adam, progress=False)
        assert_same(ours, big)
        assert [s["loss"] for s in a.steps] == pytest.approx([s["loss"] for s in b.steps])
        assert a.epochs[-1]["train_loss"] == pytest.approx(b.epochs[-1]["train_loss"])
    assert len(a.steps) == 3 * math.ceil(math.ceil(n / 8) / 3)  # optimizer steps
    assert a.epochs[-1]["step"] == len(a.steps)


def scaled_hand_loop(net: nn.Module, x, y, epochs: int):
    """Full-batch SGD with float16 autocast and a GradScaler, PyTorch's AMP recipe."""
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    for _ in range(epochs):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            out = net(x)
        scaler.scale(F.cross_entropy(out.float(), y)).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
    return net, scaler


def test_float16_with_a_loss_scale_is_torchs_amp_recipe(tmp_path):
    x, y = data()
    ours = model()
    fit_full(ours, x, y, 4, precision="fp16", checkpoint_dir=tmp_path / "a")
    want, scaler = scaled_hand_loop(model(), x, y, 4)
    assert_same(ours, want)
    # the scale is checkpointed: a resumed run goes on with it, to the same weights
    split = model()
    fit_full(split, x, y, 2, precision="fp16", checkpoint_dir=tmp_path / "b")
    fit_full(split, x, y, 4, precision="fp16", checkpoint_dir=tmp_path / "b", resume=True)
    assert_same(ours, split, rtol=0, atol=0)
    from gradwise.train.checkpoint import load_latest

    saved = load_latest(tmp_path / "a")[0]["callbacks"][-1]
    assert saved["scale"] == scaler.get_scale()


def test_a_loss_scale_skips_an_overflowing_step_and_halves(monkeypatch):
    """A scale so large that the scaled gradients overflow: the step is skipped (the weights
    stay), the scale halves, and training goes on; nan_policy is not triggered."""
    from gradwise.train import callbacks

    real = torch.amp.GradScaler
    monkeypatch.setattr(
        callbacks.torch.amp, "GradScaler", lambda device: real(device, init_scale=2.0**40)
    )
    x, y = data()
    net = model()
    before = [p.detach().clone() for p in net.parameters()]
    fit_full(net, x, y, 1, precision="fp16")
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, net.parameters()))
    history = fit_full(net, x, y, 40, precision="fp16")  # the scale comes down, steps resume
    assert not torch.equal(before[0], net[0].weight.detach())
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]


def _misuse_cases():
    x, y = data()
    ok = dict(train=(x, y))
    other = torch.optim.SGD(model().parameters(), lr=0.1)
    return {
        "val-labels-out-of-range": (
            dict(ok, val=(x, torch.full_like(y, 5))),
            r"fit: val: the labels must be class indices 0\.\.2 for the model's 3 outputs",
        ),
        "val-float-labels": (dict(ok, val=(x, y.float())), r"fit: val: loss='cross_entropy'"),
        "val-other-features": (
            dict(ok, val=(x[:, :2], y)),
            r"val x has rows of shape \(2,\) and train x rows of shape \(5,\)",
        ),
        "float64-inputs": (dict(train=(x.double(), y)), r"train x is torch\.float64 .*x\.to"),
        "numpy-arrays": (
            dict(train=(x.numpy(), y.numpy())),
            r"train must be torch tensors .*received numpy arrays",
        ),
        "empty-loader": (
            dict(train=torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:0], y[:0]))),
            r"the train loader gave no batches",
        ),
        "optimizer-name": (dict(ok, optimizer="adam"), r"optimizer must be an optimizer or a fun"),
        "scheduler-text": (dict(ok, scheduler="cosine:10"), r"scheduler must be a gradwise"),
        "scheduler-of-another-optimizer": (
            dict(ok, scheduler=torch.optim.lr_scheduler.StepLR(other, 1)),
            r"the scheduler \(StepLR\) was made for another optimizer",
        ),
        "penalty-number": (dict(ok, penalty=0.1), r"penalty must be a function"),
        "batch-size-with-a-loader": (
            dict(
                train=torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y)),
                batch_size=64,
            ),
            r"batch_size is for in-memory \(x, y\) data; a loader makes its own batches",
        ),
        "model-function": (dict(ok, model=model), r"model must be a torch\.nn\.Module"),
    }


@pytest.mark.parametrize("case", list(_misuse_cases()))
def test_misuse_is_refused_before_training_naming_the_argument(case, tmp_path):
    """What used to fail inside torch (a dtype or shape error, an IndexError after an epoch of
    training on bad validation labels) or train on without a word (an empty loader, a scheduler
    of another optimizer): refused before the first step, naming the argument."""
    kw, match = _misuse_cases()[case]
    net = kw.pop("model", model())
    train = kw.pop("train")
    with pytest.raises((ValueError, TypeError), match=match):
        fit(net, train, epochs=1, progress=False, **kw)


def test_a_regression_records_no_accuracy_by_default_and_one_metric_may_be_named_alone():
    x, _ = data()
    history = fit(model(), (x, torch.randn(len(x), 3)), loss="mse", epochs=1, progress=False)
    assert not any("accuracy" in key for key in history.epochs[-1])
    history = fit(model(), data(), val=data(32, seed=1), metrics="f1", epochs=1, progress=False)
    assert "val_f1" in history.epochs[-1] and "val_accuracy" not in history.epochs[-1]


def test_a_scheduler_of_a_combined_optimizers_member_is_taken():
    """A scheduler made for one member of a Combined optimizer sets rates the combined step
    reads (the same group dicts): taken, not refused as made for another optimizer."""
    x, y = data()
    net = model()
    first = torch.optim.SGD(net[0].parameters(), lr=0.1)
    second = torch.optim.SGD(net[2].parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(first, 1, gamma=0.5)
    both = go.Combined(first, second)
    fit(net, (x, y), optimizer=both, scheduler=sched, epochs=2, scheduler_interval="epoch",
        progress=False)  # fmt: skip
    assert first.param_groups[0]["lr"] == 0.025 and second.param_groups[0]["lr"] == 0.1

"""fit(): the three kinds of gradient descent, history, callbacks, checkpoints and exact resume."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

import gradwise.optim as go
from gradwise.errors import CheckpointError, CheckpointWarning, ConfigError
from gradwise.schedules import Cosine, Plateau, Scheduler, Warmup
from gradwise.train import checkpoint as ckpt
from gradwise.train.callbacks import EarlyStopping
from gradwise.train.faults import Diverged
from gradwise.train.history import History
from gradwise.train.loop import evaluate, fit


def blobs(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    y = torch.arange(n) % 3
    x = centers[y] + 0.6 * torch.randn(n, 2, generator=g)
    return x, y


def small_net(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


@pytest.mark.parametrize(("batch_size", "steps_per_epoch"), [("full", 1), (1, 240), (32, 8)])
def test_batch_modes_take_the_right_number_of_steps_and_learn(batch_size, steps_per_epoch):
    x, y = blobs()
    model = small_net()
    lr = 0.5 if batch_size == "full" else 0.05
    h = fit(
        model,
        (x, y),
        optimizer=go.SGD(model.parameters(), lr=lr),
        epochs=5,
        batch_size=batch_size,
        progress=False,
    )
    assert len(h.steps) == 5 * steps_per_epoch
    assert [r["step"] for r in h.epochs] == [steps_per_epoch * (e + 1) for e in range(5)]
    if batch_size != "full":
        assert evaluate(model, (x, y), "cross_entropy")["accuracy"] > 0.9


def test_full_batch_step_equals_hand_written_gradient_descent():
    """batch_size='full': each epoch is one step on the gradient of the whole set."""
    x, y = blobs()
    a, b = small_net(), small_net()
    fit(
        a,
        (x, y),
        optimizer=go.SGD(a.parameters(), lr=0.1),
        epochs=3,
        batch_size="full",
        progress=False,
    )
    opt = torch.optim.SGD(b.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(b(x), y).backward()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_minibatch_matches_hand_written_loop_with_same_shuffle():
    x, y = blobs()
    a, b = small_net(), small_net()
    fit(
        a,
        (x, y),
        optimizer=go.Adam(a.parameters(), lr=0.01),
        epochs=2,
        batch_size=50,
        progress=False,
        seed=3,
    )
    opt = torch.optim.Adam(b.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        order = torch.randperm(len(x), generator=g)
        xs, ys = x[order], y[order]
        for i in range(0, len(x), 50):
            opt.zero_grad()
            nn.functional.cross_entropy(b(xs[i : i + 50]), ys[i : i + 50]).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_history_records_steps_epochs_and_files(tmp_path):
    x, y = blobs()
    model = small_net()
    h = fit(
        model, (x[:200], y[:200]), val=(x[200:], y[200:]), epochs=3, batch_size=40, progress=False
    )
    assert {"step", "epoch", "loss", "lr"} <= set(h.steps[0])
    row = h.epochs[-1]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "elapsed"):
        assert key in row and math.isfinite(row[key])
    manual = evaluate(model, (x[200:], y[200:]), "cross_entropy")
    assert row["val_loss"] == pytest.approx(manual["loss"], rel=1e-5)
    h.summary["test_accuracy"] = 0.5
    h.to_csv(tmp_path / "m.csv")
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert len(lines) == 4 and "test_accuracy" in lines[0] and lines[-1].endswith("0.5")
    h.to_jsonl(tmp_path / "h.jsonl")
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert kinds.count("step") == 15 and kinds.count("epoch") == 3 and kinds[-1] == "summary"
    again = History.from_jsonl(tmp_path / "h.jsonl")
    assert again.epochs == h.epochs and len(again.steps) == 15


def test_scheduler_is_stepped_per_batch_and_plateau_fed_from_validation():
    x, y = blobs()
    model = small_net()
    opt = go.SGD(model.parameters(), lr=0.1)
    sched = Scheduler(opt, Warmup(10, then=Cosine(50)), plateau=Plateau(patience=0, factor=0.5))
    h = fit(
        model,
        (x[:200], y[:200]),
        val=(x[200:], y[200:]),
        optimizer=opt,
        scheduler=sched,
        epochs=6,
        batch_size=20,
        progress=False,
    )
    assert [r["lr"] for r in h.steps[:3]] == pytest.approx([0.0, 0.01, 0.02])
    assert sched.t == 60
    assert sched.plateau.scale <= 1.0
    expected = 0.1 * Warmup(10, then=Cosine(50))(60) * sched.plateau.scale
    assert opt.param_groups[0]["lr"] == pytest.approx(expected)


def test_early_stopping_stops_and_restores_best():
    x, y = blobs()
    model = small_net()
    stopper = EarlyStopping(monitor="val_loss", patience=2)
    # a learning rate so large that validation loss gets worse quickly
    h = fit(
        model,
        (x[:200], y[:200]),
        val=(x[200:], y[200:]),
        optimizer=go.SGD(model.parameters(), lr=5.0),
        epochs=50,
        batch_size=20,
        callbacks=[stopper],
        progress=False,
        nan_policy="skip",
    )
    assert h.stopped is not None and "early stopping" in h.stopped
    assert len(h.epochs) < 50
    best = evaluate(model, (x[200:], y[200:]), "cross_entropy")["loss"]
    assert best == pytest.approx(stopper.best, rel=1e-5)


def _one_step_skipped(model, x, y):
    """One epoch in batches of 10 with nan_policy='skip': exactly one step skipped, the
    weights finite."""
    h = fit(
        model,
        (x, y),
        optimizer=go.Adam(model.parameters(), lr=0.01),
        epochs=1,
        batch_size=10,
        progress=False,
        nan_policy="skip",
    )
    assert h.skipped_steps == 1 and len(h.steps) == len(x) // 10 - 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("use_native", [True, False], ids=["native", "multi-tensor kernel"])
def test_nan_in_one_gradient_only_is_caught(use_native, monkeypatch):
    """A finite loss whose gradient is NaN in one parameter: the step is skipped either way."""
    from gradwise.train import native

    if use_native:
        if native.helpers(wait=True) is None:
            pytest.skip(f"native helpers not built here: {native.TRAINER.error}")
    else:
        monkeypatch.setattr(native, "helpers", lambda wait=False: None)
    x, y = blobs()
    model = small_net()
    poisoned = []

    def poison(grad):  # the 3rd backward of the run: NaN in one gradient, loss untouched
        poisoned.append(1)
        return torch.full_like(grad, float("nan")) if len(poisoned) == 3 else grad

    list(model.parameters())[-1].register_hook(poison)
    _one_step_skipped(model, x, y)


def test_nan_policy_raise_names_the_step():
    x, y = blobs()
    model = small_net()
    with pytest.raises(Diverged, match=r"step \d+"):
        fit(
            model,
            (x, y),
            optimizer=go.SGD(model.parameters(), lr=1e6),
            epochs=20,
            batch_size=10,
            progress=False,
        )


def test_nan_policy_skip_leaves_optimizer_state_clean():
    x, y = blobs()
    x = x.clone()
    x[5] = float("nan")  # the batch holding sample 5 gives a NaN loss
    model = small_net()
    opt = go.Adam(model.parameters(), lr=0.01)
    h = fit(
        model, (x, y), optimizer=opt, epochs=2, batch_size="full", progress=False, nan_policy="skip"
    )
    assert h.skipped_steps == 2 and len(h.steps) == 0
    assert all(len(s) == 0 for s in opt.state.values())  # never stepped: no state created
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_guard_without_the_multi_tensor_kernel(monkeypatch):
    """Where the one-kernel screen refuses its tensors (several devices), the per-tensor check
    still finds the NaN and the step is skipped."""

    def refuse(*args, **kwargs):
        raise RuntimeError("Expected all tensors to be on the same device")

    from gradwise.train import native

    monkeypatch.setattr(native, "helpers", lambda wait=False: None)  # the non-native path
    monkeypatch.setattr(torch, "_amp_foreach_non_finite_check_and_unscale_", refuse)
    x, y = blobs()
    x = x.clone()
    x[5] = float("nan")
    model = small_net()
    _one_step_skipped(model, x, y)


def test_checkpoint_resume_is_bit_exact(tmp_path):
    """A run stopped after 3 epochs and resumed to 6 ends with the uninterrupted run's weights."""
    x, y = blobs()

    def make():
        model = small_net(dropout=0.2)
        opt = go.Adam(model.parameters(), lr=0.01)
        sched = Scheduler(opt, Cosine(60), plateau=Plateau(patience=1))
        return model, opt, sched

    m1, o1, s1 = make()
    fit(
        m1,
        (x[:200], y[:200]),
        val=(x[200:], y[200:]),
        optimizer=o1,
        scheduler=s1,
        epochs=6,
        batch_size=20,
        progress=False,
        seed=7,
    )
    m2, o2, s2 = make()
    fit(
        m2,
        (x[:200], y[:200]),
        val=(x[200:], y[200:]),
        optimizer=o2,
        scheduler=s2,
        epochs=3,
        batch_size=20,
        progress=False,
        seed=7,
        checkpoint_dir=tmp_path,
    )
    m3, o3, s3 = make()
    torch.manual_seed(12345)  # the global RNG state must come from the checkpoint
    h3 = fit(
        m3,
        (x[:200], y[:200]),
        val=(x[200:], y[200:]),
        optimizer=o3,
        scheduler=s3,
        epochs=6,
        batch_size=20,
        progress=False,
        seed=7,
        checkpoint_dir=tmp_path,
        resume=True,
    )
    assert len(h3.epochs) == 6 and h3.epochs[-1]["step"] == 60
    for p, q in zip(m1.state_dict().values(), m3.state_dict().values()):
        assert torch.equal(p, q)


def test_checkpoint_integrity_and_fallback(tmp_path):
    ckpt.save({"a": torch.ones(3), "n": 1}, tmp_path)
    ckpt.save({"a": torch.ones(3) * 2, "n": 2}, tmp_path)
    current = tmp_path / ckpt.CURRENT
    data = current.read_bytes()
    current.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        ckpt.load_file(current)
    with pytest.warns(CheckpointWarning, match="corrupted or truncated"):
        payload, path, problems = ckpt.load_latest(tmp_path)
    assert payload["n"] == 1 and path.name == ckpt.PREVIOUS and problems
    current.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a gradwise checkpoint"):
        ckpt.load_file(current)
    current.unlink()  # a save never leaves the previous one alone: said, as a damaged one is
    with pytest.warns(CheckpointWarning, match=r"checkpoint\.pt is missing; using .*prev"):
        payload, path, _ = ckpt.load_latest(tmp_path)
    assert payload["n"] == 1 and path.name == ckpt.PREVIOUS


def test_checkpoint_refuses_code_in_the_pickle(tmp_path):
    """A checkpoint whose pickle would run code is refused, and the code does not run."""
    import hashlib
    import io
    import os

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    torch.save({"model": Evil()}, buf)
    body = buf.getvalue()
    digest = hashlib.sha256(body).hexdigest()
    (tmp_path / ckpt.CURRENT).write_bytes(
        b"GRADWISE-CHECKPOINT 1 sha256=" + digest.encode() + b"\n" + body
    )
    with pytest.raises(CheckpointError, match="refused"):
        ckpt.load_file(tmp_path / ckpt.CURRENT)
    assert not marker.exists()


def test_resume_with_a_different_model_is_refused(tmp_path):
    x, y = blobs()
    model = small_net()
    fit(model, (x, y), epochs=1, batch_size=40, progress=False, checkpoint_dir=tmp_path)
    other = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    # torch's first difference is named, not only its "Error(s) in loading state_dict" header
    with pytest.raises(
        CheckpointError,
        match=r'different model .*\(Missing key\(s\) in state_dict: "2.weight", "2.bias"; 3 more',
    ):
        fit(
            other,
            (x, y),
            epochs=2,
            batch_size=40,
            progress=False,
            checkpoint_dir=tmp_path,
            resume=True,
        )


def test_resume_from_an_empty_folder_is_refused(tmp_path):
    x, y = blobs()
    with pytest.raises(CheckpointError, match="no checkpoint.pt"):
        fit(small_net(), (x, y), epochs=1, progress=False, checkpoint_dir=tmp_path, resume=True)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=1000), "batch_size must be at most"),
        (dict(batch_size="half"), "batch_size"),
        (dict(epochs=0), "epochs"),
        (dict(loss="hinge"), "loss"),
        (dict(nan_policy="ignore"), "nan_policy"),
        (dict(metrics=("auc",)), "metrics"),
        (dict(device="tpu"), "device"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    x, y = blobs()
    with pytest.raises((ConfigError, ValueError, TypeError), match=match):
        fit(small_net(), (x, y), progress=False, **kwargs)


def test_works_with_torch_optimizer_and_dataloader():
    x, y = blobs()
    model = small_net()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=30, shuffle=True
    )
    h = fit(
        model,
        loader,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=3,
        progress=False,
    )
    assert len(h.steps) == 24
    assert h.epochs[-1]["train_accuracy"] > 0.8


def test_regression_with_mse():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 3, generator=g)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5]])) + 0.01 * torch.randn(300, 1, generator=g)
    model = nn.Linear(3, 1)
    h = fit(
        model,
        (x, y),
        loss="mse",
        metrics=("rmse",),
        optimizer=go.Adam(model.parameters(), lr=0.05),
        epochs=40,
        batch_size=30,
        progress=False,
    )
    assert h.epochs[-1]["train_loss"] < 1e-3
    assert "train_accuracy" not in h.epochs[-1]
    state = copy.deepcopy(model.state_dict())
    assert state["weight"].flatten().tolist() == pytest.approx([1.0, -2.0, 0.5], abs=0.02)


@pytest.mark.parametrize("fold", [1, 7, 1 << 20])
def test_train_accuracy_count_is_the_same_however_it_is_folded(fold, monkeypatch):
    from gradwise.train import record

    monkeypatch.setattr(record.Correct, "FOLD", fold)
    gen = torch.Generator().manual_seed(0)
    outs = [torch.randn(n, 4, generator=gen) for n in (3, 5, 2, 6)]
    labels = [torch.randint(0, 4, (len(o),), generator=gen) for o in outs]
    correct = record.Correct(torch.device("cpu"))
    assert int(correct.total()) == 0
    for o, y in zip(outs, labels):
        correct.add(o, y)
    expected = sum(int((o.argmax(1) == y).sum()) for o, y in zip(outs, labels))
    assert int(correct.total()) == expected


def test_native_step_record_gives_the_history_the_python_path_gives(monkeypatch):
    """fit()'s one-call native record (guard, loss, right predictions) and the Python path
    (detached losses, argmax folds) give the same history, to the bit; so does a run whose
    outputs the native count cannot read (float16 scores: recorded natively, counted in Python)."""
    from gradwise.train import native

    if native.helpers(wait=True) is None:
        pytest.skip(f"native helpers not built here: {native.TRAINER.error}")
    x, y = blobs()

    class Half(nn.Module):  # float16 scores (the loss is taken in float32)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, inputs):
            return self.inner(inputs).half()

    def loss(out, labels):
        return nn.functional.cross_entropy(out.float(), labels)

    def run(half=False):
        model = small_net(dropout=0.2)
        h = fit(
            Half(model) if half else model,
            (x, y),
            loss=loss,
            optimizer=go.Adam(model.parameters(), lr=0.01),
            epochs=3,
            batch_size=32,
            progress=False,
        )
        return h.steps, [{k: v for k, v in r.items() if k != "elapsed"} for r in h.epochs]

    with_native = run()
    with_native_half = run(half=True)
    monkeypatch.setattr(native, "helpers", lambda wait=False: None)
    assert run() == with_native
    assert run(half=True) == with_native_half
    assert with_native[1][-1]["train_accuracy"] > 0.9


def test_epoch_loss_values_mix_native_floats_and_tensors_in_order():
    """An epoch's losses may mix the native record's floats with detached tensors (steps the
    native call could not read): read back in step order, tensors in one stack."""
    from gradwise.train.record import loss_values

    losses = [0.5, torch.tensor(0.25), 2.0, torch.tensor(4.0), torch.tensor(0.125)]
    assert loss_values(losses) == [0.5, 0.25, 2.0, 4.0, 0.125]
    assert loss_values([1.5, 2.5]) == [1.5, 2.5]
    assert loss_values([]) == []


@pytest.mark.parametrize(
    "optimizer", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]
)
@pytest.mark.parametrize(
    ("option", "value"), [("momentum", 0.5), ("betas", (0.8, 0.99)), ("eps", 1e-6)]
)
def test_an_option_the_optimizer_would_ignore_is_refused(optimizer, option, value):
    """Every option x optimizer pair: an option the chosen optimizer does not use is refused
    with a one-line error naming it (never trained as if it had not been given); one it uses is
    what it trains with."""
    from gradwise.errors import ConfigError
    from gradwise.train.config import OPTIMIZER_OPTIONS, TrainConfig
    from gradwise.train.run import build_optimizer

    config = TrainConfig(optimizer=optimizer, **{option: value})
    if optimizer not in OPTIMIZER_OPTIONS[option]:
        with pytest.raises(ConfigError, match=f"{option}=.* has no effect with optimizer"):
            config.resolved()
        return
    resolved = config.resolved()
    opt = build_optimizer(resolved, torch.nn.Linear(3, 2))
    assert opt.param_groups[0][option] == value


def test_fit_chooses_its_threads_and_gives_them_back(monkeypatch):
    """fit() trains a small model on one torch thread (the CLI's rule), on ``threads`` when
    given, on the process's own count when OMP_NUM_THREADS is set; and restores the count."""
    from gradwise.train import fit

    seen = []

    def loss(out, y):
        seen.append(torch.get_num_threads())
        return torch.nn.functional.mse_loss(out, y)

    x, y = torch.randn(16, 3), torch.randn(16, 1)

    def threads_seen(**kw) -> set[int]:
        seen.clear()
        fit(
            torch.nn.Linear(3, 1),
            (x, y),
            loss=loss,
            epochs=1,
            batch_size=8,
            metrics=(),
            progress=False,
            **kw,
        )
        return set(seen)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert threads_seen() == {1} and torch.get_num_threads() == 2
        assert threads_seen(threads=3) == {3} and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert threads_seen() == {2}
        with pytest.raises(ValueError, match="threads must be an integer >= 1"):
            threads_seen(threads=0)
    finally:
        torch.set_num_threads(before)


def _tiny_model(outputs: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, outputs))


X4 = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
Y3 = torch.arange(64) % 3


@pytest.mark.parametrize(
    ("targets", "loss", "outputs", "message"),
    [
        (
            torch.arange(64) % 5,
            "cross_entropy",
            3,
            r"labels must be class indices 0\.\.2 .* 0 to 4",
        ),
        (Y3 - 1, "cross_entropy", 3, r"labels must be class indices 0\.\.2 .* -1 to 1"),
        (Y3.float(), "cross_entropy", 3, r"class indices \(integers: y\.long\(\)\) or class"),
        (
            Y3.int(),
            "cross_entropy",
            3,
            r"class indices as int64 \(y\.long\(\)\); received torch.int32",
        ),
        (
            torch.randn(64),
            "mse",
            1,
            r"outputs \(32, 1\) and the targets are \(32,\) \(y\.unsqueeze",
        ),
    ],
    ids=["label-too-large", "label-negative", "float-labels", "int32-labels", "mse-1d-target"],
)
def test_fit_refuses_targets_its_loss_cannot_use(targets, loss, outputs, message):
    """Targets that torch would fail on deep inside a step (or, for mse, broadcast without a
    word) are refused before the first step, saying what was expected."""
    model = _tiny_model(outputs)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match=message):
        fit(model, (X4, targets), loss=loss, metrics=(), epochs=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fit_takes_ignored_labels_and_class_probabilities():
    y = Y3.clone()
    y[:5] = -100  # cross_entropy's ignore_index
    fit(_tiny_model(), (X4, y), metrics=(), epochs=1, progress=False)
    probabilities = torch.softmax(torch.randn(64, 3), dim=1)
    fit(_tiny_model(), (X4, probabilities), metrics=(), epochs=1, progress=False)


def test_fit_refuses_an_optimizer_of_other_parameters_and_a_val_set_without_targets():
    model = _tiny_model()
    other = go.Adam(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(ConfigError, match=r"holds none of the model's 2 trainable parameter"):
        fit(model, (X4, Y3), optimizer=other, epochs=1, progress=False)
    with pytest.raises(ConfigError, match=r"val must be an \(x, y\) pair .* one tensor of shape"):
        fit(model, (X4, Y3), val=X4, epochs=1, progress=False)

"""Random-shift augmentation: the shift itself against its equation, where fit applies it (training
batches only, resumed exactly), and its settings in train, lr-find and tune."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from gradwise.cli import main
from gradwise.errors import ConfigError
from gradwise.train import fit
from gradwise.train.augment import RandomShift
from gradwise.train.config import TrainConfig


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 6),
    channels=st.sampled_from([None, 1, 3]),
    length=st.integers(2, 30),
    max_shift=st.integers(1, 12),
    seed=st.integers(0, 2**31),
)
def test_each_sample_moves_by_its_own_shift_with_the_edges_repeated(
    batch, channels, length, max_shift, seed
):
    shape = (batch, length) if channels is None else (batch, channels, length)
    x = torch.randn(shape, dtype=torch.float64)
    got = RandomShift(max_shift)(x, torch.Generator().manual_seed(seed))
    shifts = torch.randint(
        -max_shift, max_shift + 1, (batch,), generator=torch.Generator().manual_seed(seed)
    )
    assert got.shape == x.shape
    for b, s in enumerate(shifts.tolist()):
        assert -max_shift <= s <= max_shift
        for i in range(length):  # x'[i] = x[clamp(i - s, 0, L - 1)], every channel alike
            assert torch.equal(got[b, ..., i], x[b, ..., min(max(i - s, 0), length - 1)])


def test_shifts_are_spread_over_the_whole_range():
    x = torch.arange(40.0).repeat(4000, 1)
    got = RandomShift(3)(x, torch.Generator().manual_seed(0))
    shifts = (x[:, 20] - got[:, 20]).long()  # the middle moves by exactly the shift
    counts = torch.bincount(shifts + 3, minlength=7)
    assert counts.min() > 4000 / 7 * 0.85  # uniform over -3..3


def test_bad_shifts_and_inputs_are_refused_with_their_names():
    with pytest.raises(ValueError, match="max_shift"):
        RandomShift(0)
    with pytest.raises(ValueError, match=r"\(batch, length\)"):
        RandomShift(1)(torch.zeros(5), torch.Generator())
    with pytest.raises(ValueError, match="augment must be None or a callable"):
        fit(torch.nn.Linear(3, 2), (torch.zeros(4, 3), torch.zeros(4).long()), augment=3)


def data(n=64, length=12):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, length, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def test_fit_augments_every_training_batch_and_never_the_validation_data():
    x, y = data()
    seen = []

    def spy(xb, generator):
        seen.append(xb.shape[0])
        return RandomShift(2)(xb, generator)

    history = fit(net(), (x, y), val=data(16), batch_size=16, epochs=3, augment=spy, progress=False)
    assert seen == [16] * 4 * 3  # 4 batches an epoch, 3 epochs, no validation batch
    assert len(history.epochs) == 3
    # augmentation changes what is learned: not the same weights as without it
    plain, shifted = net(), net()
    fit(plain, (x, y), batch_size=16, epochs=3, progress=False)
    fit(shifted, (x, y), batch_size=16, epochs=3, augment=RandomShift(2), progress=False)
    assert not torch.equal(plain[0].weight, shifted[0].weight)


def test_a_resumed_run_draws_the_same_shifts_as_an_uninterrupted_one(tmp_path):
    x, y = data()
    kw = dict(batch_size=16, augment=RandomShift(3), progress=False)
    whole = net()
    fit(whole, (x, y), epochs=4, checkpoint_dir=tmp_path / "whole", **kw)
    split = net()
    fit(split, (x, y), epochs=2, checkpoint_dir=tmp_path / "split", **kw)
    fit(split, (x, y), epochs=4, checkpoint_dir=tmp_path / "split", resume=True, **kw)
    for a, b in zip(whole.parameters(), split.parameters()):
        assert torch.equal(a, b)


def test_train_takes_augment_shift_on_sequences_and_refuses_it_elsewhere(tmp_path):
    config = TrainConfig(dataset="mnist1d", model="mlp", epochs=1, augment_shift=4).resolved()
    assert "augment_shift = 4" in config.to_toml()
    assert "augment_shift" not in TrainConfig(dataset="mnist1d").resolved().to_toml()
    with pytest.raises(
        ConfigError,
        match="augment_shift=2 shifts a signal's positions; dataset 'digits' is not a sequence",
    ):
        TrainConfig(dataset="digits", augment_shift=2).resolved()
    with pytest.raises(ValueError, match="augment_shift"):
        TrainConfig(dataset="mnist1d", augment_shift=-1).resolved()
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(
        main,
        ["train", "--dataset", "mnist1d", "--model", "mlp", "--epochs", "1", "--augment-shift",
         "40", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "augment_shift must be less than the 40 positions of a sample" in result.output
    result = runner.invoke(
        main,
        ["train", "--dataset", "mnist1d", "--model", "mlp", "--epochs", "2", "--augment-shift",
         "4", "--out", str(out), "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert TrainConfig.from_toml(out / "config.toml").augment_shift == 4
    result = runner.invoke(main, ["lr-find", "--dataset", "mnist1d", "--model", "mlp",
                                  "--augment-shift", "4", "--steps", "20",
                                  "--out", str(tmp_path / "lr")])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_tune_searches_shifts_on_sequences_only():
    optuna = pytest.importorskip("optuna")
    from gradwise.lab.tune import Space

    assert Space.build("mnist1d", "mlp").values["augment_shift"] == [0, 8]
    assert Space.build("digits", "mlp").values["augment_shift"] == 0
    with pytest.raises(ConfigError, match="dataset 'digits' is not a sequence"):
        Space.build("digits", "mlp", {"augment_shift": [0, 4]})
    with pytest.raises(ConfigError, match="augment_shift must not be negative"):
        Space.build("mnist1d", "mlp", {"augment_shift": [-1, 4]})
    with pytest.raises(ConfigError, match="augment_shift takes whole numbers >= 0"):
        Space.build("mnist1d", "mlp", {"augment_shift": [0.5, 4]})
    space = Space.build("mnist1d", "mlp", {"augment_shift": [2, 5]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    base = TrainConfig(dataset="mnist1d", model="mlp")
    drawn = {space.suggest(study.ask(), base, 3600).augment_shift for _ in range(30)}
    assert drawn == {2, 3, 4, 5}

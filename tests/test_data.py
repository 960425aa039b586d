"""gradwise.train.data: bundled datasets, splits, standardization, user CSV / NPZ / .pt files."""

from __future__ import annotations

import gzip
import importlib.util
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from gradwise.errors import DataError
from gradwise.train.data import DATASETS, Dataset, load_dataset
from gradwise.train.files import load_file

# name: (n_features, n_classes, rows in train + val, rows in test)
BUNDLED = {
    "digits": (64, 10, 1438, 359),
    "mnist1d": (40, 10, 4000, 1000),
    "spirals": (2, 3, 720, 180),
    "moons": (2, 2, 800, 200),
    "regression": (8, None, 1600, 400),
}


def raw_digits() -> np.ndarray:
    data = resources.files("gradwise.train").joinpath("datasets", "digits.csv.gz")
    with data.open("rb") as f, gzip.open(f, "rt") as text:
        return np.loadtxt(text, delimiter=",", dtype=np.int64)


def sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


# ---------------------------------------------------------------------------------------------
# bundled datasets
# ---------------------------------------------------------------------------------------------


def test_every_bundled_dataset_is_listed():
    assert set(DATASETS) == set(BUNDLED)


@pytest.mark.parametrize("name", list(BUNDLED))
def test_bundled_shapes_dtypes_and_classes(name):
    n_features, n_classes, n_pool, n_test = BUNDLED[name]
    ds = load_dataset(name)
    assert isinstance(ds, Dataset) and ds.name == name
    assert ds.n_features == n_features and ds.n_classes == n_classes
    n_val = round(0.1 * n_pool)
    assert ds.sizes() == {"train": n_pool - n_val, "val": n_val, "test": n_test}
    for x in (ds.x_train, ds.x_val, ds.x_test):
        assert x.dtype == torch.float32 and x.shape[1] == n_features
        assert torch.isfinite(x).all()
    assert ds.mean.shape == ds.std.shape == (n_features,)
    if n_classes is None:
        assert ds.task == "regression" and ds.class_names is None
        for y in (ds.y_train, ds.y_val, ds.y_test):
            assert y.dtype == torch.float32 and y.shape[1:] == (1,)
    else:
        assert ds.task == "classification" and len(ds.class_names) == n_classes
        for y in (ds.y_train, ds.y_val, ds.y_test):
            assert y.dtype == torch.int64 and y.ndim == 1
            assert set(y.tolist()) == set(range(n_classes))  # every class in every split
    if ds.feature_names is not None:
        assert len(ds.feature_names) == n_features
    text = ds.describe()
    assert name in text and str(len(ds.x_train)) in text and str(n_test) in text
    assert f"train={len(ds.x_train)}" in repr(ds)


def test_class_balance():
    counts = {
        name: torch.bincount(torch.cat([ds.y_train, ds.y_val, ds.y_test])).tolist()
        for name in ("digits", "spirals", "moons")
        for ds in [load_dataset(name)]
    }
    assert counts["spirals"] == [300] * 3 and counts["moons"] == [500] * 2
    assert sum(counts["digits"]) == 1797 and min(counts["digits"]) >= 174


def test_mnist1d_is_the_packages_standard_split():
    # values printed by mnist1d 0.0.2.post1: make_dataset(get_dataset_args()), seed 42
    ds = load_dataset("mnist1d", val_fraction=0, standardize=False)
    assert ds.x_val is None and ds.y_val is None
    assert ds.sizes() == {"train": 4000, "val": 0, "test": 1000}
    assert torch.bincount(ds.y_train).tolist() == [398, 396, 411, 394, 394, 402, 401, 404, 402, 398]
    assert torch.bincount(ds.y_test).tolist() == [102, 104, 89, 106, 106, 98, 99, 96, 98, 102]
    assert ds.y_train[:12].tolist() == [2, 6, 4, 5, 6, 6, 6, 0, 3, 1, 6, 9]
    assert ds.y_test[:12].tolist() == [2, 6, 3, 9, 4, 3, 1, 9, 5, 2, 0, 7]
    first = [-0.33200566736939013, -0.4719103656557236, -0.778697076293495, -1.0097408265367045]
    last = [0.6598756470890784, 0.8777343497528006, 1.1931518368352758]
    torch.testing.assert_close(ds.x_train[0, :4], torch.tensor(first), rtol=0, atol=3e-7)
    torch.testing.assert_close(ds.x_test[-1, -3:], torch.tensor(last), rtol=0, atol=3e-7)
    assert ds.x_train.double().sum().item() == pytest.approx(-51.78746787509559, abs=1e-3)
    assert ds.x_test.double().sum().item() == pytest.approx(51.78746787509192, abs=1e-3)


def test_mnist1d_matches_the_package_when_installed():
    mnist1d_data = pytest.importorskip("mnist1d.data")
    ref = mnist1d_data.make_dataset(mnist1d_data.get_dataset_args())
    ds = load_dataset("mnist1d", val_fraction=0, standardize=False)
    np.testing.assert_array_equal(ds.x_train.numpy(), ref["x"].astype(np.float32))
    np.testing.assert_array_equal(ds.x_test.numpy(), ref["x_test"].astype(np.float32))
    np.testing.assert_array_equal(ds.y_train.numpy(), ref["y"])
    np.testing.assert_array_equal(ds.y_test.numpy(), ref["y_test"])


def test_digits_file_is_scikit_learns_copy():
    spec = importlib.util.find_spec("sklearn")  # locates scikit-learn without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-learn is not installed")
    theirs = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not theirs.exists():
        pytest.skip(f"{theirs} is not in this scikit-learn version")
    ours = resources.files("gradwise.train").joinpath("datasets", "digits.csv.gz")
    assert gzip.decompress(ours.read_bytes()) == gzip.decompress(theirs.read_bytes())
    table = raw_digits()
    assert table.shape == (1797, 65) and table[:, :64].min() == 0 and table[:, :64].max() == 16
    assert np.bincount(table[:, 64]).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_splits_partition_the_data():
    ds = load_dataset("digits", standardize=False)
    parts = [
        np.column_stack([x.numpy(), y.numpy()]).astype(np.int64)
        for x, y in (ds.train, ds.val, ds.test)
    ]
    np.testing.assert_array_equal(sorted_rows(np.concatenate(parts)), sorted_rows(raw_digits()))


def test_splits_are_disjoint_and_deterministic():
    a, b = load_dataset("regression", seed=3), load_dataset("regression", seed=3)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    rows = [set(map(tuple, x.tolist())) for x in (a.x_train, a.x_val, a.x_test)]
    assert sum(map(len, rows)) == len(set.union(*rows)) == 2000


def test_seed_changes_validation_but_not_test():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    raw = lambda ds, x: x * ds.std + ds.mean  # noqa: E731
    assert torch.allclose(raw(a, a.x_test), raw(b, b.x_test), atol=1e-4)
    assert torch.equal(a.y_test, b.y_test)
    assert not torch.allclose(raw(a, a.x_val), raw(b, b.x_val), atol=1e-4)


def test_splits_are_stratified():
    ds = load_dataset("digits")
    total = torch.bincount(torch.cat([ds.y_train, ds.y_val, ds.y_test]), minlength=10).double()
    test = torch.bincount(ds.y_test, minlength=10).double()
    assert ((test - 0.2 * total).abs() <= 1).all()
    pool = total - test
    val = torch.bincount(ds.y_val, minlength=10).double()
    assert ((val - 0.1 * pool).abs() <= 1).all()


def test_standardization_uses_training_statistics_only():
    for name in ("digits", "mnist1d", "regression"):
        raw = load_dataset(name, standardize=False)
        ds = load_dataset(name)
        varying = raw.x_train.std(0) > 0
        torch.testing.assert_close(ds.mean, raw.x_train.double().mean(0).float())
        assert ds.x_train.mean(0).abs().max() < 1e-5
        std = ds.x_train.std(0, unbiased=False)
        torch.testing.assert_close(std[varying], torch.ones(int(varying.sum())), atol=1e-5, rtol=0)
        assert (ds.std[~varying] == 1).all()
        assert ds.x_test.mean(0).abs().max() > 1e-3  # the test set is not standardized on itself
        torch.testing.assert_close(ds.standardize(raw.x_test), ds.x_test)
    ds = load_dataset("regression")
    assert abs(ds.y_train.mean().item()) < 1e-5 and abs(ds.y_train.std().item() - 1) < 1e-3
    raw = load_dataset("regression", standardize=False)
    torch.testing.assert_close(ds.unstandardize_target(ds.y_test), raw.y_test, atol=1e-5, rtol=0)


def test_logistic_regression_learns_digits():
    ds = load_dataset("digits")
    torch.manual_seed(0)
    model = torch.nn.Linear(ds.n_features, ds.n_classes)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(ds.x_train), ds.y_train).backward()
        opt.step()
    with torch.no_grad():
        accuracy = (model(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
    assert accuracy > 0.9


def test_no_validation_set():
    ds = load_dataset("spirals", val_fraction=0)
    assert ds.x_val is None and ds.y_val is None and ds.val is None
    assert ds.sizes() == {"train": 720, "val": 0, "test": 180}


def test_unknown_dataset_lists_the_available_ones():
    with pytest.raises(DataError, match="unknown dataset 'mnist'.*digits, mnist1d, spirals"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="load_file"):
        load_dataset("my.csv")


def test_argument_checks():
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\); received"):
        load_dataset("moons", val_fraction=1.0)
    with pytest.raises(TypeError, match="seed"):
        load_dataset("moons", seed=1.5)
    with pytest.raises(ValueError, match="task must be one of"):
        load_file("x.csv", task="clustering")


# ---------------------------------------------------------------------------------------------
# user files
# ---------------------------------------------------------------------------------------------


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def test_csv_with_string_target_maps_to_classes(tmp_path):
    rng = np.random.default_rng(0)
    species = ["setosa", "virginica", "versicolor"]
    rows = [(*np.round(rng.normal(size=2), 3), species[i % 3]) for i in range(60)]
    ds = load_file(write_csv(tmp_path / "flowers.csv", ["a", "b", "species"], rows))
    assert ds.name == "flowers" and ds.task == "classification" and ds.n_classes == 3
    assert ds.class_names == ("setosa", "versicolor", "virginica")
    assert ds.feature_names == ("a", "b")
    assert ds.sizes() == {"train": 43, "val": 5, "test": 12}
    assert ds.y_train.dtype == torch.int64
    assert torch.bincount(ds.y_test).tolist() == [4, 4, 4]
    # labels follow the rows: standardized feature 'a' identifies a row
    raw = {row[0]: row[2] for row in rows}
    for x, y in zip(ds.x_train, ds.y_train):
        a = round((x[0] * ds.std[0] + ds.mean[0]).item(), 3)
        assert ds.class_names[y] == raw[a]


def test_csv_target_by_name_and_integer_labels(tmp_path):
    rows = [(i % 4 + 1, i * 0.5, i % 7) for i in range(80)]
    path = write_csv(tmp_path / "t.csv", ["label", "u", "v"], rows)
    ds = load_file(path, target="label", val_fraction=0, test_fraction=0.25)
    assert ds.task == "classification" and ds.n_classes == 4
    assert ds.class_names == ("1", "2", "3", "4")  # integer labels 1..4 become classes 0..3
    assert ds.x_val is None and ds.sizes()["test"] == 20
    assert ds.feature_names == ("u", "v")
    ds = load_file(path, target="label", n_classes=5)  # n_classes: labels are class indices
    assert ds.n_classes == 5 and 0 not in ds.y_train.tolist()
    ds = load_file(path, target="u")  # 80 distinct values written as floats
    assert ds.task == "regression"


def test_regression_csv(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 3))
    y = 100 + 10 * x @ np.array([1.0, -2.0, 0.5])
    rows = [(*np.round(r, 6), round(t, 6)) for r, t in zip(x, y)]
    ds = load_file(write_csv(tmp_path / "house.csv", ["a", "b", "c", "price"], rows), seed=2)
    assert ds.task == "regression" and ds.n_classes is None and ds.class_names is None
    assert ds.y_train.shape == (72, 1) and ds.y_train.dtype == torch.float32
    assert ds.y_mean.item() == pytest.approx(100, abs=5)
    assert abs(ds.y_train.mean().item()) < 1e-5
    pred = ds.unstandardize_target(ds.y_test)
    assert ((pred - 100).abs() < 100).all()
    again = load_file(tmp_path / "house.csv", seed=2)
    assert torch.equal(again.x_test, ds.x_test)
    other = load_file(tmp_path / "house.csv", seed=3)
    assert not torch.equal(other.y_test, ds.y_test)
    as_classes = load_file(tmp_path / "house.csv", task="regression")
    assert as_classes.task == "regression"


def test_tsv(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("a\tb\ty\n" + "".join(f"{i}\t{i * i}\t{i % 2}\n" for i in range(20)))
    ds = load_file(path)
    assert ds.n_features == 2 and ds.n_classes == 2


def test_npz_and_pt_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    ds = load_file(tmp_path / "a.npz")
    assert ds.task == "classification" and ds.n_classes == 2 and ds.sizes()["test"] == 10

    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "a.pt")
    pt = load_file(tmp_path / "a.pt")
    assert torch.equal(pt.x_train, ds.x_train) and torch.equal(pt.y_test, ds.y_test)

    np.savez(tmp_path / "r.npz", x=x, y=x.sum(1))
    assert load_file(tmp_path / "r.npz").task == "regression"

    np.savez(tmp_path / "s.npz", x=x, y=np.where(y == 1, "yes", "no"))
    assert load_file(tmp_path / "s.npz").class_names == ("no", "yes")


def test_presplit_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = np.arange(60) % 3
    np.savez(tmp_path / "p.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    ds = load_file(tmp_path / "p.npz", val_fraction=0.25)
    assert ds.sizes() == {"train": 30, "val": 10, "test": 20}
    assert ds.x_train.mean(0).abs().max() < 1e-5  # statistics of the 30 training rows
    torch.testing.assert_close(ds.standardize(x[40:]), ds.x_test)


class NotATensor:
    pass


BAD_FILES = {
    # name: (file name, content writer, words the message must contain)
    "missing file": ("nope.csv", None, "no such file"),
    "empty file": ("e.csv", "", "empty"),
    "blank csv": ("e2.csv", "\n\n  \n", "empty"),
    "empty npz": ("e.npz", "", "empty"),
    "unknown extension": ("data.xlsx", "a,b\n1,2\n", "unsupported file type '.xlsx'.*\\.csv"),
    "binary csv": ("bin.csv", b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00", "not a CSV file"),
    "one column": ("one.csv", "a;b;y\n1;2;0\n", "1 column.*separated by ','"),
    "no header": ("nh.csv", "1,2,3\n4,5,6\n", "looks like data.*header"),
    "header only": ("h.csv", "a,b,y\n", "no data rows"),
    "ragged row": ("r.csv", "a,b,y\n1,2,0\n1,2\n", "line 3 has 2 fields but the header has 3"),
    "missing cell": ("m.csv", "a,b,y\n1,2,0\n1,,1\n", "missing value in column 'b' at line 3"),
    "missing target": ("mt.csv", "a,b,y\n1,2,0\n1,2,NA\n", "missing value in column 'y'"),
    "non-numeric feature": (
        "s.csv",
        "a,color,y\n1,2,0\n3,red,1\n",
        "column 'color' is not numeric \\(e.g. 'red' at line 3\\)",
    ),
    "nan feature": ("n.csv", "a,b,y\n1,2,0\n1,nan,1\n3,inf,0\n", "'b'.*nan.*line 3.*2 NaN/inf"),
    "single class": ("c.csv", "a,b,y\n1,2,cat\n3,4,cat\n", "single class \\('cat'\\)"),
    "fraction label": ("f.npz", "npz-fraction", "not an integer \\(0.5\\) at row 1"),
    "negative label": ("neg.npz", "npz-negative", "negative label -1 at row 2"),
    "label out of range": ("big.npz", "npz-big", "label 7 at row 0, out of range for n_classes=3"),
    "nan in npz": ("nan.npz", "npz-nan", "x has a non-finite value \\(nan\\) at row 1, column 2"),
    "length mismatch": ("len.npz", "npz-len", "x has 4 rows but y has 3"),
    "missing key": ("k.npz", "npz-keys", "no array 'y' \\(keys: x, z\\)"),
    "3-D features": ("img.npz", "npz-3d", "features must be 2-D"),
    "corrupt npz": ("bad.npz", "not a zip file", "not a valid .npz file \\(not a zip"),
    "object npz": ("obj.npz", "npz-object", "object arrays, which need pickle"),
    "pickled object in pt": ("obj.pt", "pt-object", "weights_only=True\\) refuses to unpickle"),
    "corrupt pt": ("bad.pt", "not a checkpoint", "not a valid .pt file"),
    "pt not a dict": ("list.pt", "pt-list", "not a dict"),
    "too few rows": ("few.csv", "a,y\n1,0\n2,1\n", "too few rows.*2 rows.*need at least 3"),
    "stratified test empty": ("strat.csv", "a,y\n1,0\n2,1\n3,2\n", "test set would be empty"),
}


def make_bad(path, content):
    x = np.zeros((4, 3))
    arrays = {
        "npz-fraction": dict(x=x, y=np.array([0, 0.5, 1, 1])),
        "npz-negative": dict(x=x, y=np.array([0, 1, -1, 1])),
        "npz-nan": dict(x=np.where(np.eye(4, 3)[::-1] > 0, np.nan, x), y=np.arange(4) % 2),
        "npz-len": dict(x=x, y=np.array([0, 1, 0])),
        "npz-keys": dict(x=x, z=np.arange(4)),
        "npz-3d": dict(x=np.zeros((4, 2, 2)), y=np.arange(4) % 2),
        "npz-big": dict(x=x, y=np.array([7, 1, 0, 1])),
        "npz-object": dict(x=x, y=np.array([0, "a", None, 1], dtype=object)),
    }
    if content in arrays:
        np.savez(path, **arrays[content])
    elif content == "pt-object":
        torch.save({"x": torch.zeros(4, 3), "y": NotATensor()}, path)
    elif content == "pt-list":
        torch.save([torch.zeros(4, 3), torch.zeros(4)], path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_raise_one_line_data_errors(tmp_path, case):
    name, content, words = BAD_FILES[case]
    path = tmp_path / name
    make_bad(path, content)
    kwargs = {"label out of range": {"n_classes": 3}, "fraction label": {"task": "classification"}}
    with pytest.raises(DataError, match=words) as info:
        load_file(path, **kwargs.get(case, {}))
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_unknown_target_column_lists_the_columns(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["age", "height", "label"], [(1, 2, 0), (3, 4, 1)])
    with pytest.raises(
        DataError, match="no target column 'lbl'; the columns are: age, height, lab"
    ):
        load_file(path, target="lbl")


def test_regression_with_string_target_is_refused(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "y"], [(i, "abc"[i % 3]) for i in range(10)])
    with pytest.raises(DataError, match="target 'y' is not numeric \\(e.g. 'a' at line 2\\)"):
        load_file(path, task="regression")

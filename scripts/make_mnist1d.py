"""Regenerate ``src/gradwise/train/datasets/mnist1d.npz`` with the ``mnist1d`` package.

MNIST-1D (Greydanus 2020, https://github.com/greydanus/mnist1d, Apache-2.0) is generated, not
downloaded: ``mnist1d.data.make_dataset(get_dataset_args())`` builds the standard 5000 signals of
length 40 (10 classes, 500 each) from the package's default arguments and seed 42, and splits them
4000 train / 1000 test. gradwise ships the result so that it works offline and never needs the
package at run time; this script is how the shipped file was made, and how to check it.

The ``mnist1d`` package needs scipy, matplotlib and requests, which gradwise does not depend on, so
run this script in a throwaway environment::

    python -m venv /tmp/m1d && /tmp/m1d/bin/pip install mnist1d==0.0.2.post1
    /tmp/m1d/bin/python scripts/make_mnist1d.py            # write the file
    /tmp/m1d/bin/python scripts/make_mnist1d.py --check    # compare with the shipped file

The file holds ``x_train`` (4000, 40) float32, ``y_train`` (4000,) uint8, ``x_test`` (1000, 40)
float32, ``y_test`` (1000,) uint8 and ``source``, a string naming the package version and
arguments. ``get_dataset`` is not used: it downloads a pickle by default and caches one in the
working directory.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path

import numpy as np

OUT = (
    Path(__file__).resolve().parents[1] / "src" / "gradwise" / "train" / "datasets" / "mnist1d.npz"
)


def generate() -> dict[str, np.ndarray]:
    """The standard MNIST-1D split, as produced by the installed ``mnist1d`` package."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    data = make_dataset(args)
    version = importlib.metadata.version("mnist1d")
    settings = {k: v for k, v in vars(args).items() if k != "url"}
    return {
        "x_train": data["x"].astype(np.float32),
        "y_train": data["y"].astype(np.uint8),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.uint8),
        "source": np.array(
            f"mnist1d=={version} make_dataset(get_dataset_args()) with defaults {settings}"
        ),
        "_float64": (data["x"], data["x_test"]),  # for the checks only; not saved
    }


def check(arrays: dict[str, np.ndarray], path: Path) -> list[str]:
    """Differences between freshly generated arrays and the file at ``path`` (empty when equal)."""
    problems = []
    with np.load(path, allow_pickle=False) as saved:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            if saved[key].shape != arrays[key].shape or saved[key].dtype != arrays[key].dtype:
                problems.append(f"{key}: {saved[key].shape} {saved[key].dtype} in the file")
            elif not np.array_equal(saved[key], arrays[key]):
                problems.append(f"{key}: values differ")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    parser.add_argument("--check", action="store_true", help="compare with --out, write nothing")
    opts = parser.parse_args(argv)

    arrays = generate()
    x64_train, x64_test = arrays.pop("_float64")
    assert arrays["x_train"].shape == (4000, 40) and arrays["x_test"].shape == (1000, 40)
    assert set(np.unique(arrays["y_train"])) == set(range(10))
    rounding = max(
        np.abs(arrays["x_train"] - x64_train).max(), np.abs(arrays["x_test"] - x64_test).max()
    )
    print(arrays["source"])
    print(f"train classes {np.bincount(arrays['y_train']).tolist()}")
    print(f"test classes  {np.bincount(arrays['y_test']).tolist()}")
    print(f"largest float32 rounding error {rounding:.2e}")

    if opts.check:
        problems = check(arrays, opts.out)
        for p in problems:
            print(f"MISMATCH {p}")
        print("identical" if not problems else f"{opts.out} differs from the package's output")
        return 1 if problems else 0

    opts.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(opts.out, **arrays)
    print(f"wrote {opts.out} ({opts.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

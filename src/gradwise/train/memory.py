"""Memory bounds of a run, checked before anything large is allocated: a data file that would
not fit in memory, and a model (weights, gradients, optimizer state, activations) that would not.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from gradwise.errors import ConfigError, DataError
from gradwise.train.data import Dataset
from gradwise.train.models import conv_lengths

if TYPE_CHECKING:
    from gradwise.train.config import TrainConfig

#: peak memory of loading a file, as a multiple of its size (CSV: text, cells, float64 arrays,
#: tensors) or of its arrays' size as float64 (NPZ), measured with gradwise's loaders
_CSV_FACTOR, _ARRAY_FACTOR, _PT_FACTOR = 24, 5, 5


def available_memory() -> int | None:
    """Bytes this process can still allocate: the machine's available memory, capped by a cgroup
    (container) limit; ``None`` where it cannot be told."""
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit, used in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            cap = int(Path(limit).read_text().split()[0]) - int(Path(used).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        free = min(free, max(cap, 0))
    return free


def estimate_load_bytes(path: str | Path) -> int:
    """About how much memory loading the data file ``path`` takes (from its size or headers)."""
    import numpy as np

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    suffix = path.suffix.lower()
    if suffix == ".npz":
        total = 0
        try:
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    with z.open(info) as f:
                        version = np.lib.format.read_magic(f)
                        read = (
                            np.lib.format.read_array_header_1_0
                            if version == (1, 0)
                            else np.lib.format.read_array_header_2_0
                        )
                        shape, _, _ = read(f, max_header_size=1 << 20)
                    total += math.prod(shape) * 8
        except Exception:  # not a valid npz: the loader reports it
            return size * _ARRAY_FACTOR
        return max(total, size) * _ARRAY_FACTOR
    if suffix in (".pt", ".pth"):
        return size * _PT_FACTOR
    return size * _CSV_FACTOR


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.0f} MiB"


def check_fits_in_memory(path: str | Path) -> None:
    """Refuse, before reading it, a data file that would not fit in the memory available."""
    need, free = estimate_load_bytes(path), available_memory()
    if free is not None and need > free:
        raise DataError(
            f"{path}: too large to load: it needs about {_gib(need)} of memory and "
            f"{_gib(free)} is available; use a smaller file or a machine with more memory"
        )


def check_model_fits_in_memory(config: TrainConfig, data: Dataset, rows_per_step: int) -> None:
    """Refuse a model (weights, gradients, optimizer state, activations) that cannot fit
    (a user's ``module:function`` model is not known before it is built: not checked)."""
    if config.model not in ("mlp", "cnn1d"):
        return
    out = data.n_classes if data.task == "classification" else data.y_train.shape[-1]
    if config.model == "cnn1d":
        lengths = conv_lengths(data.n_features, len(config.channels), 5, 2, 2)
        chans = [1, *config.channels]
        params = sum(a * b * 5 + b for a, b in zip(chans, chans[1:]))
        params += chans[-1] * lengths[-1] * out + out
        widths = [c * n for c, n in zip(config.channels, lengths[1:])]
    else:
        sizes = [data.n_features, *config.hidden, out]
        params = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
        widths = list(config.hidden)
    # weights, gradients, two optimizer buffers, one spare; activations kept for backward (x3)
    need = 4 * (5 * params + 3 * rows_per_step * (sum(widths) + out))
    free = available_memory()
    if free is not None and need > free:
        raise ConfigError(
            f"train: the model is too large for this machine: {params:,} parameters and their "
            f"activations need about {_gib(need)} of memory and {_gib(free)} is available; use "
            "smaller --hidden / --channels or --batch-size"
        )

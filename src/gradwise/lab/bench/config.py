"""What the step benchmark measures and how long: the optimizers (with the bytes each update must
move), the implementations timed against each other, and :class:`Config`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gradwise.lab.bench.workloads import WORKLOADS, Workload


@dataclass(frozen=True)
class OptimizerSpec:
    name: str  # key used on the command line
    label: str
    cls_name: str  # the class name in torch.optim and gradwise.optim
    kwargs: dict[str, Any]
    bytes_per_param: int  # float32 bytes the update must read + write, at least


OPTIMIZERS: dict[str, OptimizerSpec] = {
    s.name: s
    for s in (
        # read θ, g, buf; write θ, buf
        OptimizerSpec("sgd", "SGD-momentum", "SGD", {"lr": 1e-3, "momentum": 0.9}, 20),
        # read θ, g, v; write θ, v
        OptimizerSpec("rmsprop", "RMSprop", "RMSprop", {"lr": 1e-3}, 20),
        # read θ, g, m, v; write θ, m, v
        OptimizerSpec("adam", "Adam", "Adam", {"lr": 1e-3}, 28),
        OptimizerSpec("adamw", "AdamW", "AdamW", {"lr": 1e-3, "weight_decay": 1e-2}, 28),
        # read θ, g, sum; write θ, sum
        OptimizerSpec("adagrad", "Adagrad", "Adagrad", {"lr": 1e-2}, 20),
    )
}
DEFAULT_OPTIMIZERS = ("sgd", "rmsprop", "adam", "adamw")

#: implementation names, in display order
IMPLEMENTATIONS = (
    "torch for-loop",
    "torch foreach",
    "torch fused",
    "gradwise",
    "gradwise (separate grads)",
    "gradwise eager",
)
TORCH_IMPLEMENTATIONS = IMPLEMENTATIONS[:3]
TORCH_FLAGS = {
    "torch for-loop": {"foreach": False},
    "torch foreach": {"foreach": True},
    "torch fused": {"fused": True},
}

# -------------------------------------------------------------------------------------- config


@dataclass
class Config:
    """What to measure and how long; :func:`quick_config` gives the ``--quick`` preset."""

    workloads: Sequence[str | Workload] = WORKLOADS
    optimizers: Sequence[str] = DEFAULT_OPTIMIZERS
    implementations: Sequence[str] = IMPLEMENTATIONS
    threads: int | None = None  # None: every core this process may use
    scale: float = 1.0  # workload scale (1 = the real sizes)
    warmup: int = 3  # untimed steps per implementation before the rounds
    rounds: int = 11  # interleaved timed rounds
    min_round_s: float = 0.1  # each implementation's round lasts at least this (several steps)
    max_steps_per_round: int = 50
    bandwidth: bool = True  # measure the in-place memory bandwidth too
    bandwidth_mib: int = 256  # size of each of the two arrays
    bandwidth_reps: int = 10
    seed: int = 0
    quick: bool = False

    def __post_init__(self) -> None:
        for what, value, low in (("rounds", self.rounds, 1), ("warmup", self.warmup, 0)):
            if value < low:
                raise ValueError(f"{what} must be >= {low}; received {what}={value}")


def quick_config(**overrides) -> Config:
    """The ``--quick`` preset: full-size workloads, few rounds (under a minute on 2 cores)."""
    base = {
        "warmup": 1,
        "rounds": 3,
        "min_round_s": 0.0,
        "bandwidth_reps": 4,
        "quick": True,
    }
    base.update(overrides)
    return Config(**base)

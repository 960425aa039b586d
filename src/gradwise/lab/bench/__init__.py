"""The optimizer-step benchmark: gradwise against PyTorch's for-loop, foreach and fused paths.

Importable and free of any command-line framework: :func:`run` measures and returns a plain,
JSON-ready dict; :func:`render` turns that dict into a rich table; :func:`main` is the argparse
entry point used by ``benchmarks/optim_step.py`` and ``gradwise bench``. The method is in
docs/benchmarking.md.

By concern:

* :mod:`~gradwise.lab.bench.workloads` — the parameter shapes updated (:func:`make_workload`);
* :mod:`~gradwise.lab.bench.config` — optimizers, implementations and :class:`Config`;
* :mod:`~gradwise.lab.bench.machine` — cores, load average, the memory-bandwidth probe;
* :mod:`~gradwise.lab.bench.kernels` — gradwise's optimizers, imported lazily, kernels prebuilt;
* :mod:`~gradwise.lab.bench.runner` — the interleaved rounds and :func:`run`;
* :mod:`~gradwise.lab.bench.render` — the rich table and the JSON file;
* :mod:`~gradwise.lab.bench.cli` — the argparse command line.
"""

from gradwise.lab.bench.cli import build_parser, config_from_args, main
from gradwise.lab.bench.config import (
    DEFAULT_OPTIMIZERS,
    IMPLEMENTATIONS,
    OPTIMIZERS,
    TORCH_IMPLEMENTATIONS,
    Config,
    OptimizerSpec,
    quick_config,
)
from gradwise.lab.bench.machine import available_cores, machine_info, measure_bandwidth
from gradwise.lab.bench.render import render, write_json
from gradwise.lab.bench.runner import run
from gradwise.lab.bench.workloads import WORKLOADS, Workload, make_workload, resnet18_shapes

__all__ = [
    "DEFAULT_OPTIMIZERS",
    "IMPLEMENTATIONS",
    "OPTIMIZERS",
    "TORCH_IMPLEMENTATIONS",
    "WORKLOADS",
    "Config",
    "OptimizerSpec",
    "Workload",
    "available_cores",
    "build_parser",
    "config_from_args",
    "machine_info",
    "main",
    "make_workload",
    "measure_bandwidth",
    "quick_config",
    "render",
    "resnet18_shapes",
    "run",
    "write_json",
]

"""Time whole training iterations as users write them: gradwise against torch.optim's fastest path.

One iteration is what every PyTorch tutorial teaches::

    opt.zero_grad()                       # default set_to_none=True: backward makes new tensors
    loss_fn(model(x), y).backward()
    opt.step()

Each row is one model × optimizer. Every implementation gets its own copy of the same model
(same initial weights) and the same batch; they are timed in interleaved rounds (A, B, C, A, B,
C, ...), each round a few iterations of one implementation, and the median over the rounds is
reported with the ratio ``torch / gradwise`` (> 1: gradwise is faster). Implementations:

* ``torch``: the reference: ``torch.optim.X`` with its fastest CPU path (``fused=True`` for
  SGD, Adam and AdamW; ``foreach=True`` for the others, which have no fused kernel), or, for an
  algorithm torch.optim lacks, its reference package (``lion_pytorch``, ``schedulefree``,
  ``pytorch_optimizer``'s LAMB, ``prodigyopt``), default ``zero_grad()``;
* ``gradwise``: ``gradwise.optim.X`` with default arguments, default ``zero_grad()``;
* ``gradwise views``: the same with ``zero_grad(set_to_none=False)`` (gradients are views of
  the optimizer's flat buffer, which backward accumulates into);
* ``heavyball`` (on request): heavyball's class for the same algorithm (AdamW, SGD, RMSprop,
  NAdam, SFAdamW), with the same hyperparameters, where it has one.

Before timing, gradwise's default path may be building a fused kernel in a child process
(``fused=None``, large groups); the harness waits for such builds to finish, so the rows show the
steady state, and says whether a kernel ran. ``gradwise bench --train-step`` and
``benchmarks/train_step.py`` run it.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from gradwise.lab.iteration_models import MODELS, Model  # noqa: F401 (Model: for users)


@dataclass(frozen=True)
class Algorithm:
    """An optimizer row: gradwise's class and the reference it is timed against (torch.optim's
    fastest path, or for an algorithm torch.optim lacks, its reference package), both built
    with the same keyword arguments."""

    gradwise: str  # the class name in gradwise.optim
    kwargs: dict[str, Any]
    reference: str  # "module.Class", e.g. "torch.optim.Adam"
    fastest: dict[str, bool] = field(default_factory=dict)  # torch.optim's fastest path
    # heavyball's class for the same algorithm, with its keyword arguments for the same
    # hyperparameters (its defaults differ), or None
    heavyball: tuple[str, dict[str, Any]] | None = None
    # the model's parameters -> the param groups both optimizers take (default: one group)
    groups: Callable[[list[Tensor]], list] | None = None
    # keyword arguments for gradwise's class only (an option the reference does not have)
    gradwise_kwargs: dict[str, Any] = field(default_factory=dict)
    # how tables name the reference, where its class path would not say it
    reference_label: str | None = None

    def param_groups(self, params) -> list:
        params = list(params)
        return self.groups(params) if self.groups is not None else params

    def make_reference(self, params) -> torch.optim.Optimizer:
        module, _, name = self.reference.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return cls(self.param_groups(params), **self.kwargs, **self.fastest)

    def make_heavyball(self, params) -> torch.optim.Optimizer:
        if self.heavyball is None:
            raise ValueError(f"heavyball has no {self.gradwise}")
        name, kwargs = self.heavyball
        return getattr(importlib.import_module("heavyball"), name)(params, **kwargs)

    @property
    def label(self) -> str:
        if self.reference_label is not None:
            return self.reference_label
        flags = ", ".join(f"{k}=True" for k in self.fastest)
        return f"{self.reference}({flags})" if flags else self.reference


class NotApplicable(ValueError):
    """A model × optimizer row that cannot be timed (e.g. Muon on a model without hidden
    matrices): the run skips it and says why."""


def _muon_groups(params: list[Tensor]) -> list[dict]:
    """The hidden layers' 2-D weights for Muon, the rest for AdamW, as ``gradwise train
    --optimizer muon`` splits a model; a model without such weights has no Muon row."""
    from gradwise.train.run import muon_groups

    groups = muon_groups([{"params": params}])
    if not any(g.get("use_muon") for g in groups):
        raise NotApplicable("it has no hidden 2-D weight for Muon (convolutions are 4-D)")
    return groups


class TorchMuonWithAdamW(torch.optim.Optimizer):
    """The reference for gradwise's ``MuonWithAdamW``: ``torch.optim.Muon`` on the groups
    marked ``use_muon`` (``adjust_lr_fn="match_rms_adamw"``, so one learning rate serves both)
    and ``torch.optim.AdamW(fused=True)`` on the rest, stepped one after the other."""

    def __init__(self, groups, lr, weight_decay, momentum, betas=(0.9, 0.999), eps=1e-8):
        muon = [
            {k: v for k, v in g.items() if k != "use_muon"} for g in groups if g.get("use_muon")
        ]
        rest = [g for g in groups if not g.get("use_muon")]
        self.muon = torch.optim.Muon(
            muon,
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            adjust_lr_fn="match_rms_adamw",
        )
        self.adamw = torch.optim.AdamW(
            rest, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True
        )
        super().__init__([p for g in groups for p in g["params"]], {})

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def step(self, closure=None):
        self.muon.step()
        self.adamw.step()


_ADAM_LIKE = {"lr": 1e-4, "betas": (0.9, 0.999)}


def _muon(**gradwise_only) -> Algorithm:
    """Muon's row: the hidden matrices to Muon, the rest to AdamW, on both sides."""
    return Algorithm(
        "MuonWithAdamW",
        {"lr": 1e-3, "weight_decay": 1e-2, "momentum": 0.95},
        "gradwise.lab.train_step.TorchMuonWithAdamW",
        groups=_muon_groups,
        gradwise_kwargs=gradwise_only,
        reference_label="torch.optim.Muon + AdamW(fused=True)",
    )


#: optimizer name -> its row. The first four are the default set; the others are timed against
#: their own references with ``--optimizers``
OPTIMIZERS: dict[str, Algorithm] = {
    "adam": Algorithm(
        "Adam", {"lr": 1e-4}, "torch.optim.Adam", {"fused": True}, ("AdamW", _ADAM_LIKE)
    ),
    "adamw": Algorithm(
        "AdamW",
        {"lr": 1e-4},
        "torch.optim.AdamW",
        {"fused": True},
        ("AdamW", {**_ADAM_LIKE, "weight_decay": 0.01}),
    ),
    "sgd": Algorithm(
        "SGD",
        {"lr": 1e-3, "momentum": 0.9},
        "torch.optim.SGD",
        {"fused": True},
        ("SGD", {"lr": 1e-3, "beta": 0.9}),
    ),
    "rmsprop": Algorithm(
        "RMSprop",
        {"lr": 1e-4},
        "torch.optim.RMSprop",
        {"foreach": True},
        ("RMSprop", {"lr": 1e-4, "betas": (0.0, 0.99), "eps": 1e-8}),
    ),
    "nadam": Algorithm(
        "NAdam", {"lr": 1e-4}, "torch.optim.NAdam", {"foreach": True}, ("NAdam", _ADAM_LIKE)
    ),
    "radam": Algorithm("RAdam", {"lr": 1e-4}, "torch.optim.RAdam", {"foreach": True}),
    "adamax": Algorithm("Adamax", {"lr": 1e-4}, "torch.optim.Adamax", {"foreach": True}),
    "adadelta": Algorithm("Adadelta", {"lr": 1.0}, "torch.optim.Adadelta", {"foreach": True}),
    "rprop": Algorithm("Rprop", {"lr": 1e-4}, "torch.optim.Rprop", {"foreach": True}),
    "asgd": Algorithm("ASGD", {"lr": 1e-3}, "torch.optim.ASGD", {"foreach": True}),
    "lion": Algorithm("Lion", {"lr": 1e-5}, "lion_pytorch.Lion"),
    "schedulefree-adamw": Algorithm(
        "AdamWScheduleFree",
        {"lr": 1e-4},
        "schedulefree.AdamWScheduleFree",
        heavyball=("SFAdamW", {**_ADAM_LIKE, "eps": 1e-8}),
    ),
    "schedulefree-sgd": Algorithm("SGDScheduleFree", {"lr": 1e-3}, "schedulefree.SGDScheduleFree"),
    "adafactor": Algorithm("Adafactor", {"lr": 1e-3}, "torch.optim.Adafactor", {"foreach": True}),
    "lamb": Algorithm("Lamb", {"lr": 1e-4}, "pytorch_optimizer.Lamb"),
    "prodigy": Algorithm("Prodigy", {"lr": 1.0}, "prodigyopt.Prodigy"),
    "muon": _muon(),
    # torch's Muon orthogonalizes in bfloat16; gradwise's on the CPU in float32 by default
    # (a bfloat16 matmul is 20-50x slower than a float32 one on a CPU without bf16 units)
    "muon-bf16": _muon(ns_dtype=torch.bfloat16),
}
DEFAULT_OPTIMIZERS = ["adam", "adamw", "sgd", "rmsprop"]

IMPLEMENTATIONS = ("torch", "gradwise", "gradwise views", "heavyball")
#: what runs unless asked: heavyball only on request (it compiles each optimizer for seconds)
DEFAULT_IMPLEMENTATIONS = ("torch", "gradwise", "gradwise views")

#: the models a run times by default, by device type (the 67M-parameter MLP only on a GPU)
DEFAULT_MODELS = {
    "cpu": ["wide-mlp", "resnet18", "deep-narrow", "transformer"],
    "cuda": ["wide-mlp-67m", "resnet18", "deep-narrow", "transformer"],
}


def _loss(out: Tensor, target: Tensor) -> Tensor:
    if target.dtype == torch.int64:
        return nn.functional.cross_entropy(out, target)
    return nn.functional.mse_loss(out, target)


# ----------------------------------------------------------------------------------- running


@dataclass
class Config:
    models: list[str] | None = None  # None: DEFAULT_MODELS of the device
    optimizers: list[str] = field(default_factory=lambda: list(DEFAULT_OPTIMIZERS))
    implementations: list[str] = field(default_factory=lambda: list(DEFAULT_IMPLEMENTATIONS))
    threads: int | None = 1
    rounds: int = 21
    iterations: int = 3  # per round
    warmup: int = 3
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        try:
            kind = torch.device(self.device).type
        except RuntimeError:
            kind = None
        if kind not in DEFAULT_MODELS:
            raise ValueError(f"device must be cpu or cuda; received device={self.device}")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device}: this torch sees no CUDA device")
        if self.models is None:
            self.models = list(DEFAULT_MODELS[kind])
        for what, chosen, allowed in (
            ("models", self.models, MODELS),
            ("optimizers", self.optimizers, OPTIMIZERS),
            ("implementations", self.implementations, IMPLEMENTATIONS),
        ):
            unknown = [c for c in chosen if c not in allowed]
            if unknown or not chosen:
                raise ValueError(
                    f"{what} must be a non-empty list from {', '.join(allowed)}; "
                    f"received {what}={','.join(chosen)}"
                )
        numbers = (("rounds", self.rounds, 1), ("iterations", self.iterations, 1))
        for what, value, low in (*numbers, ("warmup", self.warmup, 0)):
            if value < low:
                raise ValueError(f"{what} must be >= {low}; received {what}={value}")


def _make_optimizer(impl: str, optimizer: str, params) -> torch.optim.Optimizer:
    algorithm = OPTIMIZERS[optimizer]
    if impl == "torch":
        opt = algorithm.make_reference(params)
    elif impl == "heavyball":
        opt = algorithm.make_heavyball(params)
    else:
        import gradwise.optim as go

        opt = getattr(go, algorithm.gradwise)(
            algorithm.param_groups(params), **algorithm.kwargs, **algorithm.gradwise_kwargs
        )
    if callable(getattr(opt, "train", None)):  # Schedule-Free: steps are taken in train mode
        opt.train()
    return opt


class Trainer:
    """One implementation's model, optimizer and batch; ``run(n)`` does n whole iterations."""

    def __init__(
        self, impl: str, optimizer: str, model: nn.Module, batch, device: str = "cpu"
    ) -> None:
        self.impl, self.model = impl, model.to(device)
        self.x, self.y = (t.to(device) for t in batch)
        self.opt = _make_optimizer(impl, optimizer, model.parameters())
        self.set_to_none = impl != "gradwise views"
        cuda = torch.device(device).type == "cuda"
        self.sync = torch.cuda.synchronize if cuda else (lambda: None)

    def run(self, n: int) -> float:
        opt, model, x, y, set_to_none = self.opt, self.model, self.x, self.y, self.set_to_none
        self.sync()
        start = time.perf_counter()
        for _ in range(n):
            opt.zero_grad(set_to_none=set_to_none)
            _loss(model(x), y).backward()
            opt.step()
        self.sync()  # a GPU's queued work is part of the iterations' time
        return (time.perf_counter() - start) / n

    def used_kernel(self) -> bool | None:
        if not self.impl.startswith("gradwise"):
            return None
        from gradwise.optim import kernels

        return bool(kernels.loaded())


def _wait_for_kernel_builds(log: Callable[[str], None], timeout_s: float = 600) -> None:
    from gradwise.optim import kernels

    if not kernels.building():
        return
    log("waiting for gradwise's kernel build(s) in the background to finish (once per machine)")
    kernels.wait_for_builds(timeout_s)


def run_row(cfg: Config, model_name: str, optimizer: str, log: Callable[[str], None]) -> dict:
    spec = MODELS[model_name]
    torch.manual_seed(cfg.seed)
    base = spec.build()
    batch = spec.batch(torch.Generator().manual_seed(cfg.seed))
    trainers = [
        Trainer(impl, optimizer, copy.deepcopy(base), batch, cfg.device)
        for impl in cfg.implementations
        if impl != "heavyball" or OPTIMIZERS[optimizer].heavyball is not None
    ]
    for t in trainers:
        # at least 2: gradwise lays a group out flat after its first step, and asks for its
        # kernel (starting a background build if it is not on disk) from the second
        t.run(max(cfg.warmup, 2))
    _wait_for_kernel_builds(log)
    for t in trainers:
        t.run(1)  # a kernel that just arrived is loaded outside the timed rounds
    samples: dict[str, list[float]] = {t.impl: [] for t in trainers}
    for r in range(cfg.rounds):
        order = trainers if r % 2 == 0 else trainers[::-1]
        for t in order:
            samples[t.impl].append(t.run(cfg.iterations))
    row: dict[str, Any] = {
        "model": model_name,
        "optimizer": optimizer,
        "reference": OPTIMIZERS[optimizer].label,
        "parameters": sum(p.numel() for p in base.parameters()),
        "tensors": len(list(base.parameters())),
        "ms": {k: statistics.median(v) * 1e3 for k, v in samples.items()},
        "samples_ms": {k: [s * 1e3 for s in v] for k, v in samples.items()},
        "kernel": any(t.used_kernel() for t in trainers if t.impl.startswith("gradwise")),
    }
    if "torch" in samples:
        for impl in samples:
            if impl != "torch":
                paired = [a / b for a, b in zip(samples["torch"], samples[impl])]
                row.setdefault("ratio", {})[impl] = row["ms"]["torch"] / row["ms"][impl]
                row.setdefault("paired_ratio", {})[impl] = statistics.median(paired)
    return row


def _summary(row: dict) -> str:
    """One finished row in a line: each implementation's time and its ratio to torch's."""
    ms, ratio = row["ms"], row.get("ratio", {})
    times = ", ".join(
        f"{impl} {ms[impl]:.3g} ms" + (f" ({ratio[impl]:.3f}×)" if impl in ratio else "")
        for impl in ms
    )
    return f"{row['model']} × {row['optimizer']}: {times}"


def run(cfg: Config | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every model × optimizer row; returns the results as a dict (see :func:`render`)."""
    cfg = cfg or Config()
    log = log or (lambda msg: None)
    previous = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows, skipped = [], []
    from gradwise.optim import plans

    try:
        with plans.steady_state():  # the kernel from the first steps, as in a long run
            for model_name in cfg.models:
                for optimizer in cfg.optimizers:
                    log(f"{model_name} × {optimizer}")
                    try:
                        rows.append(run_row(cfg, model_name, optimizer, log))
                        log(_summary(rows[-1]))
                    except NotApplicable as why:
                        log(f"{model_name} × {optimizer}: skipped, {why}")
                        entry = {"model": model_name, "optimizer": optimizer, "why": str(why)}
                        skipped.append(entry)
    finally:
        torch.set_num_threads(previous)
    ratios = {}
    for impl in cfg.implementations:
        values = [r["ratio"][impl] for r in rows if impl in r.get("ratio", {})]
        if values:
            ratios[impl] = math.exp(statistics.fmean(math.log(v) for v in values))
    return {
        "config": {
            "threads": cfg.threads or torch.get_num_threads(),
            "rounds": cfg.rounds,
            "iterations": cfg.iterations,
            "warmup": cfg.warmup,
            "torch": torch.__version__,
            "device": cfg.device,
            "device_name": torch.cuda.get_device_name(cfg.device)
            if torch.device(cfg.device).type == "cuda"
            else "cpu",
        },
        "loadavg": {"start": load_start, "end": os.getloadavg() if load_start else None},
        "rows": rows,
        "skipped": skipped,
        "geomean_ratio": ratios,
    }


def render(results: dict[str, Any]):
    """A rich table: ms per iteration for each implementation and the ratios to torch."""
    from rich.table import Table

    impls = [i for i in IMPLEMENTATIONS if any(i in r["ms"] for r in results["rows"])]
    cfg = results["config"]
    table = Table(
        title=f"Whole training iterations (zero_grad + forward + backward + step), ms, "
        f"{cfg.get('device_name', 'cpu')}, {cfg['threads']} thread(s), median of "
        f"{cfg['rounds']} interleaved rounds",
        caption="ratio = torch's time / gradwise's (> 1: gradwise faster); torch = the "
        "reference: "
        + "; ".join(sorted({f"{r['optimizer']}: {r['reference']}" for r in results["rows"]}))
        + "; kernel = gradwise ran its fused kernel",
    )
    for col in ("model", "optimizer", *impls):
        table.add_column(col, justify="left" if col in ("model", "optimizer") else "right")
    ratio_cols = [i for i in impls if i != "torch" and "torch" in impls]
    for impl in ratio_cols:
        table.add_column(f"ratio {impl}", justify="right")
    table.add_column("kernel")
    for r in results["rows"]:
        cells = [r["model"], r["optimizer"]]
        cells += [f"{r['ms'][i]:.2f}" if i in r["ms"] else "–" for i in impls]
        cells += [f"{r['ratio'][i]:.3f}×" if i in r["ratio"] else "–" for i in ratio_cols]
        table.add_row(*cells, "yes" if r["kernel"] else "no")
    if results["geomean_ratio"]:
        table.add_row(
            "geometric mean",
            "",
            *("" for _ in impls),
            *(f"{results['geomean_ratio'][i]:.3f}×" for i in ratio_cols),
            "",
        )
    return table


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser(
    prog: str = "train_step", parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser
) -> argparse.ArgumentParser:
    """The argparse parser, named ``prog``, of class ``parser_class`` (``gradwise bench``
    passes one whose errors are one line)."""
    p = parser_class(
        prog=prog,
        description="Time whole training iterations (default zero_grad, forward, backward, "
        "step): torch.optim's fastest path against gradwise.",
    )
    p.add_argument(
        "--models",
        type=_csv,
        default=None,
        help=f"from {','.join(MODELS)} (default: {','.join(DEFAULT_MODELS['cpu'])}; on cuda "
        "wide-mlp-67m instead of wide-mlp)",
    )
    p.add_argument(
        "--optimizers",
        type=_csv,
        default=list(DEFAULT_OPTIMIZERS),
        help=f"from {','.join(OPTIMIZERS)} (default: {','.join(DEFAULT_OPTIMIZERS)}); an "
        "algorithm torch.optim lacks is timed against its reference package",
    )
    p.add_argument(
        "--impls",
        type=_csv,
        default=list(DEFAULT_IMPLEMENTATIONS),
        help=f"from: {', '.join(IMPLEMENTATIONS)} (default: {','.join(DEFAULT_IMPLEMENTATIONS)}; "
        "heavyball: its class for the same algorithm, where it has one)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 21)")
    p.add_argument("--iterations", type=int, default=None, help="iterations per round (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 3)")
    p.add_argument("--quick", action="store_true", help="3 rounds of 1 iteration, 1 warm-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--json", metavar="PATH", default=None, help="write all results as JSON")
    return p


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def main(
    argv: Sequence[str] | None = None,
    prog: str = "train_step",
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> int:
    import json

    from rich.console import Console

    parser = build_parser(prog, parser_class)
    args = parser.parse_args(argv)
    try:
        cfg = Config(
            models=args.models,
            optimizers=args.optimizers,
            implementations=args.impls,
            threads=args.threads,
            # a number given wins over --quick's
            rounds=_given(args.rounds, 3 if args.quick else 21),
            iterations=_given(args.iterations, 1 if args.quick else 3),
            warmup=_given(args.warmup, 1 if args.quick else 3),
            seed=args.seed,
            device=args.device,
        )
    except ValueError as exc:
        parser.error(str(exc))
    err = Console(stderr=True, soft_wrap=True)
    err.print(f"[dim]load average at start: {os.getloadavg()}[/]")
    results = run(cfg, log=lambda msg: err.print(f"[dim]{msg}[/]", highlight=False))
    err.print(f"[dim]load average at end: {results['loadavg']['end']}[/]")
    console = Console() if sys.stdout.isatty() else Console(width=140)
    console.print(render(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        err.print(f"[dim]wrote {args.json}[/]")
    return 0

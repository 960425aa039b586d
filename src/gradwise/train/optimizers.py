"""The optimizers the trainer, the CLI and the lab know by name, and the settings each takes.

:data:`SPECS` has one entry per name (``gradwise train --optimizer NAME``): the
:mod:`gradwise.optim` class, gradwise's default learning rate, and which of the
:data:`HYPERPARAMETERS` it takes. Everything else is derived from it: the names and default rates
of :mod:`gradwise.train.config`, which options are refused with which optimizer, the CLI's flags
(``cli/options.py``), the optimizer :func:`constructor` builds, and the search space of
``gradwise tune``.

To make a class of :mod:`gradwise.optim` trainable by name: add its entry to :data:`SPECS`; for a
hyperparameter no other optimizer has, add it to :data:`HYPERPARAMETERS` and a field of the same
name (default ``None``) to :class:`~gradwise.train.config.TrainConfig`. The name of a setting is
the name of the constructor's argument, so that a run's ``config.toml`` reads like the Python call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Adam's (β1, β2), the value of ``betas`` that an optimizer without betas ignores silently
#: (every run's config.toml has held it)
DEFAULT_BETAS = (0.9, 0.999)


@dataclass(frozen=True)
class Hyperparameter:
    """A setting that only some optimizers take.

    ``kind``: ``"float"``, ``"int"``, ``"pair"`` (two numbers, ``0.9,0.999`` on the command
    line) or ``"flag"``; ``help``: the CLI's help text (the names that take it and the defaults are
    appended: :func:`defaults_text`);
    ``neutral``: the values that mean "not given" (an optimizer that does not take the setting
    accepts them); ``fallback``: what :meth:`TrainConfig.resolved` leaves in a setting the
    optimizer has no default for (``None``: the class's own default)."""

    kind: str
    help: str
    neutral: tuple = (None,)
    fallback: Any = None


HYPERPARAMETERS: dict[str, Hyperparameter] = {
    "momentum": Hyperparameter("float", "Momentum.", neutral=(None, 0, 0.0), fallback=0.0),
    "betas": Hyperparameter(
        "pair",
        "β1,β2: the decays of the moment averages (Lion: of its interpolations).",
        neutral=(None, DEFAULT_BETAS),
        fallback=DEFAULT_BETAS,
    ),
    "eps": Hyperparameter("float", "ε added to the denominator."),
    "weight_decay": Hyperparameter(
        "float",
        "The optimizer's weight decay, on weights only: coupled (an L2 gradient); decoupled "
        "(θ ← θ − lr·λ·θ) for adamw and lion, and with --decoupled-weight-decay.",
        neutral=(None, 0, 0.0),
        fallback=0.0,
    ),
    "momentum_decay": Hyperparameter("float", "NAdam's ψ, the momentum decay."),
    "decoupled_weight_decay": Hyperparameter(
        "flag", "Decoupled weight decay: NAdamW, RAdamW.", neutral=(None, False)
    ),
    "rho": Hyperparameter("float", "Adadelta's ρ, the decay of its averages."),
    "etas": Hyperparameter("pair", "Rprop's η−,η+: the step sizes' shrink and growth factors."),
    "step_sizes": Hyperparameter("pair", "Rprop's smallest and largest step size."),
    "lambd": Hyperparameter("float", "ASGD's λ, the decay of its rate."),
    "alpha": Hyperparameter("float", "ASGD's α, the power of its rate's decay."),
    "t0": Hyperparameter("float", "ASGD's t0, the step its averaging starts."),
    "warmup_steps": Hyperparameter(
        "int", "Schedule-Free's warmup: steps over which its rate rises linearly."
    ),
    "d_coef": Hyperparameter("float", "Prodigy's d_coef: a factor on the step size it estimates."),
}


@dataclass(frozen=True)
class OptimizerSpec:
    """What a name of ``--optimizer`` stands for.

    ``cls``: the class's name in :mod:`gradwise.optim`; ``lr``: gradwise's default rate (a
    dataset may have its own, :data:`~gradwise.train.config.DATASET_DEFAULTS`); ``takes``: the
    :data:`HYPERPARAMETERS` it takes (any other, given, is refused); ``defaults``: gradwise's
    values for some of them, where they are not the class's; ``fixed``: constructor arguments the
    name stands for; ``decoupled``: its weight decay is decoupled (``tune`` searches a larger
    range)."""

    cls: str
    lr: float
    takes: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    decoupled: bool = False


_ADAM = ("betas", "eps", "weight_decay")

#: every name of ``--optimizer``; default rates measured on digits (README's optimizer table)
SPECS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("SGD", 0.1, ("weight_decay",), fixed=dict(momentum=0.0)),
    "momentum": OptimizerSpec("SGD", 0.05, ("momentum", "weight_decay"), dict(momentum=0.9)),
    "nesterov": OptimizerSpec(
        "SGD", 0.05, ("momentum", "weight_decay"), dict(momentum=0.9), dict(nesterov=True)
    ),
    "adagrad": OptimizerSpec("Adagrad", 0.05, ("eps", "weight_decay")),
    "rmsprop": OptimizerSpec("RMSprop", 1e-3, ("momentum", "eps", "weight_decay")),
    "adam": OptimizerSpec("Adam", 1e-3, _ADAM),
    "adamw": OptimizerSpec("AdamW", 1e-3, _ADAM, dict(weight_decay=1e-2), decoupled=True),
    "nadam": OptimizerSpec("NAdam", 2e-3, (*_ADAM, "momentum_decay", "decoupled_weight_decay")),
    "radam": OptimizerSpec("RAdam", 1e-3, (*_ADAM, "decoupled_weight_decay")),
    "adamax": OptimizerSpec("Adamax", 2e-3, _ADAM),
    "adadelta": OptimizerSpec("Adadelta", 1.0, ("rho", "eps", "weight_decay")),
    # torch.optim.Rprop has no weight decay: refused, not approximated
    "rprop": OptimizerSpec("Rprop", 1e-2, ("etas", "step_sizes")),
    "asgd": OptimizerSpec("ASGD", 0.1, ("lambd", "alpha", "t0", "weight_decay")),
    "lion": OptimizerSpec(
        "Lion", 1e-4, ("betas", "weight_decay"), dict(betas=(0.9, 0.99)), decoupled=True
    ),
    # Schedule-Free: evaluation, checkpoints and export use its averaged weights (fit switches
    # it to eval mode); it replaces a schedule, so train it with --schedule constant
    "schedulefree-adamw": OptimizerSpec(
        "AdamWScheduleFree", 2.5e-3, (*_ADAM, "warmup_steps"), decoupled=True
    ),
    "schedulefree-sgd": OptimizerSpec(
        "SGDScheduleFree", 1.0, ("momentum", "weight_decay", "warmup_steps"), dict(momentum=0.9)
    ),
    "lamb": OptimizerSpec("Lamb", 1e-3, _ADAM, decoupled=True),
    "prodigy": OptimizerSpec("Prodigy", 1.0, (*_ADAM, "d_coef"), decoupled=True),
    "adafactor": OptimizerSpec("Adafactor", 1e-2, ("weight_decay",), decoupled=True),
    # Muon for the hidden layers' matrices, AdamW for the rest (train.run.muon_groups), with
    # Muon's update scaled to AdamW's RMS so that one rate and decay serve both
    "muon": OptimizerSpec(
        "MuonWithAdamW",
        1e-3,
        ("momentum", *_ADAM),
        dict(momentum=0.95, weight_decay=1e-2),
        decoupled=True,
    ),
}


def users(name: str) -> tuple[str, ...]:
    """The optimizer names that take the hyperparameter ``name``."""
    return tuple(opt for opt, spec in SPECS.items() if name in spec.takes)


def users_text(name: str) -> str:
    """``"adam, adamw"``, or ``"every optimizer but rprop"`` when all but one or two take it."""
    taking = users(name)
    others = [n for n in SPECS if n not in taking]
    return f"every optimizer but {', '.join(others)}" if len(others) <= 2 else ", ".join(taking)


def default_of(optimizer: str, name: str):
    """The value of the hyperparameter ``name`` that ``optimizer`` trains with when it is not
    given: gradwise's (:attr:`OptimizerSpec.defaults`), else the class's."""
    import inspect

    from gradwise import optim

    spec = SPECS[optimizer]
    if name in spec.defaults:
        return spec.defaults[name]
    return inspect.signature(getattr(optim, spec.cls)).parameters[name].default


def defaults_text(name: str) -> str:
    """The defaults of ``name`` for the CLI's help: ``"0.9,0.999; lion: 0.9,0.99"`` (the most
    common value first, then the others with the optimizers that have them)."""
    by_value: dict[str, list[str]] = {}
    for optimizer in users(name):
        value = default_of(optimizer, name)
        text = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"
        by_value.setdefault(text, []).append(optimizer)
    ordered = sorted(by_value.items(), key=lambda item: -len(item[1]))
    if not ordered:
        return ""
    first, *rest = ordered
    return "; ".join([first[0], *(f"{', '.join(names)}: {text}" for text, names in rest)])


def is_given(name: str, value) -> bool:
    """Whether ``value`` of the hyperparameter ``name`` asks for something (not a neutral
    value, which an optimizer that does not take it may ignore)."""
    value = tuple(value) if isinstance(value, list) else value
    return not any(value == neutral for neutral in HYPERPARAMETERS[name].neutral)


def resolved_value(optimizer: str, name: str, value):
    """The value a resolved configuration holds: ``value`` when given (``None`` is not),
    else the optimizer's default for it, else the hyperparameter's fallback."""
    if value is None:
        spec = SPECS[optimizer]
        if name in spec.takes and name in spec.defaults:
            value = spec.defaults[name]
        else:
            value = HYPERPARAMETERS[name].fallback
    return tuple(value) if isinstance(value, list) else value


def constructor(config) -> tuple[type, dict[str, Any]]:
    """The :mod:`gradwise.optim` class of ``config.optimizer`` (a resolved
    :class:`~gradwise.train.config.TrainConfig`) and its keyword arguments but ``lr``: the
    name's fixed ones and each hyperparameter it takes that is set (``None``: the class's
    default). ``weight_decay`` is among them when the optimizer takes it."""
    from gradwise import optim

    spec = SPECS[config.optimizer]
    kwargs = dict(spec.fixed)
    for name in spec.takes:
        value = getattr(config, name)
        if value is not None:
            kwargs[name] = tuple(value) if isinstance(value, list) else value
    return getattr(optim, spec.cls), kwargs


def check_hyperparameters(config) -> None:
    """Construct ``config``'s optimizer on one tensor: a bad hyperparameter raises now, with the
    class's own message (argument, value, allowed range), before anything is trained or written."""
    import torch

    cls, kwargs = constructor(config)
    groups = [{"params": [torch.zeros(1, requires_grad=True)]}]
    if config.optimizer == "muon":  # a matrix for Muon too, so that its settings are checked
        groups.append({"params": [torch.zeros(2, 2, requires_grad=True)], "use_muon": True})
    cls(groups, lr=config.lr, **kwargs)

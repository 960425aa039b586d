"""Signal propagation: how the activations' and gradients' variance travels through a deep MLP
initialized by :func:`gradwise.init.init_model`, as numbers and as a printed table
(``python -m gradwise.init``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradwise import checks
from gradwise.init.model import SCHEMES, init_model


@dataclass(frozen=True)
class Propagation:
    """Relative variances through a deep MLP (see :func:`signal_propagation`)."""

    activation: str
    scheme: str
    forward: list[float]  # Var(output of Linear l) / Var(input x), l = 1..depth
    backward: list[float]  # Var(∂L/∂ output of Linear l) / Var(∂L/∂ output of the last Linear)


def signal_propagation(
    activation: str = "relu",
    scheme: str = "auto",
    *,
    depth: int = 30,
    width: int = 256,
    batch: int = 512,
    seed: int = 0,
) -> Propagation:
    """Measure how the signal's variance travels through a deep MLP initialized by ``scheme``.

    The net is ``depth`` ``Linear(width, width)`` layers with ``activation`` after every one but
    the last, in float64, initialized with :func:`init_model`. The input is ``x ~ N(0, 1)`` of shape
    ``(batch, width)``; the backward pass starts from ``L = sum(r · y)`` with ``r ~ N(0, 1)``.
    ``forward[l]`` is the variance of layer ``l + 1``'s output (pre-activation) over the batch and
    units divided by ``Var(x)``; ``backward[l]`` is the variance of ``∂L/∂`` that output divided by
    that of the last layer (where the gradient is ``r``).
    """
    owner = "signal_propagation"
    checks.choice(owner, "activation", activation, ("relu", "tanh", "selu", "gelu", "sigmoid"))
    checks.choice(owner, "scheme", scheme, SCHEMES)
    depth = checks.integer(owner, "depth", depth, 1)
    width = checks.integer(owner, "width", width, 1)
    batch = checks.integer(owner, "batch", batch, 2)
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "selu": nn.SELU, "gelu": nn.GELU}.get(
        activation, nn.Sigmoid
    )
    mods: list[nn.Module] = []
    for i in range(depth):
        mods.append(nn.Linear(width, width, dtype=torch.float64))
        if i < depth - 1:
            mods.append(act())
    net = nn.Sequential(*mods)
    gen = torch.Generator().manual_seed(seed)
    init_model(net, scheme, generator=gen)
    x = torch.randn(batch, width, dtype=torch.float64, generator=gen)
    outs: list[Tensor] = []
    h = x
    for m in net:
        h = m(h)
        if isinstance(m, nn.Linear):
            h.retain_grad()
            outs.append(h)
    r = torch.randn(h.shape, dtype=torch.float64, generator=gen)
    (h * r).sum().backward()
    var_x = x.var().item()
    last = outs[-1].grad.var().item()
    return Propagation(
        activation,
        scheme,
        [o.detach().var().item() / var_x for o in outs],
        [o.grad.var().item() / last if last > 0 else float("nan") for o in outs],
    )


def variance_table(
    activations: tuple[str, ...] = ("relu", "tanh"),
    schemes: tuple[str, ...] = ("auto", "normal", "small"),
    *,
    depth: int = 30,
    width: int = 256,
    batch: int = 512,
    every: int = 5,
    seed: int = 0,
) -> str:
    """A text table of :func:`signal_propagation` for every ``activation × scheme``.

    One row per run and direction (``fwd``: forward variance ratio, ``bwd``: gradient variance
    ratio), one column per ``every``-th layer (and the first and last).
    """
    every = checks.integer("variance_table", "every", every, 1)
    layers = sorted({*range(every, depth + 1, every), 1, depth})
    names = {"auto": "init_model", "normal": "N(0, 1)", "small": "N(0, 0.01²)"}
    head = ["activation", "init", "pass"] + [f"layer {n}" for n in layers]
    rows = []
    for a in activations:
        for s in schemes:
            run = signal_propagation(a, s, depth=depth, width=width, batch=batch, seed=seed)
            for direction, values in (("fwd", run.forward), ("bwd", run.backward)):
                rows.append(
                    [a, names.get(s, s), direction] + [f"{values[n - 1]:.3g}" for n in layers]
                )
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    just = [str.ljust] * 3 + [str.rjust] * len(layers)
    lines = ["  ".join(j(c, w) for j, c, w in zip(just, row, widths)) for row in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    title = (
        f"Variance through a {depth}-layer MLP (width {width}, batch {batch}, float64)\n"
        "fwd: Var(output of layer l) / Var(input x)\n"
        "bwd: Var(dL/d output of layer l) / Var(dL/d output of the last layer)\n"
    )
    return title + "\n".join(line.rstrip() for line in lines)

"""Regularization: L1 and L2 loss penalties, and optimizer param groups that spare biases and norms.

Four ways to pull weights toward zero, and how they relate:

.. code-block:: text

    l2_penalty(θ, weight)  = weight/2 · Σ θ²     gradient weight · θ
    l1_penalty(θ, weight)  = weight   · Σ |θ|    (sub)gradient weight · sign(θ)

    coupled weight decay   g ← g + weight_decay · θ            (SGD, Adam, ... weight_decay=)
    decoupled weight decay θ ← θ · (1 − lr · weight_decay)     (AdamW)
    proximal L1            θ ← sign(θ) · max(|θ| − lr · l1, 0)  after the update (optimizers' l1=)

* ``l2_penalty(params, λ)`` added to the loss gives exactly the gradient of the optimizers'
  coupled ``weight_decay=λ`` — same training, the penalty is merely visible in the loss. With
  plain SGD this is also decoupled decay of ``lr · λ`` per step; with Adam it is not: Adam divides
  the penalty's gradient by sqrt(v̂) like any other, AdamW shrinks θ directly (Loshchilov & Hutter,
  2019), so ``AdamW(weight_decay=λ)`` has no loss-penalty equivalent.
* ``l1_penalty(params, λ)`` in the loss minimizes the same objective as the optimizers' ``l1=λ``
  (the Lasso), but its subgradient ``λ·sign(θ)`` makes weights jitter around zero and never reach
  it. The proximal step (soft-thresholding; ISTA for full-batch SGD) lands on exact zeros, so it
  selects features. Use ``l1=`` for sparsity, ``l1_penalty`` to report or to differentiate the
  penalty.
* Decay belongs on weights, not on biases (which shift, not scale) nor on normalization scales
  and shifts (which a norm makes scale-free anyway): :func:`param_groups` splits a model's
  parameters so that an optimizer decays only the first group.

Differences: the ½ in ``l2_penalty`` is the convention that makes ``weight`` the same number as
``weight_decay`` (PyTorch has no penalty helper; Keras' ``L2(l2)`` regularizer is ``l2 · Σθ²``
without the ½, i.e. ``weight_decay = 2·l2``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from gradwise import checks

__all__ = [
    "default_no_decay",
    "is_norm_layer",
    "l1_penalty",
    "l2_penalty",
    "param_groups",
    "weight_params",
]

_NORM_LAYERS = tuple(
    c
    for c in (
        getattr(nn.modules.batchnorm, "_NormBase", None),  # BatchNorm*, InstanceNorm*
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if isinstance(c, type)
)


def is_norm_layer(module: nn.Module) -> bool:
    """True for PyTorch's normalization layers (BatchNorm, LayerNorm, GroupNorm, InstanceNorm,
    RMSNorm, LocalResponseNorm), and for any module whose class name ends with ``Norm`` or
    contains ``BatchNorm`` (user-written norms)."""
    name = type(module).__name__
    return isinstance(module, _NORM_LAYERS) or name.endswith("Norm") or "BatchNorm" in name


def _tensors(owner: str, params: object) -> list[Tensor]:
    if isinstance(params, Tensor):
        return [params]
    if isinstance(params, nn.Module):
        checks.refuse(
            owner,
            "params",
            "a tensor or an iterable of tensors (e.g. model.parameters())",
            type(params).__name__,
            TypeError,
        )
    try:
        items = list(params)  # type: ignore[call-overload]
    except TypeError:
        checks.refuse(owner, "params", "a tensor or an iterable of tensors", params, TypeError)
    for i, p in enumerate(items):
        if not isinstance(p, Tensor):
            checks.refuse(owner, f"params[{i}]", "a torch.Tensor", type(p).__name__, TypeError)
    return items


def _sum(params: list[Tensor], term: Callable[[Tensor], Tensor]) -> Tensor:
    if not params:
        return torch.zeros(())
    total = term(params[0])
    for p in params[1:]:
        total = total + term(p).to(total.device)
    return total


def l1_penalty(params: Tensor | Iterable[Tensor], weight: float) -> Tensor:
    """The L1 loss term ``weight · Σ |θ|`` over ``params`` (a differentiable scalar tensor).

    Args:
        params: a tensor or an iterable of tensors, e.g. ``model.parameters()`` or the decayed
            group of :func:`param_groups` (``groups[0]["params"]``).
        weight: the strength λ, >= 0.

    Its gradient is ``weight · sign(θ)`` (0 at θ = 0). Added to a loss it gives the Lasso
    objective but, with (stochastic) gradient descent, no exact zeros; for those, give the
    optimizer ``l1=weight`` instead (proximal step, see the module docstring).

    >>> w = torch.tensor([1.0, -2.0, 0.0])
    >>> l1_penalty(w, 0.1)
    tensor(0.3000)
    """
    weight = checks.at_least("l1_penalty", "weight", weight, 0.0)
    return weight * _sum(_tensors("l1_penalty", params), lambda p: p.abs().sum())


def l2_penalty(params: Tensor | Iterable[Tensor], weight: float) -> Tensor:
    """The L2 loss term ``weight / 2 · Σ θ²`` over ``params`` (a differentiable scalar tensor).

    Args:
        params: a tensor or an iterable of tensors.
        weight: the strength λ, >= 0.

    Its gradient is ``weight · θ``: adding it to the loss is exactly the optimizers' coupled
    ``weight_decay=weight`` (``torch.optim.SGD``/``Adam``/... and gradwise's), and with plain SGD
    also a decoupled shrink ``θ ← θ·(1 − lr·weight)``. It is not AdamW's decoupled decay.

    Differences: Keras' ``regularizers.L2(l2)`` omits the ½ (its ``l2`` is half our ``weight``).

    >>> l2_penalty(torch.tensor([1.0, -2.0]), 0.1)
    tensor(0.2500)
    """
    weight = checks.at_least("l2_penalty", "weight", weight, 0.0)
    return 0.5 * weight * _sum(_tensors("l2_penalty", params), lambda p: p.pow(2).sum())


NoDecay = Callable[[str, Tensor, nn.Module], bool]


def default_no_decay(name: str, param: Tensor, module: nn.Module) -> bool:
    """The default rule of :func:`param_groups`: no decay for tensors of at most one dimension
    (biases, norm scales, PReLU slopes, ...) nor for any parameter of a normalization layer."""
    return param.dim() <= 1 or is_norm_layer(module)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    no_decay: str | NoDecay | Iterable[str] = "auto",
) -> list[dict]:
    """Split ``model``'s parameters into a decayed and an undecayed optimizer param group.

    .. code-block:: text

        [{"params": [weights...],            "weight_decay": weight_decay},
         {"params": [biases, norm params...], "weight_decay": 0.0}]

    Pass the list to any optimizer in place of ``model.parameters()``; its ``weight_decay`` then
    applies, coupled (SGD, Adam) or decoupled (AdamW), to the first group only. Empty groups are
    left out; a parameter shared by several modules appears once (where first registered).

    Args:
        model: any ``nn.Module``.
        weight_decay: the decay of the first group, >= 0.
        no_decay: which parameters to spare:
            ``"auto"`` (default) — every parameter of at most one dimension (biases, norm
            scales) and every parameter of a normalization layer (:func:`is_norm_layer`);
            a callable ``(name, param, module) -> bool`` (``module`` owns the parameter);
            or glob patterns matched against the qualified names (``["*.bias", "embed.*"]``).

    Example::

        opt = gradwise.optim.AdamW(param_groups(model, 0.01), lr=1e-3)

    Differences: Keras' ``exclude_from_weight_decay`` and optax's ``mask`` select the same way;
    PyTorch leaves it to the user.
    """
    owner = "param_groups"
    if not isinstance(model, nn.Module):
        checks.refuse(owner, "model", "a torch.nn.Module", type(model).__name__, TypeError)
    weight_decay = checks.at_least(owner, "weight_decay", weight_decay, 0.0)
    if isinstance(no_decay, str):
        checks.choice(owner, "no_decay", no_decay, ("auto",))
        rule: NoDecay = default_no_decay
    elif callable(no_decay):
        rule = no_decay
    else:
        try:
            patterns = list(no_decay)
        except TypeError:
            checks.refuse(
                owner, "no_decay", "'auto', a callable or glob patterns", no_decay, TypeError
            )
        for i, pattern in enumerate(patterns):
            if not isinstance(pattern, str):
                checks.refuse(owner, f"no_decay[{i}]", "a string", pattern, TypeError)

        def rule(name: str, param: Tensor, module: nn.Module) -> bool:
            return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)

    decay, spare = _split(model, rule)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": spare, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def weight_params(model: nn.Module) -> list[Tensor]:
    """The parameters of ``model`` that count as weights: those :func:`default_no_decay` does not
    spare (the group :func:`param_groups` decays), each once, in registration order. What weight
    decay, ``l1=`` and an L1/L2 penalty apply to."""
    if not isinstance(model, nn.Module):
        what = type(model).__name__
        checks.refuse("weight_params", "model", "a torch.nn.Module", what, TypeError)
    return _split(model, default_no_decay)[0]


def _split(model: nn.Module, rule: NoDecay) -> tuple[list[Tensor], list[Tensor]]:
    """``model``'s parameters as (decayed, spared) per ``rule``; a shared one once, where first
    registered."""
    decay: list[Tensor] = []
    spare: list[Tensor] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{param_name}" if module_name else param_name
            (spare if rule(name, param, module) else decay).append(param)
    return decay, spare

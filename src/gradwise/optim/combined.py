"""Several optimizers stepped as one; Muon for the hidden matrices with AdamW for the rest.

Muon orthogonalizes the update of a matrix, so it takes only 2-D parameters, and its authors
and torch's documentation advise AdamW for the others (biases, norms, embeddings, the input and
output layers). A training loop, a scheduler and a checkpoint want one optimizer:
:class:`Combined` is that one, over optimizers that each own some of the parameters, and
:class:`MuonWithAdamW` builds the usual pair from param groups marked ``use_muon``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradwise import checks
from gradwise.optim.adam import AdamW
from gradwise.optim.muon import Muon


class Combined(torch.optim.Optimizer):
    """Optimizers that own disjoint parameters, stepped as one ``torch.optim.Optimizer``.

    ``param_groups`` is every optimizer's groups (the same dicts: a scheduler that sets a
    group's ``lr`` sets it for the optimizer that owns the group); ``step(closure)`` evaluates
    the closure once, then steps each optimizer in turn; ``zero_grad`` zeroes each;
    ``state_dict`` holds each one's state dict, and ``load_state_dict`` gives each its own
    back. ``state`` reads every optimizer's state. A group is added to one of the optimizers,
    not to this one.

    >>> import torch
    >>> from gradwise.optim import SGD, Combined
    >>> a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    >>> both = Combined(SGD([a], lr=0.1), SGD([b], lr=0.2))
    >>> len(both.param_groups)  # each member's groups, the same dicts
    2
    """

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        if not optimizers:
            raise ValueError("Combined: give at least one optimizer; received none")
        for i, opt in enumerate(optimizers):
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(
                    f"Combined: optimizers[{i}] must be a torch.optim.Optimizer; received "
                    f"{type(opt).__name__}"
                )
        self.optimizers = list(optimizers)
        self._built = False
        # torch's constructor checks that no parameter is in two groups, and keeps the dicts
        super().__init__([g for opt in self.optimizers for g in opt.param_groups], {})
        self._built = True

    @property
    def state(self) -> dict:
        """Every optimizer's per-parameter state, read together."""
        merged: dict = {}
        for opt in getattr(self, "optimizers", ()):
            merged.update(opt.state)
        return merged

    @state.setter
    def state(self, value) -> None:  # torch's constructor sets one; each optimizer keeps its own
        pass

    def add_param_group(self, param_group: dict) -> None:
        if self._built:
            raise ValueError(
                "Combined: add a param group to one of its optimizers (combined.optimizers[i]."
                "add_param_group), not to the combination: which rule would update it?"
            )
        super().add_param_group(param_group)
        # torch replaced the group's params with a list of its own: the owner's view of it
        # stays the same dict, so nothing else changes

    def step(self, closure=None):
        """Evaluate ``closure`` once (with gradients on), then step every optimizer."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
        if not isinstance(saved, list) or len(saved) != len(self.optimizers):
            count = len(saved) if isinstance(saved, list) else "no"
            raise ValueError(
                f"Combined: state_dict must hold {len(self.optimizers)} optimizers' state "
                f"dicts under 'optimizers' (one per optimizer, in order); it holds {count}"
            )
        for opt, sd in zip(self.optimizers, saved):
            opt.load_state_dict(sd)

    def train(self) -> None:
        """Schedule-Free members switch to their training weights (others have no modes)."""
        for opt in self.optimizers:
            if callable(getattr(opt, "train", None)):
                opt.train()

    def eval(self) -> None:
        """Schedule-Free members switch to their averaged weights (others have no modes)."""
        for opt in self.optimizers:
            if callable(getattr(opt, "eval", None)):
                opt.eval()


class MuonWithAdamW(Combined):
    """Muon for the param groups marked ``use_muon=True`` (2-D hidden-layer weights), AdamW for
    the others, with one learning rate and weight decay for both.

    Muon uses Moonshot's ``adjust_lr_fn="match_rms_adamw"``: its update has AdamW's RMS
    (``0.2·√max(A, B)``), so that AdamW's rate and decay serve both ("Muon is Scalable for LLM
    Training", Liu et al., 2025). Keyword arguments: ``momentum``, ``nesterov`` and
    ``ns_dtype`` are Muon's, ``betas`` and ``eps`` AdamW's; ``lr``, ``weight_decay`` and ``l1``
    both's (a group's own values win, as in any torch optimizer). ``ns_dtype=None`` (the
    default) orthogonalizes in float32 on the CPU, where bfloat16 matrix products are ~35×
    slower without bfloat16 instructions (digits' MLP: 24 s against ~1 s for 20 epochs), and
    in bfloat16, as torch, elsewhere.

    >>> import torch
    >>> hidden, bias = torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.ones(4))
    >>> opt = MuonWithAdamW([{"params": [hidden], "use_muon": True}, {"params": [bias]}])
    >>> tuple(type(o).__name__ for o in opt.optimizers)
    ('Muon', 'AdamW')
    """

    def __init__(
        self,
        params,
        lr: float | Tensor = 1e-3,
        weight_decay: float = 1e-2,
        momentum: float = 0.95,
        nesterov: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        *,
        l1: float = 0.0,
        ns_dtype: torch.dtype | None = None,
    ) -> None:
        groups = list(params)
        if not groups or not all(isinstance(g, dict) for g in groups):
            raise TypeError(
                "MuonWithAdamW: params must be param groups (dicts), those for Muon marked "
                "use_muon=True; received "
                + (type(groups[0]).__name__ + "s" if groups else "nothing")
            )
        for g in groups:
            checks.flag("MuonWithAdamW", "use_muon", g.get("use_muon", False))
        muon, adam = [], []
        for g in groups:
            (muon if g.get("use_muon") else adam).append(
                {k: v for k, v in g.items() if k != "use_muon"}
            )
        common = dict(lr=lr, weight_decay=weight_decay, l1=l1)
        members = []
        if muon:
            if ns_dtype is None:
                first = muon[0]["params"]
                first = first if isinstance(first, Tensor) else next(iter(first), None)
                cpu = first is None or first.device.type == "cpu"
                ns_dtype = torch.float32 if cpu else torch.bfloat16
            muon_args = dict(momentum=momentum, nesterov=nesterov, ns_dtype=ns_dtype)
            members.append(Muon(muon, **common, **muon_args, adjust_lr_fn="match_rms_adamw"))
        if adam:
            members.append(AdamW(adam, **common, betas=betas, eps=eps))
        super().__init__(*members)

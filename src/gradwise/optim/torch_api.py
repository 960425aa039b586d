"""What torch.optim's API asks of an optimizer besides its math, in one place: torch's words
for bad arguments, its step hooks and profiler range, the Dynamo wrapping of its methods, and
the devices its ``capturable`` and ``fused`` modes take. :mod:`gradwise.optim.base` builds on it.
"""

from __future__ import annotations

import functools
import sys

import torch
from torch import Tensor
from torch.optim import optimizer as torch_optimizer

#: The words of torch.optim's own argument checks, which code written against torch (PyTorch's
#: optimizer test suite among it) looks for: gradwise's message adds them in parentheses.
TORCH_WORDS = {
    "lr": "Invalid learning rate: {}",
    "eps": "Invalid epsilon value: {}",
    "momentum": "Invalid momentum value: {}",
    "weight_decay": "Invalid weight_decay value: {}",
    "betas[0]": "Invalid beta parameter at index 0: {}",
    "betas[1]": "Invalid beta parameter at index 1: {}",
    "lr_decay": "Invalid lr_decay value: {}",
    "initial_accumulator_value": "Invalid initial_accumulator_value value: {}",
    "alpha": "Invalid alpha value: {}",
}


def torch_words(name: str, value: object) -> str | None:
    """What torch.optim says of a bad ``name`` (see :data:`TORCH_WORDS`)."""
    words = TORCH_WORDS.get(name)
    return None if words is None else words.format(value)


def unless_dynamo(method):
    """``torch.optim.Optimizer``'s ``method``, called plainly until Dynamo is imported.

    PyTorch wraps ``add_param_group``, ``state_dict``, ``load_state_dict`` and ``zero_grad`` in
    ``torch._disable_dynamo``, whose first call imports ``torch._dynamo``: 1.3 s, a quarter of
    the wall time of ``gradwise train`` on digits. The wrapper only matters while Dynamo traces,
    which needs Dynamo imported; until then the method runs unwrapped, and afterwards as PyTorch
    wraps it."""
    plain = getattr(method, "__wrapped__", method)

    @functools.wraps(plain)
    def call(self, *args, **kwargs):
        if "torch._dynamo" in sys.modules:
            return method(self, *args, **kwargs)
        return plain(self, *args, **kwargs)

    return call


torch_state_dict = unless_dynamo(torch.optim.Optimizer.state_dict)
torch_load_state_dict = unless_dynamo(torch.optim.Optimizer.load_state_dict)
torch_zero_grad = unless_dynamo(torch.optim.Optimizer.zero_grad)


def with_hooks(step):
    """``step`` wrapped as ``torch.optim`` wraps it — step pre-hooks (global, then the
    optimizer's; either may replace the arguments), the step, ``_optimizer_step_code()``, post
    hooks (the optimizer's, then global) — but with its ``record_function`` range opened only
    while a profiler is running. PyTorch opens the range on every step, profiler or not, which
    costs ~20 µs a step (Adam on a 17K-parameter MLP: 87 µs a step wrapped, 65 µs without)."""

    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        if torch._C._autograd._profiler_enabled():
            name = f"Optimizer.step#{type(self).__name__}.step"
            with torch.autograd.profiler.record_function(name):
                return _runwith_hooks(step, self, args, kwargs)
        return _runwith_hooks(step, self, args, kwargs)

    return wrapper


def _runwith_hooks(step, self, args: tuple, kwargs: dict):
    global_pre = torch_optimizer._global_optimizer_pre_hooks
    for hook in (*global_pre.values(), *self._optimizer_step_pre_hooks.values()):
        result = hook(self, args, kwargs)
        if result is not None:
            if not (isinstance(result, tuple) and len(result) == 2):
                raise RuntimeError(
                    f"{step} must return None or a tuple of (new_args, new_kwargs), "
                    f"but got {result}."
                )
            args, kwargs = result
    out = step(self, *args, **kwargs)
    self._optimizer_step_code()
    global_post = torch_optimizer._global_optimizer_post_hooks
    for hook in (*self._optimizer_step_post_hooks.values(), *global_post.values()):
        hook(self, args, kwargs)
    return out


#: device types whose parameters ``capturable=True`` takes, as torch.optim's (CUDA graphs)
CAPTURABLE_DEVICE_TYPES = ["cuda", "xpu", "hpu", "privateuseone", "xla"]


def check_capturable(param: Tensor, step: Tensor | None) -> None:
    """``capturable=True`` on a device without graph capture (the CPU) is refused at step()
    as torch.optim refuses it: an AssertionError with its words."""
    devices = {param.device.type} | ({step.device.type} if step is not None else set())
    if len(devices) != 1 or param.device.type not in CAPTURABLE_DEVICE_TYPES:
        raise AssertionError(
            "If capturable=True, params and state_steps must be on supported devices: "
            f"{CAPTURABLE_DEVICE_TYPES}; received a parameter on {param.device.type}"
            + (f" and its step on {step.device.type}" if step is not None else "")
        )


#: device types whose parameters ``fused=True`` takes, as torch.optim's fused implementations
FUSED_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu", "hpu", "mtia")


def check_fusable(param: Tensor) -> None:
    """``fused=True`` on parameters no fused update serves (a meta tensor, an integer one) is
    refused as torch.optim refuses it, with its words."""
    if param.device.type not in FUSED_DEVICE_TYPES or not param.is_floating_point():
        raise RuntimeError(
            "`fused=True` requires all the params to be floating point Tensors of supported "
            f"devices: {list(FUSED_DEVICE_TYPES)}; received a {param.dtype} parameter on "
            f"{param.device.type}"
        )


def graph_capture_health_check(optimizer: torch.optim.Optimizer) -> None:
    """torch.optim's check that a step being recorded in a CUDA graph is capturable, with its
    words (named ``_cuda_graph_capture_health_check`` in some releases and
    ``_accelerator_graph_capture_health_check`` in others, torch 2.11's)."""
    check = getattr(optimizer, "_cuda_graph_capture_health_check", None)
    (check or optimizer._accelerator_graph_capture_health_check)()


def zero_in_place(grad: Tensor) -> None:
    """``grad`` zeroed where it lies, as ``torch.optim.Optimizer.zero_grad(False)`` zeroes it."""
    if grad.grad_fn is not None:
        grad.detach_()
    else:
        grad.requires_grad_(False)
    grad.zero_()


def dense(name: str, takes_sparse: bool, grad: Tensor, group: dict) -> Tensor:
    """A sparse gradient (``nn.Embedding(sparse=True)``) as the dense one it stands for, where
    torch's class ``name`` takes sparse gradients (duplicate indices add up, as in torch).
    Every element it leaves out is a zero gradient, so the update is torch's to float
    rounding; the dense copy lives only during the step. Refused as torch refuses it."""
    if not takes_sparse:
        hint = ", please consider SparseAdam instead" if "Adam" in name else ""
        raise RuntimeError(f"{name} does not support sparse gradients{hint}")
    if group.get("weight_decay", 0) != 0:
        raise RuntimeError(
            f"{name}: weight_decay option is not compatible with sparse gradients; "
            f"received weight_decay={group['weight_decay']}"
        )
    return grad.to_dense()

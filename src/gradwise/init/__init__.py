"""Weight initialization: one variance-scaling primitive, its named presets, and ``init_model``.

Every initializer draws the entries of a weight tensor ``W`` independently with mean 0 and

.. code-block:: text

    Var(W) = scale / n,     n = fan_in | fan_out | (fan_in + fan_out) / 2     (mode)

    fan_in  = W.shape[1] · receptive_field,   fan_out = W.shape[0] · receptive_field,
    receptive_field = prod(W.shape[2:])       (1 for a Linear weight, k for a Conv1d kernel k)

from one of three distributions of that variance (``std = sqrt(scale / n)``)::

    normal            N(0, std²)
    uniform           U(−bound, bound),  bound = sqrt(3) · std
    truncated_normal  N(0, σ²) cut at ±2σ,  σ = std / 0.87962566...  (so the std is exactly std)

The presets are this primitive with a fixed ``scale`` and ``mode``:

=================  ==========  =========  ==============================================
preset             scale       mode       result
=================  ==========  =========  ==============================================
``xavier_*_``      gain²       fan_avg    std = gain · sqrt(2 / (fan_in + fan_out)),
                                          bound = gain · sqrt(6 / (fan_in + fan_out))
``he_*_``          gain²       fan_in     std = gain / sqrt(fan_in); relu: sqrt(2 / fan_in)
``lecun_*_``       1           fan_in     std = 1 / sqrt(fan_in)
=================  ==========  =========  ==============================================

plus ``orthogonal_`` (a random orthogonal matrix times ``gain``) and ``zeros_``. ``gain`` holds the
standard gains of the activations (the values of :func:`torch.nn.init.calculate_gain`).

:func:`init_model` initializes every ``Linear``/``Conv1d``/``Conv2d``/``Conv3d`` layer of a model
from the activation that follows it and returns an :class:`InitReport` that prints as a table.
``python -m gradwise.init`` prints how the activations' variance travels through a deep MLP with
these initializations and with naive ones.

The code lives in three modules: :mod:`gradwise.init.scaling` (fans, gains, the primitive and its
presets), :mod:`gradwise.init.model` (``init_model`` and how it finds each layer's activation) and
:mod:`gradwise.init.propagation` (the variance through depth, the table above).

Differences
-----------
* PyTorch calls He "kaiming" (``kaiming_normal_``) and Xavier "xavier"; Keras calls Xavier "glorot"
  (``glorot_uniform``) and He "he". The numbers are the same.
* Keras' ``*_normal`` presets draw from a truncated normal; gradwise's (like PyTorch's) draw
  from the normal itself. Pass ``distribution="truncated_normal"`` to :func:`variance_scaling_`
  for Keras'.
* Keras gives a 1-D tensor the fans ``(n, n)``; gradwise, like PyTorch, refuses tensors with fewer
  than two dimensions (a bias has no fan; use :func:`zeros_`).
* PyTorch's ``kaiming_*_`` default is ``nonlinearity="leaky_relu", a=0`` (the ReLU gain); gradwise's
  ``he_*_`` default is ``nonlinearity="relu"`` (same numbers), and ``a=None`` means the activation's
  own default slope (0.01 for leaky_relu, as :func:`gain`).
* :func:`gain` also knows ``gelu``, ``silu`` and ``elu`` (PyTorch's ``calculate_gain`` refuses
  them): for those, ``gain = 1 / sqrt(E[f(z)²])`` with ``z ~ N(0, 1)``, the rule that gives ReLU its
  sqrt(2): a unit-variance pre-activation keeps unit second moment through the layer.
"""

from gradwise.init.model import SCHEMES as SCHEMES
from gradwise.init.model import InitReport, LayerInit, init_model
from gradwise.init.propagation import Propagation as Propagation
from gradwise.init.propagation import signal_propagation, variance_table
from gradwise.init.scaling import DISTRIBUTIONS as DISTRIBUTIONS
from gradwise.init.scaling import MODES as MODES
from gradwise.init.scaling import NONLINEARITIES as NONLINEARITIES
from gradwise.init.scaling import (
    fans,
    gain,
    he_normal_,
    he_uniform_,
    lecun_normal_,
    lecun_uniform_,
    orthogonal_,
    variance_scaling_,
    xavier_normal_,
    xavier_uniform_,
    zeros_,
)

__all__ = [
    "InitReport",
    "LayerInit",
    "fans",
    "gain",
    "he_normal_",
    "he_uniform_",
    "init_model",
    "lecun_normal_",
    "lecun_uniform_",
    "orthogonal_",
    "signal_propagation",
    "variance_scaling_",
    "variance_table",
    "xavier_normal_",
    "xavier_uniform_",
    "zeros_",
]

"""gradwise's optimizers: drop-in for ``torch.optim``, one rule per algorithm on a flat engine.

==========  ===============================  ==========================
class       rule (the math, once)            PyTorch namesake or reference
==========  ===============================  ==========================
SGD         :func:`sgd.sgd`                  ``torch.optim.SGD``
Adagrad     :func:`adagrad.adagrad`          ``torch.optim.Adagrad``
RMSprop     :func:`rmsprop.rmsprop`          ``torch.optim.RMSprop``
Adam        :func:`adam.adam`                ``torch.optim.Adam``
AdamW       :func:`adam.adam`                ``torch.optim.AdamW``
NAdam       :func:`nadam.nadam`              ``torch.optim.NAdam``
RAdam       :func:`radam.radam`              ``torch.optim.RAdam``
Adamax      :func:`adamax.adamax`            ``torch.optim.Adamax``
Adadelta    :func:`adadelta.adadelta`        ``torch.optim.Adadelta``
Rprop       :func:`rprop.rprop`              ``torch.optim.Rprop``
ASGD        :func:`asgd.asgd`                ``torch.optim.ASGD``
Adafactor   :func:`adafactor.adafactor`      ``torch.optim.Adafactor``
Muon        :func:`muon.muon`                ``torch.optim.Muon``
SparseAdam  :func:`sparse_adam.sparse_adam`  ``torch.optim.SparseAdam``
LBFGS       :func:`lbfgs.lbfgs_direction`    ``torch.optim.LBFGS``
Lion        :func:`lion.lion`                ``lion_pytorch.Lion``
==========  ===============================  ==========================

=================  =======================================  ==================================
class              rule (the math, once)                    reference implementation
=================  =======================================  ==================================
AdamWScheduleFree  :func:`schedulefree.schedulefree_adamw`  ``schedulefree.AdamWScheduleFree``
SGDScheduleFree    :func:`schedulefree.schedulefree_sgd`    ``schedulefree.SGDScheduleFree``
Lamb               :func:`lamb.lamb`                        ``pytorch_optimizer.Lamb``
Prodigy            :func:`prodigy.prodigy`                  ``prodigyopt.Prodigy``
=================  =======================================  ==================================

:class:`Combined` steps several optimizers as one; :class:`MuonWithAdamW` is Muon for the hidden
matrices with AdamW for the other parameters (``gradwise train --optimizer muon``).
"""

from gradwise.optim.adadelta import Adadelta
from gradwise.optim.adafactor import Adafactor
from gradwise.optim.adagrad import Adagrad
from gradwise.optim.adam import Adam, AdamW
from gradwise.optim.adamax import Adamax
from gradwise.optim.asgd import ASGD
from gradwise.optim.base import Optimizer
from gradwise.optim.combined import Combined, MuonWithAdamW
from gradwise.optim.lamb import Lamb
from gradwise.optim.lbfgs import LBFGS
from gradwise.optim.lion import Lion
from gradwise.optim.muon import Muon
from gradwise.optim.nadam import NAdam
from gradwise.optim.prodigy import Prodigy
from gradwise.optim.radam import RAdam
from gradwise.optim.rmsprop import RMSprop
from gradwise.optim.rprop import Rprop
from gradwise.optim.schedulefree import AdamWScheduleFree, SGDScheduleFree
from gradwise.optim.sgd import SGD
from gradwise.optim.sparse_adam import SparseAdam

__all__ = [
    "SGD",
    "Adagrad",
    "RMSprop",
    "Adam",
    "AdamW",
    "NAdam",
    "RAdam",
    "Adamax",
    "Adadelta",
    "Rprop",
    "ASGD",
    "Lion",
    "Adafactor",
    "Muon",
    "SparseAdam",
    "LBFGS",
    "AdamWScheduleFree",
    "SGDScheduleFree",
    "Lamb",
    "Prodigy",
    "Combined",
    "MuonWithAdamW",
    "Optimizer",
]

"""gradwise: train neural networks well and fast on PyTorch.

Public modules: :mod:`gradwise.optim`, :mod:`gradwise.schedules`, :mod:`gradwise.init`,
:mod:`gradwise.regularization`, :mod:`gradwise.train`, :mod:`gradwise.lab`.
"""

__version__ = "0.1.0"

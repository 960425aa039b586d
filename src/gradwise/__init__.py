"""gradwise: train neural networks well and fast on PyTorch.

Public modules: :mod:`gradwise.optim`, :mod:`gradwise.schedules`, :mod:`gradwise.init`,
:mod:`gradwise.regularization`, :mod:`gradwise.train`, :mod:`gradwise.lab`.
"""

__version__ = "0.1.0"


def load(source):
    """The trained model of a run folder or of a file written by ``gradwise export`` (``.pt``,
    ``.safetensors``): an ``nn.Module`` in eval mode, rebuilt from its saved configuration
    (:func:`gradwise.train.export.load`).

    >>> import gradwise
    >>> model = gradwise.load("runs/my-run")  # doctest: +SKIP
    """
    # Imported by name when called: modules of every layer import this package (for
    # __version__), so a static import here would put the trainer under them all, and `import
    # gradwise` would import torch.
    import importlib

    return importlib.import_module("gradwise.train.export").load(source)

"""Getting a trained model out: its description, building it again, export and :func:`load`.

A run folder holds ``model.json``, written at train time: the model's description in plain types
(builder and its settings, input shape, number of outputs) and what predictions need (task,
feature and class names, the standardization statistics). :func:`build` makes the model from it,
so the trainer, :func:`load` and ``gradwise predict`` build it the same way.

Export formats (:func:`export`):

- ``pt``: ``{"format": "gradwise-model", "config": <description>, "state_dict": ...}`` written by
  ``torch.save``, loadable with ``torch.load(path, weights_only=True)`` (never a pickled module);
- ``safetensors``: the state_dict through the ``safetensors`` package, the description as JSON in
  its metadata under ``"gradwise"``;
- ``onnx``: ``torch.onnx.export`` (needs ``pip install 'gradwise[onnx]'``) with a dynamic batch
  dimension and the description in the model's metadata under ``"gradwise"``. Its input is the
  standardized features, its output the logits (classification) or standardized targets.

The model a user's ``--model module:function`` or ``--model path/file.py:function`` builds is
made by calling ``function(input_shape, n_outputs)`` (see :func:`user_builder`); the spec string
is saved, and loading imports it again.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import logging
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from gradwise.errors import CheckpointError, ConfigError
from gradwise.train import checkpoint as ckpt
from gradwise.train.models import cnn1d, mlp

#: the file in a run folder that describes its model
MODEL_FILE = "model.json"
#: export formats and their file extensions
FORMATS: dict[str, str] = {"pt": ".pt", "safetensors": ".safetensors", "onnx": ".onnx"}
#: the built-in model builders (any other model is a user's ``module:function``)
BUILDERS = ("mlp", "cnn1d")
#: ``format`` of an exported ``.pt`` file
PT_FORMAT = "gradwise-model"


def describe(config, data) -> dict:
    """The description of the model a :class:`~gradwise.train.config.TrainConfig` trains on
    ``data`` (a :class:`~gradwise.train.data.Dataset`), in plain types."""
    n_classes = data.n_classes if data.task == "classification" else None
    return {
        "model": config.model,
        # None: a setting this model does not take (TrainConfig.resolved leaves it out)
        "hidden": None if config.hidden is None else list(config.hidden),
        "channels": None if config.channels is None else list(config.channels),
        "activation": config.activation,
        "dropout": config.dropout,
        "init": config.init,
        "input_shape": [data.n_features],
        "n_outputs": n_classes or (1 if data.y_train.ndim == 1 else data.y_train.shape[1]),
        "task": data.task,
        "feature_names": None if data.feature_names is None else list(data.feature_names),
        "class_names": _class_names(data) if n_classes else None,
        "scaling": data.scaling(),
    }


def _class_names(data) -> list[str]:
    return list(data.class_names or (str(i) for i in range(data.n_classes)))


def build(description: dict, generator: torch.Generator | None = None) -> nn.Module:
    """The model ``description`` (from :func:`describe`) names, freshly initialized."""
    name = description["model"]
    n_in, n_out = description["input_shape"], description["n_outputs"]
    common = dict(
        activation=description["activation"],
        dropout=description["dropout"],
        init=description["init"],
        generator=generator,
    )
    if name == "mlp":
        return mlp(n_in[0], n_out, hidden=tuple(description["hidden"]), **common)
    if name == "cnn1d":
        return cnn1d(n_in[0], n_out, channels=tuple(description["channels"]), **common)
    if generator is None:
        return call_user_builder(name, tuple(n_in), n_out)
    with torch.random.fork_rng(devices=[]):  # a user's layers draw from the global generator
        torch.manual_seed(generator.initial_seed())
        return call_user_builder(name, tuple(n_in), n_out)


def user_builder(spec: str):
    """The function a ``module:function`` or ``path/to/file.py:function`` spec names.

    The function is called as ``function(input_shape: tuple[int, ...], n_outputs: int)`` and
    returns an ``nn.Module`` that maps a batch ``(rows, *input_shape)`` to ``(rows, n_outputs)``
    (class logits for classification; standardized targets for regression).
    """
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ConfigError(
            f"model must be mlp, cnn1d, module:function or path/to/file.py:function; "
            f"received model={spec!r}"
        )
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise ConfigError(f"model: file {where} does not exist; received model={spec!r}")
        module_name = f"gradwise_user_model_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(module_name)
        if module is None:
            loader = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[module_name] = module
            try:
                loader.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ConfigError(
                f"model: cannot import module {where!r} ({e}; it must be installed or on "
                f"PYTHONPATH, or give path/to/file.py:function); received model={spec!r}"
            ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"model: {where} has no function {name!r}; received model={spec!r}")
    return function


def call_user_builder(spec: str, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """``function(input_shape, n_outputs)`` for the function ``spec`` names, checked."""
    try:
        model = user_builder(spec)(input_shape, n_outputs)
    except TypeError as e:  # not a builder's signature, or a TypeError inside it: said as such
        raise ConfigError(f"model: calling {spec}(input_shape, n_outputs) failed: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model: {spec}(input_shape, n_outputs) must return an nn.Module; it returned "
            f"{type(model).__name__}"
        )
    _check_outputs(model, spec, input_shape, n_outputs)
    return model


def _check_outputs(model: nn.Module, spec: str, input_shape: tuple, n_outputs: int) -> None:
    """A user's model must map ``(rows, *input_shape)`` to ``(rows, n_outputs)``: another
    width trains as another number of classes (and predictions come out misaligned). Checked
    on two rows of zeros, in eval mode and without gradients (nothing of the model changes). A
    model that cannot take zeros of the parameters' dtype (token ids, say) is not checked here:
    its first batch shows what it does."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters(), None)
            like = {} if param is None else {"device": param.device, "dtype": param.dtype}
            out = model(torch.zeros(2, *input_shape, **like))
    except Exception:  # noqa: BLE001 - not ours to judge here (see above)
        return
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_outputs):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"model: {spec}(input_shape, n_outputs={n_outputs}) must map (rows, *input_shape) to "
            f"(rows, {n_outputs}); on 2 rows it gives {got}"
        )


# ------------------------------------------------------------------------------- run folders


def save_description(folder: str | Path, description: dict) -> None:
    """Write ``description`` as ``folder/model.json``."""
    lines = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in description.items())
    ckpt.atomic_write_text(Path(folder) / MODEL_FILE, "{\n" + lines + "\n}\n")


def read_description(folder: str | Path) -> dict:
    """The model description saved in a run folder."""
    folder = Path(folder)
    path = folder / MODEL_FILE
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder (no such run)")
    if not path.exists():
        raise ConfigError(
            f"{folder} has no {MODEL_FILE} (not a gradwise run, or made by an older gradwise: "
            f"`gradwise train --resume {folder}` writes it)"
        )
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"model description {path} is not valid JSON ({e}); "
            f"`gradwise train --resume {folder}` writes it again"
        ) from None
    if not isinstance(description, dict):
        raise ConfigError(
            f"model description {path} is not a JSON object (it holds a "
            f"{type(description).__name__}); `gradwise train --resume {folder}` writes it again"
        )
    return description


def run_weights(folder: str | Path) -> dict:
    """The model's state_dict from a run folder's latest good checkpoint."""
    try:
        return ckpt.load_latest(folder)[0]["model"]
    except CheckpointError as e:
        # load_latest speaks of resuming; here the model is loaded (export, predict, load)
        detail = str(e)
        for prefix in (f"cannot resume from {Path(folder)}: ", "cannot resume: "):
            detail = detail.removeprefix(prefix)
        raise CheckpointError(f"cannot load the model of {folder}: {detail}") from None


def start_from(model: nn.Module, folder: str | Path) -> None:
    """Load the trained weights of run folder ``folder`` into ``model``, refusing a model of
    other shapes with the first difference."""
    saved, here = run_weights(folder), model.state_dict()
    for name in sorted(set(saved) | set(here)):
        theirs, ours = saved.get(name), here.get(name)
        if theirs is None or ours is None or theirs.shape != ours.shape:
            shape = lambda t: "absent" if t is None else tuple(t.shape)  # noqa: E731
            raise ConfigError(
                f"train: init_from={str(folder)!r} holds a model of other shapes: {name} is "
                f"{shape(theirs)} there, {shape(ours)} here; use the same model and data"
            )
    model.load_state_dict(saved)


def from_run(folder: str | Path) -> tuple[nn.Module, dict]:
    """The trained model of a run folder (eval mode) and its description."""
    description = read_description(folder)
    return _with_weights(description, run_weights(folder), folder), description


def _with_weights(description: dict, state_dict: dict, source) -> nn.Module:
    model = build(description)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{source}: the weights do not fit the model ({first})") from None
    return model.eval()


# ------------------------------------------------------------------------------------ export


def export(run: str | Path, format: str, out: str | Path | None = None) -> Path:
    """Write the run folder ``run``'s trained model as ``format`` (pt, safetensors, onnx) to
    ``out`` (default ``run/model.<format>``); returns the path written."""
    if format not in FORMATS:
        raise ConfigError(
            f"export: format must be one of {', '.join(FORMATS)}; received format={format!r}"
        )
    model, description = from_run(run)
    out = Path(out) if out is not None else Path(run) / f"model{FORMATS[format]}"
    if out.is_dir():
        raise ConfigError(f"export: out={str(out)!r} is a folder; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if format == "pt":
        torch.save({"format": PT_FORMAT, "config": description, "state_dict": state}, out)
    elif format == "safetensors":
        from safetensors.torch import save

        # safetensors' save_file creates its file with mode 0600; written here with open() it
        # gets the ordinary permissions (0666 less the umask), as the pt and onnx files do
        out.write_bytes(save(state, metadata={"gradwise": json.dumps(description)}))
    else:
        _export_onnx(model, description, out)
    return out


def _export_onnx(model: nn.Module, description: dict, out: Path) -> None:
    try:
        import onnx
    except ImportError:
        raise ConfigError(
            "export: format='onnx' needs the onnx packages: pip install 'gradwise[onnx]'"
        ) from None
    example = torch.zeros(2, *description["input_shape"])
    batch = torch.export.Dim("batch")
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:  # the exporter reports its progress on stdout and warns about unrelated packages
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                input_names=["x"],
                output_names=["y"],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    proto = program.model_proto
    entry = onnx.StringStringEntryProto(key="gradwise", value=json.dumps(description))
    proto.metadata_props.append(entry)
    onnx.save(proto, str(out))


# -------------------------------------------------------------------------------------- load


def load(source: str | Path) -> nn.Module:
    """The trained model (an ``nn.Module`` in eval mode) of a run folder or an exported
    ``.pt`` / ``.safetensors`` file, rebuilt from its saved description."""
    return load_with_description(source)[0]


def load_with_description(source: str | Path) -> tuple[nn.Module, dict]:
    """:func:`load`, and the model's description (task, names, standardization)."""
    path = Path(source)
    if path.is_dir():
        return from_run(path)
    if not path.is_file():
        raise ConfigError(f"load: {source} is neither a run folder nor a file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if "gradwise" not in metadata:
            raise ConfigError(f"load: {path} has no gradwise model description in its metadata")
        description = json.loads(metadata["gradwise"])
        return _with_weights(description, load_file(str(path)), path), description
    if suffix in (".pt", ".pth"):
        if ckpt.is_checkpoint(path):  # a run's checkpoint.pt: its run folder describes it
            weights = ckpt.load_file(path)["model"]
            description = read_description(path.parent)
            return _with_weights(description, weights, path), description
        try:
            payload = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"load: {path} cannot be read by torch.load ({first})") from None
        if not isinstance(payload, dict) or payload.get("format") != PT_FORMAT:
            raise ConfigError(
                f"load: {path} is not a model exported by `gradwise export --format pt`"
            )
        description = payload["config"]
        return _with_weights(description, payload["state_dict"], path), description
    raise ConfigError(
        f"load: {path} must be a run folder, a .pt or a .safetensors file (an .onnx model "
        "runs in onnxruntime, not in PyTorch); received " + repr(str(source))
    )

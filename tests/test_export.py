"""Getting the model out: gradwise export (pt, safetensors, onnx), gradwise.load."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
from click.testing import CliRunner

import gradwise
from gradwise.cli import main as cli
from gradwise.train.data import load_dataset
from gradwise.train.export import MODEL_FILE


def gradwise_cli(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A short digits run (two epochs, a small MLP)."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    result = gradwise_cli("train", "--epochs", "2", "--hidden", "16", "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    return out


def scaled_test_rows():
    return load_dataset("digits").x_test[:20]


def test_run_folder_describes_its_model(digits_run):
    description = json.loads((digits_run / MODEL_FILE).read_text())
    assert description["model"] == "mlp" and description["hidden"] == [16]
    assert description["input_shape"] == [64] and description["n_outputs"] == 10
    assert description["class_names"] == [str(i) for i in range(10)]
    assert len(description["scaling"]["mean"]) == 64


def test_load_a_run_folder_gives_the_trained_model_in_eval_mode(digits_run):
    from gradwise.train import checkpoint as ckpt

    model = gradwise.load(digits_run)
    assert isinstance(model, torch.nn.Module) and not model.training
    saved = ckpt.load_latest(digits_run)[0]["model"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name])
    assert gradwise.load(digits_run / ckpt.CURRENT).state_dict().keys() == saved.keys()


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_export_and_load_give_the_same_predictions(digits_run, tmp_path, fmt):
    out = tmp_path / f"m.{fmt}"
    result = gradwise_cli("export", digits_run, "--format", fmt, "--out", out)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    x = scaled_test_rows()
    with torch.no_grad():
        assert torch.equal(gradwise.load(out)(x), gradwise.load(digits_run)(x))


def test_exported_pt_is_plain_data_for_torch_load_weights_only(digits_run, tmp_path):
    out = tmp_path / "m.pt"
    assert gradwise_cli("export", digits_run, "--out", out).exit_code == 0  # pt is the default
    payload = torch.load(out, weights_only=True)
    assert payload["format"] == "gradwise-model"
    assert payload["config"]["model"] == "mlp"
    assert set(payload["state_dict"]) == set(gradwise.load(digits_run).state_dict())


def test_export_writes_into_the_run_folder_by_default(digits_run):
    result = gradwise_cli("export", digits_run, "--format", "safetensors")
    assert result.exit_code == 0, result.output
    assert (digits_run / "model.safetensors").is_file()


def test_onnx_export_runs_in_onnxruntime_like_torch(digits_run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    result = gradwise_cli("export", digits_run, "--format", "onnx", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {out} ({out.stat().st_size / 1024:.1f} KiB, onnx)"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = scaled_test_rows()  # 20 rows: the batch dimension is dynamic (exported with 2)
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = gradwise.load(digits_run)(x).numpy()
    assert got.shape == (20, 10)
    assert abs(got - expected).max() < 1e-4
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["gradwise"])["n_outputs"] == 10


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("export", "{tmp}/nope"), r"does not exist"),
        (("export", "{tmp}", "--format", "keras"), r"'keras' is not one of"),
        (("export", "{tmp}"), r"has no model.json"),
    ],
)
def test_export_errors_are_one_line(tmp_path, args, match):
    result = gradwise_cli(*(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and re.search(match, lines[0]), result.output


def test_load_refuses_what_it_cannot_rebuild(tmp_path, digits_run):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not really")
    with pytest.raises(gradwise.errors.ConfigError, match="onnxruntime"):
        gradwise.load(onnx)
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    with pytest.raises(gradwise.errors.ConfigError, match="not a model exported"):
        gradwise.load(plain)
    with pytest.raises(gradwise.errors.ConfigError, match="neither a run folder nor a file"):
        gradwise.load(tmp_path / "missing")


def one_line_error(result, match: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and re.search(match, lines[0]), result.output
    return lines[0]


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "onnx"])
def test_exported_files_have_the_permissions_of_a_plain_file(digits_run, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxscript")
    old = os.umask(0o002)  # not the usual 0o022: a hard-coded 0644 would show too
    try:
        plain = tmp_path / "plain"
        with open(plain, "wb"):
            pass
        out = tmp_path / f"m.{fmt}"
        result = gradwise_cli("export", digits_run, "--format", fmt, "--out", out)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert oct(out.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777) == oct(0o664)


def test_damaged_checkpoints_say_the_model_cannot_be_loaded(digits_run, tmp_path):
    from gradwise.train import checkpoint as ckpt

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    for name in (ckpt.CURRENT, ckpt.PREVIOUS):
        (run / name).write_bytes(b"garbage")
    match = (
        rf"cannot load the model of {re.escape(str(run))}: "
        r".*checkpoint\.pt is not a gradwise checkpoint.*; .*checkpoint\.prev\.pt is not"
    )
    line = one_line_error(gradwise_cli("export", run), rf"^gradwise: error: {match}")
    assert "resume" not in line
    new = tmp_path / "new.csv"
    new.write_text("a,b\n1,2\n")
    one_line_error(gradwise_cli("predict", run, "--data", new), match)
    with pytest.raises(gradwise.errors.CheckpointError, match=match):
        gradwise.load(run)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{x", r"model\.json is not valid JSON \(Expecting property name.*line 1 column 2"),
        ("\xff\xfe", r"model\.json is not valid JSON"),
        ("[1, 2]", r"model\.json is not a JSON object \(it holds a list\)"),
    ],
)
def test_a_corrupt_model_json_is_named_in_one_line(digits_run, tmp_path, text, match):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    (run / MODEL_FILE).write_bytes(text.encode("latin-1"))
    line = one_line_error(gradwise_cli("export", run), rf"^gradwise: error: .*{match}")
    assert str(run / MODEL_FILE) in line and "--resume" in line
    with pytest.raises(gradwise.errors.ConfigError, match=match):
        gradwise.load(run)

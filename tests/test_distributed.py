"""Distributed training (issue 8): DDP over gloo with 2 CPU processes on this machine.

Every test starts real processes through PyTorch's launcher (``python -m torch.distributed.run
--standalone``, which picks a free port) with ``OMP_NUM_THREADS=1``:

* ``torchrun -m gradwise train`` ends with the weights of a one-process run (float rounding),
  dropout and an uneven split of every batch included;
* ``gradwise train --nproc 2`` with a rank killed mid-run: a clear error, the last checkpoint
  loads, and ``--resume`` ends bit-exactly where the uninterrupted 2-process run ends;
* a rank that hangs: the other gives up after ``--dist-timeout`` with a clear error;
* two launchers as two "machines" without a shared disk, with ``--zero``
  (ZeroRedundancyOptimizer): only rank 0's machine gets the run folder, and the weights match
  unsharded training;
* from Python (this file run under the launcher, see ``_worker``): ``fit()`` reads the
  launcher's environment, and in float64 agrees with one process to 1e-12;
  ``ZeroRedundancyOptimizer(params, optimizer_class=gradwise.optim.Adam)`` matches unsharded
  training and its consolidated state loads into a plain optimizer; gradwise's optimizers on
  DTensor parameters sharded by ``fully_shard`` (FSDP2) match unsharded training.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import gradwise.optim as go
from gradwise.train import checkpoint as ckpt
from gradwise.train.config import TrainConfig
from gradwise.train.data import load_dataset
from gradwise.train.loop import fit
from gradwise.train.models import mlp
from gradwise.train.run import run

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this PyTorch build has no torch.distributed with gloo",
)

#: digits, a small MLP with dropout; batches of 45 split 23/22 between 2 ranks, the last one 34
ARGS = ["--hidden", "32,32", "--dropout", "0.2", "--epochs", "3", "--batch-size", "45"]
ARGS += ["--lr", "0.01", "--no-progress"]
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
FLOAT = dict(rtol=1e-4, atol=1e-5)  # one process vs two: the same sums in another order


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADWISE_", "TORCHELASTIC"))}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="100", **extra)
    return env


def _run(cmd: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=240
    )


def gradwise_train(*args: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "gradwise", "train", *args], cwd, **env)


def state(folder: Path) -> dict:
    return ckpt.load_file(folder / ckpt.CURRENT)


def errors(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("gradwise: error: ")]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("one") / "run"
    config = TrainConfig(hidden=(32, 32), dropout=0.2, epochs=3, batch_size="45", lr=0.01)
    run(config, out, progress=False, plots=False)
    return state(out)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[dict, subprocess.CompletedProcess, Path]:
    """``torchrun --nproc-per-node 2 -m gradwise train`` with the default run folder name."""
    cwd = tmp_path_factory.mktemp("two")
    proc = _run([*LAUNCH, "-m", "gradwise", "train", *ARGS], cwd)
    assert proc.returncode == 0, proc.stderr
    (folder,) = (cwd / "runs").iterdir()  # both ranks used rank 0's name
    return state(folder), proc, folder


def test_two_processes_end_with_the_weights_of_one(one_process, two_processes):
    two, proc, folder = two_processes
    for name, value in one_process["model"].items():
        torch.testing.assert_close(two["model"][name], value, **FLOAT)
    for key, value in one_process["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(
                two["optimizer"]["state"][key][name], value[name], rtol=1e-3, atol=1e-7
            )
    assert two["step"] == one_process["step"] == 3 * 29
    # epoch metrics summed over the ranks: those of one process
    rows1, rows2 = one_process["history"]["epochs"], two["history"]["epochs"]
    for r1, r2 in zip(rows1, rows2, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-4), key
    steps1 = [s["loss"] for s in one_process["history"]["steps"]]
    steps2 = [s["loss"] for s in two["history"]["steps"]]
    assert steps2 == pytest.approx(steps1, rel=1e-4)
    # rank 0 alone printed and wrote; the run folder remembers the process count
    assert proc.stdout.count("gradwise train") == 1, proc.stdout
    assert "nproc = 2" in (folder / "config.toml").read_text()
    assert len(two["rng"]["ranks"]) == 2
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint.prev.pt",
        "checkpoint.pt",
        "config.toml",
        "confusion.png",
        "curves.png",
        "history.jsonl",
        "metrics.csv",
        "model.json",
    ]


def test_a_killed_rank_stops_the_run_clearly_and_resume_is_exact(two_processes, tmp_path):
    """``--nproc 2``: rank 1 dies (SIGKILL) when epoch 2 starts; resume on the remembered 2
    processes ends bit-exactly with the uninterrupted run (started with torchrun)."""
    out = tmp_path / "run"
    started = time.monotonic()
    proc = gradwise_train(
        *ARGS,
        "--nproc",
        "2",
        "--out",
        str(out),
        cwd=tmp_path,
        GRADWISE_TEST_DISTRIBUTED_FAULT="1:2:kill",
    )
    assert proc.returncode == 2
    assert time.monotonic() - started < 120
    last = errors(proc.stderr)[-1]
    assert "rank 1 of the distributed run was killed by SIGKILL" in last, proc.stderr
    assert f"continue with: gradwise train --resume {out}" in last
    assert state(out)["epoch"] == 1  # the last checkpoint is whole
    assert not list(out.glob(ckpt.TMP_PREFIX + "*"))

    done = gradwise_train("--resume", str(out), "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    resumed, (reference, _, _) = state(out), two_processes
    assert resumed["epoch"] == 3
    for name, value in reference["model"].items():
        assert torch.equal(resumed["model"][name], value), name
    for key, value in reference["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(resumed["optimizer"]["state"][key][name], tensor)


def test_a_hanging_rank_is_given_up_after_the_timeout(tmp_path):
    out = tmp_path / "run"
    started = time.monotonic()
    proc = gradwise_train(
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--no-progress",
        "--nproc",
        "2",
        "--dist-timeout",
        "8",  # more than the ranks' start-up skew on a busy machine
        "--out",
        str(out),
        cwd=tmp_path,
        GRADWISE_TEST_DISTRIBUTED_FAULT="1:2:hang",
    )
    assert proc.returncode == 2
    assert time.monotonic() - started < 90
    (line,) = errors(proc.stderr)
    assert "rank 0 lost contact with the other processes" in line
    assert "within the 8 s timeout" in line and "Timed out" in line
    assert f"the last checkpoint (epoch 1) is kept in {out / ckpt.CURRENT}" in line
    assert f"continue with: gradwise train --resume {out}" in line
    assert state(out)["epoch"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_launchers(tmp_path: Path, port: str, args: list[str]) -> str:
    """``"ok"``, or what went wrong: both launchers' stderr (the other one is then stopped)."""
    procs = []
    for node in (0, 1):
        rendezvous = ["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1"]
        rendezvous += ["--master-addr", "localhost", "--master-port", port]
        cmd = [*LAUNCH[:3], *rendezvous, "-m", "gradwise", "train", *args]
        log = open(tmp_path / f"node{node}.log", "w+")  # noqa: SIM115 - closed below
        procs.append(
            (subprocess.Popen(cmd, cwd=tmp_path / f"node{node}", env=_env(), stderr=log), log)
        )
    deadline = time.monotonic() + 240
    while any(p.poll() is None for p, _ in procs) and time.monotonic() < deadline:
        if any(p.poll() not in (None, 0) for p, _ in procs):
            break  # one failed: the other would wait for it
        time.sleep(0.1)
    ends = []
    for p, log in procs:
        if p.poll() is None:
            p.kill()
        code = p.wait()
        log.seek(0)
        ends.append(f"node {len(ends)}: exit code {code}\n{log.read()[-3000:]}")
        log.close()
    return "ok" if all(p.returncode == 0 for p, _ in procs) else "\n".join(ends)


def test_two_machines_without_a_shared_disk_and_zero_match_unsharded(two_processes, tmp_path):
    """Two launchers, one per "machine" (static rendezvous: node 0 holds rank 0), each in its
    own folder; ``--zero`` shards the optimizer state. Only node 0 gets the run folder, and the
    weights are those of unsharded training."""
    for attempt in range(3):  # a new port if another process took ours meanwhile
        for node in (0, 1):
            shutil.rmtree(tmp_path / f"node{node}", ignore_errors=True)
            (tmp_path / f"node{node}").mkdir()
        outcome = _two_launchers(tmp_path, str(_free_port()), [*ARGS, "--zero"])
        if outcome == "ok" or "address already in use" not in outcome.lower() or attempt == 2:
            break
    assert outcome == "ok", outcome
    assert not list((tmp_path / "node1").iterdir())
    (out,) = (tmp_path / "node0" / "runs").iterdir()
    assert "zero = true" in (out / "config.toml").read_text()
    sharded, (reference, _, _) = state(out), two_processes
    for name, value in reference["model"].items():
        torch.testing.assert_close(sharded["model"][name], value, rtol=1e-6, atol=1e-7)
    # the consolidated state is the whole optimizer's, in PyTorch's layout
    assert sharded["optimizer"]["state"].keys() == reference["optimizer"]["state"].keys()
    for key, value in reference["optimizer"]["state"].items():
        for name, tensor in value.items():
            torch.testing.assert_close(sharded["optimizer"]["state"][key][name], tensor)


def test_cli_refuses_nproc_under_a_launcher_and_a_batch_smaller_than_the_world(tmp_path):
    proc = gradwise_train("--nproc", "2", cwd=tmp_path, WORLD_SIZE="2", RANK="0")
    (line,) = errors(proc.stderr)
    assert proc.returncode == 2 and "--nproc starts the processes itself" in line
    proc = gradwise_train("--nproc", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "--nproc" in errors(proc.stderr)[0]
    proc = gradwise_train("--nproc", "3", "--batch-size", "2", cwd=tmp_path)
    (line,) = errors(proc.stderr)
    assert proc.returncode == 2 and "must be at least --nproc (3)" in line
    assert not (tmp_path / "runs").exists()  # refused before anything was written


# ------------------------------------------------------------------- from Python, under torchrun

#: gradwise optimizers tried on FSDP2's DTensor parameters
FSDP2_OPTIMIZERS = {
    "sgd-momentum": lambda p: go.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adagrad": lambda p: go.Adagrad(p, lr=0.05),
    "rmsprop": lambda p: go.RMSprop(p, lr=1e-3, momentum=0.5),
    "adam": lambda p: go.Adam(p, lr=1e-2),
    "adamw-l1": lambda p: go.AdamW(p, lr=1e-2, weight_decay=0.1, l1=1e-3),
}


def _data():
    data = load_dataset("digits", seed=0)
    return data, (data.x_train, data.y_train), (data.x_val, data.y_val)


def _double(*pairs):
    return [(x.double(), y) for x, y in pairs]


def _model(data, dropout: float = 0.2) -> nn.Module:
    return mlp(
        data.n_features,
        data.n_classes,
        hidden=(32, 32),
        dropout=dropout,
        generator=torch.Generator().manual_seed(0),
    )


def _fit(model, train, val, optimizer, checkpoint_dir=None):
    return fit(
        model,
        train,
        val=val,
        optimizer=optimizer,
        batch_size=45,
        epochs=2,
        progress=False,
        checkpoint_dir=checkpoint_dir,
    )


def _fsdp2_steps(model: nn.Module, make, x, y, rank: int = 0, world: int = 1) -> None:
    """Four steps on batches of 64 rows, this rank's half of each."""
    opt = make(model.parameters())
    for step in range(4):
        xb, yb = x[64 * step : 64 * (step + 1)], y[64 * step : 64 * (step + 1)]
        xb, yb = xb.tensor_split(world)[rank], yb.tensor_split(world)[rank]
        opt.zero_grad(set_to_none=False)
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()


def _ddp_bucket_view_steps(make, set_to_none: bool, rank: int) -> dict:
    """Five plain-loop steps under ``DDP(gradient_as_bucket_view=True)``: the weights, and
    whether each step's gradients were still views of DDP's buckets (gradwise left them there)."""
    model = _model(_data()[0], dropout=0.0)
    ddp = nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True)
    opt = make(ddp.parameters())
    x, y = _data()[1]
    places = []
    for step in range(5):
        xb, yb = x[64 * step : 64 * (step + 1)], y[64 * step : 64 * (step + 1)]
        opt.zero_grad(set_to_none=set_to_none)
        zeroed = {
            p.grad.untyped_storage().data_ptr() for p in model.parameters() if p.grad is not None
        }
        nn.functional.cross_entropy(
            ddp(xb.tensor_split(2)[rank]), yb.tensor_split(2)[rank]
        ).backward()
        opt.step()
        stepped = {p.grad.untyped_storage().data_ptr() for p in model.parameters()}
        places.append(sorted(zeroed | stepped))
    return {"model": model.state_dict(), "places": places}


def _worker(out: Path) -> None:
    """Run by each of 2 processes under ``torch.distributed.run`` (``python this_file OUT``)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    torch.set_num_threads(1)
    data, train, val = _data()
    results: dict = {}
    model = _model(data)  # fit() joins the process group from the launcher's environment
    history = _fit(model, train, val, lambda p: go.Adam(p, lr=1e-2), out / "fit")
    rank = torch.distributed.get_rank()
    results["fit"] = {"model": model.state_dict(), "epochs": history.epochs}
    model = _model(data).double()  # float64: the same sums in another order agree to ~1e-16
    _fit(model, *_double(train, val), lambda p: go.Adam(p, lr=1e-2))
    results["fit64"] = {"model": model.state_dict()}
    model = _model(data)
    zero = lambda p: ZeroRedundancyOptimizer(p, optimizer_class=go.Adam, lr=1e-2)  # noqa: E731
    _fit(model, train, val, zero, out / "zero")
    results["zero"] = {"model": model.state_dict()}
    bucket_views = lambda p: ZeroRedundancyOptimizer(  # noqa: E731
        p, optimizer_class=go.Adam, parameters_as_bucket_view=True
    )
    try:
        _fit(_model(data), train, val, bucket_views)
    except ValueError as e:
        results["zero_bucket_views"] = str(e)
    results["ddp_bucket_views"] = {
        (name, set_to_none): _ddp_bucket_view_steps(make, set_to_none, rank)
        for name, make in (
            ("torch", lambda p: torch.optim.Adam(p, lr=1e-2)),
            ("gradwise", lambda p: go.Adam(p, lr=1e-2)),
        )
        for set_to_none in (True, False)
    }
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as e:
        results["fsdp2"] = f"torch.distributed.fsdp.fully_shard cannot be imported: {e}"
    else:
        results["fsdp2"] = {}
        for name, make in FSDP2_OPTIMIZERS.items():
            model = _model(data, dropout=0.0)
            for layer in model.modules():
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
            _fsdp2_steps(model, make, *train, rank, 2)
            params = dict(model.named_parameters())
            results["fsdp2"][name] = {
                "types": sorted({type(p).__name__ for p in params.values()}),
                "model": {n: p.full_tensor() for n, p in params.items()},
            }
        try:
            _fit(model, train, val, lambda p: go.Adam(p))
        except ValueError as e:
            results["fsdp2_fit"] = str(e)
    if rank == 0:
        torch.save(results, out / "results.pt")
    torch.distributed.barrier()


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("worker")
    proc = _run([*LAUNCH, __file__, str(out)], out)
    assert proc.returncode == 0, proc.stderr
    return torch.load(out / "results.pt", weights_only=True), out


def test_fit_from_python_under_a_launcher_matches_one_process(worker):
    results, out = worker
    data, train, val = _data()
    model = _model(data)
    history = _fit(model, train, val, lambda p: go.Adam(p, lr=1e-2))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(results["fit"]["model"][name], value, **FLOAT)
    for r1, r2 in zip(history.epochs, results["fit"]["epochs"], strict=True):
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-4)
        assert r2["val_loss"] == pytest.approx(r1["val_loss"], rel=1e-4)
    assert state(out / "fit")["epoch"] == 2  # rank 0 wrote its checkpoint


def test_in_float64_two_processes_agree_with_one_to_1e_12(worker):
    """Dropout masks, uneven splits and the weighted loss reproduce one process's computation
    exactly: in float64 only the summation order differs."""
    results, _ = worker
    data, train, val = _data()
    model = _model(data).double()
    _fit(model, *_double(train, val), lambda p: go.Adam(p, lr=1e-2))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(results["fit64"]["model"][name], value, rtol=0, atol=1e-12)


def test_zero_redundancy_optimizer_with_gradwise_adam_matches_unsharded(worker):
    results, out = worker
    for name, value in results["fit"]["model"].items():
        torch.testing.assert_close(results["zero"]["model"][name], value, rtol=1e-6, atol=1e-7)
    # the consolidated checkpoint loads into a plain gradwise Adam, equal to the unsharded one
    zero, plain = state(out / "zero")["optimizer"], state(out / "fit")["optimizer"]
    data, _, _ = _data()
    model = _model(data)
    opt = go.Adam(model.parameters(), lr=1e-2)
    opt.load_state_dict(zero)
    for p, key in zip(model.parameters(), sorted(plain["state"])):
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[p][name], plain["state"][key][name])


def test_zero_with_parameters_as_bucket_views_is_refused(worker):
    """Both ZeRO's bucket views and gradwise's flat buffers relocate the parameters: fit()
    refuses the pair instead of training wrongly."""
    results, _ = worker
    assert "parameters_as_bucket_view=False" in results["zero_bucket_views"]


@pytest.mark.parametrize("set_to_none", [True, False])
def test_ddp_with_gradients_as_bucket_views(worker, set_to_none):
    """``DDP(gradient_as_bucket_view=True)``: gradients are views of DDP's buckets, which its
    all-reduce reads. gradwise's Adam matches torch's, and ``zero_grad()`` leaves the gradients
    in the buckets (once DDP has rebuilt them after the first step, always the same one
    place) instead of moving them into its own buffer for DDP to copy back."""
    results, _ = worker
    ref = results["ddp_bucket_views"][("torch", set_to_none)]
    got = results["ddp_bucket_views"][("gradwise", set_to_none)]
    for name, value in ref["model"].items():
        torch.testing.assert_close(got["model"][name], value, rtol=0, atol=0)
    for result in (ref, got):  # after DDP's rebuild of its buckets at the first step
        assert all(len(places) == 1 for places in result["places"][2:])  # one bucket
        assert result["places"][2:] == [result["places"][2]] * 3


def test_gradwise_optimizers_on_fsdp2_dtensor_parameters_match_unsharded(worker):
    results, _ = worker
    if isinstance(results["fsdp2"], str):
        pytest.skip(results["fsdp2"])
    data, (x, y), _ = _data()
    for name, make in FSDP2_OPTIMIZERS.items():
        got = results["fsdp2"][name]
        assert got["types"] == ["DTensor"], name  # FSDP2 kept them sharded: the per-tensor path
        model = _model(data, dropout=0.0)
        _fsdp2_steps(model, make, x, y)
        for pname, value in model.named_parameters():
            torch.testing.assert_close(got["model"][pname], value.detach(), **FLOAT, msg=name)
    assert "fully_shard" in results["fsdp2_fit"]  # fit() says it trains with DDP only


if __name__ == "__main__":  # one of the processes of the ``worker`` fixture
    _worker(Path(sys.argv[1]))

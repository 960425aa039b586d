"""The optimizer-step benchmark harness, in a tiny configuration (no timing is asserted)."""

import json
import math

import pytest
import torch

from gradwise.lab import bench
from gradwise.lab.bench import kernels
from gradwise.lab.bench import runner as bench_runner

TINY = {
    "scale": 1e-3,
    "warmup": 1,
    "rounds": 1,
    "min_round_s": 0.0,
    "threads": 1,
    "bandwidth_mib": 1,
    "bandwidth_reps": 2,
}


def _gradwise_available() -> bool:
    return kernels.gradwise_optim()[0] is not None


def test_workload_shapes():
    resnet = bench.make_workload("resnet18")
    assert resnet.tensors == 62
    assert resnet.numel == 11_689_512  # torchvision's resnet18 parameter count
    assert resnet.shapes[0] == (64, 3, 7, 7)
    assert resnet.shapes[-2:] == ((1000, 512), (1000,))
    assert bench.make_workload("one-tensor").numel == 16 * 2**20
    small = bench.make_workload("small-2000")
    assert (small.tensors, small.numel) == (2000, 2000 * 512)
    shrunk = bench.make_workload("resnet18", scale=0.01)
    assert shrunk.tensors == 62 and shrunk.numel < resnet.numel / 50
    assert "scaled" in shrunk.label
    with pytest.raises(ValueError, match="unknown workload"):
        bench.make_workload("vgg")


def test_tiny_run_json_structure(tmp_path):
    cfg = bench.Config(
        workloads=["one-tensor", "resnet18", bench.Workload("tiny", "tiny", ((3, 4), (5,)) * 20)],
        optimizers=list(bench.OPTIMIZERS),
        **TINY,
    )
    results = bench.run(cfg)
    path = tmp_path / "out.json"
    bench.write_json(results, path)
    data = json.loads(path.read_text())

    machine = data["machine"]
    for key in ("cpu_model", "threads", "torch", "loadavg_start", "loadavg_end"):
        assert key in machine
    assert machine["threads"] == 1
    assert data["bandwidth"]["gbs"] > 0 and machine["bandwidth_gbs"] == data["bandwidth"]["gbs"]

    impls = [i for i in bench.IMPLEMENTATIONS if _gradwise_available() or "gradwise" not in i]
    done = {(r["workload"], r["optimizer"], r["implementation"]) for r in data["results"]}
    skipped = {(s["workload"], s["optimizer"], s["implementation"]) for s in data["skipped"]}
    for w in ("one-tensor", "resnet18", "tiny"):
        for opt in bench.OPTIMIZERS:
            for impl in impls:
                # every combination is either measured or skipped with a reason
                assert ((w, opt, impl) in done) != ((w, opt, impl) in skipped)
            assert (w, opt, "torch for-loop") in done
            assert (w, opt, "torch foreach") in done
    assert all(s["implementation"] == "torch fused" for s in data["skipped"])
    assert all(s["reason"] for s in data["skipped"])

    for r in data["results"]:
        assert r["params_finite"], r
        for key in ("ms_median", "ms_q1", "ms_q3", "ms_min", "ms_max", "gbs"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["ms_min"] <= r["ms_median"] <= r["ms_max"]
        assert len(r["samples_ms"]) == 1
        assert math.isfinite(r["speedup_vs_best_torch"])
        assert math.isfinite(r["bandwidth_fraction"])
        assert r["bytes_per_param"] in (20, 28)
        if r["implementation"] == "gradwise":
            assert r["grads_flat"], r  # the flat path, no gather
        if r["implementation"] == "gradwise (separate grads)":
            assert not r["grads_flat"], r
    for group in {(r["workload"], r["optimizer"]) for r in data["results"]}:
        torch_rows = [
            r
            for r in data["results"]
            if (r["workload"], r["optimizer"]) == group and r["implementation"].startswith("torch")
        ]
        assert max(r["speedup_vs_best_torch"] for r in torch_rows) == pytest.approx(1.0)

    bench.render(results)  # builds the rich table without error


def test_without_gradwise(monkeypatch):
    monkeypatch.setattr(kernels, "gradwise_optim", lambda: (None, "ImportError: not yet"))
    cfg = bench.Config(
        workloads=[bench.Workload("tiny", "tiny", ((7,), (2, 3)))],
        optimizers=["adam"],
        bandwidth=False,
        **{k: v for k, v in TINY.items() if not k.startswith("bandwidth")},
    )
    results = bench.run(cfg)
    assert {r["implementation"] for r in results["results"]} <= set(bench.TORCH_IMPLEMENTATIONS)
    assert any("gradwise.optim is not available" in n for n in results["notes"])
    assert results["bandwidth"] is None and results["results"][0]["bandwidth_fraction"] is None


def test_main_writes_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    argv = ["--quick", "--threads", "1", "--scale", "0.0001", "--no-bandwidth"]
    argv += ["--optimizers", "sgd", "--workloads", "one-tensor", "--json", str(path)]
    assert bench.main(argv) == 0
    data = json.loads(path.read_text())
    assert data["config"]["quick"] and data["config"]["workloads"] == ["one-tensor"]
    assert {r["optimizer"] for r in data["results"]} == {"sgd"}
    assert "optimizer.step()" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--optimizers", "lion"])


def test_runner_finite_sees_a_nan_or_inf_in_any_parameter():
    """The params_finite column: one multi-tensor check over every parameter, values kept."""
    params0 = [torch.ones(4), torch.ones(3, 2), torch.ones(5)]
    runner = bench_runner._Runner(
        "torch for-loop",
        lambda ps: torch.optim.SGD(ps, lr=0.1),
        params0,
        [torch.zeros_like(p) for p in params0],
        None,
    )
    assert runner.finite()
    for bad in (float("nan"), float("inf"), float("-inf")):
        with torch.no_grad():
            runner.params[1][2, 1] = bad
        assert not runner.finite(), bad
        with torch.no_grad():
            runner.params[1][2, 1] = 1.0
        assert runner.finite()
    assert all(torch.equal(p, torch.ones_like(p)) for p in runner.params)


def test_kernel_prebuild_workers_report_failures():
    """The parallel pre-build runs each build in a spawned worker; a failure comes back as a
    note (the row group then builds, or reports, on its own)."""
    assert kernels._build_kernel("no-such-optimizer") == "KeyError: 'no-such-optimizer'"
    notes: list[str] = []
    kernels.prebuild_kernels(["bad-a", "bad-b"], 2, notes.append)
    assert notes == [
        "note: building the bad-a kernel in a worker failed (KeyError: 'bad-a')",
        "note: building the bad-b kernel in a worker failed (KeyError: 'bad-b')",
    ]


def test_kernel_prebuild_survives_a_dead_worker(monkeypatch):
    """A worker that dies (here: the pool cannot start one) is a note, not a failed benchmark."""
    import concurrent.futures

    def broken(*args, **kwargs):
        raise concurrent.futures.process.BrokenProcessPool("a worker died")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", broken)
    notes: list[str] = []
    kernels.prebuild_kernels(["sgd", "adam"], 2, notes.append)
    assert notes == ["note: the kernel-building workers stopped (BrokenProcessPool: a worker died)"]


def test_train_step_harness_times_whole_iterations(monkeypatch):
    """The whole-iteration benchmark on a tiny model: every implementation timed in every round,
    ratios to torch, the geometric mean, the rich table; bad names refused with what is allowed."""
    import torch

    from gradwise.lab import train_step as ts

    tiny = ts.Model(
        "tiny",
        "Linear(8, 4)",
        lambda: torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
        ),
        lambda g: (torch.randn(5, 8, generator=g), torch.randint(0, 4, (5,), generator=g)),
    )
    monkeypatch.setitem(ts.MODELS, "tiny", tiny)
    cfg = ts.Config(models=["tiny"], optimizers=["adam", "sgd"], rounds=3, iterations=2, warmup=1)
    results = ts.run(cfg)
    assert [(r["model"], r["optimizer"]) for r in results["rows"]] == [
        ("tiny", "adam"),
        ("tiny", "sgd"),
    ]
    for row in results["rows"]:
        assert set(row["ms"]) == set(ts.DEFAULT_IMPLEMENTATIONS)
        assert all(len(v) == 3 and min(v) > 0 for v in row["samples_ms"].values())
        assert row["ratio"]["gradwise"] == pytest.approx(row["ms"]["torch"] / row["ms"]["gradwise"])
        assert row["parameters"] == 8 * 16 + 16 + 16 * 4 + 4 and row["tensors"] == 4
    assert set(results["geomean_ratio"]) == {"gradwise", "gradwise views"}
    assert ts.render(results).row_count == 3  # two rows and the geometric mean
    with pytest.raises(
        ValueError, match="models must be a non-empty list from .*received models=nope"
    ):
        ts.Config(models=["nope"])
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        ts.Config(rounds=0)
    # an algorithm torch.optim lacks is timed against its reference package
    pytest.importorskip("schedulefree")
    pytest.importorskip("lion_pytorch")
    cfg = ts.Config(
        models=["tiny"], optimizers=["lion", "schedulefree-adamw"], rounds=2, iterations=1
    )
    rows = ts.run(cfg)["rows"]
    assert [r["reference"] for r in rows] == ["lion_pytorch.Lion", "schedulefree.AdamWScheduleFree"]
    assert all(min(r["ms"].values()) > 0 for r in rows)


def test_train_step_muon_rows_pair_torch_muon_with_adamw_and_skip_models_without_matrices(
    monkeypatch,
):
    """Muon's row: the hidden matrices to Muon and the rest to AdamW on both sides (torch's
    Muon and fused AdamW, gradwise's MuonWithAdamW), ``muon-bf16`` with gradwise orthogonalizing
    in bfloat16 as torch does; a model without hidden matrices is skipped with its reason."""
    import torch

    from gradwise.lab import train_step as ts

    mlp = ts.Model(
        "mlp",
        "three Linear layers",
        lambda: torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)
        ),
        lambda g: (torch.randn(5, 8, generator=g), torch.randint(0, 4, (5,), generator=g)),
    )
    conv = ts.Model(
        "conv",
        "a convolution and a Linear",
        lambda: torch.nn.Sequential(
            torch.nn.Conv1d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(12, 4)
        ),
        lambda g: (torch.randn(5, 1, 8, generator=g), torch.randint(0, 4, (5,), generator=g)),
    )
    monkeypatch.setitem(ts.MODELS, "mlp", mlp)
    monkeypatch.setitem(ts.MODELS, "conv", conv)
    params = list(mlp.build().parameters())
    for name in ("muon", "muon-bf16"):
        reference = ts._make_optimizer("torch", name, params)
        ours = ts._make_optimizer("gradwise", name, params)
        assert [p.shape for g in reference.muon.param_groups for p in g["params"]] == [(16, 16)]
        assert len([p for g in reference.adamw.param_groups for p in g["params"]]) == 5
        muon, adamw = ours.optimizers
        assert [p.shape for g in muon.param_groups for p in g["params"]] == [(16, 16)]
        assert len([p for g in adamw.param_groups for p in g["params"]]) == 5
        expected = torch.bfloat16 if name == "muon-bf16" else torch.float32
        assert all(g["ns_dtype"] == expected for g in muon.param_groups)
    logged: list[str] = []
    cfg = ts.Config(models=["mlp", "conv"], optimizers=["muon"], rounds=2, iterations=1, warmup=1)
    results = ts.run(cfg, logged.append)
    assert [(r["model"], r["reference"]) for r in results["rows"]] == [
        ("mlp", "torch.optim.Muon + AdamW(fused=True)")
    ]
    [skipped] = results["skipped"]
    assert (skipped["model"], skipped["optimizer"]) == ("conv", "muon")
    assert "hidden 2-D weight" in skipped["why"]
    assert any("conv × muon: skipped" in line for line in logged)


@pytest.mark.parametrize("command", [[], ["--train-step"]], ids=["step", "train-step"])
@pytest.mark.parametrize("option", ["--rounds", "--warmup"])
def test_a_count_out_of_range_is_refused_even_with_quick(command, option, capsys):
    """``--rounds 0`` ended in an IndexError (``gradwise bench``) or was replaced by --quick's
    number without a word (``--train-step``): a number given is now checked, and wins over
    --quick's."""
    from gradwise.cli import main as cli

    bad = "0" if option == "--rounds" else "-1"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", *command, option, bad, "--quick"], standalone_mode=False)
    assert exit_.value.code == 2
    low = 1 if option == "--rounds" else 0
    name = option[2:]
    assert f"{name} must be >= {low}; received {name}={bad}" in capsys.readouterr().err

"""``gradwise tune`` / ``gradwise.lab.tune``: the search space and its errors, a small search's
report (best.toml runs with ``gradwise train --config``), pruning, a search killed and resumed,
and two worker processes sharing one SQLite storage."""

from __future__ import annotations

import datetime
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

optuna = pytest.importorskip("optuna")

from gradwise.cli import main  # noqa: E402
from gradwise.errors import ConfigError  # noqa: E402
from gradwise.lab import tune  # noqa: E402
from gradwise.lab.tune import Space  # noqa: E402

#: a tiny space: moons, an MLP of one narrow layer, a few epochs (a trial takes ~0.2 s)
TINY = {"epochs": [2, 3], "width": [4, 16], "depth": 1, "batch_size": [32, 64]}


def finished(db: Path) -> int:
    """Completed and pruned trials in a study file (read without Optuna: a child writes it)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            rows = con.execute(
                "select count(*) from trials where state in ('COMPLETE', 'PRUNED')"
            ).fetchone()
        return rows[0]
    except sqlite3.OperationalError:  # the tables are being made
        return 0


def cmdline(pid: str) -> str:
    """A live process's command line ("" once it has ended)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_space_refuses_bad_input_with_one_clear_error():
    with pytest.raises(ConfigError, match="unknown space key 'lrr'.*did you mean 'lr'"):
        Space.build("moons", "mlp", {"lrr": [1e-3, 1e-1]})
    with pytest.raises(ConfigError, match="empty range"):
        Space.build("moons", "mlp", {"dropout": [0.3, 0.1]})
    with pytest.raises(ConfigError, match="unknown optimizer 'adamx'"):
        Space.build("moons", "mlp", {"optimizer": ["adam", "adamx"]})
    with pytest.raises(ConfigError, match="empty list"):
        Space.build("moons", "mlp", {"schedule": []})
    space = Space.build("moons", "mlp", {"optimizer": "adam", "lr": {"adam": [1e-3, 1e-2]}})
    assert space.values["lr"] == {"adam": [1e-3, 1e-2]} or "adam" in space.values["lr"]


def test_the_defaults_are_retrained_as_long_as_the_trials_ran():
    """A space that fixes the run length (``epochs = 3``) trains every trial 3 epochs: the
    defaults it is compared against are retrained for 3 too, not the dataset's 20."""
    from gradwise.train.config import TrainConfig

    base = TrainConfig(dataset="moons")
    assert Space.build("moons", "mlp", {"epochs": 3}).fixed_budget(base).epochs == 3
    searched = Space.build("moons", "mlp", {"epochs": [2, 6]})
    assert searched.fixed_budget(base) is base


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    space = tmp_path / "space.toml"
    space.write_text("epoch = [1, 2]\n")
    runner = CliRunner()
    cases = [
        (["--space", str(space)], "unknown space key 'epoch'"),
        (["--storage", "nosuch://x"], "cannot open the storage"),
        (["--storage", "plainfile"], "neither a database URL"),
        (["--time", "ten minutes"], "expected a duration"),
    ]
    for args, message in cases:
        done = runner.invoke(
            main, ["tune", "--dataset", "moons", "--out", str(tmp_path / "o"), *args]
        )
        assert done.exit_code == 2, done.output
        lines = done.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gradwise: error: "), done.output
        assert message in lines[0]


def test_small_search_writes_a_runnable_best_toml_a_summary_and_plots(tmp_path):
    out = tmp_path / "t"
    seen = []
    result = tune(
        "moons",
        "mlp",
        out=out,
        trials=5,
        space=TINY,
        retrain_seeds=2,
        sampler_seed=0,
        on_progress=seen.append,
    )
    assert result.completed + result.pruned == 5 and 0 < result.best_value <= 1
    assert seen and seen[-1].completed + seen[-1].pruned == 5
    summary = (out / "summary.md").read_text()
    assert "Top 5 trials" in summary and "test acc" in summary and "defaults" in summary
    assert set(result.retrain) == {"tuned", "defaults"} and result.seeds == [0, 1]
    assert {"history.png", "importances.png", "parallel.png"} <= set(result.plots)
    for name in result.plots:
        assert (out / name).stat().st_size > 1000
    # the retrain and the search share one train/validation split
    assert result.best_config.split_seed == 0
    done = CliRunner().invoke(
        main, ["train", "--config", str(out / "best.toml"), "--out", str(tmp_path / "run")]
    )
    assert done.exit_code == 0, done.output
    # a study of the same name with another space is refused
    with pytest.raises(ConfigError, match="another search space"):
        tune("moons", "mlp", out=out, trials=6, space={**TINY, "depth": 2}, retrain_seeds=0)


def test_pruning_is_wired_to_the_validation_accuracy(tmp_path):
    # SGD at rates from hopeless to fine, 10 epochs (a report each): the pruner stops the
    # hopeless ones after two trials set the median
    space = {
        **TINY,
        "optimizer": "sgd",
        "lr": {"sgd": [1e-6, 1.0]},
        "epochs": 10,
        "schedule": "constant",
        "weight_decay": 0.0,
        "l1": 0.0,
    }
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    result = tune(
        "moons",
        out=tmp_path,
        trials=8,
        space=space,
        pruner=pruner,
        retrain_seeds=0,
        plots=False,
        sampler_seed=1,
    )
    assert result.pruned >= 1
    study = optuna.load_study(study_name=result.study, storage=result.storage)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(t.intermediate_values and max(t.intermediate_values) < 100 for t in pruned)


def test_killed_search_resumes_and_two_workers_share_the_storage(tmp_path):
    """A search on two worker processes, stopped by SIGTERM once a few trials have finished,
    exits with 143, leaves no process and says what it kept; the same search run again (two
    workers, one SQLite file) continues the study."""
    out = tmp_path / "t"
    space = tmp_path / "space.toml"
    # trials of ~0.5 s: when the search resumes, the first worker up cannot take all the new
    # trials before the second is (with 2-3 epochs a trial took ~0.1 s, and one worker once took
    # all 4)
    space.write_text("epochs = [20, 30]\nwidth = [4, 16]\ndepth = 1\nbatch_size = [32, 64]\n")
    args = ["--dataset", "moons", "--model", "mlp", "--space", str(space), "--seeds", "0"]
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradwise",
            "tune",
            *args,
            "--trials",
            "400",
            "--jobs",
            "2",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while finished(out / "study.db") < 3 and time.monotonic() < deadline:
            assert child.poll() is None, child.communicate()
            time.sleep(0.2)
        kids = subprocess.run(["pgrep", "-P", str(child.pid)], capture_output=True, text=True)
        workers = [pid for pid in kids.stdout.split() if "spawn_main" in cmdline(pid)]
        assert len(workers) == 2
        child.send_signal(signal.SIGTERM)
        # stopping takes the workers' grace (5 s before SIGKILL) and the storage's writes; on
        # a loaded 2-core machine that has once run past 20 s
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "run the same command again" in err, err
    assert not [pid for pid in workers if cmdline(pid)]  # every worker is gone
    before = finished(out / "study.db")
    assert before >= 3
    resumed = datetime.datetime.now()
    result = tune(
        "moons",
        "mlp",
        out=out,
        trials=before + 8,
        space=space,
        jobs=2,
        retrain_seeds=0,
        plots=False,
    )
    study = optuna.load_study(study_name=result.study, storage=result.storage)
    states = optuna.trial.TrialState
    done = [t for t in study.trials if t.state in (states.COMPLETE, states.PRUNED)]
    assert len(done) >= before + 8
    late = [t for t in done if t.datetime_start >= resumed]
    assert len({t.user_attrs["worker"] for t in late}) == 2  # both workers took trials
    # the trials in flight at SIGTERM are marked failed, none is left running (a worker killed
    # inside Optuna's own ask(), before the trial is marked as its, is the one exception)
    running = [t for t in study.trials if t.state == states.RUNNING]
    assert not [(t.number, t.user_attrs) for t in running if "worker" in t.user_attrs]


def test_two_machines_share_one_study_through_a_journal_file(tmp_path):
    """Two separate ``gradwise tune`` commands (as on two machines), each with its own output
    folder, share one study through an Optuna journal file (``--storage journal:FILE``, the
    shared-disk setup of docs/scaling.md): both take trials, and the study holds them all."""
    space = tmp_path / "space.toml"
    # trials of ~0.5 s: the first command to start cannot take all 8 before the other is up
    # (with 2-3 epochs a trial took ~0.1 s, and one command once took all 8)
    space.write_text("epochs = [20, 30]\nwidth = [4, 16]\ndepth = 1\nbatch_size = [32, 64]\n")
    journal = tmp_path / "shared" / "study.log"
    journal.parent.mkdir()
    command = [sys.executable, "-m", "gradwise", "tune", "--dataset", "moons", "--model", "mlp",
               "--space", str(space), "--seeds", "0", "--trials", "8", "--storage",
               f"journal:{journal}", "--study", "shared"]  # fmt: skip
    machines = [
        subprocess.Popen(
            [*command, "--out", str(tmp_path / name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    for machine in machines:
        _, err = machine.communicate(timeout=300)
        assert machine.returncode == 0, err
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="shared", storage=storage)
    states = optuna.trial.TrialState
    done = [t for t in study.trials if t.state in (states.COMPLETE, states.PRUNED)]
    assert len(done) >= 8  # the budget is the study's: each command stops at 8 in all
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both machines took trials
    for name in ("a", "b"):
        assert (tmp_path / name / "best.toml").exists()


def test_a_sigterm_never_lands_inside_the_storages_reads(tmp_path, monkeypatch):
    """With worker processes, the parent reads the study's progress each second. A SIGTERM
    (turned into ``KeyboardInterrupt``) that came in the middle of such a read would leave the
    storage's connection half-used for the clean-up after it; it is held back until the read is
    over, then stops the search as usual, with the trials in flight marked failed."""
    from gradwise.cli.options import sigterm_as_interrupt
    from gradwise.lab.tune import search

    reads: list[str] = []
    real = search.snapshot

    def interrupted_read(study, budget, seen):
        reads.append("started")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler would run here if the signal were not held back
        progress = real(study, budget, seen)
        reads.append("finished")
        return progress

    monkeypatch.setattr(search, "snapshot", interrupted_read)
    space = tmp_path / "space.toml"
    space.write_text("epochs = [2, 3]\nwidth = [4, 16]\ndepth = 1\nbatch_size = [32, 64]\n")
    terminated: list[bool] = []
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt(terminated):
        tune(
            "moons",
            "mlp",
            out=tmp_path / "t",
            trials=400,
            space=space,
            jobs=2,
            plots=False,
            on_progress=lambda progress: None,
        )
    assert terminated and reads == ["started", "finished"]
    storage = f"sqlite:///{tmp_path / 't' / 'study.db'}"
    (study,) = optuna.get_all_study_summaries(storage)
    running = optuna.load_study(study_name=study.study_name, storage=storage).get_trials(
        states=(optuna.trial.TrialState.RUNNING,)
    )
    assert not running

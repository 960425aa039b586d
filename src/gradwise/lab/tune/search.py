"""Running a search: :func:`tune` draws configurations from a :class:`~.space.Space` with Optuna,
trains each one (:func:`gradwise.train.run.run`, the code path of ``gradwise train``), reports its
validation accuracy to Optuna's pruner after each tenth of its epochs, and writes the report.

The study lives in an Optuna storage: by default a SQLite file, ``study.db`` in the output
folder, so a search stopped at any moment continues where it was when run again (the trials in
flight are lost, nothing else). ``jobs > 1`` runs that many spawned worker processes against the
one storage (one torch thread each); workers on other machines can join through a shared
storage (a PostgreSQL / MySQL URL, or an Optuna journal file on a shared disk).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from gradwise import checks
from gradwise.errors import ConfigError, GradwiseError
from gradwise.lab.tune.space import Space
from gradwise.lab.workers import blocked_signals, stop_workers
from gradwise.train.callbacks import Callback
from gradwise.train.config import TrainConfig

#: the pruners ``tune`` knows: median (Optuna's MedianPruner), hyperband, none
PRUNERS = ("median", "hyperband", "none")
#: a trial reports its validation accuracy at each tenth of its epochs, as steps 10, 20, ... 100,
#: so that trials of different lengths are compared at the same share of their schedule
REPORT_STEPS = 10


def need_optuna():
    """The optuna module, or a ``ConfigError`` saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "tune needs Optuna, which is not installed: pip install 'gradwise[tune]'"
        ) from None
    # trials are reported by on_progress; a trial stopped by Ctrl-C is no warning
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


# ------------------------------------------------------------------------------------ storage


def storage_url(storage: str | None, out: Path) -> str:
    """The storage a search uses: ``storage`` as given, else ``sqlite:///OUT/study.db``."""
    if storage is None:
        return f"sqlite:///{(out / 'study.db').resolve()}"
    return str(storage)


def open_storage(url: str):
    """An Optuna storage for ``url``: an RDB URL (``sqlite:///path``, ``postgresql://...``,
    ``mysql://...``), or ``journal:PATH`` / a ``.log`` file: an Optuna journal file (for a
    shared disk without a database server). A stopped search marks its trials in flight
    failed; one killed outright (SIGKILL) leaves them "running", which no count includes."""
    optuna = need_optuna()
    try:
        if url.startswith("journal:") or ("://" not in url and url.endswith((".log", ".journal"))):
            from optuna.storages.journal import JournalFileBackend

            path = url.removeprefix("journal:")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(path))
        if "://" not in url:
            raise ConfigError(
                f"tune: storage {url!r} is neither a database URL (sqlite:///FILE, "
                "postgresql://..., mysql://...) nor a journal file (journal:PATH or FILE.log)"
            )
        engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except GradwiseError:
        raise
    except Exception as e:  # a driver missing, a server down, a file that is not a database
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"tune: cannot open the storage {url}: {first}") from None


def make_pruner(name, n_startup_trials: int = 5):
    """The pruner ``name`` (:data:`PRUNERS`), or ``name`` itself if it is an Optuna pruner."""
    optuna = need_optuna()
    if isinstance(name, optuna.pruners.BasePruner):
        return name
    checks.choice("tune", "pruner", name, PRUNERS)
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=n_startup_trials, n_warmup_steps=2 * REPORT_STEPS
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=2 * REPORT_STEPS, max_resource=10 * REPORT_STEPS, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def make_sampler(parallel: bool, seed: int | None = None):
    optuna = need_optuna()
    return optuna.samplers.TPESampler(
        n_startup_trials=8, multivariate=True, group=True, constant_liar=parallel, seed=seed
    )


# ----------------------------------------------------------------------------- the objective


class ReportToTrial(Callback):
    """Reports the validation accuracy to an Optuna trial at each tenth of the run's epochs
    (steps 10, 20, ..., 100) and stops the run when the pruner says so."""

    def __init__(self, trial, epochs: int) -> None:
        self.trial, self.epochs, self.reported = trial, epochs, 0
        self.pruned_at: int | None = None

    def on_epoch_end(self, state) -> None:
        value = state.history.epochs[-1].get("val_accuracy")
        tenth = (state.epoch + 1) * REPORT_STEPS // self.epochs
        if value is None or tenth <= self.reported:
            return
        self.reported = tenth
        step = tenth * REPORT_STEPS
        self.trial.report(float(value), step)
        if step < REPORT_STEPS * REPORT_STEPS and self.trial.should_prune():
            self.pruned_at = state.epoch + 1
            state.stop = f"pruned by Optuna after {state.epoch + 1} of {self.epochs} epochs"


@dataclass
class Objective:
    """One trial: the configuration ``space`` draws on ``base``, trained by ``run``; its value
    is the last epoch's validation accuracy (the test set is evaluated by ``run`` and kept as a
    trial attribute for the report, never read by the search)."""

    space: Space
    base: TrainConfig
    n_train: int
    threads: int | None = None

    def __call__(self, trial) -> float:
        optuna = need_optuna()
        from gradwise.train import Diverged
        from gradwise.train.run import run

        config = self.space.suggest(trial, self.base, self.n_train)
        config = dataclasses.replace(config, nan_policy="raise", threads=self.threads)
        config = config.resolved()
        trial.set_user_attr("config", dataclasses.replace(config, threads=None).to_toml())
        reporter = ReportToTrial(trial, config.epochs)
        try:
            result = run(config, None, progress=False, plots=False, callbacks=[reporter])
        except Diverged as e:
            trial.set_user_attr("diverged", str(e).split(";")[0])
            return 0.0
        epochs = result.history.epochs
        value = epochs[-1].get("val_accuracy") if epochs else None
        trial.set_user_attr("epochs_run", len(epochs))
        trial.set_user_attr("train_time", round(result.history.wall_time, 3))
        if "test_accuracy" in result.history.summary:
            trial.set_user_attr("test_accuracy", float(result.history.summary["test_accuracy"]))
        if reporter.pruned_at is not None:
            raise optuna.TrialPruned(result.history.stopped)
        if value is None or not math.isfinite(value):
            trial.set_user_attr("diverged", "no finite validation accuracy")
            return 0.0
        return float(value)


# ------------------------------------------------------------------------------ the budget


@dataclass
class Budget:
    """When a worker stops starting trials: ``trials`` finished (completed or pruned, the
    study's earlier ones included) or started by this search, or past ``deadline`` (a
    ``time.time()``)."""

    trials: int | None
    deadline: float | None
    started: float

    def spent(self, study) -> bool:
        if self.deadline is not None and time.time() >= self.deadline:
            return True
        if self.trials is None:
            return False
        optuna = need_optuna()
        states = optuna.trial.TrialState
        counted = 0
        for trial in study.get_trials(deepcopy=False):
            if trial.state in (states.COMPLETE, states.PRUNED):
                counted += 1
            elif trial.state == states.RUNNING and trial.datetime_start is not None:
                # in flight in this search (a trial left running by a killed search is not)
                counted += trial.datetime_start.timestamp() >= self.started - 1
        return counted >= self.trials


def work(
    url: str,
    name: str,
    objective: Objective,
    pruner,
    budget: Budget,
    parallel: bool,
    on_trial: Callable | None = None,
    sampler_seed: int | None = None,
) -> None:
    """Run trials of the study ``name`` in ``url`` until ``budget`` is spent."""
    optuna = need_optuna()
    study = optuna.load_study(
        study_name=name,
        storage=open_storage(url),
        sampler=make_sampler(parallel, sampler_seed),
        pruner=make_pruner(pruner),
    )
    while not budget.spent(study):
        run_trial(study, objective)
        if on_trial is not None:
            on_trial(study)


def run_trial(study, objective: Objective) -> None:
    """One trial, asked and told with Ctrl-C and SIGTERM held back meanwhile: a search stopped
    at any moment leaves its trial in flight marked failed, never running."""
    optuna = need_optuna()
    states = optuna.trial.TrialState
    trial, state, value = None, states.FAIL, None
    try:
        with blocked_signals(signal.SIGINT, signal.SIGTERM):
            trial = study.ask()
            # with the trial: whose it is, so that a worker killed outright leaves no trial
            # running (see fail_orphans)
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        value = objective(trial)
        state = states.COMPLETE
    except optuna.TrialPruned:
        state = states.PRUNED
    finally:
        if trial is not None:
            with blocked_signals(signal.SIGINT, signal.SIGTERM):
                study.tell(trial, value if state == states.COMPLETE else None, state=state)


# ------------------------------------------------------------------------------------ tune


@dataclass
class Progress:
    """A snapshot of a search, for progress lines: trials completed, pruned, failed and
    running; the best validation accuracy and its trial; seconds left (None: no time budget);
    the trials that finished since the last snapshot."""

    completed: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    best: float | None = None
    best_trial: int | None = None
    left_s: float | None = None
    trials_goal: int | None = None
    new: list = field(default_factory=list)


def snapshot(study, budget: Budget, seen: set[int]) -> Progress:
    optuna = need_optuna()
    states = optuna.trial.TrialState
    progress = Progress(trials_goal=budget.trials)
    if budget.deadline is not None:
        progress.left_s = max(0.0, budget.deadline - time.time())
    for trial in study.get_trials(deepcopy=False):
        if trial.state == states.COMPLETE:
            progress.completed += 1
            if progress.best is None or trial.value > progress.best:
                progress.best, progress.best_trial = trial.value, trial.number
        elif trial.state == states.PRUNED:
            progress.pruned += 1
        elif trial.state == states.FAIL:
            progress.failed += 1
        elif trial.state == states.RUNNING:
            progress.running += 1
        if trial.state.is_finished() and trial.number not in seen:
            seen.add(trial.number)
            progress.new.append(trial)
    return progress


def tune(
    dataset: str = "digits",
    model: str | None = None,
    *,
    out: str | Path,
    trials: int | None = None,
    time_budget: float | None = None,
    jobs: int = 1,
    storage: str | None = None,
    study: str | None = None,
    space: Space | dict | str | Path | None = None,
    pruner="median",
    seed: int = 0,
    val_fraction: float = 0.1,
    device: str = "auto",
    retrain_seeds: int = 3,
    plots: bool = True,
    on_progress: Callable[[Progress], None] | None = None,
    on_retrain: Callable[[int], None] | None = None,
    on_start: Callable[[str, str, int], None] | None = None,
    command: str | None = None,
    sampler_seed: int | None = None,
):
    """Search training configurations of ``model`` on ``dataset`` with Optuna, and report.

    Args:
        dataset: a bundled classification dataset.
        model: ``mlp`` or ``cnn1d`` (default: the dataset's model).
        out: the output folder: ``study.db`` (the default storage), ``best.toml`` (runnable as
            ``gradwise train --config best.toml``), ``summary.md``, the plots
            (``history.png``, ``importances.png``, ``parallel.png``) and ``retrain/``.
        trials: stop once the study holds this many finished trials (its earlier ones count).
        time_budget: seconds of search (trials in flight at the end finish).
            Without ``trials`` or ``time_budget``: 20 trials.
        jobs: worker processes (spawned; one torch thread each) sharing the storage;
            ``jobs=1`` runs the trials in this process.
        storage: an Optuna storage URL (``postgresql://...``, ``sqlite:///...``) or an Optuna
            journal file (``journal:PATH``) to share the study with other machines.
        study: the study's name (default ``gradwise-<dataset>-<model>``). A study of that name
            made with another space or base configuration is refused.
        space: a :class:`Space`, a dict of overrides, or a TOML file of overrides.
        pruner: ``median`` (Optuna's MedianPruner), ``hyperband``, ``none``, or an Optuna
            pruner. Trials report at steps 10, 20, ..., 100 (each tenth of their epochs).
        seed: the training seed of every trial; it also fixes the train/validation split
            (``split_seed``), which the retrain keeps.
        retrain_seeds: at the end, the best configuration and the defaults are trained with
            this many seeds (``seed``, ``seed + 1``, ...) on the same split, and their test
            accuracy reported as mean ± std (0: no retrain).
        on_progress: called with a :class:`Progress` after each trial (each second with
            ``jobs > 1``).
        on_retrain: called with the best trial's number before the retrain starts.
        on_start: called as ``on_start(storage_url, study_name, earlier_trials)`` once the
            study is open and checked, before the first trial.
        sampler_seed: the TPE sampler's seed (worker ``i`` gets ``sampler_seed + i``);
            None: random.

    Returns: a :class:`~gradwise.lab.tune.report.TuneResult`. The search uses the validation
    accuracy only; the test set is read for the report.
    """
    optuna = need_optuna()
    from gradwise.lab.tune.report import write_report
    from gradwise.train.data import load_dataset

    owner = "tune"
    if trials is not None:
        checks.integer(owner, "trials", trials, low=1)
    if time_budget is not None:
        checks.positive(owner, "time_budget", time_budget)
    if trials is None and time_budget is None:
        trials = 20
    jobs = checks.integer(owner, "jobs", jobs, low=1)
    retrain_seeds = checks.integer(owner, "retrain_seeds", retrain_seeds, low=0)
    make_pruner(pruner)  # a bad name is refused before anything runs
    base = TrainConfig(
        dataset=dataset,
        model=model,
        seed=seed,
        split_seed=seed,
        val_fraction=val_fraction,
        device=device,
    )
    resolved = base.resolved()
    base = dataclasses.replace(base, model=resolved.model)
    data = load_dataset(dataset, seed=seed, val_fraction=val_fraction)
    if data.task != "classification" or data.x_val is None:
        raise ConfigError(
            f"tune: searches on a classification dataset's validation accuracy; {dataset!r} "
            + (
                "is a regression dataset"
                if data.task != "classification"
                else "has no validation rows (val_fraction=0)"
            )
        )
    if isinstance(space, Space):
        chosen = space
    elif isinstance(space, dict) or space is None:
        chosen = Space.build(dataset, base.model, space)
    else:
        chosen = Space.from_toml(space, dataset, base.model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, out)
    name = study or f"gradwise-{dataset}-{base.model}"
    stamp = {"space": chosen.to_json(), "base": base.to_toml()}
    store = open_storage(url)
    try:
        handle = optuna.create_study(
            study_name=name, storage=store, direction="maximize", load_if_exists=True
        )
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"tune: cannot open the study {name!r} in {url}: {first}") from None
    held = {key: handle.user_attrs.get(f"gradwise_{key}") for key in stamp}
    if all(v is None for v in held.values()):
        for key, value in stamp.items():
            handle.set_user_attr(f"gradwise_{key}", value)
        first = chosen.first_trial(base)
        if first is not None and not handle.trials:
            handle.enqueue_trial(first, skip_if_exists=True)
    elif held != stamp:
        what = "search space" if held["space"] != stamp["space"] else "dataset/model/seed"
        raise ConfigError(
            f"tune: the study {name!r} in {url} was made with another {what}; "
            "give another --study (or --out), or the same space"
        )
    fail_orphans(handle, dead_here)  # an earlier search here killed outright (SIGKILL)
    if on_start is not None:
        states = optuna.trial.TrialState
        earlier = sum(t.state in (states.COMPLETE, states.PRUNED) for t in handle.trials)
        on_start(url, name, earlier)
    threads = 1 if jobs > 1 else None
    objective = Objective(chosen, base, len(data.x_train), threads)
    started = time.time()
    budget = Budget(trials, started + time_budget if time_budget else None, started)
    seen: set[int] = set()
    if jobs == 1:

        def after_trial(study_) -> None:
            if on_progress is not None:
                on_progress(snapshot(study_, budget, seen))

        work(url, name, objective, pruner, budget, False, after_trial, sampler_seed)
    else:
        run_workers(url, name, objective, pruner, budget, jobs, on_progress, seen, sampler_seed)
    handle = optuna.load_study(study_name=name, storage=open_storage(url))
    return write_report(
        handle,
        out,
        base=chosen.fixed_budget(base),  # the defaults retrained as long as every trial ran
        storage=url,
        jobs=jobs,
        retrain_seeds=retrain_seeds,
        plots=plots,
        wall_time=time.time() - started,
        command=command,
        on_retrain=on_retrain,
    )


# ---------------------------------------------------------------------------- the workers


def run_workers(
    url, name, objective, pruner, budget, jobs, on_progress, seen, sampler_seed=None
) -> None:
    """``jobs`` spawned worker processes running :func:`work` against the storage ``url``; this
    process reports progress from the storage each second. However this ends (Ctrl-C, SIGTERM
    turned into ``KeyboardInterrupt`` by the caller, an error in a worker), the workers are
    stopped (their trials in flight marked failed) and reaped before it returns or raises."""
    optuna = need_optuna()
    context = multiprocessing.get_context("spawn")
    pool: list[tuple[multiprocessing.Process, object]] = []
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    last = None
    try:
        for i in range(jobs):
            here, there = context.Pipe(duplex=False)
            process = context.Process(
                target=worker_main,
                args=(there, url, name, objective, pruner, budget, sampler_seed, i),
                name=f"gradwise-tune-{i}",
            )
            with blocked_signals(signal.SIGINT):
                process.start()
            there.close()
            pool.append((process, here))
        alive = list(pool)
        while alive:
            wait([p.sentinel for p, _ in alive], timeout=1.0)
            for process, conn in list(alive):
                if process.is_alive():
                    continue
                alive.remove((process, conn))
                message = conn.recv() if conn.poll() else None
                if message is None:
                    raise RuntimeError(
                        f"tune: a worker process exited with code {process.exitcode} "
                        "before the search's end"
                    )
                if message[0] == "error":
                    error, trace = message[1], message[2]
                    error.__cause__ = RuntimeError(f"in the worker process:\n{trace}")
                    raise error
            if on_progress is not None:
                # a signal's KeyboardInterrupt must not land inside the storage's code: one
                # that left its connection half-used would hang the reads and writes after it
                with blocked_signals(signal.SIGINT, signal.SIGTERM):
                    progress = snapshot(study, budget, seen)
                key = (progress.completed, progress.pruned, progress.failed, progress.running)
                if progress.new or key != last or progress.left_s is not None:
                    on_progress(progress)
                last = key
    finally:
        # SIGTERM: each marks its trial failed and exits
        stop_workers([process for process, _ in pool], kill_after_s=5.0)
        for _, conn in pool:
            conn.close()
        ours = {f"{socket.gethostname()}:{process.pid}" for process, _ in pool}
        with blocked_signals(signal.SIGINT, signal.SIGTERM):
            fail_orphans(study, lambda worker: worker in ours)


def fail_orphans(study, left_by: Callable[[str | None], bool]) -> None:
    """Mark failed the running trials whose worker (``host:pid``) ``left_by`` says is gone: a
    worker killed before it could mark its trial failed (SIGKILL after the grace time, or a
    signal while it was still starting). Trials of other machines sharing the storage, and
    of workers still alive, are left alone."""
    optuna = need_optuna()
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        if left_by(trial.user_attrs.get("worker")):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


def dead_here(worker: str | None) -> bool:
    """Whether ``worker`` (``host:pid``) was a process of this machine that no longer runs."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:  # Linux: a zombie (exited, never reaped) is gone too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: whether a signal can reach it
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False


def worker_main(conn, url, name, objective, pruner, budget, sampler_seed, index) -> None:
    """A worker process: trials until the budget is spent; SIGTERM ends the trial in flight
    (Optuna marks it failed) and the process; it exits by itself if its parent dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    parent = multiprocessing.parent_process()
    if parent is not None:

        def watch() -> None:
            wait([parent.sentinel])
            os._exit(1)

        threading.Thread(target=watch, name="gradwise-parent-watch", daemon=True).start()
    import torch

    torch.set_num_threads(1)  # one thread per worker: jobs workers on jobs cores
    try:
        seed = None if sampler_seed is None else sampler_seed + index
        work(url, name, objective, pruner, budget, True, None, seed)
    except KeyboardInterrupt:
        conn.send(("stopped", None, ""))
        return
    except Exception as e:
        try:
            conn.send(("error", e, traceback.format_exc()))
        except Exception:  # an exception that does not pickle: its text does
            conn.send(("error", RuntimeError(str(e)), traceback.format_exc()))
        return
    conn.send(("done", None, ""))

"""Running a comparison: :func:`compare` trains every configuration once per seed on at most
``jobs`` spawned worker processes (one run at a time each, one torch thread each), or one after
another in this process with ``jobs=1``; :func:`train_one` is one run. However a comparison ends
(Ctrl-C and SIGTERM included), its workers are stopped and reaped, and a worker whose parent
dies exits by itself."""

from __future__ import annotations

import collections
import dataclasses
import math
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from multiprocessing.connection import wait
from pathlib import Path

from gradwise import checks
from gradwise.errors import ConfigError
from gradwise.lab.compare.grids import label_configs
from gradwise.lab.compare.records import Comparison, RunRecord
from gradwise.lab.workers import blocked_signals, stop_workers
from gradwise.train.config import TrainConfig
from gradwise.train.history import History


def compare(
    configs: Mapping[str, TrainConfig] | Sequence[TrainConfig],
    data: str | Path | None = None,
    *,
    seeds: int | Iterable[int] = 3,
    jobs: int | None = None,
    out: str | Path | None = None,
    target_accuracy: float | None = None,
    on_result: Callable[[RunRecord, int, int], None] | None = None,
    title: str = "",
    command: str | None = None,
) -> Comparison:
    """Train each configuration once per seed and compare them.

    Args:
        configs: ``{label: TrainConfig}``, or a list of configurations (labelled by what tells
            them apart, see :func:`label_configs`). :func:`grid` builds such a dict from lists.
        data: a bundled dataset name or a data file (CSV / NPZ / ``.pt``) for every
            configuration; ``None`` keeps each configuration's own.
        seeds: how many seeds (the configuration's ``seed``, ``seed + 1``, ...) or which ones.
            The seed sets the initial weights, the batch order, dropout and the validation rows.
        jobs: runs in parallel, each in its own process with one torch thread (default: the
            machine's cores). ``jobs=1`` runs them one after another in this process.
        out: the report folder: ``curves.png``, ``summary.md``, ``summary.csv``, ``runs.csv``
            and ``runs/<label>-seed<k>/`` with each run's ``history.jsonl``, ``metrics.csv`` and
            ``config.toml``. ``None`` writes nothing (use the returned :class:`Comparison`).
        target_accuracy: the validation accuracy whose steps and time to reach are reported
            (classification only). Default: 95% of the best configuration's mean best
            accuracy, rounded down to a whole percent.
        on_result: called as ``on_result(record, done, total)`` after each run.
        title: written at the top of ``summary.md`` and on the plot.
        command: written at the top of ``summary.md``.

    A run that diverges (``Diverged`` with ``nan_policy="raise"``, or a non-finite final loss)
    is recorded as diverged, with its history up to its last finished epoch; any other error in
    a run is raised here. Worker processes are *spawned* (torch and ``fork`` do not mix), so a
    script that calls ``compare`` with ``jobs > 1`` must do so under
    ``if __name__ == "__main__":``.

    Example::

        >>> from gradwise.lab import compare, grid
        >>> from gradwise.train.run import TrainConfig
        >>> configs = grid(TrainConfig(dataset="moons", epochs=2), optimizers=["sgd", "adam"])
        >>> result = compare(configs, seeds=2, jobs=1)
        >>> [(row["label"], row["runs"]) for row in result.summary()]
        [('sgd lr=0.1', 2), ('adam lr=1e-3', 2)]
    """
    owner = "compare"
    if isinstance(configs, Mapping):
        labelled = {str(k): v for k, v in configs.items()}
    elif isinstance(configs, Sequence) and not isinstance(configs, str):
        labelled = label_configs(list(configs))
    else:
        checks.refuse(owner, "configs", "a dict of TrainConfigs or a list", configs, TypeError)
    if not labelled:
        raise ConfigError("compare: configs is empty; give at least one configuration")
    for label, config in labelled.items():
        if not isinstance(config, TrainConfig):
            checks.refuse(owner, f"configs[{label!r}]", "a TrainConfig", config, TypeError)
    if data is not None:
        from gradwise.train.data import DATASETS

        data = str(data)
        if data in DATASETS:
            labelled = {
                k: dataclasses.replace(c, dataset=data, data=None) for k, c in labelled.items()
            }
        else:
            labelled = {k: dataclasses.replace(c, data=data) for k, c in labelled.items()}
    if isinstance(seeds, bool):
        checks.refuse(owner, "seeds", "a number of seeds >= 1 or a list of seeds", seeds, TypeError)
    if isinstance(seeds, int):
        checks.integer(owner, "seeds", seeds, low=1)
        offsets = list(range(seeds))
        seed_lists = {k: [c.seed + i for i in offsets] for k, c in labelled.items()}
    else:
        chosen = [checks.integer(owner, "seeds[]", s, low=0) for s in seeds]
        if not chosen:
            raise ConfigError("compare: seeds is empty; give a count >= 1 or a list of seeds")
        seed_lists = {k: list(chosen) for k in labelled}
    if jobs is None:
        jobs = default_jobs()
    jobs = checks.integer(owner, "jobs", jobs, low=1)
    if target_accuracy is not None:
        target_accuracy = checks.in_range(
            owner, "target_accuracy", target_accuracy, 0.0, 1.0, closed_high=True
        )
    resolved = {label: c.resolved() for label, c in labelled.items()}  # errors before any run

    out_path = Path(out) if out is not None else None
    tasks = []
    for i in range(max(len(s) for s in seed_lists.values())):  # seed-major: early results span
        for label, config in resolved.items():  # every configuration
            if i < len(seed_lists[label]):
                seed = seed_lists[label][i]
                folder = None
                if out_path is not None:
                    folder = out_path / "runs" / f"{slug(label)}-seed{seed}"
                tasks.append((label, dataclasses.replace(config, seed=seed), folder))
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    records: list[RunRecord] = []
    total = len(tasks)

    def done(record: RunRecord) -> None:
        records.append(record)
        if on_result is not None:
            on_result(record, len(records), total)

    workers = min(jobs, total)
    if workers == 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for task in tasks:
                done(train_one(*task))
        finally:
            torch.set_num_threads(threads)
    else:
        _run_in_processes(tasks, workers, done)
    comparison = Comparison(
        configs=resolved,
        runs=records,
        jobs=workers,
        wall_time=time.perf_counter() - started,
        command=command,
        out=out_path,
        title=title or _default_title(resolved, seed_lists),
    )
    if target_accuracy is None and comparison.metric == "accuracy":
        best = [row["best_accuracy_mean"] for row in comparison.summary()]
        best = [b for b in best if math.isfinite(b)]
        if best:
            target_accuracy = math.floor(0.95 * max(best) * 100) / 100
    comparison.target = target_accuracy if comparison.metric == "accuracy" else None
    if out_path is not None:
        comparison.write(out_path)
    return comparison


def train_one(label: str, config: TrainConfig, folder: Path | None) -> RunRecord:
    """One run of a comparison (what each worker process executes): ``gradwise.train.run.run``
    with ``nan_policy="raise"``; a divergence becomes a diverged :class:`RunRecord`."""
    from gradwise.train import Diverged
    from gradwise.train import checkpoint as ckpt
    from gradwise.train.run import run

    config = dataclasses.replace(
        config, nan_policy="raise", checkpoint_every=max(1, (config.epochs or 20) // 20)
    )
    scratch = None
    if folder is None:
        scratch = tempfile.TemporaryDirectory(prefix="gradwise-compare-")
        where = Path(scratch.name)
    else:
        where = Path(folder)
        if where.exists():
            shutil.rmtree(where)
    try:
        try:
            result = run(config, where, progress=False, plots=False)
            history, config = result.history, result.config
            reason = _nonfinite(history)
        except Diverged as e:
            config = config.resolved()
            reason = str(e).split(";")[0]
            try:  # the history up to the last checkpoint (the run's last finished epochs)
                payload, _, _ = ckpt.load_latest(where)
                history = History.from_state_dict(payload["history"])
            except Exception:
                history = History()
            history.stopped = reason
            if folder is not None:
                history.to_jsonl(where / "history.jsonl")
                history.to_csv(where / "metrics.csv")
        for name in (ckpt.CURRENT, ckpt.PREVIOUS):
            (where / name).unlink(missing_ok=True)
    finally:
        if scratch is not None:
            scratch.cleanup()
    return RunRecord(
        label, config.seed, config, history, reason is not None, reason, folder and Path(folder)
    )


def _run_in_processes(tasks: list[tuple], workers: int, done: Callable[[RunRecord], None]) -> None:
    """Run ``tasks`` (:func:`train_one`'s arguments) on ``workers`` spawned processes, one task
    at a time each, calling ``done(record)`` as each run ends.

    However this ends (all done, an error, Ctrl-C, or SIGTERM turned into ``KeyboardInterrupt``
    by the caller), the workers are stopped and reaped before it returns or raises. Workers
    ignore SIGINT (a terminal's Ctrl-C reaches the whole process group: this process decides
    what stops), and exit by themselves if this process dies (:func:`_worker_main`).
    """
    context = multiprocessing.get_context("spawn")
    queue = collections.deque(tasks)
    pool: list[tuple[multiprocessing.Process, object]] = []  # (process, this end of its pipe)
    busy: dict[object, tuple] = {}  # pipe end -> (process, task)
    finished = False
    try:
        for i in range(workers):
            here, there = context.Pipe()
            process = context.Process(
                target=_worker_main, args=(there,), name=f"gradwise-compare-{i}"
            )
            with blocked_signals(signal.SIGINT):  # a Ctrl-C while it starts: blocked, then ignored
                process.start()
            there.close()
            pool.append((process, here))
        for process, conn in pool:
            if queue:
                task = queue.popleft()
                conn.send(task)
                busy[conn] = (process, task)
        while busy:
            sentinels = {process.sentinel: conn for conn, (process, _) in busy.items()}
            for ready in wait([*busy, *sentinels], timeout=1.0):
                conn = sentinels.get(ready, ready)
                if conn not in busy:  # its message and its exit were both ready
                    continue
                process, task = busy.pop(conn)
                if not conn.poll():  # the process ended without an answer
                    raise _died(process, task)
                outcome, value, trace = conn.recv()
                if outcome == "error":
                    value.__cause__ = RuntimeError(f"in the worker process:\n{trace}")
                    raise value
                done(value)
                if queue:
                    task = queue.popleft()
                    conn.send(task)
                    busy[conn] = (process, task)
        for _, conn in pool:
            conn.send(None)  # no more work: exit
        finished = True
    finally:
        stop_workers([process for process, _ in pool], grace_s=5.0 if finished else 0.0)
        for _, conn in pool:
            conn.close()


def _died(process: multiprocessing.Process, task: tuple) -> RuntimeError:
    process.join(1.0)
    code = process.exitcode
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    return RuntimeError(
        f"compare: a worker process {how} before finishing its run ({task[0]}, seed "
        f"{task[1].seed}). Called from a script? Put the call under "
        "`if __name__ == '__main__':` (worker processes are spawned and import the script "
        "again), or pass jobs=1."
    )


def _worker_main(conn) -> None:
    """A worker process: runs the tasks it receives until it receives ``None`` (or its pipe
    closes), sending back ``("done", record, "")`` or ``("error", exception, traceback)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; SIGTERM still ends it
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _exit_with_parent()
    import torch

    # one thread per run: with several processes on few cores, OpenMP threads spinning on
    # barriers cost far more than they win (docs/benchmarking.md)
    torch.set_num_threads(1)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        try:
            message = ("done", train_one(*task), "")
        except Exception as e:
            message = ("error", e, traceback.format_exc())
        try:
            conn.send(message)
        except Exception:  # an exception that does not pickle: its text does
            conn.send(("error", RuntimeError(str(message[1])), message[2]))


def _exit_with_parent() -> None:
    """In a worker: exit at once if the parent process dies (a SIGKILL, a crash), whatever the
    worker is doing, so that no worker outlives the comparison."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="gradwise-parent-watch", daemon=True).start()


def _nonfinite(history: History) -> str | None:
    last = history.epochs[-1] if history.epochs else {}
    for key in ("train_loss", "val_loss"):
        value = last.get(key)
        if value is not None and not math.isfinite(value):
            return f"the final {key.replace('_', ' ')} is {value}"
    return None


def default_jobs() -> int:
    """The cores this process may use."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def slug(label: str) -> str:
    """A folder name for a label: ``"adam lr=1e-3"`` -> ``"adam-lr_1e-3"``."""
    text = label.strip().lower().replace("=", "_").replace("+", "-")
    text = re.sub(r"[^a-z0-9._-]+", "-", text).strip("-.")
    return text or "config"


def _default_title(configs: dict[str, TrainConfig], seeds: dict[str, list[int]]) -> str:
    first = next(iter(configs.values()))
    data = Path(first.data).name if first.data else first.dataset
    n_seeds = max(len(s) for s in seeds.values())
    return (
        f"{data} · {first.model} · {len(configs)} configuration"
        f"{'s' if len(configs) != 1 else ''} × {n_seeds} seed{'s' if n_seeds != 1 else ''}"
    )

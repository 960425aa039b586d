"""The comparison bench: the same model on the same data under several configurations x seeds.

:func:`compare` trains every configuration once per seed, each run in its own process (at most
``jobs`` at a time, one torch thread each), and returns a :class:`Comparison` that summarizes the
runs (final and best accuracy mean ± std, steps and time to a target accuracy, diverged runs
flagged) and draws their curves. :func:`grid` builds the configurations from lists of choices
(optimizers x rates x batch modes x schedules x inits x regularizers) with short labels.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import multiprocessing
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from gradwise import checks
from gradwise.errors import ConfigError
from gradwise.train.history import History
from gradwise.train.run import OPTIMIZER_OPTIONS, OPTION_DEFAULTS, TrainConfig, options_given

__all__ = [
    "Comparison",
    "RunRecord",
    "compare",
    "grid",
    "parse_regularizer",
    "parse_schedule_choice",
]

#: regularizer words of :func:`grid` and the TrainConfig field each sets
REGULARIZERS = {"l1": "l1", "l2": "l2", "wd": "weight_decay", "dropout": "dropout"}


# ----------------------------------------------------------------------------------- records


@dataclass
class RunRecord:
    """One training run of a comparison: its configuration, seed, history and fate.

    A run that diverged (a NaN/inf loss or gradient, or a non-finite final loss) has
    ``diverged=True``, ``reason`` saying what happened, and the history up to its last
    finished epoch.
    """

    label: str
    seed: int
    config: TrainConfig
    history: History
    diverged: bool = False
    reason: str | None = None
    folder: Path | None = None

    @property
    def metric_key(self) -> str:
        """The epoch column the comparison ranks by: validation accuracy (or RMSE), else
        training."""
        for key in ("val_accuracy", "train_accuracy", "val_rmse", "train_rmse"):
            if any(row.get(key) is not None for row in self.history.epochs):
                return key
        return "val_loss"


@dataclass
class Comparison:
    """The runs of :func:`compare` and what is made of them.

    ``configs`` maps each label to its (resolved) configuration, in order; ``runs`` holds every
    run. :meth:`summary` gives one row per configuration; :meth:`write` writes the report folder
    (``curves.png``, ``summary.md``, ``summary.csv``, ``runs.csv``).
    """

    configs: dict[str, TrainConfig]
    runs: list[RunRecord]
    target: float | None = None
    jobs: int = 1
    wall_time: float = 0.0
    command: str | None = None
    out: Path | None = None
    title: str = ""

    @property
    def labels(self) -> list[str]:
        return list(self.configs)

    @property
    def metric(self) -> str:
        """``"accuracy"`` for classification, ``"rmse"`` for regression."""
        for record in self.runs:
            key = record.metric_key
            if key.endswith("accuracy"):
                return "accuracy"
            if key.endswith("rmse"):
                return "rmse"
        return "accuracy"

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "accuracy"

    def runs_of(self, label: str) -> list[RunRecord]:
        return sorted((r for r in self.runs if r.label == label), key=lambda r: r.seed)

    # ----------------------------------------------------------------------------- summary
    def summary(self) -> list[dict]:
        """One dict per configuration, in order.

        Keys: ``label``, ``runs``, ``diverged``, then mean and std over the runs that did not
        diverge of ``final_<metric>`` (validation, last epoch), ``best_<metric>`` (validation,
        best epoch), ``test_<metric>``, ``final_val_loss``, ``train_time`` (seconds in ``fit``)
        and ``steps``; ``reached`` (runs that reached the target), ``steps_to_target`` and
        ``time_to_target`` (means over the runs that reached it: the first epoch end at or past
        the target, its step count and seconds since the start of training). Stds are sample
        stds (n − 1), 0 for a single run; a mean over no runs is NaN.
        """
        metric, better = self.metric, max if self.higher_is_better else min
        rows = []
        for label in self.labels:
            runs = self.runs_of(label)
            ok = [r for r in runs if not r.diverged]
            row: dict = {"label": label, "runs": len(runs), "diverged": len(runs) - len(ok)}
            finals, bests, tests, losses, times, steps = [], [], [], [], [], []
            reach_steps, reach_times = [], []
            for r in ok:
                key = r.metric_key
                values = [e[key] for e in r.history.epochs if e.get(key) is not None]
                finals.append(values[-1] if values else math.nan)
                bests.append(better(values) if values else math.nan)
                tests.append(r.history.summary.get(f"test_{metric}", math.nan))
                losses.append(r.history.last("val_loss", r.history.last("train_loss", math.nan)))
                times.append(r.history.summary.get("train_time", r.history.wall_time))
                steps.append(r.history.epochs[-1]["step"] if r.history.epochs else 0)
                hit = self._first_reach(r)
                if hit is not None:
                    reach_steps.append(hit[0])
                    reach_times.append(hit[1])
            for name, values in (
                (f"final_{metric}", finals),
                (f"best_{metric}", bests),
                (f"test_{metric}", tests),
                ("final_val_loss", losses),
                ("train_time", times),
                ("steps", steps),
            ):
                row[f"{name}_mean"], row[f"{name}_std"] = mean_std(values)
            row["target"] = self.target
            row["reached"] = len(reach_steps) if self.target is not None else None
            row["steps_to_target"] = mean_std(reach_steps)[0] if reach_steps else math.nan
            row["time_to_target"] = mean_std(reach_times)[0] if reach_times else math.nan
            rows.append(row)
        return rows

    def _first_reach(self, record: RunRecord) -> tuple[int, float] | None:
        if self.target is None:
            return None
        key = record.metric_key
        for row in record.history.epochs:
            value = row.get(key)
            if value is None:
                continue
            if (value >= self.target) if self.higher_is_better else (value <= self.target):
                return int(row["step"]), float(row["elapsed"])
        return None

    # ----------------------------------------------------------------------------- reports
    def to_csv(self, path: str | Path) -> Path:
        """``summary.csv``: the :meth:`summary` rows plus each configuration's settings."""
        rows = self.summary()
        settings = ("optimizer", "lr", "batch_size", "schedule", "plateau", "init")
        settings += ("l1", "l2", "weight_decay", "dropout", "epochs", "dataset", "model")
        columns = list(rows[0]) + list(settings) if rows else []
        path = Path(path)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                config = self.configs[row["label"]]
                out = {**row, **{k: getattr(config, k) for k in settings}}
                if config.data is not None:
                    out["dataset"] = config.data
                writer.writerow({k: _csv_value(v) for k, v in out.items()})
        return path

    def runs_to_csv(self, path: str | Path) -> Path:
        """``runs.csv``: one row per run (label, seed, diverged, final and best metric, test
        metric, steps, time, reason)."""
        metric, better = self.metric, max if self.higher_is_better else min
        path = Path(path)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["label", "seed", "diverged", f"final_{metric}", f"best_{metric}",
                 f"test_{metric}", "final_val_loss", "steps", "train_time", "folder", "reason"]
            )  # fmt: skip
            for label in self.labels:
                for r in self.runs_of(label):
                    key = r.metric_key
                    values = [e[key] for e in r.history.epochs if e.get(key) is not None]
                    writer.writerow(
                        _csv_value(v)
                        for v in (
                            label,
                            r.seed,
                            r.diverged,
                            values[-1] if values else None,
                            better(values) if values else None,
                            r.history.summary.get(f"test_{metric}"),
                            r.history.last("val_loss"),
                            r.history.epochs[-1]["step"] if r.history.epochs else 0,
                            r.history.summary.get("train_time", r.history.wall_time),
                            r.folder.name if r.folder is not None else None,
                            r.reason,
                        )
                    )
        return path

    def to_markdown(self) -> str:
        """``summary.md``: what was compared, the table, and how to read it."""
        rows = self.summary()
        metric = self.metric
        pct = metric == "accuracy"
        first = next(iter(self.configs.values()), None)
        seeds = sorted({r.seed for r in self.runs})
        lines = [f"# {self.title or 'gradwise compare'}", ""]
        if self.command:
            lines += ["```", self.command, "```", ""]
        if first is not None:
            data = Path(first.data).name if first.data else first.dataset
            lines.append(
                f"{len(self.configs)} configuration(s) x {len(seeds)} seed(s) "
                f"({', '.join(map(str, seeds))}) on **{data}** ({first.model}, {first.epochs} "
                f"epochs); {len(self.runs)} runs, {self.jobs} at a time, "
                f"{self.wall_time:.1f} s in all."
            )
            lines.append("")
        head = ["configuration", f"final val {metric}", f"best val {metric}", f"test {metric}"]
        head += ["final val loss"]
        if self.target is not None:
            target = f"{self.target:.1%}".replace(".0%", "%") if pct else f"{self.target:g}"
            head += [f"steps to {target}", f"time to {target}", "reached"]
        head += ["steps", "train time", "diverged"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        for row in rows:
            n_ok = row["runs"] - row["diverged"]
            cells = [f"`{row['label']}`"]
            for name in (f"final_{metric}", f"best_{metric}", f"test_{metric}"):
                cells.append(fmt_mean_std(row[f"{name}_mean"], row[f"{name}_std"], pct))
            cells.append(fmt_mean_std(row["final_val_loss_mean"], row["final_val_loss_std"]))
            if self.target is not None:
                cells.append(_fmt(row["steps_to_target"], "{:.0f}"))
                cells.append(_fmt(row["time_to_target"], "{:.2f} s"))
                cells.append(f"{row['reached']}/{n_ok}")
            cells.append(_fmt(row["steps_mean"], "{:.0f}"))
            cells.append(_fmt(row["train_time_mean"], "{:.2f} s"))
            flag = f"**{row['diverged']}/{row['runs']}**" if row["diverged"] else "0"
            cells.append(flag)
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            "- Numbers are mean ± std over the seeds (sample std); *final* is the last epoch, "
            "*best* the best epoch; val = the validation split, test = the held-out test set.",
        ]
        if self.target is not None:
            lines.append(
                "- *steps/time to target*: the first epoch end at which the validation "
                f"{metric} reached the target, averaged over the runs that reached it; "
                "*reached* counts them."
            )
        lines.append(
            "- Diverged runs (NaN/inf loss or gradient) are left out of every mean and counted in "
            "*diverged*."
        )
        lines.append(
            f"- Times are seconds inside the training loop, one torch thread per run, with "
            f"{self.jobs} run(s) in parallel; they depend on the machine and its load."
        )
        diverged = [r for r in self.runs if r.diverged]
        if diverged:
            lines += ["", "## Diverged runs", ""]
            for r in diverged:
                lines.append(f"- `{r.label}` seed {r.seed}: {r.reason}")
        lines += [
            "",
            "Files: `curves.png` (mean curves, min-max bands), `summary.csv` (this table), "
            "`runs.csv` "
            "(one row per run), `runs/<configuration>-seed<k>/` (each run's `history.jsonl`, "
            "`metrics.csv`, `config.toml`).",
            "",
        ]
        return "\n".join(lines)

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """``curves.png``; see :func:`gradwise.lab.plots.plot_comparison`."""
        from gradwise.lab.plots import plot_comparison

        return plot_comparison(self, path, title=self.title if title is None else title)

    def write(self, out: str | Path) -> Path:
        """Write ``curves.png``, ``summary.md``, ``summary.csv``, ``runs.csv`` and
        ``comparison.json`` (what :meth:`load` needs besides the runs' folders) into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.plot(out / "curves.png")
        (out / "summary.md").write_text(self.to_markdown())
        self.to_csv(out / "summary.csv")
        self.runs_to_csv(out / "runs.csv")
        meta = {
            "labels": self.labels,
            "title": self.title,
            "command": self.command,
            "target": self.target,
            "jobs": self.jobs,
            "wall_time": self.wall_time,
            "runs": [
                {
                    "label": r.label,
                    "seed": r.seed,
                    "diverged": r.diverged,
                    "reason": r.reason,
                    "folder": r.folder.name if r.folder is not None else None,
                }
                for r in self.runs
            ],
        }
        (out / "comparison.json").write_text(json.dumps(meta, indent=1) + "\n")
        return out

    @classmethod
    def load(cls, folder: str | Path) -> Comparison:
        """A comparison read back from its report folder (to redraw or re-summarize it)."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "comparison.json").read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"{folder} has no comparison.json (is it a compare report?)"
            ) from None
        runs, configs = [], {}
        for entry in meta["runs"]:
            run_dir = folder / "runs" / entry["folder"]
            config = TrainConfig.from_toml(run_dir / "config.toml")
            history_file = run_dir / "history.jsonl"
            history = History.from_jsonl(history_file) if history_file.exists() else History()
            runs.append(
                RunRecord(
                    entry["label"], entry["seed"], config, history, entry["diverged"],
                    entry["reason"], run_dir,
                )
            )  # fmt: skip
            configs.setdefault(entry["label"], config)
        return cls(
            configs={label: configs[label] for label in meta["labels"] if label in configs},
            runs=runs,
            target=meta.get("target"),
            jobs=meta.get("jobs", 1),
            wall_time=meta.get("wall_time", 0.0),
            command=meta.get("command"),
            out=folder,
            title=meta.get("title", ""),
        )


# ------------------------------------------------------------------------------------ compare


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
        title, command: written at the top of ``summary.md`` (and ``title`` on the plot).

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
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
            pending = {pool.submit(train_one, *task) for task in tasks}
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        done(future.result())
            except BrokenProcessPool as e:
                raise RuntimeError(
                    "compare: a worker process died before finishing its run. Called from a "
                    "script? Put the call under `if __name__ == '__main__':` (worker processes "
                    "are spawned and import the script again), or pass jobs=1."
                ) from e
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
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
    from gradwise.train import checkpoint as ckpt
    from gradwise.train.loop import Diverged
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


def _worker_init() -> None:
    import torch

    # one thread per run: with several processes on few cores, OpenMP threads spinning on
    # barriers cost far more than they win (docs/benchmarking.md)
    torch.set_num_threads(1)


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


# --------------------------------------------------------------------------------------- grid


def _options_for_some(base: TrainConfig, optimizers: Sequence[str] | None) -> dict[str, dict]:
    """For a grid over several optimizers: an option of ``base`` that only some of them use
    (``momentum``, ``betas``, ``eps``) applies to those, and is reset for the others, as
    ``{optimizer: {option: default}}``. An option that none of them uses is refused."""
    if not optimizers or len(optimizers) < 2:
        return {}
    given = options_given(base)
    resets: dict[str, dict] = {}
    for option, users in OPTIMIZER_OPTIONS.items():
        if not given[option]:
            continue
        if not any(name in users for name in optimizers):
            raise ConfigError(
                f"compare: {option}={getattr(base, option)!r} has no effect with any of the "
                f"optimizers {', '.join(optimizers)}; it applies to {', '.join(users)}"
            )
        for name in optimizers:
            if name not in users:
                resets.setdefault(name, {})[option] = OPTION_DEFAULTS[option]
    return resets


def grid(
    base: TrainConfig | None = None,
    *,
    optimizers: Sequence[str] | None = None,
    lrs: Sequence[float] | None = None,
    batch_sizes: Sequence[str | int] | None = None,
    schedules: Sequence[str] | None = None,
    inits: Sequence[str] | None = None,
    regularizers: Sequence[str] | None = None,
) -> dict[str, TrainConfig]:
    """Every combination of the lists given (their cartesian product), labelled.

    ``base`` holds every other setting. ``lrs`` left out gives each optimizer its own default
    rate. ``batch_sizes``: ``"full"`` (batch descent), ``1`` (stochastic), ``n`` (mini-batch).
    ``schedules``: texts of :func:`gradwise.schedules.parse`; ``"none"`` for a constant rate;
    ``"plateau"`` or a suffix ``+plateau`` adds reduce-on-plateau (see
    :func:`parse_schedule_choice`). ``regularizers``: ``"none"``, ``"l1=1e-4"`` (proximal L1),
    ``"l2=1e-3"`` (L2 penalty), ``"wd=1e-2"`` (weight decay), ``"dropout=0.2"``, or several
    joined by ``+`` (see :func:`parse_regularizer`).

    A label names the optimizer and its rate when either varies, then each other setting that
    varies: ``"adam lr=1e-3"``, ``"sgd lr=0.1 batch 64"``, ``"cosine"``, ``"he init"``,
    ``"l2=1e-3"``.

    Example::

        >>> list(grid(optimizers=["sgd", "adam"], lrs=[0.01, 0.1]))
        ['sgd lr=0.01', 'sgd lr=0.1', 'adam lr=0.01', 'adam lr=0.1']
        >>> list(grid(batch_sizes=["full", 1, 64]))
        ['batch full', 'batch 1', 'batch 64']
    """
    from gradwise.lab.plots import lr_text

    base = base if base is not None else TrainConfig()
    if not isinstance(base, TrainConfig):
        checks.refuse("grid", "base", "a TrainConfig or None", base, TypeError)
    lists = {
        "optimizer": _choices("optimizers", optimizers),
        "lr": _choices("lrs", lrs),
        "batch_size": _choices("batch_sizes", batch_sizes),
        "schedule": _choices("schedules", schedules),
        "init": _choices("inits", inits),
        "regularizer": _choices("regularizers", regularizers),
    }
    unused_by = _options_for_some(base, lists["optimizer"])
    varies = {k: v is not None and len(v) > 1 for k, v in lists.items()}
    show_opt = varies["optimizer"] or varies["lr"] or not any(varies.values())
    configs: dict[str, TrainConfig] = {}
    keys = list(lists)
    for combo in itertools.product(*(lists[k] or [None] for k in keys)):
        choice = dict(zip(keys, combo))
        changes: dict = {}
        parts: list[str] = []
        if choice["optimizer"] is not None:
            changes["optimizer"] = choice["optimizer"]
            changes["lr"] = None  # that optimizer's default unless lrs says otherwise
            changes.update(unused_by.get(choice["optimizer"], {}))
        if choice["lr"] is not None:
            changes["lr"] = checks.positive("grid", "lrs[]", choice["lr"])
        if choice["batch_size"] is not None:
            changes["batch_size"] = str(choice["batch_size"]).strip().lower()
        if choice["schedule"] is not None:
            schedule, plateau = parse_schedule_choice(choice["schedule"])
            changes["schedule"], changes["plateau"] = schedule, plateau
        if choice["init"] is not None:
            changes["init"] = choice["init"]
        if choice["regularizer"] is not None:
            changes.update(parse_regularizer(choice["regularizer"]))
        config = dataclasses.replace(base, **changes)
        resolved = config.resolved()
        if show_opt:
            parts.append(f"{resolved.optimizer} lr={lr_text(resolved.lr)}")
        if varies["batch_size"]:
            parts.append(f"batch {resolved.batch_size}")
        if varies["schedule"]:
            parts.append(_schedule_label(choice["schedule"]))
        if varies["init"]:
            parts.append(f"{resolved.init} init")
        if varies["regularizer"]:
            parts.append(_regularizer_label(choice["regularizer"]))
        label = " ".join(parts)
        if label in configs:
            label = f"{label} #{sum(k.startswith(label) for k in configs) + 1}"
        configs[label] = config
    return configs


def label_configs(configs: list[TrainConfig]) -> dict[str, TrainConfig]:
    """Label configurations by the settings that tell them apart (``"adam lr=1e-3 batch 64"``)."""
    from gradwise.lab.plots import lr_text

    resolved = [c.resolved() for c in configs]
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("extra",)]
    differ = [f for f in fields if len({repr(getattr(c, f)) for c in resolved}) > 1]
    labels: dict[str, TrainConfig] = {}
    for config, r in zip(configs, resolved):
        parts = []
        if not differ or "optimizer" in differ or "lr" in differ:
            parts.append(f"{r.optimizer} lr={lr_text(r.lr)}")
        for name in differ:
            if name in ("optimizer", "lr"):
                continue
            value = getattr(r, name)
            if name == "batch_size":
                parts.append(f"batch {value}")
            elif isinstance(value, tuple):
                parts.append(f"{name}={','.join(map(str, value))}")
            else:
                parts.append(f"{name}={value}")
        label = " ".join(parts)
        if label in labels:
            label = f"{label} #{sum(k.startswith(label) for k in labels) + 1}"
        labels[label] = config
    return labels


def parse_schedule_choice(text: str) -> tuple[str | None, bool]:
    """``(schedule text, plateau)`` from a schedule choice: ``"none"`` / ``"constant"`` (a
    constant rate), ``"plateau"`` (a constant rate cut on plateaus), ``"cosine+plateau"``, or any
    text of :func:`gradwise.schedules.parse` (checked here)."""
    from gradwise.schedules import parse

    raw = str(text).strip()
    body, plateau = raw, False
    if body.lower().endswith("+plateau"):
        body, plateau = body[: -len("+plateau")].strip(), True
    if body.lower() == "plateau":
        return "constant", True
    if body.lower() in ("none", "constant", ""):
        if not body and not plateau:
            raise ConfigError(f"schedules: empty schedule in {text!r}")
        return "constant", plateau  # not None: None means the dataset's default schedule
    parse(body, total_steps=1_000_000)  # ConfigError naming the bad segment
    return body, plateau


def parse_regularizer(text: str) -> dict:
    """TrainConfig settings from ``"none"``, ``"l1=1e-4"``, ``"l2=1e-3"``, ``"wd=1e-2"``,
    ``"dropout=0.2"`` or several joined by ``+`` (``"l2=1e-3+dropout=0.2"``); every other
    regularizer is set to 0 so that ``"none"`` means none."""
    values = {"l1": 0.0, "l2": 0.0, "weight_decay": 0.0, "dropout": 0.0}
    raw = str(text).strip().lower()
    if raw in ("none", "0", ""):
        return values
    for part in raw.split("+"):
        name, sep, number = part.partition("=")
        name = name.strip()
        if name not in REGULARIZERS or not sep:
            raise ConfigError(
                f"regularizers: cannot read {part.strip()!r} in {text!r}; "
                "allowed: none, l1=X, l2=X, wd=X, dropout=P (several joined by +)"
            )
        try:
            value = float(number)
        except ValueError:
            raise ConfigError(
                f"regularizers: {name} needs a number; received {part.strip()!r}"
            ) from None
        if not math.isfinite(value) or value < 0 or (name == "dropout" and value >= 1):
            allowed = "in [0, 1)" if name == "dropout" else ">= 0"
            raise ConfigError(f"regularizers: {name} must be {allowed}; received {name}={number}")
        values[REGULARIZERS[name]] = value
    return values


# ---------------------------------------------------------------------------------- helpers


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (n − 1; 0 for one value; NaN, NaN for none) of the finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def fmt_mean_std(mean: float, std: float, percent: bool = False, compact: bool = False) -> str:
    """``97.2 ± 0.4 %`` / ``0.0812 ± 0.0031`` / ``—`` for no value (``compact``: no spaces)."""
    if mean is None or not math.isfinite(mean):
        return "—"
    text = f"{100 * mean:.1f} ± {100 * std:.1f} %" if percent else f"{mean:.4g} ± {std:.2g}"
    return text.replace(" ", "") if compact else text


def slug(label: str) -> str:
    """A folder name for a label: ``"adam lr=1e-3"`` -> ``"adam-lr_1e-3"``."""
    text = label.strip().lower().replace("=", "_").replace("+", "-")
    text = re.sub(r"[^a-z0-9._-]+", "-", text).strip("-.")
    return text or "config"


def _fmt(value, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return pattern.format(value)


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return value


def _choices(name: str, values) -> list | None:
    if values is None:
        return None
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        checks.refuse("grid", name, "a list", values, TypeError)
    values = list(values)
    if not values:
        raise ConfigError(f"grid: {name} is empty; leave it out or give at least one value")
    return values


def _schedule_label(text: str) -> str:
    return str(text).strip() or "constant"


def _regularizer_label(text: str) -> str:
    raw = str(text).strip().lower()
    return "no reg." if raw in ("none", "0", "") else raw


def _default_title(configs: dict[str, TrainConfig], seeds: dict[str, list[int]]) -> str:
    first = next(iter(configs.values()))
    data = Path(first.data).name if first.data else first.dataset
    n_seeds = max(len(s) for s in seeds.values())
    return (
        f"{data} · {first.model} · {len(configs)} configuration"
        f"{'s' if len(configs) != 1 else ''} × {n_seeds} seed{'s' if n_seeds != 1 else ''}"
    )

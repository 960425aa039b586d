"""The results of a comparison and their reports: :class:`RunRecord` (one run),
:class:`Comparison` (all runs, their summary, ``summary.md``, ``summary.csv``, ``runs.csv``,
``curves.png``, and reading a report folder back), and the mean ± std they are written with."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gradwise.errors import ConfigError
from gradwise.train.config import TrainConfig
from gradwise.train.history import History


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


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (n − 1; NaN for one value, which has none; NaN, NaN for none) of
    the finite values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return mean, math.nan
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def fmt_mean_std(mean: float, std: float, percent: bool = False, compact: bool = False) -> str:
    """``97.2 ± 0.4 %`` / ``0.0812 ± 0.0031`` / ``—`` for no value / ``97.2 %`` for one run,
    which has no std (``compact``: no spaces)."""
    if mean is None or not math.isfinite(mean):
        return "—"
    if std is None or not math.isfinite(std):
        text = f"{100 * mean:.1f} %" if percent else f"{mean:.4g}"
    else:
        text = f"{100 * mean:.1f} ± {100 * std:.1f} %" if percent else f"{mean:.4g} ± {std:.2g}"
    return text.replace(" ", "") if compact else text


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

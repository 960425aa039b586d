"""What a training run records: per-step loss and rate, per-epoch metrics, wall time."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

EPOCH_COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "elapsed",
)


@dataclass
class History:
    """Records of one run.

    ``steps``: one dict per optimizer step (``step``, ``epoch``, ``loss``, ``lr``).
    ``epochs``: one dict per epoch (``epoch``, ``step``, ``train_loss``, ``val_loss``, each metric
    as ``train_<name>`` / ``val_<name>``, ``lr``, ``elapsed`` seconds since the start).
    ``summary``: final numbers (e.g. ``test_accuracy``), ``stopped``: why the run ended early.
    """

    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    stopped: str | None = None
    skipped_steps: int = 0

    @property
    def wall_time(self) -> float:
        return self.epochs[-1]["elapsed"] if self.epochs else 0.0

    def last(self, key: str, default=None):
        """The latest epoch's value of ``key``."""
        for row in reversed(self.epochs):
            if row.get(key) is not None:
                return row[key]
        return default

    def best(self, key: str, mode: str = "max"):
        values = [row[key] for row in self.epochs if row.get(key) is not None]
        if not values:
            return None
        return max(values) if mode == "max" else min(values)

    # ------------------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "epochs": self.epochs,
            "summary": self.summary,
            "stopped": self.stopped,
            "skipped_steps": self.skipped_steps,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> History:
        return cls(
            steps=list(state["steps"]),
            epochs=list(state["epochs"]),
            summary=dict(state.get("summary", {})),
            stopped=state.get("stopped"),
            skipped_steps=int(state.get("skipped_steps", 0)),
        )

    def columns(self) -> list[str]:
        cols = list(EPOCH_COLUMNS)
        for row in self.epochs:
            cols += [k for k in row if k not in cols]
        for k in self.summary:
            if k not in cols:
                cols.append(k)
        return cols

    def to_csv(self, path: str | Path) -> None:
        """A row per epoch; the final row also carries the summary (e.g. test accuracy)."""
        cols = self.columns()
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=cols)
            writer.writeheader()
            for i, row in enumerate(self.epochs):
                out = dict(row)
                if i == len(self.epochs) - 1:
                    out.update(self.summary)
                writer.writerow({k: _fmt(out.get(k)) for k in cols})

    def to_jsonl(self, path: str | Path) -> None:
        """Every record as one JSON line: ``{"kind": "step"|"epoch"|"summary", ...}``."""
        with open(path, "w") as f:
            for row in self.steps:
                f.write(json.dumps({"kind": "step", **row}) + "\n")
            for row in self.epochs:
                f.write(json.dumps({"kind": "epoch", **row}) + "\n")
            f.write(json.dumps({"kind": "summary", **self.summary, "stopped": self.stopped}) + "\n")

    @classmethod
    def from_jsonl(cls, path: str | Path) -> History:
        history = cls()
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                kind = row.pop("kind")
                if kind == "step":
                    history.steps.append(row)
                elif kind == "epoch":
                    history.epochs.append(row)
                else:
                    history.stopped = row.pop("stopped", None)
                    history.summary = row
        return history


def _fmt(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value

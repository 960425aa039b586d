"""Callbacks: small objects the fit loop calls at the end of each epoch.

A callback sees the :class:`~gradwise.train.loop.TrainState` (model, optimizer, scheduler, history,
epoch, ...) and may set ``state.stop`` with a reason. Callbacks with memory implement
``state_dict()``/``load_state_dict()`` so a resumed run continues them exactly.
"""

from __future__ import annotations

import math

from gradwise import checks


class Callback:
    """Base class: override the hooks you need."""

    def on_fit_start(self, state) -> None:
        """Called once before the first epoch (also when resuming)."""

    def on_epoch_end(self, state) -> None:
        """Called after each epoch, once its metrics are in ``state.history.epochs[-1]``."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best=True`` the model's weights of the best epoch are put back at the end.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 10,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best: bool = True,
    ) -> None:
        self.monitor = monitor
        self.patience = checks.integer("EarlyStopping", "patience", patience, low=1)
        self.min_delta = checks.at_least("EarlyStopping", "min_delta", min_delta, 0.0)
        mode = checks.choice("EarlyStopping", "mode", mode, ("auto", "min", "max"))
        self.mode = mode if mode != "auto" else ("min" if "loss" in monitor else "max")
        self.restore_best = checks.flag("EarlyStopping", "restore_best", restore_best)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = -1
        self.wait = 0
        self.best_weights = None

    def on_epoch_end(self, state) -> None:
        value = state.history.epochs[-1].get(self.monitor)
        if value is None:
            return
        better = (
            value < self.best - self.min_delta
            if self.mode == "min"
            else value > self.best + self.min_delta
        )
        if better:
            self.best, self.best_epoch, self.wait = value, state.epoch, 0
            if self.restore_best:
                self.best_weights = {
                    k: v.detach().clone() for k, v in state.model.state_dict().items()
                }
            return
        self.wait += 1
        if self.wait >= self.patience:
            state.stop = (
                f"early stopping: {self.monitor} did not improve for {self.patience} epochs "
                f"(best {self.best:.4g} at epoch {self.best_epoch})"
            )
            if self.restore_best and self.best_weights is not None:
                state.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.wait = state["wait"]
        self.best_weights = state["best_weights"]

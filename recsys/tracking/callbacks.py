"""A fit's reports (`recsys.training.api.FitCallbacks`) sent to a `Tracker`: the engine's
settings as params, each epoch's record as metrics at that step, a resumed fit's earlier epochs
(those a killed process never sent), and the fit's own figures."""

from __future__ import annotations

from typing import Any

from recsys.tracking.base import Tracker, flatten
from recsys.training.api import FitCallbacks


class TrackerCallbacks(FitCallbacks):
    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_fit_start(self, params: dict[str, Any]) -> None:
        self.tracker.log_params(flatten(params))

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        self.tracker.log_metrics(record, step=epoch)

    def on_resumed(self, history: list[dict[str, float]]) -> None:
        self.tracker.log_history(history)

    def on_fit_end(self, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics)

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
        self.tracker.log_metrics(_without_epoch(record), step=epoch)

    def on_resumed(self, history: list[dict[str, float]]) -> None:
        self.tracker.log_history([_without_epoch(record) for record in history])

    def on_fit_end(self, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics)


def _without_epoch(record: dict[str, float]) -> dict[str, float]:
    """The epoch is each metric's step: logged as a metric of its own it is one more chart of a
    straight line in the UI (and one more column to scroll past)."""
    return {k: v for k, v in record.items() if k not in ("epoch", "refit_epoch")}

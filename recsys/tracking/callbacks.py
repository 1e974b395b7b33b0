"""A fit's reports (`recsys.training.api.FitCallbacks`) sent to a `Tracker`: the engine's
settings as params, each epoch's record as metrics at that step, a resumed fit's earlier epochs
(those a killed process never sent), and the fit's own figures; every metric under its tracked
name (`recsys.tracking.records.epoch_metrics`)."""

from __future__ import annotations

from typing import Any

from recsys.tracking.base import Tracker, flatten
from recsys.tracking.records import epoch_metrics
from recsys.training.api import FitCallbacks


class TrackerCallbacks(FitCallbacks):
    """``model``: the model's name, under which its own loss parts are tracked; None takes it
    from the fit's params (the engine sends ``model`` first thing)."""

    def __init__(self, tracker: Tracker, model: str | None = None) -> None:
        self.tracker = tracker
        self.model = model

    def on_fit_start(self, params: dict[str, Any]) -> None:
        if self.model is None and isinstance(params.get("model"), str):
            self.model = params["model"]
        self.tracker.log_params(flatten(params))

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        self.tracker.log_metrics(epoch_metrics(record, self.model), step=epoch)

    def on_resumed(self, history: list[dict[str, float]]) -> None:
        self.tracker.log_history([epoch_metrics(record, self.model) for record in history])

    def on_fit_end(self, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(epoch_metrics(metrics, self.model))

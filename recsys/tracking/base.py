"""The tracker hook: training and evaluation report to a `Tracker`; the default does nothing.

`recsys.tracking.mlflow` provides the MLflow implementation; nothing else imports mlflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Tracker:
    """Null tracker: every hook is a no-op. Subclasses override what they record.

    What a tracker can do is declared here with a no-op default, so callers never probe for it:
    ``recording``, the run's identity
    (``run_id``, ``tracking_uri``, ``experiment_id``, ``experiment_name``), ``failures`` (what
    could not be logged), ``resume_failure`` (why a run could not be reopened), ``registered``
    (name, version), ``view_key`` (the runs-table view stored on the experiment, for its
    address), and the hooks below.
    """

    run_id: str | None = None
    tracking_uri: str | None = None
    experiment_id: str | None = None
    experiment_name: str | None = None
    resume_failure: str | None = None
    registered: tuple[str, str] | None = None
    view_key: str | None = None
    run_dir: Path | None = None

    def __init__(self) -> None:
        self.failures: list[str] = []

    @property
    def recording(self) -> bool:
        """False for the null tracker itself (nothing needs to be built for it); a subclass
        records something."""
        return type(self) is not Tracker

    def log_params(self, params: dict[str, Any]) -> None:
        """Flattened, resolved configuration."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Per-epoch (with ``step``) or final (without) metrics."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Run tags (model family, git commit, device, ...)."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file from the run directory."""

    def log_figure(self, figure: Any, name: str) -> None:
        """A matplotlib figure."""

    def log_table(self, table: Any, name: str) -> None:
        """A pandas DataFrame (e.g. the per-user metric table)."""

    def log_dataset(self, data_dir: str | Path, name: str | None = None) -> None:
        """The prepared data's parts as the run's dataset inputs (``name``: default, the data's
        own, `recsys.tracking.records.data_label`)."""

    def log_evaluation(self, metrics: dict[str, float], part: str = "test") -> None:
        """The trained model's final metrics on a part of the data (linked to the logged model
        and that part's dataset where the tracker can)."""

    def log_history(self, history: list[dict[str, float]]) -> None:
        """Per-epoch records the run may be missing (after a resume)."""

    def log_model(self, run_dir: str | Path, data_dir: str | Path, **kwargs: Any) -> str | None:
        """Log the trained model (``name``) and register it (``register``, ``alias``, described
        by ``metrics``); returns its URI, None when not logged."""
        return None

    def close(self, status: str = "FINISHED") -> None:
        """End the run."""


NullTracker = Tracker


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists become strings."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) or value is None \
                else str(value)
    return out

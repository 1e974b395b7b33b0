"""The tracker hook: training and evaluation report to a `Tracker`; the default does nothing.

`recsys.tracking.mlflow` provides the MLflow implementation; nothing else imports mlflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Tracker:
    """Null tracker: every hook is a no-op. Subclasses override what they record."""

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

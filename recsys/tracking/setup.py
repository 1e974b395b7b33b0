"""Which tracker a command records its run in, and where a run directory says that run is.

`TrackingOptions` (validated, built by the command layer from its flags or by `recsys compare`
from its spec) and `make_tracker` give an `MlflowTracker` (checked reachable before anything is
trained) or, untracked, the null `Tracker`. ``record_tracking`` / ``recorded_tracking`` keep
the run's MLflow run id in RUN_DIR/tracking.json from the moment the run is created, so
`recsys train --resume` continues that same run. mlflow itself is imported only when tracking is
on (it takes seconds to import).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import model_validator

from recsys.config import StrictConfig
from recsys.errors import RecsysError
from recsys.tracking.base import Tracker

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "recsys"
DEFAULT_ALIAS = "champion"
# In the run directory: which MLflow run the training logs to (written when the run is created).
TRACKING_FILE = "tracking.json"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db``; file stores are refused
    (MLflow 3 deprecated the file store and refuses it)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    scheme = uri.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][\w+.-]*:", uri) else ""
    if scheme in ("", "file"):
        raise RecsysError(f"tracking URI '{uri}' is a file store, which MLflow 3 no longer "
                          "supports; use sqlite:///PATH.db or http://HOST:PORT")
    return uri


def check_registry_names(register: str | None, alias: str) -> None:
    """Names the MLflow registry would refuse, caught before training (MLflow's own rules)."""
    if register is not None and (not register.strip() or any(c in register for c in "/:")):
        raise RecsysError(f"--register '{register}': a model name must be non-empty and contain "
                          "no '/' or ':'")
    if not re.fullmatch(r"[\w\-]+", alias or ""):
        raise RecsysError(f"--alias '{alias}': use letters, digits, '_' and '-' only")
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise RecsysError(f"--alias '{alias}' is reserved by MLflow; choose another name")


class TrackingOptions(StrictConfig):
    """Where and how a command tracks its run (the ``--tracking-uri``, ``--experiment``,
    ``--run-name``, ``--no-track``, ``--register``, ``--alias``, ``--log-system-metrics`` flags,
    or a compare spec's tracking). ``run_name`` names the command's own run; its child runs
    (a comparison's models, a study's trials) keep their own names."""

    tracking_uri: str | None = None
    experiment: str | None = None
    run_name: str | None = None
    track: bool = True
    register_name: str | None = None  # --register NAME
    alias: str = DEFAULT_ALIAS
    log_system_metrics: bool = False

    @model_validator(mode="after")
    def _names(self) -> TrackingOptions:
        check_registry_names(self.register_name, self.alias or DEFAULT_ALIAS)
        return self

    def experiment_name(self, default: str = DEFAULT_EXPERIMENT) -> str:
        return self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or default


def make_tracker(options: TrackingOptions, *, run_name: str | None = None,
                 tags: dict[str, str] | None = None, parent: Tracker | None = None,
                 resume_run_id: str | None = None, expected_params: dict[str, Any] | None = None,
                 may_change: Collection[str] = (), default_experiment: str = DEFAULT_EXPERIMENT
                 ) -> Tracker:
    """The tracker ``options`` ask for; raises `RecsysError` (one line) if the store is
    unreachable.

    ``parent``: make the run a child of that tracker's run (``recsys compare``); a null parent
    gives a null child. ``resume_run_id``: continue that run when the store still has it (see
    `MlflowTracker`; ``expected_params``/``may_change`` say which param changes are refused).
    ``run_name``: the run's name unless ``options.run_name`` (--run-name) names a run that has
    no ``parent``.
    """
    if not options.track or (parent is not None and not parent.recording):
        return Tracker()
    if parent is None and options.run_name:
        run_name = options.run_name
    from recsys.tracking.mlflow import MlflowTracker

    return MlflowTracker(tracking_uri=options.tracking_uri,
                         experiment=options.experiment_name(default_experiment),
                         run_name=run_name, tags=tags,
                         parent=parent,  # type: ignore[arg-type]
                         log_system_metrics=options.log_system_metrics,
                         resume_run_id=resume_run_id, expected_params=expected_params,
                         may_change=may_change)


def is_recording(tracker: Tracker) -> bool:
    """False for the null tracker: nothing needs to be built for it."""
    return tracker.recording


def record_tracking(run_dir: str | Path, tracker: Tracker) -> None:
    """Write RUN_DIR/tracking.json (atomically) naming the tracker's MLflow run; nothing for the
    null tracker. Written as the run starts, so a killed training can be resumed into it."""
    if not is_recording(tracker):
        return
    from recsys.data.io import write_json

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / TRACKING_FILE, {
        "run_id": tracker.run_id,
        "tracking_uri": tracker.tracking_uri,
        "experiment_id": tracker.experiment_id,
        "experiment": tracker.experiment_name})


def recorded_tracking(run_dir: str | Path) -> dict[str, Any] | None:
    """What RUN_DIR says about its MLflow run (``run_id``, ``tracking_uri``, ...): tracking.json,
    else the ``mlflow`` record of run.json (runs written before tracking.json existed); None
    when neither names a run (an unreadable file counts as none: the caller starts a new run)."""
    from recsys.data.io import read_json

    run_dir = Path(run_dir)
    for name, field in ((TRACKING_FILE, None), ("run.json", "mlflow")):
        try:
            record = read_json(run_dir / name)
        except (OSError, ValueError):
            continue
        if field is not None and isinstance(record, dict):
            record = record.get(field)
        if isinstance(record, dict) and isinstance(record.get("run_id"), str) and record["run_id"]:
            return record
    return None

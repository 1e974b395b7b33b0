"""Tracking flags shared by the commands that train, the tracker they build, and what a training
run records in it.

``add_tracking_args(parser)`` adds ``--tracking-uri``, ``--experiment``, ``--no-track``,
``--register NAME``, ``--alias`` and ``--log-system-metrics``; ``make_tracker(args, ...)`` turns
them into an `MlflowTracker` (checked reachable before anything is trained) or, with
``--no-track``, the null `Tracker`. ``log_training_start`` / ``log_training_end`` record what
`recsys train` logs for every model: dataset input, learning curve, final metrics, per-user
table, a sample of top-K lists, the config file and the packaged (optionally registered) model.
``record_tracking`` / ``recorded_tracking`` keep the run's MLflow run id in RUN_DIR/tracking.json
from the moment the run is created, so `recsys train --resume` continues that same run.

mlflow itself is imported only when tracking is on (it takes seconds to import).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recsys.errors import RecsysError
from recsys.tracking.base import Tracker

if TYPE_CHECKING:
    from recsys.data.interactions import Dataset
    from recsys.models.base import Recommender

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "recsys"
DEFAULT_ALIAS = "champion"
# In the run directory: which MLflow run the training logs to (written when the run is created).
TRACKING_FILE = "tracking.json"
SAMPLE_USERS = 20
SAMPLE_K = 10
# Per-user tables above this many users are logged as Parquet (a JSON table would be huge).
MAX_JSON_TABLE_ROWS = 100_000


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else $MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db``; file stores are refused
    (MLflow 3 deprecated the file store and refuses it)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    scheme = uri.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][\w+.-]*:", uri) else ""
    if scheme in ("", "file"):
        raise RecsysError(f"tracking URI '{uri}' is a file store, which MLflow 3 no longer "
                          "supports; use sqlite:///PATH.db or http://HOST:PORT")
    return uri


def add_tracking_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("tracking (MLflow)")
    g.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///mlflow.db in the working directory)")
    g.add_argument("--experiment", default=None, metavar="NAME",
                   help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else "
                        f"'{DEFAULT_EXPERIMENT}')")
    g.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    g.add_argument("--register", default=None, metavar="NAME",
                   help="register the trained model under NAME in the MLflow model registry")
    g.add_argument("--alias", default=DEFAULT_ALIAS, metavar="ALIAS",
                   help=f"alias set on the registered version (default: {DEFAULT_ALIAS})")
    g.add_argument("--log-system-metrics", action="store_true",
                   help="also log CPU/GPU/memory use every few seconds")


def check_registry_names(register: str | None, alias: str) -> None:
    """Names the MLflow registry would refuse, caught before training (MLflow's own rules)."""
    if register is not None and (not register.strip() or any(c in register for c in "/:")):
        raise RecsysError(f"--register '{register}': a model name must be non-empty and contain "
                          "no '/' or ':'")
    if not re.fullmatch(r"[\w\-]+", alias or ""):
        raise RecsysError(f"--alias '{alias}': use letters, digits, '_' and '-' only")
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise RecsysError(f"--alias '{alias}' is reserved by MLflow; choose another name")


def make_tracker(args: argparse.Namespace, *, run_name: str | None = None,
                 tags: dict[str, str] | None = None, parent: Tracker | None = None,
                 resume_run_id: str | None = None, expected_params: dict[str, Any] | None = None,
                 may_change: Collection[str] = ()) -> Tracker:
    """The tracker the flags ask for; raises `RecsysError` (one line) if the store is unreachable.

    ``parent``: make the run a child of that tracker's run (``recsys compare``); a null parent
    gives a null child. ``resume_run_id``: continue that run when the store still has it (see
    `MlflowTracker`; ``expected_params``/``may_change`` say which param changes are refused).
    """
    if getattr(args, "no_track", False) or (parent is not None and type(parent) is Tracker):
        return Tracker()
    register = getattr(args, "register", None)
    alias = getattr(args, "alias", DEFAULT_ALIAS) or DEFAULT_ALIAS
    check_registry_names(register, alias)
    from recsys.tracking.mlflow import MlflowTracker

    experiment = (getattr(args, "experiment", None) or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                  or DEFAULT_EXPERIMENT)
    return MlflowTracker(tracking_uri=getattr(args, "tracking_uri", None), experiment=experiment,
                         run_name=run_name, tags=tags,
                         parent=parent,  # type: ignore[arg-type]
                         log_system_metrics=bool(getattr(args, "log_system_metrics", False)),
                         resume_run_id=resume_run_id, expected_params=expected_params,
                         may_change=may_change)


def is_recording(tracker: Tracker) -> bool:
    """False for the null tracker: nothing needs to be built for it."""
    return type(tracker) is not Tracker


def record_tracking(run_dir: str | Path, tracker: Tracker) -> None:
    """Write RUN_DIR/tracking.json (atomically) naming the tracker's MLflow run; nothing for the
    null tracker. Written as the run starts, so a killed training can be resumed into it."""
    if not is_recording(tracker):
        return
    from recsys.data.io import write_json

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / TRACKING_FILE, {
        "run_id": getattr(tracker, "run_id", None),
        "tracking_uri": getattr(tracker, "tracking_uri", None),
        "experiment_id": getattr(tracker, "experiment_id", None),
        "experiment": getattr(tracker, "experiment_name", None)})


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


# -- what a training run records -----------------------------------------------------------------


def training_tags(model: Recommender, device: str | None = None) -> dict[str, str]:
    """Tags of a training run: model name and family, device (version and commit are added by
    the tracker itself)."""
    from recsys.models.base import resolve_device

    configured = device or getattr(getattr(model, "config", None), "device", None) or "auto"
    try:
        device = str(resolve_device(str(configured)))
    except RecsysError:
        device = str(configured)
    return {"recsys.model": model.name, "recsys.family": getattr(model, "family", "?"),
            "recsys.device": device}


def log_training_start(tracker: Tracker, *, model: Recommender, data_dir: str | Path,
                       params: dict[str, Any] | None = None) -> None:
    """Before fitting: the resolved config as params and the prepared data as dataset input."""
    if not is_recording(tracker):
        return
    tracker.log_params({"model": model.name, **model.get_params(), **(params or {}),
                        "data": str(Path(data_dir).resolve())})
    log_dataset = getattr(tracker, "log_dataset", None)
    if log_dataset is not None:
        log_dataset(data_dir)


def log_training_end(tracker: Tracker, *, model: Recommender, run_dir: str | Path,
                     data_dir: str | Path, dataset: Dataset | None = None,
                     summary: dict[str, float] | None = None,
                     per_user: pd.DataFrame | None = None, prefix: str = "test_",
                     register: str | None = None, alias: str = DEFAULT_ALIAS) -> str | None:
    """After fitting (and evaluating): everything else issue 7 lists; returns the model URI.

    ``summary``/``per_user``: the final evaluation (`EvalResult.summary` / ``.per_user`` with
    internal user ids). Each piece is logged independently: one failing never stops the rest.
    """
    if not is_recording(tracker):
        return None
    from recsys.data.interactions import Dataset

    run_dir = Path(run_dir)
    if hasattr(tracker, "run_dir"):
        tracker.run_dir = run_dir  # type: ignore[attr-defined]
    dataset = dataset if dataset is not None else Dataset.load(data_dir)
    if summary:
        tracker.log_metrics({f"{prefix}{k}": v for k, v in summary.items()})
    for name in ("config.yaml", "run.json", "metrics.json"):
        tracker.log_artifact(run_dir / name)
    history = getattr(model, "history_", None) or []
    if history:
        figure = _built(tracker, "learning curve", learning_curve, history,
                        title=f"{model.name}: learning curve")
        if figure is not None:
            tracker.log_figure(figure, "learning_curve.png")
            _close(figure)
        tracker.log_table(pd.DataFrame(history), "history.json")
    refit_history = getattr(model, "refit_history_", None) or []
    if refit_history:  # the refit on train + valid (recsys.training.refit): its own table
        tracker.log_table(pd.DataFrame(refit_history), "refit_history.json")
    if per_user is not None and len(per_user):
        table = per_user.copy()
        table["user"] = dataset.users.lookup(table["user"].to_numpy())
        _log_frame(tracker, table, "per_user_metrics")
    sample = _built(tracker, "top-K sample", topk_sample, model, dataset)
    if sample is not None:
        tracker.log_table(sample, "topk_sample.json")
    log_model = getattr(tracker, "log_model", None)
    uri = (log_model(run_dir, data_dir, register=register, alias=alias, dataset=dataset)
           if log_model else None)
    _record_in_run(tracker, run_dir, uri)
    return uri


def learning_curve(history: list[dict[str, float]], title: str = "learning curve") -> Any:
    """Small multiples of every per-epoch series in ``model.history_`` (None if nothing to plot)."""
    import matplotlib

    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")  # no display needed: figures only go to files
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    frame = pd.DataFrame(history)
    x = frame["epoch"].to_numpy() if "epoch" in frame else np.arange(1, len(frame) + 1)
    series = [c for c in frame.columns if c not in ("epoch", "step")
              and pd.api.types.is_numeric_dtype(frame[c]) and frame[c].notna().any()]
    if not series:
        return None
    cols = min(3, len(series))
    rows = -(-len(series) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, series, strict=False):
        values = frame[name].to_numpy(dtype=float)
        ok = np.isfinite(values)
        ax.plot(x[ok], values[ok], marker="o", markersize=3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def topk_sample(model: Recommender, dataset: Dataset, n_users: int = SAMPLE_USERS,
                k: int = SAMPLE_K, seed: int = 0) -> pd.DataFrame | None:
    """Top-``k`` lists of a fixed random sample of users (titles joined when known)."""
    from recsys.tracking.pyfunc import TopKPredictor

    if len(dataset.users) == 0 or len(dataset.items) == 0:
        return None
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(dataset.users), size=min(n_users, len(dataset.users)),
                                replace=False))
    predictor = TopKPredictor.from_dataset(model, dataset)
    lists = predictor.predict(pd.DataFrame({"user": dataset.users.ids[picked]}),
                              k=min(k, len(dataset.items)))
    info = dataset.item_info
    if info is not None and "title" in info.columns and "item" in info.columns:
        titles = info[["item", "title"]].drop_duplicates("item")
        titles = titles.assign(item=dataset.items.coerce(titles["item"].to_numpy()))
        lists = lists.merge(titles, on="item", how="left")
    return lists


def _built(tracker: Tracker, what: str, build: Any, *args: Any, **kwargs: Any) -> Any:
    """``build(...)``, or None with a warning: the model is trained and saved by now, and an
    extra for the tracking UI must not turn the run into a failure."""
    try:
        return build(*args, **kwargs)
    except Exception as exc:  # any bug or odd model: report it, keep the run
        print(f"warning: MLflow: could not build the {what} ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        failures = getattr(tracker, "failures", None)
        if isinstance(failures, list):
            failures.append(what)
        return None


def _log_frame(tracker: Tracker, table: pd.DataFrame, stem: str) -> None:
    if len(table) <= MAX_JSON_TABLE_ROWS:
        tracker.log_table(table, f"{stem}.json")
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{stem}.parquet"
        table.to_parquet(path, index=False)
        tracker.log_artifact(path)


def _record_in_run(tracker: Tracker, run_dir: Path, model_uri: str | None) -> None:
    """Point the run directory at its MLflow run (so later commands can find it)."""
    from recsys.run import RUN_FILE, update_run

    if not (run_dir / RUN_FILE).is_file():
        return
    record = {"run_id": getattr(tracker, "run_id", None),
              "tracking_uri": getattr(tracker, "tracking_uri", None), "model_uri": model_uri}
    registered = getattr(tracker, "registered", None)
    if registered:
        record["registered"] = {"name": registered[0], "version": registered[1]}
    update_run(run_dir, mlflow=record)


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)

"""Flags several commands (and the pipelines) share, and the options they turn into.

The commands parse; what the flags mean is validated by the option models they build
(`recsys.tracking.setup.TrackingOptions`, ...), so that a `recsys compare` spec is checked by the
same rules as the flags.
"""

from __future__ import annotations

import argparse

from recsys.tracking.base import Tracker
from recsys.tracking.setup import DEFAULT_ALIAS, DEFAULT_EXPERIMENT, TrackingOptions


def add_tracking_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("tracking (MLflow)")
    g.add_argument("--tracking-uri", default=None, metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        "sqlite:///mlflow.db in the working directory)")
    g.add_argument("--experiment", default=None, metavar="NAME",
                   help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else "
                        f"'{DEFAULT_EXPERIMENT}')")
    g.add_argument("--run-name", default=None, metavar="NAME",
                   help="name of the MLflow run (default: MODEL · DATASET/SPLIT for a training "
                        "run, the comparison's name for a comparison)")
    g.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    g.add_argument("--register", default=None, metavar="NAME",
                   help="register the trained model under NAME in the MLflow model registry")
    g.add_argument("--alias", default=DEFAULT_ALIAS, metavar="ALIAS",
                   help=f"alias set on the registered version (default: {DEFAULT_ALIAS})")
    g.add_argument("--log-system-metrics", action="store_true",
                   help="also log CPU/GPU/memory use every few seconds")


def tracking_options(args: argparse.Namespace) -> TrackingOptions:
    """The validated tracking options of ``add_tracking_args``' flags (a bad registry name or
    alias: one line naming the flag)."""
    return TrackingOptions(tracking_uri=getattr(args, "tracking_uri", None),
                           experiment=getattr(args, "experiment", None),
                           run_name=getattr(args, "run_name", None),
                           track=not getattr(args, "no_track", False),
                           register_name=getattr(args, "register", None),
                           alias=getattr(args, "alias", None) or DEFAULT_ALIAS,
                           log_system_metrics=bool(getattr(args, "log_system_metrics", False)))


def add_force_arg(parser: argparse.ArgumentParser) -> None:
    """--force, as evaluate, recommend and predict share it (see `recsys.rundir.check_run_data`)."""
    parser.add_argument("--force", action="store_true",
                        help="use --data even if it is not the data the run was trained on "
                             "(other users, items or training part: refused otherwise); a "
                             "warning says so")


def add_data_arg(parser: argparse.ArgumentParser) -> None:
    """--data for the commands that read a trained run: default, the data the run was trained
    on (recorded in run.json)."""
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="prepared dataset directory (default: the one the run was trained "
                             "on, recorded in RUN_DIR/run.json)")


def resolve_data(args: argparse.Namespace) -> str:
    """``args.data``, else the run's own data folder; one line when neither is usable. Sets
    ``args.data`` and returns it."""
    from pathlib import Path

    from recsys.errors import RecsysError
    from recsys.rundir import read_run

    if args.data is None:
        recorded = read_run(args.run_dir).get("data")
        if not recorded:
            raise RecsysError(f"{args.run_dir}: run.json does not name its data; pass --data DIR")
        if not (Path(recorded) / "metadata.json").is_file():
            raise RecsysError(f"{recorded}: the prepared data {args.run_dir} was trained on is "
                              "not there any more; pass --data DIR")
        args.data = str(recorded)
    return str(args.data)


def ui_page(base: str, route: str = "experiments", view: str | None = None) -> str:
    """The address of a page of the MLflow UI served at ``base``, in its model-training view;
    ``view`` names a runs-table view stored on the experiment (`Tracker.view_key`), for the
    route ``experiments/ID/runs``.

    MLflow 3's UI opens experiments in its GenAI view (traces, token usage) unless the address
    (or the user's last choice, kept in the browser) asks for the model-training one; the
    experiment's `mlflow.experimentKind` tag is read only by UIs without that switch. The view
    key must be on the runs route itself: ``experiments/ID`` redirects there and drops it."""
    query = (f"viewStateShareKey={view}&" if view else "") + "workflowType=machine_learning"
    return f"{base.rstrip('/')}/#/{route}?{query}"


def run_location(tracker: Tracker, alias: str | None = None) -> str | None:
    """One line saying where a tracked run went: its MLflow run id, the page of it in the UI
    (the server's own, or what `recsys ui` serves for a local store) and the registered version.
    None for an untracked run."""
    if not tracker.recording or not tracker.run_id:
        return None
    uri = tracker.tracking_uri or ""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    page = ui_page(base, f"experiments/{tracker.experiment_id}/runs/{tracker.run_id}")
    line = f"MLflow run {tracker.run_id} ({tracker.experiment_name}): {page}"
    if tracker.view_key:
        table = ui_page(base, f"experiments/{tracker.experiment_id}/runs", tracker.view_key)
        line += f", beside the others: {table}"
    if not uri.startswith(("http://", "https://")):
        line += " once `recsys ui` serves the store"
    if tracker.registered:
        name, version = tracker.registered
        line += f"; registered as {name} version {version}" + (f" ({alias})" if alias else "")
    return line

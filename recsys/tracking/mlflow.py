"""MLflow tracking: the one module of recsys that imports mlflow.

`MlflowTracker` records one MLflow run (optionally the child of another) through `MlflowClient`,
so several runs can be open at once without MLflow's global "active run". It is built to never
cost a training run:

- at start it checks that the tracking store answers and fails with one clear line if not
  (before any training);
- every later call is wrapped: if the server goes away mid-run, training goes on, what could not
  be logged is listed, and `close` prints one warning naming it (the run directory keeps
  everything). After a connection failure the tracker stops calling the server, so a dead server
  costs one short timeout rather than one per epoch;
- HTTP retries and timeouts are short by default (MLFLOW_HTTP_REQUEST_MAX_RETRIES=2,
  MLFLOW_HTTP_REQUEST_TIMEOUT=20; set them in the environment to override).

``resume_run_id`` reopens an existing run instead of creating one (`recsys train --resume`): the
run goes back to RUNNING, params already logged are not logged again (a changed value that may
change on resume, such as ``epochs``, is kept as a ``recsys.resumed.KEY`` tag, since MLflow
refuses to change a param), and a per-epoch metric at a step the run already has is skipped,
so each epoch appears once (`log_history` fills in the epochs the killed process never sent).
A run that cannot be reopened (deleted, or not in this store) leaves `resume_failure` set and a
new run is created.

The default store is ``sqlite:///mlflow.db`` in the working directory, MLflow 3's own default;
``MLFLOW_TRACKING_URI`` or ``--tracking-uri`` point elsewhere. The deprecated file store is
refused. MLflow creates a fresh SQLite store's tables the first time a client opens it; two
commands starting at once on a new file would both try (one fails with "table ... already
exists"), so a client of a SQLite store is opened under an exclusive lock on ``DB.lock`` beside
the database (`open_client`), and an experiment created meanwhile by another process is found
rather than created twice.

What a person sees in the UI is named for them: experiments are tagged as model training
(``mlflow.experimentKind``, so MLflow 3's UI does not open them in its GenAI view) and described;
each part of the data (train, valid, test) is a dataset input named after the data, its split
protocol and its implicit/explicit preparation (`recsys.tracking.records.data_label`), with its
context; the logged model is named after the model, and its test metrics are linked to it and to
the test dataset (MLflow's Models tab lists them there); a registered version carries a
description and tags (data, test metrics, commit). Metric names follow
`recsys.tracking.records.metric_name` (MLflow names may not contain ``@``: ``ndcg@100`` is
``ndcg_at_100``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.types.schema import ColSpec, Schema

from recsys import __version__
from recsys.data.io import sha256_file
from recsys.errors import RecsysError
from recsys.scoring.serving import DEFAULT_K, TopKPredictor
from recsys.tracking.base import Tracker, flatten
from recsys.tracking.packaging import (
    configure_environment,
    pyfunc_parts,
    quiet_mlflow,
    short_error,
)
from recsys.tracking.records import (
    DATA_CONTEXTS,
    data_label,
    data_name,
    metric_key,
    metric_name,
    read_data_meta,
)
from recsys.tracking.setup import DEFAULT_ALIAS, DEFAULT_EXPERIMENT, resolve_tracking_uri

# The name of a logged model when the caller gives none.
MODEL_ARTIFACT = "model"
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, token usage);
# "custom_model_development" is the kind its own experiment dialog sets for model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # the description the UI shows (experiments, runs)
# MLflow 3's UI opens the runs table in a stored view when the address carries
# ``viewStateShareKey=KEY`` and the experiment has the tag ``mlflow.sharedViewState.KEY`` (the JSON
# its Share button writes; plain JSON is read as well as its compressed form). recsys keeps one
# such view per experiment, so the table opens with the metrics that compare models.
VIEW_KEY = "recsys"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
# Columns of that view: (stage, metric) as `metric_name` names them; the first sorts the table.
# Ranking metrics are in every default metric set (implicit and explicit data alike).
VIEW_METRICS = (("test", "ndcg@100"), ("test", "recall@20"), ("valid", "ndcg@100"))
_MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value's length
_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call
USERS_IN_EXAMPLE = 2  # the logged model's input example: this many known users


def runs_view() -> str:
    """The runs-table view recsys stores on its experiments (`VIEW_KEY`), as the JSON the MLflow UI
    reads: the `VIEW_METRICS` columns, best test metric first."""
    columns = [f"metrics.`{metric_name(stage, name)}`" for stage, name in VIEW_METRICS]
    return json.dumps({"selectedColumns": columns, "orderByKey": columns[0],
                       "orderByAsc": False}, sort_keys=True)


def experiment_description(name: str) -> str:
    """What an experiment recsys creates says about itself (Markdown, shown in the UI)."""
    return (f"Recommender models trained by recsys {__version__} (experiment `{name}`). One run "
            "per `recsys train`, named MODEL · DATASET/SPLIT; `recsys compare` and tuning "
            "studies are parent runs with one child run per model or trial. Metrics: `train/` "
            "and `valid/` per epoch (a model's own loss parts under `train/MODEL/`), `test/` on "
            "the test part, also on the run's logged model.")


def git_commit() -> str | None:
    """The commit of the recsys source tree, when it is a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise `RecsysError` unless the tracking store at ``uri`` answers (one quick try)."""
    if not uri.startswith(("http://", "https://")):
        return  # databases are checked by opening them (see MlflowTracker)
    import requests  # a dependency of mlflow

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise RecsysError(f"cannot reach the MLflow tracking server at {uri} ({reason}); start "
                          "it, set --tracking-uri / MLFLOW_TRACKING_URI, or pass --no-track"
                          ) from None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI (None for any other store or in-memory)."""
    if not uri.lower().startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on ``DB.lock`` beside a SQLite store's file (nothing for other
    stores): MLflow's first-time creation of the tables is not safe against another process
    doing the same. A folder where no lock file can be made is left to MLflow unguarded."""
    db = sqlite_path(uri)
    try:
        handle = open(db.with_name(db.name + ".lock"), "a") if db is not None else None
    except OSError:
        handle = None
    if handle is None:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_client(uri: str) -> MlflowClient:
    """An `MlflowClient` of ``uri`` with its store opened (MLflow opens it eagerly, creating
    a new SQLite store's tables) by one process at a time (`store_lock`). The model registry's
    store, opened later, finds those tables and creates none."""
    with store_lock(uri):
        return MlflowClient(uri)


class MlflowTracker(Tracker):
    """One MLflow run. ``parent`` makes it a child run (``recsys compare``).

    ``resume_run_id``: continue that run (see the module notes); ``expected_params`` are then
    checked against the params it already has before anything changes, and a value that differs
    (other than the keys in ``may_change``) is refused with one line.
    """

    def __init__(self, *, tracking_uri: str | None = None,
                 experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
                 tags: dict[str, str] | None = None, parent: MlflowTracker | None = None,
                 log_system_metrics: bool = False, resume_run_id: str | None = None,
                 expected_params: dict[str, Any] | None = None,
                 may_change: Collection[str] = ()) -> None:
        configure_environment()
        self.tracking_uri = parent.tracking_uri if parent else resolve_tracking_uri(tracking_uri)
        check_reachable(self.tracking_uri)
        # Model.log and register_model read the global URI; keep it in step with this run.
        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            self.client = open_client(self.tracking_uri)
        except Exception as exc:  # a scheme MLflow has no store for: its message, in one line
            raise RecsysError(f"cannot use the MLflow tracking URI {self.tracking_uri} "
                              f"({short_error(exc)}); fix it or pass --no-track") from None
        self.failures: list[str] = []
        self.offline = False
        self.run_dir: Path | None = None
        self.model_uri: str | None = None
        self.registered: tuple[str, str] | None = None  # (name, version)
        self.model_id: str | None = None  # the logged model's id (MLflow 3 LoggedModel)
        # Per part of the data (train, valid, test): the (name, digest) of its dataset input.
        self.datasets: dict[str, tuple[str, str]] = {}
        self._first_error: str | None = None
        self._monitor: Any = None
        self.experiment_name = experiment
        self.resumed = False  # True when this tracker continues an existing run
        self.resume_failure: str | None = None  # why resume_run_id could not be reopened
        self._params: dict[str, str] = {}  # what the run holds: never logged twice
        self._logged_steps: dict[str, set[int]] = {}  # per metric, in a reopened run
        run_tags = {"recsys.version": __version__, **(tags or {})}
        if commit := git_commit():
            run_tags["mlflow.source.git.commit"] = commit
        run_tags.setdefault("mlflow.source.name", Path(sys.argv[0]).name or "recsys")
        run_tags.setdefault("mlflow.source.type", "LOCAL")
        try:
            run = None
            if resume_run_id is not None and parent is None:
                run = self._reopen(resume_run_id, flatten(expected_params or {}),
                                   frozenset(may_change))
            if run is None:
                if parent is not None:
                    self.experiment_id = parent.experiment_id
                    self.view_key = parent.view_key
                    run_tags["mlflow.parentRunId"] = parent.run_id
                else:
                    self.experiment_id = self._experiment_id(experiment)
                run = self.client.create_run(self.experiment_id, run_name=run_name,
                                             tags={k: str(v) for k, v in run_tags.items()})
        except RecsysError:
            raise
        except Exception as exc:
            raise RecsysError(f"cannot start an MLflow run at {self.tracking_uri} "
                              f"({short_error(exc)}); fix the store or pass --no-track") from None
        self.run_id: str = run.info.run_id
        self.run_name: str = run.info.run_name
        if log_system_metrics:
            self._start_system_metrics()

    def _reopen(self, run_id: str, expected: dict[str, Any],
                may_change: frozenset[str]) -> Any:
        """The run ``run_id``, back to RUNNING; None (and `resume_failure`) if it is gone."""
        try:
            run = self.client.get_run(run_id)
            experiment = self.client.get_experiment(run.info.experiment_id)
        except Exception as exc:  # not in this store (another URI) or deleted for good
            self.resume_failure = short_error(exc)
            return None
        if run.info.lifecycle_stage != "active" or experiment.lifecycle_stage != "active":
            what = "run" if run.info.lifecycle_stage != "active" else "experiment"
            self.resume_failure = f"its {what} is deleted"
            return None
        recorded = dict(run.data.params)
        # Refused here, before the run's status changes: MLflow would refuse the new value
        # later, and the interrupted run is left exactly as it was.
        for key, value in sorted(expected.items()):
            if key in recorded and key not in may_change and recorded[key] != _param_value(value):
                raise RecsysError(
                    f"--resume: MLflow run {run_id} was logged with {key}={recorded[key]}, the "
                    f"config now gives {key}={_param_value(value)}; resume with the same config, "
                    "or pass --overwrite to start a new run")
        # Epochs after the last checkpoint were logged by the killed process and are trained
        # again on resume; the epoch of the last checkpoint may not have been logged at all
        # (killed in between). Knowing the steps the run has, each is logged exactly once.
        for key in run.data.metrics:
            self._logged_steps[key] = {int(m.step)
                                       for m in self.client.get_metric_history(run_id, key)}
        resumes = run.data.tags.get("recsys.resumes", "0")
        self.client.update_run(run_id, status="RUNNING")
        self.client.set_tag(run_id, "recsys.resumes",
                            str(int(resumes) + 1 if resumes.isdigit() else 1))
        self.experiment_id = run.info.experiment_id
        self.experiment_name = experiment.name
        self._store_view(experiment)
        self._params = recorded
        self.resumed = True
        return run

    def _experiment_id(self, name: str) -> str:
        tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, NOTE_TAG: experiment_description(name)}
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(
                    name, tags={**tags, VIEW_TAG_PREFIX + VIEW_KEY: runs_view()})
                self.view_key = VIEW_KEY
                return experiment_id
            except MlflowException:
                # Another process created it since the lookup (two first runs at once).
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            raise RecsysError(f"MLflow experiment '{name}' is deleted; restore it in the UI or "
                              "choose another --experiment")
        # An experiment made before recsys tagged them (or by `mlflow experiments create`) gets
        # the tags it lacks; a kind or description someone set is theirs to keep.
        for key, value in tags.items():
            if key not in experiment.tags:
                self._call("experiment tags", self.client.set_experiment_tag,
                           experiment.experiment_id, key, value)
        self._store_view(experiment)
        return experiment.experiment_id

    def _store_view(self, experiment: Any) -> None:
        """Give ``experiment`` recsys's runs-table view (written only when missing or different,
        e.g. made by an older recsys); `view_key` is set once the experiment has it. A failure is
        recorded like any logging call: the run goes on, and its address opens the plain table."""
        key, view = VIEW_TAG_PREFIX + VIEW_KEY, runs_view()
        if experiment.tags.get(key) != view:
            failed = len(self.failures)
            self._call("runs table view", self.client.set_experiment_tag,
                       experiment.experiment_id, key, view)
            if len(self.failures) > failed:
                return
        self.view_key = VIEW_KEY

    def _start_system_metrics(self) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        try:
            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=5,
                                                 resume_logging=self.resumed,
                                                 tracking_uri=self.tracking_uri)
            self._monitor.start()
        except Exception as exc:  # psutil missing or a platform without counters
            self._record("system metrics", exc)
            self._monitor = None

    # -- failure handling ---------------------------------------------------------------------

    def _record(self, what: str, exc: BaseException) -> None:
        self.failures.append(what)
        if self._first_error is None:
            self._first_error = short_error(exc)
            print(f"warning: MLflow: could not log {what} ({self._first_error}); training goes "
                  "on and the run directory keeps everything", file=sys.stderr)
        if not self.offline and not self._server_answers():
            self.offline = True

    def _server_answers(self) -> bool:
        try:
            check_reachable(self.tracking_uri, timeout=2.0)
        except RecsysError:
            return False
        return True

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one logging call; a failure is recorded, never raised (training must go on)."""
        if self.offline:
            self.failures.append(what)
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # whatever the server or network did: log it, carry on
            self._record(what, exc)
            return None

    # -- the Tracker hooks --------------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        values = {str(k): _param_value(v) for k, v in flatten(params).items()}
        if self.resumed:
            # MLflow refuses a new value for a logged param; what a resume may change (epochs,
            # device) is kept as a tag instead (other changes were refused in _reopen).
            changed = {k: v for k, v in values.items() if self._params.get(k, v) != v}
            if changed:
                self.set_tags({f"recsys.resumed.{k}": v for k, v in changed.items()})
            values = {k: v for k, v in values.items() if k not in self._params}
        else:
            values = {k: v for k, v in values.items() if self._params.get(k) != v}
        items = [Param(k, v) for k, v in sorted(values.items())]
        for start in range(0, len(items), _BATCH):
            batch = items[start:start + _BATCH]
            failed = len(self.failures)
            self._call("params", self.client.log_batch, self.run_id, params=batch)
            if len(self.failures) == failed:
                self._params.update((p.key, p.value) for p in batch)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = []
        for name, value in metrics.items():
            number = _as_float(value)
            key = metric_key(str(name))
            if number is None:
                continue
            if self.resumed and step is not None:
                seen = self._logged_steps.setdefault(key, set())
                if step in seen:
                    continue  # logged before this resume (or a moment ago)
                seen.add(step)
            items.append(Metric(key, number, now, int(step or 0)))
        if items:
            what = "metrics" if step is None else f"metrics of step {step}"
            for start in range(0, len(items), 1000):
                self._call(what, self.client.log_batch, self.run_id,
                           metrics=items[start:start + 1000])

    def log_history(self, history: list[dict[str, float]]) -> None:
        """Per-epoch records (``model.history_``, epoch i+1 at index i) the run does not have yet:
        after a resume, the epoch whose checkpoint was written just before a kill -9 was never
        logged, and is not trained again."""
        if self.resumed:
            for epoch, record in enumerate(history, start=1):
                self.log_metrics(record, step=epoch)

    def set_tags(self, tags: dict[str, str]) -> None:
        items = [RunTag(str(k), str(v)) for k, v in tags.items() if v is not None]
        if items:
            self._call("tags", self.client.log_batch, self.run_id, tags=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._call(f"artifact {path.name}/", self.client.log_artifacts, self.run_id,
                       str(path), artifact_path)
        elif path.is_file():
            self._call(f"artifact {path.name}", self.client.log_artifact, self.run_id,
                       str(path), artifact_path)

    def log_figure(self, figure: Any, name: str) -> None:
        self._call(f"figure {name}", self.client.log_figure, self.run_id, figure, name)

    def log_table(self, table: Any, name: str) -> None:
        if isinstance(table, pd.DataFrame):
            table = _json_ready(table)
        self._call(f"table {name}", self.client.log_table, self.run_id, table, name)

    def log_dataset(self, data_dir: str | Path, name: str | None = None) -> None:
        """Each part of the prepared data the run uses (train, valid, test) as a dataset input
        with its context: named ``name`` or after the data (`data_label`), its digest that of the
        part's file, its source that file, its profile the part's size."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.entities import Dataset as DatasetEntity

        data_dir = Path(data_dir).resolve()
        meta = read_data_meta(data_dir)
        if meta is None:
            return
        name = name or data_label(meta, data_dir.name)
        schema = Schema([ColSpec(_id_type(data_dir / "users.parquet", "user"), "user"),
                         ColSpec(_id_type(data_dir / "items.parquet", "item"), "item"),
                         ColSpec("float", "rating"),
                         ColSpec("long", "timestamp", required=False)])
        counts = meta.get("parts") or {}

        def log() -> None:
            inputs, named = [], {}
            for part, context in DATA_CONTEXTS.items():
                path = data_dir / f"{part}.npz"
                if not path.is_file():
                    continue
                digest = sha256_file(path)[:16]
                with warnings.catch_warnings():
                    # MLflow has two equivalent local-file sources and warns that it picked one.
                    warnings.simplefilter("ignore", UserWarning)
                    source = resolve_dataset_source(str(path))
                entity = DatasetEntity(name=name, digest=digest,
                                       source_type=source._get_source_type(),
                                       source=source.to_json(),
                                       schema=json.dumps({"mlflow_colspec": schema.to_dict()}),
                                       profile=json.dumps(counts.get(part) or {}))
                inputs.append(DatasetInput(dataset=entity, tags=[
                    InputTag(key="mlflow.data.context", value=context)]))
                named[part] = (name, digest)
            if inputs:
                self.client.log_inputs(self.run_id, datasets=inputs)
                self.datasets.update(named)

        self._call(f"dataset input {data_dir.name}", log)

    def log_evaluation(self, metrics: dict[str, float], part: str = "test") -> None:
        """Final metrics of the trained model on ``part`` under ``part/NAME``, linked to the
        logged model (when logged) and to that part's dataset input, so that MLflow's Models
        tab shows them on the model, per dataset."""
        dataset = self.datasets.get(part)
        now = int(time.time() * 1000)
        items = [Metric(metric_name(part, str(k)), number, now, 0, model_id=self.model_id,
                        dataset_name=dataset[0] if dataset else None,
                        dataset_digest=dataset[1] if dataset else None)
                 for k, v in metrics.items() if (number := _as_float(v)) is not None]
        if items:
            self._call(f"{part} metrics", self.client.log_batch, self.run_id, metrics=items)

    def log_model(self, run_dir: str | Path, data_dir: str | Path, *,
                  register: str | None = None, alias: str = DEFAULT_ALIAS,
                  dataset: Any = None, history: str = "before-test", name: str | None = None,
                  metrics: dict[str, float] | None = None, metric: str | None = None
                  ) -> str | None:
        """Log the trained model as a pyfunc model named ``name`` (the model's name); with
        ``register``, a registry version whose alias is ``alias``, described by the data and the
        test ``metrics`` (``metric`` first). Returns the model URI (``None`` when it could not
        be logged). ``dataset``: the prepared data already in memory (else read from
        ``data_dir``); ``history``: the `Dataset.known_history` the model scores known users
        from."""
        uri = self._call("model", self._log_pyfunc, Path(run_dir), Path(data_dir), dataset,
                         history, name or MODEL_ARTIFACT)
        if uri is None:
            if register:
                self.failures.append(f"registered model {register}")
            return None
        self.model_uri = uri
        if register:
            description, tags = version_notes(name or MODEL_ARTIFACT, data_name(data_dir),
                                              metrics or {}, metric, run_id=self.run_id)
            self._call(f"registered model {register}", self.register, register, alias,
                       description=description, tags=tags)
        return uri

    def _log_pyfunc(self, run_dir: Path, data_dir: Path, dataset: Any = None,
                    history: str = "before-test", name: str = MODEL_ARTIFACT) -> str:
        from recsys.data.interactions import Dataset

        dataset = dataset if dataset is not None else Dataset.load(data_dir)
        # The logged model is created here, in the run's experiment: left to Model.log, it
        # would be filed under the global experiment (MLflow's Default, id 0) since this
        # tracker never sets one (it runs several runs at once through MlflowClient).
        # Like MLflow's own, it carries the run's params, and its source and recsys tags.
        run = self.client.get_run(self.run_id)
        tags = {k: v for k, v in run.data.tags.items()
                if k.startswith(("recsys.", "mlflow.source.", "mlflow.user"))}
        tags["recsys.history"] = history  # which history known users are scored from
        logged = self.client.create_logged_model(
            experiment_id=self.experiment_id, name=name, source_run_id=self.run_id,
            params={k: str(v) for k, v in run.data.params.items()}, tags=tags)
        self.model_id = logged.model_id
        with pyfunc_parts(run_dir, dataset, history=history) as parts, quiet_mlflow():
            example = pd.DataFrame({"user": dataset.users.ids[:USERS_IN_EXAMPLE]})
            info = Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc,
                             run_id=self.run_id, model_id=logged.model_id,
                             input_example=example, **parts)
        return info.model_uri

    def register(self, name: str, alias: str = DEFAULT_ALIAS, *, description: str | None = None,
                 tags: dict[str, str] | None = None) -> str:
        """Register the logged model under ``name`` and point ``alias`` at the new version."""
        if self.model_uri is None:
            raise RecsysError("no model was logged to register")
        version = register_model(self.model_uri, name, alias, tracking_uri=self.tracking_uri,
                                 description=description, tags=tags)
        self.registered = (name, version)
        return version

    def close(self, status: str = "FINISHED") -> None:
        if self._monitor is not None:
            with contextlib.suppress(Exception):
                self._monitor.finish()
        self._call("run status", self.client.set_terminated, self.run_id, status)
        if self.failures:
            print(f"warning: MLflow run {self.run_id} at {self.tracking_uri} is incomplete; not "
                  f"logged: {summarize(self.failures)} (first error: {self._first_error})"
                  + (f"; everything is in {self.run_dir}" if self.run_dir else ""),
                  file=sys.stderr)


# -- the pyfunc model -------------------------------------------------------------------------


class RecsysPyfuncModel(mlflow.pyfunc.PythonModel):
    """MLflow's view of `TopKPredictor`, built by ``pyfunc_model.py`` when MLflow loads the
    model (models from code: never pickled); it holds nothing until ``load_context``."""

    def load_context(self, context: Any) -> None:
        self.predictor = TopKPredictor.load(context.artifacts["model"], context.artifacts["data"],
                                            device=os.environ.get("RECSYS_DEVICE", "cpu"))

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        params = params or {}
        k = int(params.get("k", DEFAULT_K))
        layout = str(params.get("layout", "long"))
        try:
            return self.predictor.predict(model_input, k=k, layout=layout)
        except RecsysError as exc:
            # The scoring server answers an MlflowException with a 400 and its message alone.
            raise MlflowException.invalid_parameter_value(str(exc)) from None


def register_model(model_uri: str, name: str, alias: str = DEFAULT_ALIAS, *,
                   tracking_uri: str | None = None, description: str | None = None,
                   tags: dict[str, str] | None = None) -> str:
    """A new version of registered model ``name`` from ``model_uri``, with ``alias`` moved onto
    it (aliases, not the deprecated stages) and ``description`` and ``tags`` on it (see
    `version_notes`). Returns the version number."""
    configure_environment()
    uri = resolve_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    try:
        with quiet_mlflow():
            version = mlflow.register_model(model_uri, name, await_registration_for=60,
                                            tags={k: str(v) for k, v in (tags or {}).items()})
        client = open_client(uri)
        if description:
            client.update_model_version(name, version.version, description=description)
        client.set_registered_model_alias(name, alias, version.version)
    except Exception as exc:
        raise RecsysError(f"cannot register {model_uri} as '{name}' at {uri} ({short_error(exc)})"
                          ) from None
    return str(version.version)


# -- helpers ----------------------------------------------------------------------------------


def version_notes(model: str, data: str | None, metrics: dict[str, float], metric: str | None,
                  *, run_id: str | None = None) -> tuple[str, dict[str, str]]:
    """The description and tags of a registered version: which model, on which data, its test
    ``metrics`` (``metric`` first in the description), the run and commit it came from."""
    commit = git_commit()
    shown = [m for m in ([metric] if metric in metrics else []) + list(metrics) if m]
    figures = ", ".join(f"{m} {float(metrics[m]):.4f}" for m in dict.fromkeys(shown[:3]))
    description = (f"{model}" + (f" trained on {data}" if data else "")
                   + (f"; test {figures}" if figures else "")
                   + (f"; run {run_id}" if run_id else "")
                   + (f"; commit {commit[:12]}" if commit else ""))
    tags = {"recsys.model": model}
    if data:
        tags["recsys.data"] = data
    if metric:
        tags["recsys.metric"] = metric
    tags.update({metric_name("test", m): f"{float(v):.6g}" for m, v in metrics.items()
                 if _as_float(v) is not None})
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return description, tags


def summarize(failures: list[str]) -> str:
    """'metrics of step 3', 'metrics of step 4', 'model' -> 'metrics of 2 steps (3-4), model'."""
    steps = [int(f.rsplit(" ", 1)[1]) for f in failures if f.startswith("metrics of step ")]
    others = list(dict.fromkeys(f for f in failures if not f.startswith("metrics of step ")))
    parts = []
    if steps:
        parts.append(f"metrics of {len(steps)} step{'s' if len(steps) > 1 else ''} "
                     f"({min(steps)}-{max(steps)})" if len(steps) > 1
                     else f"metrics of step {steps[0]}")
    return ", ".join(parts + others)


def _param_value(value: Any) -> str:
    text = "None" if value is None else str(value)
    return text if len(text) <= _MAX_PARAM_VALUE else text[: _MAX_PARAM_VALUE - 3] + "..."


def _as_float(value: Any) -> float | None:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _json_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns MLflow's JSON table writer accepts (pandas 3 string dtype -> object)."""
    out = frame.copy()
    for col in out.columns:
        if isinstance(out[col].dtype, pd.StringDtype) or out[col].dtype.kind in "OUS":
            out[col] = out[col].astype(object)
    return out


def _id_type(path: Path, column: str) -> str:
    """MLflow type of a vocabulary's ids (read from the Parquet schema, not the data)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        kind = pq.read_schema(path).field(column).type
    except (OSError, KeyError):
        return "string"
    return "long" if pa.types.is_integer(kind) else "string"

"""What `recsys train` records in its tracker for every model: dataset input, learning curve,
final metrics, per-user table, a sample of top-K lists, the config file and the packaged
(optionally registered) model. Each piece is logged independently; one failing never stops the
rest, and nothing here fails a trained run.

Also the one home of the tracked metric names (`metric_name`, `epoch_metrics`): ``STAGE/NAME``
(``train/lr``, ``valid/ndcg_at_100``, ``test/recall_at_20``), a model's own loss parts one level
down (``train/multvae/kl``).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recsys.errors import RecsysError
from recsys.tracking.base import Tracker
from recsys.tracking.setup import DEFAULT_ALIAS, is_recording
from recsys.training.refit import REFIT_PREFIX

if TYPE_CHECKING:
    from recsys.data.interactions import Dataset
    from recsys.models.base import Recommender

SAMPLE_USERS = 20
SAMPLE_K = 10
# Per-user tables above this many users are logged as Parquet (a JSON table would be huge).
MAX_JSON_TABLE_ROWS = 100_000

# The first part of a tracked metric's name. The MLflow UI makes one chart section per prefix
# before the first "/", so the stage is that prefix: a run's training curves, validation curves
# and test figures each get their own section, and the runs table's columns sort by stage.
# "score" is a batch-scoring pipeline's throughput and counts.
METRIC_STAGES = ("train", "valid", "test", "refit", "tune", "trial", "best", "time", "score")
# What the training engine adds to a model's step outputs in each epoch's record (and what a
# refit reports at its end): the same quantity for every model, so kept at the stage's level;
# everything else a step returns is the model's own (loss parts, beta, G/D losses).
ENGINE_KEYS = frozenset({"lr", "seconds", "epochs"})
VALID_PREFIX = "valid_"  # the engine's per-epoch validation metric: valid_METRIC
_BAD_METRIC_CHARS = re.compile(r"[^/\w.\- ]")
# The parts of the prepared data a run logs as dataset inputs, with MLflow's context of each.
DATA_CONTEXTS = {"train": "training", "valid": "validation", "test": "test"}


def metric_key(name: str) -> str:
    """An MLflow-legal metric name (letters, digits, ``_ - . /`` and spaces): ``ndcg@100`` ->
    ``ndcg_at_100``."""
    return _BAD_METRIC_CHARS.sub("_", name.replace("@", "_at_"))


def metric_name(stage: str, name: str, model: str | None = None) -> str:
    """The tracked name of metric ``name`` of ``stage`` (one of `METRIC_STAGES`):
    ``STAGE/NAME``, or ``STAGE/MODEL/NAME`` for a quantity whose scale is the model's own (its
    loss and loss parts: one chart of "loss" would put AutoRec's ~90,000 beside a VAE's ~500),
    MLflow-legal (``metric_name("valid", "ndcg@100") == "valid/ndcg_at_100"``)."""
    if stage not in METRIC_STAGES:
        raise ValueError(f"unknown metric stage '{stage}'; expected one of "
                         f"{', '.join(METRIC_STAGES)}")
    return metric_key("/".join([stage, model, name] if model else [stage, name]))


def epoch_metrics(record: dict[str, float], model: str | None) -> dict[str, float]:
    """A training engine record (one epoch's, or a fit's final figures) under its tracked names:
    ``valid_METRIC`` -> ``valid/METRIC``; ``lr``, ``seconds``, ``epochs`` -> ``train/...``; the
    model's step outputs -> ``train/MODEL/...``; a refit's (``refit_`` keys) the same under
    ``refit/``. The epoch itself is the metrics' step, never a metric of its own (one more chart
    of a straight line)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        stage, rest = ("refit", key[len(REFIT_PREFIX):]) if key.startswith(REFIT_PREFIX) \
            else ("train", key)
        if rest == "epoch":
            continue
        if rest.startswith(VALID_PREFIX):
            name = (metric_name("valid", rest[len(VALID_PREFIX):]) if stage == "train"
                    else metric_name(stage, rest))
        elif rest in ENGINE_KEYS:
            name = metric_name(stage, rest)
        else:
            name = metric_name(stage, rest, model)
        out[name] = value
    return out


def read_data_meta(data_dir: str | Path) -> dict[str, Any] | None:
    """The prepared data's metadata.json (None when unreadable: names then fall back)."""
    from recsys.data.io import read_json

    try:
        meta = read_json(Path(data_dir) / "metadata.json")
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def split_label(meta: dict[str, Any], default: str = "data") -> str:
    """``DATASET/SPLIT`` of a prepared dataset's metadata: ``ml-latest-small/random``."""
    split = meta.get("split")
    protocol = split.get("split") if isinstance(split, dict) else None
    dataset = str(meta.get("dataset") or default)
    return f"{dataset}/{protocol}" if protocol else dataset


def data_label(meta: dict[str, Any], default: str = "data") -> str:
    """The name of a prepared dataset in the tracker: ``DATASET/SPLIT/KIND``, KIND being
    ``implicit>=T`` (ratings of T and above as positives) or ``explicit``, so that the two
    preparations of one MovieLens file are two datasets, not one name told apart by digest."""
    threshold = (meta.get("options") or {}).get("implicit_threshold")
    if meta.get("implicit"):
        kind = f"implicit>={threshold:g}" if isinstance(threshold, (int, float)) else "implicit"
    else:
        kind = "explicit"
    return f"{split_label(meta, default)}/{kind}"


def data_name(data_dir: str | Path) -> str | None:
    """`data_label` of the prepared data in ``data_dir`` (None when its metadata is unreadable)."""
    meta = read_data_meta(data_dir)
    return data_label(meta, Path(data_dir).name) if meta is not None else None


def default_run_name(model: str, data_dir: str | Path) -> str:
    """A training run's name unless --run-name gives one: ``MODEL · DATASET/SPLIT``."""
    meta = read_data_meta(data_dir)
    return f"{model} · {split_label(meta, Path(data_dir).name)}" if meta else model


def training_tags(model: Recommender, device: str | None = None) -> dict[str, str]:
    """Tags of a training run: model name and family, device (version and commit are added by
    the tracker itself)."""
    from recsys.models.base import resolve_device

    # Only models trained by the engine (and some baselines) have a `device` config key.
    configured = device or getattr(model.config, "device", None) or "auto"
    try:
        device = str(resolve_device(str(configured)))
    except RecsysError:
        device = str(configured)
    return {"recsys.model": model.name, "recsys.family": model.family,
            "recsys.device": device}


def log_training_start(tracker: Tracker, *, model: Recommender, data_dir: str | Path,
                       params: dict[str, Any] | None = None) -> None:
    """Before fitting: the resolved config as params and the prepared data as dataset input."""
    if not is_recording(tracker):
        return
    tracker.log_params({"model": model.name, **model.get_params(), **(params or {}),
                        "data": str(Path(data_dir).resolve())})
    label = data_name(data_dir)
    if label is not None:
        # The run's description in the UI, and a tag to filter runs by data.
        tracker.set_tags({"recsys.data": label, "mlflow.note.content": (
            f"{model.name} ({model.family}) trained on {label}, prepared in "
            f"{Path(data_dir).resolve()}")})
    tracker.log_dataset(data_dir)


def log_training_end(tracker: Tracker, *, model: Recommender, run_dir: str | Path,
                     data_dir: str | Path, dataset: Dataset | None = None,
                     summary: dict[str, float] | None = None,
                     per_user: pd.DataFrame | None = None,
                     register: str | None = None, alias: str = DEFAULT_ALIAS) -> str | None:
    """After fitting (and evaluating): everything else a training run records; returns the
    model URI.

    ``summary``/``per_user``: the final evaluation (`EvalResult.summary` / ``.per_user`` with
    internal user ids). Each piece is logged independently: one failing never stops the rest.
    """
    if not is_recording(tracker):
        return None
    from recsys.data.interactions import Dataset

    run_dir = Path(run_dir)
    tracker.run_dir = run_dir
    dataset = dataset if dataset is not None else Dataset.load(data_dir)
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
    # The model first: the test metrics are then logged linked to it (MLflow's Models tab).
    uri = tracker.log_model(run_dir, data_dir, register=register, alias=alias, dataset=dataset,
                            name=model.name, metrics=summary, metric=_run_metric(run_dir))
    if summary:
        tracker.log_evaluation(summary, part="test")
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
    from recsys.scoring.serving import TopKPredictor

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
        tracker.failures.append(what)
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


def _run_metric(run_dir: Path) -> str | None:
    """The metric the run chose and stopped by (run.json's ``metric``), if recorded."""
    from recsys.rundir import read_run

    try:
        metric = read_run(run_dir).get("metric")
    except (OSError, ValueError, RecsysError):
        return None
    return metric if isinstance(metric, str) else None


def _record_in_run(tracker: Tracker, run_dir: Path, model_uri: str | None) -> None:
    """Point the run directory at its MLflow run (so later commands can find it)."""
    from recsys.rundir import RUN_FILE, update_run

    if not (run_dir / RUN_FILE).is_file():
        return
    record = {"run_id": tracker.run_id,
              "tracking_uri": tracker.tracking_uri, "model_uri": model_uri}
    registered = tracker.registered
    if registered:
        record["registered"] = {"name": registered[0], "version": registered[1]}
    update_run(run_dir, mlflow=record)


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)

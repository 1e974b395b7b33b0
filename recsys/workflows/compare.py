"""Several models on one prepared split, side by side: the use case of `recsys compare` and the
benchmark pipeline.

Every model (optionally tuned on the validation part, `recsys.workflows.tune`) is trained into
its own run directory (`recsys.workflows.train.train_run`), evaluated on the test part and
tracked as a child run of one parent run. The result is a table of every metric with bootstrap
95% confidence intervals and, for each model, whether it differs significantly from the best one
(paired Wilcoxon signed-rank test over users, or the paired t-test); the parent run gets the
table and a comparison figure, and ``register`` the best model. The spec (`CompareConfig`) is
validated where it is read (`recsys.commands.compare.load_compare_config`).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from recsys.config import StrictConfig
from recsys.errors import RecsysError
from recsys.evaluation.metrics import COMPARE_DEFAULT, lower_is_better
from recsys.tracking.base import Tracker
from recsys.tracking.setup import TrackingOptions, make_tracker
from recsys.workflows.tune import Search


class StudySpec(StrictConfig):
    """``tune: {trials: N}``: an Optuna study over the model's declared space (or the
    ``search_space`` file's, relative to the comparison file), as `recsys train --tune`."""

    trials: int = Field(ge=1)
    timeout: float | None = Field(None, gt=0)
    search_space: str | None = None


class ModelSpec(StrictConfig):
    model: str
    label: str | None = None  # defaults to the model name (must be unique in the file)
    # A model config file (as `recsys train --config`), relative to the comparison file;
    # `params` override its keys.
    config: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    # Grid searched on the validation part: {key: [values]}; "config" for the `tune:` section
    # of `config`; "default" for the model's default grid (recsys.models.tuning); nothing = the
    # params as given; {trials: N} for an Optuna study (`StudySpec`).
    tune: StudySpec | dict[str, list[Any]] | Literal["default", "config"] = Field(
        default_factory=dict)

    @property
    def name(self) -> str:
        return self.label or self.model


class CompareConfig(StrictConfig):
    name: str | None = None
    experiment: str | None = None
    data: str
    prepare: dict[str, Any] | None = None
    out: str = "runs/compare"
    metrics: list[str] = Field(default_factory=lambda: list(COMPARE_DEFAULT))
    primary: str = "ndcg@100"
    tune_metric: str | None = None  # validation metric for tuning (default: primary)
    # How every model's search keeps its candidate (`recsys.models.tuning.select`; the same rule
    # for all, as --tune-rule).
    tune_rule: Literal["one-se", "best"] = "one-se"
    test: str = "wilcoxon"
    alpha: float = Field(0.05, gt=0, lt=1)
    bootstrap: int = Field(1000, ge=100)
    seed: int = 0
    device: str | None = None  # set on every model whose config has a `device` key
    models: list[ModelSpec] = Field(min_length=1)

    @field_validator("test")
    @classmethod
    def _test(cls, value: str) -> str:
        if value not in ("wilcoxon", "ttest"):
            raise ValueError("use 'wilcoxon' or 'ttest'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CompareConfig:
        labels = [m.name for m in self.models]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"model label '{dup[0]}' appears twice; give each a unique `label`")
        if self.primary not in self.metrics:
            self.metrics = [*self.metrics, self.primary]
        return self


@dataclass
class ModelOutcome:
    label: str
    model: str
    params: dict[str, Any]
    run_dir: Path
    summary: dict[str, float]
    per_user: pd.DataFrame
    seconds: float
    tuned: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    model_uri: str | None = None


@dataclass
class CompareResult:
    outcomes: list[ModelOutcome]
    table: pd.DataFrame  # long: model, metric, mean, low, high, p_value, significant, best
    best: str  # label of the best model on the primary metric
    primary: str
    parent_run_id: str | None = None
    registered: tuple[str, str] | None = None

    def outcome(self, label: str) -> ModelOutcome:
        return next(o for o in self.outcomes if o.label == label)


def compare(spec: CompareConfig, tracking: TrackingOptions | None = None, *,
            config_path: Path | None = None, quiet: bool = False,
            step: Callable[[str, Tracker], AbstractContextManager[Any]] | None = None,
            prepare: Callable[[CompareConfig], Path] | None = None) -> CompareResult:
    """Train, evaluate and compare the models of ``spec``; track them as ``tracking`` says
    (None: untracked). ``prepare(spec)`` builds ``spec.data`` when it is not a prepared dataset
    (the command layer's `recsys prepare`; None: it must exist).

    ``step(name, parent_tracker)``: a context manager wrapped around each stage (``prepare``,
    ``train+evaluate <label>``, ``compare``, ``register``); pipelines use it to time and log
    their steps.
    """
    from recsys.data.io import output_lock

    out = Path(spec.out)
    check_compare_out(out, [m.name for m in spec.models])
    # One comparison at a time writes `out` (two would mix their runs and table).
    with output_lock(out, "compare"):
        return _compare(spec, tracking or TrackingOptions(track=False),
                        config_path=config_path, quiet=quiet, step=step, prepare=prepare)


# The comparison folder's marker kind, and what a comparison writes beside its run directories.
COMPARE_KIND = "comparison"
COMPARE_FILES = ("comparison.csv", "comparison.png")
TABLE_COLUMNS = ("model", "metric", "mean", "low", "high", "p_value", "significant", "best")


def check_compare_out(out: Path, labels: list[str]) -> None:
    """Refuse (one line), before anything is trained, an ``out`` a comparison must not write
    into: anything but a new or empty folder or a comparison (its marker, or, written before
    markers existed, nothing but comparison.csv/png and runs); and a model's run directory that
    exists and is not a run (`recsys.rundir.check_out` replaces only runs)."""
    from recsys.data.io import check_replaceable
    from recsys.rundir import is_run_dir

    def unmarked(folder: Path) -> bool:
        return all(e in COMPARE_FILES or ((folder / e).is_dir() and is_run_dir(folder / e))
                   for e in os.listdir(folder))

    check_replaceable(out, COMPARE_KIND, what="comparison folder", legacy=unmarked)
    for label in labels:
        run_dir = out / label
        if run_dir.is_symlink() or (run_dir.exists() and not (
                run_dir.is_dir() and (not any(run_dir.iterdir()) or is_run_dir(run_dir)))):
            raise RecsysError(f"--out {out}: {run_dir} (model '{label}') exists and is not a run "
                              "recsys wrote; move it away or choose another --out")


def _compare(spec: CompareConfig, tracking: TrackingOptions, *, config_path: Path | None,
             quiet: bool, step: Callable[[str, Tracker], AbstractContextManager[Any]] | None,
             prepare: Callable[[CompareConfig], Path] | None) -> CompareResult:
    from recsys.data.interactions import Dataset

    if tracking.experiment is None and spec.experiment:
        tracking = tracking.model_copy(update={"experiment": spec.experiment})
    stage = step or (lambda name, tracker: nullcontext())
    # Tracking is checked before any data is prepared or model trained.
    parent = make_tracker(tracking, run_name=compare_run_name(spec),
                          tags={"recsys.kind": "compare"})
    status = "FAILED"
    try:
        with stage("prepare", parent):
            data_dir = (prepare or prepared)(spec)
            dataset = Dataset.load(data_dir)
            parent.log_params({"config": str(config_path or ""),
                               "data": str(data_dir.resolve()),
                               "metrics": ",".join(spec.metrics), "primary": spec.primary,
                               "test": spec.test, "alpha": spec.alpha,
                               "models": ",".join(m.name for m in spec.models)})
            parent.log_dataset(data_dir)
            if config_path is not None:
                parent.log_artifact(config_path)
        outcomes = []
        for i, m in enumerate(spec.models):
            if not quiet and step is None:
                print(f"[{i + 1}/{len(spec.models)}] {m.name}", file=sys.stderr)
            with stage(f"train+evaluate {m.name}", parent):
                outcomes.append(run_model(m, spec, dataset, data_dir, tracking, parent))
        with stage("compare", parent):
            table = comparison_table(outcomes, spec)
            best = best_label(table, spec.primary)
            result = CompareResult(outcomes, table, best, spec.primary, parent.run_id)
            log_comparison(parent, result, spec)
        if tracking.register_name and parent.run_id:
            with stage("register", parent):
                result.registered = register_best(result, tracking, data_dir)
        status = "FINISHED"
        return result
    finally:
        parent.close(status)


def run_model(m: ModelSpec, spec: CompareConfig, dataset: Any, data_dir: Path,
              tracking: TrackingOptions, parent: Tracker) -> ModelOutcome:
    """One child run: (tune,) fit, save, evaluate on test, log."""
    from recsys.models.registry import create_model, get_model_class
    from recsys.rundir import check_out
    from recsys.tracking.records import default_run_name, metric_name, training_tags
    from recsys.workflows.train import train_run
    from recsys.workflows.tune import tune_model

    cls = get_model_class(m.model)
    params = dict(m.params)
    if spec.device is not None and "device" in cls.Config.model_fields:
        params["device"] = spec.device
    run_dir = Path(spec.out) / m.name
    model = create_model(m.model, **params)
    child_tracking = tracking.model_copy(update={"register_name": None})
    tracker = make_tracker(child_tracking, run_name=default_run_name(m.name, data_dir),
                           tags={**training_tags(model), "recsys.compare": spec.name or ""},
                           parent=parent)
    status = "FAILED"
    try:
        # A rerun replaces this model's run directory (what `recsys train --overwrite` removes).
        check_out(run_dir, resume=False, overwrite=True)
        valid = dataset.eval_split("valid") if dataset.has("valid") else None
        tuned: dict[str, Any] = {}
        tune_seconds = 0.0
        if m.tune:
            if valid is None:
                raise RecsysError(f"model '{m.name}' has `tune` but {data_dir} has no validation "
                                  "part; prepare it with --valid-fraction > 0")
            done = tune_model(model, dataset, valid, search_of(m, spec), tracker=tracker,
                              tracking=child_tracking, run_dir=run_dir, device=spec.device)
            tuned, tune_seconds = dict(done.result.best_params), done.seconds
        outcome = train_run(model, dataset, data_dir, run_dir, tracker=tracker, valid=valid,
                            metrics=spec.metrics, device=spec.device,
                            record={"tuned": tuned, "tune_seconds": tune_seconds,
                                    "compare": spec.name})
        if outcome.evaluation is None:
            raise RecsysError(f"{data_dir} has no test part to compare the models on; prepare "
                              "it with a test part")
        tracker.log_metrics({metric_name("time", "fit_seconds"): outcome.fit_seconds,
                             metric_name("time", "tune_seconds"): tune_seconds})
        status = "FINISHED"
        return ModelOutcome(m.name, m.model, {**params, **tuned}, run_dir,
                            outcome.evaluation.summary, outcome.evaluation.per_user,
                            outcome.fit_seconds, tuned, tracker.run_id, outcome.model_uri)
    finally:
        tracker.close(status)


def compare_run_name(spec: CompareConfig) -> str:
    """The parent run's name: the spec's ``name``, else ``compare · DATASET/SPLIT`` (the data's
    metadata, when it is prepared already; else ``compare``)."""
    from recsys.tracking.records import default_run_name

    return spec.name or default_run_name("compare", spec.data)


def search_of(m: ModelSpec, spec: CompareConfig) -> Search:
    """A model's ``tune:`` as the search `recsys train --tune` would run."""
    from recsys.config import load_yaml

    metric = spec.tune_metric or spec.primary
    if isinstance(m.tune, StudySpec):
        space = load_yaml(m.tune.search_space) if m.tune.search_space else None
        return Search("study", metric, space=space, trials=m.tune.trials,
                      timeout=m.tune.timeout, seed=spec.seed, rule=spec.tune_rule)
    return Search("grid", metric, grid=None if m.tune == "default" else dict(m.tune),
                  rule=spec.tune_rule)


def prepared(spec: CompareConfig) -> Path:
    """``spec.data`` when it is a prepared dataset."""
    data_dir = Path(spec.data)
    if not (data_dir / "metadata.json").is_file():
        raise RecsysError(f"{data_dir} is not a prepared dataset; run `recsys prepare ... --out "
                          f"{data_dir}` first")
    return data_dir


# -- statistics, table, figure ---------------------------------------------------------------


def comparison_table(outcomes: list[ModelOutcome], spec: CompareConfig) -> pd.DataFrame:
    """Long table: one row per (model, metric) with mean, 95% CI and the test against the best."""
    from recsys.evaluation.stats import bootstrap_ci, paired_tests

    rows = []
    cis = {o.label: bootstrap_ci(o.per_user, _per_user_metrics(o, spec),
                                 n_resamples=spec.bootstrap, seed=spec.seed) for o in outcomes}
    pcol = "wilcoxon_pvalue" if spec.test == "wilcoxon" else "t_pvalue"
    for metric in spec.metrics:
        values = {o.label: o.summary.get(metric, math.nan) for o in outcomes}
        finite = {k: v for k, v in values.items() if math.isfinite(v)}
        if not finite:
            best = None
        else:
            pick = min if lower_is_better(metric) else max
            best = pick(finite, key=finite.get)
        best_outcome = next((o for o in outcomes if o.label == best), None)
        for o in outcomes:
            lo, hi = cis[o.label].get(metric, (math.nan, math.nan))
            p = math.nan
            per_user_metric = metric in o.per_user.columns
            if best_outcome is not None and o.label != best and per_user_metric:
                p = float(paired_tests(best_outcome.per_user, o.per_user, [metric])
                          .loc[metric, pcol])
            rows.append({"model": o.label, "metric": metric, "mean": values[o.label],
                         "low": lo, "high": hi, "p_value": p,
                         "significant": bool(math.isfinite(p) and p < spec.alpha),
                         "best": o.label == best})
    return pd.DataFrame(rows)


def _per_user_metrics(o: ModelOutcome, spec: CompareConfig) -> list[str]:
    return [m for m in spec.metrics if m in o.per_user.columns]


def best_label(table: pd.DataFrame, primary: str) -> str:
    rows = table[(table["metric"] == primary) & table["best"]]
    if rows.empty:
        raise RecsysError(f"no model has a finite {primary}; nothing to rank")
    return str(rows["model"].iloc[0])


def comparison_figure(table: pd.DataFrame, metrics: list[str], title: str) -> Any:
    """One panel per metric: each model's mean with its 95% interval, best highlighted."""
    import os

    import matplotlib

    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    models = list(dict.fromkeys(table["model"]))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 0.45 * len(models) * rows + 1.8),
                             squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        sub = table[table["metric"] == metric].set_index("model").reindex(models)
        y = np.arange(len(models))
        mean = sub["mean"].to_numpy(float)
        err = np.vstack([mean - sub["low"].to_numpy(float), sub["high"].to_numpy(float) - mean])
        err = np.where(np.isfinite(err), np.maximum(err, 0), 0)
        colors = ["tab:orange" if b else "tab:blue" for b in sub["best"].fillna(False)]
        ax.barh(y, mean, xerr=err, color=colors, capsize=3)
        ax.set_yticks(y, models)
        ax.invert_yaxis()
        ax.set_title(metric, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def log_comparison(parent: Tracker, result: CompareResult, spec: CompareConfig) -> None:
    """Comparison table and figure: into the output folder and the parent run."""
    import matplotlib.pyplot as plt

    from recsys.data.io import atomic_path, read_marker, write_marker
    from recsys.tracking.records import metric_name

    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    if read_marker(out) is None:  # marks the folder a comparison: a later one may write into it
        write_marker(out, COMPARE_KIND, 1)
    with atomic_path(out / "comparison.csv") as tmp:
        result.table.to_csv(tmp, index=False)
    fig = comparison_figure(result.table, spec.metrics, f"{spec.name}: test metrics (95% CI)")
    with atomic_path(out / "comparison.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    parent.log_figure(fig, "comparison.png")
    plt.close(fig)
    parent.log_table(result.table, "comparison.json")
    best = result.outcome(result.best)
    parent.log_metrics({metric_name("best", k): v for k, v in best.summary.items()})
    parent.set_tags({"recsys.best_model": result.best,
                     "recsys.best_run_id": best.run_id or ""})


def register_best(result: CompareResult, tracking: TrackingOptions,
                  data_dir: Path | None = None) -> tuple[str, str] | None:
    """Register the best model's logged pyfunc under ``tracking.register_name`` with its alias,
    described by the data (``data_dir``) and its test metrics."""
    from recsys.tracking.mlflow import register_model, version_notes
    from recsys.tracking.records import data_name

    best = result.outcome(result.best)
    if best.model_uri is None:
        print(f"warning: the best model '{result.best}' was not logged to MLflow; nothing "
              "registered", file=sys.stderr)
        return None
    assert tracking.register_name is not None
    description, tags = version_notes(
        best.model, data_name(data_dir) if data_dir is not None else None,
        best.summary, result.primary, run_id=best.run_id)
    tags["recsys.compare.label"] = best.label
    version = register_model(best.model_uri, tracking.register_name, tracking.alias,
                             tracking_uri=tracking.tracking_uri, description=description,
                             tags=tags)
    return tracking.register_name, version

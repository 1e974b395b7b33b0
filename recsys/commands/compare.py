"""`recsys compare CONFIG.yaml`: several models on one prepared split, side by side.

Every model (optionally tuned on the validation part) is trained, evaluated on the test part and
logged as a child MLflow run of one parent run. The result is a table of every metric with
bootstrap 95% confidence intervals and, for each model, whether it differs significantly from the
best one (paired Wilcoxon signed-rank test over users, or the paired t-test); the parent run gets
the table and a comparison figure. ``--register NAME`` registers the best model.

The YAML file (unknown keys are errors)::

    name: ml-latest-small              # parent run name (default: the file's stem)
    data: data/prepared/ml-latest-small
    prepare:                           # optional: how to build `data` when it does not exist,
      dataset: ml-latest-small         # as `recsys prepare` flags (dashes or underscores)
      implicit_threshold: 3.5
    out: runs/compare-ml-latest-small  # one run directory per model
    metrics: [recall@20, ndcg@100]
    primary: ndcg@100                  # ranks the models; "best" is best on it
    models:
      - model: pop
      - model: itemknn
        tune: default                  # the model's default grid (recsys.models.tuning)
      - model: ease
        tune: {lambda_: [100, 500]}    # grid searched on the validation part (never test)
      - model: multdae
        tune: {trials: 30}             # an Optuna study (`recsys train --tune --trials 30`):
                                       # the same budget for every model; optional timeout
                                       # (seconds) and search_space (a --search-space file)
      - model: multvae
        label: multvae-e20
        config: multvae.yaml           # a model config file, relative to this file
        params: {epochs: 20}           # ... with these keys overridden
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator, model_validator

from recsys.config import StrictConfig, load_yaml, validate_config
from recsys.errors import RecsysError
from recsys.tracking.base import Tracker
from recsys.tracking.options import add_tracking_args

DEFAULT_METRICS = ["recall@20", "recall@50", "ndcg@20", "ndcg@100", "precision@20",
                   "coverage@20"]


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
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    primary: str = "ndcg@100"
    tune_metric: str | None = None  # validation metric for tuning (default: primary)
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


# -- CLI ----------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="train, evaluate and compare several models",
                              description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("config", metavar="CONFIG.yaml", help="comparison file (see configs/)")
    p.add_argument("--out", default=None, metavar="DIR", help="override `out` of the file")
    p.add_argument("--data", default=None, metavar="DIR", help="override `data` of the file")
    p.add_argument("--only", default=None, metavar="LABELS",
                   help="comma-separated subset of the file's model labels")
    p.add_argument("--device", default=None, help="override `device` (auto, cpu, cuda, ...)")
    p.add_argument("--table", default=None, metavar="FILE.csv",
                   help="also write the comparison table (long format) here")
    add_tracking_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = load_compare_config(args.config, out=args.out, data=args.data, device=args.device,
                               only=args.only)
    if args.table and Path(args.table).suffix.lower() != ".csv":
        raise RecsysError(f"--table {args.table}: use a .csv file name")
    if args.table:
        from recsys.data.io import check_replaceable_file, has_columns

        check_replaceable_file(args.table, flag="--table", what="comparison table",
                               ours=has_columns(*TABLE_COLUMNS))
    result = compare(spec, args, config_path=Path(args.config), quiet=args.quiet)
    print_table(result, spec)
    if args.table:
        from recsys.data.io import atomic_path

        with atomic_path(args.table) as tmp:
            result.table.to_csv(tmp, index=False)
    return 0


def load_compare_config(path: str | Path, *, out: str | None = None, data: str | None = None,
                        device: str | None = None, only: str | None = None) -> CompareConfig:
    raw = load_yaml(path)
    raw.setdefault("name", Path(path).stem)
    for key, value in (("out", out), ("data", data), ("device", device)):
        if value is not None:
            raw[key] = value
    spec = validate_config(CompareConfig, raw, where=str(path))
    if spec.prepare is not None:
        check_prepare(spec.prepare, spec.data, where=str(path))
    from recsys.evaluation.metrics import parse_metrics

    try:
        spec.metrics = parse_metrics(spec.metrics)
        if spec.tune_metric:
            parse_metrics([spec.tune_metric])
    except RecsysError as exc:
        raise RecsysError(f"{path}: {exc}") from None
    from recsys.models.registry import get_model_class

    for m in spec.models:
        cls = get_model_class(m.model)
        if m.config is not None:
            config_file = Path(m.config)
            if not config_file.is_absolute():
                config_file = Path(path).parent / config_file
            from_file = load_yaml(config_file)
            grid = from_file.pop("tune", None)
            m.params = {**from_file, **m.params}
            m.config = str(config_file)
            if m.tune == "config":
                if not grid:
                    raise RecsysError(f"{path}: model '{m.name}': `tune: config` but "
                                      f"{config_file} has no `tune:` section")
                m.tune = grid
        elif m.tune == "config":
            raise RecsysError(f"{path}: model '{m.name}': `tune: config` needs `config: FILE`")
        validate_config(cls.Config, m.params, where=f"{path}: model '{m.name}'")
        if m.tune == "default":
            from recsys.models.tuning import default_grid

            if not default_grid(m.model):
                raise RecsysError(f"{path}: model '{m.name}': `tune: default` but '{m.model}' "
                                  "has no default grid; give one as {key: [values]}")
        elif isinstance(m.tune, StudySpec):
            from recsys.models.tuning import default_space
            from recsys.training.search import check_space

            where = f"{path}: model '{m.name}' tune"
            space = default_space(m.model)
            if m.tune.search_space is not None:
                space_file = Path(m.tune.search_space)
                if not space_file.is_absolute():
                    space_file = Path(path).parent / space_file
                m.tune.search_space = str(space_file)
                where = str(space_file)
                space = load_yaml(space_file)
            check_space(cls(**m.params), space, where=where)
        elif m.tune:
            from recsys.models.tuning import check_grid

            check_grid(cls(**m.params), m.tune, where=f"{path}: model '{m.name}' tune")
    if only:
        wanted = [x.strip() for x in only.split(",") if x.strip()]
        known = [m.name for m in spec.models]
        for label in wanted:
            if label not in known:
                from recsys.errors import closest

                raise RecsysError(f"--only {label}: no such model label in {path}"
                                  f"{closest(label, known)} (labels: {', '.join(known)})")
        spec.models = [m for m in spec.models if m.name in wanted]
    return spec


# -- the comparison ------------------------------------------------------------------------------


def ensure_data(spec: CompareConfig) -> Path:
    """The prepared data directory, built with `recsys prepare` from ``prepare`` if missing."""
    data_dir = Path(spec.data)
    if (data_dir / "metadata.json").is_file():
        return data_dir
    if not spec.prepare:
        raise RecsysError(f"{data_dir} is not a prepared dataset and the comparison file has no "
                          "`prepare` section; run `recsys prepare ... --out "
                          f"{data_dir}` first")
    argv = ["prepare", *prepare_argv(spec.prepare), "--out", str(data_dir)]
    args = _prepare_parser().parse_args(argv)  # checked by load_compare_config already
    print(f"preparing {data_dir}: recsys {' '.join(argv)}", file=sys.stderr)
    # The command itself rather than the console script: its RecsysError reaches the user as
    # the one line it is, not as a second "failed" line after it.
    code = args.func(args)
    if code:
        raise RecsysError(f"`recsys {' '.join(argv)}` failed (exit {code})")
    return data_dir


class _PrepareOptionError(Exception):
    """argparse's complaint about a `prepare:` option (raised instead of exiting)."""


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _PrepareOptionError(message)


def _prepare_parser() -> argparse.ArgumentParser:
    """The `recsys prepare` parser on its own, raising instead of printing and exiting."""
    from recsys.cli import _add_common
    from recsys.commands.data import register as register_data

    parser = _RaisingParser(prog="recsys", add_help=False)
    sub = parser.add_subparsers(dest="command", parser_class=_RaisingParser)
    register_data(sub)
    _add_common(sub.choices["prepare"], default=False)  # --quiet, as `recsys prepare` has it
    return parser


def prepare_keys() -> list[str]:
    """The keys a `prepare:` section accepts: the `recsys prepare` options (underscored), less
    ``out`` (that is `data`)."""
    sub = next(a for a in _prepare_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    return [a.dest for a in sub.choices["prepare"]._actions
            if a.dest not in ("help", "out") and a.dest != argparse.SUPPRESS]


def check_prepare(options: dict[str, Any], data: str, *, where: str) -> None:
    """Refuse a `prepare:` section `recsys prepare` would refuse, in one line, before anything
    runs: an unknown key (with the closest valid one), then a value its flag does not take."""
    from recsys.errors import closest

    valid = prepare_keys()
    for key in options:
        name = str(key).replace("-", "_")
        if name not in valid:
            raise RecsysError(f"{where}: prepare: unknown key '{key}'{closest(name, valid)}")
    from recsys.commands.data import check_flags

    argv = ["prepare", *prepare_argv(options), "--out", str(data)]
    try:
        check_flags(_prepare_parser().parse_args(argv))  # a flag moot where given, too
    except (_PrepareOptionError, RecsysError) as exc:
        raise RecsysError(f"{where}: prepare: {exc} (as `recsys {' '.join(argv)}`)") from None


def prepare_argv(options: dict[str, Any]) -> list[str]:
    """``{dataset: x, implicit_threshold: 3.5, kcore: true}`` -> ``x --implicit-threshold 3.5
    --kcore`` (the `recsys prepare` flags)."""
    opts = {str(k).replace("-", "_"): v for k, v in options.items()}
    argv = [str(opts.pop("dataset"))] if "dataset" in opts else []
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        else:
            argv += [flag, str(value)]
    return argv


def compare(spec: CompareConfig, args: argparse.Namespace | None = None, *,
            config_path: Path | None = None, quiet: bool = False,
            step: Callable[[str, Tracker], AbstractContextManager[Any]] | None = None,
            ) -> CompareResult:
    """Train, evaluate and compare the models of ``spec``; log to MLflow as ``args`` say.

    ``step(name, parent_tracker)``: a context manager wrapped around each stage (``prepare``,
    ``train+evaluate <label>``, ``compare``, ``register``); pipelines use it to time and log
    their steps.
    """
    from recsys.data.io import output_lock

    out = Path(spec.out)
    check_compare_out(out, [m.name for m in spec.models])
    # One comparison at a time writes `out` (two would mix their runs and table).
    with output_lock(out, "compare"):
        return _compare(spec, args, config_path=config_path, quiet=quiet, step=step)


# The comparison folder's marker kind, and what a comparison writes beside its run directories.
COMPARE_KIND = "comparison"
COMPARE_FILES = ("comparison.csv", "comparison.png")
TABLE_COLUMNS = ("model", "metric", "mean", "low", "high", "p_value", "significant", "best")


def check_compare_out(out: Path, labels: list[str]) -> None:
    """Refuse (one line), before anything is trained, an ``out`` a comparison must not write
    into: anything but a new or empty folder or a comparison (its marker, or, written before
    markers existed, nothing but comparison.csv/png and runs); and a model's run directory that
    exists and is not a run (`recsys.commands.train.check_out` replaces only runs)."""
    from recsys.commands.train import is_run_dir
    from recsys.data.io import check_replaceable

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


def _compare(spec: CompareConfig, args: argparse.Namespace | None, *,
             config_path: Path | None, quiet: bool,
             step: Callable[[str, Tracker], AbstractContextManager[Any]] | None
             ) -> CompareResult:
    from recsys.data.interactions import Dataset
    from recsys.tracking.options import make_tracker

    args = args or argparse.Namespace(no_track=True)
    if getattr(args, "experiment", None) is None and spec.experiment:
        args.experiment = spec.experiment
    stage = step or (lambda name, tracker: nullcontext())
    # Tracking is checked before any data is prepared or model trained.
    parent = make_tracker(args, run_name=spec.name, tags={"recsys.kind": "compare"})
    status = "FAILED"
    try:
        with stage("prepare", parent):
            data_dir = ensure_data(spec)
            dataset = Dataset.load(data_dir)
            parent.log_params({"config": str(config_path or ""),
                               "data": str(data_dir.resolve()),
                               "metrics": ",".join(spec.metrics), "primary": spec.primary,
                               "test": spec.test, "alpha": spec.alpha,
                               "models": ",".join(m.name for m in spec.models)})
            log_dataset = getattr(parent, "log_dataset", None)
            if log_dataset is not None:
                log_dataset(data_dir)
            if config_path is not None:
                parent.log_artifact(config_path)
        outcomes = []
        for i, m in enumerate(spec.models):
            if not quiet and step is None:
                print(f"[{i + 1}/{len(spec.models)}] {m.name}", file=sys.stderr)
            with stage(f"train+evaluate {m.name}", parent):
                outcomes.append(run_model(m, spec, dataset, data_dir, args, parent))
        with stage("compare", parent):
            table = comparison_table(outcomes, spec)
            best = best_label(table, spec.primary)
            result = CompareResult(outcomes, table, best, spec.primary,
                                   getattr(parent, "run_id", None))
            log_comparison(parent, result, spec)
        register = getattr(args, "register", None)
        if register and getattr(parent, "run_id", None):
            with stage("register", parent):
                result.registered = register_best(result, args)
        status = "FINISHED"
        return result
    finally:
        parent.close(status)


def run_model(m: ModelSpec, spec: CompareConfig, dataset: Any, data_dir: Path,
              args: argparse.Namespace, parent: Tracker) -> ModelOutcome:
    """One child run: (tune,) fit, save, evaluate on test, log."""
    from recsys.commands.train import check_out
    from recsys.data.io import write_json
    from recsys.evaluation.evaluate import evaluate
    from recsys.models.base import FitContext
    from recsys.models.registry import create_model, get_model_class
    from recsys.run import data_record, save_run
    from recsys.tracking.options import (
        log_training_end,
        log_training_start,
        make_tracker,
        training_tags,
    )
    from recsys.training.refit import fit_final

    cls = get_model_class(m.model)
    params = dict(m.params)
    if spec.device is not None and "device" in cls.Config.model_fields:
        params["device"] = spec.device
    run_dir = Path(spec.out) / m.name
    model = create_model(m.model, **params)
    child_args = argparse.Namespace(**{**vars(args), "register": None})
    tracker = make_tracker(child_args, run_name=m.name,
                           tags={**training_tags(model), "recsys.compare": spec.name or ""},
                           parent=parent)
    status = "FAILED"
    try:
        # A rerun replaces this model's run directory (what `recsys train --overwrite` removes).
        check_out(run_dir, resume=False, overwrite=True)
        started = time.perf_counter()
        valid = dataset.eval_split("valid") if dataset.has("valid") else None
        tuned: dict[str, Any] = {}
        if m.tune:
            if valid is None:
                raise RecsysError(f"model '{m.name}' has `tune` but {data_dir} has no validation "
                                  "part; prepare it with --valid-fraction > 0")
            tuned = tune(m, model, dataset, valid, spec, tracker)
        tune_seconds = time.perf_counter() - started
        log_training_start(tracker, model=model, data_dir=data_dir)
        ctx = FitContext(run_dir=run_dir, tracker=tracker, quiet=True,
                         data_meta=dict(dataset.meta))
        final = fit_final(model, dataset, valid, ctx)  # and the refit on train + valid
        fit_seconds = final.seconds
        split = dataset.eval_split("test")
        result = evaluate(model, split, spec.metrics, device=spec.device,
                          rating_scale=dataset.rating_scale)
        save_run(run_dir, model, {
            **data_record(data_dir, dataset),
            "tuned": tuned, "tune_seconds": tune_seconds, **final.record(),
            "metrics": result.summary, "compare": spec.name})
        write_json(run_dir / "metrics.json", result.summary)
        uri = log_training_end(tracker, model=model, run_dir=run_dir, data_dir=data_dir,
                               dataset=dataset, summary=result.summary,
                               per_user=result.per_user)
        tracker.log_metrics({"fit_seconds": fit_seconds, "tune_seconds": tune_seconds})
        status = "FINISHED"
        return ModelOutcome(m.name, m.model, {**params, **tuned}, run_dir, result.summary,
                            result.per_user, fit_seconds, tuned,
                            getattr(tracker, "run_id", None), uri)
    finally:
        tracker.close(status)


def tune(m: ModelSpec, model: Any, dataset: Any, valid: Any, spec: CompareConfig,
         tracker: Tracker) -> dict[str, Any]:
    """Grid search on the validation part (recsys.models.tuning, as `recsys train --tune`);
    sets the best parameters on ``model`` and returns them."""
    from recsys.models.base import FitContext
    from recsys.models.tuning import tune as grid_search

    metric = spec.tune_metric or spec.primary
    ctx = FitContext(data_meta=dict(dataset.meta))
    if isinstance(m.tune, StudySpec):
        from recsys.config import load_yaml
        from recsys.training.search import study

        space = load_yaml(m.tune.search_space) if m.tune.search_space else None
        result = study(model, dataset.train, valid, space, trials=m.tune.trials,
                       timeout=m.tune.timeout, seed=spec.seed, metric=metric, ctx=ctx,
                       device=spec.device)
    else:
        grid = None if m.tune == "default" else m.tune
        result = grid_search(model, dataset.train, valid, grid, metric=metric, ctx=ctx,
                             device=spec.device)
    for step, value in enumerate(result.table[metric].tolist()):
        tracker.log_metrics({f"tune/valid_{metric}": value}, step=step)
    tracker.log_table(result.table, "tuning.json")
    model.set_params(**result.best_params)
    return dict(result.best_params)


# -- statistics, table, figure ---------------------------------------------------------------------


def comparison_table(outcomes: list[ModelOutcome], spec: CompareConfig) -> pd.DataFrame:
    """Long table: one row per (model, metric) with mean, 95% CI and the test against the best."""
    from recsys.evaluation.metrics import lower_is_better
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


def print_table(result: CompareResult, spec: CompareConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    test = "Wilcoxon signed-rank" if spec.test == "wilcoxon" else "paired t-test"
    t = Table(title=f"{spec.name}: test metrics, bootstrap 95% CI; * = differs from the best "
                    f"({test}, p < {spec.alpha})")
    t.add_column("model")
    for metric in spec.metrics:
        t.add_column(metric, justify="right")
    t.add_column(f"p vs best ({spec.primary})", justify="right")
    order = (result.table[result.table["metric"] == spec.primary]
             .sort_values("mean", ascending=_lower(spec.primary), na_position="last")["model"])
    for label in order:
        cells = []
        rows = result.table[result.table["model"] == label].set_index("metric")
        for metric in spec.metrics:
            r = rows.loc[metric]
            text = f"{r['mean']:.4f}"
            if math.isfinite(r["low"]):
                text += f"\n[{r['low']:.4f}, {r['high']:.4f}]"
            if r["best"]:
                text = f"[bold]{text}[/bold]"
            elif r["significant"]:
                text += " *"
            cells.append(text)
        p = rows.loc[spec.primary, "p_value"]
        cells.append("best" if label == result.best else (f"{p:.2g}" if math.isfinite(p)
                                                          else "-"))
        t.add_row(label, *cells)
    Console(width=max(120, 24 * (len(spec.metrics) + 2))).print(t)
    if result.registered:
        name, version = result.registered
        print(f"registered {result.best} as {name} version {version}")


def _lower(metric: str) -> bool:
    from recsys.evaluation.metrics import lower_is_better

    return lower_is_better(metric)


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
    parent.log_metrics({f"best/{k}": v for k, v in best.summary.items()})
    parent.set_tags({"recsys.best_model": result.best,
                     "recsys.best_run_id": best.run_id or ""})


def register_best(result: CompareResult, args: argparse.Namespace) -> tuple[str, str] | None:
    """Register the best model's logged pyfunc under ``args.register`` with ``args.alias``."""
    from recsys.tracking.mlflow import register_model

    best = result.outcome(result.best)
    if best.model_uri is None:
        print(f"warning: the best model '{result.best}' was not logged to MLflow; nothing "
              "registered", file=sys.stderr)
        return None
    alias = getattr(args, "alias", None) or "champion"
    version = register_model(best.model_uri, args.register, alias,
                             tracking_uri=getattr(args, "tracking_uri", None))
    return args.register, version

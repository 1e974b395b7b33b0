"""Choose a model's hyper-parameters on the validation part: the use case behind `recsys train
--tune` and a comparison's ``tune:``.

`tune_model` runs the grid (`recsys.models.tuning.tune`) or the Optuna study
(`recsys.training.search.study`, each trial a child run of the tracker's run), sets the chosen
parameters on the model and records the search: the candidate table, the best params and
validation score, the study's figures and RUN_DIR/tuned.yaml (usable as ``--config``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from recsys.data.interactions import Dataset, EvalSplit
from recsys.models.base import FitContext, Recommender
from recsys.models.tuning import DEFAULT_RULE, TuneResult
from recsys.tracking.base import Tracker, flatten
from recsys.tracking.records import metric_name
from recsys.tracking.setup import TrackingOptions, make_tracker

EVAL_BATCH_SIZE = 2048


@dataclass
class Search:
    """What to search: ``mode`` "grid" (``grid``: {key: [values]}, None for the model's default)
    or "study" (``space``: None for the model's declared one; ``trials`` / ``timeout``; a stored
    study continues under ``study_name`` in ``storage``); ``rule``: how the kept candidate is
    chosen (`recsys.models.tuning.select`: "one-se" keeps the defaults unless beaten beyond one
    standard error on the validation users, "best" takes the top validation score)."""

    mode: Literal["grid", "study"]
    metric: str
    grid: dict[str, Any] | None = None
    space: dict[str, Any] | None = None
    trials: int | None = None
    timeout: float | None = None
    seed: int = 0
    storage: str | None = None
    study_name: str | None = None
    rule: str = DEFAULT_RULE


@dataclass
class Tuned:
    result: TuneResult
    seconds: float
    mode: str
    record: dict[str, Any] = field(default_factory=dict)  # run.json's ``tuned``


def tune_model(model: Recommender, dataset: Dataset, valid: EvalSplit, search: Search, *,
               tracker: Tracker, tracking: TrackingOptions | None = None,
               run_dir: str | Path | None = None, device: str | None = None,
               log: Callable[[str], None] | None = None) -> Tuned:
    """Search, set the best parameters on ``model`` and record the search in ``tracker`` (and
    ``run_dir``/tuned.yaml). ``tracking``: how each study trial's child run is tracked (None:
    trials are not tracked)."""
    ctx = FitContext(data_meta=dict(dataset.meta), features=dataset.features)
    started = time.perf_counter()
    if search.mode == "study":
        from recsys.training.search import study

        name = search.study_name or f"recsys-{model.name}"
        tracker.set_tags({"recsys.tune": "study", "optuna.sampler": f"TPE(seed={search.seed})",
                          **({"optuna.study_name": name} if search.storage else {})})

        def tracker_for(number: int, params: dict[str, Any]) -> Tracker:
            if tracking is None:
                return Tracker()
            child = make_tracker(tracking, run_name=f"trial-{number}", parent=tracker,
                                 tags={"recsys.kind": "trial", "optuna.trial": str(number)})
            child.log_params(flatten({"model": model.name, **model.get_params(), **params}))
            return child

        result = study(model, dataset.train, valid, search.space, trials=search.trials,
                       timeout=search.timeout, seed=search.seed, metric=search.metric, ctx=ctx,
                       batch_size=EVAL_BATCH_SIZE, device=device, storage=search.storage,
                       study_name=name if search.storage else None, rule=search.rule,
                       tracker_for=tracker_for, log=log)
    else:
        from recsys.models.tuning import tune

        result = tune(model, dataset.train, valid, search.grid, metric=search.metric, ctx=ctx,
                      batch_size=EVAL_BATCH_SIZE, device=device, rule=search.rule, log=log)
    seconds = time.perf_counter() - started
    model.set_params(**result.best_params)
    record_search(tracker, result, model, run_dir)
    return Tuned(result, seconds, search.mode, {**result.to_record(), "search": search.mode})


def record_search(tracker: Tracker, result: TuneResult, model: Recommender,
                  run_dir: str | Path | None) -> None:
    """The search in the tracker (candidate table, per-candidate validation curve, best params
    and score, the study's figures) and RUN_DIR/tuned.yaml."""
    metric = result.metric
    # Candidates from step 1: MLflow copies a run's step-0 metrics onto the model it logs later.
    for step, value in enumerate(result.table[metric].tolist(), 1):
        tracker.log_metrics({metric_name("tune", f"valid_{metric}"): value}, step=step)
    tracker.log_table(result.table, "tuning.json")
    tracker.log_params(flatten({f"best.{k}": v for k, v in result.best_params.items()}))
    tracker.log_metrics({metric_name("best", f"valid_{metric}"): result.best_score})
    selection = result.selection or {}
    tracker.set_tags({"recsys.tune.rule": str(selection.get("rule", "best")),
                      "recsys.tune.kept_default": str(bool(selection.get("kept_default")))})
    if "gain" in selection:
        # The search's best against the defaults on the validation users (the rule's inputs).
        tracker.log_metrics({metric_name("tune", f"gain_over_default_{metric}"): selection["gain"],
                             metric_name("tune", f"gain_se_{metric}"): selection["se"]})
    if run_dir is not None:
        path = Path(run_dir) / "tuned.yaml"
        write_tuned(path, model)
        tracker.log_artifact(path)
    if result.study is not None and tracker.recording:
        from recsys.training.search import study_figures

        for name, figure in study_figures(result.study).items():
            tracker.log_figure(figure, name)


def write_tuned(path: Path, model: Recommender) -> None:
    """RUN_DIR/tuned.yaml: the chosen config, whole, usable as --config (written atomically)."""
    import yaml

    from recsys.data.io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    text = (f"# {model.name}: the config --tune chose on the validation part; train it again "
            f"with\n#   recsys train {model.name} --config {path.name} ...\n"
            + yaml.safe_dump(model.get_params(), sort_keys=False, default_flow_style=None))
    with atomic_path(path) as tmp:
        tmp.write_text(text)

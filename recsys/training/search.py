"""Optuna studies for ``--tune``: TPE over a model's search space, on the validation part only.

A search space is ``{config key: spec}``; a spec is a range ``{low: A, high: B}`` (optional
``log: true``, ``step: S``) or ``{choices: [...]}``. A range is an integer range when the key's
default value is an integer, else a float range. Each model declares its space on its class
(``search_space``, read by `recsys.models.tuning.default_space`); ``--search-space FILE``
replaces it (`check_space` validates it).

Every trial is ``clone(model).set_params(**suggested)`` fitted on the training part and scored on
the validation `EvalSplit` (never the test part). Neural models report their per-epoch validation
metric through the fit's callbacks (`TrialCallbacks.on_validation`); the study's pruner
(median) stops a trial whose curve falls below the median of the earlier trials at the same
epoch. The caller learns of every trial through ``tracker_for`` (a `Tracker` per trial, e.g. a
nested MLflow run: the trial's epochs land in it) and ``log``; this module imports neither
argparse nor mlflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import optuna
import pandas as pd

from recsys.config import validate_config
from recsys.data.interactions import EvalSplit, Interactions
from recsys.errors import RecsysError, closest
from recsys.evaluation.metrics import lower_is_better
from recsys.models.base import FitContext, Recommender
from recsys.models.tuning import (
    DEFAULT_METRIC,
    DEFAULT_RULE,
    TuneResult,
    candidate_context,
    check_rule,
    check_valid_part,
    default_space,
    defaults_of,
    fit_candidate,
    select,
)
from recsys.tracking.base import Tracker
from recsys.tracking.callbacks import TrackerCallbacks
from recsys.tracking.records import metric_name

RANGE_KEYS = frozenset({"low", "high", "log", "step"})
# Defaults of the median pruner: trials compared only once a few have completed, and not before
# epoch PRUNE_WARMUP_EPOCHS (every curve starts low; an early dip says little). Measured on
# ml-100k, Mult-DAE, 30 trials: from epoch 3 the pruner cut 23 trials, the good slow learners
# (lr ~1e-3) among them, and the study lost to the default config (test NDCG@100 0.4592 vs
# 0.4624); from epoch 15 it cut 15, the study took 2.6 min and won (0.4630).
PRUNE_STARTUP_TRIALS = 3
PRUNE_WARMUP_EPOCHS = 15
# A stored study's running trials beat a heartbeat: a trial whose process was killed stops
# beating, and once it has been silent for HEARTBEAT_GRACE seconds it is marked FAIL (when the
# study is continued, and before each new trial), instead of staying RUNNING for ever.
HEARTBEAT_SECONDS = 10
HEARTBEAT_GRACE = 60


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_space(model: Recommender, space: Any, where: str = "search space"
                ) -> dict[str, dict[str, Any]]:
    """Validate ``space`` against the model's config; return it normalised.

    Unknown config keys, unknown spec keys, non-numeric or inverted bounds, ``log`` with a bound
    <= 0, empty choices and values the config refuses are each one line naming the key.
    """
    if not isinstance(space, Mapping):
        raise RecsysError(f"{where}: expected a mapping of config keys to ranges "
                          "({low: A, high: B[, log: true][, step: S]}) or {choices: [...]}")
    fields = type(model).Config.model_fields
    base = model.get_params()
    out: dict[str, dict[str, Any]] = {}
    for key, spec in space.items():
        key = str(key)
        name = f"{where}: '{key}'"
        if key not in fields:
            raise RecsysError(f"{where}: unknown key '{key}'{closest(key, fields)} for model "
                              f"'{model.name}'")
        if not isinstance(spec, Mapping):
            raise RecsysError(f"{name}: expected {{low: A, high: B}} or {{choices: [...]}}, "
                              f"got {spec!r}")
        if "choices" in spec:
            if set(spec) != {"choices"}:
                raise RecsysError(f"{name}: 'choices' goes alone (got {sorted(map(str, spec))})")
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise RecsysError(f"{name}: 'choices' must be a non-empty list")
            for value in choices:
                validate_config(type(model).Config, {**base, key: value}, where=name)
            out[key] = {"choices": list(choices)}
            continue
        unknown = set(map(str, spec)) - RANGE_KEYS
        if unknown:
            word = sorted(unknown)[0]
            raise RecsysError(f"{name}: unknown setting '{word}'"
                              f"{closest(word, [*RANGE_KEYS, 'choices'])}; a range has low, "
                              "high, log, step")
        if "low" not in spec or "high" not in spec:
            raise RecsysError(f"{name}: a range needs both 'low' and 'high'")
        low, high = spec["low"], spec["high"]
        if not (_is_number(low) and _is_number(high)):
            raise RecsysError(f"{name}: 'low' and 'high' must be numbers, got {low!r} and "
                              f"{high!r}")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise RecsysError(f"{name}: 'log' must be true or false, got {log!r}")
        if not low < high:
            raise RecsysError(f"{name}: 'low' ({low}) must be below 'high' ({high})")
        if log and low <= 0:
            raise RecsysError(f"{name}: a log range needs 'low' > 0 (got {low})")
        step = spec.get("step")
        if step is not None and (not _is_number(step) or step <= 0):
            raise RecsysError(f"{name}: 'step' must be a positive number, got {step!r}")
        if step is not None and log:
            raise RecsysError(f"{name}: 'step' and 'log' cannot go together")
        integer = _is_number(base.get(key)) and isinstance(base.get(key), int)
        if integer and not all(float(v).is_integer() for v in (low, high, step or 1)):
            raise RecsysError(f"{name}: '{key}' is an integer; 'low', 'high' and 'step' must "
                              "be whole numbers")
        for value in (low, high):
            validate_config(type(model).Config, {**base, key: int(value) if integer else value},
                            where=name)
        norm: dict[str, Any] = {"low": int(low) if integer else float(low),
                                "high": int(high) if integer else float(high)}
        if log:
            norm["log"] = True
        if step is not None:
            norm["step"] = int(step) if integer else float(step)
        out[key] = norm
    return out


def _scalar(choices: list[Any]) -> bool:
    """Whether Optuna can hold ``choices`` as they are (its categorical choices must be scalars;
    lists such as hidden_dims go by their text)."""
    return all(v is None or isinstance(v, (bool, int, float, str)) for v in choices)


def suggest(trial: optuna.Trial, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One point of ``space`` (normalised by `check_space`), as the trial's suggestions."""
    params: dict[str, Any] = {}
    for key, spec in space.items():
        if "choices" in spec:
            choices = spec["choices"]
            if _scalar(choices):
                params[key] = trial.suggest_categorical(key, choices)
            else:
                shown = [str(v) for v in choices]
                params[key] = choices[shown.index(trial.suggest_categorical(key, shown))]
        elif isinstance(spec["low"], int):
            params[key] = trial.suggest_int(key, spec["low"], spec["high"],
                                            step=spec.get("step", 1), log=spec.get("log", False))
        else:
            params[key] = trial.suggest_float(key, spec["low"], spec["high"],
                                              step=spec.get("step"), log=spec.get("log", False))
    return params


def study(model: Recommender, train: Interactions, valid: EvalSplit,
          space: Mapping[str, Any] | None = None, *, trials: int | None = 20,
          timeout: float | None = None, seed: int = 0, metric: str = DEFAULT_METRIC,
          ctx: FitContext | None = None, batch_size: int = 2048, device: str | None = None,
          storage: str | None = None, study_name: str | None = None,
          prune_startup: int = PRUNE_STARTUP_TRIALS, prune_warmup: int = PRUNE_WARMUP_EPOCHS,
          rule: str = DEFAULT_RULE,
          tracker_for: Callable[[int, dict[str, Any]], Tracker] | None = None,
          log: Callable[[str], None] | None = None) -> TuneResult:
    """Run an Optuna study of ``trials`` trials (and/or ``timeout`` seconds) over ``space``.

    A new study's first trial is the model's own config (when the space holds it), so that the
    search starts from it and, under ``rule`` "one-se" (`recsys.models.tuning.select`), keeps it
    unless the best trial beats it by more than one standard error on the validation users.

    ``space``: ``None`` takes the model's declared space. ``storage`` (an Optuna/SQLAlchemy URL)
    with ``study_name`` keeps the study: the same name continues it, its earlier trials counting
    towards the best. ``tracker_for(number, params)`` gives each trial its tracker (closed with
    FINISHED for a complete trial, KILLED for a pruned one, FAILED otherwise). The result's table
    has one row per trial of the study, earlier sessions' included.
    """
    from recsys.evaluation.metrics import parse_metrics

    [metric] = parse_metrics(metric)[:1]
    if space is None:
        space = default_space(model)
    space = check_space(model, space)
    if not space:
        raise RecsysError(f"model '{model.name}' has no search space (nothing to tune); give one "
                          "with --search-space FILE")
    if trials is not None and trials < 1:
        raise RecsysError(f"--trials must be at least 1 (got {trials})")
    check_valid_part(valid)
    check_rule(rule)  # before any trial
    lower = lower_is_better(metric)
    # Failed trials are reported through ``log`` in one line each, not Optuna's tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        stored = None if storage is None else optuna.storages.RDBStorage(
            storage, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=HEARTBEAT_GRACE)
        the_study = optuna.create_study(
            storage=stored, study_name=study_name, load_if_exists=storage is not None,
            direction="minimize" if lower else "maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=prune_startup,
                                               n_warmup_steps=prune_warmup))
    except ValueError as exc:  # e.g. a stored study of the other direction
        raise RecsysError(f"study '{study_name}' at {storage}: {exc}") from None
    if stored is not None:
        # The trials an interrupted session left RUNNING: failed now, not counted as running.
        optuna.storages.fail_stale_trials(the_study)
    defaults = defaults_of(model, space)
    if not the_study.trials and _holds(space, defaults):
        the_study.enqueue_trial(_as_suggested(space, defaults))
    # Each trial's per-user validation values, for the selection rule (this session's only: they
    # are too large to keep in a stored study).
    per_user: dict[int, Any] = {}

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        trial.set_user_attr("params", params)  # the config values (lists included)
        if params == defaults:
            trial.set_user_attr("default", True)
        tracker = tracker_for(trial.number, params) if tracker_for else Tracker()
        status = "FAILED"

        try:
            scored = fit_candidate(
                model, params, train, valid,
                candidate_context(ctx, TrialCallbacks(tracker, trial, metric)), metric,
                batch_size=batch_size, device=device)
            score, seconds = scored.score, scored.seconds
            per_user[trial.number] = scored.per_user
            trial.set_user_attr("fit_seconds", seconds)
            # Its own key: valid/METRIC is the per-epoch curve (its last epoch need not be the
            # best, whose weights the trial keeps).
            tracker.log_metrics({metric_name("trial", f"valid_{metric}"): score})
            status = "FINISHED"
        except optuna.TrialPruned:
            status = "KILLED"
            tracker.set_tags({"optuna.state": "PRUNED"})
            raise
        except RecsysError as exc:
            # A point of the space this data cannot take (dims wider than the catalogue, a
            # diverging lr): the trial fails, the study goes on.
            trial.set_user_attr("error", str(exc))
            tracker.set_tags({"optuna.state": "FAIL"})
            if log is not None:
                log(f"[trial {trial.number}] {_shown(params)}: failed ({exc})")
            raise
        finally:
            if status == "FINISHED":
                tracker.set_tags({"optuna.state": "COMPLETE"})
            tracker.close(status)
        if log is not None:
            log(f"[trial {trial.number}] {_shown(params)}: valid {metric} {score:.4f} "
                f"({seconds:.2f}s)")
        return score

    def on_pruned(the_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.PRUNED and log is not None:
            log(f"[trial {trial.number}] {_shown(trial.user_attrs.get('params', {}))}: pruned "
                f"at epoch {trial.last_step}")

    the_study.optimize(objective, n_trials=trials, timeout=timeout, callbacks=[on_pruned],
                       catch=(RecsysError,))
    return _result(the_study, space, metric, per_user, rule)


def _holds(space: Mapping[str, Mapping[str, Any]], values: Mapping[str, Any]) -> bool:
    """Whether ``values`` is a point of ``space`` (a --search-space may leave the defaults out)."""
    for key, spec in space.items():
        value = values[key]
        if "choices" in spec:
            if value not in spec["choices"]:
                return False
        elif not (_is_number(value) and spec["low"] <= value <= spec["high"]):
            return False
    return True


def _as_suggested(space: Mapping[str, Mapping[str, Any]], values: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """``values`` as Optuna holds them (list-valued choices go by their text, see `suggest`)."""
    out = {}
    for key, value in values.items():
        choices = space[key].get("choices")
        out[key] = value if choices is None or _scalar(choices) else str(value)
    return out


def _shown(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in params.items()) or "(no parameters)"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _result(the_study: optuna.Study, space: Mapping[str, Any], metric: str,
            per_user: Mapping[int, Any], rule: str) -> TuneResult:
    rows = []
    for t in the_study.trials:
        params = t.user_attrs.get("params", t.params)
        value = t.value if t.value is not None else (
            t.intermediate_values[t.last_step] if t.last_step is not None else math.nan)
        rows.append({**params, metric: float(value), "state": t.state.name,
                     "fit_seconds": float(t.user_attrs.get("fit_seconds", math.nan)),
                     "default": bool(t.user_attrs.get("default", False))})
    columns = list(dict.fromkeys([*space, *(k for r in rows for k in r)]))
    table = pd.DataFrame(rows, columns=columns)
    complete = [t for t in the_study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        errors = [t.user_attrs["error"] for t in the_study.trials if "error" in t.user_attrs]
        raise RecsysError("no trial of the study completed (all pruned or failed"
                          + (f"; first failure: {errors[0]}" if errors else "")
                          + "); give more --trials or change the --search-space")
    trials = the_study.trials
    best = trials.index(the_study.best_trial)
    default = next((i for i, t in enumerate(trials) if t.user_attrs.get("default")
                    and t.state == optuna.trial.TrialState.COMPLETE), None)
    by_row = {i: per_user.get(t.number) for i, t in enumerate(trials)}
    chosen, selection = select(best, default, by_row, lower_is_better(metric), rule)
    kept = trials[chosen]
    return TuneResult(dict(kept.user_attrs.get("params", kept.params)), float(kept.value),
                      metric, table, best_row=chosen, study=the_study, selection=selection)


class TrialCallbacks(TrackerCallbacks):
    """A trial's fit: its epochs go to the trial's tracker, and each validation value to the
    pruner, which stops a bad trial by raising `optuna.TrialPruned`."""

    def __init__(self, tracker: Tracker, trial: optuna.Trial, metric: str) -> None:
        super().__init__(tracker)
        self.trial, self.metric = trial, metric

    def on_validation(self, epoch: int, value: float) -> None:
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: valid {self.metric} {value:.4f}")


def study_figures(the_study: optuna.Study) -> dict[str, Any]:
    """Matplotlib figures of a study, by file name: the optimisation history, and the parameter
    importances (fANOVA) once two trials completed with more than one distinct value."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as plots

    figures: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        figures["optimization_history.png"] = plots.plot_optimization_history(the_study).figure
        complete = [t for t in the_study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len({t.value for t in complete}) > 1:
            try:
                figures["param_importances.png"] = plots.plot_param_importances(
                    the_study).figure
            except (ValueError, RuntimeError):
                pass  # e.g. a parameter fixed across all trials: no importance to show
    return figures

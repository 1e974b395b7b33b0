"""Grid search on the validation part (never the test part), with scikit-learn's ParameterGrid.

Every candidate is ``sklearn.base.clone(model).set_params(**candidate)``, fitted on the training
matrix and scored on the validation `EvalSplit` by one harness metric (``ndcg@100`` by default).
The best candidate's parameters and the whole per-candidate table come back in a `TuneResult`.

Each model declares its default grid (``tune_grid``, ``--tune`` without a ``tune:`` section) and
its Optuna space (``search_space``) on its class, next to its config (`default_grid`,
`default_space` read them); configs/MODEL.yaml repeats both as documentation
(tests/models/test_default_configs.py keeps them equal). A ``tune:`` section in a --config file
(``{key: [values]}``) replaces the default grid of that model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import ParameterGrid

from recsys.config import validate_config
from recsys.data.interactions import EvalSplit, Interactions
from recsys.errors import RecsysError, closest
from recsys.evaluation.metrics import RATING_METRICS, lower_is_better
from recsys.models.base import FitContext, Recommender

DEFAULT_METRIC = "ndcg@100"

# How the chosen candidate is picked from the validation table. "best": the top validation score.
# "one-se" (the default): the one-standard-error rule (Breiman et al. 1984; Hastie, Tibshirani &
# Friedman, The Elements of Statistical Learning, 2nd ed., sec. 7.10) with the model's default
# config as the simple candidate: the search's best replaces the defaults only when its mean
# per-user gain over them on the validation users exceeds one standard error of that gain. Why:
# the best of many noisy candidates is biased upwards on a small validation part. On
# ml-latest-small (603 validation users) a 30-trial Mult-DAE study's best was 0.0014 NDCG@100
# above the defaults on validation and 0.0077 below them on test. The defaults themselves were
# chosen on validation parts of several datasets, so keeping them is no blind guess.
RULES = ("one-se", "best")
DEFAULT_RULE = "one-se"

# How the models' default grids were chosen: to bracket the optimum seen on ml-100k (implicit
# >= 4 stars, validation part): EASE's best lambda lies in 200..500 there and grows with the
# data (Steck used 500 on ML-20M).
# ALS wants regularisation that grows with the confidence alpha (best near reg/alpha = 3..10:
# 10/1, 30/10, 100/30), and the factor count matters little once regularised that strongly.
# BPR does best with small learning rates. The neural grids bracket the one setting that
# mattered most on ml-100k's validation part around the chosen default (configs/MODEL.yaml says
# what was measured); each candidate is a full fit. Override any grid with a `tune:` section.


@dataclass
class TuneResult:
    """The chosen parameters and the validation table they were chosen from."""

    best_params: dict[str, Any]
    best_score: float
    metric: str
    table: pd.DataFrame  # one row per candidate: its parameters, the metric, fit_seconds
    # The chosen row where the metric column alone cannot tell (a study: pruned trials' rows
    # hold their last intermediate value); None: the best value of the column.
    best_row: int | None = None
    # The Optuna study behind a study's result (None for a grid): its plots, its storage.
    study: Any = None
    # How the row was chosen (`select`): the rule, the search's best row, the defaults' row and
    # the best's gain over the defaults with its standard error.
    selection: dict[str, Any] | None = None

    def to_record(self) -> dict[str, Any]:
        """JSON-ready summary (stored in run.json under ``tuned``)."""
        return {"metric": self.metric, "params": self.best_params, "score": self.best_score,
                "part": "valid", "selection": self.selection,
                "candidates": _json_ready(self.table).to_dict(orient="records")}

    def format(self, digits: int = 4) -> str:
        """The per-candidate table as aligned text, the chosen row marked with ``*``."""
        shown = self.table.copy()
        shown[self.metric] = shown[self.metric].map(lambda v: f"{v:.{digits}f}")
        shown["fit_seconds"] = shown["fit_seconds"].map(lambda v: f"{v:.2f}")
        best = self.best_index
        shown.insert(0, "", ["*" if i == best else "" for i in range(len(shown))])
        return shown.to_string(index=False)

    @property
    def best_index(self) -> int:
        if self.best_row is not None:
            return self.best_row
        values = self.table[self.metric].tolist()
        return _best_position(values, lower_is_better(self.metric))




def _declared(model: str | Recommender | type[Recommender], attribute: str) -> Any:
    """What a model's own class declares (not inherited: a subclass is another model, whose
    optimum nobody measured); ``model`` by registry name, instance or class."""
    if isinstance(model, str):
        from recsys.models.registry import get_model_class

        model = get_model_class(model)
    cls = model if isinstance(model, type) else type(model)
    return vars(cls).get(attribute)


def default_space(model: str | Recommender | type[Recommender]) -> dict[str, dict[str, Any]]:
    """A copy of the model's declared search space (its class's ``search_space``; empty for a
    model with nothing to tune)."""
    return {k: dict(v) for k, v in (_declared(model, "search_space") or {}).items()}


def default_grid(model: str | Recommender | type[Recommender]) -> dict[str, list[Any]] | None:
    """A copy of the model's default grid (its class's ``tune_grid``), None without one."""
    grid = _declared(model, "tune_grid")
    return {k: list(v) for k, v in grid.items()} if grid is not None else None


def check_grid(model: Recommender, grid: Any, where: str = "tune") -> dict[str, list[Any]]:
    """Validate a grid against the model's config: known keys, non-empty lists, valid values.

    A scalar value is a one-candidate list. Errors are one line naming the key.
    """
    if not isinstance(grid, Mapping):
        raise RecsysError(f"{where}: expected a mapping of config keys to lists of values")
    fields = type(model).Config.model_fields
    base = model.get_params()
    out: dict[str, list[Any]] = {}
    for key, values in grid.items():
        if key not in fields:
            raise RecsysError(f"{where}: unknown key '{key}'{closest(str(key), fields)} "
                              f"for model '{model.name}'")
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise RecsysError(f"{where}: '{key}' has no values to try")
        for value in values:
            validate_config(type(model).Config, {**base, key: value}, where=where)
        out[str(key)] = values
    return out


def check_valid_part(valid: EvalSplit) -> None:
    """Refuse to tune (grid or study) on a validation part with nobody to score."""
    if len(valid.users) == 0:
        raise RecsysError("the validation part has no user with both history and held-out "
                          "items; cannot tune on it")


@dataclass
class Scored:
    """One fitted candidate on the validation part."""

    score: float
    seconds: float  # fit time
    per_user: np.ndarray | None  # the metric per validation user; None for a global metric


def fit_candidate(model: Recommender, params: Mapping[str, Any], train: Interactions,
                  valid: EvalSplit, ctx: FitContext, metric: str, *, batch_size: int = 2048,
                  device: str | None = None) -> Scored:
    """One candidate of a grid or a study: a clone of ``model`` with ``params`` fitted on
    ``train`` (``valid`` for early stopping), scored by ``metric`` on ``valid``."""
    from recsys.evaluation.evaluate import evaluate

    candidate = clone(model).set_params(**params)
    started = time.perf_counter()
    candidate.fit(train, valid, ctx)
    seconds = time.perf_counter() - started
    result = evaluate(candidate, valid, [metric], batch_size=batch_size, device=device)
    # Rating metrics (rmse) are global over ratings, not a mean over users: no per-user vector.
    per_user = (result.per_user[metric].to_numpy(np.float64)
                if metric in result.per_user.columns and metric not in RATING_METRICS else None)
    return Scored(float(result.summary[metric]), seconds, per_user)


def candidate_context(ctx: FitContext | None, callbacks: Any = None) -> FitContext:
    """The context of one candidate's fit: quiet, the run's data metadata and features, no run
    folder; ``callbacks`` (a study's trial) or none."""
    base = ctx or FitContext()
    out = FitContext(quiet=True, data_meta=dict(base.data_meta), features=base.features)
    if callbacks is not None:
        out.callbacks = callbacks
    return out


def defaults_of(model: Recommender, keys: Iterable[str]) -> dict[str, Any]:
    """The model's current (default or --config) values of the searched keys."""
    base = model.get_params()
    return {k: base[k] for k in keys}


def check_rule(rule: str) -> str:
    """``rule`` when it is one of `RULES`; else one line with the closest."""
    if rule not in RULES:
        raise RecsysError(f"unknown selection rule '{rule}'{closest(rule, RULES)}; expected one "
                          f"of {', '.join(RULES)}")
    return rule


def select(best: int, default: int | None, per_user: Mapping[int, np.ndarray | None],
           lower: bool, rule: str = DEFAULT_RULE) -> tuple[int, dict[str, Any]]:
    """The row a search keeps: ``best`` (the top validation score), or under the one-SE rule the
    defaults' row ``default`` unless the best's per-user gain over it exceeds one standard
    error. ``per_user``: row -> that candidate's per-user validation values (rows may be
    missing: a stored study's trials of an earlier session). Returns (row, selection record)."""
    from recsys.evaluation.stats import paired_gain

    check_rule(rule)
    record: dict[str, Any] = {"rule": rule, "best_row": best, "default_row": default}
    if rule == "best" or default is None or default == best:
        return best, record
    a, b = per_user.get(best), per_user.get(default)
    if a is None or b is None:
        # Nothing to pair (a global metric, or a trial of an earlier session): the best stands.
        return best, {**record, "note": "no per-user values to compare; the best is kept"}
    gain, se, n = paired_gain(a, b)
    gain = -gain if lower else gain
    chosen = best if gain > se else default
    return chosen, {**record, "gain": gain, "se": se, "users": n, "kept_default": chosen == default}


def tune(model: Recommender, train: Interactions, valid: EvalSplit,
         grid: Mapping[str, Any] | None = None, *, metric: str = DEFAULT_METRIC,
         ctx: FitContext | None = None, batch_size: int = 2048, device: str | None = None,
         rule: str = DEFAULT_RULE, log: Callable[[str], None] | None = None) -> TuneResult:
    """Fit one clone of ``model`` per grid point on ``train``; pick one on ``valid`` by ``rule``
    (`select`; under "one-se" the model's own values of the grid's keys are a candidate too,
    first, so that ties keep them).

    ``grid``: ``{config key: [values]}``; ``None`` takes the model's default grid (an error for a
    model without one). ``ctx`` lends its data metadata to every candidate fit; candidates never
    write to a run directory or a tracker. ``log`` receives one line per candidate.
    """
    from recsys.evaluation.metrics import parse_metrics

    [metric] = parse_metrics(metric)[:1]
    if grid is None:
        grid = default_grid(model)
        if grid is None:
            raise RecsysError(f"model '{model.name}' has no default tuning grid; give one in "
                              "the --config file's 'tune:' section, e.g. tune: {lr: [0.001, 0.01]}")
    grid = check_grid(model, grid)
    check_valid_part(valid)
    candidate_ctx = candidate_context(ctx)
    check_rule(rule)  # before any fit
    rows: list[dict[str, Any]] = []
    candidates = list(ParameterGrid(grid))
    defaults = defaults_of(model, grid)
    if rule == "one-se" and defaults not in candidates:
        candidates.insert(0, defaults)
    per_user: dict[int, np.ndarray | None] = {}
    for i, params in enumerate(candidates, 1):
        scored = fit_candidate(model, params, train, valid, candidate_ctx, metric,
                               batch_size=batch_size, device=device)
        per_user[i - 1] = scored.per_user
        rows.append({**params, metric: scored.score, "fit_seconds": scored.seconds,
                     "default": params == defaults})
        if log is not None:
            shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "(no parameters)"
            log(f"[{i}/{len(candidates)}] {shown}: valid {metric} {scored.score:.4f} "
                f"({scored.seconds:.2f}s)")
    table = pd.DataFrame(rows, columns=[*grid, metric, "fit_seconds", "default"])
    lower = lower_is_better(metric)
    best = _best_position(table[metric].tolist(), lower)
    default = candidates.index(defaults) if defaults in candidates else None
    chosen, selection = select(best, default, per_user, lower, rule)
    return TuneResult(dict(candidates[chosen]), rows[chosen][metric], metric, table,
                      best_row=chosen, selection=selection)


def _json_ready(table: pd.DataFrame) -> pd.DataFrame:
    """NaN (a pruned trial's fit_seconds) as None: run.json stays strict JSON."""
    return table.astype(object).where(table.notna(), None)


def _best_position(values: list[float], lower: bool) -> int:
    """Index of the best value (first on ties: the grid's order decides); NaN never wins."""
    def key(i: int) -> float:
        v = values[i]
        if v is None or math.isnan(v):
            return math.inf
        return v if lower else -v

    return min(range(len(values)), key=key)

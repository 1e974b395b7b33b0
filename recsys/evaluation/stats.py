"""Uncertainty and significance from per-user metric tables (`EvalResult.per_user`).

- `bootstrap_ci`: percentile bootstrap 95% confidence interval of each metric's mean, resampling
  users with replacement (vectorised: a block of resamples is one fancy-index + mean).
- `paired_tests`: two models evaluated on the same users, compared per metric with the paired
  t-test and the Wilcoxon signed-rank test (scipy).
- `paired_gain`: the mean per-user difference of two aligned value vectors and its standard error
  (the tuning's one-standard-error rule, `recsys.models.tuning.select`).

rmse and mae are global over ratings, so when the table has ``n_ratings`` their resampled value
weights each drawn user by their number of ratings (sqrt of the pooled mean squared error for
rmse), which is what the summary reports.

A per-user value can be undefined (NaN: ild@K of a list under two items); such users are left out
of that metric's mean in each resample, as they are in the summary, and out of its paired tests.
Global metrics (coverage@K, gini@K) have no per-user value and so no interval here: they are not
means over users.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from recsys.errors import RecsysError

NOT_METRICS = ("user", "n_ratings", "history_pop")
_BLOCK_CELLS = 1 << 22  # resamples x users per block: bounded memory (~32 MB of indices)


def metric_columns(per_user: pd.DataFrame) -> list[str]:
    return [c for c in per_user.columns if c not in NOT_METRICS]


def _check(per_user: pd.DataFrame, metrics: list[str] | None) -> list[str]:
    names = metric_columns(per_user) if metrics is None else list(metrics)
    missing = [m for m in names if m not in per_user.columns]
    if missing:
        raise RecsysError(f"per-user table has no column {', '.join(missing)} "
                          f"(it has: {', '.join(metric_columns(per_user))})")
    return names


def bootstrap_ci(per_user: pd.DataFrame, metrics: list[str] | None = None, *,
                 n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                 ) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each metric's mean over users: ``{name: (low, high)}``."""
    names = _check(per_user, metrics)
    n = len(per_user)
    if n == 0:
        return {m: (math.nan, math.nan) for m in names}
    rng = np.random.default_rng(seed)
    weights = (per_user["n_ratings"].to_numpy(np.float64)
               if "n_ratings" in per_user.columns else None)
    values = {m: per_user[m].to_numpy(np.float64) for m in names}
    has_nan = {m: bool(np.isnan(v).any()) for m, v in values.items()}
    draws: dict[str, list[np.ndarray]] = {m: [] for m in names}
    block = max(1, _BLOCK_CELLS // n)
    # The loop is over blocks of resamples, not users: each block is one vectorised gather.
    for start in range(0, n_resamples, block):
        idx = rng.integers(0, n, size=(min(block, n_resamples - start), n))
        w = weights[idx] if weights is not None else None
        for m in names:
            v = values[m][idx]
            if w is not None and m in ("rmse", "mae"):
                total = w.sum(axis=1)
                est = ((w * v**2).sum(axis=1) / total if m == "rmse"
                       else (w * v).sum(axis=1) / total)
                draws[m].append(np.sqrt(est) if m == "rmse" else est)
            elif has_nan[m]:
                with np.errstate(invalid="ignore", divide="ignore"):  # all-NaN resample: NaN
                    draws[m].append(np.nansum(v, axis=1) / (~np.isnan(v)).sum(axis=1))
            else:
                draws[m].append(v.mean(axis=1))
    alpha = (1.0 - confidence) / 2.0
    out = {}
    for m in names:
        d = np.concatenate(draws[m])
        if has_nan[m]:
            d = d[~np.isnan(d)]
        if not len(d):
            out[m] = (math.nan, math.nan)
            continue
        out[m] = (float(np.quantile(d, alpha)), float(np.quantile(d, 1.0 - alpha)))
    return out


def paired_gain(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """Mean of ``a - b`` over the users where both are defined, its standard error, and that
    user count; ``a`` and ``b`` hold one value per user, in the same user order."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    d = d[~np.isnan(d)]
    if len(d) < 2:
        return (float(d.mean()) if len(d) else 0.0), math.inf, len(d)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))), len(d)


def paired_tests(a: pd.DataFrame, b: pd.DataFrame, metrics: list[str] | None = None
                 ) -> pd.DataFrame:
    """Per metric: means of A and B, their difference, paired t-test and Wilcoxon p-values.

    Both tables must cover the same users (column ``user``); rows are matched by user.
    """
    if "user" not in a.columns or "user" not in b.columns:
        raise RecsysError("per-user tables need a 'user' column to be paired")
    if metrics is None:
        metrics = [m for m in metric_columns(a) if m in b.columns]
    _check(a, metrics)
    _check(b, metrics)
    users_a, users_b = a["user"].to_numpy(), b["user"].to_numpy()
    if len(users_a) != len(users_b) or not np.array_equal(np.sort(users_a), np.sort(users_b)):
        common = len(np.intersect1d(users_a, users_b))
        raise RecsysError(f"the two per-user tables are not on the same users ({len(users_a)} vs "
                          f"{len(users_b)} users, {common} in common); evaluate both models on "
                          "the same split")
    a = a.sort_values("user", kind="stable")
    b = b.sort_values("user", kind="stable")
    rows = []
    for m in metrics:  # a handful of metrics, each test vectorised over users by scipy
        x, y = a[m].to_numpy(np.float64), b[m].to_numpy(np.float64)
        both = ~(np.isnan(x) | np.isnan(y))  # an undefined value (NaN) pairs with nothing
        x, y = x[both], y[both]
        d = x - y
        if len(d) < 2 or np.allclose(d, 0.0):
            t_stat, t_p, w_stat, w_p = 0.0, 1.0, 0.0, 1.0
        else:
            t = stats.ttest_rel(x, y)
            w = stats.wilcoxon(x, y, zero_method="wilcox")
            t_stat, t_p = float(t.statistic), float(t.pvalue)
            w_stat, w_p = float(w.statistic), float(w.pvalue)
        rows.append({"metric": m, "n": len(d), "mean_a": float(x.mean()),
                     "mean_b": float(y.mean()), "diff": float(d.mean()),
                     "t_stat": t_stat, "t_pvalue": t_p,
                     "wilcoxon_stat": w_stat, "wilcoxon_pvalue": w_p})
    return pd.DataFrame(rows).set_index("metric")

"""Bootstrap intervals and paired significance tests on per-user tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from recsys.errors import RecsysError
from recsys.evaluation.stats import bootstrap_ci, paired_tests


def _table(values: dict[str, np.ndarray], users: np.ndarray | None = None) -> pd.DataFrame:
    n = len(next(iter(values.values())))
    return pd.DataFrame({"user": np.arange(n) if users is None else users, **values})


def test_bootstrap_interval_covers_the_mean_and_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    x = rng.random(2000)
    ci = bootstrap_ci(_table({"ndcg@10": x}), n_resamples=2000, seed=1)["ndcg@10"]
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert ci[0] < x.mean() < ci[1]
    # For a mean of 2000 draws the percentile interval is close to mean +- 1.96 se.
    assert ci[0] == pytest.approx(x.mean() - 1.96 * se, abs=0.25 * se)
    assert ci[1] == pytest.approx(x.mean() + 1.96 * se, abs=0.25 * se)


def test_bootstrap_is_seeded_and_blocks_do_not_change_the_result(monkeypatch):
    x = np.random.default_rng(2).random(300)
    a = bootstrap_ci(_table({"m": x}), n_resamples=500, seed=3)
    monkeypatch.setattr("recsys.evaluation.stats._BLOCK_CELLS", 300 * 7)  # blocks of 7
    b = bootstrap_ci(_table({"m": x}), n_resamples=500, seed=3)
    assert a["m"] == pytest.approx(b["m"])  # same draws in the same order
    c = bootstrap_ci(_table({"m": x}), n_resamples=500, seed=4)
    assert a["m"] != c["m"]


def test_bootstrap_of_rmse_weights_users_by_their_ratings():
    # One user with 99 ratings and rmse 1, one with 1 rating and rmse 10: every resample's
    # pooled rmse lies between 1 and 10, and the point estimate is far below the plain mean 5.5.
    table = pd.DataFrame({"user": [0, 1], "rmse": [1.0, 10.0], "n_ratings": [99, 1]})
    lo, hi = bootstrap_ci(table, ["rmse"], n_resamples=400)["rmse"]
    pooled = math.sqrt((99 * 1 + 1 * 100) / 100)
    assert 1.0 <= lo <= pooled <= hi <= 10.0


def test_paired_tests_agree_with_scipy_and_find_a_real_difference():
    rng = np.random.default_rng(5)
    a = rng.random(400)
    b = a - 0.05 + 0.02 * rng.standard_normal(400)
    users = rng.permutation(400)
    ta = _table({"ndcg@10": a}, users)
    # The same users in another order: rows are paired by user, not by position.
    order = rng.permutation(400)
    tb = _table({"ndcg@10": b[order]}, users[order])
    res = paired_tests(ta, tb).loc["ndcg@10"]
    assert res["diff"] == pytest.approx((a - b).mean())
    assert res["t_pvalue"] == pytest.approx(stats.ttest_rel(a[np.argsort(users)],
                                                            b[np.argsort(users)]).pvalue)
    assert res["wilcoxon_pvalue"] < 1e-6 and res["t_pvalue"] < 1e-6


def test_identical_tables_are_not_significant():
    t = _table({"recall@20": np.random.default_rng(0).random(50)})
    res = paired_tests(t, t.copy()).loc["recall@20"]
    assert res["t_pvalue"] == 1.0 and res["wilcoxon_pvalue"] == 1.0


def test_paired_tests_need_the_same_users():
    a = _table({"m": np.ones(5)})
    b = _table({"m": np.ones(5)}, np.arange(1, 6))
    with pytest.raises(RecsysError, match="not on the same users"):
        paired_tests(a, b)

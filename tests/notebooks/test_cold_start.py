"""The cold-start notebook (notebooks/cold_start.ipynb) executed on ml-100k through the mirror:
new users scored from their features by cvae beside the popularity list."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.notebooks.test_notebooks import notebook_env, run_notebook  # noqa: F401 (a fixture)


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.usefixtures("notebook_env")
def test_cold_start(tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_MIRROR", str(mirror))  # ml-100k: u.user holds the features
    r = run_notebook("cold_start.ipynb", tmp_path, {"EPOCHS": 30})
    # Every test user arrives with features and no history: all flagged cold by both models.
    assert 80 <= r["test_users"] <= 100 and all(r["cold"].values())
    pop, cvae = r["metrics"]["popularity"], r["metrics"]["cvae"]
    for metrics in (pop, cvae):
        assert all(0.0 < v < 1.0 for v in metrics.values())
    # One popularity list for everyone; cvae's lists follow the features (users who answered
    # alike share one), and on the held-out items they are not far from popularity.
    assert r["distinct_lists"]["popularity"] == 1
    assert r["distinct_lists"]["cvae"] > r["test_users"] // 2
    assert cvae["ndcg@100"] > 0.8 * pop["ndcg@100"]  # measured: level with it (+-5%)
    student, retired = r["examples"]["cvae: 22, M, student"], r["examples"]["cvae: 63, F, retired"]
    assert len(student) == len(retired) == 5 and student != retired

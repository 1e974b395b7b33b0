"""benchmarks/bench_cold.py's scoring and pooling (no training): the per-user metrics of written
lists, and the targets' margins over pooled (split, user) pairs with their paired SE and
bootstrap interval."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_cold  # noqa: E402


def test_per_user_scores_each_target_user_and_zero_without_a_list():
    target = pd.DataFrame({"user": [7, 7, 3], "item": [10, 11, 12]})
    # user 7: hits at ranks 1 and 3 of two relevant; user 3: no list at all
    lists = pd.DataFrame({"user": [7, 7, 7, 9], "item": [10, 99, 11, 12], "rank": [1, 2, 3, 1]})
    table = bench_cold.per_user(lists, target)
    assert table["user"].tolist() == [3, 7]
    ideal = 1 + 1 / math.log2(3)
    assert table["ndcg@100"].tolist() == pytest.approx([0.0, (1 + 1 / math.log2(4)) / ideal])
    assert table["recall@20"].tolist() == pytest.approx([0.0, 1.0])


def _tables(pop: np.ndarray, cvae: np.ndarray, multvae: np.ndarray, warm: np.ndarray
            ) -> dict[str, pd.DataFrame]:
    users = np.arange(len(pop))
    by_row = {"popularity, no history": pop, "cvae, no history (features)": cvae,
              "popularity, 80% history": pop, "Mult-VAE, 80% history": multvae,
              "cvae, 80% history, no features": warm, "cvae, 80% history + features": warm}
    return {label: pd.DataFrame({"user": users, "ndcg@100": v}) for label, v in by_row.items()}


def test_the_targets_are_per_pair_margins_with_their_paired_se_and_interval():
    rng = np.random.default_rng(0)
    pop = rng.uniform(0.1, 0.3, 400)
    multvae = rng.uniform(0.3, 0.5, 400)
    noise = rng.normal(0, 0.05, 400)
    out = bench_cold.summary(_tables(pop, 1.2 * pop, multvae, multvae - 0.01 + noise))
    t = out["targets"]
    assert t["cold_gain"] == pytest.approx(0.2)
    cold = t["cold_margin"]  # cvae - 1.1 pop = 0.1 pop per pair: no spread beyond pop's own
    assert cold["mean"] == pytest.approx(0.1 * pop.mean())
    assert cold["se"] == pytest.approx(0.1 * pop.std(ddof=1) / math.sqrt(400))
    assert cold["ci95"][0] > 0 and cold["pairs"] == 400
    warm = t["warm_gap"]
    assert warm["mean"] == pytest.approx(-0.01 + noise.mean())
    assert warm["se"] == pytest.approx(noise.std(ddof=1) / math.sqrt(400))
    low, high = warm["ci95"]
    assert low < warm["mean"] < high and high - low == pytest.approx(4 * warm["se"], rel=0.2)
    assert {r["row"]: r["users"] for r in out["rows"]}["Mult-VAE, 80% history"] == 400


def test_the_verdict_says_when_the_interval_does_not_settle_it():
    assert bench_cold.verdict(0.01, 0.002, 0.02) == "met"
    assert bench_cold.verdict(-0.01, -0.02, -0.001) == "NOT met"
    assert bench_cold.verdict(0.01, -0.01, 0.03) == "met, the 95% interval spans 0"
    assert bench_cold.verdict(-0.01, -0.03, 0.01) == "NOT met, the 95% interval spans 0"

"""Beyond-accuracy metrics: novelty, intra-list diversity, Gini of exposure, popularity bias.

Hand-computed cases on a 3-item catalogue, the batched pass against a slow reference written
here with plain loops, and the real `recsys evaluate` process.
"""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from reliability.helpers import assert_one_line_error, run_process, write_ratings

from recsys.cli import main
from recsys.data.interactions import Dataset, EvalSplit
from recsys.errors import RecsysError
from recsys.evaluation.evaluate import evaluate
from recsys.evaluation.metrics import (
    CooccurrenceVectors,
    DenseItemVectors,
    gini_index,
    intra_list_diversity,
    list_mean,
    parse_metrics,
    self_information,
)
from recsys.evaluation.stats import bootstrap_ci, paired_tests
from recsys.rundir import load_run

from .doubles import FixedScores

# 4 users x 3 items. Item 0: users 0, 1, 2; item 1: users 0, 3; item 2: user 2.
# Co-occurrence cosines: cos(0,1) = 1/sqrt(3*2), cos(0,2) = 1/sqrt(3*1), cos(1,2) = 0.
HISTORY = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 0, 1], [0, 1, 0]], np.float32))
COS01, COS02 = 1 / math.sqrt(6), 1 / math.sqrt(3)
# Self-information with p_i = (c_i + 1) / (U + 1) = 4/5, 3/5, 2/5.
INFO = [-math.log2(4 / 5), -math.log2(3 / 5), -math.log2(2 / 5)]


def cooccurrence(history: sp.csr_matrix) -> CooccurrenceVectors:
    by_item = history.T.tocsr()
    return CooccurrenceVectors(torch.from_numpy(by_item.indptr.astype(np.int64)),
                               torch.from_numpy(by_item.indices.astype(np.int64)),
                               history.shape[0])


def test_novelty_by_hand():
    info = self_information(torch.tensor([3.0, 2.0, 1.0]), n_users=4)
    assert info.tolist() == pytest.approx(INFO)
    assert self_information(torch.tensor([0.0, 4.0]), 4).tolist() == pytest.approx(
        [math.log2(5), 0.0])  # never seen: finite; seen by everyone: no information
    items = torch.tensor([[0, 1, 2], [2, 0, 1]])
    valid = torch.tensor([[True, True, True], [True, False, False]])
    assert list_mean(info, items, valid).tolist() == pytest.approx([sum(INFO) / 3, INFO[2]])


def test_intra_list_diversity_by_hand():
    items = torch.tensor([[0, 1, 2], [0, 1, 2], [1, 2, 0], [2, 0, 1]])
    valid = torch.tensor([[True, True, True], [True, True, False], [True, True, False],
                          [True, False, False]])
    ild = intra_list_diversity(items, valid, cooccurrence(HISTORY))
    assert ild[:3].tolist() == pytest.approx([1 - (COS01 + COS02) / 3, 1 - COS01, 1.0])
    assert math.isnan(ild[3])  # one item: no pair
    # An item nobody interacted with is similar to nothing.
    lonely = sp.hstack([HISTORY, sp.csr_matrix((4, 1))]).tocsr()
    assert intra_list_diversity(torch.tensor([[0, 3]]), torch.tensor([[True, True]]),
                                cooccurrence(lonely)).tolist() == pytest.approx([1.0])


def test_gini_by_hand():
    assert gini_index(torch.tensor([0.0, 0.0, 3.0])) == pytest.approx(2 / 3)
    assert gini_index(torch.tensor([5.0, 5.0, 5.0])) == pytest.approx(0.0)
    # sum |x_i - x_j| over ordered pairs / (2 n^2 mean) = 8 / (2 * 9 * 2)
    assert gini_index(torch.tensor([3.0, 1.0, 2.0])) == pytest.approx(8 / 36)
    assert math.isnan(gini_index(torch.zeros(3)))


def test_evaluate_by_hand_on_three_items():
    # Users 1 and 3 hold an item out; their K=2 lists are the two items they have not seen.
    target = sp.csr_matrix(np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0]], np.float32))
    scores = np.array([[0, 0, 0], [0, 0.9, 0.1], [0, 0, 0], [0.5, 0, 0.7]])  # lists [1,2], [2,0]
    split = EvalSplit(HISTORY, target, np.array([1, 3]))
    result = evaluate(FixedScores(scores), split,
                      "novelty@2,ild@2,arp@2,popbias@2,gini@2,gini@1,coverage@2")
    table = result.per_user.set_index("user")
    assert table["novelty@2"].tolist() == pytest.approx([(INFO[1] + INFO[2]) / 2,
                                                         (INFO[2] + INFO[0]) / 2])
    assert table["ild@2"].tolist() == pytest.approx([1.0, 1 - COS02])
    # popularity c_i / U = 3/4, 2/4, 1/4; histories: user 1 {0} = 0.75, user 3 {1} = 0.5
    assert table["arp@2"].tolist() == pytest.approx([0.375, 0.5])
    assert table["history_pop"].tolist() == pytest.approx([0.75, 0.5])
    assert table["popbias@2"].tolist() == pytest.approx([0.375 / 0.75 - 1, 0.0])
    # exposure at 2: items listed 1, 1, 2 times; at 1: 0, 1, 1 times
    assert result.summary["gini@2"] == pytest.approx(1 / 6)
    assert result.summary["gini@1"] == pytest.approx(1 / 3)
    assert result.summary["coverage@2"] == 1.0
    assert "gini@2" not in result.per_user.columns  # global: no per-user value
    assert result.summary["ild@2"] == pytest.approx((2 - COS02) / 2)


def _random_case(seed: int = 3, n_users: int = 60, n_items: int = 25):
    rng = np.random.default_rng(seed)
    history = (rng.random((n_users, n_items)) < 0.25).astype(np.float32)
    history[:, 5] = 0  # an item nobody has seen
    history[7] = 1
    history[7, [3, 9]] = 0  # user 7 has two items left: ild@K over that one pair
    history[8] = 1
    history[8, 4] = 0  # user 8 has one item left: no ild
    target = ((rng.random((n_users, n_items)) < 0.1) & (history == 0)).astype(np.float32)
    target[7, 3] = target[8, 4] = 1
    history[11] = 0  # a held-out user without history is skipped
    users = np.flatnonzero(target.any(1) & history.any(1))
    scores = rng.random((n_users, n_items))
    return history, target, users, scores


def _slow_reference(history, target, users, scores, k):
    """Lists and metrics one user at a time, straight from the definitions."""
    history = history.astype(np.float64)
    n_users, n_items = history.shape
    active = history.any(1).sum()
    counts = history.sum(0)
    pop = counts / active
    info = -np.log2((counts + 1) / (active + 1))
    rows = {}
    exposure = np.zeros(n_items)
    for u in users:
        order = [i for i in np.argsort(-scores[u]) if history[u, i] == 0][:k]
        exposure[order] += 1
        sims = []
        for a in range(len(order)):
            for b in range(a + 1, len(order)):
                x, y = history[:, order[a]], history[:, order[b]]
                norm = np.sqrt(x.sum() * y.sum())
                sims.append((x * y).sum() / norm if norm else 0.0)
        arp = np.mean([pop[i] for i in order])
        hist = np.mean([pop[i] for i in np.flatnonzero(history[u])])
        rows[u] = {"novelty": np.mean([info[i] for i in order]),
                   "ild": 1 - np.mean(sims) if sims else math.nan,
                   "arp": arp, "popbias": arp / hist - 1}
    gaps = np.abs(exposure[:, None] - exposure[None, :]).sum()
    gini = gaps / (2 * n_items**2 * exposure.mean())
    return pd.DataFrame.from_dict(rows, orient="index"), gini


@pytest.mark.parametrize("chunk_cells", [1 << 23, 400, 1])  # a chunk per batch, a few lists, one
def test_batched_equals_the_slow_reference(monkeypatch, chunk_cells):
    monkeypatch.setattr(CooccurrenceVectors, "chunk_cells", chunk_cells)
    history, target, users, scores = _random_case()
    split = EvalSplit(sp.csr_matrix(history), sp.csr_matrix(target), users)
    k = 6
    names = f"ndcg@{k},novelty@{k},ild@{k},arp@{k},popbias@{k},gini@{k}"
    result = evaluate(FixedScores(scores), split, names, batch_size=7)
    expected, gini = _slow_reference(history, target, users, scores, k)
    table = result.per_user.set_index("user").loc[users]
    for base in ("novelty", "ild", "arp", "popbias"):
        np.testing.assert_allclose(table[f"{base}@{k}"], expected.loc[users, base], rtol=1e-9,
                                   atol=1e-12)
        assert result.summary[f"{base}@{k}"] == pytest.approx(expected[base].mean())  # NaN out
    assert math.isnan(table.loc[8, f"ild@{k}"])
    assert result.summary[f"gini@{k}"] == pytest.approx(gini)
    # Accuracy is untouched by the extra metrics.
    alone = evaluate(FixedScores(scores), split, f"ndcg@{k}", batch_size=60)
    np.testing.assert_array_equal(table[f"ndcg@{k}"], alone.per_user.set_index("user")
                                  .loc[users, f"ndcg@{k}"])


def test_dense_vectors_plug_in_for_cooccurrence():
    """Item vectors from anywhere (features, later) give ild@K; the co-occurrence columns as
    dense vectors give the same values as the sparse default."""
    history, target, users, scores = _random_case(seed=5)
    split = EvalSplit(sp.csr_matrix(history), sp.csr_matrix(target), users)
    sparse = evaluate(FixedScores(scores), split, "ild@8")
    dense = evaluate(FixedScores(scores), split, "ild@8",
                     item_vectors=DenseItemVectors(torch.from_numpy(history.T.copy())))
    np.testing.assert_allclose(dense.per_user["ild@8"], sparse.per_user["ild@8"], rtol=1e-12)
    genres = torch.eye(25, dtype=torch.float64)  # orthogonal features: every pair dissimilar
    one_hot = evaluate(FixedScores(scores), split, "ild@8", item_vectors=DenseItemVectors(genres))
    assert np.nanmin(one_hot.per_user["ild@8"]) == pytest.approx(1.0)


def test_intervals_and_paired_tests_leave_undefined_values_out():
    history, target, users, scores = _random_case()
    split = EvalSplit(sp.csr_matrix(history), sp.csr_matrix(target), users)
    a = evaluate(FixedScores(scores), split, "ild@6,novelty@6")
    b = evaluate(FixedScores(scores[:, ::-1].copy()), split, "ild@6,novelty@6")
    assert a.per_user["ild@6"].isna().sum() == 1
    ci = bootstrap_ci(a.per_user)
    assert set(ci) == {"ild@6", "novelty@6"}  # history_pop is context, not a metric
    for name, (lo, hi) in ci.items():
        assert lo < a.summary[name] < hi
    tests = paired_tests(a.per_user, b.per_user)
    assert tests.loc["ild@6", "n"] == len(users) - 1
    assert tests.loc["novelty@6", "n"] == len(users)
    assert np.isfinite(tests.loc["ild@6", "t_pvalue"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    history, target, users, scores = _random_case()
    split = EvalSplit(sp.csr_matrix(history), sp.csr_matrix(target), users)
    names = "novelty@6,ild@6,arp@6,popbias@6,gini@6,coverage@6"
    cpu = evaluate(FixedScores(scores), split, names, device="cpu")
    gpu = evaluate(FixedScores(scores), split, names, device="cuda")
    assert gpu.summary == pytest.approx(cpu.summary, rel=1e-9)


def test_metric_names():
    assert parse_metrics("Novelty@10, ILD@10,gini@10,popbias@10,arp@5") == [
        "novelty@10", "ild@10", "gini@10", "popbias@10", "arp@5"]
    with pytest.raises(RecsysError, match="'ild@1'.*no pairs"):
        parse_metrics("ild@1")
    with pytest.raises(RecsysError, match="needs a cut-off"):
        parse_metrics("gini")
    with pytest.raises(RecsysError, match="novelty@10'\\?"):
        parse_metrics("novelti@10")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("beyond")
    ratings = write_ratings(root / "ratings.csv")
    for argv in (["prepare", "--input", ratings, "--implicit-threshold", "4", "--seed", "0",
                  "--out", root / "data", "--quiet"],
                 ["train", "pop", "--data", root / "data", "--out", root / "run", "--no-track",
                  "--quiet"]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert main([str(a) for a in argv]) == 0
    return root


def test_cli_prints_and_writes_them(trained):
    names = "ndcg@10,novelty@10,ild@10,gini@10,popbias@10"
    result = run_process(["evaluate", trained / "run", "--data", trained / "data", "--metrics",
                          names, "--json", trained / "m.json", "--per-user",
                          trained / "pu.csv", "--device", "cpu"], timeout=120)
    assert result.code == 0, result.err
    lines = {line.split()[0]: line.split()[1:] for line in result.out.splitlines()[3:]}
    assert list(lines) == names.split(",")
    assert len(lines["novelty@10"]) == 3 and len(lines["gini@10"]) == 1  # value + CI; value
    metrics = json.loads((trained / "m.json").read_text())
    assert set(metrics) == set(names.split(","))
    data = Dataset.load(trained / "data")
    expected = evaluate(load_run(trained / "run")[0], data.eval_split("test"), names)
    assert metrics == pytest.approx(expected.summary)
    assert 0 < metrics["ild@10"] < 1 and 0 < metrics["gini@10"] < 1
    assert metrics["popbias@10"] > 0  # most-popular lists: more popular than the mean history
    per_user = pd.read_csv(trained / "pu.csv")
    assert {"novelty@10", "ild@10", "popbias@10", "history_pop"} <= set(per_user.columns)
    assert "gini@10" not in per_user.columns
    assert per_user["novelty@10"].mean() == pytest.approx(metrics["novelty@10"])


def test_cli_refuses_ild_at_one(trained):
    result = run_process(["evaluate", trained / "run", "--data", trained / "data", "--metrics",
                          "ild@1"], timeout=120)
    assert_one_line_error(result, "ild@1")


def test_direction_of_each_metric_has_one_home():
    from recsys.evaluation.metrics import lower_is_better
    from recsys.models import tuning
    from recsys.training import trainer

    # compare's "best", --tune and early stopping all read the same rule.
    assert trainer.lower_is_better is lower_is_better is tuning.lower_is_better
    for name in ("rmse", "mae", "loss", "gini@10", "arp@10", "popbias@20"):
        assert lower_is_better(name), name
    for name in ("ndcg@100", "recall@20", "novelty@10", "ild@10", "coverage@10"):
        assert not lower_is_better(name), name

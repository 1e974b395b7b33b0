"""Metric definitions: hand-computed cases and agreement with independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.data.interactions import EvalSplit
from recsys.errors import RecsysError
from recsys.evaluation.evaluate import evaluate
from recsys.evaluation.metrics import parse_metrics, ranking_metrics

from .doubles import FixedScores, random_split

# -- names ------------------------------------------------------------------------------------


def test_parse_metrics_normalises_keeps_order_and_drops_duplicates():
    assert parse_metrics(" NDCG@100, recall@20,rmse,ndcg@100 ") == ["ndcg@100", "recall@20", "rmse"]
    assert parse_metrics(["map@5", "plain-recall@3,hit@1"]) == ["map@5", "plain_recall@3", "hit@1"]


@pytest.mark.parametrize("bad, hint", [
    ("ndgc@10", "did you mean 'ndcg@10'"),
    ("recall", "needs a cut-off"),
    ("rmse@5", "takes no @K"),
    ("ndcg@0", "at least 1"),
    ("ndcg@x", "does not parse"),
    ("", "no metric"),
])
def test_bad_metric_names_are_one_clear_error(bad, hint):
    with pytest.raises(RecsysError, match=hint) as err:
        parse_metrics(bad)
    assert "\n" not in str(err.value)


# -- hand-computed --------------------------------------------------------------------------------


def _one_user(hits: list[int], n_relevant: int, names: list[str]) -> dict[str, float]:
    values = ranking_metrics(torch.tensor([hits]), torch.tensor([n_relevant]), names)
    return {k: float(v[0]) for k, v in values.items()}


def test_hand_computed_single_list():
    # Ranked list a b c d e; relevant {b, d, x}: hits at ranks 2 and 4, |rel| = 3.
    got = _one_user([0, 1, 0, 1, 0], 3, parse_metrics(
        "recall@5,recall@2,plain_recall@2,precision@5,precision@2,hit@1,hit@2,mrr@5,mrr@1,"
        "ndcg@5,ndcg@2,map@5,map@2"))
    d = [1 / math.log2(r + 1) for r in range(1, 6)]
    expected = {
        "recall@5": 2 / 3, "recall@2": 1 / 2, "plain_recall@2": 1 / 3,
        "precision@5": 2 / 5, "precision@2": 1 / 2, "hit@1": 0.0, "hit@2": 1.0,
        "mrr@5": 1 / 2, "mrr@1": 0.0,
        "ndcg@5": (d[1] + d[3]) / (d[0] + d[1] + d[2]), "ndcg@2": d[1] / (d[0] + d[1]),
        "map@5": (1 / 2 + 2 / 4) / 3, "map@2": (1 / 2) / 2,
    }
    assert got == pytest.approx(expected, abs=1e-12)


def test_recall_normalisation_caps_at_k_but_plain_recall_does_not():
    # 10 relevant items, all of the top 5 hit: recall@5 is perfect, plain recall is 0.5.
    got = _one_user([1, 1, 1, 1, 1], 10, ["recall@5", "plain_recall@5", "ndcg@5", "map@5"])
    assert got == pytest.approx({"recall@5": 1.0, "plain_recall@5": 0.5, "ndcg@5": 1.0,
                                 "map@5": 1.0})


def test_evaluate_masks_history_and_counts_skipped_users():
    # 2 users x 5 items. User 0 has seen item 0 (its best score); user 1 has no history.
    scores = np.array([[9, 1, 5, 3, 2], [9, 8, 7, 6, 5]], dtype=np.float32)
    history = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=np.float32))
    target = sp.csr_matrix(np.array([[0, 0, 0, 1, 0], [1, 0, 0, 0, 0]], dtype=np.float32))
    split = EvalSplit(history, target, np.array([0]), skipped_users=1)
    result = evaluate(FixedScores(scores), split, "hit@1,mrr@5,ndcg@3,coverage@2")
    # Unseen ranking for user 0: item 2 (5), item 3 (3), item 4 (2), item 1 (1).
    assert result.summary["hit@1"] == 0.0
    assert result.summary["mrr@5"] == pytest.approx(1 / 2)
    assert result.summary["ndcg@3"] == pytest.approx(1 / math.log2(3))
    assert result.summary["coverage@2"] == pytest.approx(2 / 5)  # items 2 and 3
    assert result.n_users == 1 and result.skipped_users == 1
    assert result.per_user["user"].tolist() == [0]


def test_short_lists_when_everything_is_seen_do_not_count_masked_items():
    # User 0 has seen 3 of 4 items; asking for top 4 leaves one real item and -inf tails.
    scores = np.array([[4, 3, 2, 1]], dtype=np.float32)
    history = sp.csr_matrix(np.array([[1, 1, 0, 1]], dtype=np.float32))
    target = sp.csr_matrix(np.array([[0, 0, 1, 0]], dtype=np.float32))
    result = evaluate(FixedScores(scores), EvalSplit(history, target, np.array([0])),
                      "hit@1,precision@4,coverage@4")
    assert result.summary == pytest.approx({"hit@1": 1.0, "precision@4": 0.25,
                                            "coverage@4": 0.25})


def test_nan_scores_rank_last_not_first():
    scores = np.array([[np.nan, 1.0, 2.0]], dtype=np.float32)
    target = sp.csr_matrix(np.array([[1, 0, 0]], dtype=np.float32))
    history = sp.csr_matrix((1, 3), dtype=np.float32)
    result = evaluate(FixedScores(scores), EvalSplit(history, target, np.array([0])), "hit@2")
    assert result.summary["hit@2"] == 0.0


# -- independent implementations on random data ---------------------------------------------


def _naive(scores: np.ndarray, split: EvalSplit, k: int) -> dict[str, np.ndarray]:
    """A per-user numpy reference, written from the definitions (loops are fine in a test)."""
    out: dict[str, list[float]] = {m: [] for m in
                                   ("recall", "plain_recall", "precision", "hit", "mrr", "map",
                                    "ndcg")}
    hist, target = split.history.toarray() > 0, split.target.toarray() > 0
    for u in split.users:
        s = np.where(hist[u], -np.inf, scores[u])
        ranked = np.argsort(-s, kind="stable")[:k]
        rel = set(np.flatnonzero(target[u]))
        hits = [int(i) in rel for i in ranked]
        n_hit = sum(hits)
        cap = min(k, len(rel))
        out["recall"].append(n_hit / cap)
        out["plain_recall"].append(n_hit / len(rel))
        out["precision"].append(n_hit / k)
        out["hit"].append(float(n_hit > 0))
        out["mrr"].append(next((1 / (r + 1) for r, h in enumerate(hits) if h), 0.0))
        ap, seen_hits = 0.0, 0
        for r, h in enumerate(hits):
            if h:
                seen_hits += 1
                ap += seen_hits / (r + 1)
        out["map"].append(ap / cap)
        dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h)
        idcg = sum(1 / math.log2(r + 2) for r in range(cap))
        out["ndcg"].append(dcg / idcg)
    return {m: np.array(v) for m, v in out.items()}


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_naive_reference_and_is_batch_size_invariant(seed):
    split = random_split(120, 60, seed=seed)
    scores = np.random.default_rng(seed + 10).random((120, 60)).astype(np.float32)
    names = [f"{m}@{k}" for m in ("recall", "plain_recall", "precision", "hit", "mrr", "map",
                                  "ndcg") for k in (1, 5, 20)]
    full = evaluate(FixedScores(scores), split, names, batch_size=1000)
    for batch_size in (1, 7, 64):
        other = evaluate(FixedScores(scores), split, names, batch_size=batch_size)
        np.testing.assert_allclose(other.per_user[names].to_numpy(),
                                   full.per_user[names].to_numpy(), rtol=0, atol=1e-12)
    for k in (1, 5, 20):
        reference = _naive(scores, split, k)
        for metric, values in reference.items():
            np.testing.assert_allclose(full.per_user[f"{metric}@{k}"].to_numpy(), values,
                                       atol=1e-12, err_msg=f"{metric}@{k}")
    assert full.skipped_users == split.skipped_users > 0


def test_ndcg_agrees_with_scikit_learn():
    from sklearn.metrics import ndcg_score

    split = random_split(80, 50, seed=3)
    scores = np.random.default_rng(4).random((80, 50)).astype(np.float32)
    users = split.users
    hist = split.history.toarray()[users] > 0
    # scikit-learn ranks every item: push seen items to the bottom with no gain, which is what
    # masking does as long as K stays below the number of unseen items.
    y_score = np.where(hist, -1e6, scores[users])
    y_true = split.target.toarray()[users]
    for k in (3, 10, 25):
        ours = evaluate(FixedScores(scores), split, f"ndcg@{k}").summary[f"ndcg@{k}"]
        assert ours == pytest.approx(ndcg_score(y_true, y_score, k=k), abs=1e-6)


def test_agrees_with_implicit_ranking_metrics_at_k():
    pytest.importorskip("implicit")
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.evaluation import ranking_metrics_at_k

    split = random_split(90, 40, seed=5)
    rng = np.random.default_rng(6)
    user_f = rng.standard_normal((90, 6)).astype(np.float32)
    item_f = rng.standard_normal((40, 6)).astype(np.float32)
    als = AlternatingLeastSquares(factors=6, random_state=0)
    als.user_factors, als.item_factors = user_f, item_f
    # implicit scores every user with test items; give ours the same users (all have history
    # here) so that both average over the same set.
    history = split.history.tolil()
    no_history = np.flatnonzero(np.diff(split.history.indptr) == 0)
    history[no_history, 0] = 1.0
    target = split.target.tolil()
    target[no_history, 0] = 0.0
    history, target = history.tocsr(), target.tocsr()
    target.eliminate_zeros()
    users = np.flatnonzero(np.diff(target.indptr) > 0)
    ours_split = EvalSplit(history, target, users)
    model = FixedScores(user_f @ item_f.T)
    for k in (5, 10):
        theirs = ranking_metrics_at_k(als, history, target, K=k, show_progress=False)
        ours = evaluate(model, ours_split, f"recall@{k},ndcg@{k},map@{k}")
        # implicit's "precision" is hits / min(K, |rel|), pooled over users (not averaged).
        caps = np.minimum(k, np.diff(target.indptr)[users])
        pooled = (ours.per_user[f"recall@{k}"].to_numpy() * caps).sum() / caps.sum()
        assert pooled == pytest.approx(theirs["precision"], abs=1e-9)
        assert ours.summary[f"ndcg@{k}"] == pytest.approx(theirs["ndcg"], abs=1e-6)
        assert ours.summary[f"map@{k}"] == pytest.approx(theirs["map"], abs=1e-6)


def test_rating_metrics_are_global_and_clipped():
    from .doubles import ExplicitDot

    class Known(ExplicitDot):
        def predict(self, users, items):  # predictions 6, 2, 0 -> clipped 5, 2, 1
            return np.array([6.0, 2.0, 0.0])[: len(users)]

    model = Known()
    target = sp.csr_matrix(np.array([[4.0, 0, 2.0], [0, 3.0, 0]], dtype=np.float32))
    history = sp.csr_matrix(np.array([[0, 1.0, 0], [1.0, 0, 0]], dtype=np.float32))
    result = evaluate(model, EvalSplit(history, target, np.array([0, 1])), "rmse,mae",
                      rating_scale=(1, 5))
    # pairs in CSR order: (0,0)=4 vs 5, (0,2)=2 vs 2, (1,1)=3 vs 1
    assert result.summary["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    assert result.summary["mae"] == pytest.approx((1 + 0 + 2) / 3)
    assert result.per_user["n_ratings"].tolist() == [2, 1]
    assert result.per_user["rmse"].tolist() == pytest.approx([math.sqrt(1 / 2), 2.0])


def test_rating_metrics_on_a_ranking_model_is_a_clear_error():
    split = random_split(10, 8)
    with pytest.raises(RecsysError, match="does not predict ratings"):
        evaluate(FixedScores(np.zeros((10, 8))), split, "rmse")


def test_models_that_know_how_are_moved_to_the_requested_device():
    class Movable(FixedScores):
        def to(self, device):
            self.moved_to = torch.device(device)
            return self

    split = random_split(20, 10)
    model = Movable(np.random.default_rng(0).random((20, 10)))
    evaluate(model, split, "ndcg@5", device="cpu")
    assert model.moved_to == torch.device("cpu")


@pytest.mark.gpu
def test_cuda_and_cpu_give_the_same_metrics():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    split = random_split(300, 120, seed=7)
    scores = np.random.default_rng(8).random((300, 120)).astype(np.float32)
    names = "recall@10,ndcg@50,map@20,mrr@20,coverage@10"
    cpu = evaluate(FixedScores(scores), split, names, device="cpu")
    gpu = evaluate(FixedScores(scores), split, names, device="cuda")
    assert gpu.summary == pytest.approx(cpu.summary, abs=1e-9)

"""Baselines: the shared contract, each model against an independent computation, and tuning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone
from sklearn.model_selection import ParameterGrid

from recsys.data.interactions import EvalSplit, Interactions, Vocabulary
from recsys.errors import RecsysError
from recsys.evaluation.evaluate import evaluate
from recsys.models import baselines
from recsys.models.baselines import ALS, BPR, EASE, ItemKNN, Popularity, item_gram_blocks
from recsys.models.tuning import check_grid, default_grid, select, tune

from .contract import RecommenderContract, checkerboard, masked

# -- the contract ---------------------------------------------------------------------------------


class TestPopularity(RecommenderContract):
    model_name = "pop"
    ranks_heldout_first = False
    folds_in_unknown_users = False

    def test_ranks_items_by_training_count(self, fitted, data):
        counts = np.asarray((data.train.matrix > 0).sum(axis=0)).ravel()
        out = self.scores(fitted, data.users[:3], data.history[:3])
        assert np.array_equal(out[0].numpy(), counts.astype(np.float32))
        assert torch.equal(out[0], out[2])  # the same list for everyone


class TestItemKNN(RecommenderContract):
    model_name = "itemknn"
    params = {"k": 5, "shrink": 1.0, "device": "cpu"}


class TestEASE(RecommenderContract):
    model_name = "ease"
    params = {"lambda_": 5.0, "device": "cpu"}


class TestALS(RecommenderContract):
    model_name = "als"
    params = {"factors": 4, "regularization": 0.1, "iterations": 10, "num_threads": 1,
              "device": "cpu"}


class TestALSTrainedUserFactors(TestALS):
    params = {**TestALS.params, "recalculate_user": False}


class TestBPR(RecommenderContract):
    model_name = "bpr"
    params = {"factors": 8, "learning_rate": 0.05, "iterations": 100, "num_threads": 1,
              "device": "cpu"}
    folds_in_unknown_users = False  # no closed-form fold-in: unknown users get the item biases


# -- each model against an independent computation ------------------------------------------------


def random_interactions(n_users: int = 40, n_items: int = 25, density: float = 0.2,
                        seed: int = 0, ratings: bool = False) -> Interactions:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_users, n_items)) < density
    dense[:, 0] = True  # no empty user
    dense[:, -1] = False  # an item nobody saw
    r, c = np.nonzero(dense)
    values = rng.integers(1, 6, len(r)) if ratings else np.ones(len(r))
    return Interactions.from_frame(pd.DataFrame({"user": r, "item": c, "rating": values}),
                                   Vocabulary(np.arange(n_users)), Vocabulary(np.arange(n_items)))


def test_item_gram_blocks_assemble_x_transpose_x():
    train = random_interactions(ratings=True)
    x = (train.matrix > 0).astype(np.float64).toarray()
    gram = np.zeros((train.n_items, train.n_items))
    for start, stop, block in item_gram_blocks(train.matrix, block=7):
        gram[:, start:stop] = block
    np.testing.assert_array_equal(gram, x.T @ x)


def test_ease_matches_the_closed_form_computed_with_numpy():
    train = random_interactions(ratings=True)
    lam = 7.0
    x = (train.matrix > 0).astype(np.float64).toarray()
    p = np.linalg.inv(x.T @ x + lam * np.eye(train.n_items))
    expected = np.eye(train.n_items) - p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    model = EASE(lambda_=lam, device="cpu").fit(train)
    np.testing.assert_allclose(model.weights.numpy(), expected, rtol=1e-4, atol=1e-6)
    # Ratings are treated as implicit feedback: scores are the 0/1 history times B.
    out = model.score(np.arange(3), train.matrix[:3])
    np.testing.assert_allclose(out.numpy(), x[:3] @ expected, rtol=1e-4, atol=1e-5)


def test_itemknn_keeps_the_k_most_cosine_similar_neighbours_with_shrinkage():
    # Enough users that no two similarities tie at the k-th place (ties may break either way).
    train = random_interactions(n_users=300, density=0.3, seed=1)
    k, shrink = 4, 3.0
    x = train.matrix.toarray()
    co = x.T @ x
    norms = np.sqrt(np.diag(co))
    sim = co / (np.outer(norms, norms) + shrink)
    np.fill_diagonal(sim, 0.0)
    # Keep, for every target item j (column), its k largest similarities.
    kept = np.zeros_like(sim)
    for j in range(sim.shape[1]):
        order = np.argsort(-sim[:, j])
        # (zeros may tie: they add nothing whichever is kept)
        assert sim[order[k - 1], j] > sim[order[k], j] + 1e-6 or sim[order[k - 1], j] == 0
        kept[order[:k], j] = sim[order[:k], j]
    model = ItemKNN(k=k, shrink=shrink, device="cpu").fit(train)
    out = model.score(np.arange(train.n_users), train.matrix)
    np.testing.assert_allclose(out.numpy(), x @ kept, rtol=1e-5, atol=1e-6)


def test_itemknn_with_k_above_the_catalogue_and_no_shrink_is_plain_cosine():
    train = random_interactions(seed=2)
    x = train.matrix.toarray()
    co = x.T @ x
    norms = np.sqrt(np.diag(co))
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.nan_to_num(co / np.outer(norms, norms))  # the unseen item: 0/0 -> 0
    np.fill_diagonal(sim, 0.0)
    model = ItemKNN(k=1000, shrink=0.0, device="cpu").fit(train)
    out = model.score(np.arange(5), train.matrix[:5])
    np.testing.assert_allclose(out.numpy(), x[:5] @ sim, rtol=1e-5, atol=1e-6)


def test_itemknn_blocks_give_the_same_neighbours(monkeypatch):
    train = random_interactions(seed=3)
    whole = ItemKNN(k=5, shrink=2.0, device="cpu").fit(train)
    monkeypatch.setattr(baselines, "_BLOCK_ENTRIES", train.n_items * 3)  # blocks of 3 items
    blocked = ItemKNN(k=5, shrink=2.0, device="cpu").fit(train)
    users = np.arange(train.n_users)
    torch.testing.assert_close(blocked.score(users, train.matrix),
                               whole.score(users, train.matrix))


def test_als_fold_in_is_the_exact_weighted_least_squares_solution():
    train = random_interactions(seed=4)
    model = ALS(factors=3, regularization=0.5, alpha=4.0, iterations=5, num_threads=1,
                device="cpu").fit(train)
    y = model.item_factors.astype(np.float64)
    history = train.matrix[:4]
    out = model.score(np.full(4, -1), history).numpy()
    for row in range(4):  # Hu et al. 2008: x_u = (Y^T C_u Y + reg I)^-1 Y^T C_u p_u
        p = history[row].toarray().ravel()
        c = 1.0 + (4.0 - 1.0) * p  # implicit's confidence: alpha on observed, 1 elsewhere
        a = y.T @ (c[:, None] * y) + 0.5 * np.eye(3)
        x_u = np.linalg.solve(a, y.T @ (c * p))
        np.testing.assert_allclose(out[row], y @ x_u, rtol=1e-3, atol=1e-4)


def test_als_without_recalculation_uses_the_trained_user_factors():
    train = random_interactions(seed=5)
    model = ALS(factors=3, iterations=3, num_threads=1, recalculate_user=False,
                device="cpu").fit(train)
    users = np.array([3, 0, 7])
    out = model.score(users, train.matrix[users]).numpy()
    np.testing.assert_allclose(out, model.user_factors[users] @ model.item_factors.T, rtol=1e-5,
                               atol=1e-7)
    assert model.user_factors.dtype == np.float32 and model.item_factors.dtype == np.float32


def test_als_is_reproducible_from_its_seed():
    train = random_interactions(seed=6)
    a = ALS(factors=4, iterations=3, num_threads=1, seed=3, device="cpu").fit(train)
    b = ALS(factors=4, iterations=3, num_threads=1, seed=3, device="cpu").fit(train)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)


def test_bpr_scores_unknown_users_by_the_learned_item_bias():
    train = random_interactions(seed=7)
    model = BPR(factors=4, iterations=5, num_threads=1, device="cpu").fit(train)
    assert model.item_factors.shape == (train.n_items, 5)  # implicit appends a bias column
    out = model.score(np.array([-1, 2]), train.matrix[[0, 2]])
    np.testing.assert_allclose(out[0].numpy(), model.item_factors[:, -1], rtol=1e-6)
    np.testing.assert_allclose(out[1].numpy(), model.user_factors[2] @ model.item_factors.T,
                               rtol=1e-5)


# -- errors a user can cause ------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ItemKNN, EASE, ALS, BPR, Popularity])
def test_scoring_an_unfitted_model_is_one_clear_error(cls):
    with pytest.raises(RecsysError, match="not fitted"):
        cls().score(np.array([0]), sp.csr_matrix((1, 3)))


@pytest.mark.parametrize(("cls", "params", "key"), [
    (EASE, {"lambda_": -1.0}, "lambda_"), (ItemKNN, {"k": 0}, "k"),
    (ALS, {"factors": "many"}, "factors"), (BPR, {"learning_rate": 0}, "learning_rate")])
def test_invalid_values_name_the_key(cls, params, key):
    with pytest.raises(RecsysError, match=f"invalid value for '{key}'"):
        cls(**params)


def test_ease_lambda_typo_points_at_lambda_():
    with pytest.raises(RecsysError, match="unknown key 'lambda'.*'lambda_'"):
        EASE(**{"lambda": 100})


# -- tuning -----------------------------------------------------------------------------------


def test_sklearn_clone_and_parameter_grid_drive_the_models():
    data = checkerboard()
    model = EASE(lambda_=3.0, device="cpu").fit(data.train)
    fresh = clone(model)
    assert fresh.get_params() == model.get_params()
    with pytest.raises(RecsysError, match="not fitted"):  # clone copies params, not the fit
        fresh.score(data.users[:1], data.history[:1])
    seen = [clone(model).set_params(**p).get_params() for p in ParameterGrid(
        {"lambda_": [1.0, 2.0], "device": ["cpu"]})]
    assert [s["lambda_"] for s in seen] == [1.0, 2.0]


def noisy_checkerboard(seed: int = 0) -> tuple[Interactions, EvalSplit]:
    """A checkerboard with some cross-block noise so that candidates differ on validation."""
    rng = np.random.default_rng(seed)
    base = checkerboard(users_per_block=30, items_per_block=12)
    seen = base.train.matrix.toarray() > 0
    seen |= rng.random(seen.shape) < 0.08
    seen[np.arange(len(base.heldout)), base.heldout] = False
    train = base.train.with_matrix(sp.csr_matrix(seen.astype(np.float32)))
    valid = EvalSplit(train.matrix, base.valid.target, base.valid.users)
    return train, valid


def test_tune_scores_each_candidate_on_the_validation_part_and_picks_the_best():
    train, valid = noisy_checkerboard()
    grid = {"lambda_": [0.5, 30.0, 3000.0]}
    result = tune(EASE(device="cpu"), train, valid, grid, metric="NDCG@5", rule="best")
    assert result.metric == "ndcg@5"
    assert list(result.table["lambda_"]) == grid["lambda_"]
    for lam, value in zip(result.table["lambda_"], result.table["ndcg@5"], strict=True):
        refit = EASE(lambda_=lam, device="cpu").fit(train)
        assert value == pytest.approx(evaluate(refit, valid, ["ndcg@5"]).summary["ndcg@5"])
    best = int(np.argmax(result.table["ndcg@5"].to_numpy()))
    assert result.best_params == {"lambda_": grid["lambda_"][best]}
    assert result.best_score == pytest.approx(result.table["ndcg@5"].max())
    record = result.to_record()
    assert record["params"] == result.best_params and len(record["candidates"]) == 3
    assert "*" in result.format()


def test_the_one_se_rule_adds_the_defaults_first_and_replaces_them_when_clearly_beaten():
    train, valid = noisy_checkerboard()
    # One neighbour (the defaults here) loses clearly to 5 or 50 on this data: replaced.
    far = tune(ItemKNN(k=1, device="cpu"), train, valid, {"k": [5, 50]}, metric="ndcg@1")
    assert list(far.table["k"]) == [1, 5, 50]
    assert list(far.table["default"]) == [True, False, False]
    assert far.selection["gain"] > far.selection["se"] > 0
    assert not far.selection["kept_default"] and far.best_params == {"k": 5}
    assert far.to_record()["selection"]["users"] == len(valid.users)
    # Defaults inside the grid are not added twice.
    inside = tune(ItemKNN(k=5, device="cpu"), train, valid, {"k": [5, 50]}, metric="ndcg@1")
    assert list(inside.table["k"]) == [5, 50] and inside.selection["default_row"] == 0
    with pytest.raises(RecsysError, match="unknown selection rule 'one_se'.*'one-se'"):
        tune(EASE(device="cpu"), train, valid, {"lambda_": [1.0]}, rule="one_se")


def test_the_one_se_rule_keeps_the_defaults_within_one_standard_error():
    rng = np.random.default_rng(0)
    default = rng.random(400)
    noisy_best = default + rng.normal(0.002, 0.05, 400)  # gain ~0.002, se ~0.0025
    clear_best = default + 0.02 + rng.normal(0, 0.05, 400)
    values = {0: default, 1: noisy_best, 2: clear_best}
    assert select(1, 0, values, lower=False) == (0, pytest.approx(
        {"rule": "one-se", "best_row": 1, "default_row": 0, "gain": float(np.mean(
            noisy_best - default)), "se": float(np.std(noisy_best - default, ddof=1) / 20),
         "users": 400, "kept_default": True}))
    assert select(2, 0, values, lower=False)[0] == 2
    assert select(1, 0, values, lower=False, rule="best")[0] == 1
    # Lower is better (a loss): a best that is lower by more than one standard error wins.
    assert select(2, 1, {1: clear_best, 2: default}, lower=True)[0] == 2
    # Nothing to pair: the best stands, and says so.
    row, record = select(1, 0, {0: default, 1: None}, lower=False)
    assert row == 1 and "no per-user values" in record["note"]


def test_tune_runs_the_default_grid_and_rating_metrics_pick_the_minimum():
    train, valid = noisy_checkerboard(1)
    result = tune(ItemKNN(device="cpu"), train, valid, metric="recall@10")
    assert len(result.table) == len(ParameterGrid(default_grid("itemknn")))
    assert set(result.best_params) == {"k", "shrink"}
    from recsys.models.tuning import _best_position

    assert _best_position([0.9, 0.7, float("nan"), 0.8], lower=True) == 1
    assert _best_position([0.9, 0.7, float("nan"), 0.9], lower=False) == 0


def test_popularity_has_one_candidate_and_a_grid_needs_known_keys():
    train, valid = noisy_checkerboard(2)
    assert tune(Popularity(), train, valid).best_params == {}
    with pytest.raises(RecsysError, match="unknown key 'lamda'.*'lambda_'"):
        check_grid(EASE(), {"lamda": [1.0]})
    with pytest.raises(RecsysError, match="invalid value for 'k'"):
        check_grid(ItemKNN(), {"k": [5, -1]})
    with pytest.raises(RecsysError, match="no values"):
        check_grid(ItemKNN(), {"k": []})
    assert check_grid(ItemKNN(), {"k": 7}) == {"k": [7]}


def test_a_model_without_a_default_grid_asks_for_one():
    class Custom(EASE):
        name = "custom"

    train, valid = noisy_checkerboard(3)
    with pytest.raises(RecsysError, match="no default tuning grid.*tune:"):
        tune(Custom(), train, valid)
    chosen = tune(Custom(device="cpu"), train, valid, {"lambda_": [1.0]}, rule="best")
    assert chosen.best_params == {"lambda_": 1.0}


def test_baselines_move_to_a_device_and_score_there():
    data = checkerboard()
    for model in (EASE(lambda_=2.0), ItemKNN(k=3), Popularity(), ALS(factors=2, iterations=2)):
        model.fit(data.train).to("cpu")
        out = model.score(data.users[:2], data.history[:2])
        assert out.device.type == "cpu" and out.shape == (2, data.train.n_items)
        assert torch.isfinite(masked(out, data.history[:2])[[0, 1], data.heldout[:2]]).all()

"""RP3beta, SLIM and SANSA: the shared contract, each against a result known independently, and
each through the CLI (default config, --tune, recommend, compare)."""

from __future__ import annotations

import importlib.util
import logging
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from commands.test_train import blocks_dataset
from reliability.helpers import assert_one_line_error, cli
from sklearn.linear_model import ElasticNet
from sklearn.model_selection import ParameterGrid

from recsys.data.interactions import Dataset, Interactions, Vocabulary
from recsys.errors import RecsysError
from recsys.models import baselines, slim
from recsys.models.base import FitContext, Recommender
from recsys.models.baselines import EASE
from recsys.models.rp3beta import RP3beta
from recsys.models.sansa import SANSA, _import_sansa
from recsys.models.slim import SLIM
from recsys.models.tuning import default_grid
from recsys.rundir import load_run, read_run

from .contract import RecommenderContract
from .test_baselines import random_interactions

# The sansa package is an optional extra (its scikit-sparse compiles against SuiteSparse);
# .ci/run installs it, so CI runs these tests.
HAS_SANSA = importlib.util.find_spec("sansa") is not None
needs_sansa = pytest.mark.skipif(not HAS_SANSA, reason="the sansa extra is not installed "
                                 "(pip install 'recsys-ae[sansa]'; needs libsuitesparse-dev)")

# -- the contract ---------------------------------------------------------------------------------


class TestRP3beta(RecommenderContract):
    model_name = "rp3beta"
    params = {"k": 7, "beta": 0.6}  # k: every item of a block is kept (7 others)


class TestRP3betaEveryWeightUnnormalised(RecommenderContract):
    model_name = "rp3beta"
    params = {"k": None, "normalize": False, "alpha": 0.5, "beta": 0.0}


class TestSLIM(RecommenderContract):
    model_name = "slim"
    params = {"alpha": 0.05, "k": 5, "num_threads": 1}


@needs_sansa
class TestSANSA(RecommenderContract):
    model_name = "sansa"
    params = {"l2": 5.0, "weights_per_item": 6.0}


@needs_sansa
class TestSANSAIncompleteCholesky(RecommenderContract):
    model_name = "sansa"
    params = {"l2": 5.0, "weights_per_item": 6.0, "factorizer": "icf"}


def interactions(rows: list[list[int]], n_items: int) -> Interactions:
    pairs = [(u, i) for u, items in enumerate(rows) for i in items]
    frame = pd.DataFrame(pairs, columns=["user", "item"])
    return Interactions.from_frame(frame, Vocabulary(np.arange(len(rows))),
                                   Vocabulary(np.arange(n_items)))


def dense_weights(model: Recommender) -> np.ndarray:
    """The item-item matrix a one-matrix model scores with (row: history item)."""
    [w] = model.weights
    return w.toarray().astype(np.float64)


# -- RP3beta --------------------------------------------------------------------------------------


def test_rp3beta_with_alpha_1_and_beta_0_is_the_two_step_walk_computed_by_hand():
    # u0: {0, 1}, u1: {1, 2}, u2: {0, 1, 2}. Item degrees 2, 3, 2; user degrees 2, 2, 3.
    # W[i, j] = sum_u X_ui / deg(i) * X_uj / deg(u), e.g. W[0, 1] = 1/2 * (1/2 + 1/3) = 5/12.
    train = interactions([[0, 1], [1, 2], [0, 1, 2]], 3)
    walk = np.array([[0, 5 / 12, 1 / 6],
                     [5 / 18, 0, 5 / 18],
                     [1 / 6, 5 / 12, 0]], dtype=np.float64)
    model = RP3beta(alpha=1.0, beta=0.0, k=None, normalize=False).fit(train)
    np.testing.assert_allclose(dense_weights(model), walk, rtol=1e-6)
    # beta = 1 divides each target column by its popularity (2, 3, 2).
    penalised = RP3beta(alpha=1.0, beta=1.0, k=None, normalize=False).fit(train)
    np.testing.assert_allclose(dense_weights(penalised), walk / [2, 3, 2], rtol=1e-6)
    # A user's scores sum the rows of the items in the history, here u0 = {0, 1} and a new user
    # who has seen item 2 only.
    out = model.score(np.array([0, -1]), interactions([[0, 1], [2]], 3).matrix)
    np.testing.assert_allclose(out.numpy(), [[5 / 18, 5 / 12, 4 / 9],
                                             [1 / 6, 5 / 12, 0]], rtol=1e-6)


def rp3beta_with_numpy(x: np.ndarray, alpha: float, beta: float, k: int) -> np.ndarray:
    """Ferrari Dacrema et al.'s recipe on dense arrays: row-normalise, power, walk, penalise,
    zero the diagonal, keep each row's k largest, row-normalise."""
    p_ui = x / x.sum(axis=1, keepdims=True)
    item_deg = x.sum(axis=0)
    p_iu = x.T / np.where(item_deg > 0, item_deg, 1)[:, None]
    pop = np.where(item_deg > 0, item_deg, 1.0) ** -beta * (item_deg > 0)
    w = (p_iu ** alpha) @ (p_ui ** alpha) * pop[None, :]
    np.fill_diagonal(w, 0.0)
    kept = np.zeros_like(w)
    for i in range(len(w)):  # a reference, not the model: one row at a time is clearest
        order = np.argsort(-w[i])
        assert w[i, order[k - 1]] > w[i, order[k]] + 1e-9 or w[i, order[k - 1]] == 0
        kept[i, order[:k]] = w[i, order[:k]]
    sums = kept.sum(axis=1, keepdims=True)
    return np.divide(kept, sums, out=np.zeros_like(kept), where=sums > 0)


def test_rp3beta_matches_the_recipe_computed_with_numpy():
    train = random_interactions(n_users=300, density=0.3, seed=11)
    x = train.matrix.toarray().astype(np.float64)
    model = RP3beta(alpha=0.6, beta=0.35, k=4, normalize=True).fit(train)
    expected = rp3beta_with_numpy(x, alpha=0.6, beta=0.35, k=4)
    np.testing.assert_allclose(dense_weights(model), expected, rtol=1e-4, atol=1e-7)
    assert model.nnz == np.count_nonzero(expected)  # only k weights an item are kept
    out = model.score(np.arange(train.n_users), train.matrix)
    np.testing.assert_allclose(out.numpy(), x @ expected, rtol=1e-4, atol=1e-6)


def test_rp3beta_blocks_give_the_same_weights(monkeypatch):
    train = random_interactions(seed=12)
    whole = RP3beta(k=6).fit(train)
    monkeypatch.setattr(baselines, "_BLOCK_ENTRIES", train.n_items * 16)  # blocks of 4 items
    blocked = RP3beta(k=6).fit(train)
    np.testing.assert_array_equal(dense_weights(blocked), dense_weights(whole))


# -- SLIM -----------------------------------------------------------------------------------------


def test_slim_recovers_groups_of_identical_items_with_the_closed_form_weight():
    """Three groups of users (5, 10, 20), each with its own three items and nothing else. Item a's
    regression puts the same weight w on its two twins and nothing elsewhere, where w minimises
    (1 - 2w)^2 p / 2 + alpha l1 2w + alpha (1 - l1) w^2 with p = group size / users:
    w = (p - alpha l1) / (2p + alpha (1 - l1))."""
    sizes, alpha, l1 = [5, 10, 20], 0.05, 0.5
    rows = [[3 * g, 3 * g + 1, 3 * g + 2] for g, size in enumerate(sizes) for _ in range(size)]
    train = interactions(rows, 9)
    model = SLIM(alpha=alpha, l1_ratio=l1, k=None, tol=1e-10, max_iter=10_000,
                 num_threads=1).fit(train)
    expected = np.zeros((9, 9))
    for g, size in enumerate(sizes):
        p = size / sum(sizes)
        block = slice(3 * g, 3 * g + 3)
        expected[block, block] = (p - alpha * l1) / (2 * p + alpha * (1 - l1))
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(dense_weights(model), expected, atol=1e-6)


def test_slim_equals_one_dense_elasticnet_per_item_with_its_own_column_zeroed():
    train = random_interactions(n_users=60, n_items=12, density=0.35, seed=13)
    x = train.matrix.toarray().astype(np.float64)
    params = {"alpha": 0.02, "l1_ratio": 0.3, "tol": 1e-10, "max_iter": 10_000}
    model = SLIM(**params, k=4, num_threads=1).fit(train)
    expected = np.zeros((12, 12))
    for j in range(12):  # the reference: scikit-learn's dense solver, one item at a time
        design = x.copy()
        design[:, j] = 0.0
        coef = ElasticNet(alpha=0.02, l1_ratio=0.3, positive=True, fit_intercept=False,
                          tol=1e-10, max_iter=10_000).fit(design, x[:, j]).coef_
        top = np.argsort(-coef)[:4]
        expected[top, j] = coef[top]
    expected[expected <= 0] = 0.0
    np.testing.assert_allclose(dense_weights(model), expected, rtol=1e-4, atol=1e-7)
    assert np.count_nonzero(dense_weights(model)[:, -1]) == 0  # the item nobody saw


def test_slim_weights_do_not_depend_on_the_thread_count(monkeypatch):
    monkeypatch.setattr(slim, "_ITEMS_PER_TASK", 3)  # several tasks for each thread
    train = random_interactions(seed=14)
    one = SLIM(alpha=0.01, num_threads=1).fit(train)
    three = SLIM(alpha=0.01, num_threads=3).fit(train)
    assert one.nnz > 0
    np.testing.assert_array_equal(dense_weights(three), dense_weights(one))


# -- SANSA ----------------------------------------------------------------------------------------


@needs_sansa
def test_sansa_keeping_every_weight_is_ease_at_the_same_lambda():
    train = random_interactions(n_users=200, n_items=30, density=0.25, seed=15)
    ease = EASE(lambda_=20.0, device="cpu").fit(train)
    model = SANSA(l2=20.0, weights_per_item=30.0, finetune_steps=20).fit(train)
    users = np.arange(train.n_users)
    expected = ease.score(users, train.matrix)
    torch.testing.assert_close(model.score(users, train.matrix), expected, rtol=0, atol=1e-3)
    # weights_per_item bounds each matrix (the package's density is that over n_items), and the
    # more weights are kept, the closer the scores come to EASE's.
    gaps = []
    for per_item in (4.0, 9.0, 30.0):  # L is triangular: from 15.5 on, nothing is dropped
        sparse = SANSA(l2=20.0, weights_per_item=per_item).fit(train)
        assert max(w.nnz for w in sparse.weights) <= per_item * 30
        gaps.append(float((sparse.score(users, train.matrix) - expected).abs().mean()))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3, gaps


@needs_sansa
def test_sansa_import_leaves_the_root_logger_as_it_was(monkeypatch):
    # The package calls logging.basicConfig(level=INFO) when imported: with no handler on the
    # root logger, that would turn on INFO output of every library in the process.
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    for name in [m for m in sys.modules if m == "sansa" or m.startswith("sansa.")]:
        monkeypatch.delitem(sys.modules, name)
    assert _import_sansa().SANSA is not None
    assert root.handlers == [] and root.level == logging.WARNING


@needs_sansa
def test_a_sansa_fit_prints_nothing_even_where_the_package_would_advise(capfd):
    # 2 weights per item of 60 is a density under 5%, where sansa logs multi-line advice.
    train = random_interactions(n_users=80, n_items=60, seed=16)
    SANSA(l2=5.0, weights_per_item=2.0).fit(train, ctx=FitContext(quiet=False))
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    with pytest.raises(RecsysError, match="invalid value for 'weights_per_item'"):
        SANSA(weights_per_item=1.0)  # below the package's floor, which it would clip to


# -- through the CLI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("graph") / "data"
    blocks_dataset().save(path)
    return path


@pytest.mark.parametrize("name", ["rp3beta", "slim", pytest.param("sansa", marks=needs_sansa)])
def test_default_and_tuned_runs_through_train_and_recommend(name, data_dir, tmp_path, capsys):
    default = tmp_path / "default"
    assert cli(["train", name, "--data", data_dir, "--out", default, "--no-track", "--quiet"],
               capsys).code == 0
    model, _ = load_run(default)
    assert model.get_params() == type(model)().get_params()  # no --config: the defaults
    metrics = read_run(default)["metrics"]
    pop = tmp_path / "pop"
    assert cli(["train", "pop", "--data", data_dir, "--out", pop, "--no-track", "--quiet"],
               capsys).code == 0
    assert metrics["ndcg@100"] > read_run(pop)["metrics"]["ndcg@100"]  # the blocks are learned

    tuned = tmp_path / "tuned"
    assert cli(["train", name, "--data", data_dir, "--out", tuned, "--tune", "--no-track",
                "--quiet"], capsys).code == 0
    record = read_run(tuned)["tuned"]
    assert record["part"] == "valid"
    assert len(record["candidates"]) == len(ParameterGrid(default_grid(name)))
    model, _ = load_run(tuned)
    assert {k: model.get_params()[k] for k in record["params"]} == record["params"]

    lists = tmp_path / "top.csv"
    assert cli(["recommend", tuned, "--data", data_dir, "--k", "5", "--out", lists, "--quiet"],
               capsys).code == 0
    top = pd.read_csv(lists)
    assert top.groupby("user").size().eq(5).all() and top["user"].nunique() == 60
    # Nothing a user has seen is listed: the shared scoring code masks it, not the model.
    dataset = Dataset.load(data_dir)
    seen = dataset.known_history()[dataset.users.index(top["user"]),
                                   dataset.items.index(top["item"])]
    assert not np.asarray(seen).any()


def test_the_three_run_side_by_side_in_compare(data_dir, tmp_path, capsys):
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(data_dir), "metrics": ["ndcg@100"], "bootstrap": 100,
        "models": [{"model": "ease", "params": {"device": "cpu"}}, {"model": "rp3beta"},
                   {"model": "slim", "tune": {"alpha": [0.05, 0.2]}},
                   *([{"model": "sansa"}] if HAS_SANSA else [])]}))
    table = tmp_path / "table.csv"
    assert cli(["compare", config, "--out", tmp_path / "runs", "--table", table, "--no-track",
                "--quiet"], capsys).code == 0
    result = pd.read_csv(table)
    assert set(result["model"]) == {"ease", "rp3beta", "slim", *(["sansa"] if HAS_SANSA else [])}
    assert read_run(tmp_path / "runs" / "slim")["tuned"]["alpha"] in (0.05, 0.2)


def test_sansa_without_its_package_is_one_line_naming_the_extra(data_dir, tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.setitem(sys.modules, "sansa", None)  # import sansa now raises ImportError
    result = cli(["train", "sansa", "--data", data_dir, "--out", tmp_path / "run", "--no-track",
                  "--quiet"], capsys)
    assert_one_line_error(result, "model 'sansa' needs the sansa package")
    assert "recsys-ae[sansa]" in result.err and "libsuitesparse-dev" in result.err

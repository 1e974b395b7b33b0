"""CF-NADE: the shared contract (I- and U-CF-NADE), the paper's weight sharing and costs checked
against hand-written forms, the orderless split, the expected-rating prediction, fallbacks,
rating levels other than 1-5 and the errors a user can cause."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.data.interactions import EvalSplit
from recsys.errors import RecsysError
from recsys.models.base import FitContext, Recommender
from recsys.models.cfnade import (
    CFNADE,
    CFNADENet,
    ordering_codes,
    orderless_cost,
    ordinal_nll,
    random_ordering,
    regular_nll,
    split_ratings,
)
from recsys.models.neural import Batch

from .contract import RecommenderContract
from .explicit_data import META, ROWS, UNUSABLE, ratings, save_rating_dataset

SMALL = {"hidden": 16, "epochs": 150, "batch_size": 64, "lr": 0.01, "device": "cpu",
         "patience": None, "checkpoint_every": 1000}

pytestmark = pytest.mark.usefixtures("one_thread")


class TestICFNADE(RecommenderContract):
    model_name = "cfnade"
    params = SMALL
    # I-CF-NADE is transductive (an item's code comes from its ratings by the training users),
    # so a user unknown to the model gets the item-mean fallback rather than a fold-in.
    folds_in_unknown_users = False


class TestUCFNADE(RecommenderContract):
    model_name = "cfnade"
    params = {**SMALL, "based": "user"}


def fitted(based: str = "item", rows=ROWS, meta=META, **overrides) -> CFNADE:
    torch.manual_seed(0)
    model = CFNADE(**{**SMALL, "epochs": 5, "based": based, **overrides})
    return model.fit(ratings(rows), None, FitContext(data_meta=meta))


# -- the paper's pieces, against hand-written forms ---------------------------------------------

def test_a_rating_adds_the_cumulative_sum_of_its_levels_weights():
    net = CFNADENet(n_columns=3, n_levels=5, hidden=4, activation="identity", n_users=3,
                    n_items=1)
    with torch.no_grad():
        net.c.normal_()
    level = torch.tensor([[2, 0, 4]])  # ratings 3, 1, 5 of the three columns
    given = torch.tensor([[True, False, True]])  # column 1 is not conditioned on
    expected = net.c + net.W[0, :3].sum(0) + net.W[2, :5].sum(0)
    torch.testing.assert_close(net.encode(level, given)[0], expected)
    # Nothing given: the code is g(c), the empty conditioning set.
    torch.testing.assert_close(net.encode(level, torch.zeros_like(given)), net.empty_code())


def test_the_output_scores_are_cumulative_over_the_levels():
    net = CFNADENet(n_columns=2, n_levels=3, hidden=4, activation="tanh", n_users=2, n_items=1)
    with torch.no_grad():
        net.b.normal_()
    h = torch.randn(1, 4)
    scores = net.decode(h)[0]  # (columns, K)
    for m in range(2):
        for k in range(3):
            expected = sum(net.b[m, t] + net.V[m, t] @ h[0] for t in range(k + 1))
            assert scores[m, k].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    # The column and pair decoders read the same units.
    torch.testing.assert_close(net.decode_columns(h, torch.tensor([1]))[0, 0], scores[1])
    torch.testing.assert_close(net.decode_pairs(h, torch.tensor([0]))[0], scores[0])


def test_ordinal_nll_is_the_papers_two_rankings():
    s = torch.tensor([0.3, -1.2, 0.8, 2.0, -0.5])
    K = len(s)
    for k in range(K):
        likelihood = 1.0
        for j in range(k, -1, -1):  # k preferred over k-1 > ... > 1
            likelihood *= math.exp(s[j]) / sum(math.exp(s[t]) for t in range(j + 1))
        for j in range(k, K):  # k preferred over k+1 > ... > K
            likelihood *= math.exp(s[j]) / sum(math.exp(s[t]) for t in range(j, K))
        got = ordinal_nll(s[None], torch.tensor([k])).item()
        assert got == pytest.approx(-math.log(likelihood), rel=1e-5)
        softmax = math.exp(s[k]) / sum(math.exp(v) for v in s)
        assert regular_nll(s[None], torch.tensor([k])).item() == pytest.approx(
            -math.log(softmax), rel=1e-5)


def test_the_ordinal_cost_favours_neighbouring_levels_of_the_truth():
    # Two score vectors put the same softmax mass on the true level 5; the one that puts the
    # rest on level 4 rather than 1 is the better ordinal fit (the regular NLL cannot tell).
    near = torch.tensor([[0.0, 0.0, 0.0, 2.0, 3.0]])
    far = torch.tensor([[2.0, 0.0, 0.0, 0.0, 3.0]])
    five = torch.tensor([4])
    assert regular_nll(near, five).item() == pytest.approx(regular_nll(far, five).item())
    assert ordinal_nll(near, five).item() < ordinal_nll(far, five).item()


def test_the_orderless_split_conditions_on_a_uniform_share_of_each_row():
    torch.manual_seed(0)
    observed = torch.zeros(4000, 12, dtype=torch.bool)
    observed[:, [1, 4, 5, 9]] = True  # D = 4 everywhere
    observed[:2000, 0] = True  # D = 5 in the first half
    given = split_ratings(observed)
    assert not (given & ~observed).any()
    d = given.sum(1)
    assert (d < observed.sum(1)).all()  # at least one rating is always predicted
    for rows, D in ((slice(2000, None), 4), (slice(None, 2000), 5)):
        share = torch.bincount(d[rows], minlength=D).double() / 2000
        assert torch.allclose(share, torch.full((D,), 1.0 / D, dtype=torch.float64),
                              atol=0.03), share
    # Which entries are given is a random ordering, not the column order.
    assert 0.3 < given[:, 9].double().mean() / given[:, 1].double().mean() < 3.0


def test_the_orderless_cost_rescales_the_predicted_part_by_d_over_d_minus_d():
    torch.manual_seed(1)
    observed = torch.tensor([[True, True, True, False], [True, False, True, True]])
    given = torch.tensor([[True, False, False, False], [False, False, False, False]])
    level = torch.tensor([[0, 2, 4, 0], [1, 0, 3, 3]])
    scores = torch.randn(2, 4, 5)
    lam = 0.3
    row, column = torch.nonzero(observed & ~given, as_tuple=True)
    parts = orderless_cost(scores[row, column], level[row, column], row, observed, given, lam)
    for r, D, d in ((0, 3, 1), (1, 3, 0)):
        total = 0.0
        for m in range(4):
            if observed[r, m] and not given[r, m]:
                s, k = scores[r, m][None], level[r, m][None]
                total += ((1 - lam) * regular_nll(s, k) + lam * ordinal_nll(s, k)).item()
        assert parts["cost"][r].item() == pytest.approx(total * D / (D - d), rel=1e-5)
    assert parts["predicted"].item() == 5


def test_training_step_conditions_only_on_the_sampled_part():
    """The hidden weights get gradient only from the conditioning ratings (each one's levels up
    to its own), the output weights only from the predicted ones."""
    model = CFNADE(**SMALL, training="orderless")
    train = ratings(ROWS)
    model.build(train.n_users, train.n_items)
    model.setup(train, FitContext(data_meta=META))
    rows = torch.as_tensor(model.training_matrix(train).toarray(), dtype=torch.float32)
    rows = rows[(rows > 0).any(1)]
    observed = rows > 0
    torch.manual_seed(3)
    given = split_ratings(observed)  # the step's first draw: the same split below
    torch.manual_seed(3)
    out = model.training_step(Batch(rows=rows, index=torch.arange(len(rows))), 0)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["nll"] > 0 and out["ordinal_nll"] > 0
    assert given.any() and (observed & ~given).any()
    net = model.network
    level = net.level_index(rows)
    reached = torch.zeros(net.W.shape[:2], dtype=torch.bool)  # (columns, K)
    for r, m in torch.nonzero(given).tolist():
        reached[m, : level[r, m] + 1] = True
    assert torch.equal(net.W.grad.abs().sum(-1) > 0, reached)
    predicted_columns = torch.zeros(net.V.shape[0], dtype=torch.bool)
    predicted_columns[torch.nonzero(observed & ~given)[:, 1]] = True
    assert torch.equal(net.b.grad.abs().sum(-1) > 0, predicted_columns)


def test_a_random_ordering_keeps_each_rows_entries_and_shuffles_them():
    torch.manual_seed(0)
    observed = torch.zeros(3000, 6, dtype=torch.bool)
    observed[:, [0, 2, 3, 5]] = True
    observed[::2, 1] = True
    row, column = random_ordering(observed)
    assert torch.equal(row, torch.sort(row).values)  # row-major
    assert torch.equal(torch.bincount(row, minlength=3000), observed.sum(1))
    for r in (0, 1, 2999):
        assert sorted(column[row == r].tolist()) == torch.nonzero(observed[r])[:, 0].tolist()
    # Each of the four columns every row has comes first in about a quarter of the odd rows.
    first = column[torch.cat([torch.tensor([0]), torch.nonzero(row.diff())[:, 0] + 1])]
    share = torch.bincount(first[1::2], minlength=6).double() / 1500
    torch.testing.assert_close(share[[0, 2, 3, 5]], torch.full((4,), 0.25,
                                                               dtype=torch.float64), atol=0.04,
                               rtol=0)


def test_ordering_codes_sum_the_entries_before_each_one_in_its_row():
    shared = torch.randn(7, 3)
    row = torch.tensor([0, 0, 0, 2, 2, 3, 3])  # row 1 has no entries
    got = ordering_codes(shared, row, n_rows=4)
    expected = torch.stack([shared[:i][row[:i] == row[i]].sum(0) for i in range(7)])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("lam", [0.0, 0.4, 1.0])
def test_the_ordering_cost_is_every_conditional_of_one_random_ordering(lam):
    """The default training step's loss, against the paper's cost written entry by entry: each
    rating in the sampled ordering predicted from the row's ratings before it (the hidden code
    through `encode` with those as the given part), the hybrid cost summed over the row,
    averaged over the rows; every rating is predicted once."""
    model = CFNADE(**{**SMALL, "ordinal_weight": lam, "activation": "tanh"})
    train = ratings(ROWS)
    model.build(train.n_users, train.n_items)
    model.setup(train, FitContext(data_meta=META))
    net = model.network
    with torch.no_grad():
        net.c.normal_()
        net.b.normal_()
    rows = torch.as_tensor(model.training_matrix(train).toarray(), dtype=torch.float32)
    observed = rows > 0
    level = net.level_index(rows)
    torch.manual_seed(5)
    row, column = random_ordering(observed)  # the step's draw: the same ordering below
    torch.manual_seed(5)
    out = model.training_step(Batch(rows=rows, index=torch.arange(len(rows))), 0)
    costs = torch.zeros(len(rows))
    for i in range(len(row)):
        r, m = row[i], column[i]
        given = torch.zeros_like(observed)
        before = column[:i][row[:i] == r]
        given[r, before] = True
        s = net.decode_pairs(net.encode(level, given)[r][None], m[None])
        k = level[r, m][None]
        costs[r] += ((1 - lam) * regular_nll(s, k) + lam * ordinal_nll(s, k))[0]
    assert out["loss"].item() == pytest.approx(costs.mean().item(), rel=1e-5)
    assert len(row) == int(observed.sum())
    out["loss"].backward()
    # Every rating is predicted once (the first of a row from the empty code): the output
    # weights of every rated column get gradient.
    assert (net.V.grad.abs().sum((1, 2)) > 0).sum() == int(observed.any(0).sum())


@pytest.mark.parametrize("training", ["ordering", "orderless"])
def test_both_trainings_learn_the_ratings(training):
    """Either training fits the training ratings better than their mean does."""
    model = fitted(training=training, epochs=60)
    table = np.asarray(ROWS)
    users, items, values = table[:, 0].astype(int), table[:, 1].astype(int), table[:, 2]
    rmse = float(np.sqrt(np.mean((model.predict(users, items) - values) ** 2)))
    assert rmse < float(np.std(values))


# -- prediction ---------------------------------------------------------------------------------

@pytest.mark.parametrize("based", ["item", "user"])
def test_prediction_is_the_expected_rating_given_all_training_ratings(based):
    model = fitted(based)
    net = model.network
    matrix = ratings(ROWS).matrix.toarray()
    rows = torch.as_tensor(matrix.T if based == "item" else matrix, dtype=torch.float32)
    with torch.no_grad():
        codes = net.encode(net.level_index(rows), rows > 0)
        probs = torch.softmax(net.decode(codes), dim=-1)  # (rows, columns, K)
    expected = (probs * torch.arange(1.0, 6.0)).sum(-1)
    users, items = np.array([0, 1, 2, 3, 0]), np.array([2, 1, 0, 2, 0])
    r, c = (items, users) if based == "item" else (users, items)
    np.testing.assert_allclose(model.predict(users, items), expected[r, c].numpy(), rtol=1e-5)


@pytest.mark.parametrize("based, cold_row, cold_column", [("item", 3, 4), ("user", 4, 3)])
def test_fallbacks_cover_untrained_output_units_and_say_so(based, cold_row, cold_column):
    model = fitted(based)
    global_mean = np.mean([r for *_, r in ROWS])
    users = np.array([4, -1, 0, 4, 0, 2])
    items = np.array([0, 1, 3, 3, -1, 2])
    pred, why = model.predict_with_fallback(users, items)
    if based == "item":  # user 4 has no ratings: its output units never trained
        assert why.tolist() == ["item_mean", "item_mean", "", "global_mean", "", ""]
        np.testing.assert_allclose(pred[[0, 1, 3]], [4.0, 8 / 3, global_mean], rtol=1e-6)
    else:  # item 3 has no ratings
        assert why.tolist() == ["", "", "user_mean", "global_mean", "user_mean", ""]
        np.testing.assert_allclose(pred[[2, 3, 4]], [4.0, global_mean, 4.0], rtol=1e-6)
    assert ((pred >= 1) & (pred <= 5)).all()
    # The model's rows without ratings (item 3 / user 4, or unknown ids) are predicted from the
    # empty conditioning set: the same value for a cold row and an unknown one.
    if based == "item":
        same = model.predict(np.array([0, 0]), np.array([3, -1]))
    else:
        same = model.predict(np.array([4, -1]), np.array([0, 0]))
    assert same[0] == pytest.approx(same[1], rel=1e-6)
    # score() agrees with predict on the cold rows and columns
    scores = model.score(np.array([0, 4]), ratings(ROWS).matrix[[0, 4]]).numpy()
    np.testing.assert_allclose(scores[0], model.predict(np.zeros(4, np.int64), np.arange(4)),
                               rtol=1e-5)
    np.testing.assert_allclose(scores[1], model.predict(np.full(4, 4), np.arange(4)), rtol=1e-5)


def test_half_star_levels_are_learned_and_survive_save_and_load(tmp_path):
    rows = [(u, i, 0.5 + ((u * 3 + i) % 10) * 0.5) for u in range(5) for i in range(4)
            if (u + i) % 3]
    model = fitted("item", rows=rows, meta={"implicit": False, "rating_scale": [0.5, 5.0]})
    assert model.network.n_levels == len({r for *_, r in rows})
    assert model.network.levels[0].item() == 0.5
    pred = model.predict(np.array([0, 1, 2]), np.array([0, 1, 3]))
    assert ((pred >= 0.5) & (pred <= 5.0)).all()
    model.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert loaded.network.n_levels == model.network.n_levels
    np.testing.assert_array_equal(loaded.predict(np.array([0, 1, 2]), np.array([0, 1, 3])), pred)


def test_validation_rmse_drives_early_stopping():
    train = ratings(ROWS)
    target = ratings([(0, 2, 4.0), (1, 1, 3.0), (3, 2, 2.0)])
    valid = EvalSplit(train.matrix, target.matrix, np.array([0, 1, 3]))
    torch.manual_seed(0)
    model = CFNADE(**{**SMALL, "epochs": 6})
    model.fit(train, valid, FitContext(data_meta=META))
    values = [r["valid_rmse"] for r in model.history_]
    best = int(np.argmin(values))
    assert model.train_result_.best_epoch == best + 1
    direct = np.sqrt(np.mean((model.predict(np.array([0, 1, 3]), np.array([2, 1, 2]))
                              - np.array([4.0, 3.0, 2.0])) ** 2))
    assert direct == pytest.approx(values[best], rel=1e-5)


def test_training_lowers_the_rating_error_below_the_global_mean():
    rng = np.random.default_rng(0)
    n_users, n_items = 60, 30
    taste = np.sign(rng.normal(size=(n_users, 1)) @ rng.normal(size=(1, n_items)))
    dense = np.where(taste > 0, 5.0, 1.0)
    observed = rng.random((n_users, n_items)) < 0.5
    held = observed & (rng.random((n_users, n_items)) < 0.2)
    r, c = np.nonzero(observed & ~held)
    train = ratings([(a, b, dense[a, b]) for a, b in zip(r, c, strict=True)], n_users, n_items)
    torch.manual_seed(0)
    model = CFNADE(**{**SMALL, "epochs": 60}).fit(train, None, FitContext(data_meta=META))
    hr, hc = np.nonzero(held)
    rmse = np.sqrt(np.mean((model.predict(hr, hc) - dense[hr, hc]) ** 2))
    baseline = np.sqrt(np.mean((train.matrix.data.mean() - dense[hr, hc]) ** 2))
    assert rmse < 0.5 * baseline


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, meta, message", UNUSABLE)
def test_data_cfnade_cannot_learn_from_is_one_line(rows, meta, message):
    with pytest.raises(RecsysError, match=message) as err:
        CFNADE(**SMALL).fit(ratings(rows), None, FitContext(data_meta=meta))
    assert "\n" not in str(err.value)


def test_continuous_scores_are_not_a_rating_scale():
    rows = [(u, i, 1.0 + (u * 5 + i) / 10) for u in range(5) for i in range(5)]  # 25 values
    with pytest.raises(RecsysError, match="25 distinct values") as err:
        CFNADE(**SMALL).fit(ratings(rows, n_items=5), None, FitContext(data_meta=META))
    assert "\n" not in str(err.value)


def test_config_is_validated():
    with pytest.raises(RecsysError, match="ordinal_weight"):
        CFNADE(ordinal_weight=1.5)
    with pytest.raises(RecsysError, match="activation") as err:
        CFNADE(activation="tahn")
    assert "\n" not in str(err.value)


# -- the CLI ------------------------------------------------------------------------------------

def test_train_evaluate_recommend_and_predict_through_the_cli(tmp_path, capsys):
    """`recsys train cfnade` on a prepared explicit dataset: test RMSE below the global mean's,
    `recommend` ranks unseen items by the expected rating, `predict` flags its fallbacks."""
    import json

    from recsys.cli import main
    from recsys.data.interactions import Dataset
    from recsys.rundir import load_run

    data = tmp_path / "data"
    save_rating_dataset(data)
    run = tmp_path / "run"
    assert main(["train", "cfnade", "--data", str(data), "--out", str(run), "--set",
                 "epochs=40", "--set", "hidden=16", "--set", "lr=0.01", "--device", "cpu",
                 "--no-track", "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    ds = Dataset.load(data)
    test = ds.parts["test"].matrix
    mean_rmse = np.sqrt(np.mean((test.data - ds.train.matrix.data.mean()) ** 2))
    assert 0 < metrics["mae"] <= metrics["rmse"] < mean_rmse

    top = tmp_path / "top.csv"
    assert main(["recommend", str(run), "--data", str(data), "--k", "3", "--out", str(top),
                 "--device", "cpu"]) == 0
    lists = pd.read_csv(top, dtype={"item": str})
    model, _ = load_run(run)
    seen = ds.history("test")[ds.users.index([5])]
    scores = model.score(ds.users.index([5]), seen)[0].numpy().copy()
    scores[seen.indices] = -np.inf
    np.testing.assert_allclose(lists.loc[lists["user"] == 5, "score"],
                               np.sort(scores)[::-1][:3], rtol=1e-5)

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\n1,m0\n999,m1\n3,m39\n")
    out = tmp_path / "pred.csv"
    capsys.readouterr()
    assert main(["predict", str(run), "--pairs", str(pairs), "--out", str(out)]) == 0
    table = pd.read_csv(out, dtype={"user": str, "item": str}, keep_default_na=False)
    # An unknown user has untrained output units (the item's mean); an item without ratings is
    # I-CF-NADE's row with nothing to condition on, which the model predicts itself.
    assert table["fallback"].tolist() == ["", "item_mean", ""]
    assert table["prediction"].between(1, 5).all()

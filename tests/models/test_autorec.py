"""AutoRec: the masked loss, fallbacks, clipping, the shared contract, `recsys predict` end to end
and the errors a user can cause."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recsys.cli import main
from recsys.data.interactions import Dataset, EvalSplit
from recsys.errors import RecsysError
from recsys.models.autorec import AutoRec
from recsys.models.base import FitContext, Recommender
from recsys.models.neural import Batch

from .contract import RecommenderContract
from .explicit_data import META, ROWS, UNUSABLE, ratings, save_rating_dataset

SMALL = {"hidden": 16, "epochs": 150, "lr": 0.02, "l2_lambda": 1.0, "device": "cpu",
         "patience": None, "checkpoint_every": 1000}


pytestmark = pytest.mark.usefixtures("one_thread")


class TestIAutoRec(RecommenderContract):
    model_name = "autorec"
    params = SMALL
    # I-AutoRec is transductive (an item's input is its ratings by the training users), so a user
    # unknown to the model gets the item-mean fallback rather than a fold-in.
    folds_in_unknown_users = False


class TestUAutoRec(RecommenderContract):
    model_name = "autorec"
    params = {**SMALL, "based": "user"}


# -- data with cold users and items (`explicit_data.ROWS`) ---------------------------------------

def fitted(based: str = "item", **overrides) -> AutoRec:
    torch.manual_seed(0)
    model = AutoRec(**{**SMALL, "epochs": 5, "based": based, **overrides})
    return model.fit(ratings(ROWS), None, FitContext(data_meta=META))


@pytest.mark.parametrize("based", ["item", "user"])
def test_fallbacks_use_item_user_and_global_means_and_say_so(based):
    model = fitted(based)
    global_mean = np.mean([r for *_, r in ROWS])
    users = np.array([4, -1, 0, 4, -1, 0, 2])
    items = np.array([0, 1, 3, 3, -1, -1, 2])
    pred, why = model.predict_with_fallback(users, items)
    assert why.tolist() == ["item_mean", "item_mean", "user_mean", "global_mean", "global_mean",
                            "user_mean", ""]
    np.testing.assert_allclose(pred[:6], [4.0, 8 / 3, 4.0, global_mean, global_mean, 4.0],
                               rtol=1e-6)
    assert np.array_equal(model.predict(users, items), pred)
    # score() uses the same fallbacks for cold rows and columns
    scores = model.score(np.array([4, 0]), ratings(ROWS).matrix[[4, 0]]).numpy()
    np.testing.assert_allclose(scores[0], [4.0, 8 / 3, 3.0, global_mean], rtol=1e-6)
    assert scores[1, 3] == pytest.approx(4.0)


def test_predictions_are_clipped_to_the_rating_scale():
    model = fitted()
    users, items = np.array([0, 1, 2]), np.array([0, 1, 2])
    with torch.no_grad():
        model.network.decoder.bias.fill_(100.0)
    assert model.predict(users, items).tolist() == [5.0, 5.0, 5.0]
    assert model.score(np.array([0]), ratings(ROWS).matrix[[0]]).max().item() == 5.0
    with torch.no_grad():
        model.network.decoder.bias.fill_(-100.0)
    assert model.predict(users, items).tolist() == [1.0, 1.0, 1.0]
    assert model.network.scale.tolist() == [1.0, 5.0]


def test_the_rating_scale_survives_save_and_load(tmp_path):
    model = fitted(based="item")
    model.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    users, items = np.array([0, 1, 4, 2]), np.array([1, 2, 0, 3])
    assert np.array_equal(loaded.predict(users, items), model.predict(users, items))
    assert loaded.network.scale.tolist() == [1.0, 5.0]


def test_masked_loss_ignores_unobserved_entries():
    model = AutoRec(**{**SMALL, "l2_lambda": 2.0})
    train = ratings(ROWS)
    model.build(train.n_users, train.n_items)
    model.setup(train, FitContext(data_meta=META))
    inputs = torch.as_tensor(model.training_matrix(train).toarray(), dtype=torch.float32)
    inputs = inputs[inputs.any(1)]  # the rows the trainer batches: items with ratings
    batch = Batch(rows=inputs, index=torch.arange(len(inputs)))
    outputs = torch.rand_like(inputs) * 5
    model.network.forward = lambda rows: outputs  # the loss sees exactly these outputs
    loss = model.training_step(batch, 0)["loss"].item()

    changed = outputs.clone()
    changed[inputs == 0] = 1000.0  # wildly wrong, but only where nothing was observed
    model.network.forward = lambda rows: changed
    assert model.training_step(batch, 0)["loss"].item() == pytest.approx(loss, rel=1e-6)

    changed[0, 0] += 1.0  # item 0 was rated by user 0: now the loss must move
    assert inputs[0, 0] > 0
    assert model.training_step(batch, 0)["loss"].item() != pytest.approx(loss, rel=1e-6)

    # and its value is the paper's: squared error on observed entries + lambda/2 * ||W||^2 + ||V||^2
    net = model.network
    observed = inputs > 0
    expected = (((outputs - inputs)[observed]) ** 2).sum() + 2.0 / 2 * (
        net.encoder.weight.pow(2).sum() + net.decoder.weight.pow(2).sum())
    assert loss == pytest.approx(expected.item(), rel=1e-5)  # one batch = all rows: full share


def test_item_based_rows_are_items_and_user_based_rows_are_users():
    train = ratings(ROWS)
    assert AutoRec(based="item").training_matrix(train).shape == (4, 5)
    assert AutoRec(based="user").training_matrix(train).shape == (5, 4)
    model = AutoRec(**{**SMALL, "epochs": 1})
    model.fit(train, None, FitContext(data_meta=META))
    assert model.network.encoder.in_features == 5  # items are encoded over users


def test_validation_rmse_drives_early_stopping():
    train = ratings(ROWS)
    target = ratings([(0, 2, 4.0), (1, 1, 3.0), (3, 2, 2.0)])
    valid = EvalSplit(train.matrix, target.matrix, np.array([0, 1, 3]))
    model = AutoRec(**{**SMALL, "epochs": 6})
    model.fit(train, valid, FitContext(data_meta=META))
    values = [r["valid_rmse"] for r in model.history_]
    assert len(values) == 6
    best = int(np.argmin(values))
    assert model.train_result_.best_epoch == best + 1
    direct = np.sqrt(np.mean((model.predict(np.array([0, 1, 3]), np.array([2, 1, 2]))
                              - np.array([4.0, 3.0, 2.0])) ** 2))
    assert direct == pytest.approx(values[best], rel=1e-5)


# -- bad input ------------------------------------------------------------------------------------

def test_unknown_activation_is_one_line():
    with pytest.raises(RecsysError, match="encoder") as err:
        AutoRec(encoder="sigmod")
    assert "\n" not in str(err.value) and "sigmoid" in str(err.value)


@pytest.mark.parametrize("rows, meta, message", UNUSABLE)
def test_data_autorec_cannot_learn_from_is_one_line(rows, meta, message):
    with pytest.raises(RecsysError, match=message) as err:
        AutoRec(**SMALL).fit(ratings(rows), None, FitContext(data_meta=meta))
    assert "\n" not in str(err.value)


# -- the CLI --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A prepared explicit dataset and an AutoRec run trained on it through `recsys train`."""
    root = tmp_path_factory.mktemp("autorec")
    save_rating_dataset(root / "data")
    out = root / "run"
    code = main(["train", "autorec", "--data", str(root / "data"), "--out", str(out),
                 "--set", "epochs=300", "--set", "hidden=16", "--set", "l2_lambda=1",
                 "--set", "lr=0.02", "--device", "cpu", "--no-track", "--quiet"])
    assert code == 0
    return out


def test_predict_cli_writes_predictions_with_external_ids_and_flags_fallbacks(run_dir, tmp_path,
                                                                               capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\n1,m0\n2,m5\n999,m1\n3,m39\n4,nope\n")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run_dir), "--pairs", str(pairs), "--out", str(out)]) == 0
    table = pd.read_csv(out, dtype={"user": str, "item": str}, keep_default_na=False)
    assert list(table.columns) == ["user", "item", "prediction", "fallback"]
    assert table["user"].tolist() == ["1", "2", "999", "3", "4"]
    assert table["item"].tolist() == ["m0", "m5", "m1", "m39", "nope"]
    assert table["fallback"].tolist() == ["", "", "item_mean", "user_mean", "user_mean"]
    assert table["prediction"].between(1, 5).all()
    # The known pairs are the model's own predictions.
    from recsys.rundir import load_run

    model, _ = load_run(run_dir)
    data = Dataset.load(run_dir.parent / "data")
    direct = model.predict(data.users.index([1, 2]), data.items.index(["m0", "m5"]))
    np.testing.assert_allclose(table["prediction"][:2], direct, rtol=1e-5)
    assert "fallback" in capsys.readouterr().err
    assert not list(tmp_path.glob(".pred.csv.*"))  # no temporary left behind


@pytest.mark.parametrize("content, message", [
    ("user,film\n1,m0\n", "missing column item"),
    ("", "empty"),
    ("user,item\n1,\n", "row 2 has an empty"),
])
def test_predict_cli_bad_pairs_are_one_line(run_dir, tmp_path, capsys, content, message):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(content)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run_dir), "--pairs", str(pairs), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_predict_cli_refuses_a_ranking_model(tmp_path, capsys, run_dir):
    out = tmp_path / "pop"
    assert main(["train", "pop", "--data", str(run_dir.parent / "data"), "--out", str(out),
                 "--no-track", "--quiet"]) == 0
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\n1,m0\n")
    capsys.readouterr()
    assert main(["predict", str(out), "--pairs", str(pairs), "--out", str(tmp_path / "p.csv")]) == 2
    assert "does not predict ratings" in capsys.readouterr().err


def test_train_and_evaluate_report_rmse_and_mae(run_dir, capsys):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"rmse", "mae"} <= metrics.keys()
    data = Dataset.load(run_dir.parent / "data")
    test = data.parts["test"].matrix
    global_mean_rmse = np.sqrt(np.mean((test.data - data.train.matrix.data.mean()) ** 2))
    assert 0 < metrics["mae"] <= metrics["rmse"] < global_mean_rmse
    assert main(["evaluate", str(run_dir), "--data", str(run_dir.parent / "data"),
                 "--no-ci"]) == 0
    printed = capsys.readouterr().out
    assert "rmse" in printed and "mae" in printed
    assert f"{metrics['rmse']:.4f}" in printed


def test_recommend_cli_ranks_unseen_items_by_predicted_rating(run_dir, tmp_path):
    out = tmp_path / "top.csv"
    data_dir = run_dir.parent / "data"
    assert main(["recommend", str(run_dir), "--data", str(data_dir), "--k", "3",
                 "--out", str(out), "--device", "cpu"]) == 0
    top = pd.read_csv(out, dtype={"item": str})
    data = Dataset.load(data_dir)
    assert len(top) == 3 * len(data.users)
    # Each list is the user's three best unseen items by the model's predicted rating.
    from recsys.rundir import load_run

    model, _ = load_run(run_dir)
    user = 5
    seen = data.history("test")[data.users.index([user])]
    scores = model.score(data.users.index([user]), seen)[0].numpy().copy()
    scores[seen.indices] = -np.inf
    mine = top.loc[top["user"] == user]
    np.testing.assert_allclose(mine["score"], np.sort(scores)[::-1][:3], rtol=1e-5)
    picked = data.items.index(mine["item"].to_numpy())
    np.testing.assert_allclose(scores[picked], mine["score"], rtol=1e-5)  # (ties allowed)


@pytest.mark.parametrize("rows, meta, message", [
    ([(0, 0, 1.0), (1, 1, 1.0), (2, 2, 1.0)], {"implicit": True}, "implicit"),
    ([(0, 0, 4.0), (1, 1, 7.0), (2, 2, 3.0)], META, "outside the declared rating scale [1, 5]"),
])
def test_train_cli_refuses_data_autorec_cannot_use(tmp_path, capsys, rows, meta, message):
    part = ratings(rows)
    Dataset({"train": part, "test": ratings([(0, 1, 3.0)])}, meta).save(tmp_path / "data")
    code = main(["train", "autorec", "--data", str(tmp_path / "data"), "--out",
                 str(tmp_path / "run"), "--no-track", "--quiet", "--set", "epochs=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "model").exists()


def test_training_checkpoints_land_in_the_run_directory(run_dir):
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.json"))


# -- real data ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.realdata
def test_iautorec_on_ml100k_u1_beats_the_published_svd_figure(mirror):
    """u1.base minus 5% for early stopping, scored on u1.test: Surprise SVD gets 0.951 here
    (PROTOCOLS.md); the issue's five-fold target of 0.895 is benchmarks/bench_autorec.py's."""
    from recsys.data.prepare import PrepareOptions, prepare_movielens

    ds = prepare_movielens("ml-100k", PrepareOptions(split="ml100k-u1"), mirror=str(mirror),
                           progress=False)
    m = ds.train.matrix.tocsr()
    held = np.random.default_rng(0).random(m.nnz) < 0.05
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))

    def part(mask):
        return sp.csr_matrix((m.data[mask], (rows[mask], m.indices[mask])), shape=m.shape)

    train, valid = ds.train.with_matrix(part(~held)), part(held)
    split = EvalSplit(train.matrix, valid, np.flatnonzero(np.diff(valid.indptr)))
    model = AutoRec(device="cpu").fit(train, split, FitContext(data_meta=dict(ds.meta)))
    test = ds.parts["test"].matrix.tocoo()
    rmse = np.sqrt(np.mean((model.predict(test.row, test.col) - test.data) ** 2))
    assert model.train_result_.stopped_early
    assert rmse < 0.91


def test_predict_reads_and_writes_parquet_and_counts_each_fallback_pair_once(run_dir, tmp_path,
                                                                             capsys):
    pairs = tmp_path / "pairs.parquet"
    pd.DataFrame({"user": [1, 999, 3, 998], "item": ["m0", "m1", "m39", "gone"]}).to_parquet(pairs)
    out = tmp_path / "pred.parquet"
    assert main(["predict", str(run_dir), "--pairs", str(pairs), "--out", str(out)]) == 0
    table = pd.read_parquet(out)  # real Parquet, not CSV text under a .parquet name
    assert list(table.columns) == ["user", "item", "prediction", "fallback"]
    assert table["user"].tolist() == ["1", "999", "3", "998"]
    assert table["fallback"].tolist() == ["", "item_mean", "user_mean", "global_mean"]
    from_csv = tmp_path / "pairs.csv"
    from_csv.write_text("user,item\n1,m0\n999,m1\n3,m39\n998,gone\n")
    assert main(["predict", str(run_dir), "--pairs", str(from_csv),
                 "--out", str(tmp_path / "pred.csv")]) == 0
    same = pd.read_csv(tmp_path / "pred.csv", dtype={"user": str}, keep_default_na=False)
    np.testing.assert_allclose(same["prediction"], table["prediction"], rtol=1e-5)
    err = capsys.readouterr().err
    # 3 pairs fell back: one with only the user unknown, none with only the item, one with both
    assert "3 pairs predicted by a fallback (1 with only the user, 0 with only the item and " \
           "1 with both" in err
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    assert main(["predict", str(run_dir), "--pairs", str(broken), "--out", str(out)]) == 2
    line = capsys.readouterr().err.strip()
    assert "cannot read Parquet" in line and "\n" not in line

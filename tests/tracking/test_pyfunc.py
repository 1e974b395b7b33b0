"""The model behind the pyfunc (no MLflow): same lists as `recsys recommend`, new-user histories,
cold users, the packaged data round trip, and one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from evaluation.doubles import DotModel, make_dataset

from recsys.cli import main
from recsys.errors import RecsysError
from recsys.models import registry
from recsys.models.base import Recommender
from recsys.rundir import save_run
from recsys.scoring.serving import TopKPredictor, write_serving_data


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.MODELS, "dot", "evaluation.doubles:DotModel")
    data = make_dataset(n_users=40, n_items=25)
    data.save(tmp_path / "data")
    model = DotModel(seed=3).fit(data.train)
    save_run(tmp_path / "run", model, {"data": str(tmp_path / "data")})
    return tmp_path, data, model


def _packaged(tmp_path, data) -> TopKPredictor:
    write_serving_data(data, tmp_path / "serving")
    return TopKPredictor.load(tmp_path / "run" / "model", tmp_path / "serving", device="cpu")


def test_lists_equal_recommend_for_every_user(setup):
    tmp, data, _ = setup
    assert main(["recommend", str(tmp / "run"), "--data", str(tmp / "data"), "--k", "6",
                 "--out", str(tmp / "rec.parquet"), "--device", "cpu"]) == 0
    expected = pd.read_parquet(tmp / "rec.parquet")
    predictor = _packaged(tmp, data)
    got = predictor.predict(pd.DataFrame({"user": predictor.all_users()}), k=6)
    assert list(got.columns) == ["user", "item", "rank", "score", "cold"]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))
    # the make_dataset cold user (no interactions at all) is flagged and gets popularity
    assert got.loc[got["user"] == data.users.ids[-1], "cold"].all()


def test_new_user_history_is_folded_in_and_masked(setup):
    tmp, data, model = setup
    predictor = _packaged(tmp, data)
    history = ["i3", "i7", "i11"]
    got = predictor.predict(pd.DataFrame({"user": [99999], "items": [history]}), k=10)
    assert len(got) == 10 and not got["cold"].any()
    assert not set(got["item"]) & set(history)
    # the model itself, asked for an unknown user with that history, ranks the same way
    row = np.zeros((1, len(data.items)), dtype=np.float32)
    row[0, data.items.index(history)] = 1.0
    import scipy.sparse as sp

    scores = model.score(np.array([-1]), sp.csr_matrix(row)).numpy()[0]
    scores[data.items.index(history)] = -np.inf
    best = data.items.ids[np.argsort(-scores, kind="stable")[:10]]
    assert got["item"].tolist() == best.tolist()


def test_listed_items_join_a_known_users_history(setup):
    tmp, data, _ = setup
    predictor = _packaged(tmp, data)
    user = data.users.ids[0]
    plain = predictor.predict(pd.DataFrame({"user": [user]}), k=5)
    fresh = plain["item"].iloc[0]  # the top item, now "seen" in a new session
    with_session = predictor.predict(pd.DataFrame({"user": [user], "items": [[fresh, "nope"]]}),
                                     k=5)
    assert fresh not in set(with_session["item"])
    assert with_session["item"].tolist()[:4] == plain["item"].tolist()[1:5]
    stored = set(data.items.lookup(data.known_history()[data.users.index([user])[0]].indices))
    assert not stored & set(with_session["item"])
    # an empty list adds nothing
    empty = predictor.predict(pd.DataFrame({"user": [user], "items": [[]]}), k=5)
    pd.testing.assert_frame_equal(empty, plain)


def test_unknown_user_without_items_is_cold_with_popularity(setup):
    tmp, data, _ = setup
    predictor = _packaged(tmp, data)
    got = predictor.predict(pd.DataFrame({"user": [-7]}), k=4)
    assert got["cold"].all()
    counts = np.diff(data.train.matrix.tocsc().indptr)
    share = np.sort(counts / counts.sum())[::-1][:4]  # each item's share of the interactions
    np.testing.assert_allclose(got["score"].to_numpy(), share, rtol=1e-6)


def test_lists_layout_is_one_row_per_user(setup):
    tmp, data, _ = setup
    predictor = _packaged(tmp, data)
    users = pd.DataFrame({"user": data.users.ids[:5]})
    long = predictor.predict(users, k=3)
    lists = predictor.predict(users, k=3, layout="lists")
    assert list(lists.columns) == ["user", "items", "scores", "cold"]
    assert lists["user"].tolist() == users["user"].tolist()
    assert [list(x) for x in lists["items"]] == \
        long.groupby("user", sort=False)["item"].apply(list).tolist()


def test_ratings_align_with_items(setup):
    tmp, data, _ = setup
    predictor = _packaged(tmp, data)
    frame = pd.DataFrame({"user": [5], "items": [["i1", "i2"]], "ratings": [[5.0, 1.0]]})
    users, rows = predictor.input_history(frame)
    assert users.tolist() == [-1]
    assert rows.toarray()[0, data.items.index(["i1", "i2"])].tolist() == [5.0, 1.0]
    bad = pd.DataFrame({"user": [5], "items": [["i1", "i2"]], "ratings": [[5.0]]})
    with pytest.raises(RecsysError, match="input row 0: 'ratings'"):
        predictor.predict(bad)


@pytest.mark.parametrize("frame, k, message", [
    (pd.DataFrame({"customer": [1]}), 5, "no 'user' column"),
    (pd.DataFrame({"user": [1000]}), 0, "k must be at least 1"),
    (pd.DataFrame({"user": [1000]}), 26, "larger than the catalogue"),
])
def test_bad_input_is_one_line(setup, frame, k, message):
    tmp, data, _ = setup
    with pytest.raises(RecsysError, match=message):
        _packaged(tmp, data).predict(frame, k=k)


def test_packaged_data_holds_vocabularies_and_history(setup, tmp_path):
    tmp, data, _ = setup
    predictor = _packaged(tmp, data)
    assert predictor.users == data.users and predictor.items == data.items
    assert (predictor.history != data.known_history()).nnz == 0
    assert isinstance(predictor.model, Recommender) and predictor.model.name == "dot"
    with pytest.raises(RecsysError, match="not a packaged model's data"):
        TopKPredictor.load(tmp / "run" / "model", tmp_path / "nothing-here")


@pytest.mark.parametrize("history", ["before-test", "all"])
def test_stored_history_follows_the_option_and_equals_recommend(setup, history):
    tmp, data, _ = setup
    assert main(["recommend", str(tmp / "run"), "--data", str(tmp / "data"), "--k", "6",
                 "--history", history, "--out", str(tmp / "rec.parquet"), "--device",
                 "cpu"]) == 0
    expected = pd.read_parquet(tmp / "rec.parquet")
    write_serving_data(data, tmp / history, history=history)
    predictor = TopKPredictor.load(tmp / "run" / "model", tmp / history, device="cpu")
    assert predictor.meta["history"] == history == predictor.history_kind
    assert (predictor.history != data.known_history(history)).nnz == 0
    got = predictor.predict(pd.DataFrame({"user": predictor.all_users()}), k=6)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))
    in_memory = TopKPredictor.from_dataset(predictor.model, data, device="cpu", history=history)
    assert in_memory.meta["history"] == history
    pd.testing.assert_frame_equal(in_memory.predict(pd.DataFrame({"user": data.users.ids}), k=6),
                                  got)


def test_default_history_excludes_the_test_part_and_old_packages_read_as_all(setup):
    tmp, data, _ = setup
    predictor = _packaged(tmp, data)
    assert predictor.history_kind == "before-test"
    assert (predictor.history != data.train.matrix).nnz == 0  # make_dataset: train + test
    serving = tmp / "serving" / "serving.json"
    import json

    meta = json.loads(serving.read_text())
    assert meta["history"] == "before-test"
    del meta["history"]  # a package written before the option existed stored every part
    serving.write_text(json.dumps(meta))
    old = TopKPredictor.load(tmp / "run" / "model", tmp / "serving", device="cpu")
    assert old.history_kind == "all"
    with pytest.raises(RecsysError, match="unknown history 'latest'"):
        write_serving_data(data, tmp / "bad", history="latest")
    assert not (tmp / "bad").exists()

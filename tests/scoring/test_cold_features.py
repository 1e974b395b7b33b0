"""Cold users scored from their features: `recsys recommend --user-features` (cvae against a
model that reads no features), the encoding with the data's stored vocabulary, the one-line
refusals, and the pyfunc model's request columns (TopKPredictor and MLflow's pyfunc)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys.cli import main
from recsys.data.interactions import Dataset
from recsys.models.base import Recommender
from recsys.scoring.serving import (
    TopKPredictor,
    encode_user_features,
    user_feature_encoding,
)
from tests.reliability.helpers import (
    assert_one_line_error,
    cli,
    write_ratings,
    write_user_features,
)

# write_ratings: user u (external id) likes item block (u - 1) % 3 (items 101..113, 114..126,
# 127..139); the user file gives that block as the category 'group' (a, b, c), and an age.
BLOCK = 13
FAST = ["--set", "hidden_dims=[32]", "--set", "latent_dim=8", "--set", "lr=0.01",
        "--set", "batch_size=16", "--set", "patience=null", "--device", "cpu", "--no-track"]


def block_of(items: pd.Series) -> np.ndarray:
    return (items.astype(int).to_numpy() - 101) // BLOCK


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cold")
    ratings = write_ratings(root / "ratings.csv")
    users = write_user_features(root / "users.csv")
    for argv in (["prepare", "--input", ratings, "--implicit-threshold", "4",
                  "--user-features", users, "--out", root / "data"],
                 # cold_rate: half the training rows seen with features alone, a cold user's case
                 ["train", "cvae", "--data", root / "data", "--out", root / "cvae", "--seed",
                  "0", "--set", "epochs=80", "--set", "cold_rate=0.5", "--quiet", *FAST],
                 ["train", "pop", "--data", root / "data", "--out", root / "pop", "--no-track",
                  "--quiet"]):
        assert main([str(a) for a in argv]) == 0, argv
    return root


def recommend(capsys, root, run: str, *extra, k: int = 5):
    out = root / f"{run}-{abs(hash(tuple(map(str, extra))))}.csv"
    r = cli(["recommend", root / run, "--data", root / "data", "--k", str(k), "--out", out,
             "--device", "cpu", *extra], capsys)
    return r, (pd.read_csv(out) if r.code == 0 else None)


def write(root, name: str, text: str):
    path = root / name
    path.write_text(text)
    return path


def test_cold_users_are_scored_from_their_features_by_cvae(runs, capsys):
    features = write(runs, "new.csv", "user,group,age\n9001,a,25\n9002,c,25\n9003,b,25\n")
    r, lists = recommend(capsys, runs, "cvae", "--user-features", features)
    assert r.code == 0, r.err
    assert "3 users without history (cold=true): 3 scored from their features by cvae" in r.err
    assert lists["cold"].all() and set(lists["user"]) == {9001, 9002, 9003}
    # Each new user's list comes from the block their group names, not from popularity.
    for user, block in ((9001, 0), (9002, 2), (9003, 1)):
        mine = lists[lists["user"] == user]
        assert (block_of(mine["item"]) == block).mean() >= 0.8, (user, mine)
    _, popular = recommend(capsys, runs, "pop", "--user-features", features)
    assert not (lists.groupby("user")["item"].apply(tuple)
                == popular.groupby("user")["item"].apply(tuple)).all()


def test_the_lists_are_the_models_own_scores_of_the_encoded_features(runs, capsys):
    features = write(runs, "one.csv", "user,age,group\n77,30,b\n")
    histories = write(runs, "h.csv", "user,item\n77,114\n77,115\n78,127\n")
    r, lists = recommend(capsys, runs, "cvae", "--histories", histories, "--user-features",
                         features, k=8)
    assert r.code == 0, r.err
    assert not lists["cold"].any()  # both bring a history
    data = Dataset.load(runs / "data")
    model = Recommender.load(runs / "cvae" / "model")
    c = encode_user_features(pd.DataFrame({"age": ["30"], "group": ["b"]}),
                             user_feature_encoding(data), "test")
    history = sp.csr_matrix(np.isin(data.items.ids, [114, 115])[None].astype(np.float32))
    # 77: history and features together; 78: history alone (no features: c = 0).
    with_c = model.score_features(np.array([-1]), history, c).numpy()[0]
    history78 = sp.csr_matrix(np.isin(data.items.ids, [127])[None].astype(np.float32))
    alone = model.score(np.array([-1]), history78).numpy()[0]
    for user, scores, seen in ((77, with_c, [114, 115]), (78, alone, [127])):
        scores[np.isin(data.items.ids, seen)] = -np.inf
        top = data.items.ids[np.argsort(-scores, kind="stable")[:8]]
        assert lists.loc[lists["user"] == user, "item"].tolist() == top.tolist()
    assert not np.allclose(with_c, model.score(np.array([-1]), history).numpy()[0])


def test_a_model_without_features_gives_cold_users_popularity_and_says_so(runs, capsys):
    features = write(runs, "new2.csv", "user,group,age\n9001,a,25\n9002,c,25\n")
    r, lists = recommend(capsys, runs, "pop", "--user-features", features)
    assert r.code == 0, r.err
    assert "model 'pop' does not read user features" in r.err
    assert lists["cold"].all()
    first, second = (lists[lists["user"] == u]["item"].tolist() for u in (9001, 9002))
    assert first == second  # the one popularity list


@pytest.mark.parametrize("text,message", [
    ("user,group,age\n1,a,old\n", "column 'age', row 2: 'old' is not a number"),
    ("user,age\n1,30\n", "no column 'group'"),
    ("user,group,age\n1,a,30\n1,b,31\n", "user 1 appears on more than one row (row 3)"),
    ("user\n1\n", "expected a header with an id column and at least one feature column"),
])
def test_a_bad_feature_file_is_one_line_naming_it_and_writes_nothing(runs, capsys, text,
                                                                   message):
    features = write(runs, "bad.csv", text)
    out = runs / "bad-out.csv"
    r = cli(["recommend", runs / "cvae", "--data", runs / "data", "--k", "3", "--out", out,
             "--user-features", features], capsys)
    assert_one_line_error(r, message)
    assert str(features) in r.err and not out.exists()


def test_unknown_categories_add_nothing(runs):
    encoding = user_feature_encoding(Dataset.load(runs / "data"))
    frame = pd.DataFrame({"group": ["zzz", "a"], "age": ["", "24"]})
    c = encode_user_features(frame, encoding, "test")
    assert c.shape == (2, 4) and not c[0].any()  # an unseen group, the mean age: zeros
    assert c[1].any()


@pytest.mark.parametrize("extra,message", [
    (["--engine", "spark"], "--user_features is not supported with --engine spark"),
    (["--users", "USERS"], "--user-features scores the users in that file; drop --users"),
    (["--history", "all"], "--user-features scores the users of that file from it alone"),
])
def test_combinations_that_cannot_take_the_features_are_refused(runs, capsys, extra,
                                                               message):
    features = write(runs, "ok.csv", "user,group,age\n1,a,30\n")
    extra = [str(write(runs, "u.txt", "1\n")) if e == "USERS" else e for e in extra]
    r = cli(["recommend", runs / "cvae", "--data", runs / "data", "--k", "3",
             "--out", runs / "x.parquet", "--user-features", features, *extra], capsys)
    assert_one_line_error(r, message)


def test_data_without_user_features_refuses_them(runs, capsys, tmp_path):
    r = cli(["prepare", "--input", runs / "ratings.csv", "--implicit-threshold", "4",
             "--out", tmp_path / "plain"], capsys)
    assert r.code == 0, r.err
    r = cli(["train", "pop", "--data", tmp_path / "plain", "--out", tmp_path / "pop",
             "--no-track"], capsys)
    assert r.code == 0, r.err
    features = write(tmp_path, "f.csv", "user,group,age\n1,a,30\n")
    r = cli(["recommend", tmp_path / "pop", "--data", tmp_path / "plain", "--k", "3",
             "--out", tmp_path / "x.csv", "--user-features", features], capsys)
    assert_one_line_error(r, "the prepared data has no user features")


# -- the pyfunc model -----------------------------------------------------------------------


def request() -> pd.DataFrame:
    # 9001: features alone (cold); 9002: a history and features; 9003: nothing (popularity);
    # 1: a known user, scored as stored.
    return pd.DataFrame({"user": [9001, 9002, 9003, 1],
                         "items": [[], [114, 115], [], []],
                         "group": ["a", "b", None, None], "age": [25.0, 30.0, None, None]})


def test_the_predictor_scores_request_features_as_recommend_does(runs, capsys):
    data = Dataset.load(runs / "data")
    model = Recommender.load(runs / "cvae" / "model")
    predictor = TopKPredictor.from_dataset(model, data, device="cpu")
    got = predictor.predict(request(), k=5)
    cold = got.groupby("user")["cold"].first()
    assert cold.to_dict() == {1: False, 9001: True, 9002: False, 9003: True}
    features = write(runs, "same.csv", "user,group,age\n9001,a,25\n")
    _, lists = recommend(capsys, runs, "cvae", "--user-features", features)
    assert got[got["user"] == 9001]["item"].tolist() == lists["item"].tolist()
    popular = predictor.predict(pd.DataFrame({"user": [9003]}), k=5)["item"].tolist()
    assert got[got["user"] == 9003]["item"].tolist() == popular
    assert got[got["user"] == 9001]["item"].tolist() != popular
    without = predictor.predict(request().drop(columns=["group", "age"]), k=5)
    assert without[without["user"] == 9001]["item"].tolist() == popular


def test_a_bad_request_feature_is_one_line():
    frame = pd.DataFrame({"age": ["x"]})
    with pytest.raises(Exception, match="input: column 'age', row 0: 'x' is not a number"):
        encode_user_features(frame, [{"column": "age", "kind": "numeric", "mean": 0.0,
                                      "std": 1.0}], "input")


@pytest.mark.integration
def test_mlflows_pyfunc_takes_the_feature_columns(runs, capsys, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from recsys.tracking.packaging import save_pyfunc_model

    path = save_pyfunc_model(runs / "cvae", runs / "data", tmp_path / "pyfunc")
    inputs = mlflow.models.Model.load(str(path / "MLmodel")).signature.inputs.input_names()
    assert {"group", "age"} <= set(inputs)
    served = mlflow.pyfunc.load_model(str(path)).predict(request(), params={"k": 5})
    data = Dataset.load(runs / "data")
    direct = TopKPredictor.from_dataset(Recommender.load(runs / "cvae" / "model"), data,
                                        device="cpu").predict(request(), k=5)
    pd.testing.assert_frame_equal(served.reset_index(drop=True), direct.reset_index(drop=True),
                                  check_dtype=False)

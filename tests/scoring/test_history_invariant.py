"""One meaning of "history": the lists `recsys recommend` writes, scored against the test part by
an evaluator written here (plain numpy/pandas, reading only the lists and the test interactions),
give exactly the metrics `recsys evaluate` reports, for every model and split protocol.

Everything goes through the real CLI in-process (prepare, train, recommend, evaluate; MLflow off)
on a small synthetic rating log: built-in splits (per-user random, temporal per user) and a
bring-your-own split (train.csv / test.csv written here). Also: ``--history all`` never lists a
test item of a test user, and `TopKPredictor` gives `recommend`'s lists for either history.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.cli import main

K = 10
THRESHOLD = 4  # implicit data: ratings >= 4 are the positives (prepare --implicit-threshold)
PARTS_BEFORE_TEST = ("train", "valid_history", "valid", "test_history")

# Tiny settings: a few epochs, small layers; the invariant does not depend on model quality.
MODELS = {
    "pop": [],
    "ease": ["--set", "lambda_=50"],
    "als": ["--set", "factors=8", "--set", "iterations=3", "--set", "num_threads=1"],
    "multvae": ["--set", "hidden_dims=[32]", "--set", "latent_dim=8", "--set", "epochs=3"],
    "multdae": ["--set", "hidden_dims=[32]", "--set", "epochs=3"],
    "cdae": ["--set", "hidden_dim=16", "--set", "epochs=3"],
    "cfgan": ["--set", "g_hidden=32", "--set", "d_hidden=16", "--set", "epochs=2"],
    "autorec": ["--set", "hidden=16", "--set", "epochs=5"],
}
IMPLICIT_SPLITS = ("random", "temporal-user", "byo")
EXPLICIT_SPLITS = ("random-explicit", "byo-explicit")  # autorec needs ratings
CASES = [(s, m) for s in IMPLICIT_SPLITS for m in MODELS if m != "autorec"]
CASES += [(s, "autorec") for s in EXPLICIT_SPLITS]


def rating_log(n_users: int = 90, n_items: int = 70, seed: int = 0) -> pd.DataFrame:
    """Ratings 1..5 from a low-rank taste model with popular items, integer user ids and string
    item ids (both id types reach the lists), distinct timestamps."""
    rng = np.random.default_rng(seed)
    taste = rng.normal(size=(n_users, 3)) @ rng.normal(size=(3, n_items))
    popularity = np.linspace(1.5, -1.5, n_items)
    seen = rng.random((n_users, n_items)) < 1 / (1 + np.exp(-(popularity - 0.8)))
    u, i = np.nonzero(seen)
    rating = np.clip(np.round(3.2 + taste[u, i] + rng.normal(scale=0.7, size=len(u))), 1, 5)
    return pd.DataFrame({"user": 500 + u, "item": [f"m{j:03d}" for j in i],
                         "rating": rating.astype(int),
                         "timestamp": rng.permutation(len(u)) + 1_000_000})


def _cli(*args: str) -> None:
    assert main([*args]) == 0, args


# -- the outside evaluator: numpy/pandas only, never recsys code ------------------------------


def _stored_part(data: Path, name: str) -> pd.DataFrame:
    """A part of a prepared folder (CSR .npz + Parquet vocabularies) as external (user, item)."""
    path = data / f"{name}.npz"
    if not path.exists():
        return pd.DataFrame({"user": [], "item": []})
    with np.load(path) as z:
        indptr, indices = z["indptr"], z["indices"]
    users = pd.read_parquet(data / "users.parquet")["user"].to_numpy()
    items = pd.read_parquet(data / "items.parquet")["item"].to_numpy()
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    return pd.DataFrame({"user": users[rows], "item": items[indices]})


def ground_truth(case: dict, data: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The test interactions (external ids) of the users an evaluation scores (test items and a
    non-empty history), and those users."""
    if case["byo"]:
        # What an outside tool knows: the files it wrote, and the catalogue (items of training).
        train, test = pd.read_csv(case["train"]), pd.read_csv(case["test"])
        if case["implicit"]:
            train, test = train[train["rating"] >= THRESHOLD], test[test["rating"] >= THRESHOLD]
        catalogue = set(pd.read_parquet(data / "items.parquet")["item"])
        history_users = set(train.loc[train["item"].isin(catalogue), "user"])
        test = test[test["item"].isin(catalogue)][["user", "item"]]
    else:
        test = _stored_part(data, "test")
        history_users = set(pd.concat([_stored_part(data, p) for p in PARTS_BEFORE_TEST])["user"])
    test = test[test["user"].isin(history_users)].reset_index(drop=True)
    return test, np.sort(test["user"].unique())


def outside_metrics(lists: pd.DataFrame, test: pd.DataFrame, users: np.ndarray, k: int
                    ) -> dict[str, float]:
    """NDCG@k = DCG / IDCG, DCG = sum over hits of 1 / log2(rank + 1), IDCG over min(|test|, k)
    hits. recall@k = hits / min(k, |test|): recsys's recall (recsys/evaluation/metrics.py,
    Mult-VAE's normalisation, at most 1), not hits / |test| (its plain_recall)."""
    top = lists[lists["rank"] <= k]
    hits = top.merge(test.assign(hit=True), on=["user", "item"], how="left")
    hits["gain"] = np.where(hits["hit"].fillna(False).astype(bool),
                            1 / np.log2(hits["rank"] + 1), 0.0)
    per_user = pd.DataFrame({"user": users})
    per_user["dcg"] = per_user["user"].map(hits.groupby("user")["gain"].sum()).fillna(0.0)
    per_user["hits"] = per_user["user"].map(
        hits.groupby("user")["gain"].apply(lambda g: (g > 0).sum())).fillna(0)
    n_rel = per_user["user"].map(test.groupby("user").size()).to_numpy()
    ideal = np.minimum(n_rel, k)
    discounts = np.cumsum(1 / np.log2(np.arange(2, k + 2)))
    per_user["idcg"] = discounts[ideal - 1]
    return {f"ndcg@{k}": float((per_user["dcg"] / per_user["idcg"]).mean()),
            f"recall@{k}": float((per_user["hits"] / ideal).mean()),
            "hits": int(per_user["hits"].sum())}


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> dict[str, dict]:
    """Every split prepared once: name -> {data, implicit, byo, train, test}."""
    tmp = tmp_path_factory.mktemp("history")
    log = rating_log()
    log.to_csv(tmp / "log.csv", index=False)
    # Bring-your-own: each user's latest fifth of ratings is their test file.
    order = log.sort_values(["user", "timestamp"])
    position = order.groupby("user").cumcount()
    size = order.groupby("user")["item"].transform("size")
    is_test = position >= np.ceil(size * 0.8)
    order[~is_test].to_csv(tmp / "train.csv", index=False)
    order[is_test].to_csv(tmp / "test.csv", index=False)
    out = {}
    for name in (*IMPLICIT_SPLITS, *EXPLICIT_SPLITS):
        implicit = not name.endswith("explicit")
        byo = name.startswith("byo")
        args = (["--train-file", str(tmp / "train.csv"), "--test-file", str(tmp / "test.csv")]
                if byo else ["--input", str(tmp / "log.csv"), "--split",
                             name.removesuffix("-explicit"), "--test-fraction", "0.2"])
        args += ["--implicit-threshold", str(THRESHOLD)] if implicit else []
        # prepare refuses a seed where nothing is drawn at random (a temporal split)
        args += [] if name.startswith("temporal") else ["--seed", "0"]
        _cli("prepare", *args, "--valid-fraction", "0.1", "--quiet", "--out", str(tmp / name))
        out[name] = {"data": tmp / name, "implicit": implicit, "byo": byo,
                     "train": tmp / "train.csv", "test": tmp / "test.csv"}
    return out


def _recommend(run: Path, data: Path, users: Path, out: Path, *extra: str) -> pd.DataFrame:
    _cli("recommend", str(run), "--data", str(data), "--users", str(users), "--k", str(K),
         "--out", str(out), "--device", "cpu", "--chunk-size", "20", "--batch-size", "7",
         "--quiet", *extra)
    return pd.read_csv(out, dtype={"item": str})


@pytest.mark.parametrize(("split", "model"), CASES, ids=[f"{s}-{m}" for s, m in CASES])
def test_recommend_lists_scored_outside_equal_evaluate(splits, split, model, tmp_path):
    case = splits[split]
    data = case["data"]
    run = tmp_path / "run"
    _cli("train", model, "--data", str(data), "--out", str(run), *MODELS[model],
         "--device", "cpu", "--seed", "0", "--no-track", "--quiet")
    test, users = ground_truth(case, data)
    assert len(users) > 20
    # Shuffled, and batched unlike evaluate: a user's list must not depend on either.
    shuffled = np.random.default_rng(1).permutation(users)
    pd.DataFrame({"user": shuffled}).to_csv(tmp_path / "users.csv", index=False)

    lists = _recommend(run, data, tmp_path / "users.csv", tmp_path / "lists.csv")
    assert set(lists["user"]) == set(users) and not lists["cold"].any()
    ours = outside_metrics(lists, test, users, K)

    _cli("evaluate", str(run), "--data", str(data), "--metrics", f"ndcg@{K},recall@{K}",
         "--json", str(tmp_path / "m.json"), "--per-user", str(tmp_path / "per_user.csv"),
         "--no-ci", "--quiet")
    theirs = json.loads((tmp_path / "m.json").read_text())
    evaluated = pd.read_csv(tmp_path / "per_user.csv")["user"]
    assert sorted(evaluated) == sorted(users)  # the same users, by the outside rule
    assert ours[f"ndcg@{K}"] == pytest.approx(theirs[f"ndcg@{K}"], abs=1e-6)
    assert ours[f"recall@{K}"] == pytest.approx(theirs[f"recall@{K}"], abs=1e-6)
    # Scored from what comes before the test part, the lists can find test items at all.
    assert ours["hits"] > 0

    # --history all: every part is history, so no test item of a test user is listed again.
    every = _recommend(run, data, tmp_path / "users.csv", tmp_path / "all.csv",
                       "--history", "all")
    leaked = every.merge(test, on=["user", "item"])
    assert leaked.empty, leaked.head()
    assert outside_metrics(every, test, users, K)["hits"] == 0

    # The pyfunc model's predictor: the same lists as recommend, for either history.
    from recsys.data.interactions import Dataset
    from recsys.rundir import load_run
    from recsys.scoring.serving import TopKPredictor

    dataset = Dataset.load(data)
    for history, expected in (("before-test", lists), ("all", every)):
        trained, _ = load_run(run)
        predictor = TopKPredictor.from_dataset(trained, dataset, device="cpu", history=history)
        got = predictor.predict(pd.DataFrame({"user": shuffled}), k=K)
        got["item"] = got["item"].astype(str)
        pd.testing.assert_frame_equal(
            got[["user", "item", "rank", "cold"]].reset_index(drop=True),
            expected[["user", "item", "rank", "cold"]].reset_index(drop=True),
            check_dtype=False)
        np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-5, atol=1e-6)


def test_known_history_is_evaluates_history_or_every_part(splits):
    from recsys.data.interactions import Dataset
    from recsys.errors import RecsysError

    dataset = Dataset.load(splits["random"]["data"])
    assert {"train", "valid", "test"} <= set(dataset.parts)
    before = dataset.known_history()
    assert (before != dataset.history("test")).nnz == 0
    every = dataset.known_history("all")
    assert (every != dataset.history("test") + dataset.parts["test"].matrix).nnz == 0
    # Without a test part (prepare --split none) both are everything known.
    no_test = Dataset({k: v for k, v in dataset.parts.items() if k != "test"}, dataset.meta)
    assert (no_test.known_history() != no_test.known_history("all")).nnz == 0
    assert (no_test.known_history() != dataset.history("test")).nnz == 0
    with pytest.raises(RecsysError, match="unknown history 'latest'"):
        dataset.known_history("latest")

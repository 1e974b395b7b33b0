"""`recsys recommend`: output contract, chunks, resume, cold users, allow/deny, fold-in, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from evaluation.doubles import DotModel, make_dataset

from recsys.cli import main
from recsys.models import registry
from recsys.rundir import data_record, save_run


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.MODELS, "dot", "evaluation.doubles:DotModel")
    data = make_dataset(n_users=40, n_items=25)
    data.save(tmp_path / "data")
    model = DotModel(seed=1).fit(data.train)
    save_run(tmp_path / "run", model, data_record(tmp_path / "data", data))
    return tmp_path, data, model


def _recommend(tmp: Path, out: str, *extra: str, k: int = 5) -> int:
    return main(["recommend", str(tmp / "run"), "--data", str(tmp / "data"), "--k", str(k),
                 "--out", str(tmp / out), "--device", "cpu", *extra])


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype={"item": str})
    else:
        frame = pd.read_parquet(path)
    frame["item"] = frame["item"].astype(str)
    frame["score"] = frame["score"].astype(np.float32)
    return frame


def _no_leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("."))


def test_lists_have_the_contract_columns_and_exclude_seen_items(setup):
    tmp, data, model = setup
    # --history all: every part, test included, is the history (masked)
    assert _recommend(tmp, "out.parquet", "--chunk-size", "7", "--history", "all") == 0
    out = _read(tmp / "out.parquet")
    assert list(out.columns) == ["user", "item", "rank", "score", "cold"]
    assert out["user"].nunique() == 40 and len(out) == 40 * 5
    assert (out.groupby("user")["rank"].apply(list) == pd.Series([[1, 2, 3, 4, 5]] * 40,
            index=out["user"].unique())).all()
    assert (out.groupby("user")["score"].diff().dropna() <= 0).all()
    # external ids, and nothing the user is known to have interacted with (train + test)
    known = set()
    for part in data.parts.values():
        coo = part.matrix.tocoo()
        known |= set(zip(data.users.lookup(coo.row).tolist(), data.items.lookup(coo.col).tolist(),
                         strict=True))
    assert not known & set(zip(out["user"].tolist(), out["item"].tolist(), strict=True))
    # the warm users' lists are the model's best unseen items
    u = 3
    scores = model.score(np.array([u]), data.train.matrix[[u]])[0].numpy()
    seen = sum(p.matrix for p in data.parts.values()).toarray()[u] > 0
    best = np.argsort(-np.where(seen, -np.inf, scores), kind="stable")[:5]
    got = out[out["user"] == data.users.ids[u]]["item"].tolist()
    assert got == data.items.lookup(best).tolist()
    assert _no_leftovers(tmp) == []


def test_default_history_is_what_evaluate_scores_the_test_part_from(setup):
    tmp, data, model = setup
    assert _recommend(tmp, "before.parquet") == 0
    assert _recommend(tmp, "all.parquet", "--history", "all") == 0
    before, every = _read(tmp / "before.parquet"), _read(tmp / "all.parquet")
    test = data.parts["test"].matrix.tocoo()
    test_pairs = set(zip(data.users.lookup(test.row).tolist(),
                         data.items.lookup(test.col).tolist(), strict=True))
    pairs = set(zip(before["user"].tolist(), before["item"].tolist(), strict=True))
    assert pairs & test_pairs  # test items are rankable: only train (history("test")) is masked
    assert not set(zip(every["user"].tolist(), every["item"].tolist(), strict=True)) & test_pairs
    # users with test data but no training data are cold before the test, warm with all
    no_train = set(data.users.ids[np.diff(data.train.matrix.indptr) == 0].tolist())
    assert int(data.users.ids[-2]) in no_train and len(no_train) > 1
    assert set(before.loc[before["cold"], "user"]) == no_train
    assert set(every.loc[every["cold"], "user"]) == {int(data.users.ids[-1])}
    u = 5
    scores = model.score(np.array([u]), data.train.matrix[[u]])[0].numpy()
    seen = data.history("test").toarray()[u] > 0
    best = np.argsort(-np.where(seen, -np.inf, scores), kind="stable")[:5]
    got = before[before["user"] == data.users.ids[u]]["item"].tolist()
    assert got == data.items.lookup(best).tolist()


def test_resume_refuses_another_history(setup, monkeypatch):
    tmp, _, _ = setup
    import recsys.scoring.serving as topk_module  # the serving object scores every chunk

    real, calls = topk_module.topk_chunk, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(topk_module, "topk_chunk", flaky)
    assert _recommend(tmp, "r.csv", "--chunk-size", "10") == 130
    monkeypatch.setattr(topk_module, "topk_chunk", real)
    assert _recommend(tmp, "r.csv", "--chunk-size", "10", "--resume", "--history", "all") == 2
    assert not (tmp / "r.csv").exists()
    assert _recommend(tmp, "r.csv", "--chunk-size", "10", "--resume",
                      "--history", "before-test") == 0
    assert _recommend(tmp, "full.csv", "--chunk-size", "10") == 0
    assert (tmp / "r.csv").read_bytes() == (tmp / "full.csv").read_bytes()


def test_quiet_prints_no_progress_and_no_summary_but_keeps_notes(setup, capsys):
    tmp, _, _ = setup
    (tmp / "users.csv").write_text("user\n1003\n999999\n")
    assert _recommend(tmp, "q.csv", "--users", str(tmp / "users.csv")) == 0
    assert "wrote " in capsys.readouterr().err
    assert _recommend(tmp, "q2.csv", "--users", str(tmp / "users.csv"), "--quiet") == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip().splitlines() == [
        f"note: --users {tmp / 'users.csv'}: 1 of 2 users are unknown; scored with popularity "
        "(cold=true)"]
    assert (tmp / "q.csv").read_bytes() == (tmp / "q2.csv").read_bytes()


def test_csv_and_parquet_outputs_are_equal(setup):
    tmp, _, _ = setup
    assert _recommend(tmp, "a.csv", "--chunk-size", "9") == 0
    assert _recommend(tmp, "a.parquet", "--chunk-size", "9") == 0
    pd.testing.assert_frame_equal(_read(tmp / "a.csv"), _read(tmp / "a.parquet"),
                                  check_dtype=False)


def test_users_without_history_get_popularity_and_are_flagged(setup):
    tmp, data, _ = setup
    assert _recommend(tmp, "out.csv", "--history", "all") == 0
    out = _read(tmp / "out.csv")
    cold_user = int(data.users.ids[-1])  # no interactions at all in make_dataset
    assert set(out.loc[out["cold"], "user"]) == {cold_user}
    popularity = np.diff(data.train.matrix.tocsc().indptr)
    got = out[out["user"] == cold_user]
    # Scored by each item's share of the training interactions: in [0, 1], never a raw count.
    share = np.sort(popularity / popularity.sum())[::-1][:5]
    np.testing.assert_allclose(got["score"].to_numpy(), share, rtol=1e-6)


def test_users_file_with_unknown_ids_scores_them_cold(setup, capsys):
    tmp, data, _ = setup
    (tmp / "users.csv").write_text("user\n1003\n999999\n1005\n1003\n")
    assert _recommend(tmp, "out.parquet", "--users", str(tmp / "users.csv")) == 0
    out = _read(tmp / "out.parquet")
    assert out["user"].unique().tolist() == [1003, 999999, 1005]
    assert out.groupby("user")["cold"].first().to_dict() == {1003: False, 999999: True,
                                                            1005: False}
    err = capsys.readouterr().err
    assert "1 of 3 users are unknown" in err and "1 duplicated" in err
    # one id per line, no header, works the same
    (tmp / "users.txt").write_text("1003\n999999\n1005\n")
    assert _recommend(tmp, "out2.parquet", "--users", str(tmp / "users.txt")) == 0
    pd.testing.assert_frame_equal(_read(tmp / "out2.parquet"), out)


def test_allow_and_deny_files(setup):
    tmp, _, _ = setup
    (tmp / "deny.txt").write_text("i0\ni1\ni2\nnot-an-item\n")
    assert _recommend(tmp, "d.csv", "--deny", str(tmp / "deny.txt")) == 0
    assert not set(_read(tmp / "d.csv")["item"]) & {"i0", "i1", "i2"}
    (tmp / "allow.csv").write_text("item\ni3\ni4\n")
    assert _recommend(tmp, "a.csv", "--allow", str(tmp / "allow.csv")) == 0
    out = _read(tmp / "a.csv")
    assert set(out["item"]) <= {"i3", "i4"}
    assert out.groupby("user").size().max() <= 2  # short lists, no filler rows


def test_histories_fold_in_new_users(setup, capsys):
    tmp, data, model = setup
    (tmp / "hist.csv").write_text("user,item\nnew-a,i1\nnew-a,i2\nnew-b,i7\nnew-b,nope\n"
                                  "new-c,nope\n")
    assert _recommend(tmp, "h.parquet", "--histories", str(tmp / "hist.csv")) == 0
    out = _read(tmp / "h.parquet")
    assert out["user"].unique().tolist() == ["new-a", "new-b", "new-c"]
    assert "2 of 5 rows name items not in the catalogue" in capsys.readouterr().err
    folded = np.zeros((1, 25), dtype=np.float32)
    folded[0, [1, 2]] = 1
    scores = (torch.from_numpy(folded) @ model.item_factors @ model.item_factors.T)[0]
    scores[[1, 2]] = float("-inf")
    expected = data.items.lookup(torch.topk(scores, 5).indices.numpy()).tolist()
    assert out[out["user"] == "new-a"]["item"].tolist() == expected
    assert not out[out["user"] == "new-a"]["item"].isin(["i1", "i2"]).any()
    assert out.groupby("user")["cold"].first().to_dict() == {"new-a": False, "new-b": False,
                                                            "new-c": True}


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_resume_after_interruption_gives_the_same_file(setup, monkeypatch, suffix):
    tmp, _, _ = setup
    assert _recommend(tmp, f"full.{suffix}", "--chunk-size", "6") == 0

    import recsys.scoring.serving as topk_module  # the serving object scores every chunk

    real = topk_module.topk_chunk
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(topk_module, "topk_chunk", flaky)
    assert _recommend(tmp, f"part.{suffix}", "--chunk-size", "6") == 130
    assert not (tmp / f"part.{suffix}").exists()  # nothing under the final name
    assert _no_leftovers(tmp) == [f".part.{suffix}.partial"]
    # Options that differ from the interrupted run's are refused, not silently mixed.
    assert _recommend(tmp, f"part.{suffix}", "--chunk-size", "6", "--resume", k=4) == 2

    calls["n"] = -100
    assert _recommend(tmp, f"part.{suffix}", "--chunk-size", "6", "--resume") == 0
    assert calls["n"] == -100 + 4  # 7 chunks of 6 users: 3 committed, 4 computed now
    assert (tmp / f"part.{suffix}").read_bytes() == (tmp / f"full.{suffix}").read_bytes()
    assert _no_leftovers(tmp) == []


def test_parquet_row_groups_follow_chunks(setup):
    import pyarrow.parquet as pq

    tmp, _, _ = setup
    assert _recommend(tmp, "o.parquet", "--chunk-size", "10") == 0
    meta = pq.ParquetFile(tmp / "o.parquet").metadata
    assert meta.num_row_groups == 4 and meta.row_group(0).num_rows == 50


@pytest.mark.parametrize("args, message", [
    (["--k", "26"], "larger than the catalogue"),
    (["--k", "0"], "at least 1"),
    (["--users", "MISSING"], "no such file"),
    (["--users", "BAD_INT"], "is not an integer"),
    (["--users", "TWO_COLS"], "expected a 'user' column"),
    (["--histories", "NO_KNOWN"], "none of its items"),
    (["--histories", "NO_ITEM_COL"], "missing column item"),
    (["--allow", "ALLOW_UNKNOWN"], "none of its items"),
    (["--histories", "NO_KNOWN", "--history=all"], "drop one"),
])
def test_bad_input_is_one_line_exit_2_and_no_output(setup, capsys, args, message):
    tmp, _, _ = setup
    (tmp / "BAD_INT").write_text("user\n1003\nabc\n")
    (tmp / "TWO_COLS").write_text("id,name\n1,a\n")
    (tmp / "NO_KNOWN").write_text("user,item\nx,zz\n")
    (tmp / "NO_ITEM_COL").write_text("user,thing\nx,i1\n")
    (tmp / "ALLOW_UNKNOWN").write_text("zz\n")
    args = [a if a.startswith("-") or a.isdigit() else str(tmp / a) for a in args]
    k = ["--k", "5"] if "--k" not in args else []
    code = main(["recommend", str(tmp / "run"), "--data", str(tmp / "data"), *k, *args,
                 "--out", str(tmp / "out.csv")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp / "out.csv").exists() and _no_leftovers(tmp) == []


def test_not_a_run_and_bad_out_suffix(setup, capsys):
    tmp, _, _ = setup
    assert main(["recommend", str(tmp / "data"), "--data", str(tmp / "data"), "--k", "3",
                 "--out", str(tmp / "o.csv")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert _recommend(tmp, "o.json") == 2
    assert "use a .csv or .parquet" in capsys.readouterr().err
    assert not (tmp / "o.csv").exists() and not (tmp / "o.json").exists()


def test_with_titles_adds_each_items_title_and_needs_an_item_list(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.MODELS, "dot", "evaluation.doubles:DotModel")
    data = make_dataset(n_users=12, n_items=9)
    ids = list(data.items.ids)
    # Titles for all items but the last (it gets none), in another order than the vocabulary.
    data.item_info = pd.DataFrame({"item": ids[:-1][::-1],
                                   "title": [f"Movie {i}" for i in ids[:-1][::-1]]})
    data.save(tmp_path / "data")
    save_run(tmp_path / "run", DotModel(seed=1).fit(data.train),
             data_record(tmp_path / "data", data))
    assert _recommend(tmp_path, "t.parquet", "--with-titles", k=9) == 0
    out = _read(tmp_path / "t.parquet")
    assert list(out.columns) == ["user", "item", "rank", "score", "cold", "title"]
    titled = out[out["item"] != str(ids[-1])]
    assert (titled["title"] == "Movie " + titled["item"]).all()
    assert out.loc[out["item"] == str(ids[-1]), "title"].isna().all()
    # The same lists as without titles.
    assert _recommend(tmp_path, "plain.parquet", k=9) == 0
    pd.testing.assert_frame_equal(out.drop(columns="title"), _read(tmp_path / "plain.parquet"))


def test_with_titles_without_an_item_list_is_one_line(setup, capsys):
    tmp, _, _ = setup
    assert _recommend(tmp, "t.csv", "--with-titles") == 2
    err = capsys.readouterr().err
    assert "--with-titles: this prepared data has no item titles" in err and err.count("\n") == 1
    assert not (tmp / "t.csv").exists()

"""`recsys prepare` / `recsys datasets` end to end through `recsys.cli.main`."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.cli import main
from recsys.data.interactions import Dataset
from recsys.data.synthetic import synthetic_ratings, write_ml20m_csv


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def byo(tmp_path):
    train = _csv(tmp_path / "train.csv", "user,item,rating,timestamp\n"
                 "u1,10,5,1\nu1,11,3,2\nu1,12,4,3\nu2,10,4,1\nu2,13,2,5\nu3,11,5,2\n")
    valid = _csv(tmp_path / "valid.csv", "user,item,rating,timestamp\nu1,13,4,6\nu3,10,4,7\n")
    test = _csv(tmp_path / "test.csv", "user,item,rating,timestamp\n"
                "u1,14,5,9\nu2,11,5,9\nu2,12,1,9\nu3,13,4,9\nu9,10,5,9\n")
    return train, valid, test


def test_bring_your_own_split_end_to_end(tmp_path, byo, capsys):
    train, valid, test = byo
    out = tmp_path / "out"
    code = main(["prepare", "--train-file", str(train), "--valid-file", str(valid),
                 "--test-file", str(test), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    ds = Dataset.load(out)
    # Original ids kept; the catalogue is the training items.
    assert ds.users.ids.tolist() == ["u1", "u2", "u3"]
    assert ds.items.ids.tolist() == [10, 11, 12, 13]
    assert ds.train.nnz == 6 and ds.parts["valid"].nnz == 2
    # Test: item 14 never occurs in training and user u9 is unknown -> excluded, counted.
    test_pairs = {(ds.users.ids[u], ds.items.ids[i])
                  for u, i in zip(*ds.parts["test"].matrix.nonzero(), strict=True)}
    assert test_pairs == {("u2", 11), ("u2", 12), ("u3", 13)}
    dropped = ds.meta["dropped"]
    assert dropped["unseen_items"]["test"] == 1  # item 14
    assert dropped["no_history"]["test"] == {"interactions": 1, "users": 1}  # u9
    assert "items unseen in train and valid, excluded from evaluation: test 1" in captured.err
    assert "no history" in captured.err
    assert ds.meta["given_files"]["test"] == str(test)
    assert not ds.implicit and ds.rating_scale == (1.0, 5.0)
    assert "train" in captured.out and "test" in captured.out


def test_bring_your_own_with_threshold_and_mapping(tmp_path):
    train = _csv(tmp_path / "tr.csv", "uid,iid,stars\n1,1,5\n1,2,1\n2,1,4\n2,2,5\n")
    test = _csv(tmp_path / "te.csv", "uid,iid,stars\n1,3,5\n2,3,4\n1,4,2\n")
    test = _csv(tmp_path / "te.csv", "uid,iid,stars\n1,2,5\n2,1,2\n")
    out = tmp_path / "out"
    assert main(["prepare", "--train-file", str(train), "--test-file", str(test),
                 "--columns", "user=uid,item=iid,rating=stars", "--implicit-threshold", "4",
                 "--out", str(out)]) == 0
    ds = Dataset.load(out)
    assert ds.implicit
    # (1, 2) re-rated 5 in test: the later file wins; (2, 1) re-rated 2: not a positive.
    assert ds.train.nnz == 2 and ds.parts["test"].nnz == 1
    assert set(np.unique(ds.train.matrix.data)) == {1.0}


@pytest.mark.parametrize("make, expected", [
    (lambda d: ("missing.csv", d / "test.csv"), "missing.csv: file not found"),
    (lambda d: (_csv(d / "a.csv", "usr,item\n1,2\n"), d / "test.csv"),
     "a.csv: no 'user' column (columns: usr, item)"),
    (lambda d: (_csv(d / "a.csv", "user,item,rating\nu1,2,x\n"), d / "test.csv"),
     "a.csv row 2 column 'rating': 'x' is not a number"),
    (lambda d: (_csv(d / "a.csv", "user,item,rating\nu1,2,nan\n"), d / "test.csv"),
     "a.csv row 2 column 'rating'"),
    (lambda d: (d / "train.csv", _csv(d / "b.csv", "user,item,rating,timestamp\nzz,10,4,1\n")),
     "b.csv: none of its users appear in"),
])
def test_bad_input_exits_2_with_one_line_and_no_output(tmp_path, byo, capsys, make, expected):
    train, test = make(tmp_path)
    out = tmp_path / "out"
    code = main(["prepare", "--train-file", str(train), "--test-file", str(test),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_wrong_delimiter_names_the_right_one(tmp_path, capsys):
    rows = "".join(f"{u};{i};4\n" for u in range(5) for i in range(6))
    path = _csv(tmp_path / "r.csv", "user;item;rating\n" + rows)
    assert main(["prepare", "--input", str(path), "--sep", ",", "--out",
                 str(tmp_path / "o")]) == 2
    assert "the file looks ';'-separated: pass --sep ';'" in capsys.readouterr().err
    # Without --sep the separator is sniffed from the header.
    assert main(["prepare", "--input", str(path), "--split", "loo", "--loo-order", "random",
                 "--out", str(tmp_path / "o")]) == 0


def test_unknown_dataset_suggests_the_closest(tmp_path, capsys):
    assert main(["prepare", "ml-10k", "--out", str(tmp_path / "o")]) == 2
    assert "did you mean 'ml-100k'" in capsys.readouterr().err


def test_out_that_is_not_a_dataset_is_not_replaced(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["prepare", "ml-latest-small", "--out", str(tmp_path)]) == 2
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.realdata
def test_prepare_embedded_default_records_everything(tmp_path, capsys):
    out = tmp_path / "ml"
    assert main(["prepare", "ml-latest-small", "--split", "random", "--implicit-threshold",
                 "4", "--min-user-interactions", "5", "--seed", "1", "--out", str(out)]) == 0
    ds = Dataset.load(out)
    m = ds.meta
    assert m["dataset"] == "ml-latest-small" and m["implicit"] is True
    assert m["rating_scale"] == [0.5, 5.0]
    assert m["source_files"]["ratings.csv"]["sha256"] == \
        "80da8b3393dae325bbba5a31f291a6ba55d8d4f4396de3c456f2c1635b1b70e8"
    assert m["preprocessing"]["implicit_threshold"] == 4.0
    assert m["split"] == {"split": "random", "test_fraction": 0.2, "valid_fraction": 0.1,
                          "seed": 1, "heldout_users": None, "loo_order": "last"}
    assert m["dropped"]["below_threshold"] == 100_836 - 48_580
    assert sum(m["counts"]["interactions"].values()) + sum(m["dropped"]["unseen_items"]
                                                           .values()) \
        + m["dropped"]["min_counts"] == 48_580
    # Item info is aligned with the catalogue.
    assert ds.item_info["item"].tolist() == ds.items.ids.tolist()
    assert ds.item_info.loc[0, "title"] == "Toy Story (1995)"


@pytest.mark.realdata
def test_prepare_ml100k_peer_protocol_via_mirror(mirror, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ml100k"
    assert main(["prepare", "ml-100k", "--mirror", str(mirror), "--split", "random",
                 "--implicit-threshold", "4", "--min-user-interactions", "5", "--seed", "0",
                 "--out", str(out)]) == 0
    ds = Dataset.load(out)
    # ml-100k has 55,375 ratings >= 4; users with >= 5 positives are kept.
    assert ds.meta["dropped"]["below_threshold"] == 100_000 - 55_375
    assert (np.diff((ds.history("test") + ds.parts["test"].matrix).indptr) >= 5).all()
    assert ds.item_info["genres"].str.len().gt(0).all()


@pytest.mark.realdata
def test_prepare_ml100k_canonical_fold(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_MIRROR", str(mirror))
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "u1"
    assert main(["prepare", "ml-100k", "--split", "ml100k-u1", "--out", str(out)]) == 0
    ds = Dataset.load(out)
    # u1.base is train + the validation carved from it (10% by default), never u1.test.
    unseen = ds.meta["dropped"]["unseen_items"]
    assert ds.train.nnz + ds.parts["valid"].nnz + unseen["valid"] == 80_000
    assert ds.parts["test"].nnz + unseen["test"] == 20_000
    assert not ds.implicit
    out0 = tmp_path / "u1-novalid"
    assert main(["prepare", "ml-100k", "--split", "ml100k-u1", "--valid-fraction", "0",
                 "--out", str(out0)]) == 0
    assert Dataset.load(out0).train.nnz == 80_000


def test_prepare_input_file_every_split(tmp_path):
    data = synthetic_ratings(300, 200, 9_000, min_per_user=5, seed=0)
    path = write_ml20m_csv(tmp_path / "ratings.csv", data)
    for split in ("random", "temporal-global", "temporal-user", "loo", "strong"):
        out = tmp_path / split
        assert main(["prepare", "--input", str(path), "--split", split, "--implicit-threshold",
                     "3.5", "--out", str(out), "--quiet"]) == 0, split
        ds = Dataset.load(out)
        assert ds.has("test") and ds.meta["split"]["split"] == split


def test_datasets_lists_the_registry(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("ml-latest-small", "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m",
                 "ml-latest"):
        assert name in out
    assert "embedded" in out


def test_synthetic_skew_and_format(tmp_path):
    data = synthetic_ratings(2_000, 1_500, 100_000, seed=3)
    assert abs(len(data) - 100_000) < 2_000
    pairs = data.user.astype(np.int64) * 10_000 + data.item
    assert len(np.unique(pairs)) == len(data)
    per_item = np.sort(np.bincount(data.item))[::-1]
    per_user = np.bincount(data.user)[1:]
    # Power-law popularity: the top 10% of items hold far more than 10% of the ratings.
    assert per_item[: len(per_item) // 10].sum() > 0.35 * len(data)
    # Log-normal activity: a long right tail (mean well above median), floor respected.
    assert per_user.min() >= 20 and per_user.mean() > 1.2 * np.median(per_user)
    assert 0.4 < (data.rating >= 4).mean() < 0.6
    path = write_ml20m_csv(tmp_path / "ratings.csv", data)
    head = path.read_text().splitlines()[:2]
    assert head[0] == "userId,movieId,rating,timestamp"
    frame = pd.read_csv(path)
    assert len(frame) == len(data) and frame["rating"].isin(np.arange(0.5, 5.5, 0.5)).all()
    assert synthetic_ratings(2_000, 1_500, 100_000, seed=3).item.tolist() == data.item.tolist()


def test_own_training_file_gets_a_validation_carve(tmp_path, byo, capsys):
    data = synthetic_ratings(60, 40, 1_500, min_per_user=10, seed=2)
    frame = pd.DataFrame({"user": data.user, "item": data.item, "rating": data.rating,
                          "timestamp": data.timestamp})
    test = frame.groupby("user").tail(2)
    frame.drop(test.index).to_csv(tmp_path / "tr.csv", index=False)
    test.to_csv(tmp_path / "te.csv", index=False)
    files = ["--train-file", str(tmp_path / "tr.csv"), "--test-file", str(tmp_path / "te.csv")]
    assert main(["prepare", *files, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "valid: 10% of each user's training interactions (seed 0)" in out
    a = Dataset.load(tmp_path / "a")
    valid, train = a.parts["valid"].matrix, a.train.matrix
    assert valid.multiply(train).nnz == 0 and valid.multiply(a.parts["test"].matrix).nnz == 0
    assert abs(valid.nnz / (valid.nnz + train.nnz) - 0.1) < 0.02
    assert a.meta["split"]["valid_fraction"] == 0.1 and a.meta["split"]["split"] == "given"
    # The seed picks the carve; --valid-fraction 0 keeps the training file whole.
    assert main(["prepare", *files, "--seed", "1", "--quiet", "--out", str(tmp_path / "b")]) == 0
    b = Dataset.load(tmp_path / "b")
    assert (b.parts["valid"].matrix != valid).nnz > 0
    assert main(["prepare", *files, "--valid-fraction", "0", "--out", str(tmp_path / "c")]) == 0
    assert "valid: none" in capsys.readouterr().out
    c = Dataset.load(tmp_path / "c")
    assert not c.has("valid") and c.train.nnz == train.nnz + valid.nnz
    # A validation file is used as it is, and said so.
    train_f, valid_f, test_f = byo
    assert main(["prepare", "--train-file", str(train_f), "--valid-file", str(valid_f),
                 "--test-file", str(test_f), "--out", str(tmp_path / "d")]) == 0
    assert f"valid: from {valid_f}" in capsys.readouterr().out


def test_quiet_prints_nothing_but_notes(tmp_path, byo, capsys):
    train, valid, test = byo
    assert main(["prepare", "--train-file", str(train), "--valid-file", str(valid),
                 "--test-file", str(test), "--quiet", "--out", str(tmp_path / "q")]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "note: interactions with items unseen in train and valid" in captured.err
    assert Dataset.load(tmp_path / "q").has("test")


def test_split_none_summary_and_metadata(tmp_path, capsys):
    path = write_ml20m_csv(tmp_path / "r.csv", synthetic_ratings(80, 60, 2_000, seed=4))
    assert main(["prepare", "--input", str(path), "--split", "none", "--out",
                 str(tmp_path / "n")]) == 0
    out = capsys.readouterr().out
    ds = Dataset.load(tmp_path / "n")
    assert set(ds.parts) == {"train", "valid"} and ds.meta["split"]["split"] == "none"
    assert "valid: 10% of each user's training interactions (seed 0)" in out
    assert [ln.split()[0] for ln in out.splitlines()[1:3]] == ["train", "valid"]


@pytest.mark.realdata
def test_own_fold_files_match_the_canonical_fold(mirror, tmp_path, monkeypatch):
    """u1.base/u1.test as bring-your-own files: the same parts as --split ml100k-u1, carve
    included."""
    monkeypatch.setenv("RECSYS_MIRROR", str(mirror))
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path / "cache"))
    assert main(["prepare", "ml-100k", "--split", "ml100k-u1", "--quiet", "--out",
                 str(tmp_path / "fold")]) == 0
    names = ["user", "item", "rating", "timestamp"]
    for part in ("base", "test"):
        pd.read_csv(tmp_path / "cache" / "ml-100k" / f"u1.{part}", sep="\t", names=names
                    ).to_csv(tmp_path / f"u1.{part}.csv", index=False)
    assert main(["prepare", "--train-file", str(tmp_path / "u1.base.csv"), "--test-file",
                 str(tmp_path / "u1.test.csv"), "--quiet", "--out", str(tmp_path / "own")]) == 0
    fold, own = Dataset.load(tmp_path / "fold"), Dataset.load(tmp_path / "own")
    assert fold.users.ids.tolist() == own.users.ids.tolist()
    assert fold.items.ids.tolist() == own.items.ids.tolist()
    for part in ("train", "valid", "test"):
        assert (fold.parts[part].matrix != own.parts[part].matrix).nnz == 0, part

"""Side information: encoding of feature tables, `prepare`'s feature flags and MovieLens files,
storage in the prepared dataset (digest, old folders), and the errors a user can cause."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.data.features import Features, FeatureTable, apply_encoding, encode_features
from recsys.data.interactions import Dataset, Vocabulary
from recsys.data.io import sha256_file
from recsys.errors import RecsysError
from tests.reliability.helpers import assert_one_line_error, cli, write_ratings


def _encode(frame: pd.DataFrame, ids=(1, 2, 3, 4), side: str = "user"):
    return encode_features(frame, Vocabulary(np.array(ids)), side=side, source="f.csv")


def test_numbers_are_standardised_text_one_hot_and_multi_values_split():
    frame = pd.DataFrame({"user": ["1", "2", "3", "4"], "age": ["20", "30", "40", ""],
                          "sex": ["F", "M", "F", "M"], "tags": ["a|b", "b", "", "c|a"]})
    enc = _encode(frame)
    t = enc.table
    assert t.columns == ("age", "sex=F", "sex=M", "tags=a", "tags=b", "tags=c")
    age = t.values[:, 0]
    # mean 30 and population std of (20, 30, 40) over the rows that have an age; missing: 0
    np.testing.assert_allclose(age, [-np.sqrt(1.5), 0.0, np.sqrt(1.5), 0.0], rtol=1e-6)
    np.testing.assert_array_equal(t.values[:, 1:3], [[1, 0], [0, 1], [1, 0], [0, 1]])
    np.testing.assert_array_equal(t.values[:, 3:], [[1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]])
    assert t.values.dtype == np.float32
    assert enc.record["encoding"][0] == {"column": "age", "kind": "numeric", "mean": 30.0,
                                         "std": pytest.approx(np.std([20, 30, 40]))}


def test_rows_follow_the_vocabulary_unknown_ids_are_ignored_and_missing_ids_get_zeros():
    frame = pd.DataFrame({"user": ["3", "99", "1"], "kind": ["x", "y", "y"]})
    enc = _encode(frame, ids=(1, 2, 3))
    np.testing.assert_array_equal(enc.table.values, [[0, 1], [0, 0], [1, 0]])
    # "y" is still a category (seen on a kept row), the unknown id 99 is dropped and counted
    assert enc.record["unknown_ids_ignored"] == 1
    assert enc.record["ids_without_features"] == 1
    assert len(enc.notes) == 2 and "1 feature rows" in enc.notes[0] and "1 of 3" in enc.notes[1]


def test_text_ids_and_parquet_kinds(tmp_path):
    frame = pd.DataFrame({"item": ["b", "a"], "price": [2.0, 4.0], "flag": [True, False],
                          "labels": [["p", "q"], ["q"]]})
    enc = encode_features(frame, Vocabulary(np.array(["a", "b"], dtype=object)), side="item",
                          source="f.parquet")
    assert enc.table.columns == ("price", "flag=False", "flag=True", "labels=p", "labels=q")
    np.testing.assert_allclose(enc.table.values, [[1, 1, 0, 0, 1], [-1, 0, 1, 1, 1]])


def test_the_recorded_encoding_encodes_new_rows_alike():
    frame = pd.DataFrame({"user": ["1", "2"], "age": ["20", "40"], "sex": ["F", "M"]})
    enc = _encode(frame, ids=(1, 2))
    new = pd.DataFrame({"user": ["7"], "age": ["30"], "sex": ["X"]})  # an unseen category
    np.testing.assert_allclose(apply_encoding(new, enc.record["encoding"], source="n.csv"),
                               [[0.0, 0.0, 0.0]])
    with pytest.raises(RecsysError, match="no column 'sex'"):
        apply_encoding(new[["user", "age"]], enc.record["encoding"], source="n.csv")


@pytest.mark.parametrize(("values", "match"), [
    (["2020-01-01", "2021-05-03"], "dates"),
    ([f"t{i}" for i in range(1001)], "1,001 distinct text values"),
])
def test_a_column_neither_numeric_nor_categorical_is_refused_naming_it(values, match):
    frame = pd.DataFrame({"user": [str(i) for i in range(len(values))], "bad": values})
    with pytest.raises(RecsysError, match=f"f.csv: column 'bad'.*{match}"):
        _encode(frame, ids=tuple(range(len(values))))


def test_repeated_ids_are_refused():
    frame = pd.DataFrame({"user": ["1", "1"], "sex": ["F", "M"]})
    with pytest.raises(RecsysError, match="user id 1 appears on 2 rows"):
        _encode(frame)


# -- through `recsys prepare` -----------------------------------------------------------------


def _prepare(tmp_path: Path, capsys, *extra: str, out: str = "prep"):
    ratings = write_ratings(tmp_path / "ratings.csv")
    return cli(["prepare", "--input", ratings, "--implicit-threshold", "4", *extra,
                "--out", tmp_path / out], capsys)


def test_prepare_stores_the_features_and_their_digest_and_load_gives_them_back(tmp_path, capsys):
    users = tmp_path / "users.csv"
    # user 1000 is unknown; users 1..60 exist (write_ratings), user 60 has no row
    users.write_text("user,age,job\n" + "".join(f"{u},{20 + u % 7},{'ab'[u % 2]}\n"
                                                 for u in [*range(1, 60), 1000]))
    items = tmp_path / "items.parquet"
    pd.DataFrame({"item": np.arange(101, 141), "genres": ["x|y", "y"] * 20}).to_parquet(items)
    r = _prepare(tmp_path, capsys, "--user-features", users, "--item-features", items)
    assert r.code == 0, r.err
    assert "1 feature rows name users the data does not have" in r.err
    ds = Dataset.load(tmp_path / "prep")
    u = ds.features.user
    assert u.columns == ("age", "job=a", "job=b")
    assert u.values.shape == (len(ds.users), 3)
    row60 = int(ds.users.index([60])[0])
    assert not u.values[row60].any()  # no feature row: zero vector
    row7 = int(ds.users.index([7])[0])
    assert u.values[row7, 1:].tolist() == [0.0, 1.0]  # 7 % 2 = 1 -> 'b'
    assert ds.features.item.columns == ("genres=x", "genres=y")
    meta = json.loads((tmp_path / "prep" / "metadata.json").read_text())
    assert meta["features"]["user"]["sha256"] == u.digest()
    assert meta["features"]["user"]["source_sha256"] == sha256_file(users)
    assert meta["features"]["user"]["unknown_ids_ignored"] == 1
    assert meta["features"]["user"]["ids_without_features"] == 1
    # other features, other metadata: the prepared data's digest covers them
    users.write_text("user,age\n" + "".join(f"{u},{u}\n" for u in range(1, 61)))
    assert _prepare(tmp_path, capsys, "--user-features", users, out="other").code == 0
    assert (sha256_file(tmp_path / "other" / "metadata.json")
            != sha256_file(tmp_path / "prep" / "metadata.json"))


def test_data_without_features_is_written_and_read_as_before(tmp_path, capsys):
    assert _prepare(tmp_path, capsys).code == 0
    folder = tmp_path / "prep"
    meta = json.loads((folder / "metadata.json").read_text())
    assert "features" not in meta
    assert not any(p.name.endswith("_features.npy") for p in folder.iterdir())
    ds = Dataset.load(folder)
    assert not ds.features and ds.features == Features()
    # Saving it again (what an older recsys wrote) gives the same metadata, byte for byte.
    before = (folder / "metadata.json").read_bytes()
    ds.save(tmp_path / "again")
    assert (tmp_path / "again" / "metadata.json").read_bytes() == before


def test_a_damaged_feature_file_of_a_prepared_dataset_is_refused(tmp_path, capsys):
    users = tmp_path / "users.csv"
    users.write_text("user,sex\n" + "".join(f"{u},{'FM'[u % 2]}\n" for u in range(1, 61)))
    assert _prepare(tmp_path, capsys, "--user-features", users).code == 0
    path = tmp_path / "prep" / "user_features.npy"
    values = np.load(path)
    values[0, 0] = 5.0
    np.save(path, values)
    with pytest.raises(RecsysError, match="user_features.npy: does not match"):
        Dataset.load(tmp_path / "prep")


@pytest.mark.parametrize(("content", "match"), [
    (b"user,sex\n1,F\n2,\"M\n", "cannot parse the feature file"),
    (b"user\n1\n2\n", "at least one feature column"),
    (b"user,when\n1,2020-01-01\n2,2020-02-01\n", "column 'when': holds dates"),
])
def test_bad_feature_files_end_in_one_line_and_write_nothing(tmp_path, capsys, content, match):
    bad = tmp_path / "users.csv"
    bad.write_bytes(content)
    r = _prepare(tmp_path, capsys, "--user-features", bad)
    assert_one_line_error(r, match)
    assert str(bad) in r.err
    assert not (tmp_path / "prep").exists()


def test_a_missing_feature_file_is_named(tmp_path, capsys):
    r = _prepare(tmp_path, capsys, "--item-features", tmp_path / "nope.csv")
    assert_one_line_error(r, "--item-features")
    assert "nope.csv: file not found" in r.err


def test_movielens_100k_files_give_genres_year_age_gender_occupation(tmp_path, capsys):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    rng = np.random.default_rng(0)
    lines = [f"{u}\t{i}\t{rng.integers(1, 6)}\t{880000000 + u * 100 + i}"
             for u in range(1, 21) for i in range(1, 16) if (u + i) % 3]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    flags = ["0"] * 19
    movies = []
    for i in range(1, 16):
        f = list(flags)
        f[1 + i % 3] = "1"
        f[5] = "1" if i % 2 else "0"
        movies.append(f"{i}|Movie {i} ({1980 + i})|01-Jan-{1980 + i}||http://x|" + "|".join(f))
    (folder / "u.item").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    (folder / "u.user").write_text("".join(
        f"{u}|{18 + u}|{'MF'[u % 2]}|{['writer', 'doctor', 'artist'][u % 3]}|0{u}\n"
        for u in range(1, 21)))
    r = cli(["prepare", "ml-100k", "--path", folder, "--out", tmp_path / "prep"], capsys)
    assert r.code == 0, r.err
    ds = Dataset.load(tmp_path / "prep")
    assert ds.features.user.columns == ("age", "gender=F", "gender=M", "occupation=artist",
                                        "occupation=doctor", "occupation=writer")
    assert ds.features.item.columns == ("genres=Action", "genres=Adventure", "genres=Animation",
                                        "genres=Comedy", "year")
    row = int(ds.items.index([3])[0])  # 3 % 3 = 0 -> Action; odd -> Comedy; year 1983
    item = dict(zip(ds.features.item.columns, ds.features.item.values[row], strict=True))
    years = np.arange(1981, 1996)
    assert item["genres=Action"] == 1 and item["genres=Comedy"] == 1
    assert item["year"] == pytest.approx((1983 - years.mean()) / years.std(), rel=1e-5)
    # --user-features replaces the set's own user features
    own = tmp_path / "mine.csv"
    own.write_text("user,score\n" + "".join(f"{u},{u}\n" for u in range(1, 21)))
    r = cli(["prepare", "ml-100k", "--path", folder, "--user-features", own,
             "--out", tmp_path / "mine"], capsys)
    assert r.code == 0, r.err
    mine = Dataset.load(tmp_path / "mine")
    assert mine.features.user.columns == ("score",)
    assert mine.features.item.columns == ds.features.item.columns


def test_feature_table_checks_its_shape():
    with pytest.raises(ValueError):
        FeatureTable(np.zeros((3, 2), np.float32), ("a",))

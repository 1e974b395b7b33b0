"""Generic rating logs (CSV/TSV/Parquet, column mapping, bad input) and preprocessing."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.data.preprocess import PreprocessOptions, preprocess
from recsys.data.readers import parse_column_mapping, read_rating_log
from recsys.errors import RecsysError


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def test_csv_with_usual_names(tmp_path):
    log = read_rating_log(_write(tmp_path / "r.csv",
                                 "userId,movieId,rating,timestamp\n1,10,4.5,100\n2,11,3,200\n"))
    assert log.user.tolist() == [1, 2] and log.item.tolist() == [10, 11]
    assert log.rating.dtype == np.float32 and log.rating.tolist() == [4.5, 3.0]
    assert log.timestamp.tolist() == [100, 200]
    assert len(log.sha256) == 64 and log.rows_read == 2


def test_tsv_and_column_mapping_and_string_ids(tmp_path):
    path = _write(tmp_path / "r.tsv", "uid\tiid\tscore\nalice\tx1\t5\nbob\tx2\t1\n")
    log = read_rating_log(path, columns=parse_column_mapping("user=uid,item=iid,rating=score"))
    assert log.user.tolist() == ["alice", "bob"] and log.item.tolist() == ["x1", "x2"]
    assert log.rating.tolist() == [5.0, 1.0] and log.timestamp is None


def test_parquet_and_date_timestamps(tmp_path):
    frame = pd.DataFrame({"user": [3, 4], "item": [7, 8], "rating": [1.0, 2.0],
                          "timestamp": pd.to_datetime(["2020-01-01", "2020-01-02"])})
    frame.to_parquet(tmp_path / "r.parquet")
    log = read_rating_log(tmp_path / "r.parquet")
    assert log.user.tolist() == [3, 4]
    assert log.timestamp.tolist() == [1577836800, 1577923200]


def test_headerless_dat_format(tmp_path):
    path = _write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    log = read_rating_log(path, sep=":", names=["user", "_1", "item", "_2", "rating", "_3",
                                                "timestamp"])
    assert log.item.tolist() == [1193, 661] and log.timestamp.tolist() == [978300760, 978302109]


def test_negative_ids_are_kept_with_a_note(tmp_path):
    log = read_rating_log(_write(tmp_path / "r.csv", "user,item\n-1,5\n2,-7\n"))
    assert log.user.tolist() == [-1, 2] and log.item.tolist() == [5, -7]
    assert any("negative ids" in n for n in log.notes)


def test_rows_with_missing_values_are_dropped_and_counted(tmp_path):
    log = read_rating_log(_write(tmp_path / "r.csv", "user,item,rating\n1,2,3\n2,,4\n,3,1\n3,4,\n"
                                                     "4,5,2\n"))
    assert log.user.tolist() == [1, 4] and log.missing_dropped == 3


@pytest.mark.parametrize("content, expected", [
    ("user,item,rating\n1,2,4\n2,3,abc\n", r"r.csv row 3 column 'rating': 'abc' is not a number"),
    ("user,item,rating\n1,2,4\n2,3,NaN\n", r"r.csv row 3 column 'rating': nan"),
    ("usr,item\n1,2\n", r"no 'user' column \(columns: usr, item\).*--columns user=NAME"),
    ("user;item;rating\n1;2;3\n", r"delimiter is wrong.*';'-separated: pass --sep ';'"),
    ("user,item,rating\n1,2,3\n4,5\n", r"differing numbers of fields"),
    (b"user,item\n1,2\n\xff\xfe,3\n", r"r.csv row 3: bytes that are not UTF-8"),
    ("user,item,rating\n", r"no rating rows"),
    ("", r"the file is empty"),
    ("user,item,rating\n1.5,2,3\n", r"column 'user': ids are fractional"),
])
def test_bad_files_are_one_clear_line(tmp_path, content, expected):
    path = _write(tmp_path / "r.csv", content)
    with pytest.raises(RecsysError, match=expected) as info:
        read_rating_log(path, sep="," if "sep" not in expected else ",")
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_mapping(tmp_path):
    with pytest.raises(RecsysError, match="nope.csv: file not found"):
        read_rating_log(tmp_path / "nope.csv")
    with pytest.raises(RecsysError, match="unknown field 'itme'.*'item'"):
        parse_column_mapping("itme=x")
    path = _write(tmp_path / "r.csv", "a,b\n1,2\n")
    with pytest.raises(RecsysError, match="no column 'uid' \\(mapped to user"):
        read_rating_log(path, columns={"user": "uid"})


# -- preprocessing ---------------------------------------------------------------------------


def _pre(user, item, rating=None, ts=None, **kw):
    arr = np.asarray
    return preprocess(arr(user), arr(item), None if rating is None else arr(rating, np.float32),
                      None if ts is None else arr(ts), PreprocessOptions(**kw))


def test_duplicates_keep_latest_by_time_then_by_position():
    data, report = _pre([1, 1, 1, 2, 2], [5, 5, 6, 5, 5], [1, 4, 3, 2, 5], [20, 10, 1, 7, 7])
    pairs = {(data.user_ids[u], data.item_ids[i]): r
             for u, i, r in zip(data.user, data.item, data.rating, strict=True)}
    # (1, 5): the rating at t=20 wins; (2, 5): a tie in time, the later row wins.
    assert pairs == {(1, 5): 1.0, (1, 6): 3.0, (2, 5): 5.0}
    assert report["duplicates_dropped"] == 2
    # Output is in CSR order: sorted by user, then item.
    assert list(zip(data.user, data.item, strict=True)) == sorted(zip(data.user, data.item,
                                                                      strict=True))


def test_threshold_applies_to_the_latest_rating():
    data, report = _pre([1, 1, 1, 2], [5, 5, 6, 5], [5, 2, 4, 3], [1, 2, 3, 4],
                        implicit_threshold=4)
    # (1, 5) was re-rated 2 later: not a positive. (2, 5) is 3: below.
    assert data.item_ids[data.item].tolist() == [6] and data.rating.tolist() == [1.0]
    assert report["below_threshold_dropped"] == 2 and report["rating_scale"] == [2.0, 5.0]


def test_min_counts_single_pass_and_kcore():
    # Users A, B, D rate items 2, 3, 5; A, B and C rate item 1; only C rates item 4.
    user = ["A"] * 4 + ["B"] * 4 + ["D"] * 3 + ["C"] * 2
    item = [1, 2, 3, 5, 1, 2, 3, 5, 2, 3, 5, 1, 4]
    # One pass: item 4 (1 rating) goes, then user C (1 left); item 1 keeps 2 (< 3) ratings.
    data, report = _pre(user, item, min_user_interactions=2, min_item_interactions=3)
    assert data.user_ids.tolist() == ["A", "B", "D"] and data.item_ids.tolist() == [1, 2, 3, 5]
    assert report["min_count_dropped"] == 2
    # k-core repeats until both hold: item 1 goes too.
    data, report = _pre(user, item, min_user_interactions=2, min_item_interactions=3,
                        kcore=True)
    assert data.item_ids.tolist() == [2, 3, 5] and len(data) == 9
    assert report["min_count_dropped"] == 4


def test_kcore_reaches_a_fixed_point():
    rng = np.random.default_rng(0)
    user, item = rng.integers(0, 300, 4000), rng.zipf(1.5, 4000) % 500
    data, report = _pre(user, item, min_user_interactions=5, min_item_interactions=5, kcore=True)
    assert (np.bincount(data.user) >= 5).all() and (np.bincount(data.item) >= 5).all()
    assert report["kcore_rounds"] >= 2


def test_empty_after_filtering_is_an_error():
    with pytest.raises(RecsysError, match="nothing is left after filtering"):
        _pre([1, 2], [3, 4], min_user_interactions=5)
    with pytest.raises(RecsysError, match="no rating is >= the implicit threshold 9"):
        _pre([1, 2], [3, 4], [1, 2], implicit_threshold=9)


def test_string_and_sparse_integer_ids_are_coded_in_sorted_order():
    data, _ = _pre(["b", "a", "c"], [10**12, 5, -3])
    assert data.user_ids.tolist() == ["a", "b", "c"]
    assert data.item_ids.tolist() == [-3, 5, 10**12]


def _big_log(tmp_path: Path, last_rows: str) -> Path:
    """A CSV longer than one parser block (4 MiB), so types come from the first block only."""
    rows = np.arange(400_000)
    body = "\n".join(f"{u},{i},4" for u, i in zip(rows % 5000, rows % 777, strict=True))
    return _write(tmp_path / "big.csv", "user,item,rating\n" + body + "\n" + last_rows)


def test_ids_that_turn_to_text_after_the_first_block(tmp_path):
    log = read_rating_log(_big_log(tmp_path, "alice,x9,5\n"))
    assert len(log) == 400_001
    assert log.user[-1] == "alice" and log.item[-1] == "x9" and log.user[0] == "0"


def test_row_numbers_are_exact_in_later_blocks(tmp_path):
    with pytest.raises(RecsysError, match=r"big.csv row 400003 column 'rating': nan"):
        read_rating_log(_big_log(tmp_path, "1,2,3\n1,3,nan\n"))
    with pytest.raises(RecsysError, match=r"big.csv row 400002 column 'rating': 'bad'"):
        read_rating_log(_big_log(tmp_path, "1,2,bad\n"))


def test_threshold_while_reading_matches_threshold_after(tmp_path):
    path = _big_log(tmp_path, "")
    text = path.read_text().replace(",4\n1", ",2\n1")  # some ratings below the threshold
    path.write_text(text)
    full = read_rating_log(path)
    pre = read_rating_log(path, min_rating=3)
    keep = full.rating >= 3
    assert pre.rating is None and pre.threshold_applied == 3
    assert pre.below_threshold_dropped == int((~keep).sum()) > 0
    assert np.array_equal(pre.user, full.user[keep]) and pre.rating_range == [2.0, 4.0]


@pytest.mark.parametrize("ids, expected", [
    (["1", "22", "-3", "0"], [1, 22, -3, 0]),  # plain integers: stored as int64
    (["007", "7"], ["007", "7"]),  # padded: text, two ids
    (["+7", "7"], ["+7", "7"]),  # signed: text
    (["-0", "0"], ["-0", "0"]),
    ([" 7", "8 "], [7, 8]),  # surrounding spaces are not part of an id
    (["7.0", "1e3"], [7, 1000]),  # integers written as floats (spreadsheet exports)
    (["7.5", "alice"], ["7.5", "alice"]),  # a text column keeps any spelling
    (["99999999999999999999991", "1"], ["99999999999999999999991", "1"]),  # beyond int64
])
def test_id_spelling_rule(tmp_path, ids, expected):
    rows = "".join(f"{u},{i},3\n" for i, u in enumerate(ids))
    log = read_rating_log(_write(tmp_path / "r.csv", "user,item,rating\n" + rows))
    assert log.user.tolist() == expected
    assert (log.user.dtype.kind in "iu") == all(isinstance(v, int) for v in expected)


def test_id_rule_holds_for_the_whole_column_across_blocks(tmp_path):
    # The parser reads 4 MB blocks: a padded id far down the file turns the earlier plain
    # integers to text too (spelt as written), so 7 and 007 stay apart.
    rows = "".join(f"{u % 1000 + 1},{u % 50 + 1},3\n" for u in range(600_000)) + "007,1,3\n"
    log = read_rating_log(_write(tmp_path / "r.csv", "user,item,rating\n" + rows))
    assert log.user.dtype == object and log.user[-1] == "007" and log.user[6] == "7"
    assert log.item.dtype.kind == "i"


def test_parquet_text_ids_and_zoned_times(tmp_path):
    frame = pd.DataFrame({"user": ["007", "7"], "item": ["1", "2"], "rating": [1.0, 2.0],
                          "timestamp": pd.to_datetime(["2020-01-01 12:00+02:00",
                                                       "2020-01-01 10:00Z"], format="ISO8601",
                                                      utc=True)})
    frame.to_parquet(tmp_path / "r.parquet")
    log = read_rating_log(tmp_path / "r.parquet")
    assert log.user.tolist() == ["007", "7"] and log.item.tolist() == [1, 2]
    assert log.timestamp.tolist() == [1577872800, 1577872800]

"""Inputs read by one rule (issue 16, items 4 and 5, and the input half of "one line, not a
traceback"):

* ids are kept as written: ``007`` and ``7`` are two users, ``01`` and ``1`` two items, over
  --input, over --train-file/--test-file together, and in the id files of recommend/predict;
* every timestamp format lands at its epoch second, so temporal splits order by time; a column
  mixing numbers and dates (or seconds and milliseconds) is refused naming the row;
* compressed CSVs are read; ratings far off the scale get a note;
* the input errors a user can cause are one line on stderr, exit 2, naming the file, row or key,
  with nothing written;
* a mirror zip is checked before it is expanded, and one that would expand too far is refused.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import socket
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from data.test_movielens import _nothing_extracted, _zip

from recsys.data import movielens as ml
from recsys.data.interactions import Dataset
from recsys.data.readers import read_rating_log
from reliability.conftest import World
from reliability.helpers import assert_one_line_error, cli, snapshot

HEADER = "user,item,rating,timestamp\n"


def base_rows(users: range = range(1, 21), items: range = range(1, 16)) -> str:
    """Plain integer ids; user u rates every item i with (u + i) % 4 != 0 (so user 7 has not
    rated items 1, 5, 9 and 13, which others have)."""
    return "".join(f"{u},{i},{(u * i) % 5 + 1},{u * 100 + i}\n"
                   for u in users for i in items if (u + i) % 4)


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _ok(argv: list[Any], capsys) -> str:
    result = cli(argv, capsys)
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    return result.err


def _row(ds: Dataset, part: str, user: str) -> dict[str, float]:
    """{item id: rating} of ``user`` in ``part`` (ids as the dataset stores them)."""
    matrix = ds.parts[part].matrix
    u = int(ds.users.index(np.array([user], dtype=object))[0])
    assert u >= 0, f"user {user!r} is not in the dataset"
    row = matrix[u]
    return dict(zip(ds.items.lookup(row.indices).tolist(), row.data.tolist(), strict=True))


# -- ids -------------------------------------------------------------------------------------


def test_padded_ids_in_one_file_are_other_users_and_items(tmp_path, capsys):
    # 007 rates items 2, 3, 4; user 7 (from base_rows) rates other items with other ratings;
    # item 01 is rated by users 1 and 2, item 1 by many.
    padded = "007,2,5,1\n007,3,4,2\n007,4,3,3\n1,01,2,4\n2,01,1,5\n"
    path = _write(tmp_path / "r.csv", HEADER + base_rows() + padded)
    _ok(["prepare", "--input", path, "--split", "none", "--valid-fraction", "0", "--out",
         tmp_path / "d", "--quiet"], capsys)
    ds = Dataset.load(tmp_path / "d")
    assert not ds.users.is_integer and not ds.items.is_integer  # one text id: all are text
    assert {"7", "007"} <= set(ds.users.ids) and {"1", "01"} <= set(ds.items.ids)
    assert ds.meta["dropped"]["duplicates"] == 0  # merged, 007's rows would be duplicates of 7's
    assert _row(ds, "train", "007") == {"2": 5.0, "3": 4.0, "4": 3.0}
    expected_7 = {str(i): float((7 * i) % 5 + 1) for i in range(1, 16) if (7 + i) % 4}
    assert _row(ds, "train", "7") == expected_7
    assert _row(ds, "train", "1")["01"] == 2.0 and _row(ds, "train", "1")["1"] == 2.0


def test_padded_ids_over_train_and_test_files_stay_with_their_user(tmp_path, capsys):
    # The train file has a text id (007), the test file looks all-numeric: read alone it would
    # be integers, and 007's test rows would land on user 7.
    train = _write(tmp_path / "train.csv", HEADER + base_rows() + "007,2,5,1\n007,3,4,2\n")
    test = _write(tmp_path / "test.csv", HEADER + "007,9,5,3000\n007,13,4,3001\n"
                                                  "7,1,3,3002\n7,5,2,3003\n")
    _ok(["prepare", "--train-file", train, "--test-file", test, "--out", tmp_path / "d",
         "--quiet"], capsys)
    ds = Dataset.load(tmp_path / "d")
    assert not ds.users.is_integer and ds.items.is_integer  # the rule holds per column
    assert _row(ds, "test", "007") == {9: 5.0, 13: 4.0}
    assert _row(ds, "test", "7") == {1: 3.0, 5: 2.0}
    known_007 = {**_row(ds, "train", "007"),
                 **(_row(ds, "valid", "007") if "valid" in ds.parts else {})}
    assert known_007 == {2: 5.0, 3: 4.0}


def test_a_padded_id_only_in_the_test_file_is_a_new_user_not_user_7(tmp_path, capsys):
    train = _write(tmp_path / "train.csv", HEADER + base_rows())
    test = _write(tmp_path / "test.csv", HEADER + "007,9,5,3000\n7,1,3,3002\n7,5,2,3003\n")
    _ok(["prepare", "--train-file", train, "--test-file", test, "--out", tmp_path / "d",
         "--quiet"], capsys)
    ds = Dataset.load(tmp_path / "d")
    assert not ds.users.is_integer  # the test file's 007 makes the user ids text in both files
    assert _row(ds, "test", "7") == {1: 3.0, 5: 2.0}
    # 007 has no history to be scored from: dropped and counted, never given to user 7.
    assert "007" not in set(ds.users.ids)
    assert ds.meta["dropped"]["no_history"]["test"] == {"users": 1, "interactions": 1}


def test_recommend_users_file_matches_padded_ids_as_written(tmp_path, capsys):
    # 007 has rated the three most popular items (rated by everyone here), user 7 none of them:
    # the two lists differ exactly by what each has seen.
    top = "".join(f"{u},{i},4,{u}\n" for u in range(1, 21) for i in (901, 902, 903))
    rows = HEADER + base_rows() + top.replace("\n7,", "\nx,") + \
        "007,901,5,1\n007,902,5,2\n007,903,5,3\n007,2,5,4\n"
    path = _write(tmp_path / "r.csv", rows)
    _ok(["prepare", "--input", path, "--split", "none", "--valid-fraction", "0", "--out",
         tmp_path / "d", "--quiet"], capsys)
    _ok(["train", "pop", "--data", tmp_path / "d", "--out", tmp_path / "run", "--no-track",
         "--quiet"], capsys)
    users = _write(tmp_path / "users.csv", "user\n007\n7\n")
    out = tmp_path / "top.csv"
    _ok(["recommend", tmp_path / "run", "--data", tmp_path / "d", "--users", users, "--k", "3",
         "--out", out, "--device", "cpu", "--quiet"], capsys)
    lists = pd.read_csv(out, dtype={"user": str, "item": str})
    assert sorted(lists["user"].unique()) == ["007", "7"] and not lists["cold"].any()
    mine = lists.groupby("user")["item"].apply(list).to_dict()
    assert mine["7"] == ["901", "902", "903"]  # the most popular, unseen by user 7
    assert not {"901", "902", "903"} & set(mine["007"])  # seen by 007


def test_new_users_histories_keep_padded_ids(world: World, tmp_path, capsys):
    # New users named 007 and 7 in a --histories file are two users in the lists.
    histories = _write(tmp_path / "h.csv", "user,item\n007,101\n007,102\n7,103\n")
    out = tmp_path / "top.csv"
    _ok(["recommend", world.run_ease, "--data", world.data, "--histories", histories, "--k",
         "5", "--out", out, "--device", "cpu", "--quiet"], capsys)
    lists = pd.read_csv(out, dtype={"user": str})
    mine = lists.groupby("user")["item"].apply(set).to_dict()
    assert sorted(mine) == ["007", "7"] and all(len(v) == 5 for v in mine.values())
    assert not mine["007"] & {101, 102} and 103 not in mine["7"]


def test_predict_does_not_take_01_for_user_1(world: World, tmp_path, capsys):
    pairs = _write(tmp_path / "pairs.csv", "user,item\n1,101\n01,101\n")
    out = tmp_path / "pred.csv"
    _ok(["predict", world.run_autorec, "--pairs", pairs, "--out", out], capsys)
    table = pd.read_csv(out, keep_default_na=False, dtype=str)
    assert table["user"].tolist() == ["1", "01"]
    assert table["fallback"].tolist() == ["", "item_mean"]  # 01 is an unknown user


# -- timestamps ------------------------------------------------------------------------------

JAN1_10H = 1577872800  # 2020-01-01 10:00:00 UTC


@pytest.mark.parametrize("first, second, expected", [
    pytest.param("2020/01/01 10:00", "2020/01/02 10:00", [JAN1_10H, JAN1_10H + 86400],
                 id="slashes-iso-order"),
    pytest.param("01/01/2020", "01/02/2020", [1577836800, 1577923200], id="month-first"),
    pytest.param("25/01/2020", "01/02/2020", [1579910400, 1580515200], id="day-first"),
    pytest.param("2020-01-01T10:00:00+02:00", "2020-01-01T10:00:00Z",
                 [JAN1_10H - 7200, JAN1_10H], id="iso-with-zones"),
    pytest.param("2020-01-01", "2020-01-01 10:00:00", [1577836800, JAN1_10H], id="iso-mixed-forms"),
    pytest.param("Jan 1 2020", "Feb 1 2020", [1577836800, 1580515200], id="month-names"),
    pytest.param(str(JAN1_10H), str(JAN1_10H + 1), [JAN1_10H, JAN1_10H + 1], id="seconds"),
    pytest.param(f"{JAN1_10H}.9", f"{JAN1_10H + 1}.0", [JAN1_10H, JAN1_10H + 1],
                 id="seconds-as-floats"),
    pytest.param(f"{JAN1_10H}000", f"{JAN1_10H}999", [JAN1_10H, JAN1_10H], id="milliseconds"),
])
def test_every_timestamp_format_lands_at_its_epoch_second(tmp_path, first, second, expected):
    path = _write(tmp_path / "r.csv", f"{HEADER}1,1,4,{first}\n2,2,3,{second}\n")
    log = read_rating_log(path)
    assert log.timestamp.tolist() == expected
    in_ms = first.isdigit() and len(first) == 13
    assert any("epoch milliseconds" in n for n in log.notes) == in_ms


def test_a_temporal_split_orders_day_first_dates_by_time(tmp_path, capsys):
    # Written day first, the dates sort differently as text ("01/02" < "02/01") than in time.
    dates = ["25/12/2019 10:00", "02/01/2020 09:00", "10/01/2020 08:00", "01/02/2020 07:00",
             "15/03/2020 06:00"]
    rows = []
    for u in range(1, 13):
        order = np.random.default_rng(u).permutation(5)  # which item gets which date
        rows += [f"{u},{i + 1},{(u + i) % 5 + 1},{dates[order[i]]}\n" for i in range(5)]
    path = _write(tmp_path / "r.csv", HEADER + "".join(rows))
    _ok(["prepare", "--input", path, "--split", "temporal-user", "--test-fraction", "0.2",
         "--valid-fraction", "0", "--out", tmp_path / "d", "--quiet"], capsys)
    ds = Dataset.load(tmp_path / "d")
    latest = {}
    for u in range(1, 13):
        order = np.random.default_rng(u).permutation(5)
        latest[u] = int(np.flatnonzero(order == 4)[0]) + 1  # the item dated 15 March
    test = ds.parts["test"].matrix
    got = {int(ds.users.ids[r]): ds.items.ids[test[r].indices].tolist()
           for r in range(test.shape[0]) if test[r].nnz}
    assert got == {u: [i] for u, i in latest.items()}
    march_15 = 1584252000  # 2020-03-15 06:00 UTC
    assert set(ds.parts["test"].timestamps.tolist()) == {march_15}
    assert ds.parts["train"].timestamps.max() < march_15


def test_a_temporal_global_split_of_iso_dates_cuts_by_time(tmp_path, capsys):
    # An ISO date among integer timestamps was stored 1000x too small and sorted first (such a
    # column is now refused, see ERRORS); a column of ISO dates splits at the right time.
    iso = "".join(f"{u},{(u + d) % 10 + 1},3,2020-01-{d:02d}T{u:02d}:00:00\n"
                  for u in range(1, 11) for d in range(1, 11))
    path = _write(tmp_path / "r.csv", HEADER + iso)
    _ok(["prepare", "--input", path, "--split", "temporal-global", "--test-fraction", "0.2",
         "--valid-fraction", "0", "--out", tmp_path / "d", "--quiet"], capsys)
    ds = Dataset.load(tmp_path / "d")
    cut = pd.Timestamp("2020-01-09", tz="UTC").timestamp()
    assert ds.parts["train"].timestamps.max() < cut <= ds.parts["test"].timestamps.min()


# -- accepted inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, compress", [
    (".csv.gz", gzip.compress), (".csv.bz2", bz2.compress), (".csv.xz", lzma.compress),
    (".csv.zst", lambda b: pa.compress(b, codec="zstd", asbytes=True)),
    ("", gzip.compress),  # told by its first bytes, not its name
])
def test_compressed_csvs_read_the_same_as_plain(tmp_path, capsys, suffix, compress):
    text = (HEADER + base_rows()).encode()
    plain = _write(tmp_path / "r.csv", text)
    packed = _write(tmp_path / f"packed{suffix or '.csv'}", compress(text))
    for src, out in ((plain, "a"), (packed, "b")):
        _ok(["prepare", "--input", src, "--seed", "0", "--out", tmp_path / out, "--quiet"],
            capsys)
    a, b = Dataset.load(tmp_path / "a"), Dataset.load(tmp_path / "b")
    assert a.users == b.users and a.items == b.items
    for name, part in a.parts.items():
        assert (b.parts[name].matrix != part.matrix).nnz == 0


def test_ratings_far_outside_the_scale_get_a_note(tmp_path, capsys):
    clean = _write(tmp_path / "clean.csv", HEADER + base_rows())
    err = _ok(["prepare", "--input", clean, "--out", tmp_path / "a", "--quiet"], capsys)
    assert "far outside" not in err
    odd = _write(tmp_path / "odd.csv", HEADER + base_rows() + "1,1,-5,1\n2,2,1e9,2\n")
    err = _ok(["prepare", "--input", odd, "--out", tmp_path / "b", "--quiet"], capsys)
    notes = [line for line in err.splitlines() if "far outside" in line]
    assert len(notes) == 1
    assert notes[0].startswith(f"note: {odd} column 'rating': 2 ratings lie far outside")
    assert "[1, 5]" in notes[0]


# -- input errors: one line, exit 2, nothing written -----------------------------------------


class Case:
    def __init__(self, tmp: Path, world: World) -> None:
        self.tmp, self.world = tmp, world

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def file(self, name: str, content: str | bytes) -> Path:
        return _write(self.tmp / name, content)

    def prep(self, content: str | bytes, *extra: Any, name: str = "r.csv") -> list[Any]:
        return ["prepare", "--input", self.file(name, content), "--out", self.out, "--quiet",
                *extra]

    def recommend(self, *extra: Any) -> list[Any]:
        return ["recommend", self.world.run_ease, "--data", self.world.data, "--k", "3",
                "--out", self.tmp / "out.csv", "--device", "cpu", *extra]

    def socket(self, name: str) -> Path:
        """A path that exists but that nobody, root included, can open as a file."""
        path = self.tmp / name
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        s.close()
        return path


BASE = HEADER + base_rows()
NINE_MB = "x" * (9 << 20)


def _zipped(c: Case) -> Path:
    path = c.tmp / "r.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("r.csv", BASE)
    return path


def _truncated_gzip(c: Case) -> Path:
    rows = "".join(f"{u},{u * 7 % 13},4,{u}\n" for u in range(5000))
    data = gzip.compress((HEADER + rows).encode())
    return c.file("r.csv.gz", data[: len(data) // 2])


ERRORS: list[Any] = [
    # timestamps
    ("iso-among-seconds", lambda c: c.prep(BASE + "1,1,4,2020-01-01\n"),
     f"row {BASE.count(chr(10)) + 1} column 'timestamp': '2020-01-01' is a date, while row 2"),
    ("seconds-among-dates",
     lambda c: c.prep(HEADER + "1,1,4,2020-01-01\n2,2,3,2020-01-02\n3,3,2,1577836800\n"),
     "r.csv row 4 column 'timestamp': '1577836800' is a number, while row 2"),
    ("seconds-and-milliseconds",
     lambda c: c.prep(HEADER + "1,1,4,1577836800000\n2,2,3,1577836801\n"),
     "r.csv row 3 column 'timestamp': 1577836801 reads as epoch seconds, while row 2"),
    ("date-in-another-format",
     lambda c: c.prep(HEADER + "1,1,4,01/01/2020\n2,2,3,2020-01-02\n"),
     "r.csv row 3 column 'timestamp': '2020-01-02' is not a date in the column's format "
     "(%m/%d/%Y, as in row 2: '01/01/2020')"),
    ("not-a-time", lambda c: c.prep(BASE + "1,1,4,yesterday\n"),
     "column 'timestamp': 'yesterday' is neither a number nor a date"),
    # ratings and ids
    ("rating-overflows-float32", lambda c: c.prep(HEADER + "1,1,4,1\n2,2,1e39,2\n"),
     "r.csv row 3 column 'rating': 1e+39 overflows float32"),
    ("fractional-id-in-integer-column", lambda c: c.prep(HEADER + "1,1,4,1\n2.5,2,3,2\n"),
     "r.csv row 3 column 'user': ids are fractional numbers ('2.5')"),
    ("columns-two-roles", lambda c: c.prep(BASE, "--columns", "user=item,item=item"),
     "--columns: column 'item' is given two roles (user and item)"),
    ("columns-field-twice", lambda c: c.prep(BASE, "--columns", "user=user,user=item"),
     "user is mapped twice"),
    # files
    ("row-too-long", lambda c: c.prep(BASE + f"1,{NINE_MB},4,1\n"),
     f"r.csv row {BASE.count(chr(10)) + 1}: the row is 9.0 MB long"),
    ("zip-archive", lambda c: ["prepare", "--input", _zipped(c), "--out", c.out],
     "r.zip: a zip archive"),
    ("truncated-gzip", lambda c: ["prepare", "--input", _truncated_gzip(c), "--out", c.out],
     "r.csv.gz: cannot decompress"),
    ("input-not-openable", lambda c: ["prepare", "--input", c.socket("r.csv"), "--out", c.out],
     "r.csv: cannot read the file"),
    ("train-file-is-a-directory",
     lambda c: ["prepare", "--train-file", c.tmp, "--test-file", c.file("t.csv", BASE),
                "--out", c.out], "case: it is a directory"),
    ("test-file-not-openable",
     lambda c: ["prepare", "--train-file", c.file("t.csv", BASE), "--test-file",
                c.socket("test.csv"), "--out", c.out], "test.csv: cannot read the file"),
    # configs
    ("yaml-python-tag",
     lambda c: ["train", "ease", "--data", c.world.data, "--out", c.out, "--no-track",
                "--config", c.file("ease.yaml",
                                   "lambda_: !!python/object/apply:os.system ['true']\n")],
     "ease.yaml line 1: the tag '!!python/object/apply:os.system' is refused"),
    ("config-is-a-directory",
     lambda c: ["train", "ease", "--data", c.world.data, "--out", c.out, "--no-track",
                "--config", c.tmp], "case: it is a directory"),
    # id files of recommend and predict
    ("recommend-padded-id-on-integer-ids",
     lambda c: c.recommend("--users", c.file("u.csv", "user\n1\n007\n")),
     "u.csv: row 2: user id '007' is not written as an integer id is"),
    ("recommend-users-is-a-directory", lambda c: c.recommend("--users", c.tmp),
     "case: it is a directory"),
    ("recommend-users-not-openable", lambda c: c.recommend("--users", c.socket("u.csv")),
     "u.csv: cannot read the file"),
    ("predict-pairs-is-a-directory",
     lambda c: ["predict", c.world.run_autorec, "--pairs", c.tmp, "--out", c.out],
     "case: it is a directory"),
]


@pytest.mark.parametrize("build, expected", [pytest.param(b, e, id=i) for i, b, e in ERRORS])
def test_input_error_is_one_line_exit_2_and_writes_nothing(
        build: Callable[[Case], list[Any]], expected: str, world: World, tmp_path, capsys):
    case = Case(tmp_path / "case", world)
    case.tmp.mkdir()
    argv = build(case)
    before = snapshot(case.tmp)
    result = cli(argv, capsys)
    assert_one_line_error(result, expected)
    assert not case.out.exists() and not (case.tmp / "out.csv").exists()
    assert snapshot(case.tmp) == before  # no temporary, no partial output, inputs untouched


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_input_without_read_permission(tmp_path, capsys):
    path = _write(tmp_path / "r.csv", BASE)
    path.chmod(0)
    result = cli(["prepare", "--input", path, "--out", tmp_path / "out"], capsys)
    assert_one_line_error(result, "r.csv: cannot read the file (Permission denied); check its "
                                  "permissions")
    assert not (tmp_path / "out").exists()


# -- mirror zips -----------------------------------------------------------------------------


def _prepare_from_mirror(mirror: Path, cache: Path, out: Path, capsys):
    return cli(["prepare", "ml-100k", "--mirror", mirror, "--cache", cache, "--out", out,
                "--quiet"], capsys)


def test_a_mirror_zip_is_verified_before_anything_is_expanded(tmp_path, capsys, monkeypatch):
    # ml-100k without a checksum file: the ratings inside must match their known SHA-256, and
    # are hashed from the archive; the large other entry must never be written.
    mirror, cache, out = tmp_path / "mirror", tmp_path / "cache", tmp_path / "out"
    mirror.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()
    _zip(mirror / "ml-100k.zip", {"ml-100k/u.data": b"1\t2\t3\t4\n", "ml-100k/big": noise})
    opened: list[Path] = []
    real = ml.atomic_dir
    monkeypatch.setattr(ml, "atomic_dir", lambda path: opened.append(path) or real(path))
    result = _prepare_from_mirror(mirror, cache, out, capsys)
    assert_one_line_error(result, "u.data has SHA-256")
    assert opened == []  # extraction never began
    assert _nothing_extracted(cache) and not out.exists()


def test_a_zip_that_would_expand_too_far_is_refused_unexpanded(tmp_path, capsys, monkeypatch):
    mirror, cache, out = tmp_path / "mirror", tmp_path / "cache", tmp_path / "out"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "ml-100k.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-100k/u.data", bytes(200 << 20))  # 200 MB of zeros, ~0.2 MB zipped
    assert (mirror / "ml-100k.zip").stat().st_size < 1 << 20
    opened: list[Path] = []
    real = ml.atomic_dir
    monkeypatch.setattr(ml, "atomic_dir", lambda path: opened.append(path) or real(path))
    result = _prepare_from_mirror(mirror, cache, out, capsys)
    assert_one_line_error(result, f"would expand to {200 << 20:,} bytes, more than 100 times")
    assert opened == [] and _nothing_extracted(cache) and not out.exists()

"""Inputs that look odd but are legitimately accepted, each with its documented outcome asserted
(the counterpart of test_bad_inputs.py: these must *not* be refused)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recsys.data.interactions import Dataset
from reliability.helpers import cli

HEADER = "user,item,rating,timestamp\n"
GOOD = "".join(f"{u},{i},{(u + i) % 5 + 1},{u * 100 + i}\n"
               for u in range(1, 21) for i in range(1, 16) if (u * i) % 3)


def _prepare(tmp_path, content: str | bytes, capsys, *extra: str) -> tuple[Dataset, str]:
    path = tmp_path / "r.csv"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    result = cli(["prepare", "--input", path, "--out", tmp_path / "d", "--quiet", *extra], capsys)
    assert result.code == 0, result.err
    assert "Traceback" not in result.err and "Warning" not in result.err
    return Dataset.load(tmp_path / "d"), result.err


def _all_pairs(ds: Dataset) -> pd.DataFrame:
    frames = []
    for part in ds.parts.values():
        coo = part.matrix.tocoo()
        frames.append(pd.DataFrame({"user": ds.users.lookup(coo.row),
                                    "item": ds.items.lookup(coo.col), "rating": coo.data}))
    return pd.concat(frames, ignore_index=True)


def test_duplicated_rows_keep_the_latest_rating(tmp_path, capsys):
    # Policy (recsys.data.preprocess): of repeated (user, item) pairs the one with the latest
    # timestamp is kept, counted in metadata as dropped duplicates.
    dup = "1,4,1,1\n1,4,5,999999\n1,4,2,500\n"
    ds, _ = _prepare(tmp_path, HEADER + GOOD + dup, capsys)
    pairs = _all_pairs(ds)
    mine = pairs[(pairs["user"] == 1) & (pairs["item"] == 4)]
    assert mine["rating"].tolist() == [5.0]
    # GOOD already has (1, 4) (rated 1 at time 104): three more copies, three rows dropped.
    assert ds.meta["dropped"]["duplicates"] == 3


def test_exact_duplicate_rows_collapse_to_one(tmp_path, capsys):
    ds, _ = _prepare(tmp_path, HEADER + GOOD + GOOD, capsys)
    assert sum(p.nnz for p in ds.parts.values()) + sum(
        ds.meta["dropped"]["unseen_items"].values()) == GOOD.count("\n")
    assert ds.meta["dropped"]["duplicates"] == GOOD.count("\n")


def test_negative_ids_are_opaque_ids_with_a_note(tmp_path, capsys):
    # Ids are labels, not numbers: negative ones are kept (a note says so).
    content = HEADER + GOOD.replace("\n1,", "\n-1,").replace("\n2,", "\n-2,")
    ds, err = _prepare(tmp_path, content, capsys)
    assert "column 'user' has negative ids; they are kept as ids" in err
    assert {-1, -2} <= set(ds.users.ids.tolist())


def test_ids_beyond_int64_are_kept_exactly_as_text(tmp_path, capsys):
    # Too large for int64 (and for a float to hold exactly): read as text, digit for digit.
    big = ["99999999999999999999991", "99999999999999999999992"]
    rows = "".join(f"{b},{i},5,{i}\n" for b in big for i in range(1, 9))
    ds, _ = _prepare(tmp_path, HEADER + GOOD + rows, capsys)
    ids = set(ds.users.ids.tolist())
    assert set(big) <= ids and "1" in ids  # one id space: every user id is text now
    assert not ds.users.is_integer


def test_int64_extremes_stay_integers(tmp_path, capsys):
    top = np.iinfo(np.int64).max
    rows = "".join(f"{top},{i},5,{i}\n" for i in range(1, 9))
    ds, _ = _prepare(tmp_path, HEADER + GOOD + rows, capsys)
    assert ds.users.is_integer and top in ds.users.ids.tolist()


@pytest.mark.parametrize("transform", [
    pytest.param(lambda text: ("\ufeff" + text).encode(), id="utf8-bom"),
    pytest.param(lambda text: text.replace("\n", "\r\n").encode(), id="crlf"),
    pytest.param(lambda text: text.replace(",", ";").encode(), id="semicolon-sniffed"),
    pytest.param(lambda text: text.replace(",", "\t").encode(), id="tab-sniffed"),
])
def test_common_file_dialects_read_the_same(tmp_path, capsys, transform):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain, _ = _prepare(tmp_path / "a", HEADER + GOOD, capsys)
    other, _ = _prepare(tmp_path / "b", transform(HEADER + GOOD), capsys)
    assert other.users == plain.users and other.items == plain.items
    for name, part in plain.parts.items():
        assert (other.parts[name].matrix != part.matrix).nnz == 0


def test_metric_cut_off_beyond_the_catalogue_ranks_everything(world, tmp_path, capsys):
    # K > number of items is computed over the whole catalogue: every held-out item is found,
    # so recall@K (normalised by min(K, |relevant|)) is exactly 1 and precision@K divides by K.
    out = tmp_path / "m.json"
    result = cli(["evaluate", world.run_ease, "--data", world.data, "--metrics",
                  "recall@100000,hit@100000", "--json", out, "--no-ci"], capsys)
    assert result.code == 0, result.err
    metrics = json.loads(out.read_text())
    assert metrics == {"recall@100000": 1.0, "hit@100000": 1.0}


def test_unknown_users_get_popular_items_marked_cold(world, tmp_path, capsys):
    users = tmp_path / "users.csv"
    users.write_text("user\n1\n424242\n-7\n")
    out = tmp_path / "top.csv"
    result = cli(["recommend", world.run_ease, "--data", world.data, "--users", users, "--k", "3",
                  "--out", out, "--device", "cpu"], capsys)
    assert result.code == 0, result.err
    assert "2 of 3 users are unknown; scored with popularity (cold=true)" in result.err
    lists = pd.read_csv(out)
    assert lists.groupby("user")["cold"].first().to_dict() == {-7: True, 1: False, 424242: True}
    cold = lists[lists["cold"]]
    assert (cold.groupby("user")["item"].apply(list).map(tuple).nunique()) == 1  # same list


def test_unknown_pairs_are_predicted_by_a_fallback(world, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("user,item\n1,101\n424242,101\n1,999999\n")
    out = tmp_path / "pred.csv"
    result = cli(["predict", world.run_autorec, "--pairs", pairs, "--out", out], capsys)
    assert result.code == 0, result.err
    table = pd.read_csv(out, keep_default_na=False)
    assert table["fallback"].tolist()[1:] == ["item_mean", "user_mean"]
    assert np.isfinite(table["prediction"]).all()


def test_empty_deny_list_denies_nothing(world, tmp_path, capsys):
    deny = tmp_path / "deny.csv"
    deny.write_text("")
    plain, denied = tmp_path / "a.csv", tmp_path / "b.csv"
    base = ["recommend", world.run_ease, "--data", world.data, "--k", "4", "--device", "cpu"]
    assert cli([*base, "--out", plain], capsys).code == 0
    assert cli([*base, "--out", denied, "--deny", deny], capsys).code == 0
    assert plain.read_bytes() == denied.read_bytes()


def test_resume_with_nothing_to_resume_starts_from_the_start(world, tmp_path, capsys):
    result = cli(["train", "pop", "--data", world.data, "--out", tmp_path / "run", "--resume",
                  "--no-track", "--quiet"], capsys)
    assert result.code == 0, result.err
    assert "holds no run yet; training from the start" in result.err
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_large_integer_ids_are_matched_exactly(tmp_path, capsys):
    # Ids near 2^53 differ in their last digit only; parsed through a float two of them would
    # collapse and one user would get another's recommendations.
    base = 2**53
    rows = "".join(f"{base + u},{i},{(u + i) % 5 + 1},{u * 100 + i}\n"
                   for u in range(0, 20, 2) for i in range(1, 16) if (u + i) % 3)
    ds, _ = _prepare(tmp_path, HEADER + rows, capsys)
    assert ds.users.is_integer and base in ds.users.ids.tolist()
    assert cli(["train", "pop", "--data", tmp_path / "d", "--out", tmp_path / "run",
                "--no-track", "--quiet"], capsys).code == 0
    users = tmp_path / "users.csv"
    users.write_text(f"user\n{base}\n{base + 1}\n")  # base + 1 is not a user
    out = tmp_path / "top.csv"
    result = cli(["recommend", tmp_path / "run", "--data", tmp_path / "d", "--users", users,
                  "--k", "2", "--out", out, "--device", "cpu"], capsys)
    assert result.code == 0, result.err
    cold = pd.read_csv(out, dtype={"user": "int64"}).groupby("user")["cold"].first()
    assert cold.to_dict() == {base: False, base + 1: True}
    # Where text ids may sit beside numbers (`recsys predict` pairs fall back for unknown ids),
    # the lookup must not go through floats either.
    mixed = np.array([str(base + 1), "guest", str(base), "9" * 25], dtype=object)
    assert ds.users.index(mixed).tolist() == [-1, -1, 0, -1]

"""The cold-items split: a share of the items held out entirely (no train or valid rows, every
interaction test), kept in the catalogue with their features so that models can rank them; and
the errors a user can cause with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.data import split as S
from recsys.data.interactions import Dataset
from recsys.errors import RecsysError
from tests.reliability.helpers import assert_one_line_error, cli, write_ratings


def _log(n_users: int = 50, n_items: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Interactions sorted by (user, item), every user with a random half of the items."""
    rng = np.random.default_rng(seed)
    pairs = np.argwhere(rng.random((n_users, n_items)) < 0.5)
    return pairs[:, 0].astype(np.int32), pairs[:, 1].astype(np.int32)


def test_held_out_items_are_test_only_and_the_count_is_the_fraction():
    user, item = _log()
    labels, info, cold = S.split_cold_items(user, item, 50, 40, cold_item_fraction=0.2,
                                            valid_fraction=0.1, seed=3)
    assert cold.sum() == 8 == info["cold_items"]  # round(0.2 * 40)
    assert (labels[cold[item]] == S.TEST).all()  # every interaction with a held-out item
    assert not (labels[~cold[item]] == S.TEST).any()  # and nothing else
    assert (labels[~cold[item]] != S.DROPPED).all()
    assert (labels == S.VALID).any()  # the warm carve exists
    again, _, cold2 = S.split_cold_items(user, item, 50, 40, 0.2, 0.1, seed=3)
    np.testing.assert_array_equal(labels, again)
    np.testing.assert_array_equal(cold, cold2)
    other = S.split_cold_items(user, item, 50, 40, 0.2, 0.1, seed=4)[2]
    assert (other != cold).any()


def test_drop_unseen_keeps_the_held_out_items():
    user, item = _log()
    labels, _, cold = S.split_cold_items(user, item, 50, 40, 0.2, 0.0, seed=0)
    dropped_plain, counts = S.drop_unseen(labels, user, item, 50, 40)
    assert counts["unseen_items"]["test"] == int(cold[item].sum())  # all of them, without
    kept, counts = S.drop_unseen(labels, user, item, 50, 40, cold_items=cold)
    assert counts["unseen_items"]["test"] == 0
    np.testing.assert_array_equal(kept, labels)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_out_of_range(fraction):
    user, item = _log()
    with pytest.raises(RecsysError, match="--cold-item-fraction"):
        S.split_cold_items(user, item, 50, 40, fraction)


def test_a_fraction_that_rounds_to_no_item_is_refused():
    user, item = _log()
    with pytest.raises(RecsysError, match="holds out 0 of 40 items"):
        S.split_cold_items(user, item, 50, 40, 0.01)


def _item_features(path: Path, n_items: int = 40) -> Path:
    # genres cycle through three blocks; a year column so a numeric feature is there too
    lines = ["item,genres,year"] + [f"{i + 101},{['a|b', 'b', 'c'][i % 3]},{1990 + i % 7}"
                                    for i in range(n_items)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    return write_ratings(tmp_path / "r.csv"), _item_features(tmp_path / "items.csv")


def test_prepare_keeps_held_out_items_in_the_catalogue_with_their_features(tmp_path, files,
                                                                           capsys):
    ratings, features = files
    out = tmp_path / "cold"
    r = cli(["prepare", "--input", ratings, "--item-features", features, "--split", "cold-items",
             "--cold-item-fraction", "0.25", "--seed", "1", "--out", out], capsys)
    assert r.code == 0, r.err
    assert "cold items: 10 held out" in r.out
    ds = Dataset.load(out)
    train_items = np.diff(ds.train.matrix.tocsc().indptr) > 0
    valid_items = np.diff(ds.parts["valid"].matrix.tocsc().indptr) > 0
    test_items = np.diff(ds.parts["test"].matrix.tocsc().indptr) > 0
    cold = ~(train_items | valid_items)
    assert cold.sum() == 10 == ds.meta["split_info"]["cold_items"]  # round(0.25 * 40)
    assert len(ds.items) == 40  # in the vocabulary although nothing trains on them
    assert (test_items == cold).all()  # the test part is exactly the held-out items
    assert ds.meta["dropped"]["unseen_items"]["test"] == 0
    assert ds.meta["split"]["split"] == "cold-items"
    assert ds.meta["split"]["cold_item_fraction"] == 0.25
    # Their features are there, as the features file says (not a zero vector).
    table = ds.features.item
    assert table is not None and (np.abs(table.values[cold]).sum(axis=1) > 0).all()
    ids = ds.items.ids[cold]
    genre_b = table.columns.index("genres=b")
    expect_b = np.isin((ids - 101) % 3, [0, 1])
    np.testing.assert_array_equal(table.values[cold, genre_b] == 1.0, expect_b)


def test_other_splits_do_not_record_the_fraction(tmp_path, files, capsys):
    ratings, _ = files
    r = cli(["prepare", "--input", ratings, "--out", tmp_path / "plain"], capsys)
    assert r.code == 0, r.err
    meta = Dataset.load(tmp_path / "plain").meta
    assert "cold_item_fraction" not in meta["split"]
    assert "cold_item_fraction" not in meta["options"]


@pytest.mark.parametrize("extra, expected", [
    ([], "has no item features, and the held-out items can only be ranked from them"),
    (["--item-features", "{features}", "--cold-item-fraction", "1"],
     "--cold-item-fraction 1.0: must be in (0, 1)"),
    (["--item-features", "{features}", "--test-fraction", "0.3"], "--test-fraction applies to"),
])
def test_cold_items_cli_errors(tmp_path, files, capsys, extra, expected):
    ratings, features = files
    out = tmp_path / "x"
    argv = [a.format(features=features) for a in extra]
    r = cli(["prepare", "--input", ratings, "--split", "cold-items", *argv, "--out", out], capsys)
    assert_one_line_error(r, expected)
    assert not out.exists()


def test_the_fraction_without_the_split_is_refused(tmp_path, files, capsys):
    ratings, _ = files
    r = cli(["prepare", "--input", ratings, "--cold-item-fraction", "0.2", "--out",
             tmp_path / "x"], capsys)
    assert_one_line_error(r, "--cold-item-fraction applies to --split cold-items only")


@pytest.mark.realdata
def test_movielens_brings_the_features_the_split_needs(tmp_path, capsys):
    r = cli(["prepare", "ml-latest-small", "--split", "cold-items", "--implicit-threshold", "4",
             "--min-user-interactions", "5", "--out", tmp_path / "mls"], capsys)
    assert r.code == 0, r.err
    ds = Dataset.load(tmp_path / "mls")
    fit = ds.train.matrix + ds.parts["valid"].matrix
    cold = np.diff(fit.tocsc().indptr) == 0
    assert cold.sum() == ds.meta["split_info"]["cold_items"] == round(0.1 * len(ds.items))
    genres = [j for j, c in enumerate(ds.features.item.columns) if c.startswith("genres=")]
    assert (ds.features.item.values[np.ix_(cold, genres)].sum(axis=1) > 0).mean() > 0.95

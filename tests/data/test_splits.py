"""Split protocols: properties that must hold for any data (hypothesis), and determinism."""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.data import split as S
from recsys.data.interactions import Dataset
from recsys.data.prepare import PrepareOptions, prepare_log
from recsys.data.preprocess import PreprocessOptions, preprocess
from recsys.data.readers import RatingLog
from recsys.errors import RecsysError

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def logs(draw, min_rows: int = 8):
    """A small rating log, duplicates and ties in time allowed."""
    n_users = draw(st.integers(2, 12))
    n_items = draw(st.integers(2, 15))
    n = draw(st.integers(min_rows, 120))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n) * 7 + 100  # sparse external ids, not 0..n-1
    item = rng.integers(0, n_items, n) - 3  # some negative ids
    rating = rng.integers(1, 6, n).astype(np.float32)
    timestamp = rng.integers(0, draw(st.integers(1, 50)), n)  # many ties when the range is small
    return RatingLog(user, item, rating, timestamp, Path("mem.csv"), rows_read=n)


def _prepare(log: RatingLog, **kw) -> Dataset:
    return prepare_log(log, PrepareOptions(**kw), source={"dataset": "mem"}, name="mem")


def _check_common(ds: Dataset) -> None:
    # No (user, item) pair in two parts: the binary parts add up to a 0/1 matrix.
    total = sum((p.binary() for p in ds.parts.values()), sp.csr_matrix(ds.train.matrix.shape))
    assert total.max() <= 1
    # Every evaluated user has training or fold-in interactions.
    for part in ("valid", "test"):
        if ds.has(part):
            split = ds.eval_split(part)
            assert split.skipped_users == 0
            targets = np.flatnonzero(np.diff(ds.parts[part].matrix.indptr))
            assert np.array_equal(split.users, targets)
    # Every catalogue item occurs in train or valid (the final model is refitted on both).
    fit = ds.train.matrix + (ds.parts["valid"].matrix if ds.has("valid") else 0)
    assert (np.diff(sp.csc_matrix(fit).indptr) > 0).all()


@SETTINGS
@given(logs(), st.sampled_from([0.1, 0.2, 0.3, 0.5]), st.sampled_from([0.0, 0.1, 0.25]),
       st.integers(0, 5))
def test_random_split_fractions_and_disjoint_parts(log, test_fraction, valid_fraction, seed):
    data, _ = preprocess(log.user, log.item, log.rating, log.timestamp, PreprocessOptions())
    labels = S.split_random(data.user, data.n_users, test_fraction, valid_fraction, seed)
    n = np.bincount(data.user, minlength=data.n_users)
    n_test = np.bincount(data.user[labels == S.TEST], minlength=data.n_users)
    n_valid = np.bincount(data.user[labels == S.VALID], minlength=data.n_users)
    n_train = np.bincount(data.user[labels == S.TRAIN], minlength=data.n_users)
    # Fractions hold within rounding (and at least one training interaction stays).
    expect_test = np.minimum(np.floor(test_fraction * n + 0.5), n - 1)
    assert np.array_equal(n_test, expect_test)
    assert np.all(np.abs(n_valid - valid_fraction * (n - n_test)) <= 0.5 + (n_train == 1))
    assert (n_train >= 1).all()
    try:
        ds = _prepare(log, split="random", test_fraction=test_fraction,
                      valid_fraction=valid_fraction, seed=seed)
    except RecsysError as exc:  # tiny draws can leave nothing to evaluate: said, not crashed
        assert "nothing to evaluate" in str(exc)
        return
    _check_common(ds)


@SETTINGS
@given(logs(), st.sampled_from([0.1, 0.2, 0.4]), st.sampled_from([0.0, 0.2]))
def test_global_temporal_cut_never_puts_test_before_train(log, test_fraction, valid_fraction):
    try:
        ds = _prepare(log, split="temporal-global", test_fraction=test_fraction,
                      valid_fraction=valid_fraction)
    except RecsysError as exc:
        assert "nothing" in str(exc) or "every interaction" in str(exc)
        return
    _check_common(ds)
    train_ts = ds.train.timestamps
    for part in ("valid", "test"):
        if ds.has(part):
            assert ds.parts[part].timestamps.min() > train_ts.max()
    if ds.has("valid") and ds.has("test"):
        assert ds.parts["test"].timestamps.min() > ds.parts["valid"].timestamps.max()


@SETTINGS
@given(logs(), st.sampled_from([0.2, 0.5]))
def test_per_user_temporal_holds_out_each_users_latest(log, test_fraction):
    data, _ = preprocess(log.user, log.item, log.rating, log.timestamp, PreprocessOptions())
    labels = S.split_temporal_user(data.user, data.item, data.timestamp, data.n_users,
                                   test_fraction)
    ts = data.timestamp
    latest_train = np.full(data.n_users, -1)
    np.maximum.at(latest_train, data.user[labels == S.TRAIN], ts[labels == S.TRAIN])
    test = labels == S.TEST
    assert (ts[test] >= latest_train[data.user[test]]).all()
    n = np.bincount(data.user, minlength=data.n_users)
    n_test = np.bincount(data.user[test], minlength=data.n_users)
    assert np.array_equal(n_test, np.minimum(np.floor(test_fraction * n + 0.5), n - 1))


@SETTINGS
@given(logs(), st.sampled_from(["last", "random"]), st.booleans())
def test_leave_one_out(log, order, valid):
    data, _ = preprocess(log.user, log.item, log.rating, log.timestamp, PreprocessOptions())
    labels = S.split_loo(data.user, data.item, data.timestamp, data.n_users, order, valid)
    n = np.bincount(data.user, minlength=data.n_users)
    n_test = np.bincount(data.user[labels == S.TEST], minlength=data.n_users)
    n_valid = np.bincount(data.user[labels == S.VALID], minlength=data.n_users)
    assert np.array_equal(n_test, (n >= 2).astype(int))
    assert np.array_equal(n_valid, ((n >= 3) & valid).astype(int))
    if order == "last":
        last = np.full(data.n_users, -1)
        np.maximum.at(last, data.user, data.timestamp)
        test = labels == S.TEST
        assert (data.timestamp[test] == last[data.user[test]]).all()


@SETTINGS
@given(logs(min_rows=30), st.integers(1, 3), st.integers(0, 3))
def test_strong_generalisation_users_are_disjoint(log, heldout, seed):
    try:
        ds = _prepare(log, split="strong", heldout_users=heldout, seed=seed)
    except RecsysError as exc:
        assert "--heldout-users" in str(exc) or "nothing to evaluate" in str(exc)
        return
    _check_common(ds)
    users = {name: set(p.active_users()) for name, p in ds.parts.items()}
    assert not users["train"] & (users.get("valid_history", set())
                                 | users.get("test_history", set()))
    assert not users.get("valid_history", set()) & users.get("test_history", set())
    assert users.get("test", set()) <= users.get("test_history", set())
    assert users.get("valid", set()) <= users.get("valid_history", set())


def test_strong_generalisation_follows_liang_et_al():
    rng = np.random.default_rng(1)
    n_users, n_items = 200, 60
    user = np.repeat(np.arange(n_users), 20)
    item = np.concatenate([rng.choice(n_items, 20, replace=False) for _ in range(n_users)])
    log = RatingLog(user, item, np.ones(len(user), np.float32), None, Path("m"))
    ds = _prepare(log, split="strong", heldout_users=20, test_fraction=0.2)
    assert ds.meta["split_info"]["train_users"] == 160
    for hist, target in (("valid_history", "valid"), ("test_history", "test")):
        h = np.diff(ds.parts[hist].matrix.indptr)
        t = np.diff(ds.parts[target].matrix.indptr)
        assert (h > 0).sum() == 20
        # 20 items each, all seen in training: floor(0.2 * 20) = 4 scored, 16 fold-in.
        assert set(t[h > 0]) == {4} and set(h[h > 0]) == {16}


@pytest.mark.parametrize("split", ["random", "loo", "strong", "temporal-user"])
def test_same_seed_same_split_and_seed_matters(split):
    rng = np.random.default_rng(0)
    n = 3000
    log = RatingLog(rng.integers(0, 100, n), rng.integers(0, 300, n),
                    rng.integers(1, 6, n).astype(np.float32), rng.integers(0, 10**6, n),
                    Path("m"))
    kw = {"split": split, "loo_order": "random"}
    a, b = _prepare(log, seed=3, **kw), _prepare(log, seed=3, **kw)
    c = _prepare(log, seed=4, **kw)
    for name in a.parts:
        assert (a.parts[name].matrix != b.parts[name].matrix).nnz == 0
    if split != "temporal-user":  # the one split that does not use the seed
        assert any((a.parts[n].matrix != c.parts[n].matrix).nnz for n in a.parts
                   if n in c.parts)


def test_unseen_items_are_dropped_from_evaluation_and_counted():
    # Item 99 only ever occurs in user 2's test part; user 3 has one interaction only.
    user = np.array([1, 1, 1, 2, 2, 2, 2])
    item = np.array([10, 11, 12, 10, 11, 12, 99])
    ts = np.array([1, 2, 3, 1, 2, 3, 9])
    log = RatingLog(user, item, np.ones(7, np.float32), ts, Path("m"))
    ds = _prepare(log, split="loo", valid_fraction=0.0)
    assert 99 not in ds.items.ids.tolist()
    assert ds.meta["dropped"]["unseen_items"]["test"] == 1
    # User 2 lost its only test item; user 1's latest (item 12) is test.
    assert ds.parts["test"].nnz == 1


def test_split_names_cover_protocols():
    assert {"random", "temporal-global", "temporal-user", "loo", "strong", "ml100k-u1",
            "ml100k-ua", "ml100k-ub"} <= set(S.SPLITS)


def test_carve_valid_moves_a_seeded_share_of_each_users_training_rows():
    user = np.repeat(np.arange(4), [1, 5, 10, 20])
    labels = np.full(len(user), S.TRAIN, np.int8)
    labels[-2:] = S.TEST  # only training rows are carved
    carved = S.carve_valid(labels, user, 4, 0.2, seed=3)
    assert (carved[-2:] == S.TEST).all() and (labels != S.VALID).all()  # input untouched
    assert np.bincount(user[carved == S.VALID], minlength=4).tolist() == [0, 1, 2, 4]
    assert (carved == S.carve_valid(labels, user, 4, 0.2, seed=3)).all()
    assert (carved != S.carve_valid(labels, user, 4, 0.2, seed=4)).any()
    assert (S.carve_valid(labels, user, 4, 0.0) == labels).all()
    with pytest.raises(RecsysError, match="--valid-fraction 1.5"):
        S.carve_valid(labels, user, 4, 1.5)


def test_an_item_first_seen_in_valid_stays_in_the_catalogue_and_in_test():
    # Item 13 is user 1's validation item and user 2's test item, never a training one. The final
    # model is refitted on train + valid, so the item is in the catalogue and user 2's test row
    # is kept: the validation carve costs the test part nothing.
    user = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    item = np.array([10, 11, 13, 12, 10, 11, 12, 13])
    ts = np.array([1, 2, 3, 4, 1, 2, 3, 4])
    log = RatingLog(user, item, np.ones(8, np.float32), ts, Path("m"))
    ds = _prepare(log, split="loo", loo_order="last", valid_fraction=0.5)
    assert 13 in ds.items.ids.tolist()
    col = ds.items.ids.tolist().index(13)
    assert ds.train.matrix[:, col].nnz == 0
    assert ds.parts["valid"].matrix[:, col].nnz == 1
    assert ds.parts["test"].matrix[:, col].nnz == 1
    assert ds.meta["dropped"]["unseen_items"]["test"] == 0

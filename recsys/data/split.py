"""Split protocols (../shared/PROTOCOLS.md), each a vectorised labelling of interactions.

Every split function takes interactions sorted by (user, item) (see `preprocess.Encoded`) and
returns one int8 label per interaction: which part it belongs to (`TRAIN`, `VALID_HISTORY`,
`VALID`, `TEST_HISTORY`, `TEST`) or `DROPPED`. Per-user choices use a rank within each user's
group computed from one sort (a random key, or time), never a loop over users. Results depend
only on the data and the seed.

`drop_unseen` then removes, from the test parts, items that never occur before them (in train or
valid) and target interactions of users with no history to score from, and counts both. The one
exception is the cold-items split (`split_cold_items`), whose held-out items are meant to be
unseen: they stay in the catalogue and in the test part, to be ranked from their features.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys.errors import RecsysError

DROPPED, TRAIN, VALID_HISTORY, VALID, TEST_HISTORY, TEST = -1, 0, 1, 2, 3, 4
PART_LABELS = {"train": TRAIN, "valid_history": VALID_HISTORY, "valid": VALID,
               "test_history": TEST_HISTORY, "test": TEST}

ML100K_FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
# "none" is production preparation: everything trains (with an optional validation carve).
SPLITS = ("random", "temporal-global", "temporal-user", "loo", "strong", "cold-items",
          *(f"ml100k-{f}" for f in ML100K_FOLDS), "none")

# Liang et al. (2018) only split held-out users with at least this many interactions into
# fold-in and scored parts; smaller ones are fold-in only.
STRONG_MIN_SPLIT = 5


def _indptr(user: np.ndarray, n_users: int) -> np.ndarray:
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=n_users), out=indptr[1:])
    return indptr


def _check_sorted(user: np.ndarray) -> None:
    if len(user) > 1 and np.any(user[1:] < user[:-1]):
        raise ValueError("interactions must be sorted by user (see preprocess.encode)")


def random_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random integer sort keys in [0, 2**31 - 1): exact, so packing them beside a user index
    into one int64 loses nothing. Drawn as int64 (the stream every split so far was made
    from), held as int32: the keys live through the sort, one of the high points of `prepare`'s
    memory."""
    return rng.integers(0, 2**31 - 1, n, dtype=np.int64).astype(np.int32)


def rank_within_user(user: np.ndarray, order_key: np.ndarray, n_users: int) -> np.ndarray:
    """0-based rank (int32, or int64 past 2**31 rows) of each interaction within its user by
    integer ``order_key`` (ascending; ties by position). ``user`` must be sorted."""
    _check_sorted(user)
    n = len(user)
    lo = int(order_key.min()) if n else 0
    span = (int(order_key.max()) - lo + 1) if n else 1
    if n_users * span < 2**62:
        # One int64 key (user, then order_key) and one sort, instead of a two-key lexsort.
        key = user.astype(np.int64)
        key *= span
        key += order_key
        if lo:
            key -= lo
        order = np.argsort(key, kind="stable")
        del key
    else:
        order = np.lexsort((order_key, user))
    dtype = np.int32 if n < 2**31 else np.int64
    counts = np.bincount(user, minlength=n_users)
    starts = np.zeros(n_users, dtype=dtype)
    np.cumsum(counts[:-1], out=starts[1:])
    ranked = np.arange(n, dtype=dtype)
    ranked -= np.repeat(starts, counts)  # users are grouped in `order` as in the input
    rank = np.empty(n, dtype=dtype)
    rank[order] = ranked
    return rank


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5).astype(np.int64)


def _counts(user: np.ndarray, n_users: int) -> np.ndarray:
    return np.bincount(user, minlength=n_users).astype(np.int64)


def _check_fraction(name: str, value: float, allow_zero: bool = True) -> None:
    lo_ok = value >= 0 if allow_zero else value > 0
    if not (lo_ok and value < 1):
        raise RecsysError(f"--{name} {value}: must be in {'[0' if allow_zero else '(0'}, 1)")


def _holdout_sizes(n: np.ndarray, test_fraction: float, valid_fraction: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per-user test and validation counts: test = round(f * n), validation = round(vf * the
    rest), both capped so at least one interaction stays in training."""
    n_test = np.minimum(_round_half_up(test_fraction * n), np.maximum(n - 1, 0))
    n_valid = np.minimum(_round_half_up(valid_fraction * (n - n_test)),
                         np.maximum(n - n_test - 1, 0))
    return n_test, n_valid


def _label_by_rank(user: np.ndarray, rank: np.ndarray, n_test: np.ndarray,
                   n_valid: np.ndarray, last: bool, n_users: int) -> np.ndarray:
    """Test gets the ``n_test`` lowest ranks (or highest, ``last``), validation the next."""
    r = rank
    if last:
        r = _counts(user, n_users).astype(rank.dtype)[user]
        r -= 1
        r -= rank
    t = n_test.astype(rank.dtype)[user]
    labels = np.full(len(user), TRAIN, dtype=np.int8)
    labels[r < t] = TEST
    if n_valid.any():
        v = n_valid.astype(rank.dtype)[user]
        v += t
        labels[(r >= t) & (r < v)] = VALID
    return labels


def split_random(user: np.ndarray, n_users: int, test_fraction: float = 0.2,
                 valid_fraction: float = 0.0, seed: int = 0) -> np.ndarray:
    """Per-user random holdout: round(f * n) of each user's interactions are test, then
    round(vf * the rest) are validation; every user keeps at least one training interaction."""
    _check_fraction("test-fraction", test_fraction, allow_zero=False)
    _check_fraction("valid-fraction", valid_fraction)
    rng = np.random.default_rng(seed)
    rank = rank_within_user(user, random_keys(rng, len(user)), n_users)
    n_test, n_valid = _holdout_sizes(_counts(user, n_users), test_fraction, valid_fraction)
    return _label_by_rank(user, rank, n_test, n_valid, last=False, n_users=n_users)


def carve_valid(labels: np.ndarray, user: np.ndarray, n_users: int, valid_fraction: float,
                seed: int = 0) -> np.ndarray:
    """Move round(vf * n) of each user's ``TRAIN`` interactions (at most n - 1) to ``VALID``, at
    random by ``seed``: the validation of `--split none`, the ml-100k folds and bring-your-own
    training files: `split_random`'s per-user holdout, relabelled as validation."""
    _check_fraction("valid-fraction", valid_fraction)  # before split_random names --test-fraction
    labels = labels.copy()
    if valid_fraction == 0:
        return labels
    rows = np.flatnonzero(labels == TRAIN)
    carved = split_random(user[rows], n_users, test_fraction=valid_fraction, seed=seed)
    labels[rows[carved == TEST]] = VALID
    return labels


def split_temporal_user(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray | None,
                        n_users: int, test_fraction: float = 0.2, valid_fraction: float = 0.0
                        ) -> np.ndarray:
    """Per-user last fraction: each user's latest round(f * n) interactions are test, the
    round(vf * rest) before them validation (ties in time broken by item id)."""
    _require_time(timestamp, "temporal-user")
    _check_fraction("test-fraction", test_fraction, allow_zero=False)
    _check_fraction("valid-fraction", valid_fraction)
    rank = rank_within_user(user, timestamp, n_users)  # item order breaks ties (input order)
    n_test, n_valid = _holdout_sizes(_counts(user, n_users), test_fraction, valid_fraction)
    return _label_by_rank(user, rank, n_test, n_valid, last=True, n_users=n_users)


def split_temporal_global(timestamp: np.ndarray | None, test_fraction: float = 0.2,
                          valid_fraction: float = 0.0) -> tuple[np.ndarray, dict[str, Any]]:
    """One time cut for everybody (leak-free): interactions at or after the cut are test.

    The cut is the timestamp of the round(f * n)-th latest interaction; ties with it go to test,
    so no test interaction is ever earlier than a training one. Validation is the same cut
    applied to what comes before.
    """
    _require_time(timestamp, "temporal-global")
    _check_fraction("test-fraction", test_fraction, allow_zero=False)
    _check_fraction("valid-fraction", valid_fraction)
    n = len(timestamp)
    k_test = int(np.floor(test_fraction * n + 0.5))
    labels = np.full(n, TRAIN, dtype=np.int8)
    info: dict[str, Any] = {}
    if k_test == 0:
        return labels, info
    cut = np.partition(timestamp, n - k_test)[n - k_test]
    labels[timestamp >= cut] = TEST
    info["test_cut"] = int(cut)
    before = labels == TRAIN
    k_valid = int(np.floor(valid_fraction * before.sum() + 0.5))
    if k_valid:
        ts_before = timestamp[before]
        m = len(ts_before)
        vcut = np.partition(ts_before, m - k_valid)[m - k_valid]
        labels[before & (timestamp >= vcut)] = VALID
        info["valid_cut"] = int(vcut)
    if not (labels == TRAIN).any():
        raise RecsysError("temporal-global: every interaction shares the cut's timestamp, so "
                          "nothing is left for training; use another split")
    return labels, info


def split_loo(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray | None, n_users: int,
              order: str = "last", valid: bool = False, seed: int = 0) -> np.ndarray:
    """Leave-one-out: one interaction per user (the latest, or a random one) is test, and with
    ``valid`` the one before it validation; users keep at least one training interaction."""
    if order not in ("last", "random"):
        raise RecsysError(f"--loo-order {order!r}: expected 'last' or 'random'")
    n = _counts(user, n_users)
    n_test = (n >= 2).astype(np.int64)
    n_valid = ((n >= 3) & valid).astype(np.int64)
    if order == "last":
        _require_time(timestamp, "loo (--loo-order last)")
        rank = rank_within_user(user, timestamp, n_users)
        return _label_by_rank(user, rank, n_test, n_valid, last=True, n_users=n_users)
    rank = rank_within_user(user, random_keys(np.random.default_rng(seed), len(user)), n_users)
    return _label_by_rank(user, rank, n_test, n_valid, last=False, n_users=n_users)


def split_strong(user: np.ndarray, item: np.ndarray, n_users: int, n_items: int,
                 heldout_users: int | None = None, test_fraction: float = 0.2, seed: int = 0
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """Strong generalisation (Liang et al. 2018): users shuffled by ``seed``; the last
    2 x ``heldout_users`` become validation and test users, the rest train on everything.
    Held-out users' items unseen in training are dropped first; then each held-out user with at
    least 5 interactions has floor(f * n) random items scored and the rest as fold-in."""
    _check_fraction("test-fraction", test_fraction, allow_zero=False)
    if heldout_users is None:
        heldout_users = max(1, int(round(0.1 * n_users)))
    if heldout_users < 1 or 2 * heldout_users >= n_users:
        raise RecsysError(f"--heldout-users {heldout_users}: need 1 <= N and 2N < the number of "
                          f"users ({n_users})")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_users)
    group = np.zeros(n_users, dtype=np.int8)  # 0 train, 1 validation user, 2 test user
    n_train_users = n_users - 2 * heldout_users
    group[perm[n_train_users:n_train_users + heldout_users]] = 1
    group[perm[n_train_users + heldout_users:]] = 2
    g = group[user]
    labels = np.full(len(user), TRAIN, dtype=np.int8)
    seen = np.bincount(item[g == 0], minlength=n_items) > 0
    held = g > 0
    unseen = held & ~seen[item]
    labels[held] = VALID_HISTORY
    labels[g == 2] = TEST_HISTORY
    labels[unseen] = DROPPED
    # Random floor(f * n) target items per held-out user, among their seen items.
    kept = held & ~unseen
    n_kept = np.bincount(user[kept], minlength=n_users)
    n_target = np.where(n_kept >= STRONG_MIN_SPLIT, np.floor(test_fraction * n_kept), 0
                        ).astype(np.int64)
    key = random_keys(rng, len(user))
    key[~kept] = 2**31 - 1  # after every kept interaction: never chosen as a target
    rank = rank_within_user(user, key, n_users)
    target = kept & (rank < n_target[user])
    labels[target & (g == 1)] = VALID
    labels[target & (g == 2)] = TEST
    info = {"heldout_users": heldout_users, "train_users": n_train_users,
            "unseen_item_interactions_dropped": {
                "valid": int((unseen & (g == 1)).sum()), "test": int((unseen & (g == 2)).sum())}}
    return labels, info


def split_cold_items(user: np.ndarray, item: np.ndarray, n_users: int, n_items: int,
                     cold_item_fraction: float = 0.1, valid_fraction: float = 0.0, seed: int = 0
                     ) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """Item cold start (the protocol of DropoutNet, Volkovs et al. 2017, and CLCRec, Wei et al.
    2021): round(f * n_items) items drawn by ``seed`` are held out entirely; every interaction
    with them is test, none is train or valid. Validation is `carve_valid`'s per-user share of
    the remaining (warm) training interactions, so early stopping and tuning look at the model's
    ordinary accuracy and the refit on train + valid leaves the held-out items cold.

    Returns the labels, the split's record and the held-out items (a boolean mask over items),
    which stay in the catalogue although nothing before the test part names them.
    """
    _check_fraction("cold-item-fraction", cold_item_fraction, allow_zero=False)
    n_cold = int(_round_half_up(np.asarray(cold_item_fraction * n_items)))
    if n_cold < 1 or n_cold >= n_items:
        raise RecsysError(f"--cold-item-fraction {cold_item_fraction}: holds out {n_cold} of "
                          f"{n_items} items; need at least one held out and one left to train on")
    rng = np.random.default_rng(seed)
    cold = np.zeros(n_items, dtype=bool)
    cold[rng.permutation(n_items)[:n_cold]] = True
    labels = np.where(cold[item], TEST, TRAIN).astype(np.int8)
    if not (labels == TRAIN).any():
        raise RecsysError("--split cold-items: the held-out items hold every interaction; lower "
                          "--cold-item-fraction")
    labels = carve_valid(labels, user, n_users, valid_fraction, seed)
    info = {"cold_items": n_cold, "cold_item_interactions": int((labels == TEST).sum())}
    return labels, info, cold


def _require_time(timestamp: np.ndarray | None, what: str) -> None:
    if timestamp is None:
        raise RecsysError(f"--split {what} needs timestamps, and the data has none; add a "
                          "timestamp column (or --columns timestamp=NAME) or pick --split random")


def drop_unseen(labels: np.ndarray, user: np.ndarray, item: np.ndarray, n_users: int,
                n_items: int, cold_items: np.ndarray | None = None
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """Remove what cannot be evaluated, counting it.

    - test interactions (test_history, test) whose item never occurs before the test part, in
      train or valid (a model cannot score an item it has never seen; Liang et al. drop them the
      same way). Valid items count as seen because the final model is refitted on train + valid
      (`recsys.training.refit`): a validation carve must not shrink the catalogue or the test
      part against a model fitted on the whole training file. Validation targets whose item
      occurs only in valid stay: they are misses for every candidate alike;
    - target interactions (valid, test) of users with no history before that part.

    ``cold_items`` (a boolean mask over items, the cold-items split's held-out items) count as
    seen: they are in the catalogue by design, to be ranked from their features.
    """
    labels = labels.copy()
    counts: dict[str, Any] = {"unseen_items": {}, "no_history": {}}

    def drop_without_history(name: str, code: int) -> None:
        history = np.bincount(user[(labels >= TRAIN) & (labels < code)], minlength=n_users) > 0
        hit = (labels == code) & ~history[user]
        counts["no_history"][name] = {"interactions": int(hit.sum()),
                                      "users": int(len(np.unique(user[hit])))}
        labels[hit] = DROPPED

    # Valid first: the catalogue is what train and the *kept* valid rows hold.
    drop_without_history("valid", VALID)
    seen = np.bincount(item[(labels >= TRAIN) & (labels <= VALID)], minlength=n_items) > 0
    if cold_items is not None:
        seen |= cold_items
    unseen = ~seen[item] & (labels > VALID)
    for name, code in PART_LABELS.items():
        if code != TRAIN:
            counts["unseen_items"][name] = int((unseen & (labels == code)).sum())
    labels[unseen] = DROPPED
    drop_without_history("test", TEST)
    return labels, counts

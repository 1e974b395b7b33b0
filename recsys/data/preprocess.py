"""Preprocessing of a rating log: ids to codes, duplicates, implicit threshold, minimum counts.

Everything works on whole integer arrays (factorize, one sort, bincount): no Python loop per user
or row. The result, `Encoded`, is sorted by (user, item), the order a CSR matrix stores it in,
so later steps (splitting, building the parts) keep that order by boolean masking alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recsys.data.readers import RatingLog
from recsys.errors import RecsysError


@dataclass
class PreprocessOptions:
    implicit_threshold: float | None = None  # ratings >= this become positives (1.0)
    min_user_interactions: int = 0
    min_item_interactions: int = 0
    kcore: bool = False  # repeat the two filters until both hold at once
    duplicates: str = "latest"  # the only policy: keep the latest rating of a (user, item) pair

    def to_dict(self) -> dict[str, Any]:
        return {"implicit_threshold": self.implicit_threshold,
                "min_user_interactions": self.min_user_interactions,
                "min_item_interactions": self.min_item_interactions,
                "kcore": self.kcore, "duplicates": self.duplicates}


@dataclass
class Encoded:
    """Interactions as integer codes, sorted by (user, item); ids[code] is the external id."""

    user: np.ndarray  # int32 codes
    item: np.ndarray  # int32 codes
    rating: np.ndarray  # float32
    timestamp: np.ndarray | None  # int64 seconds
    user_ids: np.ndarray
    item_ids: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # aligned columns, e.g. part

    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def take(self, index: np.ndarray) -> Encoded:
        """Rows ``index`` (a boolean mask or sorted positions keep the (user, item) order)."""
        return Encoded(self.user[index], self.item[index], self.rating[index],
                       None if self.timestamp is None else self.timestamp[index],
                       self.user_ids, self.item_ids,
                       {k: v[index] for k, v in self.extra.items()})

    def compact(self) -> Encoded:
        """Drop ids with no interactions left; codes stay in the same (sorted-id) order."""
        used_u = np.bincount(self.user, minlength=self.n_users) > 0
        used_i = np.bincount(self.item, minlength=self.n_items) > 0
        if used_u.all() and used_i.all():
            return self
        remap_u = (np.cumsum(used_u) - 1).astype(np.int32)
        remap_i = (np.cumsum(used_i) - 1).astype(np.int32)
        return Encoded(remap_u[self.user], remap_i[self.item], self.rating, self.timestamp,
                       self.user_ids[used_u], self.item_ids[used_i], self.extra)


def _codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 codes and the sorted distinct ids they index."""
    if values.dtype.kind in "iu" and len(values):
        lo, hi = int(values.min()), int(values.max())
        base = 0 if lo >= 0 else lo
        if hi - base < max(4 * len(values), 1 << 24):
            # Dense integer ids (MovieLens): a lookup table instead of hashing, O(n), and the
            # codes come out in id order without a sort.
            shifted = values if base == 0 else values - base
            present = np.zeros(hi - base + 1, dtype=bool)
            present[shifted] = True
            lookup = np.cumsum(present, dtype=np.int32) - 1
            uniques = (np.flatnonzero(present) + base).astype(np.int64)
            return lookup[shifted], uniques
    codes, uniques = pd.factorize(values, sort=True)
    uniques = np.asarray(uniques)
    if uniques.dtype.kind not in "iu":
        uniques = uniques.astype(object)
    return codes.astype(np.int32, copy=False), uniques


def encode(user: np.ndarray, item: np.ndarray, rating: np.ndarray | None,
           timestamp: np.ndarray | None, extra: dict[str, np.ndarray] | None = None,
           report: dict[str, Any] | None = None, threshold: float | None = None) -> Encoded:
    """Codes for ids, then sort by (user, item) keeping only the latest of duplicated pairs,
    then (with ``threshold``) keep ratings >= threshold as positives of value 1.0.

    "Latest" is the largest timestamp; ties, and files without timestamps, keep the row that
    comes last in the input. The threshold applies to that latest rating, so a pair whose latest
    rating is low is gone even if an earlier one was high. Columns are gathered once, after both
    filters, to keep peak memory low.
    """
    u, user_ids = _codes(user)
    i, item_ids = _codes(item)
    return _encode_codes(u, user_ids, i, item_ids, {"rating": rating, "timestamp": timestamp},
                         extra, report, threshold)


def _encode_codes(u: np.ndarray, user_ids: np.ndarray, i: np.ndarray, item_ids: np.ndarray,
                  columns: dict[str, np.ndarray | None], extra: dict[str, np.ndarray] | None,
                  report: dict[str, Any] | None, threshold: float | None) -> Encoded:
    """``columns`` holds ``rating`` and ``timestamp`` (or None). They are popped from it, so that
    a caller keeping no other reference (`preprocess_log`) lets each raw column go as soon as it
    is gathered, which keeps this step below the peak of `recsys prepare`'s memory."""
    report = report if report is not None else {}
    rating, timestamp = columns.pop("rating"), columns.pop("timestamp")
    n_rows = len(u)
    n_items = len(item_ids)
    # 32-bit keys and positions when they fit (ML-20M's 138k users x 27k items do): half the
    # memory of int64 for the key, the sort's buffer and the permutation.
    key_type = np.uint32 if len(user_ids) * n_items <= np.iinfo(np.uint32).max else np.int64
    key = u.astype(key_type)
    key *= key_type(n_items)
    key += i.astype(key_type, copy=False)
    # One sort gives CSR order; a stable one keeps equal keys in input order (and is linear on
    # files already sorted by user and item, as MovieLens ships them).
    order = np.argsort(key, kind="stable")
    del key
    if n_rows < np.iinfo(np.int32).max:
        order = order.astype(np.int32)
    u, i = u[order], i[order]
    same = (u[1:] == u[:-1]) & (i[1:] == i[:-1])
    n_dup = int(same.sum())
    if n_dup:
        if timestamp is not None:
            # Reorder within each run of equal pairs by time (lexsort is stable: input order
            # breaks ties). Runs are contiguous, so u and i are unchanged by this.
            key = u.astype(np.int64) * n_items + i
            order = order[np.lexsort((timestamp[order], key))]
            del key
        keep = np.ones(n_rows, dtype=bool)
        keep[:-1] = ~same  # the last row of each run of equal pairs survives
        order, u, i = order[keep], u[keep], i[keep]
    del same
    report["duplicates_dropped"] = n_dup
    if rating is not None and n_rows:
        report["rating_scale"] = [float(rating.min()), float(rating.max())]
    if threshold is not None:
        if rating is None:
            raise RecsysError("--implicit-threshold needs a rating column, and the data has none")
        positive = rating[order] >= np.float32(threshold)
        report["below_threshold_dropped"] = int(len(order) - positive.sum())
        order, u, i = order[positive], u[positive], i[positive]
        del positive, rating
        rating = None  # every kept row is a positive of value 1
    else:
        report["below_threshold_dropped"] = 0
        if rating is not None:
            rating = rating[order].astype(np.float32, copy=False)
    # One raw column at a time: gathered, then released, before the next is allocated.
    if timestamp is not None:
        timestamp = timestamp[order].astype(np.int64, copy=False)
    gathered = {k: v[order] for k, v in (extra or {}).items()}
    n_kept = len(order)
    del order
    if rating is None:
        rating = np.ones(n_kept, np.float32)
    return Encoded(u, i, rating, timestamp, user_ids, item_ids, gathered)


def apply_min_counts(data: Encoded, min_user: int, min_item: int, kcore: bool,
                     report: dict[str, Any]) -> Encoded:
    """Items with fewer than ``min_item`` interactions go, then users with fewer than
    ``min_user`` (the order of Liang et al.'s Mult-VAE preprocessing); with ``kcore`` the pair
    of filters repeats until both hold."""
    before_rows, rounds = len(data), 0
    while True:
        rounds += 1
        changed = False
        if min_item > 1:
            counts = np.bincount(data.item, minlength=data.n_items)
            keep = counts[data.item] >= min_item
            if not keep.all():
                data, changed = data.take(keep), True
        if min_user > 1:
            counts = np.bincount(data.user, minlength=data.n_users)
            keep = counts[data.user] >= min_user
            if not keep.all():
                data, changed = data.take(keep), True
        if not kcore or not changed:
            break
    report["min_count_dropped"] = before_rows - len(data)
    report["kcore_rounds"] = rounds if kcore else 0
    return data


def preprocess(user: np.ndarray, item: np.ndarray, rating: np.ndarray | None,
               timestamp: np.ndarray | None, options: PreprocessOptions,
               extra: dict[str, np.ndarray] | None = None, source: str = "the input"
               ) -> tuple[Encoded, dict[str, Any]]:
    """Encode, de-duplicate, threshold and filter; the report counts every dropped row."""
    report: dict[str, Any] = {"rows_in": int(len(user))}
    data = encode(user, item, rating, timestamp, extra, report, options.implicit_threshold)
    return _filter(data, options, report, source)


def preprocess_log(log: RatingLog, options: PreprocessOptions, source: str = "the input"
                   ) -> tuple[Encoded, dict[str, Any]]:
    """`preprocess` for a log whose columns may go: each raw id column is released as soon as
    it is coded, so the raw and the sorted columns never all coexist (the log is emptied)."""
    report: dict[str, Any] = {"rows_in": len(log)}
    u, user_ids = _codes(log.user)
    log.user = np.empty(0, np.int64)
    i, item_ids = _codes(log.item)
    log.item = np.empty(0, np.int64)
    columns = {"rating": log.rating, "timestamp": log.timestamp}
    log.rating = log.timestamp = None
    data = _encode_codes(u, user_ids, i, item_ids, columns, None, report,
                         options.implicit_threshold)
    return _filter(data, options, report, source)


def _filter(data: Encoded, options: PreprocessOptions, report: dict[str, Any], source: str
            ) -> tuple[Encoded, dict[str, Any]]:
    if options.duplicates != "latest":
        raise RecsysError(f"duplicate policy '{options.duplicates}' is not supported; use 'latest'")
    users_before, items_before = data.n_users, data.n_items
    if len(data) == 0:
        raise RecsysError(f"{source}: no rating is >= the implicit threshold "
                          f"{options.implicit_threshold}; lower --implicit-threshold")
    data = apply_min_counts(data, options.min_user_interactions, options.min_item_interactions,
                            options.kcore, report)
    if len(data) == 0:
        raise RecsysError(
            f"{source}: nothing is left after filtering (users need >= "
            f"{options.min_user_interactions} and items >= {options.min_item_interactions} "
            "interactions); lower --min-user-interactions / --min-item-interactions")
    data = data.compact()
    report.update(rows_out=len(data), users_dropped=users_before - data.n_users,
                  items_dropped=items_before - data.n_items)
    return data, report

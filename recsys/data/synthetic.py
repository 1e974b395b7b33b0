"""Synthetic rating logs with MovieLens-like skew, of any size, for scale benchmarks and tests.

Users' activity is log-normal (a floor plus a long right tail, like ML-20M's "at least 20
ratings" users), item popularity follows a power law over a random ranking of the items, and
ratings follow ML-20M's half-star histogram. Everything is drawn in whole arrays: 20M rows take
seconds. `write_ml20m_csv` writes the result in ML-20M's ratings.csv format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recsys.data.io import atomic_path

# ML-20M: 138,493 users, 26,744 movies, 20,000,263 ratings (its README).
ML20M_SHAPE = (138_493, 26_744, 20_000_263)
RATING_VALUES = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0], dtype=np.float32)
# Approximate share of each half-star in ML-20M (about half of all ratings are >= 4).
RATING_SHARES = np.array([0.012, 0.033, 0.014, 0.072, 0.044, 0.213, 0.105, 0.278, 0.077, 0.152])
# 1995-01-09 .. 2015-03-31, ML-20M's time span.
TIME_SPAN = (789_652_009, 1_427_784_002)


@dataclass
class SyntheticRatings:
    user: np.ndarray  # int64 ids 1..n_users, sorted, then by item
    item: np.ndarray  # int64 ids 1..n_items
    rating: np.ndarray  # float32 half stars
    timestamp: np.ndarray  # int64 seconds

    def __len__(self) -> int:
        return len(self.user)


def synthetic_ratings(n_users: int = ML20M_SHAPE[0], n_items: int = ML20M_SHAPE[1],
                      n_ratings: int = ML20M_SHAPE[2], *, min_per_user: int = 20,
                      activity_sigma: float = 1.0, popularity_exponent: float = 1.1,
                      popularity_offset: float = 30.0, seed: int = 0) -> SyntheticRatings:
    """Draw about ``n_ratings`` distinct (user, item) ratings.

    Per-user counts are ``min_per_user`` plus a log-normal share of the rest (capped at
    ``n_items``); item weights are ``(rank + offset) ** -exponent``. Every user ends with exactly
    their drawn count unless it exceeds what the popularity draw could fill (rare, heavy users).
    """
    if n_users < 1 or n_items < 1 or n_ratings < n_users:
        raise ValueError("need n_users >= 1, n_items >= 1 and n_ratings >= n_users")
    rng = np.random.default_rng(seed)
    floor = min(min_per_user, n_items, n_ratings // n_users)
    extra = rng.lognormal(0.0, activity_sigma, n_users)
    counts = floor + np.floor(extra / extra.sum() * (n_ratings - floor * n_users)).astype(np.int64)
    counts = np.minimum(counts, n_items)
    # Item popularity: power law over a random permutation, so ids carry no popularity signal.
    weights = (np.arange(n_items) + popularity_offset) ** -popularity_exponent
    cdf = np.cumsum(weights[rng.permutation(n_items)])
    cdf /= cdf[-1]
    # Over-draw with replacement, keep each user's first distinct draws (the draw order is
    # random, so "first" is a random subset of the distinct items).
    draws = np.ceil(counts * 1.6).astype(np.int64) + 16
    user = np.repeat(np.arange(n_users, dtype=np.int32), draws)
    item = np.searchsorted(cdf, rng.random(len(user)), side="right").astype(np.int32)
    np.minimum(item, n_items - 1, out=item)
    key = user.astype(np.int64) * n_items + item
    _, first = np.unique(key, return_index=True)
    del key
    first.sort()  # back to draw order: grouped by user, random within the user
    u = user[first]
    starts = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=n_users), out=starts[1:])
    rank = np.arange(len(first)) - starts[u]
    keep = first[rank < counts[u]]
    del first, u, rank
    key = user[keep].astype(np.int64) * n_items + item[keep]
    del user, item, keep
    key.sort()  # ML-20M's order: by user, then by item
    out_user = key // n_items
    out_item = key - out_user * n_items
    n = len(key)
    del key
    rating = RATING_VALUES[rng.choice(len(RATING_VALUES), size=n, p=RATING_SHARES)]
    # Each user is active from a random start for a log-normal stretch of time.
    lo, hi = TIME_SPAN
    start = rng.uniform(lo, hi, n_users)
    span = np.minimum(rng.lognormal(16.0, 1.5, n_users), hi - start)
    timestamp = (start[out_user] + rng.random(n) * span[out_user]).astype(np.int64)
    return SyntheticRatings(out_user + 1, out_item + 1, rating, timestamp)


def write_ml20m_csv(path: str | os.PathLike[str], data: SyntheticRatings,
                    chunk_rows: int = 2_000_000) -> Path:
    """Write ``userId,movieId,rating,timestamp`` rows like ML-20M's ratings.csv (atomically)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    labels = pa.array([f"{v:.1f}" for v in RATING_VALUES])
    codes = np.searchsorted(RATING_VALUES, data.rating).astype(np.int8)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(b"userId,movieId,rating,timestamp\n")
        options = pacsv.WriteOptions(include_header=False, quoting_style="none")
        for lo in range(0, len(data), chunk_rows):
            hi = min(lo + chunk_rows, len(data))
            table = pa.table({
                "userId": data.user[lo:hi], "movieId": data.item[lo:hi],
                "rating": pa.DictionaryArray.from_arrays(pa.array(codes[lo:hi]), labels
                                                         ).cast(pa.string()),
                "timestamp": data.timestamp[lo:hi]})
            pacsv.write_csv(table, f, options)
    return path

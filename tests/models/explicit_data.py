"""Rating data shared by the tests of the explicit-rating models (AutoRec, CF-NADE): a tiny
matrix with a cold user and a cold item, the data such a model must refuse, and a small prepared
dataset for the command-line tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recsys.data.interactions import Dataset, Interactions, Vocabulary

META = {"implicit": False, "rating_scale": [1.0, 5.0]}

# user 4 and item 3 have no training ratings
ROWS = [(0, 0, 5.0), (0, 1, 3.0), (1, 0, 4.0), (1, 2, 2.0), (2, 1, 1.0), (2, 2, 4.0),
        (3, 0, 3.0), (3, 1, 4.0)]

# (rows, meta, a part of the one-line error): data an explicit model cannot learn from
UNUSABLE = [
    (ROWS, {"implicit": True}, "implicit"),
    ([(0, 0, 1.0), (1, 1, 1.0)], {}, "implicit feedback"),
    ([(0, 0, 6.0), (1, 1, 3.0)], META, "outside the declared rating scale"),
    ([(0, 0, 0.0), (1, 1, 3.0)], {"rating_scale": [0.0, 5.0]}, "0 or below"),
]


def ratings(rows: list[tuple[int, int, float]], n_users: int = 5, n_items: int = 4
            ) -> Interactions:
    """(user, item, rating) rows over users 10.. and items 100.. (internal ids 0..)."""
    users, items = Vocabulary(np.arange(n_users) + 10), Vocabulary(np.arange(n_items) + 100)
    frame = pd.DataFrame(rows, columns=["user", "item", "rating"])
    return Interactions.from_frame(frame, users, items)


def save_rating_dataset(path: Path) -> None:
    """A prepared dataset at ``path``: 60 users (ids 1..60) x 40 items (``m0``..``m39``) of
    rank-2 ratings rounded to 1-5 stars, half of them observed, split 70/15/15 into train /
    valid / test; item ``m39`` has no ratings at all."""
    rng = np.random.default_rng(0)
    n_users, n_items = 60, 40
    users, items = Vocabulary(np.arange(n_users) + 1), Vocabulary([f"m{i}" for i in range(n_items)])
    taste = rng.normal(size=(n_users, 2)) @ rng.normal(size=(2, n_items))
    dense = np.clip(np.round(3 + taste), 1, 5)
    observed = rng.random((n_users, n_items)) < 0.5
    observed[:, 39] = False
    label = rng.random((n_users, n_items))

    def part(mask: np.ndarray) -> Interactions:
        r, c = np.nonzero(mask)
        frame = pd.DataFrame({"user": r, "item": c, "rating": dense[r, c]})
        return Interactions.from_frame(frame, users, items)

    parts = {"train": part(observed & (label < 0.7)),
             "valid": part(observed & (label >= 0.7) & (label < 0.85)),
             "test": part(observed & (label >= 0.85))}
    Dataset(parts, dict(META)).save(path)

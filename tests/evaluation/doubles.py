"""Test doubles: recommenders with known scores, and small prepared datasets."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from pydantic import Field

from recsys.config import StrictConfig
from recsys.data.interactions import Dataset, EvalSplit, Interactions, Vocabulary
from recsys.models.base import Recommender


class FixedScores(Recommender):
    """Returns rows of a fixed users x items score matrix (for hand-computed cases)."""

    name: ClassVar[str] = "fixed"

    def __init__(self, scores: np.ndarray) -> None:
        super().__init__()
        self.table = torch.as_tensor(np.asarray(scores, dtype=np.float32))
        self.n_users, self.n_items = self.table.shape
        self.calls: list[int] = []

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        assert history.shape == (len(users), self.n_items)
        self.calls.append(len(users))
        return self.table[torch.as_tensor(users)].clone()


class DotConfig(StrictConfig):
    factors: int = Field(4, ge=1)
    seed: int = 0


class DotModel(Recommender):
    """Random user/item factors; unknown users (-1) are folded in from their history."""

    name: ClassVar[str] = "dot"
    Config: ClassVar[type[StrictConfig]] = DotConfig

    def fit(self, train: Interactions, valid: EvalSplit | None = None, ctx: object = None
            ) -> DotModel:
        self.n_users, self.n_items = train.n_users, train.n_items
        g = torch.Generator().manual_seed(self.config.seed)
        self.user_factors = torch.randn(self.n_users, self.config.factors, generator=g)
        self.item_factors = torch.randn(self.n_items, self.config.factors, generator=g)
        return self

    def score(self, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        users = torch.as_tensor(np.asarray(users, dtype=np.int64))
        known = self.user_factors[users.clamp(min=0)]
        hist = torch.as_tensor(history.toarray(), dtype=torch.float32)
        folded = hist @ self.item_factors
        vectors = torch.where((users >= 0).unsqueeze(1), known, folded)
        return vectors @ self.item_factors.T

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"users": self.user_factors, "items": self.item_factors}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.user_factors, self.item_factors = state["users"], state["items"]


class ExplicitDot(DotModel):
    """Rating predictions: 3 + dot product, so that clipping to the scale matters."""

    name: ClassVar[str] = "explicitdot"
    explicit: ClassVar[bool] = True

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        u = self.user_factors[torch.as_tensor(users)]
        v = self.item_factors[torch.as_tensor(items)]
        return (3.0 + (u * v).sum(1)).numpy()


def random_split(n_users: int, n_items: int, seed: int = 0, density: float = 0.15,
                 target_density: float = 0.08) -> EvalSplit:
    """History and disjoint target over users x items; some users lack one or the other."""
    rng = np.random.default_rng(seed)
    hist = (rng.random((n_users, n_items)) < density)
    target = (rng.random((n_users, n_items)) < target_density) & ~hist
    hist[: max(1, n_users // 10)] = False  # users with target but no history: skipped
    h, t = sp.csr_matrix(hist.astype(np.float32)), sp.csr_matrix(target.astype(np.float32))
    has_t, has_h = np.diff(t.indptr) > 0, np.diff(h.indptr) > 0
    return EvalSplit(h, t, np.flatnonzero(has_t & has_h), int((has_t & ~has_h).sum()))


def make_dataset(n_users: int = 40, n_items: int = 25, seed: int = 0, explicit: bool = False
                 ) -> Dataset:
    """A prepared dataset with integer user ids (1000+) and string item ids ('i0'..)."""
    rng = np.random.default_rng(seed)
    users = Vocabulary(np.arange(1000, 1000 + n_users))
    items = Vocabulary([f"i{j}" for j in range(n_items)])
    cells = rng.random((n_users, n_items))
    train = cells < 0.2
    test = (cells >= 0.2) & (cells < 0.3)
    train[-2:] = False  # two users known to the vocabulary with no training data
    test[-1:] = False  # ... one of them with nothing at all: a cold user for `recommend`

    def part(mask: np.ndarray) -> Interactions:
        u, i = np.nonzero(mask)
        rating = rng.integers(1, 6, size=len(u)).astype(np.float32) if explicit else 1.0
        frame = pd.DataFrame({"user": u, "item": i, "rating": rating})
        return Interactions.from_frame(frame, users, items)

    meta = {"implicit": not explicit}
    if explicit:
        meta["rating_scale"] = [1, 5]
    return Dataset({"train": part(train), "test": part(test)}, meta)

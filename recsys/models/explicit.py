"""What the explicit-rating models (AutoRec, CF-NADE) share around their networks: the checks
that the training data is graded ratings on a positive scale, the training ratings kept for
prediction (and saved with the weights), the fallback means for pairs the model has nothing to go
on for, and `predict` / `predict_with_fallback` built on them.

A model subclasses `ExplicitRecommender` and keeps its own network, loss and scoring; its
network registers the fallback buffers with `register_rating_means`, so that their
``state_dict`` keys (``global_mean``, ``user_mean``, ``item_mean``, ``user_count``,
``item_count``) are the network's own and older saved models load unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Self

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recsys.data.interactions import Interactions
from recsys.errors import RecsysError
from recsys.models.base import csr_to_dense
from recsys.models.neural import NeuralRecommender
from recsys.models.nn import WeightsCache

# Fallback labels, as written in `recsys predict`'s `fallback` column ("" = the model predicted).
ITEM_MEAN, USER_MEAN, GLOBAL_MEAN = "item_mean", "user_mean", "global_mean"
_RATINGS_KEYS = ("indptr", "indices", "data")


def register_rating_means(module: nn.Module, n_users: int, n_items: int) -> None:
    """The fallback statistics as buffers of ``module`` (they move and save with it)."""
    module.register_buffer("global_mean", torch.tensor(3.0))
    module.register_buffer("user_mean", torch.zeros(n_users))
    module.register_buffer("item_mean", torch.zeros(n_items))
    module.register_buffer("user_count", torch.zeros(n_users))
    module.register_buffer("item_count", torch.zeros(n_items))


class ExplicitRecommender(NeuralRecommender):
    """A neural model of explicit ratings over rows of items (``based: item``, the rows are the
    items' ratings by the users) or of users (``based: user``)."""

    explicit: ClassVar[bool] = True
    title: ClassVar[str]  # the model's name in prose ("AutoRec")
    verb: ClassVar[str] = "predicts"  # "<name> <verb> explicit ratings, but ..."
    zero_reason: ClassVar[str]  # why a rating of 0 or below cannot be told from "not rated"
    # What counts as ungraded data: a one-point rating scale, or a single distinct training
    # rating whatever the scale (where each rating value is a class of its own).
    flat_when: ClassVar[Literal["scale", "ratings"]] = "scale"
    row_chunk: ClassVar[int] = 4096  # rows encoded at once when every row's code is computed

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.ratings: sp.csr_matrix | None = None  # users x items training ratings
        self._codes: WeightsCache[torch.Tensor] = WeightsCache()

    @property
    def item_based(self) -> bool:
        return self.config.based == "item"

    def network_for(self, n_columns: int, n_users: int, n_items: int) -> nn.Module:
        """The model's network over rows of ``n_columns`` entries, with the fallback buffers
        (`register_rating_means`) for ``n_users`` and ``n_items``."""
        raise NotImplementedError

    def build(self, n_users: int, n_items: int) -> None:
        self.network = self.network_for(n_users if self.item_based else n_items, n_users,
                                        n_items)
        self._codes.clear()

    def training_matrix(self, train: Interactions) -> sp.csr_matrix:
        return train.matrix.T.tocsr() if self.item_based else train.matrix

    # -- the training ratings ------------------------------------------------------------------

    def checked_ratings(self, train: Interactions, meta: Mapping[str, Any]
                        ) -> tuple[sp.csr_matrix, float, float]:
        """The training ratings (float32 CSR) and the rating scale ``(lo, hi)``: the dataset's
        declared ``rating_scale``, else the observed range; data the model cannot learn from
        ends in one line."""
        name = self.name
        matrix = train.matrix.tocsr().astype(np.float32)
        if meta.get("implicit"):
            raise RecsysError(f"{name} {self.verb} explicit ratings, but the prepared data is "
                              "implicit (no rating column); prepare ratings with a rating "
                              "column, or use an implicit model (multvae, ease, als)")
        if matrix.nnz == 0:
            raise RecsysError(f"{name}: the training data has no ratings")
        observed = (float(matrix.data.min()), float(matrix.data.max()))
        scale = meta.get("rating_scale")
        lo, hi = (float(scale[0]), float(scale[1])) if scale else observed
        flat = lo == hi if self.flat_when == "scale" else observed[0] == observed[1]
        if flat:
            value = lo if self.flat_when == "scale" else observed[0]
            raise RecsysError(f"{name}: every training rating is {value:g}: this looks like "
                              f"implicit feedback; {self.title} needs graded explicit ratings")
        if lo <= 0:
            raise RecsysError(f"{name}: the rating scale [{lo:g}, {hi:g}] reaches 0 or below, "
                              f"but {self.zero_reason}; shift the ratings to be positive")
        outside = (matrix.data < lo) | (matrix.data > hi)
        if outside.any():
            raise RecsysError(f"{name}: {int(outside.sum())} training ratings lie outside the "
                              f"declared rating scale [{lo:g}, {hi:g}] (e.g. "
                              f"{matrix.data[outside][0]:g}); fix the ratings or the dataset's "
                              "rating_scale")
        return matrix, lo, hi

    def keep_ratings(self, matrix: sp.csr_matrix) -> None:
        """Keep the training ratings and fill the network's fallback means and counts (a user or
        item without ratings gets the global mean)."""
        net = self.network
        users_n = np.diff(matrix.indptr).astype(np.float64)
        items_n = np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float64)
        user_sum = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
        item_sum = np.asarray(matrix.sum(axis=0), dtype=np.float64).ravel()
        global_mean = float(matrix.data.mean())
        with np.errstate(invalid="ignore", divide="ignore"):
            user_mean = np.where(users_n > 0, user_sum / users_n, global_mean)
            item_mean = np.where(items_n > 0, item_sum / items_n, global_mean)
        net.global_mean.fill_(global_mean)
        net.user_mean.copy_(torch.from_numpy(user_mean))
        net.item_mean.copy_(torch.from_numpy(item_mean))
        net.user_count.copy_(torch.from_numpy(users_n))
        net.item_count.copy_(torch.from_numpy(items_n))
        self.ratings = matrix
        self._codes.clear()

    def _input_rows(self) -> sp.csr_matrix:
        if self.ratings is None:
            raise RecsysError(f"{self.name}: the model has not been fitted")
        return self.ratings.T.tocsr() if self.item_based else self.ratings

    # -- hidden codes of the training rows -----------------------------------------------------

    def encode_rows(self, dense: torch.Tensor) -> torch.Tensor:
        """Hidden codes of dense rating rows given all of their ratings."""
        raise NotImplementedError

    def _all_codes(self) -> torch.Tensor:
        """Hidden codes of every training row, cached until the weights change (`WeightsCache`:
        a validation pass during training and the final model never see stale codes)."""

        def encode_all() -> torch.Tensor:
            rows = self._input_rows()
            with torch.no_grad():
                chunks = [self.encode_rows(csr_to_dense(rows[s:s + self.row_chunk], self.device))
                          for s in range(0, rows.shape[0], self.row_chunk)]
            return torch.cat(chunks).float()

        return self._codes.get(self.network, self.device, encode_all)

    def to(self, device: torch.device | str) -> Self:
        super().to(device)
        self._codes.clear()
        return self

    # -- prediction ----------------------------------------------------------------------------

    def covered(self, user_ok: np.ndarray, item_ok: np.ndarray) -> np.ndarray:
        """Which pairs the model predicts itself, from whether the user and the item have
        training ratings; the others fall back to a mean."""
        return user_ok & item_ok

    def predict_pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The model's ratings of covered (row, column) pairs; a row unknown to the model is
        -1."""
        raise NotImplementedError

    def predict_with_fallback(self, users: np.ndarray, items: np.ndarray
                              ) -> tuple[np.ndarray, np.ndarray]:
        """Predicted ratings of (user, item) pairs (internal ids, -1 = unknown) and, per pair,
        the fallback used: '' (the model), 'item_mean', 'user_mean' or 'global_mean'."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if users.shape != items.shape:
            raise ValueError("users and items must have the same length")
        net = self.network
        user_known = (users >= 0) & (users < self.n_users)
        item_known = (items >= 0) & (items < self.n_items)
        user_ok = user_known & (net.user_count.cpu().numpy()[np.where(user_known, users, 0)] > 0)
        item_ok = item_known & (net.item_count.cpu().numpy()[np.where(item_known, items, 0)] > 0)
        model_ok = self.covered(user_ok, item_ok)

        out = np.full(len(users), float(net.global_mean), dtype=np.float64)
        reason = np.full(len(users), GLOBAL_MEAN, dtype=object)
        only_item = item_ok & ~model_ok
        out[only_item] = net.item_mean.cpu().numpy()[items[only_item]]
        reason[only_item] = ITEM_MEAN
        only_user = user_ok & ~model_ok
        out[only_user] = net.user_mean.cpu().numpy()[users[only_user]]
        reason[only_user] = USER_MEAN
        reason[model_ok] = ""
        if model_ok.any():
            users, items = np.where(user_known, users, -1), np.where(item_known, items, -1)
            rows, cols = (items, users) if self.item_based else (users, items)
            out[model_ok] = self.predict_pairs(rows[model_ok], cols[model_ok])
        return out, reason

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.predict_with_fallback(users, items)[0]

    def users_on_device(self, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``users`` as ids on the model's device, 0 where unknown to the model (so that they
        index the buffers), and whether each is known."""
        users = np.asarray(users, dtype=np.int64)
        known = (users >= 0) & (users < self.n_users)
        return (torch.as_tensor(np.where(known, users, 0), device=self.device),
                torch.as_tensor(known, device=self.device))

    # -- persistence: the training ratings travel with the weights -----------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = dict(self.network.state_dict())
        if self.ratings is not None:
            m = self.ratings
            state["ratings.indptr"] = torch.from_numpy(m.indptr.astype(np.int64))
            state["ratings.indices"] = torch.from_numpy(m.indices.astype(np.int64))
            state["ratings.data"] = torch.from_numpy(m.data.astype(np.float32))
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        parts = [state.pop(f"ratings.{k}", None) for k in _RATINGS_KEYS]
        super().load_state_dict(state)
        self._codes.clear()
        if all(p is not None for p in parts):
            indptr, indices, data = (p.numpy() for p in parts)
            self.ratings = sp.csr_matrix((data, indices, indptr),
                                         shape=(self.n_users, self.n_items))

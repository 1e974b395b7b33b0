"""The contract every registered model passes (after implicit's shared recommender tests).

A model's test module subclasses `RecommenderContract`, names the model and gives small, fast
settings::

    class TestEASE(RecommenderContract):
        model_name = "ease"
        params = {"lambda_": 10.0}

The synthetic data is a checkerboard whose right answer is known: two groups of users, each
liking one block of items. Every user has seen all items of their block but one; that held-out
item must come first among the items the user has not seen (the other block's items are liked by
nobody in the user's group). The model is fitted once per test class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone

from recsys.config import StrictConfig
from recsys.data.features import Features, FeatureTable
from recsys.data.interactions import EvalSplit, Interactions, Vocabulary
from recsys.errors import RecsysError
from recsys.models.base import FitContext, Recommender
from recsys.models.registry import create_model, get_model_class


@dataclass
class Checkerboard:
    train: Interactions
    valid: EvalSplit  # history = train, target = the held-out item(s) of every user
    heldout: np.ndarray  # (n_users,) the held-out liked item of each user
    meta: dict[str, Any]  # what a prepared dataset's metadata would say (FitContext.data_meta)
    disliked: np.ndarray | None = None  # ratings only: a held-out item each user rated 1
    # Side information (FitContext.features): one user feature per block, 1.0 on the user's own
    # (models that read no features ignore it; those that need it, such as cvae, get it here).
    features: Features = field(default_factory=Features)

    @property
    def users(self) -> np.ndarray:
        return np.arange(self.train.n_users)

    @property
    def history(self) -> sp.csr_matrix:
        return self.train.matrix


def checkerboard(users_per_block: int = 16, items_per_block: int = 8, blocks: int = 2,
                 ratings: bool = False) -> Checkerboard:
    """Users of block b like exactly the items of block b; user u holds out one of them.

    With ``ratings`` (for explicit models) the liked items are rated 4 or 5 (the held-out one 5)
    and every user also rates three items of the next block 1, one of which is held out too: a
    rating model must predict the held-out liked item above the held-out disliked one.
    """
    n_users, n_items = users_per_block * blocks, items_per_block * blocks
    rows = np.arange(n_users)
    block_of_user = rows // users_per_block
    liked = (np.arange(n_items)[None, :] // items_per_block) == block_of_user[:, None]
    # Spread the held-out items so that each item of a block is held out by some user.
    heldout = block_of_user * items_per_block + rows % items_per_block
    seen = liked.copy()
    seen[rows, heldout] = False
    values = np.ones(liked.shape)
    disliked = None
    if ratings:
        values = np.where((np.arange(n_items)[None, :] + rows[:, None]) % 2, 4.0, 5.0)
        values[rows, heldout] = 5.0
        other = (block_of_user + 1) % blocks * items_per_block
        cols = [other + (rows + shift) % items_per_block for shift in range(3)]
        for c in cols:
            values[rows, c] = 1.0
        for c in cols[:2]:
            seen[rows, c] = True
        disliked = cols[2]
    user_ids = Vocabulary(rows + 100)  # external ids differ from indices on purpose
    item_ids = Vocabulary(np.arange(n_items) + 5000)

    def matrix(mask: np.ndarray) -> Interactions:
        r, c = np.nonzero(mask)
        frame = pd.DataFrame({"user": r, "item": c, "rating": values[r, c]})
        return Interactions.from_frame(frame, user_ids, item_ids)

    train = matrix(seen)
    target = np.zeros_like(seen)
    target[rows, heldout] = True
    if disliked is not None:
        target[rows, disliked] = True
    valid = EvalSplit(history=train.matrix, target=matrix(target).matrix, users=rows)
    meta = ({"implicit": False, "rating_scale": [1.0, 5.0]} if ratings else {"implicit": True})
    blocks_of_users = np.eye(blocks, dtype=np.float32)[block_of_user]
    features = Features(user=FeatureTable(blocks_of_users,
                                          tuple(f"block={b}" for b in range(blocks))))
    return Checkerboard(train, valid, heldout, meta, disliked, features)


def masked(scores: torch.Tensor, seen: sp.csr_matrix) -> torch.Tensor:
    out = scores.detach().float().cpu().clone()
    out[torch.from_numpy(seen.toarray() > 0)] = float("-inf")
    return out


class RecommenderContract:
    """Mixin of contract tests; subclasses set ``model_name`` and ``params``."""

    model_name: ClassVar[str]
    params: ClassVar[dict[str, Any]] = {}
    # A personalised model ranks each user's held-out item first; popularity cannot.
    ranks_heldout_first: ClassVar[bool] = True
    # Whether a user unknown to the model (id -1) is scored from the history it is given.
    folds_in_unknown_users: ClassVar[bool] = True
    # Batched vs one-by-one scoring may differ by float32 rounding in matrix products.
    rtol: ClassVar[float] = 1e-4
    atol: ClassVar[float] = 1e-5

    # -- fixtures ---------------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls) -> Checkerboard:
        return checkerboard(ratings=bool(getattr(get_model_class(cls.model_name), "explicit",
                                                 False)))

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, data: Checkerboard) -> Recommender:
        torch.manual_seed(0)
        before = data.train.matrix.copy()
        model = cls.make()
        returned = model.fit(data.train, data.valid, FitContext(quiet=True, data_meta=data.meta,
                                                                features=data.features))
        assert returned is model, "fit must return the model itself"
        assert (data.train.matrix != before).nnz == 0, "fit must not modify the training data"
        return model

    @classmethod
    def make(cls, **overrides: Any) -> Recommender:
        return create_model(cls.model_name, **{**cls.params, **overrides})

    @staticmethod
    def scores(model: Recommender, users: np.ndarray, history: sp.csr_matrix) -> torch.Tensor:
        out = model.score(np.asarray(users, dtype=np.int64), history)
        assert isinstance(out, torch.Tensor)
        return out.detach().cpu()

    # -- the contract -----------------------------------------------------------------------------

    def test_registered_under_its_name(self):
        cls = get_model_class(self.model_name)
        assert cls.name == self.model_name
        assert issubclass(cls, Recommender)
        assert issubclass(cls.Config, StrictConfig)

    def test_scores_are_float32_over_the_full_catalogue(self, fitted, data):
        users = data.users[:5]
        out = self.scores(fitted, users, data.history[users])
        assert out.dtype == torch.float32
        assert out.shape == (5, data.train.n_items)
        assert torch.isfinite(out).all()
        assert fitted.n_items == data.train.n_items

    @staticmethod
    def assert_heldout_first(out: torch.Tensor, data: Checkerboard, users: np.ndarray) -> None:
        """Implicit data: the held-out item is the best unseen item of every user. Ratings: the
        held-out liked item is predicted above the held-out disliked one (predicted ratings of
        items nobody in the user's group rated are unconstrained, so no argmax over them)."""
        out = masked(out, data.history[users])
        rows = torch.arange(len(users))
        if data.disliked is not None:
            liked = out[rows, data.heldout[users]]
            disliked = out[rows, data.disliked[users]]
            wrong = np.flatnonzero((liked <= disliked).numpy())
        else:
            wrong = np.flatnonzero(out.argmax(dim=1).numpy() != data.heldout[users])
        assert len(wrong) == 0, f"held-out item not first for users {users[wrong].tolist()}"

    def test_heldout_item_ranks_first(self, fitted, data):
        if not self.ranks_heldout_first:
            pytest.skip("not a personalised model")
        self.assert_heldout_first(self.scores(fitted, data.users, data.history), data,
                                  data.users)

    def test_unknown_users_are_scored_from_their_history(self, fitted, data):
        users = data.users[::3]
        out = self.scores(fitted, np.full(len(users), -1), data.history[users])
        assert out.shape == (len(users), data.train.n_items)
        assert torch.isfinite(out).all()
        if self.folds_in_unknown_users and self.ranks_heldout_first:
            self.assert_heldout_first(out, data, users)

    def test_rating_predictions_agree_with_scores(self, fitted, data):
        if not getattr(fitted, "explicit", False):
            pytest.skip("not a rating model")
        users = data.users
        predicted = np.asarray(fitted.predict(users, data.heldout), dtype=np.float64)
        scored = self.scores(fitted, users, data.history)[torch.from_numpy(users),
                                                          torch.from_numpy(data.heldout)]
        np.testing.assert_allclose(predicted, scored.double().numpy(), rtol=self.rtol,
                                   atol=self.atol)

    def test_batch_scores_equal_one_by_one(self, fitted, data):
        users = data.users
        batch = self.scores(fitted, users, data.history)
        single = torch.cat([self.scores(fitted, users[i:i + 1], data.history[i:i + 1])
                            for i in range(len(users))])
        torch.testing.assert_close(batch, single, rtol=self.rtol, atol=self.atol)
        # Order within a batch must not matter either.
        order = users[::-1].copy()
        reordered = self.scores(fitted, order, data.history[order])
        torch.testing.assert_close(reordered, batch[torch.from_numpy(order)], rtol=self.rtol,
                                   atol=self.atol)

    def test_save_load_round_trip_gives_identical_scores(self, fitted, data, tmp_path):
        fitted.save(tmp_path / "model")
        loaded = Recommender.load(tmp_path / "model")
        assert type(loaded) is type(fitted)
        assert loaded.get_params() == fitted.get_params()
        assert (loaded.n_users, loaded.n_items) == (fitted.n_users, fitted.n_items)
        users = data.users
        assert torch.equal(self.scores(loaded, users, data.history),
                           self.scores(fitted, users, data.history))

    def test_params_round_trip_and_sklearn_clone(self, fitted):
        params = fitted.get_params()
        rebuilt = type(fitted)(**params)
        assert rebuilt.get_params() == params
        copy = clone(fitted)
        assert type(copy) is type(fitted) and copy is not fitted
        assert copy.get_params() == params
        if params:
            key, value = next(iter(params.items()))
            assert copy.set_params(**{key: value}) is copy
            assert copy.get_params()[key] == value

    def test_unknown_config_key_suggests_the_closest(self):
        fields = list(get_model_class(self.model_name).Config.model_fields)
        if not fields:
            with pytest.raises(RecsysError, match="unknown key 'bogus'"):
                self.make(bogus=1)
            return
        key = max(fields, key=len)
        typo = key[:-1] if len(key) > 2 else key + "x"
        with pytest.raises(RecsysError, match=f"unknown key '{typo}'.*'{key}'"):
            self.make(**{typo: 1})
        with pytest.raises(RecsysError, match=f"'{key}'"):
            self.make().set_params(**{typo: 1})

"""CVAE with Mult-VAE's item cold-start option (``item_features``): the same feature-aware
output layer (`recsys.models.multvae.ItemDecoder`), so an item with no training interaction is
ranked from its features, from a history, from user features alone or after a save and load.

Checked here: the contract with the option on; the default network unchanged; on the
checkerboard whose last item of each block has no training interaction, those items get finite
scores from their features alone, stay out of the training softmax, and a trained model ranks
the one of the user's block first (also for a new user scored from features only); the saved
model carries both feature matrices and scores alike; the refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from recsys.data.features import Features, FeatureTable
from recsys.errors import RecsysError
from recsys.models.base import FitContext, Recommender
from recsys.models.cvae import CONDITION, CVAE
from recsys.models.multvae import ITEM_FEATURES, TRAINED_ITEMS, MultVAE
from recsys.models.neural import Batch
from tests.reliability.helpers import assert_one_line_error, cli, write_ratings, write_user_features

from .contract import Checkerboard, RecommenderContract, checkerboard
from .test_multvae_item_features import BLOCKS, COLD, _cold_board

SMALL = {"hidden_dims": [32], "latent_dim": 8, "total_anneal_steps": 20}
FAST = {"epochs": 60, "batch_size": 16, "lr": 1e-2, "device": "cpu", "patience": None}


def item_blocks(n_items: int, blocks: int) -> FeatureTable:
    """One feature per block, 1.0 on the item's own."""
    block = np.arange(n_items) // (n_items // blocks)
    return FeatureTable(np.eye(blocks, dtype=np.float32)[block],
                        tuple(f"block={b}" for b in range(blocks)))


class TestCVAEItemFeatures(RecommenderContract):
    model_name = "cvae"
    params = {**SMALL, **FAST, "item_features": True}

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls) -> Checkerboard:
        board = checkerboard()
        features = Features(user=board.features.user,
                            item=item_blocks(board.train.n_items, BLOCKS))
        return dataclasses.replace(board, features=features)


@pytest.fixture(scope="module")
def cold_board():
    """`_cold_board` (the last item of each block without training interactions, item features:
    the item's block) with user features: the user's block."""
    train, valid, features = _cold_board()
    user_block = np.arange(train.n_users) // (train.n_users // BLOCKS)
    users = FeatureTable(np.eye(BLOCKS, dtype=np.float32)[user_block],
                         tuple(f"block={b}" for b in range(BLOCKS)))
    return train, valid, Features(user=users, item=features.item), user_block


@pytest.fixture(scope="module")
def model(cold_board) -> CVAE:
    train, valid, features, _ = cold_board
    torch.manual_seed(0)
    return CVAE(**SMALL, **FAST, item_features=True).fit(train, valid,
                                                       FitContext(features=features))


def _scores(model: CVAE, train) -> torch.Tensor:
    return model.score(np.arange(train.n_users), train.matrix)


def test_the_default_network_has_no_feature_output():
    m = CVAE(**SMALL)
    m.user_features_ = torch.eye(2)
    m.build(2, 20)
    assert m.network.item_output is None
    assert [k for k in m.state_dict() if k.startswith("item_output")] == []
    assert m.network.decoder[-1].out_features == 20


def test_the_option_builds_multvaes_output_layer_after_the_conditioned_decoder(model, cold_board):
    train, _, features, _ = cold_board
    net = model.network
    assert net.decoder[0].in_features == model.config.latent_dim + features.user.dim
    out = net.item_output
    assert out is not None and out.free.in_features == model.config.hidden_dims[0]
    torch.testing.assert_close(out.item_features, torch.from_numpy(features.item.values))
    assert torch.equal(out.trained_items == 0,
                       torch.isin(torch.arange(train.n_items), torch.from_numpy(COLD)))


def test_cold_items_get_finite_scores_from_their_features(model, cold_board):
    train, _, _, user_block = cold_board
    scores = _scores(model, train)
    assert torch.isfinite(scores[:, COLD]).all()
    # the cold item of the user's own block first (its free embedding was never trained)
    assert (scores[:, COLD].argmax(1).numpy() == user_block).all()
    out = model.network.item_output
    with torch.no_grad():
        out.free.weight[COLD] += 5.0
    try:
        torch.testing.assert_close(_scores(model, train), scores)
    finally:
        with torch.no_grad():
            out.free.weight[COLD] -= 5.0


def test_a_new_user_from_features_alone_gets_the_cold_item_of_their_block(model, cold_board):
    train, _, features, user_block = cold_board
    empty = sp.csr_matrix(train.matrix.shape, dtype=np.float32)
    ids = np.full(train.n_users, -1)
    scores = model.score_features(ids, empty, features.user.values)
    assert torch.isfinite(scores).all()
    assert (scores[:, COLD].argmax(1).numpy() == user_block).all()


def test_cold_items_stay_out_of_the_training_softmax(cold_board):
    train, _, features, _ = cold_board
    torch.manual_seed(0)
    m = CVAE(**SMALL, item_features=True, cold_rate=0.5)
    m.user_features_ = torch.from_numpy(features.user.values)
    m.item_features_ = torch.from_numpy(features.item.values)
    m.build(train.n_users, train.n_items)
    m.setup(train, FitContext(features=features))
    rows = torch.from_numpy(train.matrix[:8].toarray().astype(np.float32))
    loss = m.training_step(Batch(rows=rows, index=torch.arange(8)), step=0)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    free = m.network.item_output.free
    assert torch.count_nonzero(free.weight.grad[COLD]) == 0
    assert torch.count_nonzero(free.weight.grad[~np.isin(np.arange(train.n_items), COLD)]) > 0
    assert torch.count_nonzero(m.network.item_output.from_features.weight.grad) > 0


def test_the_saved_model_carries_both_feature_matrices_and_scores_alike(model, cold_board,
                                                                        tmp_path):
    train, _, features, _ = cold_board
    model.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert isinstance(loaded, CVAE) and loaded is not model
    state = loaded.state_dict()
    torch.testing.assert_close(state[ITEM_FEATURES], torch.from_numpy(features.item.values))
    torch.testing.assert_close(state[CONDITION], torch.from_numpy(features.user.values))
    assert torch.equal(state[TRAINED_ITEMS], model.state_dict()[TRAINED_ITEMS])
    torch.testing.assert_close(_scores(loaded, train), _scores(model, train), rtol=0, atol=0)
    state.pop(ITEM_FEATURES)
    bare = CVAE(**model.get_params())
    bare.n_users, bare.n_items = model.n_users, model.n_items
    with pytest.raises(RecsysError, match=ITEM_FEATURES):
        bare.load_state_dict(state)


def test_without_item_features_it_refuses_in_one_line(cold_board):
    train, valid, features, _ = cold_board
    with pytest.raises(RecsysError, match="cvae: item_features=true needs item features") as err:
        CVAE(**SMALL, **FAST, item_features=True).fit(
            train, valid, FitContext(features=Features(user=features.user)))
    assert "\n" not in str(err.value)


class _OwnNetwork(MultVAE):
    """A subclass whose network is not an `ItemDecoder`: the option must be refused, not
    ignored."""

    def build(self, n_users: int, n_items: int) -> None:
        self.n_users, self.n_items = n_users, n_items
        self.network = nn.Linear(n_items, n_items)


def test_a_network_without_the_feature_output_refuses_the_option(cold_board):
    train, valid, features, _ = cold_board
    with pytest.raises(RecsysError, match="item_features=true is not available"):
        _OwnNetwork(**SMALL, **FAST, item_features=True).fit(train, valid,
                                                             FitContext(features=features))


# -- the command line ----------------------------------------------------------------------------


def test_train_cvae_with_item_features_on_a_cold_items_split(tmp_path, capsys):
    ratings = write_ratings(tmp_path / "r.csv")
    users = write_user_features(tmp_path / "users.csv")
    items = tmp_path / "items.csv"
    items.write_text("item,genres\n" + "".join(f"{i},{'xyz'[i % 3]}\n" for i in range(101, 141)))
    r = cli(["prepare", "--input", ratings, "--implicit-threshold", "4", "--split", "cold-items",
             "--item-features", items, "--user-features", users, "--out", tmp_path / "cold"],
            capsys)
    assert r.code == 0, r.err
    r = cli(["train", "cvae", "--data", tmp_path / "cold", "--out", tmp_path / "run",
             "--set", "item_features=true", "--set", "epochs=3", "--set", "hidden_dims=[16]",
             "--set", "latent_dim=4", "--device", "cpu", "--no-track"], capsys)
    assert r.code == 0, r.err
    saved = torch.load(tmp_path / "run" / "model" / "weights.pt", weights_only=True)
    assert saved[ITEM_FEATURES].shape[1] == 3 and (saved[TRAINED_ITEMS] == 0).sum() >= 1
    assert saved[CONDITION].shape[1] == 4
    r = cli(["prepare", "--input", ratings, "--implicit-threshold", "4", "--user-features",
             users, "--out", tmp_path / "plain"], capsys)
    assert r.code == 0, r.err
    r = cli(["train", "cvae", "--data", tmp_path / "plain", "--out", tmp_path / "run2",
             "--set", "item_features=true", "--set", "epochs=3", "--device", "cpu",
             "--no-track"], capsys)
    assert_one_line_error(r, "item_features=true needs item features")

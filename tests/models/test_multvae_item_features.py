"""Mult-VAE's item cold-start option (``item_features``): item vectors of the output layer from
item features plus a free embedding, masked for items without training interactions.

Checked here: the default builds the plain network (same modules, same weights for a seed);
items without training interactions get finite scores that come from their features alone and
stay out of the training softmax; a trained model ranks a cold item of a user's block above one
of another block; the feature matrix travels with the saved weights; the refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recsys.data.features import Features, FeatureTable
from recsys.data.interactions import EvalSplit, Interactions
from recsys.errors import RecsysError
from recsys.models.base import FitContext, Recommender
from recsys.models.multvae import ITEM_FEATURES, TRAINED_ITEMS, MultVAE, MultVAENetwork
from recsys.models.neural import Batch
from tests.reliability.helpers import assert_one_line_error, cli, write_ratings

from .contract import checkerboard

SMALL = {"hidden_dims": [32], "latent_dim": 8, "total_anneal_steps": 20}
FAST = {"epochs": 60, "batch_size": 16, "lr": 1e-2, "device": "cpu", "patience": None}
BLOCKS, PER_BLOCK = 2, 8
COLD = np.array([PER_BLOCK - 1, 2 * PER_BLOCK - 1])  # the last item of each block


def _cold_board() -> tuple[Interactions, EvalSplit, Features]:
    """The checkerboard (users of block b like the items of block b) with the last item of each
    block stripped of every training interaction, and item features: the item's block."""
    board = checkerboard(items_per_block=PER_BLOCK, blocks=BLOCKS)
    m = board.train.matrix.tolil()
    m[:, COLD] = 0
    m = sp.csr_matrix(m)
    m.eliminate_zeros()
    r, c = m.nonzero()
    train = Interactions.from_frame(pd.DataFrame({"user": r, "item": c, "rating": 1.0}),
                                    board.train.users, board.train.items)
    valid = EvalSplit(history=train.matrix, target=board.valid.target, users=board.valid.users)
    block = np.arange(BLOCKS * PER_BLOCK) // PER_BLOCK
    values = np.eye(BLOCKS, dtype=np.float32)[block]
    features = Features(item=FeatureTable(values, tuple(f"block={b}" for b in range(BLOCKS))))
    return train, valid, features


@pytest.fixture(scope="module")
def cold_board():
    return _cold_board()


@pytest.fixture(scope="module")
def model(cold_board) -> MultVAE:
    train, valid, features = cold_board
    torch.manual_seed(0)
    return MultVAE(**SMALL, **FAST, item_features=True).fit(train, valid,
                                                          FitContext(features=features))


def _scores(model: MultVAE, train: Interactions) -> torch.Tensor:
    return model.score(np.arange(train.n_users), train.matrix)


def test_default_off_builds_the_plain_network():
    torch.manual_seed(0)
    plain = MultVAENetwork(20, [12], 4, 0.5)
    m = MultVAE(hidden_dims=[12], latent_dim=4)
    torch.manual_seed(0)
    m.build(30, 20)
    assert m.network.item_output is None
    mine, theirs = m.network.state_dict(), plain.state_dict()
    assert list(mine) == list(theirs) == ["encoder.0.weight", "encoder.0.bias",
                                          "encoder.2.weight", "encoder.2.bias",
                                          "decoder.0.weight", "decoder.0.bias",
                                          "decoder.2.weight", "decoder.2.bias"]
    for key in mine:
        assert torch.equal(mine[key], theirs[key])


def test_cold_items_get_finite_scores_from_their_features_alone(model, cold_board):
    train, _, features = cold_board
    out = model.network.item_output
    assert torch.equal(out.trained_items == 0, torch.isin(torch.arange(train.n_items),
                                                          torch.from_numpy(COLD)))
    scores = _scores(model, train)
    assert torch.isfinite(scores).all()
    # The free embedding of a cold item plays no part: changing it changes nothing ...
    with torch.no_grad():
        out.free.weight[COLD] += 5.0
        out.free.bias[COLD] -= 3.0
    torch.testing.assert_close(_scores(model, train), scores)
    # ... while its features do: give the first cold item the second one's block.
    saved = out.item_features.clone()
    try:
        with torch.no_grad():
            out.item_features[COLD[0]] = out.item_features[COLD[1]]
        moved = _scores(model, train)
        assert not torch.allclose(moved[:, COLD[0]], scores[:, COLD[0]])
        torch.testing.assert_close(moved[:, COLD[0]], moved[:, COLD[1]])  # same features
    finally:
        with torch.no_grad():
            out.item_features.copy_(saved)


def test_a_trained_model_ranks_the_cold_item_of_the_users_block_first(model, cold_board):
    train, _, _ = cold_board
    scores = _scores(model, train)[:, COLD]
    user_block = np.arange(train.n_users) // (train.n_users // BLOCKS)
    assert (scores.argmax(1).numpy() == user_block).all()


def test_cold_items_stay_out_of_the_training_softmax(cold_board):
    train, _, features = cold_board
    torch.manual_seed(0)
    m = MultVAE(**SMALL, item_features=True)
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


def test_the_saved_model_carries_the_features_and_scores_alike(model, cold_board, tmp_path):
    train, _, features = cold_board
    model.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    state = loaded.state_dict()
    torch.testing.assert_close(state[ITEM_FEATURES], torch.from_numpy(features.item.values))
    assert torch.equal(state[TRAINED_ITEMS], model.state_dict()[TRAINED_ITEMS])
    torch.testing.assert_close(_scores(loaded, train), _scores(model, train))
    state.pop(ITEM_FEATURES)
    bare = MultVAE(**model.get_params())
    bare.n_users, bare.n_items = model.n_users, model.n_items
    with pytest.raises(RecsysError, match=ITEM_FEATURES):
        bare.load_state_dict(state)


def test_without_item_features_it_refuses_in_one_line(cold_board):
    train, valid, _ = cold_board
    with pytest.raises(RecsysError, match="item_features=true needs item features") as err:
        MultVAE(**SMALL, **FAST, item_features=True).fit(train, valid, FitContext())
    assert "\n" not in str(err.value)


# -- the command line ----------------------------------------------------------------------------

FAST_CLI = ["--set", "epochs=3", "--set", "hidden_dims=[16]", "--set", "latent_dim=4",
            "--device", "cpu", "--no-track"]


def test_train_with_item_features_on_a_cold_items_split_and_refusal_without(tmp_path, capsys):
    ratings = write_ratings(tmp_path / "r.csv")
    items = tmp_path / "items.csv"
    items.write_text("item,genres\n" + "".join(f"{i},{'xyz'[i % 3]}\n" for i in range(101, 141)))
    r = cli(["prepare", "--input", ratings, "--implicit-threshold", "4", "--split", "cold-items",
             "--item-features", items, "--out", tmp_path / "cold"], capsys)
    assert r.code == 0, r.err
    r = cli(["train", "multvae", "--data", tmp_path / "cold", "--out", tmp_path / "run",
             "--set", "item_features=true", *FAST_CLI], capsys)
    assert r.code == 0, r.err
    saved = torch.load(tmp_path / "run" / "model" / "weights.pt", weights_only=True)
    assert saved[ITEM_FEATURES].shape[1] == 3 and (saved[TRAINED_ITEMS] == 0).sum() >= 1
    r = cli(["prepare", "--input", ratings, "--implicit-threshold", "4", "--out",
             tmp_path / "plain"], capsys)
    assert r.code == 0, r.err
    r = cli(["train", "multvae", "--data", tmp_path / "plain", "--out", tmp_path / "run2",
             "--set", "item_features=true", *FAST_CLI], capsys)
    assert_one_line_error(r, "item_features=true needs item features")
